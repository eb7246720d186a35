"""pycaffe's ``caffe.coord_map``: spatial coordinate maps between NetSpec tops, and ``crop``.

Caffe equivalent: python/caffe/coord_map.py (same functions, same results).  Works on
:mod:`qcaffe.net_spec` Functions only, no Net is built.  A map is ``(axis, scale, shift)``:
a coordinate ``x`` in the bottom is ``scale * x + shift`` in the top.  ``crop(top_from,
top_to)`` builds the Crop layer that aligns ``top_from`` to ``top_to`` (FCN's use).
"""
import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Dropout', 'Eltwise', 'ELU',
                       'Log', 'LRN', 'Exp', 'MVN', 'Power', 'ReLU', 'PReLU', 'Scale',
                       'Sigmoid', 'Split', 'TanH', 'Threshold']


class UndefinedMapException(Exception):
    """The layer type has no coordinate map (it is not spatial or pass-through)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def conv_params(fn):
    """(axis, stride, effective kernel extent, pad) of a Convolution/Pooling-like Function."""
    params = fn.params.get('convolution_param', fn.params)
    axis = params.get('axis', 1)
    ks = np.array(params['kernel_size'], ndmin=1)
    dilation = np.array(params.get('dilation', 1), ndmin=1)
    legacy = {'pad_h', 'pad_w', 'kernel_h', 'kernel_w', 'stride_h', 'stride_w'} & set(fn.params)
    assert not legacy, 'cropping does not support legacy _h/_w params (%s)' % sorted(legacy)
    return (axis, np.array(params.get('stride', 1), ndmin=1), (ks - 1) * dilation + 1,
            np.array(params.get('pad', 0), ndmin=1))


def crop_params(fn):
    params = fn.params.get('crop_param', fn.params)
    axis = params.get('axis', 2)  # default: spatial crop of N, C, H, W
    offset = np.array(params.get('offset', 0), ndmin=1)
    return axis, offset


def coord_map(fn):
    """The (axis, scale, shift) map from ``fn``'s bottom to its top."""
    if fn.type_name in ('Convolution', 'Pooling', 'Im2col'):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == 'Deconvolution':
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == 'Crop':
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the last non-coordinate axis
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """The map of applying ``base_map`` after ``next_map`` (top <- mid <- bottom)."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException('axis %s vs %s' % (ax1, ax2))
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _collect_bottoms(top):
    # Every bottom maps like the first, except Crop's second (reference-size) bottom.
    bottoms = top.fn.inputs
    if top.fn.type_name == 'Crop':
        bottoms = bottoms[:1]
    return bottoms


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s, through a common ancestor."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _collect_bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _collect_bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise RuntimeError('Could not compute map between tops; are they connected by spatial '
                       'layers?')


def crop(top_from, top_to):
    """An ``L.Crop(top_from, top_to, crop_param=...)`` aligning ``top_from`` to ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (a == 1).all(), 'scale mismatch on crop (a = {})'.format(a)
    assert (b <= 0).all(), 'cannot crop negative offset (b = {})'.format(b)
    assert (np.round(b) == b).all(), 'cannot crop noninteger offset (b = {})'.format(b)
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=ax + 1,  # +1: the first cropped axis
                                  offset=list(-np.round(b).astype(int))))
