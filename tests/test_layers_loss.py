"""Loss layers and Accuracy: forward values against numpy re-derivations of Caffe's loops,
numeric gradient checks (label bottoms excluded), normalization modes, ignore_label, the
extra top of SoftmaxWithLoss, Accuracy's tie rule / top_k / per-class top, and errors."""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.layers import LayerError
from qcaffe.proto import caffe_pb2
from qcaffe.testing import check_gradient, make_layer

from layer_helpers import blob, run_arrays as forward

FLT_MIN = np.finfo(np.float32).tiny


def rs(seed):
    return np.random.RandomState(seed)


def np_softmax(x, axis):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------- SoftmaxWithLoss
def softmax_loss_ref(x, label, ignore=None, mode='VALID'):
    """Caffe's SoftmaxWithLoss loop for axis 1 on (N, C, ...)."""
    p = np_softmax(x, 1)
    n, c = x.shape[:2]
    p = p.reshape(n, c, -1)
    lab = label.reshape(n, -1).astype(int)
    inner = p.shape[2]
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    picked = np.take_along_axis(p, safe[:, None, :], axis=1)[:, 0, :]
    loss = -(np.log(np.maximum(picked, FLT_MIN)) * valid).sum()
    norm = {'FULL': n * inner, 'VALID': valid.sum(), 'BATCH_SIZE': n, 'NONE': 1}[mode]
    return loss / max(1.0, norm)


def spatial_case(seed=0, ignore=None):
    r = rs(seed)
    x = r.randn(3, 5, 2, 4).astype(np.float32) * 2
    label = r.randint(0, 5, size=(3, 1, 2, 4)).astype(np.float32)
    if ignore is not None:
        label[0, 0, 0, :3] = ignore
        label[2, 0, 1, 1] = ignore
    return x, label


@pytest.mark.parametrize('mode', ['FULL', 'VALID', 'BATCH_SIZE', 'NONE'])
def test_softmax_loss_normalization_modes(mode):
    x, label = spatial_case(1, ignore=2)
    layer = make_layer('SoftmaxWithLoss', loss_param={'ignore_label': 2, 'normalization': mode})
    _, (top,) = forward(layer, x, label)
    assert top.shape == ()
    np.testing.assert_allclose(float(top.data), softmax_loss_ref(x, label, 2, mode), rtol=1e-5)


@pytest.mark.parametrize('normalize,mode', [(True, 'VALID'), (False, 'BATCH_SIZE')])
def test_softmax_loss_deprecated_normalize(normalize, mode):
    x, label = spatial_case(2, ignore=0)
    layer = make_layer('SoftmaxWithLoss', loss_param={'ignore_label': 0, 'normalize': normalize})
    _, (top,) = forward(layer, x, label)
    np.testing.assert_allclose(float(top.data), softmax_loss_ref(x, label, 0, mode), rtol=1e-5)


def test_softmax_loss_default_and_loss_weight():
    x = rs(3).randn(6, 10).astype(np.float32)
    label = np.arange(6, dtype=np.float32)
    layer = make_layer('SoftmaxWithLoss')
    _, (top,) = forward(layer, x, label)
    np.testing.assert_allclose(float(top.data), softmax_loss_ref(x, label), rtol=1e-5)
    assert list(layer.layer_param.loss_weight) == [1.0]  # Caffe adds it to the layer param
    assert float(top.diff) == 1.0


def test_softmax_loss_other_axis():
    r = rs(4)
    x = r.randn(2, 3, 7).astype(np.float32)      # classes on axis 2
    label = r.randint(0, 7, size=(2, 3)).astype(np.float32)
    layer = make_layer('SoftmaxWithLoss', softmax_param={'axis': -1})
    _, (top,) = forward(layer, x, label)
    moved = np.moveaxis(x, 2, 1)
    np.testing.assert_allclose(float(top.data), softmax_loss_ref(moved, label), rtol=1e-5)


