"""Loss layers and Accuracy (Caffe: include/caffe/layers/*loss_layer.hpp, accuracy_layer.hpp).

Shared plumbing (caffe.md 3.5):

* every ``LossLayer`` has AutoTopBlobs (the Net adds an anonymous top when none is named) and
  adds ``loss_weight: 1`` to its OWN LayerParameter when none is given (visible in saved
  models).  This happens in ``__init__``, i.e. before ``Layer.setup`` reaches
  ``set_loss_weights``, which then fills the top's diff with the weight;
* top[0] is a 0-axis (scalar) blob; backward scales by ``top[0].diff`` (the loss weight, or
  whatever upstream gradient sits there);
* backpropagation to the label bottom (index 1) is refused for ``force_backward`` and fatal in
  backward.

Label-taking losses read labels as ``static_cast<int>`` of the float label (truncation toward
zero, as ``astype(int32)`` does).  Everything is vectorized and written with ``xp`` so the same
code runs on numpy and cupy; the normalizer is a Python float (it only needs a device sync when
``VALID`` normalization meets an ``ignore_label``).
"""
import numpy as np

from ..backend import get_array_module
from ..blob import Blob
from ..io.errors import QcaffeError
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer
from .neuron import sigmoid

FLT_MIN = np.float32(np.finfo(np.float32).tiny)   # Caffe: FLT_MIN (SoftmaxWithLoss)
LOG_THRESHOLD = np.float32(1e-20)                  # Caffe: kLOG_THRESHOLD (loss_layer.hpp)

_NORM = caffe_pb2.LossParameter
_NORM_NAMES = ', '.join(_NORM.NormalizationMode.keys())


# ----------------------------------------------------------------------------- helpers
def softmax(x, axis, out):
    """Numerically stable softmax of ``x`` along ``axis`` into ``out`` (Caffe: SoftmaxLayer):
    subtract the max, exponentiate, divide by the sum."""
    xp = get_array_module(x)
    xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def normalization_mode(loss_param, default=_NORM.VALID):
    """The effective LossParameter normalization, honouring proto2 presence as Caffe does:
    ``normalization`` if set; else the deprecated ``normalize`` if set (true -> VALID,
    false -> BATCH_SIZE); else ``default`` (VALID for SoftmaxWithLoss, BATCH_SIZE for
    SigmoidCrossEntropyLoss)."""
    if loss_param.HasField('normalization'):
        return loss_param.normalization
    if loss_param.HasField('normalize'):
        return _NORM.VALID if loss_param.normalize else _NORM.BATCH_SIZE
    return default


def get_normalizer(mode, outer_num, inner_num, valid_count=-1):
    """Caffe: ``get_normalizer``: FULL = outer*inner, VALID = valid_count (outer*inner when
    -1), BATCH_SIZE = outer, NONE = 1; clamped to >= 1 (so a batch with every label ignored
    gives loss 0, not NaN)."""
    if mode == _NORM.FULL:
        n = outer_num * inner_num
    elif mode == _NORM.VALID:
        n = outer_num * inner_num if valid_count == -1 else valid_count
    elif mode == _NORM.BATCH_SIZE:
        n = outer_num
    elif mode == _NORM.NONE:
        n = 1
    else:
        raise QcaffeError('Unknown normalization mode %r; valid modes: %s' % (mode, _NORM_NAMES))
    return max(1.0, float(n))


def class_labels(label, num_classes, ignore_label, layer):
    """Integer labels from a float label array, with the ignore mask.

    Returns ``(labels, valid)``: ``labels`` int32 with ignored positions mapped to class 0 (so
    they can be used as gather indices), ``valid`` a float32 0/1 mask, or None when the layer
    has no ignore_label.  Labels outside [0, num_classes) raise a LayerError (Caffe only has
    DCHECKs there; an out-of-range gather would silently read another element here).
    """
    xp = get_array_module(label)
    lab = label.astype(np.int32)
    valid = None
    if ignore_label is not None:
        keep = lab != ignore_label
        lab = xp.where(keep, lab, 0)
        valid = keep.astype(np.float32)
    bad = (lab < 0) | (lab >= num_classes)
    if bool(bad.any()):
        first = float(label.ravel()[int(bad.ravel().argmax())])
        raise LayerError('Layer %r (type %s): label %g out of range; labels must be integers '
                         'in [0, %d)%s' % (layer.name, layer.type, first, num_classes,
                                           '' if ignore_label is None else
                                           ' or the ignore_label %d' % ignore_label))
    return lab, valid


