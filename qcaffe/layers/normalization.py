"""Normalisation and affine layers: BatchNorm, MVN, Scale, Bias.

Caffe equivalents: src/caffe/layers/{batch_norm,mvn,scale,bias}_layer.cpp.

Broadcasting follows Caffe's (outer, dim, inner) view: a blob is seen as
``(count(0, axis), count(axis, axis + k), count(axis + k))`` and the per-channel operand as
``(1, dim, 1)``, so one vectorised expression covers every layout.  All four layers may run in
place (top is bottom), as in Caffe.
"""
import numpy as np

from ..backend import get_array_module
from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer
from .common import canonical_axis, param_needs_grad


def _fail(layer, message, *args):
    raise LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


def channel_sum(a, b=None):
    """Sum over axes 0 and 2 of an (outer, C, inner) array, or of the product ``a * b``
    without materialising it (Caffe does these with gemv against a ones vector)."""
    xp = get_array_module(a)
    if b is None:
        return xp.einsum('ocs->c', a)
    return xp.einsum('ocs,ocs->c', a, b)


# -------------------------------------------------------------------------- BatchNorm
@register_layer('BatchNorm')
class BatchNormLayer(Layer):
    """Caffe: BatchNormLayer.  Per-channel (axis 1) normalisation without an affine part.

    Blobs (all zero-initialised, never touched by the solver: lr_mult 0):
    0 = running mean sum, 1 = running variance sum, 2 = scale factor (shape (1,)).

    * batch statistics (``use_global_stats`` false; the default in TRAIN): mean and *biased*
      variance over N and the spatial axes normalise the batch; then, inside Forward,
      ``blob2 = maf * blob2 + 1``, ``blob0 = maf * blob0 + mean``,
      ``blob1 = maf * blob1 + m/(m-1) * var`` (m = N * spatial, correction 1 when m == 1).
    * global statistics (default in TEST): ``mean = blob0 / blob2``, ``var = blob1 / blob2``
      (both 0 when blob2 == 0).
    * ``y = (x - mean) / sqrt(var + eps)``.
    * backward: global stats ``dx = dy / sqrt(var + eps)``; batch stats
      ``dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps)``.

    LayerSetUp appends ``param { lr_mult: 0 }`` for each of the 3 blobs without a ParamSpec and
    rejects a non-zero lr_mult, exactly as Caffe does.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.moving_average_fraction = float(p.moving_average_fraction)
        # proto2 presence: unset means "global stats in TEST, batch stats in TRAIN"
        self.use_global_stats = (bool(p.use_global_stats) if p.HasField('use_global_stats')
                                 else self.phase == caffe_pb2.TEST)
        self.eps = float(p.eps)
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if not self.blobs:
            for shape in ((self.channels,), (self.channels,), (1,)):
                self.new_blob(shape)  # zero-filled
        for i in range(3):
            if len(self.layer_param.param) == i:
                self.layer_param.param.add().lr_mult = 0
            elif self.layer_param.param[i].lr_mult != 0:
                _fail(self, 'Cannot configure batch normalization statistics as layer '
                      'parameters (param %d has lr_mult %g; BatchNorm blobs need lr_mult 0).',
                      i, self.layer_param.param[i].lr_mult)

    def learnable_blob_indices(self):
        """None: the blobs are statistics, changed by Forward only (lr_mult 0 gives the same
        in every update rule but LarsSGD, which ignores lr_mult).  Data-parallel training
        keeps such blobs equal across ranks by broadcasting the root's (qcaffe.distributed)."""
        return []

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 1 and bottom[0].shape[1] != self.channels:
            _fail(self, 'bottom shape %s has %d channels, the layer was set up for %d.',
                  bottom[0].shape_string(), bottom[0].shape[1], self.channels)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _view_shape(self, blob):
        """(N, C, spatial) view of the bottom; a 1-axis bottom is (N, 1, 1)."""
        n = blob.shape[0] if blob.num_axes else 1
        return (n, self.channels, blob.count_all // max(n * self.channels, 1))

    def forward_impl(self, bottom, top):
        shape3 = self._view_shape(bottom[0])
        x = bottom[0].dev_data.reshape(shape3)
        xp = get_array_module(x)
        y = top[0].mutable_dev_data.reshape(shape3)
        if self.use_global_stats:
            # read through the weight() seam like any layer (plain layers: the blob data)
            factor = float(self.weight(2).reshape(-1)[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            mean = self.weight(0) * np.float32(factor)
            var = self.weight(1) * np.float32(factor)
            self.std = xp.sqrt(var + np.float32(self.eps))
            # y = x * (1/std) - mean/std: two passes over the data, no full-size temporary
            inv = 1 / self.std
            xp.multiply(x, inv[None, :, None], out=y)
            y -= (mean * inv)[None, :, None]
            return
        m = shape3[0] * shape3[2]
        mean = channel_sum(x) / np.float32(max(m, 1))
        centered = x - mean[None, :, None]
        var = channel_sum(centered, centered) / np.float32(max(m, 1))  # biased, as Caffe
        self.update_running_stats(mean, var, m)
        self.std = xp.sqrt(var + np.float32(self.eps))
        xp.multiply(centered, (1 / self.std)[None, :, None], out=y)
        # Caffe's x_norm_: in place, later in-place layers (Scale, ReLU) overwrite the top
        self.x_norm = centered
        self.x_norm[...] = y

    def update_running_stats(self, mean, var, m):
        """Fold a batch's mean and biased variance over ``m`` values into blobs 0-2, as the
        batch-statistics forward does (label-free BN re-normalisation calls it with statistics
        gathered over many batches)."""
        maf = np.float32(self.moving_average_fraction)
        b0, b1, b2 = (b.mutable_dev_data for b in self.blobs[:3])
        b2 *= maf
        b2 += 1
        b0 *= maf
        b0 += mean
        correction = np.float32(m / (m - 1.0)) if m > 1 else np.float32(1)
        b1 *= maf
        b1 += correction * var

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        shape3 = self._view_shape(bottom[0])
        dy = top[0].dev_diff.reshape(shape3)
        inv_std = (1 / self.std)[None, :, None]
        if self.use_global_stats:
            bottom[0].mutable_dev_diff.reshape(shape3)[...] = dy * inv_std
            return
        y = self.x_norm
        m = np.float32(max(shape3[0] * shape3[2], 1))
        mean_dy = (channel_sum(dy) / m)[None, :, None]
        mean_dyy = (channel_sum(dy, y) / m)[None, :, None]
        dx = bottom[0].mutable_dev_diff.reshape(shape3)  # may be dy itself (in place)
        xp = get_array_module(dy)
        xp.subtract(dy, y * mean_dyy, out=dx)
        dx -= mean_dy
        dx *= inv_std


# -------------------------------------------------------------------------------- MVN
@register_layer('MVN')
class MVNLayer(Layer):
    """Caffe: MVNLayer.  Mean (and variance) normalisation per (n, c) over the spatial axes, or
    per n over C*H*W with ``across_channels``.

    ``y = x - mean``; with ``normalize_variance`` ``y = (x - mean) / (std + eps)`` — Caffe adds
    eps to the (biased) standard deviation, not to the variance.  Backward as Caffe:
    ``dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps)``, or ``dy - mean(dy)``.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom, top):
        b = bottom[0]
        rows = b.num if self.across_channels else b.num * b.channels
        self.rows = rows
        self.dim = b.count_all // rows if rows else 0
        if top[0] is not bottom[0]:
            top[0].reshape_like(b)

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data.reshape(self.rows, self.dim)
        xp = get_array_module(x)
        centered = x - x.mean(axis=1, keepdims=True, dtype=np.float32)
        y = top[0].mutable_dev_data.reshape(self.rows, self.dim)
        if self.normalize_variance:
            var = (centered * centered).mean(axis=1, keepdims=True, dtype=np.float32)
            self.std_eps = xp.sqrt(var) + np.float32(self.eps)
            y[...] = centered / self.std_eps
        else:
            y[...] = centered

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff.reshape(self.rows, self.dim)
        dx = dy - dy.mean(axis=1, keepdims=True, dtype=np.float32)
        if self.normalize_variance:
            y = top[0].dev_data.reshape(self.rows, self.dim)
            dx -= y * (dy * y).mean(axis=1, keepdims=True, dtype=np.float32)
            dx /= self.std_eps
        bottom[0].mutable_dev_diff.reshape(self.rows, self.dim)[...] = dx


# ----------------------------------------------------------------- Scale and Bias
class _BroadcastOperandLayer(Layer):
    """Shared machinery of Scale and Bias: an operand of shape ``bottom[0].shape[axis:axis+k]``
    that is a learned blob (one bottom) or ``bottom[1]`` (two bottoms), broadcast over the
    (outer, dim, inner) view of ``bottom[0]``."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def _params(self):
        raise NotImplementedError

    def _create_operand_blob(self, bottom, filler_param, default_value):
        """Caffe LayerSetUp for the one-bottom form: blob shaped like the covered axes."""
        p = self._params()
        field = self._param_field
        axis = canonical_axis(self, bottom[0], p.axis, field + '.axis')
        num_axes = int(p.num_axes)
        if num_axes < -1:
            _fail(self, '%s.num_axes must be non-negative, or -1 to extend to the end of '
                  'bottom[0] (got %d).', field, num_axes)
        if num_axes >= 0 and bottom[0].num_axes < axis + num_axes:
            _fail(self, '%s blob\'s shape extends past bottom[0]\'s shape %s when applied '
                  'starting with bottom[0] axis = %d (num_axes = %d).',
                  field.split('_')[0], bottom[0].shape_string(), axis, num_axes)
        end = None if num_axes == -1 else axis + num_axes
        blob = self.new_blob(bottom[0].shape[axis:end])
        if filler_param is not None:
            fill(blob, filler_param)
        else:
            blob.data[...] = default_value
        return blob

    def _operand(self, bottom):
        """The operand array (learned blob through ``weight`` or bottom[1])."""
        return bottom[1].dev_data if len(bottom) > 1 else self.weight(self._operand_index)

    def _reshape_operand(self, bottom, top):
        operand = bottom[1] if len(bottom) > 1 else self.blobs[self._operand_index]
        self.outer_dim, self.dim, self.inner_dim = self._broadcast_dims(bottom[0], operand)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _broadcast_dims(self, b, operand):
        """Caffe Reshape: check ``operand`` against ``b`` and return (outer, dim, inner)."""
        p = self._params()
        # a scalar operand (0 axes) applies from axis 0 whatever "axis" says (Caffe)
        axis = 0 if operand.num_axes == 0 else canonical_axis(self, b, p.axis,
                                                             self._param_field + '.axis')
        if b.num_axes < axis + operand.num_axes:
            _fail(self, 'the operand shape %s does not fit bottom[0] %s from axis %d.',
                  operand.shape_string(), b.shape_string(), axis)
        for i, d in enumerate(operand.shape):
            if b.shape[axis + i] != d:
                _fail(self, 'dimension mismatch between bottom[0]->shape(%d) = %d and the '
                      'operand shape(%d) = %d (bottom %s, operand %s).', axis + i,
                      b.shape[axis + i], i, d, b.shape_string(), operand.shape_string())
        return (b.count_range(0, axis), operand.count_all,
                b.count_range(axis + operand.num_axes))

    def _view3(self, array):
        return array.reshape(self.outer_dim, self.dim, self.inner_dim)

    def _store_operand_grad(self, bottom, grad):
        """Param diff accumulates (Caffe: param diffs are summed over iter_size); bottom[1]'s
        diff is overwritten."""
        if len(bottom) > 1:
            bottom[1].mutable_dev_diff[...] = grad.reshape(bottom[1].shape)
        else:
            d = self.blobs[self._operand_index].mutable_dev_diff
            d += grad.reshape(d.shape)

    def _operand_grad_needed(self, bottom, propagate_down):
        if len(bottom) > 1:
            return bool(propagate_down[1])
        return param_needs_grad(self, self._operand_index)


@register_layer('Bias')
class BiasLayer(_BroadcastOperandLayer):
    """Caffe: BiasLayer.  ``top = bottom[0] + b`` with b broadcast along axes
    ``[axis, axis + num_axes)``; b is a learned blob (filler default constant 0) or bottom[1].
    Backward: ``dx = dy``; ``db = sum of dy`` over the other axes."""
    _param_field = 'bias_param'
    _operand_index = 0

    def _params(self):
        return self.layer_param.bias_param

    def layer_setup(self, bottom, top):
        if len(bottom) == 1 and not self.blobs:
            p = self.layer_param.bias_param
            # FillerParameter's own default is constant 0, which is Caffe's default here
            self._create_operand_blob(bottom, p.filler, 0.0)

    def reshape(self, bottom, top):
        self._reshape_operand(bottom, top)

    def forward_impl(self, bottom, top):
        x = self._view3(bottom[0].dev_data)
        b = self._operand(bottom).reshape(1, self.dim, 1)
        get_array_module(x).add(x, b, out=self._view3(top[0].mutable_dev_data))

    def backward_impl(self, top, propagate_down, bottom):
        dy = top[0].dev_diff
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].mutable_dev_diff[...] = dy
        if self._operand_grad_needed(bottom, propagate_down):
            self._store_operand_grad(bottom, channel_sum(self._view3(dy)))


@register_layer('Scale')
class ScaleLayer(_BroadcastOperandLayer):
    """Caffe: ScaleLayer.  ``top = bottom[0] * s (+ b)`` with s broadcast along axes
    ``[axis, axis + num_axes)``; s is a learned blob 0 (filler default constant 1) or bottom[1].
    ``bias_term`` adds a learned bias (the last blob; ``bias_filler`` default constant 0) over
    the same axes, as Caffe's internal BiasLayer.

    Backward: ``ds = sum(dy * x)`` (x saved before an in-place forward overwrites it),
    ``dx = dy * s``, ``db = sum(dy)``.
    """
    _param_field = 'scale_param'
    _operand_index = 0

    def _params(self):
        return self.layer_param.scale_param

    def layer_setup(self, bottom, top):
        p = self.layer_param.scale_param
        one_bottom = len(bottom) == 1
        if one_bottom and not self.blobs:
            self._create_operand_blob(bottom, p.filler if p.HasField('filler') else None, 1.0)
        self.bias_index = None
        if p.bias_term:
            # Caffe: the bias is a new blob unless the blobs were given (loaded) already,
            # i.e. blobs + bottoms < 3 means it does not exist yet
            if len(self.blobs) + len(bottom) < 3:
                # unset bias_filler: FillerParameter's default, constant 0
                self._create_operand_blob(bottom, p.bias_filler, 0.0)
            self.bias_index = len(self.blobs) - 1

    def reshape(self, bottom, top):
        self._reshape_operand(bottom, top)
        if self.bias_index is not None:
            # Caffe's internal BiasLayer broadcasts its own blob (same axis, maybe fewer axes
            # than a bottom[1] scale)
            self.bias_dims = self._broadcast_dims(bottom[0], self.blobs[self.bias_index])

    def forward_impl(self, bottom, top):
        x = self._view3(bottom[0].dev_data)
        xp = get_array_module(x)
        if top[0] is bottom[0]:
            self._x_copy = x.copy()  # Caffe's temp_: ds needs x after top overwrote it
        s = self._operand(bottom).reshape(1, self.dim, 1)
        y = self._view3(top[0].mutable_dev_data)
        xp.multiply(x, s, out=y)
        if self.bias_index is not None:
            yb = top[0].mutable_dev_data.reshape(self.bias_dims)
            yb += self.weight(self.bias_index).reshape(1, -1, 1)

    def backward_impl(self, top, propagate_down, bottom):
        if self.bias_index is not None and param_needs_grad(self, self.bias_index):
            db = self.blobs[self.bias_index].mutable_dev_diff
            db += channel_sum(top[0].dev_diff.reshape(self.bias_dims)).reshape(db.shape)
        dy = self._view3(top[0].dev_diff)
        if self._operand_grad_needed(bottom, propagate_down):
            x = self._x_copy if top[0] is bottom[0] else self._view3(bottom[0].dev_data)
            self._store_operand_grad(bottom, channel_sum(dy, x))
        if propagate_down[0]:
            s = self._operand(bottom).reshape(1, self.dim, 1)
            dx = self._view3(bottom[0].mutable_dev_diff)
            get_array_module(dy).multiply(dy, s, out=dx)
