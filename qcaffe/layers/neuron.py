"""Neuron layers: element-wise activations with one bottom and one top of the same shape.

Caffe equivalents: src/caffe/layers/{neuron,relu,prelu,elu,sigmoid,tanh,absval,bnll,power,exp,
log,dropout,threshold,clip,swish}_layer.cpp.

Every layer here may run in place (top is bottom) except AbsVal, which Caffe forbids.  Where
Caffe's backward reads the bottom data and would therefore see the *top* after an in-place
forward (PReLU, Power, Log, BNLL, Clip), the layer keeps a copy of the bottom taken before it is
overwritten (PReLU's ``bottom_memory_`` in Caffe; for the others Caffe silently computes a wrong
gradient in place, which we do not reproduce).  Layers whose derivative can be written in terms
of the top (ReLU, ELU, Sigmoid, TanH, Exp, Swish) read the top instead and need no copy.

All arithmetic is float32 numpy/cupy through ``xp = get_array_module(...)``.
"""
import math

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer
from .common import param_needs_grad


def _fail(layer, message, *args):
    raise LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


class NeuronLayer(Layer):
    """Caffe: NeuronLayer.  One bottom, one top shaped like it; in place allowed.

    Subclasses implement ``forward_impl`` and ``backward_impl``.  A subclass whose backward
    needs the original bottom values sets ``keeps_bottom = True`` and reads
    ``self.bottom_data(bottom)`` in backward: the bottom itself, or the copy saved by
    ``save_bottom`` when the layer ran in place.
    """
    exact_num_bottom = 1
    exact_num_top = 1
    keeps_bottom = False
    allow_in_place = True

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            if not self.allow_in_place:
                _fail(self, '%s Layer does not allow in-place computation.', self.type)
        else:
            top[0].reshape_like(bottom[0])

    def save_bottom(self, bottom, top):
        """Copy the bottom before an in-place forward overwrites it (Caffe's bottom_memory_)."""
        if self.keeps_bottom and top[0] is bottom[0]:
            self._bottom_copy = bottom[0].dev_data.copy()

    def bottom_data(self, bottom, top):
        if top[0] is bottom[0] and self.keeps_bottom:
            return self._bottom_copy
        return bottom[0].dev_data


# ------------------------------------------------------------------------------- ReLU
@register_layer('ReLU')
class ReLULayer(NeuronLayer):
    """Caffe: ReLULayer.  ``y = max(x, 0) + negative_slope * min(x, 0)``.

    Backward: ``dx = dy * (x > 0 ? 1 : negative_slope)``.  In place, the sign test is done on
    the top, which has the sign of the bottom for any slope >= 0 (Caffe reads the overwritten
    bottom the same way).
    """

    def layer_setup(self, bottom, top):
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        y = top[0].mutable_dev_data
        if self.negative_slope == 0:
            xp.maximum(x, 0, out=y)
        else:
            xp.multiply(x, xp.where(x > 0, np.float32(1), np.float32(self.negative_slope)),
                        out=y)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].dev_data  # the top when in place: same sign pattern
        xp = get_array_module(x)
        if self.negative_slope == 0:
            slope = x > 0  # bool multiplies as 0/1: one temporary less on the hot path
        else:
            slope = xp.where(x > 0, np.float32(1), np.float32(self.negative_slope))
        dx = bottom[0].mutable_dev_diff
        xp.multiply(top[0].dev_diff, slope, out=dx)


