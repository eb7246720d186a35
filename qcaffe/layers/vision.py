"""Convolution family: Convolution, Deconvolution, Im2col.

Caffe equivalents: src/caffe/layers/{base_conv,conv,deconv,im2col}_layer.cpp.

Caffe loops over the images of a batch and runs one GEMM per image (and per group).  Here the
whole minibatch is one im2col (``qcaffe.ops.im2col``) and one GEMM (or one batched matmul over
groups), with no Python loop over images or pixels.  Two layouts are used internally, chosen per
geometry (blobs stay in Caffe's NCHW and weights in Caffe's (out, in/group, k...) layout):

* channels-first ("nchw"): columns (N, G, C/G*K, P) and ``W (G, O/G, C/G*K) @ col``; handles
  groups, 1x1 shortcuts and is best when C is small (LeNet conv1: the unrolled rows are runs of
  the output width);
* channels-last ("nhwc", group 1 and C >= 8): the input is transposed to (N, *S, C), columns are
  (N*P, K*C) gathered in contiguous runs of ``kw*C`` floats, and the product is a single large
  GEMM ``(N*P, K*C) @ (K*C, O)`` -- about 2x faster than the channels-first gather + batched
  GEMM on LeNet conv2.

On several idle cores each thread runs a slice of the batch through the whole chain, in both
layouts and both directions (``ops.parallel.blas_split``, OpenBLAS held at one thread
meanwhile): one hand-off per layer pass; the weight gradient is summed over the threads'
slices after the join.

Without groups the bias rides in the GEMM (a ones row/column in the columns, the bias as an
extra weight column).  The channels-last input gradient is computed one kernel tap at a time
(``dy @ W_tap``, a contiguous (rows, C) block) and added into the tap's window at once, so no
all-taps column buffer is written and read back.  Learnable blobs are read through
``self.weight(i)`` (compression seam); param diffs accumulate, bottom diffs are overwritten.  The forward's column buffer is kept for
the weight gradient (Caffe recomputes im2col in backward; keeping it trades memory for one
gather per iteration); above 256 MB of columns the batch is processed in slices and the
columns are rebuilt in backward, as Caffe does.
"""
import numpy as np

from ..backend import get_array_module
from ..fillers import fill
from ..ops import parallel
from ..ops.im2col import (ConvGeometry, col2im, im2col, padded, split_axes, tap_indices,
                          window_view)
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


def _nchw(x, num, c):
    return x.reshape((num, c, -1))


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
        self.is_1x1 = (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride)
                       and all(v == 0 for v in self.pad))
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
        self._cols = {}

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
            self._cols = {}
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


# Column buffers larger than this are built for a slice of the batch at a time (large images):
# the batch is still processed in as few GEMMs as fit, never one image at a time by default.
COL_BUDGET_BYTES = 256 << 20