def test_softmax_loss_all_ignored_is_zero():
    x = rs(5).randn(2, 3).astype(np.float32)
    layer = make_layer('SoftmaxWithLoss', loss_param={'ignore_label': -1})
    (b, lab), (top,) = forward(layer, x, [-1, -1])
    assert float(top.data) == 0.0
    layer.backward([top], [True, False], [b, lab])
    np.testing.assert_array_equal(b.diff, 0)


@pytest.mark.parametrize('mode', ['FULL', 'VALID', 'BATCH_SIZE', 'NONE'])
def test_softmax_loss_gradient(mode):
    x, label = spatial_case(6, ignore=3)
    layer = make_layer('SoftmaxWithLoss', loss_param={'ignore_label': 3, 'normalization': mode})
    check_gradient(layer, [blob(x), blob(label)], [Blob()], check_bottom=[0], threshold=1e-3)


def test_softmax_loss_gradient_ignored_positions_zero_and_scaled_by_top_diff():
    x, label = spatial_case(7, ignore=4)
    layer = make_layer('SoftmaxWithLoss', loss_param={'ignore_label': 4})
    (b, lab), (top,) = forward(layer, x, label)
    top.diff[...] = 2.5
    layer.backward([top], [True, False], [b, lab])
    ignored = np.broadcast_to(label == 4, x.shape)
    assert np.all(b.diff[ignored] == 0)
    p = np_softmax(x, 1)
    onehot = (np.arange(5).reshape(1, 5, 1, 1) == label).astype(np.float64)
    valid = (label != 4)
    expect = (p - onehot) * valid * 2.5 / valid.sum()
    np.testing.assert_allclose(b.diff, expect, rtol=1e-5, atol=1e-7)


def test_softmax_loss_prob_top():
    x = rs(8).randn(4, 6).astype(np.float32)
    label = np.array([0, 5, 2, 2], np.float32)
    layer = make_layer('SoftmaxWithLoss', loss_weight=[1.0, 0.0])
    _, (loss, prob) = forward(layer, x, label, ntop=2)
    np.testing.assert_allclose(prob.data, np_softmax(x, 1), rtol=1e-5)
    # two tops but only the default single loss_weight: Caffe's CHECK, here a LayerError
    with pytest.raises(LayerError, match='loss_weight'):
        forward(make_layer('SoftmaxWithLoss', name='l2'), x, label, ntop=2)


def test_softmax_loss_refuses_label_backward_and_bad_labels():
    x = rs(9).randn(2, 3).astype(np.float32)
    layer = make_layer('SoftmaxWithLoss', name='sl')
    (b, lab), (top,) = forward(layer, x, [0, 1])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(LayerError, match='sl.*cannot backpropagate to label'):
        layer.backward([top], [True, True], [b, lab])
    with pytest.raises(LayerError, match='label 3 out of range'):
        forward(make_layer('SoftmaxWithLoss'), x, [0, 3])
    with pytest.raises(LayerError, match='number of labels must match'):
        forward(make_layer('SoftmaxWithLoss'), x, np.zeros((2, 2), np.float32))


# ----------------------------------------------------------- SigmoidCrossEntropyLoss
def sigmoid_ce_ref(x, t, ignore=None, mode='BATCH_SIZE'):
    x = x.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    valid = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
    norm = {'FULL': x.size, 'VALID': valid.sum(), 'BATCH_SIZE': x.shape[0], 'NONE': 1}[mode]
    return (per * valid).sum() / max(1.0, norm)


def sce_case(seed, ignore=None):
    r = rs(seed)
    x = (r.randn(4, 3, 2) * 3).astype(np.float32)
    t = r.rand(4, 3, 2).astype(np.float32)
    if ignore is not None:
        t[0, 1, :] = ignore
        t[3, 0, 1] = ignore
    return x, t


def test_sigmoid_cross_entropy_default_batch_size():
    x, t = sce_case(10)
    _, (top,) = forward(make_layer('SigmoidCrossEntropyLoss'), x, t)
    np.testing.assert_allclose(float(top.data), sigmoid_ce_ref(x, t), rtol=1e-5)


