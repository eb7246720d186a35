#!/usr/bin/env bash
# LeNet on the GPU: device_query, qcaffe time --gpu 0 and the full 10,000-iteration training
# (solver_mode GPU), plus bench_train.py pinned to 2 cores; logs go to $OUT (default bench/out).
# Needs cupy; .whl/ may hold wheels (lmdb, protobuf) for a machine that lacks them.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import numpy, cupy, google.protobuf, lmdb; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'protobuf', google.protobuf.__version__)"
python3 -m qcaffe device_query > $OUT/device_query.log 2>&1; tail -20 $OUT/device_query.log
bash examples/mnist/create_mnist.sh > $OUT/create.log 2>&1 || { tail $OUT/create.log; exit 1; }
timeout 120 python3 -m qcaffe time --model examples/mnist/lenet_train_test.prototxt --gpu 0 --iterations 50 > $OUT/time_gpu.log 2>&1; grep -E "Average|Error|error" $OUT/time_gpu.log | tail -5
(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 timeout 150 taskset -c 0,1 python3 bench/bench_train.py --iters 200 --no-append > $OUT/bench_cpu2.log 2>&1; tail -6 $OUT/bench_cpu2.log) &
timeout 400 taskset -c 2-15 python3 -m qcaffe train --solver examples/mnist/lenet_solver.prototxt > $OUT/train_gpu.log 2>&1; echo train rc=$?
grep -E "Test net output #0|Iteration [0-9]+ \(|Using GPU|Use CPU|rror" $OUT/train_gpu.log | tail -12
wait