@register_layer('Convolution')
class ConvolutionLayer(BaseConvolutionLayer):
    """Caffe: ConvolutionLayer.  ``top = W * bottom + b`` with groups, dilation, N-D spatial axes
    (``axis`` picks the channel axis; every axis after it is spatial).  ``force_nd_im2col`` is
    accepted and changes nothing (one N-D code path serves every dimensionality).

    Without groups the bias rides in the GEMM: the column buffer carries one extra row (or
    column) of ones and the weight matrix the bias as an extra column, so neither the forward
    bias add nor the backward bias reduction is a separate pass over the output.
    """

    def reshape(self, bottom, top):
        BaseConvolutionLayer.reshape(self, bottom, top)
        geom = self._geom
        # channels-last pays off when the unrolled rows (kw*C floats) are long; see module doc
        self.layout = 'nhwc' if (self.group == 1 and not self.is_1x1 and self.nsp >= 1
                                 and self.channels >= 8) else 'nchw'
        self.fold_bias = self.bias_term and self.group == 1 and not self.is_1x1
        per_image = 0 if self.is_1x1 else 4 * self.channels * geom.kernel_count * geom.out_count
        step = max(self.num, 1)
        if per_image * self.num > COL_BUDGET_BYTES:
            step = max(1, COL_BUDGET_BYTES // per_image)
        self._chunks = [(s, min(s + step, self.num)) for s in range(0, max(self.num, 1), step)]
        # with one chunk the forward's columns are kept for the weight gradient
        self._keep_cols = len(self._chunks) == 1

    def _batch(self, a):
        return a.reshape((self.num, self.channels) + self._geom.in_shape)

    def _columns(self, x, i):
        """GEMM operand for the batch slice ``x`` (n, C, *in): channels-first
        (n, G, C/G*K [+1], P) or channels-last (n*P, K*C [+1]); the +1 is the ones of the
        folded bias."""
        xp = get_array_module(x)
        geom, n, c = self._geom, x.shape[0], self.channels
        ck, p, extra = c * geom.kernel_count, geom.out_count, int(self.fold_bias)
        if self.layout == 'nhwc':
            order = self._order_nhwc()
            xt = geom.buffer('x_nhwc', (n,) + geom.in_shape + (c,), xp)
            parallel.copyto(xt, x.transpose(order), xp)
            buf = geom.buffer(('col', i), (n * p, ck + extra), xp)
            im2col(xt, geom, channels_last=True, out=split_axes(
                buf[:, :ck], [(n,) + geom.out_shape, geom.kernel + (c,)]))
            if extra:
                buf[:, ck] = 1.0
            return buf
        shape = (n, self.group, c // self.group * geom.kernel_count, p)
        if self.is_1x1:
            return x.reshape(shape)
        buf = geom.buffer(('col', i), (n, ck + extra, p), xp)
        im2col(x, geom, out=split_axes(buf[:, :ck], [n, (c,) + geom.kernel, geom.out_shape]))
        if not extra:
            return buf.reshape(shape)
        buf[:, ck] = 1.0
        return buf.reshape(n, 1, ck + 1, p)    # folded bias: group is 1

    def _gemm_weights(self):
        """(G, O/G, C/G*K) channels-first or (O, K*C) channels-last, + the bias column."""
        w = self.weight(0)
        if not self.fold_bias:
            if self.layout == 'nhwc':
                return w.transpose(self._order_nhwc()).reshape(self.num_output, -1)
            return w.reshape(self.num_output, -1)
        # written into one reused (O, K*C + 1) array: no concatenate allocation per pass
        xp = get_array_module(w)
        kc = w.size // self.num_output
        mat = self._geom.buffer('gemm_weights', (self.num_output, kc + 1), xp)
        if self.layout == 'nhwc':
            # (O, C, *k) -> (O, *k, C) flattened to (O, K*C), matching the columns
            wv = self._geom.view('gemm_weights_nhwc', mat, lambda b: split_axes(
                b[:, :kc], [self.num_output, self._geom.kernel + (self.channels,)]))
            xp.copyto(wv, w.transpose(self._order_nhwc()))
        else:
            xp.copyto(mat[:, :kc], w.reshape(self.num_output, kc))
        xp.copyto(mat[:, kc], self.weight(1))
        return mat

    def forward_impl(self, bottom, top):
        if self.num == 0:   # an empty batch (Caffe allows it): nothing to compute
            return
        w = self._gemm_weights()
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = self._batch(b.dev_data)
            y = _nchw(t.mutable_dev_data, self.num, self.num_output)
            for s, e in self._chunks:
                if self.layout == 'nhwc':
                    col = self._forward_nhwc(x[s:e], w, y[s:e], i)
                else:
                    col = self._forward_nchw(x[s:e], w, y[s:e], i)
            self._cols[i] = col if self._keep_cols else None
            if not self.fold_bias:
                self._add_bias(y)

    def backward_impl(self, top, propagate_down, bottom):
        if self.num == 0:
            return
        need_w = param_needs_grad(self, 0)
        need_b = self.bias_term and param_needs_grad(self, 1)
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = _nchw(t.dev_diff, self.num, self.num_output)
            if not self.fold_bias:
                self._bias_grad(dy)
            elif not (need_w or propagate_down[i]) and need_b:
                self._bias_grad(dy)
            if not (need_w or propagate_down[i]):
                continue
            dx = self._batch(b.mutable_dev_diff) if propagate_down[i] else None
            for s, e in self._chunks:
                col = self._cols.get(i)
                if col is None:   # columns not kept (chunked batch): rebuild them, as Caffe does
                    col = self._columns(self._batch(b.dev_data)[s:e], i)
                back = self._backward_nhwc if self.layout == 'nhwc' else self._backward_nchw
                back(dy[s:e], col, None if dx is None else dx[s:e], need_w,
                     need_b and self.fold_bias)

    def _accumulate_param_grads(self, g, need_w, need_b):
        """g: (O, K*C [+1]) gradient of the GEMM weight matrix (bias last when folded)."""
        kc = g.shape[1] - int(self.fold_bias)
        if need_w:
            dw = self.blobs[0].mutable_dev_diff
            if self.layout == 'nhwc':
                gw = g[:, :kc].reshape((self.num_output,) + self._geom.kernel
                                       + (self.channels,))       # (O, *k, C)
                dw += gw.transpose(self._order_nchw())
            else:
                dw += g[:, :kc].reshape(dw.shape)
        if need_b:
            self.blobs[1].mutable_dev_diff[...] += g[:, kc]

    # channels-first: W (G, O/G, C/G*K) @ columns (n, G, C/G*K, P) ---------------------------
    # Each thread unrolls its slice of the batch and runs that slice's per-image GEMMs with
    # OpenBLAS held at one thread (one hand-off per pass).  The per-image products are far
    # too small for OpenBLAS to thread well (LeNet conv1: 20x26x576): letting it thread each
    # of them cost more than it saved.
    def _forward_nchw(self, x, w, y, i):
        """x (n, C, *in) -> y (n, O, P); returns the (n, G, C/G*K [+1], P) columns."""
        xp = get_array_module(x)
        geom, n, g, c = self._geom, x.shape[0], self.group, self.channels
        wg = w.reshape(g, self.num_output // g, -1)
        yg = y.reshape(n, g, self.num_output // g, -1)
        if self.is_1x1:
            col = x.reshape(n, g, c // g, geom.out_count)
            windows = cols = None
        else:
            ck, extra = c * geom.kernel_count, int(self.fold_bias)
            buf = geom.buffer(('col', i), (n, ck + extra, geom.out_count), xp)
            windows = geom.view('windows', padded(x, geom, 0.0),     # (n, C, *k, *o)
                                lambda b: window_view(b, geom))
            cols = geom.view(('cols', i), buf, lambda b: split_axes(
                b[:, :ck], [n, (c,) + geom.kernel, geom.out_shape]))
            col = (buf.reshape(n, 1, ck + 1, -1) if extra
                   else buf.reshape(n, g, c // g * geom.kernel_count, -1))

        def work(s, e):
            if cols is not None:
                xp.copyto(cols[s:e], windows[s:e])
                if self.fold_bias:
                    buf[s:e, -1] = 1.0
            xp.matmul(wg, col[s:e], out=yg[s:e])
        parallel.blas_split(n, work, y.size + (0 if cols is None else buf.size), xp)
        return col

    def _backward_nchw(self, dy, col, dx, need_w, need_b):
        xp = get_array_module(dy)
        geom, n, g = self._geom, dy.shape[0], self.group
        og = self.num_output // g
        dy4 = dy.reshape(n, g, og, -1)
        need_g = need_w or need_b
        if need_g:
            gws = geom.buffer('gw_nchw', (n, g, og, col.shape[-2]), xp)
            colt = col.swapaxes(-1, -2)
        if dx is not None:
            wt = self.weight(0).reshape(g, og, -1).swapaxes(-1, -2)
            if not self.is_1x1:
                dcol = geom.buffer('dcol_nchw', (n, g, wt.shape[-2], geom.out_count), xp)
                acc = (geom.buffer('dx_nchw_pad', (n, self.channels) + geom.padded_shape, xp)
                       if geom.needs_pad else None)

        def work(s, e):
            if need_g:
                xp.matmul(dy4[s:e], colt[s:e], out=gws[s:e])
            if dx is None:
                return
            if self.is_1x1:
                xp.matmul(wt, dy4[s:e], out=dx[s:e].reshape(col[s:e].shape))
            else:
                xp.matmul(wt, dy4[s:e], out=dcol[s:e])
                col2im(dcol[s:e].reshape((e - s, self.channels) + geom.kernel
                                         + geom.out_shape),
                       geom, out=dx[s:e], acc=None if acc is None else acc[s:e])
        parallel.blas_split(n, work, dy.size * max(1, col.shape[-2] // 4), xp)
        if need_g:
            # summed over the images after the join, in one order whatever the thread count
            gw = gws.sum(axis=0)                                    # (G, O/G, C/G*K [+1])
            self._accumulate_param_grads(gw.reshape(self.num_output, -1), need_w, need_b)

    # channels-last: one GEMM (n*P, K*C) @ (K*C, O) ------------------------------------------
    # Each thread takes a slice of the batch through the whole chain (transpose, im2col, GEMM
    # on its rows, transpose back) with OpenBLAS held at one thread (ops.parallel.blas_split):
    # one hand-off per layer pass, every step on both cores, no BLAS pool spinning against the
    # workers.
    def _order_nhwc(self):
        return (0,) + tuple(range(2, 2 + self.nsp)) + (1,)

    def _order_nchw(self):
        return (0, self.nsp + 1) + tuple(range(1, self.nsp + 1))

    def _forward_nhwc(self, x, wt, y, i):
        """x (n, C, *in) -> y (n, O, P); returns the (n*P, K*C [+1]) columns."""
        xp = get_array_module(x)
        geom, n, c = self._geom, x.shape[0], self.channels
        p, ck, extra, o = geom.out_count, c * geom.kernel_count, int(self.fold_bias), \
            self.num_output
        # the transposed input lives in a zero-bordered buffer: no separate padding copy
        xt = geom.buffer('x_nhwc_pad', (n,) + geom.padded_shape + (c,), xp, fill=0.0)
        inner = geom.view('x_nhwc_inner', xt,
                          lambda b: b[(slice(None),) + geom.interior() + (slice(None),)])
        windows = geom.view('x_nhwc_windows', xt,                    # (n, *o, *k, C)
                            lambda b: window_view(b, geom, channels_last=True))
        buf = geom.buffer(('col', i), (n * p, ck + extra), xp)
        cols = geom.view(('cols', i), buf, lambda b: split_axes(
            b[:, :ck], [(n,) + geom.out_shape, geom.kernel + (c,)]))
        ym = geom.buffer('y_nhwc', (n * p, o), xp)
        order = self._order_nhwc()
        w = wt.T

        def work(s, e):
            xp.copyto(inner[s:e], x[s:e].transpose(order))
            xp.copyto(cols[s:e], windows[s:e])
            rows = slice(s * p, e * p)
            if extra:
                buf[rows, ck] = 1.0
            xp.matmul(buf[rows], w, out=ym[rows])
            xp.copyto(y[s:e], ym[rows].reshape(e - s, p, o).transpose(0, 2, 1))
        parallel.blas_split(n, work, buf.size, xp)
        return buf

    def _backward_nhwc(self, dy, colm, dx, need_w, need_b):
        xp = get_array_module(dy)
        geom, n, o, c = self._geom, dy.shape[0], self.num_output, self.channels
        p = geom.out_count
        dym = geom.buffer('dy_nhwc', (n * p, o), xp)
        need_g = need_w or need_b
        if dx is not None:
            # per-tap weights (K, O, C): tap t's input gradient is dy (rows, O) @ wk[t]
            wk = geom.buffer('w_taps', (geom.kernel_count, o, c), xp)
            xp.copyto(wk, self.weight(0).reshape(o, c, -1).transpose(2, 0, 1))
            dxt = geom.buffer('dx_nhwc', (n,) + geom.in_shape + (c,), xp)
            acc = (geom.buffer('dx_nhwc_pad', (n,) + geom.padded_shape + (c,), xp)
                   if geom.needs_pad else None)
            order = self._order_nchw()
        # weight gradient (O, K*C [+1]): each thread's slice of the batch gives a partial sum
        # over its rows, added up after the join (one pass over dy and the columns, while
        # they are in cache, and one hand-off for the whole backward)
        partial = {}

        def work(s, e):
            rows = slice(s * p, e * p)
            xp.copyto(dym[rows].reshape(e - s, p, o), dy[s:e].transpose(0, 2, 1))
            if need_g:
                partial[s] = xp.matmul(dym[rows].T, colm[rows])
            if dx is None:
                return
            # col2im fused with the GEMM, one kernel tap at a time: the tap's (rows, C) block
            # is added into its window while it is still in cache, instead of writing all
            # K blocks (8 MB on LeNet conv2) and reading them back (~5 % faster, 2 threads)
            a = acc[s:e] if acc is not None else dxt[s:e]
            a.fill(0)
            block = geom.buffer(('dx_tap', s), ((e - s) * p, c), xp)
            window = block.reshape((e - s,) + geom.out_shape + (c,))
            dyr = dym[rows]
            for t, (_, index) in enumerate(tap_indices(geom, channels_last=True)):
                xp.matmul(dyr, wk[t], out=block)
                dst = a[index]
                dst += window
            if acc is not None:
                dxt[s:e] = a[(slice(None),) + geom.interior() + (slice(None),)]
            xp.copyto(dx[s:e], dxt[s:e].transpose(order))
        parallel.blas_split(n, work, dy.size * (1 + geom.kernel_count * c // 8), xp)
        if need_g:
            g = partial.pop(0)
            for s in sorted(partial):
                g += partial[s]
            self._accumulate_param_grads(g, need_w, need_b)


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