@pytest.mark.parametrize('mode', ['FULL', 'VALID', 'BATCH_SIZE', 'NONE'])
def test_sigmoid_cross_entropy_modes_with_ignore(mode):
    x, t = sce_case(11, ignore=-1)
    layer = make_layer('SigmoidCrossEntropyLoss',
                       loss_param={'ignore_label': -1, 'normalization': mode})
    _, (top,) = forward(layer, x, t)
    np.testing.assert_allclose(float(top.data), sigmoid_ce_ref(x, t, -1, mode), rtol=1e-5)
    check_gradient(make_layer('SigmoidCrossEntropyLoss',
                              loss_param={'ignore_label': -1, 'normalization': mode}),
                   [blob(x), blob(t)], [Blob()], check_bottom=[0], threshold=1e-3)


def test_sigmoid_cross_entropy_extreme_inputs_finite():
    x = np.array([[-200.0, -50.0, 0.0, 50.0, 200.0]], np.float32)
    t = np.array([[1.0, 0.0, 0.5, 1.0, 0.0]], np.float32)
    _, (top,) = forward(make_layer('SigmoidCrossEntropyLoss'), x, t)
    np.testing.assert_allclose(float(top.data), 200 + 0 + np.log(2) + 0 + 200, rtol=1e-5)


# ---------------------------------------------------------------------- EuclideanLoss
def test_euclidean_loss_forward_and_gradient_both_bottoms():
    r = rs(12)
    a, b = r.randn(4, 3, 2).astype(np.float32), r.randn(4, 6).astype(np.float32)
    layer = make_layer('EuclideanLoss')
    _, (top,) = forward(layer, a, b)
    expect = ((a.reshape(4, 6).astype(np.float64) - b) ** 2).sum() / 4 / 2
    np.testing.assert_allclose(float(top.data), expect, rtol=1e-5)
    assert layer.allow_force_backward(1)
    check_gradient(make_layer('EuclideanLoss'), [blob(a), blob(b)], [Blob()], threshold=1e-3)


def test_euclidean_loss_dimension_mismatch():
    with pytest.raises(LayerError, match='same dimension'):
        forward(make_layer('EuclideanLoss'), np.zeros((2, 3)), np.zeros((2, 4)))


# ------------------------------------------------------------------------- HingeLoss
def hinge_ref(x, label, norm):
    t = -np.ones_like(x, dtype=np.float64)
    t[np.arange(len(label)), label.astype(int)] = 1
    m = np.maximum(0, 1 - t * x)
    return (m if norm == 'L1' else m * m).sum() / x.shape[0]


def hinge_case(seed):
    r = rs(seed)
    x = (r.randn(5, 4) * 1.5).astype(np.float32)
    # keep finite differences off the hinge at |x| == 1
    near = np.abs(np.abs(x) - 1) < 0.05
    x[near] += 0.1
    return x, r.randint(0, 4, size=5).astype(np.float32)


@pytest.mark.parametrize('norm', ['L1', 'L2'])
def test_hinge_loss(norm):
    x, label = hinge_case(13)
    layer = make_layer('HingeLoss', hinge_loss_param={'norm': norm})
    _, (top,) = forward(layer, x, label)
    np.testing.assert_allclose(float(top.data), hinge_ref(x, label, norm), rtol=1e-5)
    check_gradient(make_layer('HingeLoss', hinge_loss_param={'norm': norm}),
                   [blob(x), blob(label)], [Blob()], check_bottom=[0], threshold=1e-3)


# ---------------------------------------------------------------------- InfogainLoss
def infogain_ref(x, label, h, ignore=None, mode='VALID'):
    p = np_softmax(x, 1)
    lab = label.astype(int).ravel()
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    per = -(h[safe] * np.log(np.maximum(p, 1e-20))).sum(axis=1)
    norm = {'FULL': len(lab), 'VALID': valid.sum(), 'BATCH_SIZE': len(lab), 'NONE': 1}[mode]
    return (per * valid).sum() / max(1.0, norm)


