"""BatchNorm, MVN, Scale and Bias: forward against hand computations, numeric gradient checks,
in-place runs, BatchNorm's running statistics (hand computation and real Caffe's values from
caffe_ref/solvers), ParamSpec handling and shape errors."""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.layers import LayerError
from qcaffe.testing import check_gradient, make_layer

from layer_helpers import SHAPE, blob, randn
from shared_data import require_shared


def run(layer, *xs, dy=None, in_place=False):
    """setup + forward (+ backward with top diff ``dy``); returns (bottoms, top)."""
    bottoms = [blob(x) for x in xs]
    top = bottoms[0] if in_place else Blob()
    layer.setup(bottoms, [top])
    layer.forward(bottoms, [top])
    if dy is not None:
        top.diff[...] = dy
        layer.backward([top], [True] * len(bottoms), bottoms)
    return bottoms, top


# -------------------------------------------------------------------------- BatchNorm
def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.var(axis=axes)  # biased variance, as Caffe


def test_batchnorm_train_forward_and_running_stats_by_hand():
    layer = make_layer('BatchNorm', phase='TRAIN',
                       batch_norm_param={'moving_average_fraction': 0.8, 'eps': 1e-3})
    xs = [randn(1) * 2 + 1, randn(2) * 0.5 - 3]
    b, t = blob(xs[0]), Blob()
    layer.setup([b], [t])
    assert [bl.shape for bl in layer.blobs] == [(3,), (3,), (1,)]
    assert all(np.all(bl.data == 0) for bl in layer.blobs)
    m = 2 * 4 * 5
    run0 = np.zeros(3)
    run1 = np.zeros(3)
    run2 = 0.0
    for x in xs:
        b.data[...] = x
        layer.forward([b], [t])
        mean, var = batch_stats(x)
        expect = (x - mean[None, :, None, None]) / np.sqrt(var + 1e-3)[None, :, None, None]
        np.testing.assert_allclose(t.data, expect, rtol=1e-4, atol=1e-5)
        run2 = 0.8 * run2 + 1
        run0 = 0.8 * run0 + mean
        run1 = 0.8 * run1 + m / (m - 1.0) * var
        np.testing.assert_allclose(layer.blobs[0].data, run0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.blobs[1].data, run1, rtol=1e-5)
        np.testing.assert_allclose(layer.blobs[2].data, [run2], rtol=1e-6)


def test_batchnorm_test_phase_uses_scaled_global_stats():
    layer = make_layer('BatchNorm', phase='TEST')
    x = randn(3)
    b, t = blob(x), Blob()
    layer.setup([b], [t])
    layer.blobs[0].data[...] = [2.0, -4.0, 1.0]
    layer.blobs[1].data[...] = [8.0, 2.0, 0.5]
    layer.blobs[2].data[...] = 4.0
    layer.forward([b], [t])
    mean = np.array([0.5, -1.0, 0.25]).reshape(1, 3, 1, 1)
    var = np.array([2.0, 0.5, 0.125]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.data, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5)
    # TEST forward never touches the statistics
    np.testing.assert_array_equal(layer.blobs[2].data, [4.0])
    # scale factor 0 (fresh blobs): mean = var = 0, y = x / sqrt(eps) (Caffe's behaviour)
    layer.blobs[2].data[...] = 0
    layer.forward([b], [t])
    np.testing.assert_allclose(t.data, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_train_then_test_share_statistics():
    """A TEST-phase layer given the TRAIN layer's blobs normalises with the running averages
    (what ShareTrainedLayersWith does for test nets)."""
    train = make_layer('BatchNorm', phase='TRAIN')
    x = randn(4) * 3 + 2
    run(train, x)
    test = make_layer('BatchNorm', phase='TEST')
    for blob_ in train.blobs:
        test.blobs.append(blob_)
    _, t = run(test, x)
    mean, var = batch_stats(x)
    m = x.size // 3
    # one update with maf 0.999: blob2 = 1, so global var = m/(m-1) * batch var
    var_u = var * m / (m - 1)
    expect = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var_u + 1e-5).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.data, expect, rtol=1e-4, atol=1e-5)


def test_batchnorm_use_global_stats_explicit_overrides_phase():
    layer = make_layer('BatchNorm', phase='TRAIN', batch_norm_param={'use_global_stats': True})
    run(layer, randn())
    assert layer.use_global_stats
    np.testing.assert_array_equal(layer.blobs[2].data, 0)  # no update with global stats
    layer = make_layer('BatchNorm', phase='TEST', batch_norm_param={'use_global_stats': False})
    run(layer, randn())
    np.testing.assert_array_equal(layer.blobs[2].data, [1.0])


