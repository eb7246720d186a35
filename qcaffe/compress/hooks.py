"""weights_compress / activations_compress on any layer (μL2Q / Quantization-caffe).

Caffe equivalent: QC's ``Layer::Forward`` / ``Backward`` wrappers (include/caffe/layer.hpp:
``CompressLayerWeights``, ``ExchangeCompressWeights``, ``CompressLayerActivations``) and the
pycaffe bindings of ``weights_compress`` & co (python/caffe/_caffe.cpp); compression.md 1(b)-(e).

Every :class:`~qcaffe.layers.base.Layer` owns one :class:`LayerCompression` (``layer.compression``)
and calls it through explicit seams: ``Layer.forward`` (prepare the quantized weights, compress
the tops), ``Layer.weight(i)``, ``Layer.after_weights_loaded`` and ``Layer.to_proto``.

* weights: before each forward, blob ``i`` with ``weights_compress[i]`` gets its quantize
  buffer computed from the full-precision data; ``layer.weight(i)`` (the seam every layer
  computes with) then returns that buffer, in forward *and* backward.  Param diffs still
  accumulate into the full-precision blobs: the straight-through estimator of the fork
  (W ← W − lr·∂L/∂Q(W)); weight decay and the update see full precision.
* TRAIN recomputes at every forward.  TEST (our recommendation, 1(g).5) uses the quantize
  array loaded with the weights while the weights are those it was loaded with, else
  recomputes from the current weights (e.g. a test net sharing a training net's weights).
* activations: ``top[i]`` is quantized in place after the layer's forward (QC); backward
  passes gradients straight through (nothing to do).  Activation ``ULQ`` is rejected.
* the learned scalars are written into ``layer_param.weights_compress_param[i]`` /
  ``activations_compress_param[i]`` (missing entries are appended, as QC does), so
  ``Net.save`` stores them; pycaffe sees them as ``layer.weights_compress_param[i].alpha``…
* a blob *without* a method that was loaded with a quantize array runs with the quantized
  values (QC ``FromProto(FPfirst=false)``): a plain prototxt runs a quantized caffemodel.
"""
import logging

import numpy as np

from ..backend import get_array_module
from ..io.errors import LayerError
from .quantizers import (ACTIVATION_FUNCS, ACTIVATION_METHODS, METHODS, WEIGHT_METHODS,
                         QuantState, effective_maxbits)

log = logging.getLogger('qcaffe')

TRAIN = 0   # caffe_pb2.TRAIN


class CompressParam(object):
    """pycaffe ``CompressParameter``: read-only ``alpha``, ``delta``, ``fixedpos``,
    ``maxbits`` and ``set_maxbits(k)``, live over the layer's LayerParameter entry."""

    __slots__ = ('_msg',)

    def __init__(self, msg):
        self._msg = msg

    alpha = property(lambda self: self._msg.alpha)
    delta = property(lambda self: self._msg.delta)
    fixedpos = property(lambda self: self._msg.fixedpos)
    maxbits = property(lambda self: self._msg.maxbits)

    def set_maxbits(self, maxbits):
        """Bit width used from the next forward on."""
        maxbits = int(maxbits)
        if maxbits < 0:
            raise ValueError('maxbits must be >= 0 (0 means 8), got %d' % maxbits)
        self._msg.maxbits = maxbits

    def __repr__(self):
        return ('CompressParam(alpha=%g, delta=%g, fixedpos=%d, maxbits=%d)'
                % (self.alpha, self.delta, self.fixedpos, self.maxbits))


def _store_state(msg, state):
    msg.alpha = state.alpha
    msg.delta = state.delta
    msg.fixedpos = state.fixedpos
    msg.maxbits = state.maxbits


def _check_methods(layer, field, methods, valid):
    for i, m in enumerate(methods):
        if m not in valid:
            what = 'an empty method name' if m == '' else 'unknown method %r' % m
            extra = ''
            if field == 'activations_compress' and m == 'ULQ':
                what = "'ULQ'"
                extra = (' (ULQ on activations is broken in Quantization-caffe and not '
                         'supported; use Clip or Quantize)')
            raise LayerError('Layer %r (type %s): %s[%d] is %s%s. Valid choices: %s'
                             % (layer.name, layer.type, field, i, what, extra,
                                ', '.join(valid)))


def _ensure_params(lp, methods_field, params_field):
    params = getattr(lp, params_field)
    while len(params) < len(getattr(lp, methods_field)):
        params.add()     # QC appends a default entry (maxbits 8) when one is missing
    for i, p in enumerate(params):
        if p.maxbits < 0:
            raise LayerError('Layer %r: %s[%d].maxbits is %d; it must be >= 0 (0 means 8)'
                             % (lp.name, params_field, i, p.maxbits))
    return [CompressParam(p) for p in params]


