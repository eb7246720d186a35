"""Vision layers: im2col/col2im, Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop,
Permute.

Forward values are compared with direct (naive, loop-per-element) formulas written here from
Caffe's source, gradients with Caffe's GradientChecker approach (qcaffe.testing), and each
layer of the real models in ../shared/data/oracle/ is run alone on the oracle's own input and
compared with the oracle's output for that layer.
"""
import itertools
import json
import math
import os

import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.io import read_net_param
from qcaffe.layers.base import LayerError
from qcaffe.net import Net
from qcaffe.ops.im2col import ConvGeometry, col2im, im2col
from qcaffe.ops.reference import conv as naive_conv, pool as naive_pool
from qcaffe.proto import caffe_pb2
from qcaffe.testing import check_gradient, make_layer
from layer_helpers import blob as blob_of, run_arrays as run
from shared_data import require_shared


def conv_layer(num_output, **cp):
    cp.setdefault('weight_filler', dict(type='gaussian', std=0.5))
    cp.setdefault('bias_filler', dict(type='gaussian', std=0.5))
    return make_layer('Convolution', convolution_param=dict(num_output=num_output, **cp))


def pool_layer(phase='TEST', **pp):
    return make_layer('Pooling', phase=phase, pooling_param=pp)


RS = np.random.RandomState(1701)


# ---------------------------------------------------------------------------- im2col ops
@pytest.mark.parametrize('channels_last', [False, True])
def test_im2col_matches_naive_and_col2im_is_adjoint(channels_last):
    x = RS.randn(2, 3, 7, 6).astype(np.float32)
    g = ConvGeometry((7, 6), (3, 2), (2, 1), (1, 2), (2, 1))
    assert g.out_shape == (3, 9)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    ref = np.zeros((2, 3, 3, 2) + g.out_shape, np.float32)
    for i, j, oh, ow in itertools.product(range(3), range(2), range(3), range(9)):
        ref[:, :, i, j, oh, ow] = xpad[:, :, oh * 2 + i * 2, ow + j]
    if channels_last:
        col = im2col(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), g, channels_last=True)
        np.testing.assert_array_equal(col, ref.transpose(0, 4, 5, 2, 3, 1))
    else:
        col = im2col(x, g)
        np.testing.assert_array_equal(col, ref)
    # <im2col(x), c> == <x, col2im(c)>
    c = RS.randn(*col.shape).astype(np.float32)
    dx = col2im(c, g, channels_last=channels_last)
    if channels_last:
        dx = dx.transpose(0, 3, 1, 2)
    lhs = np.dot(col.ravel().astype(np.float64), c.ravel())
    assert abs(lhs - np.dot(x.ravel().astype(np.float64), dx.ravel())) < 1e-4 * abs(lhs) + 1e-4


def test_im2col_3d_and_buffer_reuse():
    x = RS.randn(1, 2, 4, 5, 3).astype(np.float32)
    g = ConvGeometry((4, 5, 3), (2, 3, 2), (1, 2, 1), (1, 0, 1))
    col = im2col(x, g)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0), (1, 1)))
    for tap in itertools.product(range(2), range(3), range(2)):
        for o in itertools.product(*[range(v) for v in g.out_shape]):
            pos = (tap[0] + o[0], tap[1] + 2 * o[1], tap[2] + o[2])
            np.testing.assert_array_equal(col[(0, slice(None)) + tap + o], xpad[(0, slice(None)) + pos])
    # the cached padding buffer keeps a zero border across calls with new data
    im2col(x + 5, g)
    np.testing.assert_array_equal(im2col(x, g), col)


# ----------------------------------------------------------------------------- Convolution
CONV_CASES = {
    'plain': (3, 4, dict(kernel_size=[3])),
    'groups_dilation_pad_stride_hw': (8, 6, dict(group=2, kernel_h=3, kernel_w=2, stride_h=2,
                                                 stride_w=1, pad_h=1, pad_w=2,
                                                 dilation=[2, 1])),
    'channels_last_path': (10, 5, dict(kernel_size=[3], pad=[1])),
    'channels_last_stride_dilation': (9, 4, dict(kernel_size=[3, 2], stride=[2], pad=[2, 1],
                                                 dilation=[2])),
    'no_bias': (3, 4, dict(kernel_size=[2], stride=[2], bias_term=False)),
    '1x1': (6, 4, dict(kernel_size=[1])),
    '1x1_groups': (6, 4, dict(kernel_size=[1], group=2)),
    'depthwise': (4, 4, dict(kernel_size=[3], pad=[1], group=4)),
}


