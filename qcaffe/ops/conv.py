"""Convolution as im2col + GEMM over a whole minibatch, in two layouts, in fixed chunks.

Caffe equivalent: BaseConvolutionLayer's ``forward_cpu_gemm`` / ``backward_cpu_gemm`` /
``weight_cpu_gemm`` (one im2col and one GEMM per image and group).  Here a chunk of images is
unrolled at once and multiplied in one GEMM (or one stacked matmul over images and groups);
:class:`ConvPlan` holds what one geometry needs (layout, chunks, work buffers), so the layer
itself reads like Caffe's.  Blobs stay in Caffe's layouts: data NCHW, weights (O, C/G, *k).

Two layouts, chosen per geometry:

* channels-first ("nchw", Caffe's): columns (n, G, C/G*K, P), ``W (G, O/G, C/G*K) @ col`` per
  image.  Handles groups and 1x1 (the input is its own column matrix); best when C is small
  (LeNet conv1: the unrolled rows are runs of the output width).
* channels-last ("nhwc", group 1, C >= 8, not 1x1): the input is transposed to (n, *S, C), the
  columns are (n*P, K*C) gathered in contiguous runs of ``kw*C`` floats and the product is one
  large GEMM ``(n*P, K*C) @ (K*C, O)`` -- about 2x faster than channels-first on LeNet conv2.
  Its input gradient is computed one kernel tap at a time (``dy @ W_tap``, a (rows, C) block
  added into the tap's window while it is in cache), so no all-taps buffer is written.

Without groups the bias rides in the GEMM: the columns carry one extra row (or column) of ones
and the weight matrix the bias as one extra column.

Threads and determinism (:mod:`qcaffe.ops.parallel`): every pass runs over the fixed chunks of
the batch; the weight gradient is one partial sum per chunk (nhwc) or per image (nchw), added
in a fixed order after the chunks are done.  So the floats do not depend on the thread count.

Memory: the forward's columns are kept for the weight gradient (Caffe recomputes im2col in
backward; keeping them saves one gather per iteration).  Above :data:`COL_BUDGET_BYTES` of
columns they are not kept: the chunks are cut small, each thread unrolls into a buffer of its
own, and the backward unrolls again, as Caffe does.
"""
import threading

import numpy as np

from ..backend import get_array_module
from . import parallel
from .im2col import col2im, padded, split_axes, tap_indices, window_view

# Columns larger than this are not kept from forward to backward (large images).
COL_BUDGET_BYTES = 256 << 20


