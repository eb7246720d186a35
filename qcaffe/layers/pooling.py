"""Pooling and spatial pyramid pooling.

Caffe equivalents: src/caffe/layers/pooling_layer.{cpp,cu}, spp_layer.cpp.

Geometry is Caffe's exactly (caffe.md 3.10, trap 2): CEIL rounding by default (FLOOR with
``round_mode``), and, only when there is padding, the "last window must start inside the image
or the left/top padding" clip.  Every window is a slice of one padded buffer (qcaffe.ops.im2col
``ConvGeometry`` / ``tap_slices``) whose border is -inf for MAX (padding never wins) and 0 for
AVE/STOCHASTIC, so no Python loop runs over pixels or images -- only over the kernel rows and
columns.

* MAX: the output takes the FIRST maximum in row-major scan order (Caffe compares with a strict
  ``>``), and the backward sends the gradient to that element only -- ties are common on
  MNIST's black background.  The max is separable: a horizontal pass (first max within each
  window row, remembering its column) and a vertical pass (first row whose row-max is the max),
  which is exactly the row-major first maximum.  In TEST phase without a mask top only the max
  is computed; the argmax is recomputed from the bottom if a backward is asked for.
* AVE: the divisor counts padded cells but not the cells beyond the padded extent created by
  CEIL rounding (``min(start + k, in + pad) - start``); padded cells contribute 0.
* STOCHASTIC: TRAIN samples one element per window with probability proportional to its value
  (Caffe's cumulative-sum rule with a uniform threshold; the gradient goes to the sample); TEST
  outputs ``sum(x^2) / sum(x)`` (0 where the sum is not positive).  Caffe only has this on
  the GPU; here it runs on both.

Non-overlapping windows (stride == kernel, exact tiling: LeNet's 2x2/2) take a faster path:
the forward copies the taps into a tap-major buffer once (every tap a contiguous block, a 1-byte
argmax), the backward writes each tap's gradient straight into its strided slot (no zeroing, no
accumulation).  Memory-bound passes are split over the batch in threads (qcaffe.ops.parallel).
"""
import numpy as np

from .. import backend
from ..backend import get_array_module
from ..ops.im2col import ConvGeometry, kernel_taps, padded, tap_indices, tap_slices
from ..ops.parallel import batch_split
from ..ops.parallel import copyto as parallel_copyto
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer

MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
_METHOD_NAMES = {MAX: 'MAX', AVE: 'AVE', STOCHASTIC: 'STOCHASTIC'}


def _err(layer, message, *args):
    return LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


# numpy types whose size is a whole output row of a narrow map (pw * 4 bytes): such rows move
# as single elements of a type numpy has a dedicated strided-copy loop for
_ROW_TYPES = {4: np.float32, 8: np.float64, 16: np.complex128}


class _TapMajor(object):
    """Moves a batch slice between a tiled input ``x`` (n, c, ph*kh, pw*kw) (contiguous) and
    its tap-major form ``tm`` (kh, kw, n, c, ph, pw), in either direction.

    The generic move is one strided copy, whose innermost loop runs ``pw`` elements at a time.
    For narrow maps (pw * 4 bytes a float32/float64/complex128: LeNet's pool2, 8x8 -> 4x4) that
    loop is too short to run fast, so the move goes in two long-loop passes instead: the
    columns apart with one stride-kw copy of the flat slice per kernel column, then the rows,
    each output row moved as one element (pool2's forward copy 0.20 -> 0.09 ms per 32 images).
    """

    def __init__(self, geom, n, c, xp):
        self.xp = xp
        (self.kh, self.kw), (self.ph, self.pw) = geom.kernel, geom.out_shape
        self.row_type = _ROW_TYPES.get(4 * self.pw) if xp is np else None
        self.per_image = c * self.ph * self.pw          # elements of one tap of one image
        if self.row_type is not None:
            self.columns = geom.buffer('tap_columns', (self.kw, n * self.per_image * self.kh),
                                       xp)

    def __call__(self, x, tm, s, e, to_taps):
        kh, kw = self.kh, self.kw
        if self.row_type is None:
            grid = x.reshape(x.shape[:2] + (self.ph, kh, self.pw, kw)).transpose(3, 5, 0, 1, 2, 4)
            if to_taps:
                self.xp.copyto(tm[:, :, s:e], grid[:, :, s:e])
            else:
                self.xp.copyto(grid[:, :, s:e], tm[:, :, s:e])
            return
        flat = x[s:e].reshape(-1)
        m = (e - s) * self.per_image                     # elements of one tap of the slice
        for j in range(kw):
            col = self.columns[j, s * self.per_image * kh:e * self.per_image * kh]
            rows = col.view(self.row_type).reshape(-1, kh)
            if to_taps:
                np.copyto(col, flat[j::kw])
                for i in range(kh):
                    np.copyto(tm[i, j, s:e].reshape(m).view(self.row_type), rows[:, i])
            else:
                for i in range(kh):
                    np.copyto(rows[:, i], tm[i, j, s:e].reshape(m).view(self.row_type))
                np.copyto(flat[j::kw], col)


