"""Loss layers (qcaffe/layers/loss.py): values against numpy formulas of Caffe's definitions
and numeric gradient checks (labels are never checked: Caffe refuses to backprop to them)."""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.io import array_to_blobproto, write_binary_proto
from qcaffe.layers.base import LayerError
from qcaffe.testing import check_gradient, make_layer

from layer_helpers import _seed, blob, rand, run  # noqa: F401 (_seed: autouse fixture)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_softmax_with_loss_value_prob_top_and_gradient():
    x = rand(4, 5, 2, seed=1) * 3
    lab = np.array([[0, 4], [1, 1], [3, 2], [2, 0]], np.float32)
    layer = make_layer('SoftmaxWithLoss', loss_weight=[1, 0])
    loss, prob = run(layer, [blob(x), blob(lab)], ntop=2)
    p = _softmax(x.astype(np.float64), 1)
    picked = np.take_along_axis(p, lab.astype(int)[:, None, :], 1)
    np.testing.assert_allclose(loss.data, -np.log(picked).sum() / 8, rtol=1e-5)
    np.testing.assert_allclose(prob.data, p, rtol=1e-5)
    check_gradient(make_layer('SoftmaxWithLoss'), [blob(x), blob(lab)], [Blob()],
                   check_bottom=[0], step=1e-2)


@pytest.mark.parametrize('norm,divisor', [('VALID', 2), ('FULL', 4), ('BATCH_SIZE', 4),
                                          ('NONE', 1)])
def test_softmax_with_loss_ignore_label_and_normalization(norm, divisor):
    x = rand(4, 3, seed=2)
    lab = np.array([0, 2, 1, 1], np.float32)
    layer = make_layer('SoftmaxWithLoss', loss_param=dict(ignore_label=1, normalization=norm))
    loss, = run(layer, [blob(x), blob(lab)])
    p = _softmax(x.astype(np.float64), 1)
    expect = -(np.log(p[0, 0]) + np.log(p[1, 2])) / divisor
    np.testing.assert_allclose(loss.data, expect, rtol=1e-5)
    check_gradient(make_layer('SoftmaxWithLoss', loss_param=dict(
        ignore_label=1, normalization=norm)), [blob(x), blob(lab)], [Blob()], check_bottom=[0])


def test_softmax_with_loss_label_out_of_range():
    with pytest.raises(LayerError):
        run(make_layer('SoftmaxWithLoss'), [blob(rand(2, 3)), blob([0, 3])])


def test_euclidean_loss_and_both_gradients():
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    loss, = run(make_layer('EuclideanLoss'), [blob(a), blob(b)])
    np.testing.assert_allclose(loss.data, ((a - b) ** 2).sum() / 6, rtol=1e-5)
    check_gradient(make_layer('EuclideanLoss'), [blob(a), blob(b)], [Blob()])


def test_sigmoid_cross_entropy_loss():
    x, t = rand(3, 4, seed=1) * 4, (rand(3, 4, seed=2) > 0).astype(np.float32)
    loss, = run(make_layer('SigmoidCrossEntropyLoss'), [blob(x), blob(t)])
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    expect = -(t * np.log(s) + (1 - t) * np.log(1 - s)).sum() / 3   # BATCH_SIZE normalization
    np.testing.assert_allclose(loss.data, expect, rtol=1e-5)
    check_gradient(make_layer('SigmoidCrossEntropyLoss'), [blob(x), blob(t)], [Blob()],
                   check_bottom=[0])


@pytest.mark.parametrize('norm', ['L1', 'L2'])
def test_hinge_loss(norm):
    x = rand(4, 3, seed=3) * 2
    lab = np.array([0, 2, 1, 1], np.float32)
    loss, = run(make_layer('HingeLoss', hinge_loss_param=dict(norm=norm)), [blob(x), blob(lab)])
    sign = -np.ones_like(x)
    sign[np.arange(4), lab.astype(int)] = 1
    m = np.maximum(0, 1 - sign * x)
    expect = (m.sum() if norm == 'L1' else (m ** 2).sum()) / 4
    np.testing.assert_allclose(loss.data, expect, rtol=1e-5)
    check_gradient(make_layer('HingeLoss', hinge_loss_param=dict(norm=norm)),
                   [blob(x), blob(lab)], [Blob()], check_bottom=[0], step=1e-3)


