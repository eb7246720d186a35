#!/usr/bin/env bash
# Get the four MNIST IDX files into examples/mnist/data (Caffe: data/mnist/get_mnist.sh).
#
#   bash examples/mnist/get_mnist.sh                 # download from a mirror
#   bash examples/mnist/get_mnist.sh /path/to/mnist  # offline: take them from a local folder
#   QCAFFE_MNIST_DIR=/path/to/mnist bash examples/mnist/get_mnist.sh
#
# A local folder may hold the files gzipped (train-images-idx3-ubyte.gz) or raw
# (train-images-idx3-ubyte, or the train-images.idx3-ubyte spelling); qcaffe
# convert_mnist_data reads both, so nothing is unpacked.  Set MNIST_DATA_DIR to put the
# files somewhere else.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST="${MNIST_DATA_DIR:-examples/mnist/data}"
SRC="${1:-${QCAFFE_MNIST_DIR:-}}"
NAMES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
MIRRORS="${MNIST_MIRRORS:-https://ossci-datasets.s3.amazonaws.com/mnist https://storage.googleapis.com/cvdf-datasets/mnist http://yann.lecun.com/exdb/mnist}"
mkdir -p "$DEST"

have() {  # is $1 already in DEST (raw or .gz)?
  [ -s "$DEST/$1" ] || [ -s "$DEST/$1.gz" ]
}

if [ -n "$SRC" ]; then
  if [ ! -d "$SRC" ]; then
    echo "get_mnist.sh: error: MNIST folder '$SRC' does not exist" >&2; exit 1
  fi
  for name in $NAMES; do
    have "$name" && continue
    alt="${name/-idx/.idx}"   # train-images.idx3-ubyte
    found=""
    for cand in "$SRC/$name.gz" "$SRC/$name" "$SRC/$alt" "$SRC/$alt.gz"; do
      if [ -s "$cand" ]; then found="$cand"; break; fi
    done
    if [ -z "$found" ]; then
      echo "get_mnist.sh: error: $name(.gz) not found in $SRC" >&2; exit 1
    fi
    case "$found" in  # (copies of read-only files stay writable: chmod below)
      *.gz) cp "$found" "$DEST/$name.gz" ;;
      *) cp "$found" "$DEST/$name" ;;
    esac
    chmod u+w "$DEST/$name"* 2>/dev/null || true
    echo "Copied $found"
  done
else
  fetch() {  # url out
    if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 2 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
    else python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi
  }
  for name in $NAMES; do
    have "$name" && continue
    ok=""
    for mirror in $MIRRORS; do
      echo "Downloading $mirror/$name.gz"
      if fetch "$mirror/$name.gz" "$DEST/$name.gz.part" 2>/dev/null \
          && [ "$(head -c 2 "$DEST/$name.gz.part" | od -An -tx1 | tr -d ' ')" = "1f8b" ]; then
        mv "$DEST/$name.gz.part" "$DEST/$name.gz"; ok=1; break
      fi
      rm -f "$DEST/$name.gz.part"
    done
    if [ -z "$ok" ]; then
      echo "get_mnist.sh: error: could not download $name.gz from any mirror ($MIRRORS)." >&2
      echo "Offline? Give a folder holding the four MNIST files: $0 /path/to/mnist" >&2
      exit 1
    fi
  done
fi
echo "MNIST files are in $DEST"