# ------------------------------------------------------------------------------ PReLU
@register_layer('PReLU')
class PReLULayer(NeuronLayer):
    """Caffe: PReLULayer.  ``y = max(x, 0) + a_c * min(x, 0)`` with a learned slope per channel
    (axis 1), or one slope (a 0-axis blob, as Caffe stores it) when ``channel_shared``.

    Default filler constant 0.25.  Backward: ``da_c += sum(dy * x * (x <= 0))`` over all but
    the channel axis, ``dx = dy * (x > 0 ? 1 : a_c)``; in place it uses the saved bottom.
    """
    keeps_bottom = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            _fail(self, 'Number of axes of bottom blob must be >=2 (got shape %s).',
                  bottom[0].shape_string())
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            blob = self.new_blob(() if self.channel_shared else (channels,))
            if p.HasField('filler'):
                fill(blob, p.filler)
            else:
                blob.data[...] = 0.25
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count_all != want:
            _fail(self, 'Negative slope size is inconsistent with prototxt config: the slope '
                  'blob has %d values, channel_shared = %s needs %d.',
                  self.blobs[0].count_all, self.channel_shared, want)

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            _fail(self, 'Number of axes of bottom blob must be >=2 (got shape %s).',
                  bottom[0].shape_string())
        NeuronLayer.reshape(self, bottom, top)

    def _slope(self, x):
        """The slope broadcastable against ``x`` (N, C, ...)."""
        a = self.weight(0)
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        x = self.bottom_data(bottom, top)  # the saved copy when in place
        xp = get_array_module(x)
        a = self._slope(x)
        # y = x + (a - 1) * min(x, 0): three passes, no full-size temporary
        y = top[0].mutable_dev_data
        xp.minimum(x, 0, out=y)
        y *= a - 1
        y += x

    def backward_impl(self, top, propagate_down, bottom):
        x = self.bottom_data(bottom, top)
        dy = top[0].dev_diff
        xp = get_array_module(dy)
        if param_needs_grad(self, 0):
            # sum(dy * x * (x <= 0)) == sum(dy * min(x, 0)) per channel
            neg_part = xp.minimum(x, 0)
            da = self.blobs[0].mutable_dev_diff
            if self.channel_shared:
                da += xp.vdot(dy.ravel(), neg_part.ravel())
            else:
                n, c = dy.shape[:2]
                da += xp.einsum('ncs,ncs->c', dy.reshape(n, c, -1), neg_part.reshape(n, c, -1))
        if propagate_down[0]:
            # dx = dy * (x > 0 ? 1 : a) = dy + (a - 1) * dy * (x <= 0)
            corr = dy * (self._slope(x) - 1)
            corr *= x <= 0
            xp.add(dy, corr, out=bottom[0].mutable_dev_diff)


# -------------------------------------------------------------------------------- ELU
@register_layer('ELU')
class ELULayer(NeuronLayer):
    """Caffe: ELULayer.  ``y = x`` (x > 0) else ``alpha * (exp(x) - 1)``.

    Backward: ``dx = dy`` (x > 0) else ``dy * (y + alpha)``, read from the top (in-place safe).
    """

    def layer_setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        # expm1 on min(x, 0): no overflow warning for large positive x, which take the x branch
        neg = self.alpha * xp.expm1(xp.minimum(x, 0))
        top[0].mutable_dev_data[...] = xp.where(x > 0, x, neg)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].dev_data
        xp = get_array_module(y)
        # y > 0 exactly when x > 0 (alpha >= 0 keeps the negative branch <= 0)
        bottom[0].mutable_dev_diff[...] = top[0].dev_diff * xp.where(
            y > 0, np.float32(1), y + np.float32(self.alpha))


# ---------------------------------------------------------------------------- Sigmoid
@register_layer('Sigmoid')
class SigmoidLayer(NeuronLayer):
    """Caffe: SigmoidLayer.  ``y = 0.5 * tanh(0.5 x) + 0.5`` (Caffe master's overflow-free
    form of 1/(1+exp(-x))).  Backward: ``dx = dy * y * (1 - y)``."""

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        top[0].mutable_dev_data[...] = sigmoid(xp, x)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].dev_data
            bottom[0].mutable_dev_diff[...] = top[0].dev_diff * y * (1 - y)


def sigmoid(xp, x):
    """Caffe's sigmoid ``0.5 * tanh(0.5 x) + 0.5`` (shared with Swish and the sigmoid loss)."""
    return np.float32(0.5) * xp.tanh(np.float32(0.5) * x) + np.float32(0.5)


# ------------------------------------------------------------------------------- TanH
@register_layer('TanH')
class TanHLayer(NeuronLayer):
    """Caffe: TanHLayer.  ``y = tanh(x)``; backward ``dx = dy * (1 - y^2)``."""

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        xp.tanh(x, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].dev_data
            bottom[0].mutable_dev_diff[...] = top[0].dev_diff * (1 - y * y)


# ----------------------------------------------------------------------------- AbsVal
@register_layer('AbsVal')
class AbsValLayer(NeuronLayer):
    """Caffe: AbsValLayer.  ``y = |x|``; backward ``dx = sign(x) * dy`` (0 at x = 0).
    Not in place (Caffe checks top != bottom)."""
    allow_in_place = False

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        xp.abs(x, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].dev_data
            xp = get_array_module(x)
            bottom[0].mutable_dev_diff[...] = xp.sign(x) * top[0].dev_diff


# ------------------------------------------------------------------------------- BNLL
_BNLL_THRESHOLD = 50.0  # Caffe's kBNLL_THRESHOLD: clamp before exp in backward


