"""``qcaffe convert_mnist_data IMAGES LABELS DB [--backend lmdb]``.

Caffe equivalent: examples/mnist/convert_mnist_data.cpp.  Reads the IDX files (big-endian
header: image magic 2051, label magic 2049, equal counts, rows, cols; plain or gzip, told
apart by content, so the downloaded ``*.gz`` files work without gunzip) and writes one
Datum per image: channels 1, height rows, width cols, ``data`` = the raw uint8 pixels,
``label`` = the label byte, under the key ``"%08d" % index``; the DB directory must not
exist yet (Caffe's LMDB "NEW" mode).

The Datum records are built for all images at once: every record has the same layout, so the
serialized bytes are a fixed header (taken from a real protobuf serialization), the pixels
and the label field, assembled as one uint8 matrix with numpy.
"""
import gzip
import logging
import os

import numpy as np

from . import ArgumentParser, ToolError, require_file, run_main
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
_LABEL_TAG = 0x28  # Datum.label: field 5, varint


def read_idx_bytes(path, what):
    """The whole (decompressed) content of an IDX file."""
    require_file(path, '%s file' % what)
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
        opener = gzip.open if head == b'\x1f\x8b' else open
        with opener(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ToolError('cannot read %s file %r: %s' % (what, path, e)) from None


def _header(data, path, what, magic, ndims):
    need = 4 * (1 + ndims)
    if len(data) < need:
        raise ToolError('%s file %r is too short (%d bytes) for an IDX header'
                        % (what, path, len(data)))
    fields = np.frombuffer(data, dtype='>u4', count=1 + ndims)
    if int(fields[0]) != magic:
        raise ToolError('%s file %r: incorrect magic number %d, expected %d (IDX %s file, '
                        'e.g. %s)' % (what, path, int(fields[0]), magic, what.lower(),
                                      't10k-images-idx3-ubyte' if magic == IMAGE_MAGIC
                                      else 't10k-labels-idx1-ubyte'))
    return [int(x) for x in fields[1:]], need


def read_mnist(image_path, label_path):
    """Images as uint8 ``(n, rows, cols)`` and labels as uint8 ``(n,)``."""
    images = read_idx_bytes(image_path, 'Image')
    labels = read_idx_bytes(label_path, 'Label')
    (n, rows, cols), offset = _header(images, image_path, 'Image', IMAGE_MAGIC, 3)
    (num_labels,), label_offset = _header(labels, label_path, 'Label', LABEL_MAGIC, 1)
    if n != num_labels:
        raise ToolError('image file %r has %d items but label file %r has %d'
                        % (image_path, n, label_path, num_labels))
    if len(images) < offset + n * rows * cols:
        raise ToolError('image file %r is truncated: %d images of %dx%d need %d bytes, it '
                        'has %d' % (image_path, n, rows, cols, offset + n * rows * cols,
                                    len(images)))
    if len(labels) < label_offset + n:
        raise ToolError('label file %r is truncated: %d labels need %d bytes, it has %d'
                        % (label_path, n, label_offset + n, len(labels)))
    pixels = np.frombuffer(images, dtype=np.uint8, count=n * rows * cols, offset=offset)
    return (pixels.reshape(n, rows, cols),
            np.frombuffer(labels, dtype=np.uint8, count=n, offset=label_offset))


def datum_records(images, labels):
    """Serialized ``Datum`` bytes of every image, as rows of a uint8 matrix (or a list).

    Equal to ``Datum(channels=1, height=rows, width=cols, data=pixels,
    label=label).SerializeToString()`` for each item.
    """
    n, rows, cols = images.shape
    size = rows * cols
    proto = caffe_pb2.Datum(channels=1, height=rows, width=cols, data=bytes(size), label=0)
    template = proto.SerializeToString()
    # Fields serialize in number order: channels, height, width, data, then label (tag 0x28).
    assert template.endswith(bytes([_LABEL_TAG, 0]))
    header = np.frombuffer(template[:len(template) - size - 2], dtype=np.uint8)
    if n and int(labels.max()) >= 0x80:
        # A label >= 128 takes a two-byte varint: records differ in length; rare (MNIST has
        # 0-9), so go through protobuf for those sets.
        return [caffe_pb2.Datum(channels=1, height=rows, width=cols, data=img.tobytes(),
                                label=int(lab)).SerializeToString()
                for img, lab in zip(images, labels)]
    h = len(header)
    records = np.empty((n, h + size + 2), dtype=np.uint8)
    records[:, :h] = header
    records[:, h:h + size] = images.reshape(n, size)
    records[:, h + size] = _LABEL_TAG
    records[:, h + size + 1] = labels
    return records


def mnist_keys(n):
    """Caffe's keys: the item index zero-padded to 8 digits (``snprintf("%08zd")``)."""
    return [b'%08d' % i for i in range(n)]


def convert_dataset(image_path, label_path, db_path, backend='lmdb'):
    if backend != 'lmdb':
        raise ToolError('--backend %s is not supported: qcaffe reads and writes lmdb only '
                        '(leveldb is deprecated in Caffe too)' % backend)
    images, labels = read_mnist(image_path, label_path)
    n, rows, cols = images.shape
    if os.path.exists(db_path):
        raise ToolError('output DB %r already exists; remove it first (Caffe\'s '
                        'convert_mnist_data never overwrites a DB)' % db_path)
    log.info('Opening lmdb %s', db_path)
    log.info('A total of %d items.', n)
    log.info('Rows: %d Cols: %d', rows, cols)
    records = datum_records(images, labels)
    from ..data.lmdb_io import write_lmdb
    write_lmdb(db_path, zip(mnist_keys(n), records), count=n)
    log.info('Processed %d files.', n)
    return n


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Convert the MNIST dataset (IDX files, '
                            'gzip or not) to the lmdb format used by Caffe to load data.')
    parser.add_argument('images', help='IDX image file (e.g. train-images-idx3-ubyte[.gz])')
    parser.add_argument('labels', help='IDX label file (e.g. train-labels-idx1-ubyte[.gz])')
    parser.add_argument('db', help='output DB directory (must not exist)')
    parser.add_flag('backend', default='lmdb', choices=['lmdb'],
                    help='The backend for storing the result (lmdb)')
    return parser


def run(args):
    convert_dataset(args.images, args.labels, args.db, args.backend)
    return 0


def main(argv=None, prog='convert_mnist_data', command=None):
    return run_main(build_parser, run, argv, prog)