def test_multinomial_logistic_loss():
    p = _softmax(rand(3, 4, seed=4), 1).astype(np.float32)
    lab = np.array([1, 0, 3], np.float32)
    loss, = run(make_layer('MultinomialLogisticLoss'), [blob(p), blob(lab)])
    np.testing.assert_allclose(loss.data, -np.log(p[np.arange(3), [1, 0, 3]]).sum() / 3,
                               rtol=1e-5)
    check_gradient(make_layer('MultinomialLogisticLoss'), [blob(p), blob(lab)], [Blob()],
                   check_bottom=[0], step=1e-3, threshold=1e-2)


def test_infogain_loss_from_file_and_bottom(tmp_path):
    x = rand(4, 3, seed=5) * 2
    lab = np.array([0, 2, 1, 1], np.float32)
    h = np.abs(rand(3, 3, seed=6)) + np.eye(3, dtype=np.float32)
    path = str(tmp_path / 'h.binaryproto')
    write_binary_proto(path, array_to_blobproto(h.reshape(1, 1, 3, 3)))
    loss, = run(make_layer('InfogainLoss', infogain_loss_param=dict(source=path)),
                [blob(x), blob(lab)])
    p = _softmax(x.astype(np.float64), 1)
    expect = -(h[lab.astype(int)] * np.log(p)).sum() / 4
    np.testing.assert_allclose(loss.data, expect, rtol=1e-5)
    loss3, = run(make_layer('InfogainLoss'), [blob(x), blob(lab), blob(h)])
    np.testing.assert_allclose(loss3.data, expect, rtol=1e-5)
    check_gradient(make_layer('InfogainLoss', infogain_loss_param=dict(source=path)),
                   [blob(x), blob(lab)], [Blob()], check_bottom=[0])


def test_contrastive_loss():
    a, b = rand(4, 3, seed=7), rand(4, 3, seed=8)
    sim = np.array([1, 0, 1, 0], np.float32)
    loss, = run(make_layer('ContrastiveLoss', contrastive_loss_param=dict(margin=1.5)),
                [blob(a), blob(b), blob(sim)])
    d2 = ((a - b) ** 2).sum(1)
    expect = np.where(sim == 1, d2, np.maximum(1.5 - np.sqrt(d2), 0) ** 2).sum() / 8
    np.testing.assert_allclose(loss.data, expect, rtol=1e-5)
    check_gradient(make_layer('ContrastiveLoss', contrastive_loss_param=dict(margin=1.5)),
                   [blob(a), blob(b), blob(sim)], [Blob()], check_bottom=[0, 1], step=1e-3)


def test_accuracy_top_k_ignore_and_per_class():
    x = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]],
                 np.float32)
    lab = np.array([2, 0, 1, 1], np.float32)
    acc, = run(make_layer('Accuracy'), [blob(x), blob(lab)])
    np.testing.assert_allclose(acc.data, 0.25)
    acc2, per_class = run(make_layer('Accuracy', accuracy_param=dict(top_k=2)),
                          [blob(x), blob(lab)], ntop=2)
    np.testing.assert_allclose(acc2.data, 0.75)
    np.testing.assert_allclose(per_class.data, [1, 0.5, 1])
    acc3, = run(make_layer('Accuracy', accuracy_param=dict(ignore_label=1)), [blob(x), blob(lab)])
    np.testing.assert_allclose(acc3.data, 0.5)


def test_loss_layers_refuse_label_backward():
    layer = make_layer('SoftmaxWithLoss')
    bots = [blob(rand(2, 3)), blob([0, 1])]
    tops = run(layer, bots)
    with pytest.raises(LayerError, match='label'):
        layer.backward(tops, [True, True], bots)
