"""N-D im2col / col2im with pad, stride and dilation, for numpy and cupy.

Caffe equivalent: src/caffe/util/im2col.cpp (``im2col_cpu``, ``col2im_cpu`` and the ``_nd``
variants).  Caffe unrolls one image at a time; here the whole minibatch is unrolled at once so
that a convolution is a single GEMM:

* ``im2col`` builds a strided *view* of the (padded) input in which every output position sees
  its receptive field (no index arrays, no Python loop over pixels or images) and copies it once
  into a contiguous column buffer.  Two layouts:

  - channels-first (Caffe's): ``(N, C, k1..kd, o1..od)``; reshaped to ``(N, C*K, P)`` this is
    exactly Caffe's per-image ``col_buffer`` (row = (c, kh, kw), column = output position);
  - channels-last: input ``(N, s1..sd, C)`` gives ``(N, o1..od, k1..kd, C)``, i.e. a
    ``(N*P, K*C)`` matrix whose rows are contiguous runs of ``kw*C`` floats -- much cheaper to
    gather when C is large, and the GEMM against the weights is one big call.

* ``col2im`` is the adjoint: a scatter-add.  It loops over the ``prod(kernel)`` kernel taps (not
  over pixels): for a fixed tap, distinct output positions map to distinct input positions, so
  each tap is one strided slice ``+=`` with no collisions -- no ``np.add.at`` needed.

``ConvGeometry`` holds the sizes of one (kernel, stride, pad, dilation, input) combination and
caches the padded work buffers, so reshaping layers allocate once and reuse them every
iteration (the padding border is written once and never touched again).
"""
import itertools

import numpy as np

from ..backend import get_array_module
from .parallel import for_chunks


def as_strided(xp, a, shape, strides):
    """``numpy.lib.stride_tricks.as_strided`` or cupy's twin (a view, no copy)."""
    return xp.lib.stride_tricks.as_strided(a, shape=tuple(shape), strides=tuple(strides))


def split_axes(a, shapes):
    """View of ``a`` with axis i split into ``shapes[i]`` (C order), never a copy.

    ``a.reshape`` silently copies when ``a`` is a strided slice (e.g. the first K columns of a
    (rows, K+1) buffer); writing into that copy would be lost, so build the view explicitly.
    """
    xp = get_array_module(a)
    shape, strides = [], []
    for dims, st in zip(shapes, a.strides):
        dims = tuple(int(d) for d in (dims if isinstance(dims, (tuple, list)) else (dims,)))
        shape += dims
        inner = st
        sub = []
        for d in reversed(dims):
            sub.append(inner)
            inner *= d
        strides += reversed(sub)
    return as_strided(xp, a, shape, strides)


def kernel_taps(kernel):
    """All kernel offsets in Caffe's row-major scan order ((0,0), (0,1), ... for 2-D)."""
    return list(itertools.product(*[range(int(k)) for k in kernel]))


