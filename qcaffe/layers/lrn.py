"""Local response normalization.

Caffe equivalent: src/caffe/layers/lrn_layer.cpp (CrossChannelForward/Backward_cpu and the
WITHIN_CHANNEL sub-network split -> square -> AVE pool -> power -> product).

* ACROSS_CHANNELS: ``scale = k + alpha/n * sum_{c' = c-(n-1)/2 .. c+(n-1)/2} x_c'^2`` (zero
  beyond the channel ends), ``y = x * scale^-beta``; backward
  ``dx = dy * scale^-beta - (2*alpha*beta/n) * x * sum_window(dy * y / scale)``.
* WITHIN_CHANNEL: ``scale = 1 + alpha * avgpool_{n x n, pad (n-1)/2}(x^2)`` (the AVE divisor is
  always n*n here, padding included), ``y = x * scale^-beta``; ``k`` is not used.  The backward
  is the chain rule through that sub-network.

Window sums loop over the n window offsets (never over pixels); each offset is one slice add of
the whole batch.
"""
import numpy as np

from ..backend import get_array_module
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer

ACROSS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
WITHIN = caffe_pb2.LRNParameter.WITHIN_CHANNEL


def window_sum(a, size, axis):
    """Sum of ``a`` over the centred window of odd ``size`` along ``axis``, zero-padded."""
    xp = get_array_module(a)
    pre = (size - 1) // 2
    n = a.shape[axis]
    pshape = list(a.shape)
    pshape[axis] = n + size - 1
    pad = xp.zeros(pshape, dtype=a.dtype)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(pre, pre + n)
    pad[tuple(idx)] = a
    idx[axis] = slice(0, n)
    out = pad[tuple(idx)].copy()
    for i in range(1, size):
        idx[axis] = slice(i, i + n)
        out += pad[tuple(idx)]
    return out


@register_layer('LRN')
class LRNLayer(Layer):
    """Caffe: LRNLayer (ACROSS_CHANNELS and WITHIN_CHANNEL)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0 or self.size <= 0:
            raise LayerError('Layer %r (type LRN): LRN only supports odd values for '
                             'lrn_param.local_size, got %d' % (self.name, self.size))
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        if self.region not in (ACROSS, WITHIN):
            raise LayerError('Layer %r (type LRN): unknown lrn_param.norm_region %d (valid: '
                             'ACROSS_CHANNELS, WITHIN_CHANNEL)' % (self.name, self.region))

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise LayerError('Layer %r (type LRN): Input must have 4 axes, corresponding to '
                             '(num, channels, height, width); got %s'
                             % (self.name, bottom[0].shape_string()))
        top[0].reshape(bottom[0].shape)

    def _scale(self, x):
        sq = x * x
        if self.region == ACROSS:
            s = window_sum(sq, self.size, 1)
            s *= self.alpha / self.size
            s += self.k
        else:
            s = window_sum(window_sum(sq, self.size, 2), self.size, 3)
            s *= self.alpha / (self.size * self.size)
            s += 1.0
        return s

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        spow = xp.power(self._scale(x), np.float32(-self.beta))
        xp.multiply(x, spow, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].dev_data
        dy = top[0].dev_diff
        xp = get_array_module(x)
        # recompute from the bottom: the top may have been changed in place since forward
        s = self._scale(x)
        spow = xp.power(s, np.float32(-self.beta))
        ratio = dy * x * spow / s                      # dy * y / scale
        if self.region == ACROSS:
            acc = window_sum(ratio, self.size, 1)
            coef = 2.0 * self.alpha * self.beta / self.size
        else:
            acc = window_sum(window_sum(ratio, self.size, 2), self.size, 3)
            coef = 2.0 * self.alpha * self.beta / (self.size * self.size)
        dx = bottom[0].mutable_dev_diff
        xp.multiply(dy, spow, out=dx)
        dx -= np.float32(coef) * x * acc
