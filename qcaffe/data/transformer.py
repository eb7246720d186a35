"""Caffe's DataTransformer for whole batches: crop, mirror, mean subtraction, scale.

Caffe equivalent: ``caffe::DataTransformer`` (src/caffe/data_transformer.cpp), which works one
Datum at a time; here a batch ``(N, C, H, W)`` is transformed at once.  Per item, as Caffe:

* crop (``crop_size`` > 0): offsets drawn uniformly from ``[0, H - crop]`` x ``[0, W - crop]``
  in TRAIN, centred ``((H - crop) // 2, (W - crop) // 2)`` in TEST;
* mirror (``mirror: true``): horizontal flip with probability 1/2 in BOTH phases (Caffe has no
  phase check here);
* value = (pixel - mean) * scale, the mean being the mean_file image at the same *uncropped*
  position or the per-channel ``mean_value`` (one value is used for every channel).

Crop and mirror are one gather with per-item row/column index arrays, so there is no loop
over items.  Random draws come from a ``numpy.random.RandomState``: by default
``backend.rng()`` (seeded by ``random_seed``); prefetch threads pass their own generator,
seeded from ``backend.rng()`` when they start (Caffe: ``InternalThread`` seeds each thread from
``caffe_rng_rand()``), so runs with a seed repeat exactly.
"""
import numpy as np

from .. import backend
from .lmdb_io import DataSourceError
from ..io.errors import QcaffeError
from ..proto import caffe_pb2


class TransformError(QcaffeError):
    """transform_param values that do not fit the data (crop too big, mean shape...)."""