class ConvGeometry(object):
    """Sizes of a sliding-window operation over ``nsp`` spatial axes.

    ``out_shape`` defaults to Caffe's convolution rule
    ``(in + 2*pad - (dilation*(k-1)+1)) // stride + 1``; pooling passes its own (CEIL rule).
    The padded extent covers both the symmetric padding and any window that runs past it (the
    CEIL rounding of pooling), so every window is a plain slice of the padded buffer.
    """

    def __init__(self, in_shape, kernel, stride, pad, dilation=None, out_shape=None):
        nsp = len(in_shape)
        self.nsp = nsp
        self.in_shape = tuple(int(v) for v in in_shape)
        self.kernel = tuple(int(v) for v in kernel)
        self.stride = tuple(int(v) for v in stride)
        self.pad = tuple(int(v) for v in pad)
        self.dilation = tuple(int(v) for v in (dilation if dilation is not None else (1,) * nsp))
        ext = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation)]
        if out_shape is None:
            out_shape = [(i + 2 * p - e) // s + 1
                         for i, p, e, s in zip(self.in_shape, self.pad, ext, self.stride)]
        self.out_shape = tuple(int(v) for v in out_shape)
        self.padded_shape = tuple(
            max(i + 2 * p, (o - 1) * s + e) if o > 0 else i + 2 * p
            for i, p, o, s, e in zip(self.in_shape, self.pad, self.out_shape, self.stride, ext))
        self.needs_pad = self.padded_shape != self.in_shape
        self.kernel_count = int(np.prod(self.kernel))
        self.out_count = int(np.prod(self.out_shape))
        self._buffers = {}
        self._tap_indices = {}
        self._views = {}

    def key(self):
        return (self.in_shape, self.kernel, self.stride, self.pad, self.dilation, self.out_shape)

    def __eq__(self, other):
        return isinstance(other, ConvGeometry) and self.key() == other.key()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self.key())

    def interior(self):
        """Slices of the padded spatial axes holding the unpadded input."""
        return tuple(slice(p, p + i) for p, i in zip(self.pad, self.in_shape))

    def buffer(self, name, shape, xp, dtype=np.float32, fill=None):
        """A cached work array (created, and filled with ``fill``, only on first use).

        At most two shapes are kept per name (a batch split in slices uses the full slice and
        the remainder), so changing batch sizes do not pile up memory.
        """
        key = (tuple(shape), xp.__name__, np.dtype(dtype).str, fill)
        entries = self._buffers.setdefault(name, [])
        for k, buf in entries:
            if k == key:
                return buf
        if fill is None:
            buf = xp.empty(shape, dtype=dtype)
        else:
            buf = xp.full(shape, fill, dtype=dtype)
        entries.insert(0, (key, buf))
        del entries[2:]
        return buf

    def view(self, name, base, build):
        """``build(base)`` (a view of ``base``), cached while ``base`` is the same memory with
        the same shape and strides.  Strided views cost ~15 us of Python each (``as_strided``)
        and a LeNet step builds ~10 of them over the same buffers every iteration; the cache
        holds ``base`` alive, so its address cannot be reused by another array."""
        cached = self._views.get(name)
        if cached is not None and cached[2] is base:
            return cached[1]
        key = (_address(base), base.shape, base.strides)
        if cached is not None and cached[0] == key:
            return cached[1]
        built = build(base)
        self._views[name] = (key, built, base)
        return built


def _address(a):
    """Address of the first element of a numpy or cupy array."""
    if isinstance(a, np.ndarray):
        return a.__array_interface__['data'][0]
    return a.data.ptr


def tap_slices(geom, tap):
    """Slices of the padded spatial axes read by kernel offset ``tap`` at every output position."""
    return tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                 for t, d, s, o in zip(tap, geom.dilation, geom.stride, geom.out_shape))


def tap_indices(geom, channels_last):
    """``[(tap, index)]`` in scan order: ``index`` selects the tap's window positions of an
    (N, C, *S) (or (N, *S, C)) padded array.  Cached on ``geom``: built once, not per call
    (building them took ~60 us of Python per 5x5 col2im, time the GIL is held while the
    other threads wait for it)."""
    cached = geom._tap_indices.get(bool(channels_last))
    if cached is None:
        cached = [(tap, _spatial_index(tap_slices(geom, tap), channels_last))
                  for tap in kernel_taps(geom.kernel)]
        geom._tap_indices[bool(channels_last)] = cached
    return cached


def _spatial_index(sl, channels_last):
    """Index tuple selecting spatial slices ``sl`` of an (N, C, *S) or (N, *S, C) array."""
    if channels_last:
        return (slice(None),) + tuple(sl) + (slice(None),)
    return (slice(None), slice(None)) + tuple(sl)