def infogain_case(seed):
    r = rs(seed)
    x = r.randn(6, 4).astype(np.float32)
    label = r.randint(0, 4, size=6).astype(np.float32)
    h = r.rand(4, 4).astype(np.float32)
    return x, label, h


def test_infogain_identity_equals_softmax_loss():
    x, label, _ = infogain_case(14)
    _, (a,) = forward(make_layer('InfogainLoss'), x, label, np.eye(4))
    _, (b,) = forward(make_layer('SoftmaxWithLoss'), x, label)
    np.testing.assert_allclose(float(a.data), float(b.data), rtol=1e-6)


@pytest.mark.parametrize('mode', ['VALID', 'NONE'])
def test_infogain_third_bottom(mode):
    x, label, h = infogain_case(15)
    label[1] = 2
    params = {'loss_param': {'ignore_label': 2, 'normalization': mode}}
    _, (top,) = forward(make_layer('InfogainLoss', **params), x, label, h)
    np.testing.assert_allclose(float(top.data), infogain_ref(x, label, h, 2, mode), rtol=1e-5)
    check_gradient(make_layer('InfogainLoss', **params), [blob(x), blob(label), blob(h)],
                   [Blob()], check_bottom=[0], threshold=1e-3)


def test_infogain_source_file(tmp_path):
    x, label, h = infogain_case(16)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 1, 4, 4])
    proto.data.extend(h.ravel().tolist())
    path = tmp_path / 'H.binaryproto'
    path.write_bytes(proto.SerializeToString())
    layer = make_layer('InfogainLoss', infogain_loss_param={'source': str(path)})
    _, (top,) = forward(layer, x, label)
    np.testing.assert_allclose(float(top.data), infogain_ref(x, label, h), rtol=1e-5)


def test_infogain_errors():
    x, label, h = infogain_case(17)
    with pytest.raises(LayerError, match='source must be specified'):
        forward(make_layer('InfogainLoss'), x, label)
    with pytest.raises(LayerError, match='normalize is deprecated'):
        forward(make_layer('InfogainLoss', loss_param={'normalize': True}), x, label, h)
    with pytest.raises(LayerError, match='4 x 4'):
        forward(make_layer('InfogainLoss'), x, label, np.eye(3))


# ----------------------------------------------------------- MultinomialLogisticLoss
def test_multinomial_logistic_loss():
    r = rs(18)
    p = np_softmax(r.randn(5, 3), 1).astype(np.float32)
    label = np.array([0, 2, 1, 1, 0], np.float32)
    _, (top,) = forward(make_layer('MultinomialLogisticLoss'), p, label)
    expect = -np.log(p[np.arange(5), label.astype(int)].astype(np.float64)).mean()
    np.testing.assert_allclose(float(top.data), expect, rtol=1e-5)
    check_gradient(make_layer('MultinomialLogisticLoss'), [blob(p + 0.1), blob(label)],
                   [Blob()], check_bottom=[0], step=1e-3, threshold=1e-3)
    with pytest.raises(LayerError, match='one label per example'):
        forward(make_layer('MultinomialLogisticLoss'), p, np.zeros((5, 2), np.float32))


# ------------------------------------------------------------------- ContrastiveLoss
def contrastive_ref(a, b, y, margin, legacy):
    d2 = ((a.astype(np.float64) - b) ** 2).sum(axis=1)
    if legacy:
        dis = np.maximum(margin - d2, 0)
    else:
        dis = np.maximum(margin - np.sqrt(d2), 0) ** 2
    return np.where(y != 0, d2, dis).sum() / a.shape[0] / 2


