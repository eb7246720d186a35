#!/usr/bin/env bash
# APoT LeNet on MNIST: every bit width, APoT and uniform levels, trained from scratch
# (10,000 iterations) and from a trained full-precision LeNet (5,000 iterations), then the
# last test accuracy of each run.  Needs the LMDBs (create_mnist.sh).
#
#   bash examples/mnist/train_lenet_apot.sh [full-precision.caffemodel] [bit widths...]
#
# The model defaults to examples/mnist/lenet_iter_10000.caffemodel (train_lenet.sh writes it);
# bit widths default to "32 4 3 2"; LEVELS="apot" or "uniform" runs one kind of levels only,
# RUNS="scratch" or "finetune" one kind of start.
# Logs: examples/mnist/<run>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
QCAFFE="${QCAFFE:-python3 -m qcaffe}"
FP_MODEL="${1:-examples/mnist/lenet_iter_10000.caffemodel}"
shift || true
BITS="${*:-32 4 3 2}"
EX=examples/mnist

run() {  # run <name> <solver> [--weights model]
  local name=$1 solver=$2; shift 2
  echo "== $name"
  $QCAFFE train --solver "$solver" "$@" > "$EX/$name.log" 2>&1
  grep 'Test net output #0: accuracy' "$EX/$name.log" | tail -n 1 | sed "s/.*accuracy = /$name: /"
}

for bit in $BITS; do
  for levels in ${LEVELS:-apot uniform}; do
    flags=()
    [ "$levels" = uniform ] && flags=(--uniform)
    [ "$bit" = 32 ] && [ "$levels" = uniform ] && continue
    python3 $EX/apot_netspec.py lenet --bit "$bit" "${flags[@]}" > /dev/null
    tag=$(python3 -c "import sys; sys.path.insert(0, '$EX'); import apot_netspec as a; \
print(a.tag('lenet', $bit, '$levels' == 'apot'))")
    if [[ " ${RUNS:-scratch finetune} " == *" scratch "* ]]; then
      run "$tag" "$EX/${tag}_solver.prototxt"
    fi
    if [ "$bit" != 32 ] && [[ " ${RUNS:-scratch finetune} " == *" finetune "* ]]; then
      python3 $EX/apot_netspec.py lenet --bit "$bit" "${flags[@]}" --finetune > /dev/null
      run "${tag}_finetune" "$EX/${tag}_finetune_solver.prototxt" --weights "$FP_MODEL"
    fi
  done
done