def _ignore_label(param):
    return int(param.ignore_label) if param.HasField('ignore_label') else None


def _refuse_label_backward(layer, propagate_down, refused=None):
    """Caffe's ``LOG(FATAL) << type << " Layer cannot backpropagate to label inputs."``."""
    for i, what in (refused or {1: 'label'}).items():
        if i < len(propagate_down) and propagate_down[i]:
            raise LayerError('Layer %r: %s Layer cannot backpropagate to %s inputs (bottom %d).'
                             % (layer.name, layer.type, what, i))


# --------------------------------------------------------------------------- LossLayer
class LossLayer(Layer):
    """Caffe: ``LossLayer``: two bottoms (prediction, label/target), one scalar top."""
    exact_num_bottom = 2
    exact_num_top = 1
    auto_top_blobs = True

    def __init__(self, layer_param):
        super(LossLayer, self).__init__(layer_param)
        # Caffe: LossLayer::LayerSetUp: "LossLayers have a non-zero (1) loss by default."
        # Done here so it precedes Layer.setup -> set_loss_weights whatever a subclass does.
        if len(layer_param.loss_weight) == 0:
            layer_param.loss_weight.append(1.0)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom, top):
        """Caffe: ``LossLayer::Reshape``: same first dimension, top[0] is a 0-axis blob."""
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise LayerError('Layer %r (type %s): the data and label should have the same '
                             'first dimension (got %s and %s)'
                             % (self.name, self.type, bottom[0].shape_string(),
                                bottom[1].shape_string()))
        top[0].reshape(())


class _ClassLossLayer(LossLayer):
    """SoftmaxWithLoss and InfogainLoss: a softmax along ``axis``, labels per position,
    ignore_label and normalization, optional second top = the probabilities."""
    exact_num_top = None
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = _ignore_label(lp)
        self.normalization = normalization_mode(lp, _NORM.VALID)
        self.prob = Blob()
        self.valid_count = -1

    def _axis_param(self):
        raise NotImplementedError

    def reshape(self, bottom, top):
        super(_ClassLossLayer, self).reshape(bottom, top)
        self.axis = bottom[0].canonical_axis_index(self._axis_param())
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.channels = bottom[0].shape[self.axis]
        if self.outer * self.inner != bottom[1].count:
            raise LayerError(
                'Layer %r (type %s): number of labels must match number of predictions; e.g., '
                'if the axis is 1 and the prediction shape is (N, C, H, W), the label count '
                'must be N*H*W, with integer values in {0, 1, ..., C-1}. Got predictions %s and '
                'labels %s (axis %d)' % (self.name, self.type, bottom[0].shape_string(),
                                         bottom[1].shape_string(), self.axis))
        self.prob.reshape(bottom[0].shape)
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)

    def _forward_prob(self, bottom, top):
        """Softmax into self.prob; returns (prob (outer, C, inner), labels, valid)."""
        shape3 = (self.outer, self.channels, self.inner)
        prob = softmax(bottom[0].dev_data.reshape(shape3), 1,
                       self.prob.mutable_dev_data.reshape(shape3))
        lab, valid = class_labels(bottom[1].dev_data.reshape(self.outer, self.inner),
                                  self.channels, self.ignore_label, self)
        self.valid_count = -1 if valid is None else float(valid.sum())
        return prob, lab, valid

    def _positions(self, xp):
        """(rows (outer, 1), cols (1, inner)) index arrays that, with the labels, pick each
        position's labelled class; built once per shape."""
        cached = getattr(self, '_pos_index', None)
        key = (self.outer, self.inner, xp.__name__)
        if cached is None or cached[0] != key:
            cached = self._pos_index = (key, xp.arange(self.outer)[:, None],
                                        xp.arange(self.inner)[None, :])
        return cached[1], cached[2]

    def _set_loss(self, top, loss):
        top[0].mutable_dev_data[...] = loss / self.normalizer()
        if len(top) == 2:
            top[1].share_data(self.prob)  # Caffe: top[1]->ShareData(prob_)

    def normalizer(self):
        return get_normalizer(self.normalization, self.outer, self.inner, self.valid_count)


