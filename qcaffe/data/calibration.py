"""Calibration images: the first N records of an LMDB, in mini-batches, transformed as a data
layer would, and the very same batches on every pass over them.

Used by label-free compression (compression.md 4(g)#4), whose original feeds the first 1,000
(then 400) records of the training LMDB through the TRAIN-phase Data layer in one batch.
Statistics that need several passes over the images (BN re-normalisation, the activation step
search) then see identical inputs each time: the random draws of batch i (TRAIN crop and
mirror) come from a generator seeded with (seed, i, 0), and :meth:`CalibrationImages.net_seed`
gives (seed, i, 1) for the net's own draws (dropout).  Only one batch is in memory at a time.
"""
import numpy as np

from ..proto import caffe_pb2
from .lmdb_io import DataSourceError, LMDBReader, decode_datums
from .transformer import DataTransformer


def _seed(*words):
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


class CalibrationImages(object):
    """``count`` records of the LMDB at ``path`` in batches of ``batch_size``.

    ``transform_param`` / ``phase``: the DataTransformer to apply (a Data layer's; None: raw
    pixels as float32); ``what`` names the images in errors (e.g. the command-line flag).
    """

    def __init__(self, path, count, batch_size, transform_param=None, phase=caffe_pb2.TRAIN,
                 seed=1, force_color=False, force_gray=False, layer_name='', what='images'):
        self.path = path
        self.count = int(count)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.force = (bool(force_color), bool(force_gray))
        self.layer_name = layer_name
        self.reader = LMDBReader(path)
        if self.reader.entries < self.count:
            entries = self.reader.entries
            self.reader.close()
            raise DataSourceError('%s: the LMDB %r holds %d records, fewer than the %d asked '
                                  'for' % (what, path, entries, self.count))
        self.transformer = DataTransformer(transform_param, phase, layer_name)
        index, key, value = self.reader.peek()
        raw, _ = decode_datums([value], *self.force, layer=layer_name, ragged=True,
                               where=self.reader.describe(index, [key]))
        first = raw[0].shape if isinstance(raw, list) else raw.shape[1:]
        self.item_shape = tuple(self.transformer.infer_shape(first))

    def net_seed(self, index):
        """Seed for the net's random draws while it processes batch ``index``."""
        return _seed(self.seed, index, 1)

    def batches(self):
        """Yield ``(index, data float32 (b, C, H, W), labels float32 (b,))``, b <= batch_size."""
        self.reader.seek(0)
        for index, start in enumerate(range(0, self.count, self.batch_size)):
            n = min(self.batch_size, self.count - start)
            first, keys, values = self.reader.next_records(n)
            raw, labels = decode_datums(values, *self.force, layer=self.layer_name,
                                        ragged=True, where=self.reader.describe(first, keys))
            rng = np.random.RandomState(_seed(self.seed, index, 0))
            data = self.transformer.transform_items(raw, rng=rng)
            yield index, data, labels.astype(np.float32)

    @property
    def num_batches(self):
        return -(-self.count // self.batch_size)

    def close(self):
        self.reader.close()