class ConvPlan(object):
    """One convolution geometry's layout, chunks and buffers.

    ``geom``: :class:`~qcaffe.ops.im2col.ConvGeometry`; ``num`` images of ``channels`` input
    channels, ``num_output`` outputs, ``group`` groups; ``bias_term`` as in Caffe.
    """

    def __init__(self, geom, num, channels, num_output, group, bias_term):
        self.geom, self.num, self.channels = geom, num, channels
        self.num_output, self.group = num_output, group
        self.is_1x1 = (all(k == 1 for k in geom.kernel) and all(s == 1 for s in geom.stride)
                       and all(p == 0 for p in geom.pad))
        # channels-last pays off when the unrolled rows (kw*C floats) are long
        self.layout = ('nhwc' if group == 1 and not self.is_1x1 and channels >= 8
                       else 'nchw')
        self.fold_bias = bias_term and group == 1 and not self.is_1x1
        self.bias_term = bias_term
        ck = channels * geom.kernel_count + int(self.fold_bias)
        per_image = 0 if self.is_1x1 else 4 * ck * geom.out_count     # column bytes
        self.keep_cols = per_image * num <= COL_BUDGET_BYTES
        work = num * (channels + num_output) * geom.out_count * max(1, geom.kernel_count // 4)
        if self.keep_cols:
            self.bounds = parallel.chunks(num, work)
        else:   # chunks small enough that a few threads' own column buffers fit the budget
            step = max(1, COL_BUDGET_BYTES // (8 * per_image))
            self.bounds = [(s, min(s + step, num)) for s in range(0, num, step)]
        self._local = threading.local()     # per-thread column buffers (columns not kept)

    # ------------------------------------------------------------------- helpers
    def _order_nhwc(self):
        nsp = self.geom.nsp
        return (0,) + tuple(range(2, 2 + nsp)) + (1,)

    def _order_nchw(self):
        nsp = self.geom.nsp
        return (0, nsp + 1) + tuple(range(1, nsp + 1))

    def _col_rows(self):
        """Columns of one image: (rows, width) in this layout (the +1 of a folded bias)."""
        geom = self.geom
        ck = self.channels * geom.kernel_count + int(self.fold_bias)
        return (geom.out_count, ck) if self.layout == 'nhwc' else (ck, geom.out_count)

    def _scratch(self, name, shape, xp):
        """A work array of the calling thread (reused by the chunks that thread runs, so it
        stays in that core's cache); the last two shapes per name are kept."""
        bufs = self._local.__dict__.setdefault(name, {})
        key = (tuple(shape), xp.__name__)
        buf = bufs.get(key)
        if buf is None:
            if len(bufs) > 1:          # a full chunk and the last, shorter one
                bufs.clear()
            buf = bufs[key] = xp.empty(shape, dtype=np.float32)
        return buf

    def _unrolled(self, buf):
        """The im2col part of column buffer ``buf`` (m, *per-image shape) as (m, C, *k, *o)
        (channels-first) or (m, *o, *k, C) (channels-last): a view, written by one copy."""
        geom, c = self.geom, self.channels
        ck = c * geom.kernel_count
        if self.layout == 'nhwc':
            return split_axes(buf[:, :, :ck], [len(buf), geom.out_shape, geom.kernel + (c,)])
        return split_axes(buf[:, :ck], [len(buf), (c,) + geom.kernel, geom.out_shape])

    def _column_buffers(self, i, xp):
        """``columns(s, e)``: ``(buffer, unrolled)`` of images [s, e): the column buffer
        (e-s, *per-image shape) and its :meth:`_unrolled` view.  Kept columns are slices of
        one whole-batch buffer per bottom ``i`` and of its view, both made here, before any
        thread runs (a strided view costs ~15 us of Python, held under the GIL: not once per
        chunk); otherwise each thread unrolls into a buffer of its own."""
        shape = self._col_rows()
        if self.keep_cols:
            whole = self.geom.buffer(('col', i), (self.num,) + shape, xp)
            unrolled = self.geom.view(('unrolled', i), whole, self._unrolled)
            return lambda s, e: (whole[s:e], unrolled[s:e])

        def own(s, e):
            buf = self._scratch('cols', (e - s,) + shape, xp)
            return buf, self._unrolled(buf)
        return own

    def gemm_weights(self, w, b):
        """The weight matrix of this layout: channels-first (G, O/G, C/G*K [+1]), channels-last
        (O, K*C [+1]); the bias is its last column when folded.  Written into a reused buffer
        when anything has to move (no allocation per pass)."""
        o, geom = self.num_output, self.geom
        xp = get_array_module(w)
        kc = w.size // o
        if not self.fold_bias:
            if self.layout == 'nhwc':
                return w.transpose(self._order_nhwc()).reshape(o, kc)
            return w.reshape(self.group, o // self.group, -1)
        mat = geom.buffer('gemm_weights', (o, kc + 1), xp)
        if self.layout == 'nhwc':
            # (O, C, *k) -> (O, *k, C) flattened to (O, K*C), matching the columns
            wv = geom.view('gemm_weights_nhwc', mat, lambda m: split_axes(
                m[:, :kc], [o, geom.kernel + (self.channels,)]))
            xp.copyto(wv, w.transpose(self._order_nhwc()))
        else:
            xp.copyto(mat[:, :kc], w.reshape(o, kc))
        if b is not None:           # (the backward wants the weights only)
            xp.copyto(mat[:, kc], b)
        return mat if self.layout == 'nhwc' else mat.reshape(1, o, kc + 1)

    # ------------------------------------------------------------------- forward
    def forward(self, x, w, b, y, i=0):
        """``y = conv(x, w) + b``; x (num, C, *in), y (num, O, *out), b None without bias.
        ``i`` names the bottom whose columns are kept for :meth:`backward`."""
        xp = get_array_module(x)
        wm = self.gemm_weights(w, b)
        y3 = y.reshape(self.num, self.num_output, -1)
        if self.layout == 'nhwc':
            work = self._forward_nhwc(x, wm, y3, i, xp)
        else:
            work = self._forward_nchw(x, wm, y3, i, xp)
        parallel.run(self.bounds, work)
        if self.bias_term and not self.fold_bias:
            y3 += b.reshape(1, self.num_output, 1)

    def _forward_nchw(self, x, wm, y3, i, xp):
        geom, g, c = self.geom, self.group, self.channels
        yg = y3.reshape(self.num, g, self.num_output // g, -1)
        if self.is_1x1:
            col_all = x.reshape(self.num, g, c // g, geom.out_count)

            def work(k, s, e):
                xp.matmul(wm, col_all[s:e], out=yg[s:e])
            return work
        ck = c * geom.kernel_count
        windows = geom.view('windows', padded(x, geom, 0.0),          # (num, C, *k, *o)
                            lambda a: window_view(a, geom))
        columns = self._column_buffers(i, xp)

        def work(k, s, e):
            buf, cols = columns(s, e)                                 # (m, CK [+1], P)
            xp.copyto(cols, windows[s:e])
            if self.fold_bias:
                buf[:, ck] = 1.0
            col = buf.reshape(e - s, 1 if self.fold_bias else g, -1, geom.out_count)
            xp.matmul(wm, col, out=yg[s:e])
        return work

    def _forward_nhwc(self, x, wm, y3, i, xp):
        geom, c, o = self.geom, self.channels, self.num_output
        p, ck = geom.out_count, c * geom.kernel_count
        # the transposed input lives in a zero-bordered buffer: no separate padding copy
        xt = geom.buffer('x_nhwc_pad', (self.num,) + geom.padded_shape + (c,), xp, fill=0.0)
        inner = geom.view('x_nhwc_inner', xt,
                          lambda a: a[(slice(None),) + geom.interior() + (slice(None),)])
        windows = geom.view('x_nhwc_windows', xt,                    # (num, *o, *k, C)
                            lambda a: window_view(a, geom, channels_last=True))
        ym = geom.buffer('y_nhwc', (self.num * p, o), xp)
        order, wt = self._order_nhwc(), wm.T
        columns = self._column_buffers(i, xp)

        def work(k, s, e):
            xp.copyto(inner[s:e], x[s:e].transpose(order))
            buf, cols = columns(s, e)                                 # (m, P, KC [+1])
            xp.copyto(cols, windows[s:e])
            if self.fold_bias:
                buf[:, :, ck] = 1.0
            rows = ym[s * p:e * p]
            xp.matmul(buf.reshape((e - s) * p, -1), wt, out=rows)
            xp.copyto(y3[s:e], rows.reshape(e - s, p, o).transpose(0, 2, 1))
        return work

    # ------------------------------------------------------------------ backward
    def backward(self, x, w, dy, dx, dw, db, i=0):
        """Gradients of :meth:`forward` for bottom ``i``: ``dw += dL/dw`` and ``db += dL/db``
        (each None when not wanted), ``dx = dL/dx`` (overwritten; None when not wanted).
        ``x`` is read only when the forward's columns were not kept."""
        xp = get_array_module(dy)
        dy3 = dy.reshape(self.num, self.num_output, -1)
        if db is not None and not self.fold_bias:
            db += dy3.sum(axis=(0, 2))
            db = None
        want_g = dw is not None or db is not None
        if not (want_g or dx is not None):
            return
        if self.layout == 'nhwc':
            work, finish = self._backward_nhwc(x, w, dy3, dx, want_g, i, xp)
        else:
            work, finish = self._backward_nchw(x, w, dy3, dx, want_g, i, xp)
        parallel.run(self.bounds, work)
        if want_g:
            g = finish()                                     # (O, K*C [+1]) in layout order
            kc = g.shape[1] - int(self.fold_bias)
            if dw is not None:
                if self.layout == 'nhwc':
                    gw = g[:, :kc].reshape((self.num_output,) + self.geom.kernel
                                           + (self.channels,))          # (O, *k, C)
                    dw += gw.transpose(self._order_nchw())
                else:
                    dw += g[:, :kc].reshape(dw.shape)
            if db is not None:
                db += g[:, kc]

    def _forward_columns(self, x, i, xp):
        """``columns(s, e)``: the forward's columns of images [s, e) -- the kept ones, or
        unrolled again from ``x`` (as Caffe's backward does) when they were not kept."""
        if self.is_1x1:
            return lambda s, e: x[s:e].reshape(e - s, self.channels, -1)
        columns = self._column_buffers(i, xp)
        if self.keep_cols:
            return lambda s, e: columns(s, e)[0]
        geom, c = self.geom, self.channels
        ck = c * geom.kernel_count
        if self.layout == 'nhwc':
            xt = geom.buffer('x_nhwc_pad', (self.num,) + geom.padded_shape + (c,), xp,
                             fill=0.0)
            inner = xt[(slice(None),) + geom.interior() + (slice(None),)]
            windows = window_view(xt, geom, channels_last=True)
            order = self._order_nhwc()
        else:
            windows = window_view(padded(x, geom, 0.0), geom)

        def rebuilt(s, e):
            buf, cols = columns(s, e)
            if self.layout == 'nhwc':
                xp.copyto(inner[s:e], x[s:e].transpose(order))
            xp.copyto(cols, windows[s:e])
            if self.fold_bias:      # the ones row (nchw) or column (nhwc) of the bias
                buf[(slice(None),) * (2 if self.layout == 'nhwc' else 1) + (ck,)] = 1.0
            return buf
        return rebuilt

    def _backward_nchw(self, x, w, dy3, dx, want_g, i, xp):
        geom, g, c = self.geom, self.group, self.channels
        og = self.num_output // g
        dy4 = dy3.reshape(self.num, g, og, -1)
        cg = c // g * geom.kernel_count
        width = cg + int(self.fold_bias)
        # one weight-gradient product per image, summed over the images afterwards
        gws = geom.buffer('gw_nchw', (self.num, g, og, width), xp) if want_g else None
        if dx is not None:
            wt = w.reshape(g, og, -1).swapaxes(-1, -2)                   # (G, C/G*K, O/G)
            acc = (geom.buffer('dx_nchw_pad', (self.num, c) + geom.padded_shape, xp)
                   if geom.needs_pad and not self.is_1x1 else None)
            dcol = (None if self.is_1x1 else
                    geom.buffer('dcol_nchw', (self.num, g, cg, geom.out_count), xp))

        columns = self._forward_columns(x, i, xp) if want_g else None

        def work(k, s, e):
            if want_g:
                col = columns(s, e).reshape(
                    e - s, g if not self.fold_bias else 1, -1, geom.out_count)
                xp.matmul(dy4[s:e], col.swapaxes(-1, -2), out=gws[s:e])
            if dx is None:
                return
            if self.is_1x1:
                xp.matmul(wt, dy4[s:e], out=dx[s:e].reshape(e - s, g, c // g, -1))
                return
            xp.matmul(wt, dy4[s:e], out=dcol[s:e])
            col2im(dcol[s:e].reshape((e - s, c) + geom.kernel + geom.out_shape), geom,
                   out=dx[s:e], acc=None if acc is None else acc[s:e])

        def finish():
            # summed over the images in index order (numpy's axis-0 reduction adds the image
            # slices one after another), whatever the chunks and threads were
            return gws.sum(axis=0).reshape(self.num_output, width)
        return work, finish

    def _backward_nhwc(self, x, w, dy3, dx, want_g, i, xp):
        geom, o, c = self.geom, self.num_output, self.channels
        p = geom.out_count
        dym = geom.buffer('dy_nhwc', (self.num * p, o), xp)
        width = c * geom.kernel_count + int(self.fold_bias)
        partial = (geom.buffer('gw_nhwc', (len(self.bounds), o, width), xp)
                   if want_g else None)
        if dx is not None:
            # per-tap weights (K, O, C): tap t's input gradient is dy (rows, O) @ wk[t]
            wk = geom.buffer('w_taps', (geom.kernel_count, o, c), xp)
            xp.copyto(wk, w.reshape(o, c, -1).transpose(2, 0, 1))
            dxt = geom.buffer('dx_nhwc', (self.num,) + geom.in_shape + (c,), xp)
            acc = (geom.buffer('dx_nhwc_pad', (self.num,) + geom.padded_shape + (c,), xp)
                   if geom.needs_pad else None)
            taps = tap_indices(geom, channels_last=True)
            order = self._order_nchw()
        columns = self._forward_columns(x, i, xp) if want_g else None

        def work(k, s, e):
            rows = dym[s * p:e * p]
            xp.copyto(rows.reshape(e - s, p, o), dy3[s:e].transpose(0, 2, 1))
            if want_g:   # this chunk's partial sum, while dy and the columns are in cache
                col = columns(s, e).reshape((e - s) * p, width)
                xp.matmul(rows.T, col, out=partial[k])
            if dx is None:
                return
            # col2im fused with the GEMM, one kernel tap at a time: the tap's (rows, C) block
            # is added into its window while it is still in cache, instead of writing all K
            # blocks and reading them back (LeNet conv2 backward 10 ms instead of 12-23 ms
            # with all taps at once, 1 thread)
            a = acc[s:e] if acc is not None else dxt[s:e]
            a.fill(0)
            block = self._scratch('dx_tap', ((e - s) * p, c), xp)
            window = block.reshape((e - s,) + geom.out_shape + (c,))
            for t, (_, index) in enumerate(taps):
                xp.matmul(rows, wk[t], out=block)
                dst = a[index]
                dst += window
            if acc is not None:
                dxt[s:e] = a[(slice(None),) + geom.interior() + (slice(None),)]
            xp.copyto(dx[s:e], dxt[s:e].transpose(order))

        def finish():
            total = partial[0].copy()
            for k in range(1, len(self.bounds)):   # chunk order: a fixed float result
                total += partial[k]
            return total
        return work, finish