@register_layer('SoftmaxWithLoss')
class SoftmaxWithLossLayer(_ClassLossLayer):
    """Caffe: ``SoftmaxWithLossLayer``.

    ``loss = -sum_{valid} log(max(p[label], FLT_MIN)) / normalizer`` with ``p`` the softmax of
    bottom[0] along ``softmax_param.axis``; gradient ``(p - onehot) * top_diff / normalizer``,
    zero at ignored positions.  Optional top[1] = the probabilities (needs explicit loss_weight
    for both tops, as in Caffe).
    """

    def _axis_param(self):
        return self.layer_param.softmax_param.axis

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        prob, lab, valid = self._forward_prob(bottom, top)
        rows, cols = self._positions(xp)
        p = prob[rows, lab, cols]                        # (outer, inner): p[label]
        logp = xp.log(xp.maximum(p, FLT_MIN))
        if valid is not None:
            logp *= valid
        self._set_loss(top, -logp.sum())

    def backward_impl(self, top, propagate_down, bottom):
        _refuse_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(bottom[0].dev_data)
        shape3 = (self.outer, self.channels, self.inner)
        diff = bottom[0].mutable_dev_diff.reshape(shape3)
        diff[...] = self.prob.dev_data.reshape(shape3)
        lab, valid = class_labels(bottom[1].dev_data.reshape(self.outer, self.inner),
                                  self.channels, self.ignore_label, self)
        rows, cols = self._positions(xp)
        diff[rows, lab, cols] -= 1  # (outer, inner) distinct positions: no scatter conflicts
        if valid is not None:
            diff *= valid[:, None, :]
        diff *= top[0].dev_diff / self.normalizer()


