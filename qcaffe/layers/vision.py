"""Convolution family: Convolution, Deconvolution, Im2col.

Caffe equivalents: src/caffe/layers/{base_conv,conv,deconv,im2col}_layer.cpp.

The layers read like Caffe's: parameters and shapes here, the arithmetic in ``qcaffe.ops``
(``ops.conv.ConvPlan``: im2col + GEMM over chunks of the minibatch, in the layout that suits
the geometry; ``ops.im2col``: the unrolling itself).  Learnable blobs are read through
``self.weight(i)`` (the compression seam); param diffs accumulate, bottom diffs are
overwritten.
"""
import numpy as np

from ..backend import get_array_module
from ..fillers import fill
from ..ops.conv import ConvPlan
from ..ops.im2col import ConvGeometry, col2im, im2col
from .base import Layer, LayerError, register_layer
from .common import canonical_axis, param_needs_grad


def _err(layer, message, *args):
    return LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


def spatial_param(layer, p, name, nsp, default, prefix='convolution_param'):
    """Caffe's reading of a repeated spatial field (``kernel_size``/``stride``/``pad``/
    ``dilation``) or its ``*_h``/``*_w`` spelling; returns a tuple of ``nsp`` ints."""
    hw = {'kernel_size': ('kernel_h', 'kernel_w'), 'stride': ('stride_h', 'stride_w'),
          'pad': ('pad_h', 'pad_w')}.get(name)
    values = list(getattr(p, name))
    if hw is not None and (p.HasField(hw[0]) or p.HasField(hw[1])):
        if nsp != 2:
            raise _err(layer, '%s.%s/%s can only be used for 2D convolution (this bottom has '
                       '%d spatial axes); use the repeated %s instead',
                       prefix, hw[0], hw[1], nsp, name)
        if values:
            raise _err(layer, 'Either %s.%s or %s/%s should be specified; not both.',
                       prefix, name, hw[0], hw[1])
        if name == 'kernel_size' and not (p.HasField(hw[0]) and p.HasField(hw[1])):
            raise _err(layer, 'For non-square filters both %s.kernel_h and kernel_w are '
                       'required.', prefix)
        return (int(getattr(p, hw[0])), int(getattr(p, hw[1])))
    if not values:
        if default is None:
            raise _err(layer, '%s.kernel_size (or kernel_h and kernel_w) is required.', prefix)
        return (int(default),) * nsp
    if len(values) not in (1, nsp):
        raise _err(layer, '%s.%s must be specified once, or once per spatial dimension '
                   '(%s given %d times; %d spatial dimensions).',
                   prefix, name, name, len(values), nsp)
    if len(values) == 1:
        values = values * nsp
    return tuple(int(v) for v in values)


def conv_spatial_params(layer, p, nsp):
    """kernel, stride, pad, dilation of a ConvolutionParameter, checked as Caffe checks them."""
    kernel = spatial_param(layer, p, 'kernel_size', nsp, None)
    stride = spatial_param(layer, p, 'stride', nsp, 1)
    pad = spatial_param(layer, p, 'pad', nsp, 0)
    dilation = spatial_param(layer, p, 'dilation', nsp, 1)
    for field, vals in (('kernel_size', kernel), ('stride', stride), ('dilation', dilation)):
        if any(v <= 0 for v in vals):
            raise _err(layer, 'convolution_param.%s must be > 0 in every dimension, got %s',
                       field, list(vals))
    return kernel, stride, pad, dilation


