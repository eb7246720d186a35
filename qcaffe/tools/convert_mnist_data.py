"""``qcaffe convert_mnist_data IMAGES LABELS DB [--backend lmdb]``.

Caffe equivalent: examples/mnist/convert_mnist_data.cpp.  Reads the IDX files (big-endian
header: image magic 2051, label magic 2049, equal counts, rows, cols; plain or gzip, told
apart by content, so the downloaded ``*.gz`` files work without gunzip) and writes one
Datum per image: channels 1, height rows, width cols, ``data`` = the raw uint8 pixels,
``label`` = the label byte, under the key ``"%08d" % index``; the DB directory must not
exist yet (Caffe's LMDB "NEW" mode).

The records are built for all images at once by :func:`qcaffe.data.lmdb_io.encode_datums`
(one uint8 matrix, no per-image protobuf call) and written by its ``write_lmdb``.
"""
import gzip
import logging
import os

import numpy as np

from . import ArgumentParser, ToolError, require_file, run_main

log = logging.getLogger('qcaffe')

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


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
    from ..data.lmdb_io import encode_datums, key_for, write_lmdb
    records = encode_datums(images, labels)
    write_lmdb(db_path, ((key_for(i), records[i]) for i in range(n)), count=n)
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