@register_layer('InfogainLoss')
class InfogainLossLayer(_ClassLossLayer):
    """Caffe: ``InfogainLossLayer`` (master: softmax computed internally along
    ``infogain_loss_param.axis``).

    ``loss = -sum_{valid i} sum_l H[label_i, l] * log(max(p_il, 1e-20)) / normalizer``;
    gradient ``p_il * rowsum(H)[label_i] - H[label_i, l]`` scaled by top_diff / normalizer.
    H (C x C) comes from ``infogain_loss_param.source`` (a binaryproto) or from bottom[2].
    The deprecated ``normalize`` field is refused, as Caffe does.
    """
    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3

    def allow_force_backward(self, bottom_index):
        # Caffe only refuses the label; backward to H is fatal there, so refusing it here keeps
        # a force_backward net runnable without changing any gradient.
        return bottom_index not in (1, 2)

    def _axis_param(self):
        return self.layer_param.infogain_loss_param.axis

    def layer_setup(self, bottom, top):
        super(InfogainLossLayer, self).layer_setup(bottom, top)
        lp = self.layer_param.loss_param
        if lp.HasField('normalize'):
            raise LayerError('Layer %r (InfogainLoss): loss_param.normalize is deprecated; use '
                             '"normalization" (FULL, VALID, BATCH_SIZE or NONE)' % self.name)
        self.normalization = lp.normalization
        self.infogain = None
        if len(bottom) < 3:
            ip = self.layer_param.infogain_loss_param
            if not ip.HasField('source'):
                raise LayerError('Layer %r (InfogainLoss): Infogain matrix source must be '
                                 'specified (infogain_loss_param.source) when there is no third '
                                 'bottom' % self.name)
            self.infogain = _read_blob_proto(ip.source, self)

    def reshape(self, bottom, top):
        super(InfogainLossLayer, self).reshape(bottom, top)
        h = self.infogain if len(bottom) < 3 else bottom[2]
        if h.count != self.channels * self.channels:
            raise LayerError('Layer %r (InfogainLoss): the infogain matrix H must have %d x %d = '
                             '%d entries (one row and column per class), got %s'
                             % (self.name, self.channels, self.channels,
                                self.channels * self.channels, h.shape_string()))

    def _h(self, bottom):
        h = self.infogain if len(bottom) < 3 else bottom[2]
        return h.dev_data.reshape(self.channels, self.channels)

    def forward_impl(self, bottom, top):
        prob, lab, valid = self._forward_prob(bottom, top)
        xp = get_array_module(prob)
        rows = self._h(bottom)[lab]                      # (outer, inner, C): H[label]
        logp = xp.log(xp.maximum(prob, LOG_THRESHOLD))   # (outer, C, inner)
        per_pos = (rows * logp.transpose(0, 2, 1)).sum(axis=2)
        if valid is not None:
            per_pos *= valid
        self._set_loss(top, -per_pos.sum())

    def backward_impl(self, top, propagate_down, bottom):
        _refuse_label_backward(self, propagate_down, {1: 'label', 2: 'infogain'})
        if not propagate_down[0]:
            return
        shape3 = (self.outer, self.channels, self.inner)
        h = self._h(bottom)
        lab, valid = class_labels(bottom[1].dev_data.reshape(self.outer, self.inner),
                                  self.channels, self.ignore_label, self)
        rowsum = h.sum(axis=1)[lab]                      # (outer, inner)
        diff = bottom[0].mutable_dev_diff.reshape(shape3)
        diff[...] = self.prob.dev_data.reshape(shape3) * rowsum[:, None, :]
        diff -= h[lab].transpose(0, 2, 1)
        if valid is not None:
            diff *= valid[:, None, :]
        diff *= top[0].dev_diff / self.normalizer()


def _read_blob_proto(path, layer):
    """A Blob from a binaryproto file (Caffe: ReadProtoFromBinaryFile + Blob::FromProto);
    qcaffe.io reports a missing, truncated or non-BlobProto file by name."""
    from ..io.binary import read_binary_proto
    return Blob().from_proto(read_binary_proto(path, caffe_pb2.BlobProto()))


@register_layer('MultinomialLogisticLoss')
class MultinomialLogisticLossLayer(LossLayer):
    """Caffe: ``MultinomialLogisticLossLayer``: bottom[0] already holds probabilities (N, C);
    ``loss = -sum_n log(max(p[n, label_n], 1e-20)) / N``."""

    def reshape(self, bottom, top):
        super(MultinomialLogisticLossLayer, self).reshape(bottom, top)
        _check_label_is_column(self, bottom[1])
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // self.num if self.num else 0

    def _picked(self, bottom):
        xp = get_array_module(bottom[0].dev_data)
        x = bottom[0].dev_data.reshape(self.num, self.dim)
        lab, _ = class_labels(bottom[1].dev_data.reshape(self.num), self.dim, None, self)
        rows = xp.arange(self.num)
        return xp, rows, lab, xp.maximum(x[rows, lab], LOG_THRESHOLD)

    def forward_impl(self, bottom, top):
        xp, _, _, p = self._picked(bottom)
        top[0].mutable_dev_data[...] = -xp.log(p).sum() / self.num

    def backward_impl(self, top, propagate_down, bottom):
        _refuse_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        xp, rows, lab, p = self._picked(bottom)
        diff = bottom[0].mutable_dev_diff.reshape(self.num, self.dim)
        diff.fill(0)
        diff[rows, lab] = (-top[0].dev_diff / self.num) / p