@register_layer('BNLL')
class BNLLLayer(NeuronLayer):
    """Caffe: BNLLLayer (binomial normal log likelihood, softplus).

    ``y = x + log(1 + exp(-x))`` for x > 0 else ``log(1 + exp(x))``;
    backward ``dx = dy * e / (e + 1)`` with ``e = exp(min(x, 50))``.
    """
    keeps_bottom = True

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        x = bottom[0].dev_data
        xp = get_array_module(x)
        # the two branches of Caffe written as one stable expression: max(x,0) + log1p(exp(-|x|))
        top[0].mutable_dev_data[...] = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.bottom_data(bottom, top)
            xp = get_array_module(x)
            e = xp.exp(xp.minimum(x, np.float32(_BNLL_THRESHOLD)))
            bottom[0].mutable_dev_diff[...] = top[0].dev_diff * e / (e + 1)


# ------------------------------------------------------------------------------ Power
@register_layer('Power')
class PowerLayer(NeuronLayer):
    """Caffe: PowerLayer.  ``y = (shift + scale * x) ^ power``.

    When ``power * scale == 0`` the output is the constant ``1`` (power 0) or ``shift^power``
    and the gradient is zero, as in Caffe.  Backward:
    ``dx = dy * power * scale * (shift + scale * x) ^ (power - 1)``.
    """
    keeps_bottom = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power = float(p.power)
        self.scale = float(p.scale)
        self.shift = float(p.shift)
        self.diff_scale = self.power * self.scale

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        y = top[0].mutable_dev_data
        if self.diff_scale == 0:
            y[...] = 1.0 if self.power == 0 else self.shift ** self.power
            return
        x = bottom[0].dev_data
        xp = get_array_module(x)
        base = x * np.float32(self.scale) + np.float32(self.shift)
        y[...] = base if self.power == 1 else xp.power(base, np.float32(self.power))

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_dev_diff
        if self.diff_scale == 0:
            dx[...] = 0
            return
        dy = top[0].dev_diff
        if self.power == 1:
            dx[...] = dy * np.float32(self.diff_scale)
            return
        x = self.bottom_data(bottom, top)
        xp = get_array_module(x)
        base = x * np.float32(self.scale) + np.float32(self.shift)
        if self.power == 2:
            grad = base * np.float32(self.diff_scale)
        else:
            grad = xp.power(base, np.float32(self.power - 1)) * np.float32(self.diff_scale)
        dx[...] = dy * grad


# -------------------------------------------------------------------------------- Exp
def _log_base(layer, base):
    """ln(base) for Exp/Log; base -1 (the default) means e."""
    if base == -1:
        return 1.0
    if not base > 0:
        _fail(layer, 'base must be strictly positive, or -1 for base e (got %g).', base)
    return math.log(base)


