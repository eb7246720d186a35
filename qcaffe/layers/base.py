"""The layer contract and the registry of layer types.

Caffe equivalent: ``caffe::Layer`` (include/caffe/layer.hpp) and ``LayerRegistry``.  A layer
type is one class registered under its type string with ``@register_layer("Type")``.  The Net
talks to layers only through ``setup``, ``forward``, ``backward`` and the learnable ``blobs``;
subclasses implement Caffe's hooks ``layer_setup``, ``reshape``, ``forward_impl`` and
``backward_impl``.

Seams for compression (architecture.md), all called by ``Layer`` itself:
* ``weight(i)`` is the one way a layer reads learnable blob ``i`` for computation.  It returns
  ``own_weight(i)`` (the blob's data; DNS/INQ subclasses apply their masks there), fake-quantized
  by the layer's :class:`~qcaffe.compress.hooks.LayerCompression` (``self.compression``) when
  the prototxt gives the blob a ``weights_compress`` method;
* ``forward`` asks ``self.compression`` to prepare the quantized weights before
  ``forward_impl`` and to compress the tops after it (``activations_compress``);
* ``extra_state()`` / ``load_extra_state()`` carry layer state that is not a blob through
  snapshots;
* ``param_update_mask(i)`` lets a layer freeze entries of blob ``i`` for the solver;
* ``current_iter`` is the solver's iteration, set before every training step (the DNS/INQ
  fork's ``Layer::iter_``, ``Net::set_current_iter_num``);
* ``required_blob_count()`` lets a weights file give only a layer's leading blobs (a plain
  model's W, b loaded into a DNS/INQ layer whose masks keep their filler values).
"""
import difflib

import numpy as np

from ..blob import Blob, BlobVec
from ..compress.hooks import LayerCompression
from ..io.errors import LayerError
from ..ops.parallel import blas_single_threaded

_REGISTRY = {}


def register_layer(type_name, *aliases):
    """Class decorator: register a Layer subclass under Caffe type string(s)."""
    def deco(cls):
        for name in (type_name,) + aliases:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError('layer type %r registered twice (%s and %s)'
                                   % (name, _REGISTRY[name].__name__, cls.__name__))
            _REGISTRY[name] = cls
        if 'type' not in vars(cls):      # not inherited: APoTConvolution is not 'Convolution'
            cls.type = type_name
        return cls
    return deco


def layer_type_list():
    """Caffe: ``LayerRegistry::LayerTypeList`` (pycaffe ``caffe.layer_type_list()``)."""
    _load_all()
    return sorted(_REGISTRY)


def layer_class(type_name, layer_name=''):
    _load_all()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        close = difflib.get_close_matches(type_name, _REGISTRY, n=4, cutoff=0.5)
        hint = (' Did you mean %s?' % ' or '.join(repr(c) for c in close)) if close else ''
        raise LayerError('Unknown layer type %r (layer %r).%s Known types: %s'
                         % (type_name, layer_name, hint, ', '.join(sorted(_REGISTRY))))


def create_layer(layer_param, phase=None):
    """Caffe: ``LayerRegistry::CreateLayer`` (the layer's ``weights_compress`` /
    ``activations_compress`` are read by its constructor)."""
    cls = layer_class(layer_param.type, layer_param.name)
    return cls(layer_param)


def _load_all():
    # Importing the package registers every built-in layer module.
    from .. import layers  # noqa: F401