def _check_label_is_column(layer, label):
    # Caffe: CHECK_EQ(bottom[1]->channels(), 1) and height/width 1 (legacy accessors).
    if label.num_axes > 4 or any(label.legacy_shape(i) != 1 for i in (1, 2, 3)):
        raise LayerError('Layer %r (type %s): the label blob must hold one label per example '
                         '(shape (N) or (N, 1, 1, 1)), got %s'
                         % (layer.name, layer.type, label.shape_string()))


@register_layer('EuclideanLoss')
class EuclideanLossLayer(LossLayer):
    """Caffe: ``EuclideanLossLayer``: ``loss = sum((a - b)^2) / (2N)``; both bottoms get a
    gradient (``+-(a - b) * top_diff / N``), so force_backward may reach either."""

    def allow_force_backward(self, bottom_index):
        return True

    def layer_setup(self, bottom, top):
        self._diff = Blob()

    def reshape(self, bottom, top):
        super(EuclideanLossLayer, self).reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise LayerError('Layer %r (EuclideanLoss): inputs must have the same dimension, '
                             'got %s and %s' % (self.name, bottom[0].shape_string(),
                                                bottom[1].shape_string()))
        self._diff.reshape(bottom[0].shape)

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        d = self._diff.mutable_dev_data
        xp.subtract(bottom[0].dev_data, bottom[1].dev_data.reshape(d.shape), out=d)
        flat = d.ravel()
        top[0].mutable_dev_data[...] = flat.dot(flat) / bottom[0].shape[0] / 2

    def backward_impl(self, top, propagate_down, bottom):
        xp = get_array_module(self._diff.dev_data)
        for i in (0, 1):
            if propagate_down[i]:
                alpha = top[0].dev_diff * ((1.0 if i == 0 else -1.0) / bottom[i].shape[0])
                xp.multiply(self._diff.dev_data.reshape(bottom[i].shape), alpha,
                            out=bottom[i].mutable_dev_diff)


@register_layer('HingeLoss')
class HingeLossLayer(LossLayer):
    """Caffe: ``HingeLossLayer``: with ``t = +1`` at the label and -1 elsewhere,
    ``loss = sum max(0, 1 - t*x) / N`` (L1) or ``sum max(0, 1 - t*x)^2 / N`` (L2)."""

    def layer_setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise LayerError('Layer %r (HingeLoss): unknown hinge_loss_param.norm %r; valid: L1, '
                             'L2' % (self.name, self.norm))
        self._margin = Blob()

    def reshape(self, bottom, top):
        super(HingeLossLayer, self).reshape(bottom, top)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // self.num if self.num else 0
        self._margin.reshape(self.num, self.dim)

    def _signed(self, x, bottom):
        """``x`` (num, dim) with the label column negated; returns the row/label indices."""
        xp = get_array_module(x)
        lab, _ = class_labels(bottom[1].dev_data.reshape(self.num), self.dim, None, self)
        rows = xp.arange(self.num)
        x[rows, lab] *= -1
        return x

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        m = self._margin.mutable_dev_data
        m[...] = bottom[0].dev_data.reshape(m.shape)
        self._signed(m, bottom)
        m += 1
        xp.maximum(m, 0, out=m)   # Caffe keeps this in bottom diff; a private buffer is safer
        flat = m.ravel()
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            loss = flat.sum()
        else:
            loss = flat.dot(flat)
        top[0].mutable_dev_data[...] = loss / self.num

    def backward_impl(self, top, propagate_down, bottom):
        _refuse_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(self._margin.dev_data)
        diff = bottom[0].mutable_dev_diff.reshape(self.num, self.dim)
        diff[...] = self._margin.dev_data
        self._signed(diff, bottom)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            xp.sign(diff, out=diff)
            diff *= top[0].dev_diff / self.num
        else:
            diff *= top[0].dev_diff * (2.0 / self.num)