@register_layer('Exp')
class ExpLayer(NeuronLayer):
    """Caffe: ExpLayer.  ``y = base ^ (shift + scale * x)`` (base -1 means e), computed as
    ``outer * exp(inner * x)`` with ``inner = ln(base) * scale``, ``outer = base ^ shift``.
    Backward ``dx = dy * y * inner`` (from the top: in-place safe)."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.exp_param
        log_base = _log_base(self, float(p.base))
        self.inner_scale = log_base * float(p.scale)
        self.outer_scale = 1.0 if p.shift == 0 else math.exp(log_base * float(p.shift))

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        y = top[0].mutable_dev_data
        xp.exp(x * np.float32(self.inner_scale), out=y)
        if self.outer_scale != 1:
            y *= np.float32(self.outer_scale)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].mutable_dev_diff[...] = (top[0].dev_diff * top[0].dev_data
                                               * np.float32(self.inner_scale))


# -------------------------------------------------------------------------------- Log
@register_layer('Log')
class LogLayer(NeuronLayer):
    """Caffe: LogLayer.  ``y = log_base(shift + scale * x)`` (base -1 means e).
    Backward ``dx = dy * scale / ((shift + scale * x) * ln(base))``."""
    keeps_bottom = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.log_param
        log_base = _log_base(self, float(p.base))
        if log_base == 0:  # Caffe would silently output +-inf everywhere
            _fail(self, 'log_param.base = 1 has no logarithm; use a positive base other than 1 '
                  '(or -1 for base e).')
        self.base_scale = 1.0 / log_base
        self.input_scale = float(p.scale)
        self.input_shift = float(p.shift)

    def _input(self, x):
        if self.input_scale == 1 and self.input_shift == 0:
            return x
        return x * np.float32(self.input_scale) + np.float32(self.input_shift)

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        x = bottom[0].dev_data
        xp = get_array_module(x)
        y = top[0].mutable_dev_data
        xp.log(self._input(x), out=y)
        if self.base_scale != 1:
            y *= np.float32(self.base_scale)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.bottom_data(bottom, top)
            bottom[0].mutable_dev_diff[...] = (top[0].dev_diff / self._input(x)
                                               * np.float32(self.base_scale * self.input_scale))


# ---------------------------------------------------------------------------- Dropout
@register_layer('Dropout')
class DropoutLayer(NeuronLayer):
    """Caffe: DropoutLayer (inverted dropout).

    TRAIN: keep each unit with probability ``1 - dropout_ratio`` (boolean mask drawn from the
    seeded backend generator) and scale kept units by ``1 / (1 - dropout_ratio)``; backward
    applies the same mask and scale.  TEST: identity both ways.  The phase is the layer's own (set by the
    Net from its phase), as Caffe's ``phase_``.
    """

    def layer_setup(self, bottom, top):
        self.ratio = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            _fail(self, 'dropout_param.dropout_ratio must be in [0, 1), got %g.', self.ratio)
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask = None

    def training(self):
        return self.phase == caffe_pb2.TRAIN

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        y = top[0].mutable_dev_data
        if self.training():
            xp = get_array_module(x)
            self.mask = self._draw_mask(xp, x.shape)
            xp.multiply(x, self.mask, out=y)
            y *= np.float32(self.scale)
        elif y is not x:
            y[...] = x

    def _draw_mask(self, xp, shape):
        """Boolean keep-mask, P(keep) = 1 - ratio.  On CPU: 32-bit integers from the seeded
        generator against ``UINT_MAX * ratio`` (Caffe's GPU rule; ~2x faster than float
        uniforms); on GPU: device uniforms."""
        if xp is np:
            bits = backend.rng().randint(0, 2 ** 32, size=shape, dtype=np.uint32)
            return bits > np.uint32(min(self.ratio * 4294967295.0, 4294967295.0))
        return backend.random_uniform(shape) >= np.float32(self.ratio)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff
        dx = bottom[0].mutable_dev_diff
        if self.training():
            if self.mask is None or self.mask.shape != dy.shape:
                _fail(self, 'backward called before a TRAIN-phase forward of this shape.')
            get_array_module(dy).multiply(dy, self.mask, out=dx)
            dx *= np.float32(self.scale)
        elif dx is not dy:
            dx[...] = dy


# -------------------------------------------------------------------------- Threshold
@register_layer('Threshold')
class ThresholdLayer(NeuronLayer):
    """Caffe: ThresholdLayer.  ``y = 1 if x > threshold else 0``.  No backward (Caffe's is
    NOT_IMPLEMENTED): asking for a bottom gradient raises."""

    def layer_setup(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        top[0].mutable_dev_data[...] = x > np.float32(self.threshold)


# ------------------------------------------------------------------------------- Clip
@register_layer('Clip')
class ClipLayer(NeuronLayer):
    """Caffe master: ClipLayer.  ``y = max(min, min(x, max))``; backward passes ``dy`` where
    ``min <= x <= max`` (bounds included, as Caffe), zero elsewhere."""
    keeps_bottom = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.clip_param
        if not (p.HasField('min') and p.HasField('max')):
            _fail(self, 'clip_param needs both "min" and "max" (required fields).')
        self.min = float(p.min)
        self.max = float(p.max)
        if self.min > self.max:
            _fail(self, 'clip_param.min (%g) must not exceed clip_param.max (%g).',
                  self.min, self.max)

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        x = bottom[0].dev_data
        xp = get_array_module(x)
        xp.clip(x, np.float32(self.min), np.float32(self.max), out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = self.bottom_data(bottom, top)
            inside = (x >= np.float32(self.min)) & (x <= np.float32(self.max))
            bottom[0].mutable_dev_diff[...] = top[0].dev_diff * inside


# ------------------------------------------------------------------------------ Swish
@register_layer('Swish')
class SwishLayer(NeuronLayer):
    """Caffe: SwishLayer.  ``y = x * sigmoid(beta * x)``.  Backward (Caffe's form, from the top
    and the cached sigmoid, so in-place safe): ``dx = dy * (beta*y + s * (1 - beta*y))``."""

    def layer_setup(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        self.sig = sigmoid(xp, x * np.float32(self.beta))
        top[0].mutable_dev_data[...] = x * self.sig

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            by = top[0].dev_data * np.float32(self.beta)
            bottom[0].mutable_dev_diff[...] = top[0].dev_diff * (by + self.sig * (1 - by))
