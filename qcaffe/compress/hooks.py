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
  QC writes them in TRAIN only (or when it had to add the entry); qcaffe in TEST too, so a
  test net's params describe its last forward, as the integer recipe (top / alpha) needs.
* a blob *without* a method that was loaded with a quantize array runs with the quantized
  values (QC ``FromProto(FPfirst=false)``): a plain prototxt runs a quantized caffemodel.
* loading a compressed caffemodel (compression.md 0.10): the file's quantize arrays and
  alpha/delta/fixedpos (weights and activations) are taken where the file's method and
  ``maxbits`` agree with the prototxt's; where they differ the prototxt wins (the weights are
  quantized afresh) and a warning names the layer, the blob and both values.  (QC instead
  overwrites the prototxt's params, ``maxbits`` included.)
* ``Clip`` is 8-bit whatever ``maxbits`` says, as in QC (0.9); a layer whose Clip asks for
  another width says so once, and ``clip_to_maxbits: true`` (ours) makes it a true k-bit Clip.
"""
import logging

import numpy as np

from ..backend import get_array_module
from ..io.errors import LayerError
from ..proto import caffe_pb2
from .quantizers import (ACTIVATION_METHODS, QC_CLIP_BITS, WEIGHT_METHODS, QuantState, apply,
                         effective_maxbits, setting)

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
    clip_to_maxbits = property(lambda self: self._msg.clip_to_maxbits)   # qcaffe's opt-in

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


def _describe(setting):
    method, k, exact = setting
    return '%s maxbits %d%s' % (method, k, ' clip_to_maxbits' if exact else '')


def _warn_clip_maxbits(layer, entries):
    """QC's Clip ignores maxbits (compression.md 0.9): say so once per layer."""
    odd = ['%s[%d] maxbits %d' % (field, i, effective_maxbits(p.maxbits))
           for field, methods, params in entries
           for i, (m, p) in enumerate(zip(methods, params))
           if m == 'Clip' and not p.clip_to_maxbits
           and effective_maxbits(p.maxbits) != QC_CLIP_BITS]
    if odd:
        log.warning('Layer %s: Clip with %s quantizes to %d bits (127 levels per sign), as '
                    "Quantization-caffe's Clip does whatever maxbits says; maxbits is kept and "
                    'saved as given. For a true k-bit Clip set clip_to_maxbits: true in that '
                    'compress param.', layer.name, ', '.join(odd), QC_CLIP_BITS)


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
        self._file_disagrees = set()   # blob indices whose file quantize is for another setting
        _warn_clip_maxbits(layer, (
            ('weights_compress_param', self.weight_methods, lp.weights_compress_param),
            ('activations_compress_param', self.act_methods, lp.activations_compress_param)))

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
            if not train and self._use_loaded(i, blob):
                _store_state(msg, blob.compress_state)
                continue
            self._loaded.pop(i, None)
            out = blob.mutable_dev_quantize
            # quantize what the layer would otherwise compute with (masks of DNS/INQ
            # subclasses compose: Q(W ⊙ mask)); for plain layers that is blob i's data
            state = apply(method, self.layer.own_weight(i), msg, out)
            if state is None:          # ULQ with maxbits <= 0: the fork leaves the buffer
                state = blob.compress_state or QuantState(0.0, 0.0, 0,
                                                          effective_maxbits(msg.maxbits))
            blob.compress_state = state
            _store_state(msg, state)
        self._prepared = True

    def _use_loaded(self, i, blob):
        """TEST: the quantize array loaded with the weights, while they are unchanged."""
        ref = self._loaded.get(i)
        if ref is None or blob.compress_state is None:
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
            _store_state(msg, apply(method, data, msg, data, activations=True))

    # ---------------------------------------------------------------- loading
    def take_file_params(self, file_param, source):
        """Compare with the compression a weights file was saved with (compression.md 0.10).

        ``file_param``: the file's LayerParameter of this layer (None: the file stores none,
        e.g. HDF5 or a plain Caffe model).  Where the file's method, maxbits and Clip opt-in
        agree with the prototxt's, its alpha/delta/fixedpos are taken into this layer's
        ``weights_compress_param`` / ``activations_compress_param`` (QC
        CopyTrainedLayersFrom); where they differ the prototxt wins and a warning names the
        layer, the blob or top and both values.  Called by the Net before
        ``after_weights_loaded``.
        """
        self._file_disagrees = set()
        if file_param is None:
            return
        lp = self.layer.layer_param
        for what, methods, params, f_methods, f_params in (
                ('blob', self.weight_methods, lp.weights_compress_param,
                 file_param.weights_compress, file_param.weights_compress_param),
                ('top', self.act_methods, lp.activations_compress_param,
                 file_param.activations_compress, file_param.activations_compress_param)):
            for i, method in enumerate(methods):
                if i >= len(f_methods):
                    continue               # saved without compression: nothing to take
                f_msg = f_params[i] if i < len(f_params) else caffe_pb2.CompressParameter()
                ours, theirs = setting(method, params[i]), setting(f_methods[i], f_msg)
                if ours == theirs:
                    params[i].alpha = f_msg.alpha
                    params[i].delta = f_msg.delta
                    params[i].fixedpos = f_msg.fixedpos
                    continue
                if what == 'blob':
                    self._file_disagrees.add(i)
                log.warning('Layer %s %s %d: the weights file %s was saved with %s, the '
                            "prototxt asks for %s; the prototxt's setting is used%s",
                            self.layer.name, what, i, source, _describe(theirs),
                            _describe(ours), ' (weights quantized afresh)'
                            if what == 'blob' else '')

    def after_weights_loaded(self):
        """Take over quantize arrays loaded with the weights (QC ``Blob::FromProto``)."""
        lp = self.layer.layer_param
        for i, blob in enumerate(self.layer.blobs):
            if not blob.quantize_from_file:
                self._loaded.pop(i, None)
                continue
            blob.quantize_from_file = False
            if i < len(self.weight_methods):
                self._loaded.pop(i, None)
                st = blob.compress_state
                k = effective_maxbits(lp.weights_compress_param[i].maxbits)
                if i in self._file_disagrees:
                    continue                 # take_file_params warned
                if st.maxbits != k:          # (files whose layers do not say their method)
                    log.warning('Layer %s blob %d: the stored quantize array has maxbits %d, '
                                "the prototxt asks for %d; the prototxt's setting is used "
                                '(weights quantized afresh)', self.layer.name, i, st.maxbits, k)
                    continue
                self._loaded[i] = blob.dev_data.copy()
                _store_state(lp.weights_compress_param[i], st)
            else:
                # no method for this blob: run with the stored quantized values
                blob.data[...] = blob.cpu_quantize()
                blob.clear_quantize()
        self._file_disagrees = set()
        self._prepared = False


def refresh(layer):
    """Recompute (or take the loaded) quantize buffers of ``layer`` now, without a forward."""
    layer.compression.prepare_weights()