@register_layer('SigmoidCrossEntropyLoss')
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Caffe: ``SigmoidCrossEntropyLossLayer``: cross-entropy of sigmoid(x) against targets
    in [0, 1], computed stably as ``-(x*(t - [x>=0]) - log(1 + exp(x - 2x[x>=0])))``;
    gradient ``(sigmoid(x) - t) * top_diff / normalizer``.  ignore_label compares
    ``int(target)``; normalization defaults to BATCH_SIZE (not VALID) when unset."""

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = _ignore_label(lp)
        self.normalization = normalization_mode(lp, _NORM.BATCH_SIZE)
        self.sigmoid = Blob()
        self.valid_count = -1

    def reshape(self, bottom, top):
        super(SigmoidCrossEntropyLossLayer, self).reshape(bottom, top)
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        if bottom[0].count != bottom[1].count:
            raise LayerError('Layer %r: SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the '
                             'same count (got %s and %s)' % (self.name, bottom[0].shape_string(),
                                                             bottom[1].shape_string()))
        self.sigmoid.reshape(bottom[0].shape)

    def _valid(self, target):
        if self.ignore_label is None:
            return None
        return (target.astype(np.int32) != self.ignore_label).astype(np.float32)

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        x = bottom[0].dev_data
        t = bottom[1].dev_data.reshape(x.shape)
        # Caffe's internal SigmoidLayer: the same formula as the Sigmoid layer
        self.sigmoid.mutable_dev_data[...] = sigmoid(xp, x)
        pos = (x >= 0).astype(np.float32)
        loss = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        valid = self._valid(t)
        if valid is not None:
            loss *= valid
            self.valid_count = float(valid.sum())
        top[0].mutable_dev_data[...] = -loss.sum() / self.normalizer()

    def normalizer(self):
        return get_normalizer(self.normalization, self.outer, self.inner, self.valid_count)

    def backward_impl(self, top, propagate_down, bottom):
        _refuse_label_backward(self, propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(self.sigmoid.dev_data)
        t = bottom[1].dev_data.reshape(bottom[0].shape)
        diff = bottom[0].mutable_dev_diff
        xp.subtract(self.sigmoid.dev_data, t, out=diff)
        valid = self._valid(t)
        if valid is not None:
            diff *= valid
        diff *= top[0].dev_diff / self.normalizer()


@register_layer('ContrastiveLoss')
class ContrastiveLossLayer(LossLayer):
    """Caffe: ``ContrastiveLossLayer`` (Hadsell et al.): bottoms a, b (N, C[,1,1]) and a
    similarity flag y (N); ``d = ||a - b||``;
    ``loss = sum(y d^2 + (1-y) max(margin - d, 0)^2) / 2N`` (``legacy_version``:
    ``max(margin - d^2, 0)`` instead).  No gradient to y (force_backward refuses index 2)."""
    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)
        self._diff = Blob()
        self._dist_sq = Blob()

    def reshape(self, bottom, top):
        super(ContrastiveLossLayer, self).reshape(bottom, top)
        a, b, y = bottom
        ok = (a.num_axes <= 4 and b.num_axes <= 4 and y.num_axes <= 4 and
              a.channels == b.channels and a.height == a.width == b.height == b.width == 1 and
              y.channels == y.height == y.width == 1 and a.num == b.num == y.num)
        if not ok:
            raise LayerError('Layer %r (ContrastiveLoss): bottoms must be (N, C, 1, 1), (N, C, 1, '
                             '1) and (N, 1, 1, 1) (or (N, C), (N, C), (N)); got %s, %s, %s'
                             % (self.name, a.shape_string(), b.shape_string(),
                                y.shape_string()))
        self.num, self.dim = a.num, a.channels
        self._diff.reshape(self.num, self.dim)
        self._dist_sq.reshape(self.num)

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        d = self._diff.mutable_dev_data
        xp.subtract(bottom[0].dev_data.reshape(d.shape), bottom[1].dev_data.reshape(d.shape),
                    out=d)
        dist_sq = self._dist_sq.mutable_dev_data
        dist_sq[...] = (d * d).sum(axis=1)
        similar = bottom[2].dev_data.reshape(self.num).astype(np.int32) != 0
        if self.legacy:
            dissim = xp.maximum(self.margin - dist_sq, 0)
        else:
            dissim = xp.maximum(self.margin - xp.sqrt(dist_sq), 0) ** 2
        loss = xp.where(similar, dist_sq, dissim).sum()
        top[0].mutable_dev_data[...] = loss / self.num / 2

    def backward_impl(self, top, propagate_down, bottom):
        # Caffe's ContrastiveLoss silently ignores propagate_down[2] (the similarity flag).
        xp = get_array_module(self._diff.dev_data)
        dist_sq = self._dist_sq.dev_data
        similar = bottom[2].dev_data.reshape(self.num).astype(np.int32) != 0
        if self.legacy:
            mdist = self.margin - dist_sq
            beta_factor = -1.0
        else:
            dist = xp.sqrt(dist_sq)
            mdist = self.margin - dist
            beta_factor = -mdist / (dist + np.float32(1e-4))
        for i in (0, 1):
            if not propagate_down[i]:
                continue
            alpha = top[0].dev_diff * ((1.0 if i == 0 else -1.0) / self.num)
            coef = xp.where(similar, alpha, xp.where(mdist > 0, alpha * beta_factor, 0))
            out = bottom[i].mutable_dev_diff.reshape(self.num, self.dim)
            xp.multiply(self._diff.dev_data, coef.astype(np.float32)[:, None], out=out)


# ----------------------------------------------------------------------------- Accuracy
@register_layer('Accuracy')
class AccuracyLayer(Layer):
    """Caffe: ``AccuracyLayer`` (not a LossLayer: default loss_weight 0, no backward).

    A position with true-class score s is correct when fewer than ``top_k`` classes (the true
    class excluded) score ``>= s``, so ties count against the prediction.  top[0] = correct /
    counted (0 if nothing counted), a 0-axis blob; optional top[1] = per-class accuracy.
    """
    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = _ignore_label(p)

    def reshape(self, bottom, top):
        p = self.layer_param.accuracy_param
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise LayerError('Layer %r (Accuracy): top_k must be less than or equal to the number '
                             'of classes (top_k %d, predictions %s, labels %s)'
                             % (self.name, self.top_k, bottom[0].shape_string(),
                                bottom[1].shape_string()))
        self.axis = bottom[0].canonical_axis_index(p.axis)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.channels = bottom[0].shape[self.axis]
        if self.outer * self.inner != bottom[1].count:
            raise LayerError('Layer %r (Accuracy): number of labels must match number of '
                             'predictions; e.g., if label axis == 1 and prediction shape is '
                             '(N, C, H, W), label count (number of labels) must be N*H*W, with '
                             'integer values in {0, 1, ..., C-1}. Got %s and %s'
                             % (self.name, bottom[0].shape_string(), bottom[1].shape_string()))
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(self.channels)

    def forward_impl(self, bottom, top):
        xp = get_array_module(bottom[0].dev_data)
        x = bottom[0].dev_data.reshape(self.outer, self.channels, self.inner)
        lab, valid = class_labels(bottom[1].dev_data.reshape(self.outer, self.inner),
                                  self.channels, self.ignore_label, self)
        true_score = xp.take_along_axis(x, lab[:, None, :], axis=1)
        # classes scoring >= the true class, minus the true class itself
        better = (x >= true_score).sum(axis=1) - 1
        correct = (better < self.top_k).astype(np.float32)
        if valid is None:
            valid = xp.ones(lab.shape, dtype=np.float32)
        correct *= valid
        count = valid.sum()
        top[0].mutable_dev_data[...] = xp.where(count > 0, correct.sum() / xp.maximum(count, 1),
                                                0)
        if len(top) > 1:
            flat = lab.ravel()
            nums = xp.bincount(flat, weights=valid.ravel(), minlength=self.channels)
            hits = xp.bincount(flat, weights=correct.ravel(), minlength=self.channels)
            top[1].mutable_dev_data[...] = xp.where(nums > 0, hits / xp.maximum(nums, 1), 0)