def test_batchnorm_gradient_batch_stats():
    layer = make_layer('BatchNorm', phase='TRAIN')
    check_gradient(layer, [blob(randn(5))], [Blob()], check_params=False, threshold=1e-3)


def test_batchnorm_gradient_global_stats():
    layer = make_layer('BatchNorm', phase='TEST')
    b, t = blob(randn(6)), Blob()
    layer.setup([b], [t])
    layer.blobs[0].data[...] = [0.3, -0.2, 1.0]
    layer.blobs[1].data[...] = [1.5, 0.7, 2.0]
    layer.blobs[2].data[...] = 1.3
    check_gradient(layer, [b], [t], check_params=False, setup=False, threshold=1e-3)


def test_batchnorm_2d_input_gradient():
    layer = make_layer('BatchNorm', phase='TRAIN')
    check_gradient(layer, [blob(randn(7, (6, 4)))], [Blob()], check_params=False,
                   threshold=1e-3)


def test_batchnorm_in_place_followed_by_in_place_scale():
    """BN -> Scale -> in place on one blob: BN's backward must use its saved x_norm, not the
    blob data that Scale overwrote (Caffe's x_norm_)."""
    x, dy = randn(8), randn(9)
    # reference: separate blobs
    bn, sc = make_layer('BatchNorm', phase='TRAIN'), make_layer(
        'Scale', scale_param={'bias_term': True, 'filler': {'type': 'constant', 'value': 2.0},
                              'bias_filler': {'type': 'constant', 'value': 0.5}})
    b, mid, top = blob(x), Blob(), Blob()
    bn.setup([b], [mid])
    sc.setup([mid], [top])
    bn.forward([b], [mid])
    sc.forward([mid], [top])
    top.diff[...] = dy
    sc.backward([top], [True], [mid])
    bn.backward([mid], [True], [b])
    # in place
    bn2, sc2 = make_layer('BatchNorm', phase='TRAIN'), make_layer(
        'Scale', scale_param={'bias_term': True, 'filler': {'type': 'constant', 'value': 2.0},
                              'bias_filler': {'type': 'constant', 'value': 0.5}})
    s = blob(x)
    bn2.setup([s], [s])
    sc2.setup([s], [s])
    bn2.forward([s], [s])
    sc2.forward([s], [s])
    np.testing.assert_allclose(s.data, top.data, rtol=1e-6)
    s.diff[...] = dy
    sc2.backward([s], [True], [s])
    bn2.backward([s], [True], [s])
    np.testing.assert_allclose(s.diff, b.diff, rtol=1e-4, atol=1e-6)
    for p, q in zip(sc2.blobs, sc.blobs):
        np.testing.assert_allclose(p.diff, q.diff, rtol=1e-5)


def test_batchnorm_adds_lr_mult_zero_param_specs():
    layer = make_layer('BatchNorm', param=[{'lr_mult': 0}])
    run(layer, randn())
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    bad = make_layer('BatchNorm', name='bn_bad', param=[{'lr_mult': 0}, {'lr_mult': 1}])
    with pytest.raises(LayerError, match='bn_bad.*Cannot configure batch normalization'):
        run(bad, randn())


def test_batchnorm_channel_mismatch():
    layer = make_layer('BatchNorm', name='bn1')
    b, t = blob(randn()), Blob()
    layer.setup([b], [t])
    other = blob(randn(0, (2, 4, 3)))
    with pytest.raises(LayerError, match='bn1.*4 channels.*3'):
        layer.forward([other], [t])


def _conv_valid(x, w, bias):
    """Plain stride-1 'valid' convolution (N, C, H, W) x (K, C, kh, kw) for the reference."""
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return (np.einsum('nchwij,kcij->nkhw', win.astype(np.float64), w.astype(np.float64))
            + bias.reshape(1, -1, 1, 1)).astype(np.float32)


def _weights(path):
    from qcaffe.io.weights import load_weights_file
    return {name: [wb.data.reshape(wb.shape) for wb in blobs]
            for name, _, blobs in load_weights_file(path)}


