"""Max and average pooling over a whole minibatch: no Python loop over pixels or images, only
over the kernel taps.

Caffe equivalent: the ``MaxPoolForward`` / ``AvePoolForward`` loops of
src/caffe/layers/pooling_layer.cpp (and their backward).  Every window is a slice of one padded
buffer (``ConvGeometry`` / ``tap_slices``), bordered with -inf for MAX (padding never wins) and
0 for AVE, so each kernel tap is one strided array operation.

* MAX takes the FIRST maximum in row-major scan order (Caffe compares with a strict ``>``) and
  routes the gradient to it only -- ties are common on MNIST's black background.  The max is
  separable: a horizontal pass (first max within each window row, remembering its column) then
  a vertical pass (first row whose row-max is the max), which is the row-major first maximum.
* Disjoint windows (stride == kernel, exact tiling: LeNet's 2x2/2) take a faster path: the
  forward moves the taps into a tap-major buffer once (each tap a contiguous block, a 1-byte
  argmax); the backward writes each tap's gradient straight into its slot (no zeroing, no
  accumulation).
* AVE divides by Caffe's window size (see the layer's divisor).

All passes run over fixed chunks of the batch (:mod:`qcaffe.ops.parallel`); nothing is summed
across images, so the chunking never changes a float.
"""
import numpy as np

from ..backend import get_array_module
from .im2col import kernel_taps, tap_indices
from .parallel import copyto as chunked_copyto
from .parallel import for_chunks

# numpy types whose size is a whole output row of a narrow map (pw * 4 bytes): such rows move
# as single elements of a type numpy has a dedicated strided-copy loop for
_ROW_TYPES = {4: np.float32, 8: np.float64, 16: np.complex128}


class TapMajor(object):
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


def _max_into(xp, out, views):
    """out = elementwise max of ``views`` (in order)."""
    if len(views) == 1:
        xp.copyto(out, views[0])
        return
    xp.maximum(views[0], views[1], out=out)
    for view in views[2:]:
        xp.maximum(out, view, out=out)


def max_pool(xpad, y, geom):
    """``y`` = max over each window of the (-inf padded) input ``xpad`` (no argmax)."""
    xp = get_array_module(xpad)
    (kh, kw), (sh, sw) = geom.kernel, geom.stride
    ph, pw = geom.out_shape
    # vertical pass first: its taps are whole rows (contiguous), the strided horizontal
    # pass then runs on data already reduced kh-fold
    v = geom.buffer('vmax', (xpad.shape[0], xpad.shape[1], ph, xpad.shape[3]), xp)

    def work(s, e):
        vs = v[s:e]
        _max_into(xp, vs, [xpad[s:e, :, i:i + sh * (ph - 1) + 1:sh, :] for i in range(kh)])
        _max_into(xp, y[s:e], [vs[..., j:j + sw * (pw - 1) + 1:sw] for j in range(kw)])
    for_chunks(y.shape[0], xpad.size, work, xp)


def max_pool_argmax(xpad, y, geom, tiled):
    """Max with Caffe's first-max argmax; returns the tap index (i*kw + j) per output.
    ``tiled``: the windows tile the padded input exactly (disjoint blocks)."""
    xp = get_array_module(xpad)
    if tiled:
        return _max_argmax_tiled(xp, xpad, y, geom)
    (kh, kw), (sh, sw) = geom.kernel, geom.stride
    ph, pw = geom.out_shape
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
    for_chunks(n, xpad.size, work, xp)
    return arg


def _max_argmax_tiled(xp, xpad, y, geom):
    """Disjoint windows: scan the taps in row-major order (strict '>' keeps the first)."""
    # small tap indices: a 1-byte argmax moves 4x less memory
    itype = np.uint8 if geom.kernel_count <= 256 else np.int32
    arg = xp.zeros(y.shape, dtype=itype)
    gt = geom.buffer('gt_v', y.shape, xp, np.bool_)
    cand = geom.buffer('cand', y.shape, xp, itype)
    (kh, kw), (ph, pw) = geom.kernel, geom.out_shape
    n, c = y.shape[:2]
    # one de-interleaving copy makes every tap a contiguous block (fast ufunc loops)
    tm = geom.buffer('tapmajor', (kh, kw, n, c, ph, pw), xp)
    move = TapMajor(geom, n, c, xp)
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
    for_chunks(n, xpad.size, work, xp)
    return arg


def ave_pool(xpad, y, geom, divisor):
    """``y`` = sum over each window of the (0 padded) input, divided by ``divisor`` (PH, PW)."""
    xp = get_array_module(xpad)
    (kh, kw), (sh, sw) = geom.kernel, geom.stride
    ph, pw = geom.out_shape
    v = geom.buffer('vsum', (xpad.shape[0], xpad.shape[1], ph, xpad.shape[3]), xp)

    def work(s, e):
        vs, ys = v[s:e], y[s:e]
        xp.copyto(vs, xpad[s:e, :, 0:sh * (ph - 1) + 1:sh])
        for i in range(1, kh):
            vs += xpad[s:e, :, i:i + sh * (ph - 1) + 1:sh]
        xp.copyto(ys, vs[..., 0:sw * (pw - 1) + 1:sw])
        for j in range(1, kw):
            ys += vs[..., j:j + sw * (pw - 1) + 1:sw]
        ys /= divisor
    for_chunks(y.shape[0], xpad.size, work, xp)


def route_back(g, dx, geom, arg, tiled):
    """Pooling's backward: ``dx`` = the output gradient ``g`` routed to the inputs of each
    window -- to every tap (``arg`` None: AVE, ``g`` already divided) or to the tap ``arg``
    names (MAX, STOCHASTIC).  Overwrites ``dx``."""
    xp = get_array_module(g)
    kh, kw = geom.kernel
    ph, pw = geom.out_shape
    n, c = dx.shape[:2]
    acc = dx if not geom.needs_pad else geom.buffer('dpad', (n, c) + geom.padded_shape, xp)
    if tiled:
        # disjoint blocks: every input cell belongs to exactly one window, so each tap is
        # one plain (strided) write of the whole batch and nothing needs zeroing first
        blocks = acc.reshape(n, c, ph, kh, pw, kw)
        eq = geom.buffer('eq', g.shape, xp, np.bool_) if arg is not None else None
        taps = list(enumerate(kernel_taps(geom.kernel)))
        move = TapMajor(geom, n, c, xp)
        # narrow maps: each tap's gradient into a contiguous tap-major block, then one
        # interleaving move (see TapMajor); wider ones write each tap's strided slot
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
    else:
        taps = list(enumerate(tap_indices(geom, channels_last=False)))

        def work(s, e):
            a, gs = acc[s:e], g[s:e]
            a.fill(0)
            for t, (_, index) in taps:
                dst = a[index]
                dst += gs if arg is None else gs * (arg[s:e] == t)
    for_chunks(n, acc.size, work, xp)
    if geom.needs_pad:
        chunked_copyto(dx, acc[(slice(None), slice(None)) + geom.interior()], xp)