def padded(x, geom, value=0.0, channels_last=False, name='pad'):
    """``x`` embedded in a buffer of the padded extent filled with ``value`` (x itself when
    there is no padding).  The buffer is cached on ``geom``; only its interior is rewritten."""
    if not geom.needs_pad:
        return x
    xp = get_array_module(x)
    if channels_last:
        shape = (x.shape[0],) + geom.padded_shape + (x.shape[-1],)
    else:
        shape = x.shape[:2] + geom.padded_shape
    buf = geom.buffer(name, shape, xp, x.dtype, fill=float(value))
    inner = buf[_spatial_index(geom.interior(), channels_last)]

    def work(s, e):
        inner[s:e] = x[s:e]
    for_chunks(x.shape[0], x.size, work, xp)
    return buf


def window_view(xpad, geom, channels_last=False):
    """Strided view of a padded input: (N, C, *k, *o) or, channels-last, (N, *o, *k, C)."""
    xp = get_array_module(xpad)
    st = xpad.strides
    if channels_last:
        sp = st[1:-1]
        shape = (xpad.shape[0],) + geom.out_shape + geom.kernel + (xpad.shape[-1],)
        strides = ((st[0],) + tuple(s * v for s, v in zip(sp, geom.stride))
                   + tuple(s * d for s, d in zip(sp, geom.dilation)) + (st[-1],))
    else:
        sp = st[2:]
        shape = xpad.shape[:2] + geom.kernel + geom.out_shape
        strides = (st[:2] + tuple(s * d for s, d in zip(sp, geom.dilation))
                   + tuple(s * v for s, v in zip(sp, geom.stride)))
    return as_strided(xp, xpad, shape, strides)


def im2col(x, geom, out=None, channels_last=False):
    """Unroll the receptive fields of every output position of the whole batch.

    ``x``: (N, C, *in) (or (N, *in, C) with ``channels_last``).  Returns ``out`` (allocated if
    None) of shape (N, C, *kernel, *out) (or (N, *out, *kernel, C)).
    """
    xp = get_array_module(x)
    view = window_view(padded(x, geom, 0.0, channels_last), geom, channels_last)
    if out is None:
        out = xp.empty(view.shape, dtype=x.dtype)
    else:
        out = out.reshape(view.shape)

    def work(s, e):
        xp.copyto(out[s:e], view[s:e])
    for_chunks(out.shape[0], out.size, work, xp)
    return out


def col2im(col, geom, out=None, channels_last=False, acc=None):
    """Adjoint of :func:`im2col`: sum every column entry back onto its input position.

    ``col`` is (N, C, *kernel, *out), or with ``channels_last`` (N, *out, *kernel, C).
    Returns ``out`` of shape (N, C, *in) (or (N, *in, C)), overwritten.
    ``acc``: the padded accumulator to use when there is padding (default: one cached on
    ``geom``; callers running col2im on batch slices in threads pass their own slice).
    """
    xp = get_array_module(col)
    nsp = geom.nsp
    if channels_last:
        n, c = col.shape[0], col.shape[-1]
        col = col.reshape((n,) + geom.out_shape + geom.kernel + (c,))
    else:
        n, c = col.shape[0], col.shape[1]
        col = col.reshape((n, c) + geom.kernel + geom.out_shape)
    if channels_last:
        in_full = (n,) + geom.in_shape + (c,)
        pad_full = (n,) + geom.padded_shape + (c,)
    else:
        in_full = (n, c) + geom.in_shape
        pad_full = (n, c) + geom.padded_shape
    if out is None:
        out = xp.empty(in_full, dtype=col.dtype)
    else:
        out = out.reshape(in_full)
    if not geom.needs_pad:
        acc = out
    elif acc is None:
        acc = geom.buffer('col2im', pad_full, xp, col.dtype)
    taps = tap_indices(geom, channels_last)

    def work(s, e):
        a = acc[s:e]
        a.fill(0)
        for tap, index in taps:
            if channels_last:
                src = col[(slice(s, e),) + (slice(None),) * nsp + tap]
            else:
                src = col[(slice(s, e), slice(None)) + tap]
            dst = a[index]
            dst += src
        if geom.needs_pad:
            out[s:e] = a[_spatial_index(geom.interior(), channels_last)]
    for_chunks(n, col.size, work, xp)
    return out
