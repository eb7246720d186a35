#!/usr/bin/env bash
# Convert the MNIST IDX files into the LMDBs the LeNet example reads (Caffe:
# examples/mnist/create_mnist.sh).  Run get_mnist.sh first.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXAMPLE=examples/mnist
DATA="${MNIST_DATA_DIR:-examples/mnist/data}"
QCAFFE="${QCAFFE:-python3 -m qcaffe}"

pick() {  # raw file if present, else the .gz
  if [ -s "$DATA/$1" ]; then echo "$DATA/$1"
  elif [ -s "$DATA/$1.gz" ]; then echo "$DATA/$1.gz"
  else echo "create_mnist.sh: error: $DATA/$1(.gz) is missing; run examples/mnist/get_mnist.sh" >&2; exit 1
  fi
}
train_images=$(pick train-images-idx3-ubyte); train_labels=$(pick train-labels-idx1-ubyte)
test_images=$(pick t10k-images-idx3-ubyte); test_labels=$(pick t10k-labels-idx1-ubyte)

echo "Creating lmdb..."
rm -rf "$EXAMPLE/mnist_train_lmdb" "$EXAMPLE/mnist_test_lmdb"
$QCAFFE convert_mnist_data "$train_images" "$train_labels" "$EXAMPLE/mnist_train_lmdb" --backend=lmdb
$QCAFFE convert_mnist_data "$test_images" "$test_labels" "$EXAMPLE/mnist_test_lmdb" --backend=lmdb
echo "Done."