class DataTransformer(object):
    """``DataTransformer(transform_param, phase, layer_name)``; see the module docstring."""

    def __init__(self, param=None, phase=caffe_pb2.TEST, layer_name='', rng=None):
        self.param = param if param is not None else caffe_pb2.TransformationParameter()
        self.phase = phase
        self.layer_name = layer_name
        self.rng = rng
        p = self.param
        self.scale = np.float32(p.scale)
        self.crop_size = int(p.crop_size)
        self.mirror = bool(p.mirror)
        self.mean_image = None
        self.mean_values = None
        if p.HasField('mean_file') and len(p.mean_value):
            raise self._error('cannot specify mean_file and mean_value at the same time')
        if p.HasField('mean_file'):
            from ..io import read_mean_binaryproto
            mean = read_mean_binaryproto(p.mean_file)
            if mean.ndim == 4:
                if mean.shape[0] != 1:
                    raise self._error('mean_file %r holds %d images; expected one (1, C, H, W)'
                                      % (p.mean_file, mean.shape[0]))
                mean = mean[0]
            elif mean.ndim != 3:
                raise self._error('mean_file %r has shape %s; expected (1, C, H, W)'
                                  % (p.mean_file, mean.shape))
            self.mean_image = np.ascontiguousarray(mean, dtype=np.float32)
        elif len(p.mean_value):
            self.mean_values = np.asarray(p.mean_value, dtype=np.float32)
        if p.force_color and p.force_gray:
            raise self._error('cannot set both force_color and force_gray')

    def _error(self, msg):
        return TransformError('Layer %r transform_param: %s' % (self.layer_name, msg))

    def _rng(self):
        return self.rng if self.rng is not None else backend.rng()

    @property
    def is_identity(self):
        return (not self.crop_size and not self.mirror and self.mean_image is None
                and self.mean_values is None and self.scale == 1)

    def infer_shape(self, shape):
        """Caffe: ``InferBlobShape``: (C, H, W) of an item -> its transformed (C, H', W')."""
        c, h, w = (int(s) for s in shape[-3:])
        self._check(c, h, w)
        if self.crop_size:
            return (c, self.crop_size, self.crop_size)
        return (c, h, w)

    def _check(self, c, h, w):
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise self._error('crop_size %d is larger than the %dx%d input'
                              % (crop, h, w))
        if self.mean_image is not None and self.mean_image.shape != (c, h, w):
            raise self._error('mean_file %r has shape %s but the data is %s (C, H, W); the '
                              'mean must have the shape of the uncropped data'
                              % (self.param.mean_file, self.mean_image.shape, (c, h, w)))
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise self._error('%d mean_value entries for %d channels; give one value or one '
                              'per channel' % (len(self.mean_values), c))

    def draw(self, n, h, w, rng=None):
        """Random choices for ``n`` items: (row offsets, column offsets, mirror flags)."""
        rng = rng if rng is not None else self._rng()
        crop = self.crop_size
        mirror = (rng.randint(0, 2, size=n).astype(bool) if self.mirror
                  else np.zeros(n, dtype=bool))
        if crop and self.phase == caffe_pb2.TRAIN:
            h_off = rng.randint(0, h - crop + 1, size=n)
            w_off = rng.randint(0, w - crop + 1, size=n)
        elif crop:
            h_off = np.full(n, (h - crop) // 2)
            w_off = np.full(n, (w - crop) // 2)
        else:
            h_off = w_off = np.zeros(n, dtype=np.int64)
        return h_off, w_off, mirror

    def transform(self, batch, out=None, choices=None, rng=None):
        """Transform ``batch`` (N, C, H, W) (uint8 or float) into float32 ``out`` (N, C, H', W').

        ``choices``: (h_off, w_off, mirror) to use instead of random draws (tests, replays);
        ``rng``: the RandomState to draw from (default: the transformer's, else backend.rng()).
        """
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        n, c, h, w = batch.shape
        oc, oh, ow = self.infer_shape((c, h, w))
        if out is None:
            out = np.empty((n, oc, oh, ow), dtype=np.float32)
        elif out.shape != (n, oc, oh, ow):
            raise self._error('output buffer of shape %s for a transformed batch of %s'
                              % (out.shape, (n, oc, oh, ow)))
        h_off, w_off, mirror = choices if choices is not None else self.draw(n, h, w, rng)
        mean = self.mean_image
        if self.crop_size or mirror.any():
            # One gather: rows h_off + i; columns w_off + j, or w_off + (ow - 1 - j) mirrored
            # (Caffe writes top[.., w_cropped - 1 - w] from data[.., w_off + w]).
            j = np.arange(ow)
            cols = w_off[:, None] + np.where(mirror[:, None], ow - 1 - j, j)
            rows = h_off[:, None] + np.arange(oh)
            ni = np.arange(n)[:, None, None, None]
            ci = np.arange(c)[None, :, None, None]
            ri = rows[:, None, :, None]
            wi = cols[:, None, None, :]
            src = batch[ni, ci, ri, wi]
            if mean is not None:
                mean = mean[ci[0], ri, wi]
        else:
            src = batch
        np.copyto(out, src, casting='unsafe')
        if mean is not None:
            out -= mean
        elif self.mean_values is not None:
            mv = self.mean_values
            out -= (mv if len(mv) > 1 else np.repeat(mv, c))[None, :, None, None]
        if self.scale != 1:
            out *= self.scale
        return out

    def transform_items(self, raw, out=None, rng=None):
        """Transform raw items (N, C, H, W) into float32 ``out``, allocated anew when it is
        None or of another shape; returns it.

        ``raw`` may be a list of items of different sizes: allowed when the transform crops
        them all to one size (Caffe crops each datum into the batch); they are then
        transformed one by one.
        """
        if isinstance(raw, list):
            shapes = {tuple(self.infer_shape(a.shape)) for a in raw}
            if len(shapes) != 1:
                raise DataSourceError('Layer %r: items of one batch differ in size %s; make '
                                      'them equal (resize when converting), crop them with '
                                      'transform_param.crop_size, or use batch_size 1'
                                      % (self.layer_name, sorted({a.shape for a in raw})))
            shape = (len(raw),) + shapes.pop()
        else:
            shape = (raw.shape[0],) + tuple(self.infer_shape(raw.shape[1:]))
        if out is None or out.shape != shape:
            out = np.empty(shape, np.float32)
        if isinstance(raw, list):
            for i, item in enumerate(raw):  # rare ragged case: one gather per item
                self.transform(item[None], out=out[i:i + 1], rng=rng)
        else:
            self.transform(raw, out=out, rng=rng)
        return out
