#!/usr/bin/env bash
# Train LeNet on MNIST (Caffe: examples/mnist/train_lenet.sh).  Extra flags go to qcaffe train.
set -e
cd "$(dirname "$0")/../.."
${QCAFFE:-python3 -m qcaffe} train --solver=examples/mnist/lenet_solver.prototxt "$@"
