#!/usr/bin/env bash
# Label-free compression on MNIST: train LeNet-BN and a small BatchNorm ResNet in full
# precision, quantize each with `qcaffe labelfree` (4-bit weights, 8-bit activations) using
# unlabeled training images, score both with `qcaffe test` on the 10,000 test images, and
# measure the peak memory (max RSS) of the command at 100 and 1,000 calibration images.
#
#   bash examples/mnist/labelfree_mnist.sh [/path/to/mnist]
#
# Outputs (models, logs) go to examples/mnist/labelfree_out/; trained models are reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
EX=examples/mnist
OUT=$EX/labelfree_out
QCAFFE="${QCAFFE:-python3 -m qcaffe}"
mkdir -p "$OUT"
if [ ! -d "$EX/mnist_train_lmdb" ] || [ ! -d "$EX/mnist_test_lmdb" ]; then
  bash $EX/get_mnist.sh "$@"
  bash $EX/create_mnist.sh
fi

accuracy() {  # accuracy of model $1 with weights $2 on the 10,000 test images
  $QCAFFE test --model "$1" --weights "$2" --iterations 100 2>&1 |
    grep '] accuracy = ' | tail -n 1 | sed 's/.*accuracy = //'
}

peak_rss_mb() {  # run the command line "$@", print its peak resident memory in MB
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("%.1f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "$@"
}

table="| model | full precision | W4A8 label-free |\n|---|---|---|"
for spec in lenet_bn:3000 resnet_bn:2000; do
  name=${spec%%:*}
  fp=$EX/${name}_iter_${spec##*:}.caffemodel
  if [ ! -f "$fp" ]; then
    $QCAFFE train --solver $EX/${name}_solver.prototxt > "$OUT/${name}_train.log" 2>&1
  fi
  $QCAFFE labelfree --model $EX/${name}_train_test.prototxt --weights "$fp" \
    --images $EX/mnist_train_lmdb --output-model "$OUT/${name}_w4a8.prototxt" \
    --output-weights "$OUT/${name}_w4a8.caffemodel" > "$OUT/${name}_labelfree.log" 2>&1
  fp_acc=$(accuracy $EX/${name}_train_test.prototxt "$fp")
  q_acc=$(accuracy "$OUT/${name}_w4a8.prototxt" "$OUT/${name}_w4a8.caffemodel")
  echo "$name: full precision $fp_acc, W4A8 label-free $q_acc"
  table="$table\n| $name | $fp_acc | $q_acc |"
done
echo -e "\n$table\n"

for n in 100 1000; do
  mb=$(peak_rss_mb $QCAFFE labelfree --model $EX/resnet_bn_train_test.prototxt \
       --weights $EX/resnet_bn_iter_2000.caffemodel --images $EX/mnist_train_lmdb \
       --bn-images $n --act-images $n --output-model "$OUT/mem_$n.prototxt" \
       --output-weights "$OUT/mem_$n.caffemodel")
  echo "qcaffe labelfree (resnet_bn), $n calibration images: peak memory $mb MB"
done