@pytest.mark.parametrize('legacy', [False, True])
def test_contrastive_loss(legacy):
    r = rs(19)
    a = r.randn(8, 3).astype(np.float32) * 0.6
    b = r.randn(8, 3).astype(np.float32) * 0.6
    y = (r.rand(8) > 0.5).astype(np.float32)
    params = {'contrastive_loss_param': {'margin': 2.0, 'legacy_version': legacy}}
    _, (top,) = forward(make_layer('ContrastiveLoss', **params), a, b, y)
    np.testing.assert_allclose(float(top.data), contrastive_ref(a, b, y, 2.0, legacy),
                               rtol=1e-5)
    layer = make_layer('ContrastiveLoss', **params)
    assert not layer.allow_force_backward(2)
    # Caffe's non-legacy gradient divides by (dist + 1e-4): a 1e-4-relative approximation
    check_gradient(layer, [blob(a), blob(b), blob(y)], [Blob()], check_bottom=[0, 1],
                   step=1e-3, threshold=2e-2)


def test_contrastive_loss_shape_check():
    with pytest.raises(LayerError, match='ContrastiveLoss'):
        forward(make_layer('ContrastiveLoss'), np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4))


# --------------------------------------------------------------------------- Accuracy
def test_accuracy_top1_ties_count_against():
    x = np.array([[0.1, 0.9, 0.0],     # label 1: correct
                  [0.5, 0.5, 0.0],     # label 0: tie with class 1 -> wrong (Caffe: >=)
                  [0.2, 0.3, 0.7],     # label 0: wrong
                  [0.0, 0.0, 1.0]], np.float32)  # label 2: correct
    label = [1, 0, 0, 2]
    layer = make_layer('Accuracy')
    _, (top,) = forward(layer, x, label)
    assert top.shape == ()
    assert float(top.data) == pytest.approx(0.5)
    assert layer.loss_weights == [0.0]


def test_accuracy_top_k_ignore_and_per_class():
    x = np.array([[0.1, 0.9, 0.0, 0.3],
                  [0.5, 0.4, 0.0, 0.6],
                  [0.2, 0.3, 0.7, 0.1],
                  [0.0, 0.1, 0.3, 0.2],
                  [0.9, 0.0, 0.0, 0.0]], np.float32)
    label = [0, 0, 3, 2, 3]
    layer = make_layer('Accuracy', accuracy_param={'top_k': 2, 'ignore_label': 3})
    _, (acc, per_class) = forward(layer, x, label, ntop=2)
    # counted: rows 0 (rank 3 -> wrong), 1 (rank 2 -> right), 3 (rank 1 -> right)
    assert float(acc.data) == pytest.approx(2 / 3)
    assert per_class.shape == (4,)
    np.testing.assert_allclose(per_class.data, [0.5, 0.0, 1.0, 0.0])


def test_accuracy_spatial_axis_matches_loop():
    r = rs(20)
    x = r.randn(2, 3, 5).astype(np.float32)   # classes on axis 1, inner 5
    label = r.randint(0, 3, size=(2, 5)).astype(np.float32)
    _, (top,) = forward(make_layer('Accuracy'), x, label)
    pred = x.argmax(axis=1)
    assert float(top.data) == pytest.approx((pred == label).mean())
    # classes on the last axis
    xt = np.ascontiguousarray(np.moveaxis(x, 1, 2))
    _, (top2,) = forward(make_layer('Accuracy', accuracy_param={'axis': -1}), xt, label)
    assert float(top2.data) == pytest.approx(float(top.data))


def test_accuracy_nothing_counted_and_errors():
    _, (top,) = forward(make_layer('Accuracy', accuracy_param={'ignore_label': 1}),
                        np.eye(2), [1, 1])
    assert float(top.data) == 0.0
    with pytest.raises(LayerError, match='top_k'):
        forward(make_layer('Accuracy', accuracy_param={'top_k': 4}), np.eye(3), [0, 1, 2])
    layer = make_layer('Accuracy')
    (b, lab), (top,) = forward(layer, np.eye(3), [0, 1, 2])
    with pytest.raises(LayerError, match='cannot backpropagate'):
        layer.backward([top], [True, False], [b, lab])