class BaseConvolutionLayer(Layer):
    """Caffe: BaseConvolutionLayer (shared parameter reading, weight creation, shapes)."""
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse = False  # Deconvolution swaps the roles of input and output

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = canonical_axis(self, bottom[0], p.axis, 'convolution_param.axis')
        self.nsp = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = conv_spatial_params(
            self, p, self.nsp)
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise _err(self, 'convolution_param.num_output must be set and > 0')
        self.group = int(p.group)
        if self.group <= 0:
            raise _err(self, 'convolution_param.group must be > 0, got %d', self.group)
        if self.channels % self.group:
            raise _err(self, 'Number of input channels (%d) should be a multiple of '
                       'convolution_param.group (%d).', self.channels, self.group)
        if self.num_output % self.group:
            raise _err(self, 'convolution_param.num_output (%d) should be a multiple of '
                       'convolution_param.group (%d).', self.num_output, self.group)
        if self.reverse:
            self.conv_out_channels, self.conv_in_channels = self.channels, self.num_output
        else:
            self.conv_out_channels, self.conv_in_channels = self.num_output, self.channels
        self.bias_term = p.bias_term
        wshape = (self.conv_out_channels, self.conv_in_channels // self.group) + self.kernel
        if self.blobs:
            want = 1 + int(self.bias_term)
            if len(self.blobs) != want:
                raise _err(self, 'Incorrect number of weight blobs (%d, expected %d).',
                           len(self.blobs), want)
            if tuple(self.blobs[0].shape) != wshape:
                raise _err(self, 'weight blob shape %s does not match the expected %s',
                           self.blobs[0].shape, wshape)
        else:
            fill(self.new_blob(wshape), p.weight_filler)
            if self.bias_term:
                fill(self.new_blob(self.num_output), p.bias_filler)
        self._geom = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise _err(self, 'all bottoms must have the same shape: bottom %d is %s, '
                           'bottom 0 is %s', i, b.shape_string(), bottom[0].shape_string())
        ca = self.channel_axis
        if len(shape) != ca + 1 + self.nsp:
            raise _err(self, 'bottom num_axes may not change (was %d spatial axes, now %s)',
                       self.nsp, bottom[0].shape_string())
        if shape[ca] != self.channels:
            raise _err(self, 'Input size incompatible with convolution kernel: the bottom has '
                       '%d channels, the weights expect %d', shape[ca], self.channels)
        self.num = int(np.prod(shape[:ca], dtype=np.int64))
        in_sp = shape[ca + 1:]
        if self.reverse:
            out_sp = tuple(s * (i - 1) + d * (k - 1) + 1 - 2 * p for i, s, d, k, p in zip(
                in_sp, self.stride, self.dilation, self.kernel, self.pad))
            geom = ConvGeometry(out_sp, self.kernel, self.stride, self.pad, self.dilation)
        else:
            geom = ConvGeometry(in_sp, self.kernel, self.stride, self.pad, self.dilation)
            out_sp = geom.out_shape
        if any(o <= 0 for o in out_sp):
            raise _err(self, 'output size %s is not positive for bottom %s (kernel %s, stride '
                       '%s, pad %s, dilation %s)', list(out_sp), bottom[0].shape_string(),
                       list(self.kernel), list(self.stride), list(self.pad),
                       list(self.dilation))
        if self._geom != geom:
            self._geom = geom
        self.out_spatial = tuple(out_sp)
        for t in top:
            t.reshape(shape[:ca] + (self.num_output,) + self.out_spatial)

    # helpers shared by forward/backward ---------------------------------------------------
    def _add_bias(self, y):
        """y: (num, O, P) view of a top."""
        if self.bias_term:
            y += self.weight(1).reshape(1, self.num_output, 1)

    def _bias_grad(self, dy):
        if self.bias_term and param_needs_grad(self, 1):
            self.blobs[1].mutable_dev_diff[...] += dy.sum(axis=(0, 2))


@register_layer('Convolution')
class ConvolutionLayer(BaseConvolutionLayer):
    """Caffe: ConvolutionLayer.  ``top = W * bottom + b`` with groups, dilation, N-D spatial axes
    (``axis`` picks the channel axis; every axis after it is spatial).  ``force_nd_im2col`` is
    accepted and changes nothing (one N-D code path serves every dimensionality)."""

    def reshape(self, bottom, top):
        BaseConvolutionLayer.reshape(self, bottom, top)
        plan = getattr(self, 'plan', None)
        if plan is None or plan.geom is not self._geom or plan.num != self.num:
            self.plan = ConvPlan(self._geom, self.num, self.channels, self.num_output,
                                 self.group, self.bias_term)

    def _batch(self, a):
        """A bottom's array as (num, C, *spatial)."""
        return a.reshape((self.num, self.channels) + self._geom.in_shape)

    def forward_impl(self, bottom, top):
        if self.num == 0:   # an empty batch (Caffe allows it): nothing to compute
            return
        w = self.weight(0)
        b = self.weight(1) if self.bias_term else None
        for i, (bot, t) in enumerate(zip(bottom, top)):
            self.plan.forward(self._batch(bot.dev_data), w, b, t.mutable_dev_data, i)

    def backward_impl(self, top, propagate_down, bottom):
        if self.num == 0:
            return
        w = self.weight(0)
        dw = self.blobs[0].mutable_dev_diff if param_needs_grad(self, 0) else None
        db = (self.blobs[1].mutable_dev_diff
              if self.bias_term and param_needs_grad(self, 1) else None)
        for i, (t, bot) in enumerate(zip(top, bottom)):
            dx = self._batch(bot.mutable_dev_diff) if propagate_down[i] else None
            self.plan.backward(self._batch(bot.dev_data), w, t.dev_diff, dx, dw, db, i)


@register_layer('Deconvolution')
class DeconvolutionLayer(BaseConvolutionLayer):
    """Caffe: DeconvolutionLayer (transposed convolution): the forward is the convolution's
    backward-data, the backward-data is a convolution.  Weights (C_in, num_output/group, k...);
    output size ``stride*(in-1) + dilation*(k-1) + 1 - 2*pad``."""
    reverse = True

    def forward_impl(self, bottom, top):
        if self.num == 0:   # an empty batch (Caffe allows it): nothing to compute
            return
        g, geom = self.group, self._geom
        cin_g = self.channels // g
        w = self.weight(0).reshape(g, cin_g, -1)          # (G, Cin/G, Og*K)
        wt = w.swapaxes(-1, -2)
        for b, t in zip(bottom, top):
            x = b.dev_data.reshape(self.num, g, cin_g, geom.out_count)
            xp = get_array_module(x)
            col = xp.matmul(wt, x)                         # (num, G, Og*K, P_in)
            y = t.mutable_dev_data
            col2im(col.reshape((self.num, self.num_output) + geom.kernel + geom.out_shape),
                   geom, out=y)
            self._add_bias(y.reshape(self.num, self.num_output, -1))

    def backward_impl(self, top, propagate_down, bottom):
        if self.num == 0:
            return
        g, geom = self.group, self._geom
        cin_g = self.channels // g
        need_w = param_needs_grad(self, 0)
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.dev_diff
            xp = get_array_module(dy)
            self._bias_grad(dy.reshape(self.num, self.num_output, -1))
            if not (need_w or propagate_down[i]):
                continue
            buf = geom.buffer('col', (self.num, self.num_output) + geom.kernel
                              + geom.out_shape, xp)
            col = im2col(dy.reshape((self.num, self.num_output) + geom.in_shape), geom,
                         out=buf).reshape(self.num, g, -1, geom.out_count)
            if need_w:
                x = b.dev_data.reshape(self.num, g, cin_g, geom.out_count)
                dw = self.blobs[0].mutable_dev_diff.reshape(g, cin_g, -1)
                dw += xp.matmul(x, col.swapaxes(-1, -2)).sum(axis=0)
            if propagate_down[i]:
                w = self.weight(0).reshape(g, cin_g, -1)
                xp.matmul(w, col, out=b.mutable_dev_diff.reshape(
                    self.num, g, cin_g, geom.out_count))


@register_layer('Im2col')
class Im2colLayer(Layer):
    """Caffe: Im2colLayer.  Top (N, C*prod(kernel), *out): row (c, k...) of Caffe's col buffer
    for every output position; backward is col2im (overlapping windows add up)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = canonical_axis(self, bottom[0], p.axis, 'convolution_param.axis')
        self.nsp = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = conv_spatial_params(
            self, p, self.nsp)
        self._geom = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        ca = self.channel_axis
        self.num = int(np.prod(shape[:ca], dtype=np.int64))
        self.channels = shape[ca]
        geom = ConvGeometry(shape[ca + 1:], self.kernel, self.stride, self.pad, self.dilation)
        if any(o <= 0 for o in geom.out_shape):
            raise _err(self, 'output size %s is not positive for bottom %s',
                       list(geom.out_shape), bottom[0].shape_string())
        if self._geom != geom:
            self._geom = geom
        top[0].reshape(shape[:ca] + (self.channels * geom.kernel_count,) + geom.out_shape)

    def forward_impl(self, bottom, top):
        if self.num == 0:   # an empty batch (Caffe allows it): nothing to compute
            return
        geom = self._geom
        x = bottom[0].dev_data.reshape((self.num, self.channels) + geom.in_shape)
        im2col(x, geom, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if self.num == 0:
            return
        if not propagate_down[0]:
            return
        geom = self._geom
        col = top[0].dev_diff.reshape((self.num, self.channels) + geom.kernel + geom.out_shape)
        col2im(col, geom, out=bottom[0].mutable_dev_diff)