@pytest.mark.parametrize('case', sorted(CONV_CASES))
def test_convolution_forward_and_gradient(case):
    c, o, cp = CONV_CASES[case]
    x = RS.randn(2, c, 7, 6).astype(np.float32)
    layer = conv_layer(o, **cp)
    bottom, top = run(layer, x)
    nsp = 2
    k = tuple(cp['kernel_size'] * (2 // len(cp['kernel_size']))) if 'kernel_size' in cp \
        else (cp['kernel_h'], cp['kernel_w'])

    def spatial(name, default):
        if name + '_h' in cp:
            return (cp[name + '_h'], cp[name + '_w'])
        v = cp.get(name, [default])
        return tuple(v * (nsp // len(v)))
    stride, pad, dil = spatial('stride', 1), spatial('pad', 0), spatial('dilation', 1)
    bias = layer.blobs[1].data if cp.get('bias_term', True) else None
    assert layer.blobs[0].shape == (o, c // cp.get('group', 1)) + k
    ref = naive_conv(x, layer.blobs[0].data, bias, stride, pad, dil, cp.get('group', 1))
    assert top[0].shape == ref.shape
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    if case.startswith('channels_last'):
        assert layer.plan.layout == 'nhwc'
    check_gradient(layer, bottom, top, setup=False, max_checks=60)


def test_convolution_param_diffs_accumulate_and_bottom_diff_overwritten():
    layer = conv_layer(3, kernel_size=[3], pad=[1])
    x = RS.randn(2, 9, 5, 5).astype(np.float32)
    bottom, top = run(layer, x)
    top[0].diff[...] = RS.randn(*top[0].shape)
    layer.backward(top, [True], bottom)
    g1 = [b.diff.copy() for b in layer.blobs]
    dx1 = bottom[0].diff.copy()
    bottom[0].diff[...] = 123.0
    layer.backward(top, [True], bottom)
    for b, g in zip(layer.blobs, g1):
        np.testing.assert_allclose(b.diff, 2 * g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, dx1, rtol=1e-6)


def test_convolution_3d_forward_and_gradient():
    x = RS.randn(2, 2, 4, 5, 3).astype(np.float32)
    layer = conv_layer(3, kernel_size=[2, 3, 2], stride=[1, 2, 1], pad=[1, 0, 1])
    bottom, top = run(layer, x)
    ref = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1, 2, 1), (1, 0, 1),
                     (1, 1, 1), 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    check_gradient(layer, bottom, top, setup=False, max_checks=40)
    # the channels-last path on a 3-D input
    x = RS.randn(1, 8, 3, 4, 3).astype(np.float32)
    layer = conv_layer(2, kernel_size=[2], force_nd_im2col=True)
    bottom, top = run(layer, x)
    assert layer.plan.layout == 'nhwc'
    ref = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1,) * 3, (0,) * 3,
                     (1,) * 3, 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    check_gradient(layer, bottom, top, setup=False, max_checks=40)


def test_convolution_two_bottoms_share_weights_and_axis():
    layer = conv_layer(2, kernel_size=[2])
    x1, x2 = RS.randn(1, 3, 4, 4).astype(np.float32), RS.randn(1, 3, 4, 4).astype(np.float32)
    bottom, top = run(layer, x1, x2, ntop=2)
    for x, t in zip((x1, x2), top):
        ref = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
        np.testing.assert_allclose(t.data, ref, rtol=1e-4, atol=1e-4)
    check_gradient(layer, bottom, top, setup=False, max_checks=30)
    # axis=2: axes before it are all "num"; one spatial axis after the channels
    layer = conv_layer(2, kernel_size=[3], axis=2)
    x = RS.randn(2, 3, 4, 6).astype(np.float32)
    bottom, top = run(layer, x)
    assert top[0].shape == (2, 3, 2, 4)
    ref = naive_conv(x.reshape(6, 4, 6), layer.blobs[0].data, layer.blobs[1].data, (1,), (0,),
                     (1,), 1)
    np.testing.assert_allclose(top[0].data.reshape(6, 2, 4), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('cp, shape, match', [
    (dict(num_output=4, kernel_size=[3], group=2), (1, 3, 5, 5), 'multiple of'),
    (dict(num_output=3, kernel_size=[3], group=2), (1, 4, 5, 5), 'multiple of'),
    (dict(num_output=4), (1, 3, 5, 5), 'kernel_size'),
    (dict(num_output=4, kernel_h=3, kernel_w=3), (1, 3, 5, 5, 5), '2D'),
    (dict(num_output=4, kernel_size=[3], kernel_h=3, kernel_w=3), (1, 3, 5, 5), 'not both'),
    (dict(num_output=4, kernel_size=[3, 3, 3]), (1, 3, 5, 5), 'once per spatial'),
    (dict(num_output=4, kernel_size=[7]), (1, 3, 5, 5), 'not positive'),
    (dict(kernel_size=[3]), (1, 3, 5, 5), 'num_output'),
])
def test_convolution_errors(cp, shape, match):
    layer = make_layer('Convolution', name='bad', convolution_param=cp)
    with pytest.raises(LayerError, match=match) as e:
        layer.setup([Blob(shape)], [Blob()])
    assert "'bad'" in str(e.value)


# --------------------------------------------------------------------------- Deconvolution
@pytest.mark.parametrize('cp', [dict(kernel_size=[3], stride=[2], pad=[1]),
                                dict(kernel_size=[2, 3], stride=[1, 2], group=2,
                                     dilation=[2, 1]),
                                dict(kernel_size=[4], stride=[2], pad=[1], group=4,
                                     bias_term=False)])
def test_deconvolution_is_the_adjoint_of_convolution(cp):
    cin, o = 4, 4
    x = RS.randn(2, cin, 4, 5).astype(np.float32)
    deconv = make_layer('Deconvolution', convolution_param=dict(
        num_output=o, weight_filler=dict(type='gaussian', std=0.5),
        bias_filler=dict(type='gaussian', std=0.5), **cp))
    bottom, top = run(deconv, x)
    g = cp.get('group', 1)
    assert deconv.blobs[0].shape[:2] == (cin, o // g)
    # output size: stride*(in-1) + dilation*(k-1) + 1 - 2*pad
    k = cp['kernel_size'] * (2 // len(cp['kernel_size']))
    s = cp.get('stride', [1]) * (2 // len(cp.get('stride', [1])))
    d = cp.get('dilation', [1]) * (2 // len(cp.get('dilation', [1])))
    p = cp.get('pad', [0]) * 2
    want = tuple(s[i] * (x.shape[2 + i] - 1) + d[i] * (k[i] - 1) + 1 - 2 * p[i] for i in range(2))
    assert top[0].shape == (2, o) + want
    # <deconv(x) - b, y> == <x, conv_W(y)> with the same weights and no bias
    y = RS.randn(*top[0].shape)
    out = top[0].data.astype(np.float64)
    if cp.get('bias_term', True):
        out = out - deconv.blobs[1].data.reshape(1, o, 1, 1)
    conv_y = naive_conv(y, deconv.blobs[0].data, None, s[:2], p[:2], d[:2], g)
    np.testing.assert_allclose((out * y).sum(), (x * conv_y).sum(), rtol=1e-4)
    check_gradient(deconv, bottom, top, setup=False, max_checks=50)


# ---------------------------------------------------------------------------------- Im2col
def test_im2col_layer():
    x = RS.randn(2, 3, 5, 6).astype(np.float32)
    layer = make_layer('Im2col', convolution_param=dict(kernel_size=[3, 2], stride=[2], pad=[1]))
    bottom, top = run(layer, x)
    g = ConvGeometry((5, 6), (3, 2), (2, 2), (1, 1))
    assert top[0].shape == (2, 18) + g.out_shape
    np.testing.assert_array_equal(top[0].data, im2col(x, g).reshape(top[0].shape))
    check_gradient(layer, bottom, top, setup=False)


# --------------------------------------------------------------------------------- Pooling
POOL_GEOMS = [
    (7, 7, (3, 3), (2, 2), (1, 1)),   # CEIL + pad clip
    (24, 24, (2, 2), (2, 2), (0, 0)),  # LeNet (tiled fast path)
    (6, 8, (3, 2), (1, 2), (0, 1)),
    (5, 5, (2, 2), (2, 2), (1, 1)),   # clip removes a window
    (32, 32, (3, 3), (2, 2), (0, 0)),  # CIFAR: ceil gives 16, floor would give 15
    (4, 6, (4, 6), (1, 1), (0, 0)),   # whole plane
    (8, 8, (2, 2), (2, 2), (0, 0)),   # LeNet pool2: tiled, rows of 4 floats move as complex128
    (6, 6, (2, 2), (2, 2), (1, 1)),   # the same on a padded buffer
    (3, 6, (3, 3), (3, 3), (0, 0)),   # tiled 3x3, rows of 2 floats move as float64
    (4, 3, (2, 3), (2, 3), (0, 0)),   # tiled, rows of 1 float (float32 elements)
]


def _pp(method, k, s, p):
    return dict(pool=method, kernel_h=k[0], kernel_w=k[1], stride_h=s[0], stride_w=s[1],
                pad_h=p[0], pad_w=p[1])


@pytest.mark.parametrize('geom', POOL_GEOMS)
@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
def test_max_pooling_first_max_forward_mask_and_gradient(geom, phase):
    h, w, k, s, p = geom
    x = (np.round(RS.randn(2, 3, h, w) * 2) / 2).astype(np.float32)   # many ties
    x[0, 0] = 0.0                                                       # a plane of ties
    layer = pool_layer(phase, **_pp('MAX', k, s, p))
    bottom, top = run(layer, x, ntop=2)
    ref, mask = naive_pool(x, k, s, p, 'MAX')
    np.testing.assert_array_equal(top[0].data, ref)
    np.testing.assert_array_equal(top[1].data, mask)
    dy = RS.randn(*ref.shape).astype(np.float32)
    # without the mask top too (TEST computes the argmax lazily in backward)
    layer2 = pool_layer(phase, **_pp('MAX', k, s, p))
    bottom2, top2 = run(layer2, x)
    top2[0].diff[...] = dy
    bottom2[0].diff[...] = 7.0
    layer2.backward(top2, [True], bottom2)
    want = np.zeros((2, 3, h * w))
    for n, c in itertools.product(range(2), range(3)):
        np.add.at(want[n, c], mask[n, c].ravel().astype(int), dy[n, c].ravel())
    np.testing.assert_allclose(bottom2[0].diff, want.reshape(x.shape), rtol=1e-6, atol=1e-6)


def test_max_pooling_ties_send_gradient_to_first_max_only():
    x = np.array([[[[1, 3, 3, 0], [3, 2, 0, 0], [5, 5, 0, 1], [5, 5, 1, 0]]]], np.float32)
    layer = pool_layer('TRAIN', pool='MAX', kernel_size=2, stride=2)
    bottom, top = run(layer, x, ntop=2)
    np.testing.assert_array_equal(top[0].data[0, 0], [[3, 3], [5, 1]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[1, 2], [8, 11]])
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    want = np.zeros((4, 4))
    want[0, 1] = want[0, 2] = want[2, 0] = want[2, 3] = 1.0
    np.testing.assert_array_equal(bottom[0].diff[0, 0], want)


def test_max_pooling_gradient_check():
    x = RS.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7).astype(np.float32) * 0.1  # no ties
    layer = pool_layer('TRAIN', pool='MAX', kernel_size=3, stride=2, pad=1)
    bottom, top = run(layer, x)
    check_gradient(layer, bottom, top, setup=False, step=1e-3)


@pytest.mark.parametrize('geom', POOL_GEOMS)
def test_ave_pooling_forward_and_gradient(geom):
    h, w, k, s, p = geom
    x = RS.randn(2, 2, h, w).astype(np.float32)
    layer = pool_layer(**_pp('AVE', k, s, p))
    bottom, top = run(layer, x)
    ref, _ = naive_pool(x, k, s, p, 'AVE')
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-5, atol=1e-6)
    if h * w <= 64:
        check_gradient(layer, bottom, top, setup=False)


def test_pooling_round_mode_and_global():
    x = RS.randn(1, 2, 32, 32).astype(np.float32)
    _, top = run(pool_layer(pool='MAX', kernel_size=3, stride=2), x)
    assert top[0].shape == (1, 2, 16, 16)
    _, top = run(pool_layer(pool='MAX', kernel_size=3, stride=2, round_mode='FLOOR'), x)
    assert top[0].shape == (1, 2, 15, 15)
    for method, fn in (('MAX', np.max), ('AVE', np.mean)):
        bottom, top = run(pool_layer('TRAIN', pool=method, global_pooling=True), x[:, :, :5, :7])
        assert top[0].shape == (1, 2, 1, 1)
        np.testing.assert_allclose(top[0].data[:, :, 0, 0], fn(x[:, :, :5, :7], axis=(2, 3)),
                                   rtol=1e-6)
        if method == 'AVE':
            check_gradient(pool_layer(pool=method, global_pooling=True), bottom, top)


def test_stochastic_pooling():
    x = np.abs(RS.randn(2, 3, 6, 6)).astype(np.float32)
    x[0, 0] = 0
    _, top = run(pool_layer('TEST', pool='STOCHASTIC', kernel_size=3, stride=2), x)
    # windows at the CEIL border are clipped to the image
    assert top[0].shape == (2, 3, 3, 3)
    want = np.zeros((2, 3, 3, 3))
    for oh, ow in itertools.product(range(3), range(3)):
        win = x[:, :, oh * 2:oh * 2 + 3, ow * 2:ow * 2 + 3].astype(np.float64)
        total = win.sum((2, 3))
        want[:, :, oh, ow] = np.where(total > 0, (win ** 2).sum((2, 3)) / np.maximum(total, 1e-30),
                                      0)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5)
    layer = pool_layer('TRAIN', pool='STOCHASTIC', kernel_size=3, stride=2)
    bottom, top = run(layer, x)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    for oh, ow in itertools.product(range(3), range(3)):
        win = x[:, :, oh * 2:oh * 2 + 3, ow * 2:ow * 2 + 3].reshape(2, 3, -1)
        hit = (win == top[0].data[:, :, oh, ow, None]).any(-1)
        assert hit.all()          # every output is an element of its window
    # each output sends its gradient to exactly one element
    assert bottom[0].diff.sum() == pytest.approx(top[0].count)
    # sampling frequency follows the values: window [1, 3] picks 3 three times out of four
    y = np.array([[[[1, 3]]]], np.float32)
    layer = pool_layer('TRAIN', pool='STOCHASTIC', kernel_h=1, kernel_w=2, stride=2)
    b, t = run(layer, y)
    picks = []
    for _ in range(400):
        layer.forward(b, t)
        picks.append(t[0].data.item())
    assert 0.65 < np.mean(np.array(picks) == 3) < 0.85


@pytest.mark.parametrize('pp, match', [
    (dict(pool='MAX'), 'kernel_size'),
    (dict(pool='MAX', kernel_size=2, kernel_h=2, kernel_w=2), 'not both'),
    (dict(pool='MAX', kernel_h=2), 'kernel_w'),
    (dict(pool='MAX', global_pooling=True, kernel_size=2), 'global_pooling'),
    (dict(pool='STOCHASTIC', kernel_size=3, pad=1), 'Padding'),
    (dict(pool='MAX', kernel_size=2, pad=2), 'smaller than the kernel'),
])
def test_pooling_errors(pp, match):
    layer = make_layer('Pooling', name='badpool', pooling_param=pp)
    with pytest.raises(LayerError, match=match):
        layer.setup([Blob(1, 1, 6, 6)], [Blob()])
    with pytest.raises(LayerError, match='4 axes'):
        pool_layer(pool='MAX', kernel_size=2).setup([Blob(1, 6, 6)], [Blob()])


# ------------------------------------------------------------------------------------- SPP
@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_spp(method):
    # 7x6: every level's pad stays below its kernel (Caffe's Pooling check; 7x5 fails it)
    x = RS.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float32) * 0.01
    layer = make_layer('SPP', phase='TRAIN', spp_param=dict(pyramid_height=3, pool=method))
    bottom, top = run(layer, x)
    assert top[0].shape == (2, 3 * (1 + 4 + 16))
    parts = []
    for level in range(3):
        bins = 2 ** level
        kh, kw = -(-7 // bins), -(-6 // bins)
        ph, pw = (kh * bins - 7 + 1) // 2, (kw * bins - 6 + 1) // 2
        ref, _ = naive_pool(x, (kh, kw), (kh, kw), (ph, pw), method)
        assert ref.shape[2:] == (bins, bins)
        parts.append(ref.reshape(2, -1))
    np.testing.assert_allclose(top[0].data, np.concatenate(parts, axis=1), rtol=1e-5)
    check_gradient(layer, bottom, top, setup=False, step=1e-3, max_checks=40)
    _, top = run(make_layer('SPP', spp_param=dict(pyramid_height=1)), x)
    assert top[0].shape == (2, 3, 1, 1)
    with pytest.raises(LayerError, match="'spp'.*level 2"):
        run(make_layer('SPP', name='spp', spp_param=dict(pyramid_height=3)), x[:, :, :, :5])


# ------------------------------------------------------------------------------------- LRN
@pytest.mark.parametrize('region, size', [('ACROSS_CHANNELS', 5), ('ACROSS_CHANNELS', 3),
                                          ('WITHIN_CHANNEL', 3)])
def test_lrn(region, size):
    x = RS.randn(2, 7, 5, 6).astype(np.float32)
    alpha, beta, k = 0.5, 0.75, 2.0
    layer = make_layer('LRN', lrn_param=dict(local_size=size, alpha=alpha, beta=beta, k=k,
                                             norm_region=region))
    bottom, top = run(layer, x)
    xd = x.astype(np.float64)
    ref = np.zeros_like(xd)
    half = (size - 1) // 2
    if region == 'ACROSS_CHANNELS':
        for c in range(7):
            lo, hi = max(0, c - half), min(7, c + half + 1)
            ref[:, c] = xd[:, c] * (k + alpha / size * (xd[:, lo:hi] ** 2).sum(1)) ** -beta
    else:
        sq = np.pad(xd ** 2, ((0, 0), (0, 0), (half, half), (half, half)))
        for h, w in itertools.product(range(5), range(6)):
            s = 1 + alpha * sq[:, :, h:h + size, w:w + size].sum((2, 3)) / size ** 2
            ref[:, :, h, w] = xd[:, :, h, w] * s ** -beta
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-5, atol=1e-6)
    check_gradient(layer, bottom, top, setup=False, max_checks=80)


def test_lrn_even_size_rejected():
    with pytest.raises(LayerError, match='odd'):
        make_layer('LRN', lrn_param=dict(local_size=4)).setup([Blob(1, 5, 3, 3)], [Blob()])


# ------------------------------------------------------------------------- Crop, Permute
def test_crop():
    a = RS.randn(2, 3, 6, 7).astype(np.float32)
    ref_shape = np.zeros((1, 1, 3, 4), np.float32)
    layer = make_layer('Crop', crop_param=dict(axis=2, offset=[1, 2]))
    bottom, top = run(layer, a, ref_shape)
    np.testing.assert_array_equal(top[0].data, a[:, :, 1:4, 2:6])
    check_gradient(layer, bottom, top, check_bottom=[0], setup=False)
    layer = make_layer('Crop', crop_param=dict(axis=1, offset=[1]))
    _, top = run(layer, a, np.zeros((2, 2, 4, 4), np.float32))
    np.testing.assert_array_equal(top[0].data, a[:, 1:3, 1:5, 1:5])
    _, top = run(make_layer('Crop'), a, np.zeros((5, 5, 2, 2), np.float32))
    np.testing.assert_array_equal(top[0].data, a[:, :, :2, :2])   # axis 2, offsets 0
    with pytest.raises(LayerError, match='dimension: 3'):
        run(make_layer('Crop', crop_param=dict(offset=[0, 5])), a, ref_shape)
    with pytest.raises(LayerError, match='offset'):
        run(make_layer('Crop', crop_param=dict(axis=1, offset=[0, 1])), a, ref_shape)


def test_permute():
    a = RS.randn(2, 3, 4, 5).astype(np.float32)
    layer = make_layer('Permute', permute_param=dict(order=[0, 2, 3, 1]))
    bottom, top = run(layer, a)
    np.testing.assert_array_equal(top[0].data, a.transpose(0, 2, 3, 1))
    check_gradient(layer, bottom, top, setup=False)
    _, top = run(make_layer('Permute', permute_param=dict(order=[2])), a)
    assert top[0].shape == (4, 2, 3, 5)          # missing axes follow in order
    _, top = run(make_layer('Permute'), a)
    np.testing.assert_array_equal(top[0].data, a)
    with pytest.raises(LayerError, match='duplicate'):
        run(make_layer('Permute', permute_param=dict(order=[1, 1])), a)
    with pytest.raises(LayerError, match='less than'):
        run(make_layer('Permute', permute_param=dict(order=[4])), a)


# ------------------------------------------------- real models: one layer at a time vs oracle
ORACLE_TYPES = {'Convolution', 'CONVOLUTION', 'Pooling', 'POOLING', 'LRN', 'Deconvolution'}
ORACLE_MODELS = ['lenet', 'lenet_v1', 'cifar10_full_v1', 'cifar10_quick_v1', 'mtcnn_det1',
                 'mtcnn_det2', 'mtcnn_det3', 'mtcnn_det4', 'resnet20_cifar10']


@pytest.mark.parametrize('model', ORACLE_MODELS)
def test_layers_against_oracle(model):
    """Each vision layer of a real model, fed the oracle's input for it, reproduces the
    oracle's output (range-relative 1e-4, as the parity tests measure)."""
    path = require_shared('oracle', model + '.npz')
    data = np.load(path)
    meta = json.load(open(path[:-4] + '.json'))
    root = os.path.dirname(os.path.dirname(os.path.dirname(path)))   # .../shared
    proto = os.path.join(root, meta['prototxt'].split('shared/', 1)[1])
    weights = os.path.join(root, meta['caffemodel'].split('shared/', 1)[1])
    net = Net.from_param(read_net_param(proto), phase=caffe_pb2.TEST, source=proto)
    net.copy_from(weights)
    layers = {layer.name: layer for layer in net.layers}
    producer = {}
    checked = 0
    for entry in meta['layers']:
        src = producer.get(entry['bottom'][0]) if entry['bottom'] else None
        if src is None and entry['bottom'] and 'input/' + entry['bottom'][0] in data.files:
            src = 'input/' + entry['bottom'][0]
        if entry['type'] in ORACLE_TYPES and entry['name'] in layers and src is not None:
            x = data[src]
            layer = layers[entry['name']]
            bottom, top = [blob_of(x)], [Blob()]
            layer.reshape(bottom, top)
            layer._last_bottom_shapes = None
            layer.forward(bottom, top)
            want = data['layer/' + entry['name']]
            err = np.abs(top[0].data - want).max() / max(np.abs(want).max(), 1e-12)
            assert err < 1e-4, '%s %s: range-relative error %.3g' % (model, entry['name'], err)
            checked += 1
        for t in entry['top']:
            # the oracle keeps one output per layer: only single-top layers are usable sources
            ok = len(entry['top']) == 1 and 'layer/' + entry['name'] in data.files
            producer[t] = 'layer/' + entry['name'] if ok else None
    assert checked >= 2


@pytest.mark.parametrize('channels', [3, 9])
def test_convolution_large_columns_are_built_in_batch_slices(monkeypatch, channels):
    import qcaffe.ops.conv as conv_ops
    monkeypatch.setattr(conv_ops, 'COL_BUDGET_BYTES', 3000)
    x = RS.randn(5, channels, 6, 5).astype(np.float32)
    layer = conv_layer(4, kernel_size=[3], pad=[1])
    bottom, top = run(layer, x)
    assert not layer.plan.keep_cols and len(layer.plan.bounds) > 1
    ref = naive_conv(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    check_gradient(layer, bottom, top, setup=False, max_checks=40)


@pytest.mark.parametrize('channels', [3, 9])
@pytest.mark.parametrize('frozen', [0, 1])
def test_convolution_frozen_param_gets_no_gradient(channels, frozen):
    x = RS.randn(2, channels, 5, 5).astype(np.float32)
    layer = conv_layer(3, kernel_size=[3], pad=[1])
    bottom, top = run(layer, x)
    layer.set_param_propagate_down(0, True)
    layer.set_param_propagate_down(1, True)
    layer.set_param_propagate_down(frozen, False)
    dy = RS.randn(*top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    for prop in (False, True):
        for blob in layer.blobs:
            blob.diff[...] = 0
        layer.backward(top, [prop], bottom)
        assert not layer.blobs[frozen].diff.any()
        if frozen == 0:
            np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 2, 3)), rtol=1e-5)
        else:
            assert layer.blobs[0].diff.any()