def pooled_size(size, kernel, stride, pad, ceil_mode, any_pad):
    """Caffe's pooled output length for one spatial axis (CEIL/FLOOR + the padding clip)."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if any_pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _hw(p, name, default):
    """PoolingParameter's ``name`` / ``name_h``+``name_w`` pair, as Caffe checks it."""
    sized = 'kernel_size' if name == 'kernel' else name
    h, w = name + '_h', name + '_w'
    if p.HasField(h) or p.HasField(w):
        return int(getattr(p, h)), int(getattr(p, w))
    if p.HasField(sized) or default is None:
        v = int(getattr(p, sized))
        return v, v
    return default, default


@register_layer('Pooling')
class PoolingLayer(Layer):
    """Caffe: PoolingLayer (MAX, AVE, STOCHASTIC; global_pooling; optional MAX "mask" top with
    the argmax as ``h * W + w`` per channel plane)."""
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def check_blob_counts(self, bottom, top):
        Layer.check_blob_counts(self, bottom, top)
        if len(top) > 1 and self.layer_param.pooling_param.pool != MAX:
            raise _err(self, 'only MAX pooling has a second (mask) top; pooling_param.pool '
                       'is %s', _METHOD_NAMES.get(self.layer_param.pooling_param.pool))

    def layer_setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = p.pool
        if self.method not in _METHOD_NAMES:
            raise _err(self, 'unknown pooling_param.pool %d (valid: MAX, AVE, STOCHASTIC)',
                       self.method)
        self.global_pooling = p.global_pooling
        has_k = p.HasField('kernel_size')
        has_kh, has_kw = p.HasField('kernel_h'), p.HasField('kernel_w')
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise _err(self, 'With global_pooling: true Filter size cannot specified '
                           '(remove pooling_param.kernel_size/kernel_h/kernel_w)')
        else:
            if has_k == (has_kh or has_kw):
                raise _err(self, 'Filter size is pooling_param.kernel_size OR kernel_h and '
                           'kernel_w; not both' if has_k else
                           'pooling_param.kernel_size (or kernel_h and kernel_w) is required')
            if not has_k and not (has_kh and has_kw):
                raise _err(self, 'For non-square filters both pooling_param.kernel_h and '
                           'kernel_w are required.')
        for name in ('pad', 'stride'):
            if p.HasField(name) and (p.HasField(name + '_h') or p.HasField(name + '_w')):
                raise _err(self, 'pooling_param.%s is %s OR %s_h and %s_w; not both',
                           name, name, name, name)
            if p.HasField(name + '_h') != p.HasField(name + '_w'):
                raise _err(self, 'pooling_param.%s_h and %s_w are required together',
                           name, name)
        self.pad = _hw(p, 'pad', 0)
        self.stride = _hw(p, 'stride', 1)
        if not self.global_pooling:
            self.kernel = _hw(p, 'kernel', None)
            if min(self.kernel) <= 0:
                raise _err(self, 'pooling_param kernel size must be > 0, got %s',
                           list(self.kernel))
        else:
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise _err(self, 'With global_pooling: true; only pad = 0 and stride = 1 '
                           '(got pad %s, stride %s)', list(self.pad), list(self.stride))
        if min(self.stride) <= 0:
            raise _err(self, 'pooling_param stride must be > 0, got %s', list(self.stride))
        if self.pad != (0, 0):
            if self.method not in (MAX, AVE):
                raise _err(self, 'Padding implemented only for average and max pooling '
                           '(pool is %s)', _METHOD_NAMES[self.method])
            if not self.global_pooling and (self.pad[0] >= self.kernel[0]
                                            or self.pad[1] >= self.kernel[1]):
                raise _err(self, 'pooling_param pad %s must be smaller than the kernel %s',
                           list(self.pad), list(self.kernel))
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._geom = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise _err(self, 'Input must have 4 axes, corresponding to (num, channels, height, '
                       'width); got %s', bottom[0].shape_string())
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kernel = (h, w)
        any_pad = self.pad != (0, 0)
        out = tuple(pooled_size(s, k, st, pd, self.ceil_mode, any_pad) for s, k, st, pd in
                    zip((h, w), self.kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise _err(self, 'pooled output size %s is not positive for bottom %s (kernel %s, '
                       'stride %s, pad %s)', list(out), bottom[0].shape_string(),
                       list(self.kernel), list(self.stride), list(self.pad))
        geom = ConvGeometry((h, w), self.kernel, self.stride, self.pad, out_shape=out)
        if self._geom != geom:
            self._geom = geom
            self._divisor = None
        # stride >= kernel with the padded extent tiled exactly: windows are disjoint blocks
        self.tiled = (self.stride == self.kernel
                      and geom.padded_shape == (out[0] * self.kernel[0], out[1] * self.kernel[1]))
        self.is_global = out == (1, 1) and self.kernel == (h, w) and not any_pad
        for t in top:
            t.reshape((n, c) + out)
        self._arg = None

    # ------------------------------------------------------------------ forward
    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        y = top[0].mutable_dev_data
        self._arg = None
        if self.method == MAX:
            want_arg = len(top) > 1 or self.phase == caffe_pb2.TRAIN
            if want_arg:
                self._arg = self._max_argmax(x, y)
                if len(top) > 1:
                    self._write_mask(top[1].mutable_dev_data)
            else:
                self._max_only(x, y)
        elif self.method == AVE:
            self._average(x, y)
        elif self.phase == caffe_pb2.TRAIN:
            self._arg = self._stochastic_train(x, y)
        else:
            self._stochastic_test(x, y)

    def _windows(self, x, fill):
        """[(tap index, window view (N, C, PH, PW))] in row-major order, over x padded with
        ``fill``."""
        geom = self._geom
        xpad = padded(x, geom, fill, name=('pad', fill))
        return [(t, xpad[(slice(None), slice(None)) + tap_slices(geom, tap)])
                for t, tap in enumerate(kernel_taps(geom.kernel))]

    def _max_only(self, x, y):
        xp = get_array_module(x)
        if self.is_global:
            xp.max(x.reshape(x.shape[:2] + (-1,)), axis=-1, out=y.reshape(y.shape[:2]))
            return
        geom = self._geom
        (kh, kw), (sh, sw) = self.kernel, self.stride
        ph, pw = geom.out_shape
        xpad = padded(x, geom, -np.inf, name=('pad', -np.inf))
        # vertical pass first: its taps are whole rows (contiguous), the strided horizontal
        # pass then runs on data already reduced kh-fold
        v = geom.buffer('vmax', (xpad.shape[0], xpad.shape[1], ph, xpad.shape[3]), xp)

        def max_into(out, views):
            if len(views) == 1:
                xp.copyto(out, views[0])
                return
            xp.maximum(views[0], views[1], out=out)
            for view in views[2:]:
                xp.maximum(out, view, out=out)

        def work(s, e):
            vs = v[s:e]
            max_into(vs, [xpad[s:e, :, i:i + sh * (ph - 1) + 1:sh, :] for i in range(kh)])
            max_into(y[s:e], [vs[..., j:j + sw * (pw - 1) + 1:sw] for j in range(kw)])
        batch_split(y.shape[0], work, xpad.size, xp)

    def _max_argmax(self, x, y):
        """Max with Caffe's first-max argmax; returns the tap index (i*kw + j) per output."""
        xp = get_array_module(x)
        geom = self._geom
        (kh, kw), (sh, sw) = self.kernel, self.stride
        ph, pw = geom.out_shape
        if self.is_global:
            flat = x.reshape(x.shape[:2] + (-1,))
            arg = xp.argmax(flat, axis=-1)  # first occurrence == Caffe's strict '>' scan
            xp.copyto(y.reshape(y.shape[:2]),
                      xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0])
            return arg.reshape(y.shape).astype(np.int32)
        xpad = padded(x, geom, -np.inf, name=('pad', -np.inf))
        if self.tiled:
            return self._max_argmax_taps(xp, xpad, y)
        n, c, hp, _ = xpad.shape
        hmax = geom.buffer('hmax', (n, c, hp, pw), xp)
        harg = geom.buffer('harg', (n, c, hp, pw), xp, np.int32)
        gt = geom.buffer('gt_h', (n, c, hp, pw), xp, np.bool_)
        arg = xp.empty(y.shape, dtype=np.int32)
        gtv = geom.buffer('gt_v', y.shape, xp, np.bool_)

        def work(s, e):
            # horizontal pass over every padded row: first max within each window row
            hm, ha, g = hmax[s:e], harg[s:e], gt[s:e]
            cols = [xpad[s:e, ..., j:j + sw * (pw - 1) + 1:sw] for j in range(kw)]
            xp.copyto(hm, cols[0])
            ha.fill(0)
            for j in range(1, kw):
                xp.greater(cols[j], hm, out=g)
                xp.maximum(hm, cols[j], out=hm)
                # harg = where(gt, j, harg), branch-free: j exceeds every earlier column index
                xp.maximum(ha, xp.multiply(g, j, dtype=np.int32), out=ha)
            # vertical pass: first window row reaching the max (strict '>' keeps the earlier)
            ys, args, gv = y[s:e], arg[s:e], gtv[s:e]
            xp.copyto(ys, hm[:, :, 0:sh * (ph - 1) + 1:sh])
            xp.copyto(args, ha[:, :, 0:sh * (ph - 1) + 1:sh])
            for i in range(1, kh):
                sl = slice(i, i + sh * (ph - 1) + 1, sh)
                row = hm[:, :, sl]
                xp.greater(row, ys, out=gv)
                xp.maximum(ys, row, out=ys)
                # arg = where(gtv, i*kw + harg, arg): the new index exceeds every earlier one
                cand = ha[:, :, sl] + i * kw
                cand *= gv
                xp.maximum(args, cand, out=args)
        batch_split(n, work, xpad.size, xp)
        return arg

    def _max_argmax_taps(self, xp, xpad, y):
        """Disjoint windows: scan the taps in row-major order (strict '>' keeps the first)."""
        geom = self._geom
        # small tap indices: a 1-byte argmax moves 4x less memory
        itype = np.uint8 if geom.kernel_count <= 256 else np.int32
        arg = xp.zeros(y.shape, dtype=itype)
        gt = geom.buffer('gt_v', y.shape, xp, np.bool_)
        cand = geom.buffer('cand', y.shape, xp, itype)
        (kh, kw), (ph, pw) = geom.kernel, geom.out_shape
        n, c = y.shape[:2]
        # one de-interleaving copy makes every tap a contiguous block (fast ufunc loops)
        tm = geom.buffer('tapmajor', (kh, kw, n, c, ph, pw), xp)
        move = _TapMajor(geom, n, c, xp)
        tmk = tm.reshape((kh * kw,) + y.shape)

        def work(s, e):
            move(xpad, tm, s, e, to_taps=True)
            ys, gs, cs, args = y[s:e], gt[s:e], cand[s:e], arg[s:e]
            xp.copyto(ys, tmk[0, s:e])
            for t in range(1, kh * kw):
                win = tmk[t, s:e]
                xp.greater(win, ys, out=gs)
                xp.maximum(ys, win, out=ys)
                # arg = where(gt, t, arg), branch-free: t exceeds every earlier tap index
                xp.multiply(gs, itype(t), out=cs)
                xp.maximum(args, cs, out=args)
        batch_split(n, work, xpad.size, xp)
        return arg

    def _write_mask(self, mask):
        """Caffe's mask top: argmax as h*W + w within the channel plane (float)."""
        xp = get_array_module(mask)
        geom = self._geom
        kw = self.kernel[1]
        ph, pw = geom.out_shape
        w_in = geom.in_shape[1]
        i, j = self._arg // kw, self._arg % kw
        hs = (xp.arange(ph, dtype=np.int32) * self.stride[0] - self.pad[0]).reshape(ph, 1)
        ws = (xp.arange(pw, dtype=np.int32) * self.stride[1] - self.pad[1]).reshape(1, pw)
        mask[...] = (hs + i) * w_in + (ws + j)

    def _avg_divisor(self, xp):
        """Caffe's per-window pool size: window clipped to the padded extent (in + pad)."""
        if self._divisor is None or get_array_module(self._divisor) is not xp:
            geom = self._geom
            sizes = []
            for ax in range(2):
                start = np.arange(geom.out_shape[ax]) * self.stride[ax] - self.pad[ax]
                end = np.minimum(start + self.kernel[ax], geom.in_shape[ax] + self.pad[ax])
                sizes.append(end - start)
            div = np.outer(sizes[0], sizes[1]).astype(np.float32)
            self._divisor = xp.asarray(div)
        return self._divisor

    def _average(self, x, y):
        xp = get_array_module(x)
        if self.is_global:
            xp.sum(x.reshape(x.shape[:2] + (-1,)), axis=-1, out=y.reshape(y.shape[:2]))
            y /= float(x.shape[2] * x.shape[3])
            return
        geom = self._geom
        (kh, kw), (sh, sw) = self.kernel, self.stride
        ph, pw = geom.out_shape
        xpad = padded(x, geom, 0.0, name=('pad', 0.0))
        v = geom.buffer('vsum', (xpad.shape[0], xpad.shape[1], ph, xpad.shape[3]), xp)
        div = self._avg_divisor(xp)

        def work(s, e):
            vs, ys = v[s:e], y[s:e]
            xp.copyto(vs, xpad[s:e, :, 0:sh * (ph - 1) + 1:sh])
            for i in range(1, kh):
                vs += xpad[s:e, :, i:i + sh * (ph - 1) + 1:sh]
            xp.copyto(ys, vs[..., 0:sw * (pw - 1) + 1:sw])
            for j in range(1, kw):
                ys += vs[..., j:j + sw * (pw - 1) + 1:sw]
            ys /= div
        batch_split(y.shape[0], work, xpad.size, xp)

    def _stochastic_train(self, x, y):
        xp = get_array_module(x)
        taps = self._windows(x, 0.0)
        total = taps[0][1].copy()
        for _, win in taps[1:]:
            total += win
        thres = backend.random_uniform(y.shape)  # on the current device
        thres *= total
        cum = xp.zeros(y.shape, dtype=np.float32)
        found = xp.zeros(y.shape, dtype=np.bool_)
        arg = xp.zeros(y.shape, dtype=np.int32)
        y[...] = 0
        for t, win in taps:
            cum += win
            sel = (cum >= thres) & ~found
            xp.copyto(y, win, where=sel)
            xp.copyto(arg, t, where=sel)
            found |= sel
        return arg

    def _stochastic_test(self, x, y):
        xp = get_array_module(x)
        taps = self._windows(x, 0.0)
        s = xp.zeros(y.shape, dtype=np.float32)
        sq = xp.zeros(y.shape, dtype=np.float32)
        for _, win in taps:
            s += win
            sq += win * win
        # Caffe (StoPoolForwardTest): cumsum > 0 ? cumvalues / cumsum : 0
        pos = s > 0
        xp.divide(sq, xp.where(pos, s, 1), out=y)
        y *= pos

    # ----------------------------------------------------------------- backward
    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff
        dx = bottom[0].mutable_dev_diff
        xp = get_array_module(dy)
        if self.method == AVE:
            self._scatter(xp, dy / self._avg_divisor(xp) if not self.is_global else
                          dy / float(dx.shape[2] * dx.shape[3]), dx, None)
            return
        if self._arg is None:
            if self.method != MAX:
                raise _err(self, 'STOCHASTIC pooling has a backward only after a TRAIN-phase '
                           'forward (Caffe keeps the sampled indices of that forward)')
            tmp = xp.empty(dy.shape, dtype=np.float32)
            self._arg = self._max_argmax(bottom[0].dev_data, tmp)
        self._scatter(xp, dy, dx, self._arg)

    def _scatter(self, xp, g, dx, arg):
        """dx = sum over taps of g routed to the tap's input position (all taps if arg is None,
        else only where arg == tap)."""
        geom = self._geom
        kh, kw = self.kernel
        ph, pw = geom.out_shape
        if self.is_global:
            flat = dx.reshape(dx.shape[:2] + (-1,))
            if arg is None:
                flat[...] = g.reshape(g.shape[:2] + (1,))
            else:
                pos = xp.arange(flat.shape[-1], dtype=np.int32)
                xp.multiply(pos == arg.reshape(arg.shape[:2] + (1,)),
                            g.reshape(g.shape[:2] + (1,)), out=flat)
            return
        n, c = dx.shape[:2]
        acc = dx if not geom.needs_pad else geom.buffer(
            'dpad', (n, c) + geom.padded_shape, xp)
        if self.tiled:
            # disjoint blocks: every input cell belongs to exactly one window, so each tap is
            # one plain (strided) write of the whole batch and nothing needs zeroing first
            blocks = acc.reshape(n, c, ph, kh, pw, kw)
            eq = geom.buffer('eq', g.shape, xp, np.bool_) if arg is not None else None
            taps = list(enumerate(kernel_taps(geom.kernel)))
            move = _TapMajor(geom, n, c, xp)
            # narrow maps: each tap's gradient into a contiguous tap-major block, then one
            # interleaving move (see _TapMajor); wider ones write each tap's strided slot
            tm = (geom.buffer('tapmajor_diff', (kh, kw, n, c, ph, pw), xp)
                  if move.row_type is not None else None)

            def work(s, e):
                for t, (i, j) in taps:
                    dst = blocks[s:e, :, :, i, :, j] if tm is None else tm[i, j, s:e]
                    if arg is None:
                        xp.copyto(dst, g[s:e])
                    else:
                        xp.equal(arg[s:e], t, out=eq[s:e])
                        xp.multiply(g[s:e], eq[s:e], out=dst)
                if tm is not None:
                    move(acc, tm, s, e, to_taps=False)
            batch_split(n, work, acc.size, xp)
        else:
            taps = list(enumerate(tap_indices(geom, channels_last=False)))

            def work(s, e):
                a, gs = acc[s:e], g[s:e]
                a.fill(0)
                for t, (_, index) in taps:
                    dst = a[index]
                    dst += gs if arg is None else gs * (arg[s:e] == t)
            batch_split(n, work, acc.size, xp)
        if geom.needs_pad:
            parallel_copyto(dx, acc[(slice(None), slice(None)) + geom.interior()], xp)


@register_layer('SPP')
class SPPLayer(Layer):
    """Caffe: SPPLayer.  For pyramid level l (0 .. pyramid_height-1) the plane is pooled into
    2^l x 2^l bins (kernel = ceil(size / bins), pad = (kernel*bins - size + 1) // 2, stride =
    kernel), each level is flattened to (N, C*bins^2) and the levels are concatenated along
    axis 1.  With pyramid_height 1 the top is the single pooling's (N, C, 1, 1) output, as in
    Caffe."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.spp_param
        if not p.HasField('pyramid_height') or p.pyramid_height < 1:
            raise _err(self, 'spp_param.pyramid_height must be set and >= 1')
        self.height = int(p.pyramid_height)
        self._shape = None

    def _level_param(self, level, h, w):
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        lp = caffe_pb2.LayerParameter()
        lp.name = '%s_level%d' % (self.name, level)
        lp.type = 'Pooling'
        lp.phase = self.phase
        pp = lp.pooling_param
        pp.pool = self.layer_param.spp_param.pool
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        return lp

    def reshape(self, bottom, top):
        from ..blob import Blob
        if bottom[0].num_axes != 4:
            raise _err(self, 'Input must have 4 axes, corresponding to (num, channels, height, '
                       'width); got %s', bottom[0].shape_string())
        n, c, h, w = bottom[0].shape
        if self._shape != (h, w):
            self._shape = (h, w)
            self.pools = []
            for level in range(self.height):
                layer = PoolingLayer(self._level_param(level, h, w))
                out = Blob()
                try:
                    layer.setup([bottom[0]], [out])
                except LayerError as e:
                    raise _err(self, 'spp_param.pyramid_height %d does not fit a %dx%d input: '
                               'level %d (%d bins) fails as in Caffe: %s', self.height, h, w,
                               level, 2 ** level, e)
                self.pools.append((layer, out))
        for layer, out in self.pools:
            layer.reshape([bottom[0]], [out])
        if self.height == 1:
            top[0].reshape(self.pools[0][1].shape)
        else:
            top[0].reshape(n, sum(out.count_range(1) for _, out in self.pools))

    def forward_impl(self, bottom, top):
        y = top[0].mutable_dev_data.reshape(bottom[0].shape[0], -1)
        off = 0
        for layer, out in self.pools:
            layer.forward_impl(bottom, [out])
            k = out.count_range(1)
            y[:, off:off + k] = out.dev_data.reshape(out.shape[0], k)
            off += k

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff.reshape(bottom[0].shape[0], -1)
        xp = get_array_module(dy)
        total = None
        off = 0
        for layer, out in self.pools:
            k = out.count_range(1)
            out.mutable_dev_diff[...] = dy[:, off:off + k].reshape(out.shape)
            off += k
            layer.backward_impl([out], [True], bottom)
            if len(self.pools) > 1:
                if total is None:
                    total = bottom[0].dev_diff.copy()
                else:
                    total += bottom[0].dev_diff
        if total is not None:
            xp.copyto(bottom[0].mutable_dev_diff, total)