class Layer(object):
    """Base class of every layer (Caffe: ``Layer<float>``).

    Blob-count checks (Caffe's ExactNumBottomBlobs & co) are class attributes; ``None`` means
    no constraint.
    """
    type = 'Layer'
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    auto_top_blobs = False
    # Most layers only need reshape when their input shapes change; a layer whose output shape
    # depends on anything else (Python layers, data layers) sets this to True.
    reshape_every_forward = False

    def __init__(self, layer_param):
        self.layer_param = layer_param
        self.phase = layer_param.phase
        self.blobs = BlobVec()  # pycaffe: list-like with add_blob(*dims)
        self.param_propagate_down = []
        self.loss_weights = []
        self._last_bottom_shapes = None
        self.current_iter = 0   # the solver's iteration (Net.set_current_iter)
        # μL2Q: this layer's weights_compress / activations_compress (often none)
        self.compression = LayerCompression(self)

    @property
    def name(self):
        return self.layer_param.name

    # ----------------------------------------------------------- Caffe hooks
    def layer_setup(self, bottom, top):
        """Caffe: ``LayerSetUp``: read parameters, create learnable blobs."""

    def reshape(self, bottom, top):
        """Caffe: ``Reshape``: size the tops (and work buffers) from the bottoms."""
        raise NotImplementedError('%s must implement reshape' % type(self).__name__)

    def forward_impl(self, bottom, top):
        """Caffe: ``Forward_cpu``/``Forward_gpu`` (one implementation for both via ``xp``)."""
        raise NotImplementedError('%s must implement forward_impl' % type(self).__name__)

    def backward_impl(self, top, propagate_down, bottom):
        """Caffe: ``Backward_cpu``/``Backward_gpu``.  Default: the layer has no backward."""
        if any(propagate_down):
            raise LayerError('Layer %r of type %s cannot backpropagate to its inputs'
                             % (self.name, self.type))

    def allow_force_backward(self, bottom_index):
        """Caffe: ``AllowForceBackward``."""
        return True

    # ------------------------------------------------------------ Net calls
    def setup(self, bottom, top):
        """Caffe: ``Layer::SetUp``: check counts, layer_setup, reshape, set loss weights."""
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        self._last_bottom_shapes = tuple(b.shape for b in bottom)
        self.set_loss_weights(top)

    def forward(self, bottom, top):
        """Caffe: ``Layer::Forward``: reshape, compute, return this layer's weighted loss."""
        shapes = tuple(b.shape for b in bottom)
        if self.reshape_every_forward or shapes != self._last_bottom_shapes:
            self.reshape(bottom, top)
            self._last_bottom_shapes = shapes
        with blas_single_threaded():
            if self.compression.weight_methods:
                self.compression.prepare_weights()
            self.forward_impl(bottom, top)
            if self.compression.act_methods:
                self.compression.compress_activations(top)
        loss = 0.0
        for t, w in zip(top, self.loss_weights):
            if w != 0:
                loss += w * float(t.dev_data.sum(dtype=np.float64))
        return loss

    def backward(self, top, propagate_down, bottom):
        """Caffe: ``Layer::Backward``."""
        with blas_single_threaded():
            self.backward_impl(top, propagate_down, bottom)

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)
        where = 'Layer %r (type %s)' % (self.name, self.type)
        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            raise LayerError('%s takes %d bottom blob(s) as input, got %d'
                             % (where, self.exact_num_bottom, nb))
        if self.min_bottom is not None and nb < self.min_bottom:
            raise LayerError('%s takes at least %d bottom blob(s), got %d'
                             % (where, self.min_bottom, nb))
        if self.max_bottom is not None and nb > self.max_bottom:
            raise LayerError('%s takes at most %d bottom blob(s), got %d'
                             % (where, self.max_bottom, nb))
        if self.exact_num_top is not None and nt != self.exact_num_top:
            raise LayerError('%s produces %d top blob(s), got %d'
                             % (where, self.exact_num_top, nt))
        if self.min_top is not None and nt < self.min_top:
            raise LayerError('%s produces at least %d top blob(s), got %d'
                             % (where, self.min_top, nt))
        if self.max_top is not None and nt > self.max_top:
            raise LayerError('%s produces at most %d top blob(s), got %d'
                             % (where, self.max_top, nt))
        if self.equal_num_bottom_top and nb != nt:
            raise LayerError('%s needs as many tops as bottoms, got %d and %d'
                             % (where, nb, nt))

    def set_loss_weights(self, top):
        """Caffe: ``SetLossWeights``: a top's diff holds its loss weight."""
        lw = list(self.layer_param.loss_weight)
        if lw and len(lw) != len(top):
            raise LayerError('Layer %r: loss_weight must be given once per top (%d tops, %d '
                             'loss_weight values)' % (self.name, len(top), len(lw)))
        self.loss_weights = lw + [0.0] * (len(top) - len(lw))
        for t, w in zip(top, self.loss_weights):
            if w != 0:
                t.mutable_dev_diff.fill(w)

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def set_loss(self, top_index, value):
        while len(self.loss_weights) <= top_index:
            self.loss_weights.append(0.0)
        self.loss_weights[top_index] = value

    # ------------------------------------------------ learnable blobs (seams)
    def weight(self, i):
        """The array computation should use for learnable blob ``i`` (effective weights):
        ``own_weight(i)``, fake-quantized when blob ``i`` has a ``weights_compress`` method.
        Layer code reads its learnable blobs only through this method."""
        if i < len(self.compression.weight_methods):
            return self.compression.weight(i)
        return self.own_weight(i)

    def own_weight(self, i):
        """Blob ``i`` as this layer type computes with it before any μL2Q quantization: the
        data itself here; DNS/INQ layers return it masked."""
        return self.blobs[i].dev_data

    def param_update_mask(self, i):
        """Entries of blob ``i`` the solver may change (None = all).  INQ/DNS override."""
        return None

    def learnable_blob_indices(self):
        """Indices of blobs a solver updates (masks and statistics may be excluded)."""
        return list(range(len(self.blobs)))

    # True when extra_state() belongs to this process's solver in data-parallel training
    # (a data layer's read position and random stream); other layers' state is kept the same
    # on every rank (qcaffe.distributed broadcasts the root's).
    per_rank_state = False

    def required_blob_count(self):
        """How many leading blobs a binary weights file must give this layer (Caffe: all of
        them).  A layer whose trailing blobs keep useful initial values may ask for fewer
        (APoT's clipping thresholds when fine-tuning from a full-precision model, the masks
        of DNS/INQ layers loaded from a plain W, b model)."""
        return len(self.blobs)

    def extra_state(self):
        """Serialisable layer state beyond blobs (DNS mu/sigma, INQ flags): a dict of arrays."""
        return {}

    def load_extra_state(self, state):
        pass

    def after_weights_loaded(self):
        """Called after ``copy_from`` wrote this layer's blobs (compression takes over the
        quantize arrays loaded with them).  Subclasses extending it call this one."""
        self.compression.after_weights_loaded()

    def to_proto(self, param, write_diff=False):
        """Caffe: ``Layer::ToProto``: the LayerParameter with the current blobs."""
        if self.compression.weight_methods:
            # QC's ToProto runs CompressLayerWeights first: the saved quantize arrays and
            # params are those of the current (updated) weights, not of the last forward
            self.compression.prepare_weights()
        param.CopyFrom(self.layer_param)
        del param.blobs[:]
        for b in self.blobs:
            b.to_proto(param.blobs.add(), write_diff)
        return param

    def new_blob(self, *shape):
        b = Blob(*shape)
        self.blobs.append(b)
        return b

    def set_param_propagate_down(self, i, value):
        while len(self.param_propagate_down) <= i:
            self.param_propagate_down.append(True)
        self.param_propagate_down[i] = bool(value)

    def __repr__(self):
        return '<%s %r>' % (self.type, self.name)
