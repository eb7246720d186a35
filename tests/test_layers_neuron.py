"""Neuron layers: forward against the formulas, numeric gradient checks (Caffe's
GradientChecker, kinks skipped as Caffe's tests do), in-place runs equal to out-of-place runs,
Dropout statistics and phases, parameter errors."""
import numpy as np
import pytest

from qcaffe import backend
from qcaffe.blob import Blob
from qcaffe.layers import LayerError
from qcaffe.testing import check_gradient, make_layer

from layer_helpers import blob, randn


def away_from(x, points, margin=0.03):
    """Move values within ``margin`` of a kink so finite differences do not straddle it."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, 1, -1) * 2 * margin
    return x


def forward(layer, x):
    bottom, top = blob(x), Blob()
    layer.setup([bottom], [top])
    layer.forward([bottom], [top])
    return top.data.copy()


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# (type, params, reference formula on float64, kink points, input transform)
CASES = [
    ('ReLU', {}, lambda x: np.maximum(x, 0), [0.0], None),
    ('ReLU', {'relu_param': {'negative_slope': 0.1}},
     lambda x: np.where(x > 0, x, 0.1 * x), [0.0], None),
    ('ELU', {'elu_param': {'alpha': 0.7}},
     lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)), [0.0], None),
    ('Sigmoid', {}, sigmoid, [], None),
    ('TanH', {}, np.tanh, [], None),
    ('AbsVal', {}, np.abs, [0.0], None),
    ('BNLL', {}, lambda x: np.log1p(np.exp(x)), [], None),
    ('Power', {'power_param': {'power': 2.0, 'scale': 0.5, 'shift': 1.0}},
     lambda x: (1.0 + 0.5 * x) ** 2, [], None),
    ('Power', {'power_param': {'power': 1.0, 'scale': -2.0, 'shift': 0.5}},
     lambda x: 0.5 - 2.0 * x, [], None),
    ('Power', {'power_param': {'power': 0.5, 'scale': 1.0, 'shift': 0.0}},
     np.sqrt, [], lambda x: np.abs(x) + 0.5),
    ('Power', {'power_param': {'power': -1.5, 'scale': 2.0, 'shift': 1.0}},
     lambda x: (1.0 + 2.0 * x) ** -1.5, [], lambda x: np.abs(x) + 0.2),
    ('Exp', {}, np.exp, [], None),
    ('Exp', {'exp_param': {'base': 2.0, 'scale': 0.5, 'shift': 1.0}},
     lambda x: 2.0 ** (1.0 + 0.5 * x), [], None),
    ('Log', {}, np.log, [], lambda x: np.abs(x) + 0.5),
    ('Log', {'log_param': {'base': 10.0, 'scale': 0.5, 'shift': 3.0}},
     lambda x: np.log10(3.0 + 0.5 * x), [], None),
    ('Clip', {'clip_param': {'min': -0.5, 'max': 0.8}},
     lambda x: np.clip(x, -0.5, 0.8), [-0.5, 0.8], None),
    ('Swish', {}, lambda x: x * sigmoid(x), [], None),
    ('Swish', {'swish_param': {'beta': 1.5}}, lambda x: x * sigmoid(1.5 * x), [], None),
    ('Threshold', {'threshold_param': {'threshold': 0.3}},
     lambda x: (x > 0.3).astype(np.float64), [], None),
    ('Dropout', {}, lambda x: x, [], None),  # TEST phase: identity
]
IDS = ['%s-%d' % (c[0], i) for i, c in enumerate(CASES)]


def _input(case, seed=0):
    x = randn(seed)
    if case[4] is not None:
        x = case[4](x).astype(np.float32)
    return away_from(x, case[3])


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_forward_matches_formula(case):
    type_name, params, ref = case[:3]
    x = _input(case)
    y = forward(make_layer(type_name, **params), x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize('case', [c for c in CASES if c[0] != 'Threshold'],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] != 'Threshold'])
def test_gradient(case):
    type_name, params = case[:2]
    x = _input(case, seed=1)
    layer = make_layer(type_name, **params)
    check_gradient(layer, [blob(x)], [Blob()], step=1e-2, threshold=1e-3)


@pytest.mark.parametrize('case', [c for c in CASES if c[0] not in ('AbsVal', 'Threshold')],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] not in ('AbsVal',
                                                                            'Threshold')])
def test_in_place_equals_out_of_place(case):
    """top is bottom: same top values and same bottom gradient as the two-blob run."""
    type_name, params = case[:2]
    x = _input(case, seed=2)
    dy = randn(3)
    ref_layer = make_layer(type_name, **params)
    b, t = blob(x), Blob()
    ref_layer.setup([b], [t])
    ref_layer.forward([b], [t])
    t.diff[...] = dy
    ref_layer.backward([t], [True], [b])

    layer = make_layer(type_name, **params)
    shared = blob(x)
    layer.setup([shared], [shared])
    layer.forward([shared], [shared])
    np.testing.assert_allclose(shared.data, t.data, rtol=1e-6, atol=1e-7)
    shared.diff[...] = dy
    layer.backward([shared], [True], [shared])
    np.testing.assert_allclose(shared.diff, b.diff, rtol=1e-5, atol=1e-6)


def test_absval_rejects_in_place():
    layer = make_layer('AbsVal', name='abs1')
    shared = blob(randn())
    with pytest.raises(LayerError, match="abs1.*in-place"):
        layer.setup([shared], [shared])


def test_threshold_has_no_backward():
    layer = make_layer('Threshold')
    b, t = blob(randn()), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    with pytest.raises(LayerError, match='cannot backpropagate'):
        layer.backward([t], [True], [b])


def test_relu_backward_kink_uses_caffe_convention():
    """x == 0 takes the negative branch (Caffe: x > 0 ? 1 : slope)."""
    layer = make_layer('ReLU', relu_param={'negative_slope': 0.25})
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    b, t = blob(x), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    t.diff[...] = 1
    layer.backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, [[0.25, 0.25, 1.0]])


def test_power_constant_cases():
    """power * scale == 0: constant output (1 for power 0, shift^power otherwise), zero diff."""
    for params, value in [({'power': 0.0, 'scale': 3.0, 'shift': 2.0}, 1.0),
                          ({'power': 2.0, 'scale': 0.0, 'shift': 3.0}, 9.0)]:
        layer = make_layer('Power', power_param=params)
        b, t = blob(randn()), Blob()
        layer.setup([b], [t])
        layer.forward([b], [t])
        np.testing.assert_array_equal(t.data, value)
        t.diff[...] = 1
        layer.backward([t], [True], [b])
        np.testing.assert_array_equal(b.diff, 0)


def test_exp_log_reject_bad_base():
    for type_name, field in (('Exp', 'exp_param'), ('Log', 'log_param')):
        with pytest.raises(LayerError, match='base must be strictly positive'):
            forward(make_layer(type_name, **{field: {'base': -2.0}}), randn())


def test_log_rejects_base_one():
    with pytest.raises(LayerError, match='log_param.base = 1'):
        forward(make_layer('Log', log_param={'base': 1.0}), randn())


def test_clip_requires_ordered_bounds():
    with pytest.raises(LayerError, match='clip_param.min'):
        forward(make_layer('Clip', clip_param={'min': 1.0, 'max': -1.0}), randn())


def test_bnll_large_inputs_are_finite():
    x = np.array([[-100.0, -30.0, 0.0, 30.0, 100.0]], np.float32)
    y = forward(make_layer('BNLL'), x)
    np.testing.assert_allclose(y, np.logaddexp(0, x.astype(np.float64)), rtol=1e-6, atol=1e-30)
    assert np.all(np.isfinite(y))


# ----------------------------------------------------------------------------- PReLU
def test_prelu_forward_per_channel_and_default_filler():
    layer = make_layer('PReLU')
    x = randn()
    b, t = blob(x), Blob()
    layer.setup([b], [t])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    layer.blobs[0].data[...] = [0.1, -0.2, 0.5]
    layer.forward([b], [t])
    a = np.array([0.1, -0.2, 0.5], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(t.data, np.where(x > 0, x, a * x), rtol=1e-6)


def test_prelu_channel_shared_is_a_scalar_blob():
    layer = make_layer('PReLU', prelu_param={'channel_shared': True,
                                             'filler': {'type': 'constant', 'value': 0.3}})
    x = randn()
    y = forward(layer, x)
    assert layer.blobs[0].shape == ()  # Caffe: Blob(vector<int>(0))
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.3 * x), rtol=1e-6)


@pytest.mark.parametrize('shared', [False, True])
def test_prelu_gradient(shared):
    layer = make_layer('PReLU', prelu_param={'channel_shared': shared,
                                             'filler': {'type': 'uniform', 'min': -0.5,
                                                        'max': 0.5}})
    check_gradient(layer, [blob(away_from(randn(4), [0.0]))], [Blob()], threshold=1e-3)


def test_prelu_in_place_gradient():
    """In place, the slope gradient still needs the original negative inputs (bottom copy)."""
    x = away_from(randn(5), [0.0])
    ref = make_layer('PReLU')
    b, t = blob(x), Blob()
    ref.setup([b], [t])
    ref.forward([b], [t])
    t.diff[...] = 1
    ref.backward([t], [True], [b])
    layer = make_layer('PReLU')
    s = blob(x)
    layer.setup([s], [s])
    layer.forward([s], [s])
    s.diff[...] = 1
    layer.backward([s], [True], [s])
    np.testing.assert_allclose(layer.blobs[0].diff, ref.blobs[0].diff, rtol=1e-6)
    np.testing.assert_allclose(s.diff, b.diff)
    expected = np.where(x < 0, x, 0).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=1e-5)


def test_prelu_param_diff_accumulates():
    layer = make_layer('PReLU')
    b, t = blob(away_from(randn(6), [0.0])), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    t.diff[...] = 1
    layer.backward([t], [True], [b])
    once = layer.blobs[0].diff.copy()
    layer.backward([t], [True], [b])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)


def test_prelu_rejects_wrong_blob_size_and_1d_input():
    layer = make_layer('PReLU', name='pr')
    layer.blobs.add_blob(5)
    with pytest.raises(LayerError, match='pr.*inconsistent'):
        layer.setup([blob(randn())], [Blob()])
    with pytest.raises(LayerError, match='>=2'):
        make_layer('PReLU').setup([blob(randn(0, (6,)))], [Blob()])


# ---------------------------------------------------------------------------- Dropout
def test_dropout_train_mask_scale_and_backward():
    backend.set_random_seed(1701)
    layer = make_layer('Dropout', phase='TRAIN', dropout_param={'dropout_ratio': 0.3})
    x = np.abs(randn(7, (20, 50))) + 0.1
    b, t = blob(x), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    y = t.data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.04  # 1000 Bernoulli(0.7) draws
    t.diff[...] = 1
    layer.backward([t], [True], [b])
    np.testing.assert_allclose(b.diff, kept / 0.7, rtol=1e-6)
    # a new forward draws a new mask
    layer.forward([b], [t])
    assert not np.array_equal(t.data != 0, kept)


def test_dropout_seed_reproducible():
    masks = []
    for _ in range(2):
        backend.set_random_seed(7)
        layer = make_layer('Dropout', phase='TRAIN')
        masks.append(forward(layer, np.ones((4, 25), np.float32)))
    np.testing.assert_array_equal(masks[0], masks[1])


def test_dropout_test_phase_identity_both_ways():
    layer = make_layer('Dropout', phase='TEST', dropout_param={'dropout_ratio': 0.9})
    x = randn()
    b, t = blob(x), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    np.testing.assert_array_equal(t.data, x)
    t.diff[...] = 3
    layer.backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 3)


def test_dropout_train_in_place_backward_uses_mask():
    backend.set_random_seed(3)
    layer = make_layer('Dropout', phase='TRAIN')
    x = np.ones((10, 10), np.float32)
    s = blob(x)
    layer.setup([s], [s])
    layer.forward([s], [s])
    kept = s.data != 0
    s.diff[...] = 1
    layer.backward([s], [True], [s])
    np.testing.assert_allclose(s.diff, kept * 2.0)


def test_dropout_rejects_ratio_one():
    with pytest.raises(LayerError, match='dropout_ratio'):
        forward(make_layer('Dropout', dropout_param={'dropout_ratio': 1.0}), randn())


def test_clip_needs_both_bounds():
    with pytest.raises(LayerError, match='clip_param needs both'):
        forward(make_layer('Clip', name='c', clip_param={'min': 0.0}), randn())
