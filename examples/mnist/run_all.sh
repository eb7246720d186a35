#!/usr/bin/env bash
# The whole MNIST job from a fresh clone: install qcaffe, get MNIST (offline from a local
# folder given as $1 or $QCAFFE_MNIST_DIR), build the LMDBs, train LeNet for 10,000
# iterations and print the final test accuracy.
#
#   bash examples/mnist/run_all.sh [/path/to/mnist]
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q -e .
bash examples/mnist/get_mnist.sh "$@"
bash examples/mnist/create_mnist.sh
LOG=examples/mnist/lenet_train.log
start=$(date +%s)
bash examples/mnist/train_lenet.sh 2>&1 | tee "$LOG"
end=$(date +%s)
acc=$(grep 'Test net output #0: accuracy' "$LOG" | tail -n 1 | sed 's/.*accuracy = //')
loss=$(grep 'Test net output #1: loss' "$LOG" | tail -n 1 | sed 's/.*loss = \([^ ]*\).*/\1/')
echo
echo "LeNet on MNIST, 10000 iterations: test accuracy = $acc, test loss = $loss, wall time $((end - start)) s"
echo "Model: examples/mnist/lenet_iter_10000.caffemodel; log: $LOG"