def test_batchnorm_running_stats_match_caffe():
    """tiny_bn: conv1 -> BatchNorm (maf 0.9) in TRAIN; real Caffe's bn1 blobs after each of 3
    SGD steps.  Each step's forward uses the conv weights after the previous update."""
    batch = np.load(require_shared('caffe_ref', 'solvers', 'batch.npz'))
    ref = np.load(require_shared('caffe_ref', 'solvers', 'tiny_bn__sgd.npz'))
    init = _weights(require_shared('caffe_ref', 'solvers', 'tiny_bn_init.caffemodel'))
    layer = make_layer('BatchNorm', phase='TRAIN', name='bn1',
                       batch_norm_param={'use_global_stats': False,
                                         'moving_average_fraction': 0.9})
    conv_w = init['conv1']
    b, t = Blob(), Blob()
    for k in (1, 2, 3):
        b.reshape((8, 4, 24, 24))
        b.data[...] = _conv_valid(batch['data'], *conv_w)
        if k == 1:
            layer.setup([b], [t])
        layer.forward([b], [t])
        for i in range(3):
            np.testing.assert_allclose(layer.blobs[i].data, ref['step%d/bn1/%d' % (k, i)],
                                       rtol=1e-5, atol=1e-6, err_msg='step %d blob %d' % (k, i))
        conv_w = [ref['step%d/conv1/0' % k], ref['step%d/conv1/1' % k]]


