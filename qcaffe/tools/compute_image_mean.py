"""``qcaffe compute_image_mean [--backend lmdb] INPUT_DB [OUTPUT_FILE]``.

Caffe equivalent: tools/compute_image_mean.cpp.  Averages every Datum of the DB (encoded
ones decoded first), logs "Processed N files." and the per-channel means, and writes the
mean as a BlobProto with the legacy dims num = 1, channels, height, width and no ``shape``:
the ``mean.binaryproto`` that ``transform_param.mean_file`` and
``caffe.io.blobproto_to_array`` read.  Sums are kept in float64 (Caffe sums in float, which
loses precision on big sets; the mean is the same to float32 rounding).
"""
import itertools
import logging

import numpy as np

from . import ArgumentParser, ToolError, run_main
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')


def compute_mean(db_path, backend='lmdb', chunk=1000):
    """The mean image of the DB as a float32 (C, H, W) array, and the number of items.

    Records are decoded ``chunk`` at a time by :func:`qcaffe.data.lmdb_io.decode_datums`
    (one numpy pass per chunk for plain uint8 Datums; encoded images are decoded).
    """
    if backend != 'lmdb':
        raise ToolError('--backend %s is not supported: qcaffe reads lmdb only' % backend)
    from ..data.lmdb_io import LMDBReader, RecordShapeError, decode_datums
    reader = LMDBReader(db_path)
    total, count = None, 0
    resize = ('; compute_image_mean needs images of one size (convert them with '
              'convert_imageset --resize_height and --resize_width)')
    try:
        records = reader.txn.cursor().iternext(keys=True, values=True)
        while True:
            batch = list(itertools.islice(records, chunk))
            if not batch:
                break
            keys = [k for k, _ in batch]
            try:
                data, _ = decode_datums([v for _, v in batch],
                                        where=reader.describe(count, keys))
            except RecordShapeError as e:
                raise ToolError('%s%s' % (e, resize)) from None
            part = data.sum(axis=0, dtype=np.float64)
            if total is None:
                total = part
            elif part.shape != total.shape:
                raise ToolError('%s has shape %s but the records before it have %s%s'
                                % (reader.where(count, keys[0]), part.shape, total.shape,
                                   resize))
            else:
                total += part
            count += len(batch)
            if count % 10000 == 0:
                log.info('Processed %d files.', count)
    finally:
        reader.close()
    if count % 10000:
        log.info('Processed %d files.', count)
    return (total / count).astype(np.float32), count


def mean_blobproto(mean):
    """BlobProto with legacy num/channels/height/width dims, as compute_image_mean writes."""
    blob = caffe_pb2.BlobProto()
    blob.num = 1
    blob.channels, blob.height, blob.width = (int(d) for d in mean.shape)
    blob.data.extend(mean.ravel().tolist())
    return blob


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Compute the mean image of a set of images '
                            'given by a leveldb/lmdb.')
    parser.add_argument('input_db', help='input DB (e.g. examples/mnist/mnist_train_lmdb)')
    parser.add_argument('output_file', nargs='?', default='',
                        help='mean file to write (.binaryproto); omitted: only log the means')
    parser.add_flag('backend', default='lmdb', help='The backend {lmdb} for the input DB')
    return parser


def run(args):
    mean, _ = compute_mean(args.input_db, args.backend)
    if args.output_file:
        from ..io import write_binary_proto
        log.info('Write to %s', args.output_file)
        write_binary_proto(args.output_file, mean_blobproto(mean))
    log.info('Number of channels: %d', mean.shape[0])
    for c in range(mean.shape[0]):
        log.info('mean_value channel [%d]: %s', c, '%g' % float(mean[c].mean(dtype=np.float64)))
    return 0


def main(argv=None, prog='compute_image_mean', command=None):
    return run_main(build_parser, run, argv, prog)
