"""Weight fillers (Caffe: include/caffe/filler.hpp, ``GetFiller``).

Random streams come from ``backend.rng()`` (seeded by ``random_seed``): distributionally the
same as Caffe's boost streams, not bit-identical (no reimplementation can be).
"""
import numpy as np

from . import backend
from .io.errors import QcaffeError

FILLER_TYPES = ('constant', 'uniform', 'gaussian', 'positive_unitball', 'xavier', 'msra',
                'bilinear')


def _fans(shape):
    count = int(np.prod(shape, dtype=np.int64))
    fan_in = count // shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(param, shape):
    from .proto import caffe_pb2
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill_array(param, shape):
    """Return a float32 host array of ``shape`` filled as FillerParameter ``param`` says."""
    rng = backend.rng()
    shape = tuple(shape)
    t = param.type
    if t == 'constant':
        out = np.full(shape, param.value, dtype=np.float32)
    elif t == 'uniform':
        out = rng.uniform(param.min, param.max, size=shape)
    elif t == 'gaussian':
        out = rng.normal(param.mean, param.std, size=shape)
        if param.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise QcaffeError('sparse gaussian filler needs a blob with a first axis')
            keep = rng.uniform(size=shape) < param.sparse / float(shape[0])
            out = out * keep
    elif t == 'positive_unitball':
        out = rng.uniform(0, 1, size=shape)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
    elif t == 'xavier':
        scale = np.sqrt(3.0 / _variance_n(param, shape))
        out = rng.uniform(-scale, scale, size=shape)
    elif t == 'msra':
        out = rng.normal(0.0, np.sqrt(2.0 / _variance_n(param, shape)), size=shape)
    elif t == 'bilinear':
        if len(shape) != 4 or shape[2] != shape[3]:
            raise QcaffeError('bilinear filler needs a 4-D blob with a square kernel, got %s'
                              % (shape,))
        k = shape[3]
        f = np.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)
        ax = 1 - np.abs(np.arange(k) / f - c)
        out = np.broadcast_to(np.outer(ax, ax), shape).copy()
    else:
        raise QcaffeError('Unknown filler name %r; valid fillers: %s'
                          % (t, ', '.join(FILLER_TYPES)))
    if param.sparse >= 0 and t != 'gaussian':
        raise QcaffeError('filler %r does not support "sparse" (only gaussian does)' % t)
    return np.asarray(out, dtype=np.float32)


def fill(blob, param):
    """Caffe: ``Filler::Fill(blob)``."""
    blob.data[...] = fill_array(param, blob.shape)
    return blob