def test_batchnorm_scale_test_forward_matches_caffe():
    """TEST-phase forward of tiny_bn with Caffe's final weights: conv1 (numpy) -> BatchNorm ->
    Scale with bias -> ReLU -> 2x2 max pool (numpy) -> ip1 must reproduce Caffe's test/ip1.
    tiny_bn_train.prototxt sets ``use_global_stats: false`` explicitly, so even the TEST net
    normalises with the batch statistics (and updates the running ones): proto2 presence
    beats the phase default."""
    batch = np.load(require_shared('caffe_ref', 'solvers', 'batch.npz'))
    ref = np.load(require_shared('caffe_ref', 'solvers', 'tiny_bn__sgd.npz'))
    w = {name: [ref['step3/%s/%d' % (name, i)] for i in range(n)]
         for name, n in (('conv1', 2), ('bn1', 3), ('scale1', 2), ('ip1', 2))}
    s = blob(_conv_valid(batch['data'], *w['conv1']))
    bn = make_layer('BatchNorm', phase='TEST', batch_norm_param={
        'use_global_stats': False, 'moving_average_fraction': 0.9})
    sc = make_layer('Scale', phase='TEST', scale_param={'bias_term': True})
    relu = make_layer('ReLU', phase='TEST')
    for layer, blobs in ((bn, w['bn1']), (sc, w['scale1'])):
        for arr in blobs:
            layer.blobs.append(blob(arr))
    for layer in (bn, sc, relu):
        layer.setup([s], [s])
        layer.forward([s], [s])
    assert not bn.use_global_stats
    np.testing.assert_allclose(bn.blobs[2].data, [0.9 * 2.71 + 1], rtol=1e-6)
    pooled = s.data.reshape(8, 4, 12, 2, 12, 2).max(axis=(3, 5)).reshape(8, -1)
    ip1 = pooled.astype(np.float64) @ w['ip1'][0].T.astype(np.float64) + w['ip1'][1]
    np.testing.assert_allclose(ip1, ref['test/ip1'], rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------- MVN
@pytest.mark.parametrize('across', [False, True])
@pytest.mark.parametrize('normvar', [True, False])
def test_mvn_forward(across, normvar):
    x = randn(10) * 3 + 1
    layer = make_layer('MVN', mvn_param={'across_channels': across,
                                         'normalize_variance': normvar, 'eps': 1e-3})
    _, t = run(layer, x)
    axes = (1, 2, 3) if across else (2, 3)
    xd = x.astype(np.float64)
    expect = xd - xd.mean(axis=axes, keepdims=True)
    if normvar:  # Caffe adds eps to the standard deviation
        expect /= np.sqrt((expect ** 2).mean(axis=axes, keepdims=True)) + 1e-3
    np.testing.assert_allclose(t.data, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('params', [{}, {'across_channels': True},
                                    {'normalize_variance': False},
                                    {'normalize_variance': False, 'across_channels': True}])
def test_mvn_gradient(params):
    layer = make_layer('MVN', mvn_param=params)
    check_gradient(layer, [blob(randn(11))], [Blob()], threshold=1e-3)


def test_mvn_in_place():
    x, dy = randn(12), randn(13)
    (b,), t = run(make_layer('MVN'), x, dy=dy)
    (s,), _ = run(make_layer('MVN'), x, dy=dy, in_place=True)
    np.testing.assert_allclose(s.data, t.data, rtol=1e-6)
    np.testing.assert_allclose(s.diff, b.diff, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- Scale / Bias
def test_scale_default_blob_and_forward():
    layer = make_layer('Scale')
    x = randn(14)
    (b,), t = run(layer, x)
    assert [bl.shape for bl in layer.blobs] == [(3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)  # unset filler => constant 1
    layer.blobs[0].data[...] = [2, -1, 0.5]
    layer.forward([b], [t])
    np.testing.assert_allclose(t.data, x * np.array([2, -1, 0.5]).reshape(1, 3, 1, 1))


def test_scale_axis_num_axes_shapes():
    cases = [({'axis': 0, 'num_axes': -1}, SHAPE), ({'axis': 1, 'num_axes': 2}, (3, 4)),
             ({'axis': -2, 'num_axes': 2}, (4, 5)), ({'num_axes': 0}, ()),
             ({'axis': 2, 'num_axes': -1}, (4, 5))]
    x = randn(15)
    for params, shape in cases:
        layer = make_layer('Scale', scale_param=dict(params, filler={'type': 'gaussian'}))
        _, t = run(layer, x)
        assert layer.blobs[0].shape == shape
        s = layer.blobs[0].data
        axis = params.get('axis', 1) % 4 if shape else 0
        bshape = (1,) * axis + shape + (1,) * (4 - axis - len(shape))
        np.testing.assert_allclose(t.data, x * s.reshape(bshape), rtol=1e-6)


def test_scale_with_bias_forward():
    layer = make_layer('Scale', scale_param={'bias_term': True,
                                             'filler': {'type': 'constant', 'value': 3.0},
                                             'bias_filler': {'type': 'constant', 'value': -1.0}})
    x = randn(16)
    _, t = run(layer, x)
    assert [bl.shape for bl in layer.blobs] == [(3,), (3,)]
    np.testing.assert_allclose(t.data, 3 * x - 1, rtol=1e-6)


SCALE_BIAS_GRAD = [
    ('Scale', {'scale_param': {'filler': {'type': 'gaussian'}}}),
    ('Scale', {'scale_param': {'bias_term': True, 'filler': {'type': 'gaussian'},
                               'bias_filler': {'type': 'gaussian'}}}),
    ('Scale', {'scale_param': {'axis': 0, 'num_axes': -1, 'filler': {'type': 'gaussian'}}}),
    ('Scale', {'scale_param': {'num_axes': 0, 'bias_term': True,
                               'filler': {'type': 'gaussian'}}}),
    ('Bias', {'bias_param': {'filler': {'type': 'gaussian'}}}),
    ('Bias', {'bias_param': {'axis': 2, 'num_axes': 2, 'filler': {'type': 'gaussian'}}}),
]


@pytest.mark.parametrize('type_name,params', SCALE_BIAS_GRAD,
                         ids=['%s-%d' % (c[0], i) for i, c in enumerate(SCALE_BIAS_GRAD)])
def test_scale_bias_gradient(type_name, params):
    layer = make_layer(type_name, **params)
    check_gradient(layer, [blob(randn(17))], [Blob()], threshold=1e-3, max_checks=40)


@pytest.mark.parametrize('type_name', ['Scale', 'Bias'])
def test_second_bottom_form(type_name):
    x, operand = randn(18), randn(19, (3, 4))
    field = type_name.lower() + '_param'
    layer = make_layer(type_name, **{field: {'axis': 1, 'num_axes': 2}})
    _, t = run(layer, x, operand)
    assert len(layer.blobs) == 0
    o = operand.reshape(1, 3, 4, 1)
    np.testing.assert_allclose(t.data, x * o if type_name == 'Scale' else x + o, rtol=1e-6)
    check_gradient(make_layer(type_name, **{field: {'axis': 1}}),
                   [blob(x), blob(operand)], [Blob()], threshold=1e-3, max_checks=40)


def test_scale_second_bottom_with_bias_term():
    """Caffe: the bias is a learned blob over the same axes even when the scale is a bottom."""
    layer = make_layer('Scale', scale_param={'bias_term': True,
                                             'bias_filler': {'type': 'gaussian'}})
    x, s = randn(20), randn(21, (3, 4))
    _, t = run(layer, x, s)
    assert [bl.shape for bl in layer.blobs] == [(3,)]
    bias = layer.blobs[0].data.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.data, x * s.reshape(1, 3, 4, 1) + bias, rtol=1e-5, atol=1e-6)
    check_gradient(make_layer('Scale', scale_param={'bias_term': True}),
                   [blob(x), blob(s)], [Blob()], threshold=1e-3, max_checks=40)


@pytest.mark.parametrize('type_name,params', SCALE_BIAS_GRAD[:2] + SCALE_BIAS_GRAD[4:5])
def test_scale_bias_in_place(type_name, params):
    x, dy = randn(22), randn(23)
    ref = make_layer(type_name, **params)
    (b,), t = run(ref, x, dy=dy)
    layer = make_layer(type_name, **params)
    layer.blobs.extend(blob(p.data.copy()) for p in ref.blobs)  # same parameters
    (s,), _ = run(layer, x, dy=dy, in_place=True)
    np.testing.assert_allclose(s.data, t.data, rtol=1e-6)
    np.testing.assert_allclose(s.diff, b.diff, rtol=1e-6)
    for p, q in zip(layer.blobs, ref.blobs):
        np.testing.assert_allclose(p.diff, q.diff, rtol=1e-5)


def test_scale_param_diff_accumulates_second_bottom_overwrites():
    layer = make_layer('Scale', scale_param={'bias_term': True})
    x, dy = randn(24), randn(25)
    (b,), t = run(layer, x, dy=dy)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward([t], [True], [b])
    for p, o in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * o, rtol=1e-6)
    layer = make_layer('Scale')
    (b0, b1), t = run(layer, x, np.ones(3, np.float32), dy=dy)
    first = b1.diff.copy()
    layer.backward([t], [True, True], [b0, b1])
    np.testing.assert_allclose(b1.diff, first)


def test_scale_bias_shape_errors():
    with pytest.raises(LayerError, match='sc1.*dimension mismatch'):
        run(make_layer('Scale', name='sc1'), randn(), np.ones(4, np.float32))
    with pytest.raises(LayerError, match='bi1.*num_axes'):
        run(make_layer('Bias', name='bi1', bias_param={'num_axes': -2}), randn())
    with pytest.raises(LayerError, match='sc2.*extends past'):
        run(make_layer('Scale', name='sc2', scale_param={'axis': 2, 'num_axes': 3}), randn())
    with pytest.raises(LayerError, match='sc3.*axis'):
        run(make_layer('Scale', name='sc3', scale_param={'axis': 4}), randn())


# ------------------------------------------------------------------ through the Net
_CHAIN = '''
name: "chain"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "%(bn)s" }
layer { name: "sc" type: "Scale" bottom: "%(bn)s" top: "%(sc)s"
        scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "pr" type: "PReLU" bottom: "%(sc)s" top: "%(pr)s" }
layer { name: "mvn" type: "MVN" bottom: "%(pr)s" top: "%(mvn)s" }
layer { name: "ip" type: "InnerProduct" bottom: "%(mvn)s" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def _chain_net(in_place, phase):
    from qcaffe import backend
    from qcaffe.io.prototxt import parse_prototxt_text
    from qcaffe.net import Net
    from qcaffe.proto import caffe_pb2
    names = dict(bn='data', sc='data', pr='data', mvn='data') if in_place else \
        dict(bn='bn', sc='sc', pr='pr', mvn='mvn')
    param = parse_prototxt_text(_CHAIN % names, caffe_pb2.NetParameter())
    backend.set_random_seed(5)
    return Net.from_param(param, phase=caffe_pb2.TRAIN if phase == 'TRAIN' else caffe_pb2.TEST)


@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
def test_in_place_chain_in_a_net_matches_separate_blobs(phase):
    """BN -> Scale -> PReLU -> MVN all in place on one blob gives the same loss, parameter
    gradients, data gradient and running statistics as the same net with a blob per layer."""
    x = randn(30, (4, 3, 5, 5)) * 2 + 1
    label = np.array([0, 2, 1, 1], np.float32)
    results = []
    for in_place in (False, True):
        net = _chain_net(in_place, phase)
        net.blob_by_name('data').data[...] = x
        net.blob_by_name('label').data[...] = label
        bn = net.layers[net.layer_index('bn')]
        if phase == 'TEST':  # give the global statistics something to do
            bn.blobs[0].data[...] = [0.5, 1.0, 1.5]
            bn.blobs[1].data[...] = [2.0, 4.0, 3.0]
            bn.blobs[2].data[...] = 1.0
        net.clear_param_diffs()
        loss = net.forward_backward()
        params = [b.diff.copy() for name in ('sc', 'pr', 'ip')
                  for b in net.layers[net.layer_index(name)].blobs]
        params.append(net.blob_by_name('data').diff.copy())  # through BN's backward
        results.append((loss, params, bn))
    (loss_a, params_a, bn_a), (loss_b, params_b, bn_b) = results
    assert np.abs(params_a[-1]).max() > 1e-4
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    for a, b in zip(bn_a.blobs, bn_b.blobs):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6)
    # BatchNorm's statistics are not learnable: three lr_mult 0 ParamSpecs, no diff
    assert [p.lr_mult for p in bn_b.layer_param.param] == [0, 0, 0]
    assert all(np.all(b.diff == 0) for b in bn_b.blobs)