class LayerCompression(object):
    """The μL2Q compression of one layer (its methods are called by ``Layer``'s seams).

    Checks the layer's methods and gives it the pycaffe attributes ``weights_compress``,
    ``weights_compress_param``, ``activations_compress`` and ``activations_compress_param``.
    """

    def __init__(self, layer):
        self.layer = layer
        lp = layer.layer_param
        self.weight_methods = list(lp.weights_compress)
        self.act_methods = list(lp.activations_compress)
        self._loaded = {}      # blob index -> copy of the data its loaded quantize belongs to
        self._prepared = False
        _check_methods(layer, 'weights_compress', self.weight_methods, WEIGHT_METHODS)
        _check_methods(layer, 'activations_compress', self.act_methods, ACTIVATION_METHODS)
        layer.weights_compress = self.weight_methods
        layer.activations_compress = self.act_methods
        layer.weights_compress_param = _ensure_params(lp, 'weights_compress',
                                                      'weights_compress_param')
        layer.activations_compress_param = _ensure_params(lp, 'activations_compress',
                                                          'activations_compress_param')

    # --------------------------------------------------------------- weights
    def _check_blob_count(self):
        n = len(self.layer.blobs)
        if len(self.weight_methods) > n:
            raise LayerError('Layer %r (type %s): weights_compress has %d entries but the layer'
                             ' has %d learnable blob(s) (%s); give one method per blob '
                             '(0 = weights, 1 = bias)'
                             % (self.layer.name, self.layer.type, len(self.weight_methods), n,
                                ', '.join(b.shape_string() for b in self.layer.blobs)
                                or 'none'))

    def prepare_weights(self):
        """Fill the quantize buffer of every compressed blob for the coming forward."""
        if not self.weight_methods:
            return
        self._check_blob_count()
        lp = self.layer.layer_param
        train = lp.phase == TRAIN
        for i, method in enumerate(self.weight_methods):
            blob = self.layer.blobs[i]
            msg = lp.weights_compress_param[i]
            k = effective_maxbits(msg.maxbits)
            if not train and self._use_loaded(i, blob, k):
                _store_state(msg, blob.compress_state)
                continue
            self._loaded.pop(i, None)
            out = blob.mutable_dev_quantize
            # quantize what the layer would otherwise compute with (masks of DNS/INQ
            # subclasses compose: Q(W ⊙ mask)); for plain layers that is blob i's data
            state = METHODS[method].fn(self.layer.own_weight(i), k, out)
            if state is None:          # ULQ with maxbits <= 0: the fork leaves the buffer
                state = blob.compress_state or QuantState(0.0, 0.0, 0, k)
            blob.compress_state = state
            _store_state(msg, state)
        self._prepared = True

    def _use_loaded(self, i, blob, k):
        ref = self._loaded.get(i)
        if ref is None or blob.compress_state is None:
            return False
        if blob.compress_state.maxbits != k:
            log.warning('Layer %s blob %d: the stored quantize array has maxbits %d, the net '
                        'asks for %d; recomputing', self.layer.name, i,
                        blob.compress_state.maxbits, k)
            return False
        xp = get_array_module(blob.dev_data)
        return bool(xp.array_equal(blob.dev_data, ref))

    def weight(self, i):
        """``Layer.weight(i)`` of a compressed blob ``i``: its quantize buffer."""
        if not self._prepared:
            self.prepare_weights()
        return self.layer.blobs[i].dev_quantize

    # ----------------------------------------------------------- activations
    def compress_activations(self, top):
        lp = self.layer.layer_param
        for i, method in enumerate(self.act_methods):
            if i >= len(top):
                raise LayerError('Layer %r: activations_compress has %d entries but the layer '
                                 'has %d top blob(s)' % (self.layer.name, len(self.act_methods),
                                                         len(top)))
            msg = lp.activations_compress_param[i]
            data = top[i].mutable_dev_data
            state = ACTIVATION_FUNCS[method](data, effective_maxbits(msg.maxbits), data)
            _store_state(msg, state)

    def after_weights_loaded(self):
        """Take over quantize arrays loaded with the weights (QC ``Blob::FromProto``)."""
        for i, blob in enumerate(self.layer.blobs):
            if not blob.quantize_from_file:
                self._loaded.pop(i, None)
                continue
            blob.quantize_from_file = False
            if i < len(self.weight_methods):
                self._loaded[i] = blob.dev_data.copy()
                if blob.compress_state is not None:
                    _store_state(self.layer.layer_param.weights_compress_param[i],
                                 blob.compress_state)
            else:
                # no method for this blob: run with the stored quantized values
                blob.data[...] = blob.cpu_quantize()
                blob.clear_quantize()
        self._prepared = False


def refresh(layer):
    """Recompute (or take the loaded) quantize buffers of ``layer`` now, without a forward."""
    layer.compression.prepare_weights()
