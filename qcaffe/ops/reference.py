"""Short, obviously-correct reference implementations of the kernels in ``qcaffe.ops``.

Written from Caffe's definitions with plain loops (over output channels and kernel taps, or
over every output element), in float64; slow, and never used by the library.  The tests
compare every fast path of ``qcaffe.ops`` (layouts, tiled windows, chunks and threads) with
them.
"""
import itertools
import math

import numpy as np


def _conv_terms(x_shape, w_shape, stride, pad, dil, group):
    """Caffe's convolution as a list of terms ``(oc, channels, tap, window)``: output channel
    ``oc`` adds ``w[oc, :, tap] . xpad[:, channels][window]`` at every output position."""
    o, cg = w_shape[:2]
    k = w_shape[2:]
    out = [(sz + 2 * p - (d * (kk - 1) + 1)) // st + 1
           for sz, p, d, kk, st in zip(x_shape[2:], pad, dil, k, stride)]
    og = o // group
    terms = []
    for oc in range(o):
        g = oc // og
        for tap in itertools.product(*[range(kk) for kk in k]):
            window = tuple(slice(t * d, t * d + st * (ou - 1) + 1, st)
                           for t, d, st, ou in zip(tap, dil, stride, out))
            terms.append((oc, slice(g * cg, (g + 1) * cg), tap, window))
    return tuple(out), terms


def conv(x, w, b, stride, pad, dil, group):
    """Direct N-D convolution (Caffe's definition): loops over output channels and taps."""
    out, terms = _conv_terms(x.shape, w.shape, stride, pad, dil, group)
    xpad = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, p) for p in pad])
    y = np.zeros(x.shape[:1] + w.shape[:1] + out)
    for oc, chans, tap, window in terms:
        y[:, oc] += np.tensordot(w[(oc, slice(None)) + tap].astype(np.float64),
                                 xpad[(slice(None), chans) + window], axes=([0], [1]))
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * len(out))
    return y


def conv_backward(x, w, dy, stride, pad, dil, group):
    """Gradients ``(dx, dw, db)`` of :func:`conv` for the output gradient ``dy``: each term of
    the forward sends ``dy`` back to the input window and the weight tap it read."""
    out, terms = _conv_terms(x.shape, w.shape, stride, pad, dil, group)
    xpad = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, p) for p in pad])
    dy = dy.astype(np.float64)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros(w.shape)
    for oc, chans, tap, window in terms:
        wt = w[(oc, slice(None)) + tap].astype(np.float64)               # (C/G,)
        dw[(oc, slice(None)) + tap] = np.tensordot(
            xpad[(slice(None), chans) + window], dy[:, oc],
            axes=([0] + list(range(2, 2 + len(out))), [0] + list(range(1, 1 + len(out)))))
        dxpad[(slice(None), chans) + window] += wt.reshape((1, -1) + (1,) * len(out)) \
            * dy[:, oc:oc + 1]
    interior = tuple(slice(p, p + sz) for p, sz in zip(pad, x.shape[2:]))
    db = dy.sum(axis=(0,) + tuple(range(2, 2 + len(out))))
    return dxpad[(slice(None), slice(None)) + interior], dw, db


def pool(x, k, s, p, method, ceil=True):
    """Caffe's pooling_layer.cpp loops, returning (top, mask)."""
    n, c, h, w = x.shape

    def size(sz, kk, st, pd):
        o = (math.ceil if ceil else math.floor)((sz + 2 * pd - kk) / st) + 1
        if (p[0] or p[1]) and (o - 1) * st >= sz + pd:
            o -= 1
        return o
    ph, pw = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    y = np.zeros((n, c, ph, pw))
    mask = np.full((n, c, ph, pw), -1.0)
    for oh, ow in itertools.product(range(ph), range(pw)):
        hs, ws = oh * s[0] - p[0], ow * s[1] - p[1]
        if method == 'MAX':
            he, we = min(hs + k[0], h), min(ws + k[1], w)
            hs, ws = max(hs, 0), max(ws, 0)
            for ni, ci in itertools.product(range(n), range(c)):
                best = -np.inf
                for hh, ww in itertools.product(range(hs, he), range(ws, we)):
                    if x[ni, ci, hh, ww] > best:
                        best, mask[ni, ci, oh, ow] = x[ni, ci, hh, ww], hh * w + ww
                y[ni, ci, oh, ow] = best
        else:
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            pool_size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            y[:, :, oh, ow] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / pool_size
    return y, mask


def gemm(a, b):
    """``a @ b`` in float64, one dot product per output element."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.empty((a.shape[0], b.shape[1]))
    for i, j in itertools.product(range(a.shape[0]), range(b.shape[1])):
        out[i, j] = np.dot(a[i], b[:, j])
    return out


def pool_backward(x_shape, dy, mask, k, s, p, method, ceil=True):
    """Gradient of :func:`pool` for ``dy``: MAX sends each output's gradient to the input its
    ``mask`` names, AVE spreads it over the window divided by Caffe's pool size."""
    n, c, h, w = x_shape
    dx = np.zeros(x_shape)
    ph, pw = dy.shape[2:]
    for oh, ow in itertools.product(range(ph), range(pw)):
        if method == 'MAX':
            for ni, ci in itertools.product(range(n), range(c)):
                pos = int(mask[ni, ci, oh, ow])
                dx[ni, ci, pos // w, pos % w] += dy[ni, ci, oh, ow]
        else:
            hs, ws = oh * s[0] - p[0], ow * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            pool_size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            dx[:, :, hs:he, ws:we] += dy[:, :, oh:oh + 1, ow:ow + 1] / pool_size
    return dx
