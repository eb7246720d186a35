#!/usr/bin/env bash
# The GPU checks of the issues, as one run on a machine with cupy and a CUDA device:
#  1. the layer, parity, net, solver and compression tests in GPU mode (QCAFFE_TEST_MODE=gpu),
#     i.e. the cupy path held to the same real-Caffe numbers as the numpy path;
#  2. the μL2Q LeNet table (bench/bench_ulq_lenet.py) at 1, 2, 4 and 8 bits with the full
#     20-epoch schedule, one process per bit width on the one GPU.
# Usage: SHARED=/path/to/shared/data OUT=outdir bash bench/gpu_check.sh
# .whl/ may hold wheels (lmdb, protobuf) for a machine that lacks them.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"; mkdir -p "$OUT"
SHARED="${SHARED:-../shared/data}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 QCAFFE_SHARED_DATA="$SHARED"
python3 -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'])"
for bits in 1 2 4 8; do
  (timeout "${ULQ_TIMEOUT:-420}" python3 -c "
import runpy, sys
from qcaffe import backend
backend.set_mode_gpu()
sys.argv = ['bench_ulq_lenet.py', '--mnist', '$SHARED/mnist', '--bits', '$bits', '--epochs', '${EPOCHS:-20}',
            '--work', '/tmp/ulq$bits', '--results', '$OUT/ulq$bits.md']
runpy.run_path('bench/bench_ulq_lenet.py', run_name='__main__')
" > "$OUT/ulq$bits.log" 2>&1; echo "ULQ $bits bits rc=$?") &
done
QCAFFE_TEST_MODE=gpu timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider --no-header -rfE \
  tests/test_layers_vision.py tests/test_layers_neuron.py tests/test_layers_normalization.py \
  tests/test_layers_common.py tests/test_layers_loss.py tests/test_parity_forward.py tests/test_net.py \
  tests/test_solvers.py tests/test_compress*.py > "$OUT/pytest_gpu.log" 2>&1
echo "GPU-mode tests rc=$?"; tail -25 "$OUT/pytest_gpu.log"
wait
grep -h "epoch 20\|^| [1248] |" "$OUT"/ulq*.log
