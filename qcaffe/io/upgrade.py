"""Upgrade of deprecated net and solver definitions to the current format.

Caffe: src/caffe/util/upgrade_proto.cpp. ``upgrade_net_as_needed`` is applied to EVERY
NetParameter read from a file (prototxt, .caffemodel, nets named by a solver or solver
state), so V0/V1 files keep working; see shared/spec/caffe.md section 1.4. The steps, in
Caffe's order:

1. V0 -> V1: fold "padding" layers into their conv/pool consumer, then map every nested
   ``V0LayerParameter`` onto a ``V1LayerParameter``.
2. Data transformation: scale/mean_file/crop_size/mirror move from the data layers' own
   params into ``transform_param``.
3. V1 -> V2: ``layers`` (enum types) become ``layer`` (string types); blobs_lr, weight_decay,
   param and blob_share_mode become ``ParamSpec`` entries.
4. Input: net-level ``input`` + ``input_dim``/``input_shape`` become a layer "input" of type
   "Input" at the front.
5. BatchNorm: a BatchNorm layer with exactly 3 ParamSpecs gets lr_mult = decay_mult = 0.

Caffe's ``LOG(FATAL)`` cases raise :class:`UpgradeError`; its ``LOG(ERROR)`` cases are logged
on the ``qcaffe`` logger and make the upgrade "not fully compatible" (the returned flag is
False), and reading continues, as in Caffe.
"""
import logging
import os

from ..proto import caffe_pb2
from .errors import UpgradeError

log = logging.getLogger('qcaffe')

_V1 = caffe_pb2.V1LayerParameter

# V1LayerParameter.LayerType -> V2 type string (Caffe: UpgradeV1LayerType).
V1_LAYER_TYPE_NAMES = {
    _V1.NONE: '',
    _V1.ABSVAL: 'AbsVal',
    _V1.ACCURACY: 'Accuracy',
    _V1.ARGMAX: 'ArgMax',
    _V1.BNLL: 'BNLL',
    _V1.CONCAT: 'Concat',
    _V1.CONTRASTIVE_LOSS: 'ContrastiveLoss',
    _V1.CONVOLUTION: 'Convolution',
    _V1.DECONVOLUTION: 'Deconvolution',
    _V1.DATA: 'Data',
    _V1.DROPOUT: 'Dropout',
    _V1.DUMMY_DATA: 'DummyData',
    _V1.EUCLIDEAN_LOSS: 'EuclideanLoss',
    _V1.ELTWISE: 'Eltwise',
    _V1.EXP: 'Exp',
    _V1.FLATTEN: 'Flatten',
    _V1.HDF5_DATA: 'HDF5Data',
    _V1.HDF5_OUTPUT: 'HDF5Output',
    _V1.HINGE_LOSS: 'HingeLoss',
    _V1.IM2COL: 'Im2col',
    _V1.IMAGE_DATA: 'ImageData',
    _V1.INFOGAIN_LOSS: 'InfogainLoss',
    _V1.INNER_PRODUCT: 'InnerProduct',
    _V1.LRN: 'LRN',
    _V1.MEMORY_DATA: 'MemoryData',
    _V1.MULTINOMIAL_LOGISTIC_LOSS: 'MultinomialLogisticLoss',
    _V1.MVN: 'MVN',
    _V1.POOLING: 'Pooling',
    _V1.POWER: 'Power',
    _V1.RELU: 'ReLU',
    _V1.SIGMOID: 'Sigmoid',
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: 'SigmoidCrossEntropyLoss',
    _V1.SILENCE: 'Silence',
    _V1.SOFTMAX: 'Softmax',
    _V1.SOFTMAX_LOSS: 'SoftmaxWithLoss',
    _V1.SPLIT: 'Split',
    _V1.SLICE: 'Slice',
    _V1.TANH: 'TanH',
    _V1.WINDOW_DATA: 'WindowData',
    _V1.THRESHOLD: 'Threshold',
}

# V0 type string -> V1 enum (Caffe: UpgradeV0LayerType). "padding" never gets here: those
# layers are folded away first.
V0_LAYER_TYPES = {
    'accuracy': _V1.ACCURACY,
    'bnll': _V1.BNLL,
    'concat': _V1.CONCAT,
    'conv': _V1.CONVOLUTION,
    'data': _V1.DATA,
    'dropout': _V1.DROPOUT,
    'euclidean_loss': _V1.EUCLIDEAN_LOSS,
    'flatten': _V1.FLATTEN,
    'hdf5_data': _V1.HDF5_DATA,
    'hdf5_output': _V1.HDF5_OUTPUT,
    'im2col': _V1.IM2COL,
    'images': _V1.IMAGE_DATA,
    'infogain_loss': _V1.INFOGAIN_LOSS,
    'innerproduct': _V1.INNER_PRODUCT,
    'lrn': _V1.LRN,
    'multinomial_logistic_loss': _V1.MULTINOMIAL_LOGISTIC_LOSS,
    'pool': _V1.POOLING,
    'relu': _V1.RELU,
    'sigmoid': _V1.SIGMOID,
    'softmax': _V1.SOFTMAX,
    'softmax_loss': _V1.SOFTMAX_LOSS,
    'split': _V1.SPLIT,
    'tanh': _V1.TANH,
    'window_data': _V1.WINDOW_DATA,
}

# Where each V0LayerParameter field goes in the V1 layer (Caffe: UpgradeV0LayerParameter):
# {v0 field: {v0 layer type (None = any type): (V1 param message, field in it)}}.
# A field in None position means "copy the whole message". Repeated targets are appended
# (V1 conv pad/kernel_size/stride are repeated). A V0 field set on a layer type that is
# not listed is reported and makes the upgrade not fully compatible.
_DATA_LAYER_PARAMS = {'data': 'data_param', 'hdf5_data': 'hdf5_data_param',
                      'images': 'image_data_param', 'window_data': 'window_data_param'}
_V0_FIELD_TARGETS = {
    'num_output': {'conv': ('convolution_param', 'num_output'),
                   'innerproduct': ('inner_product_param', 'num_output')},
    'biasterm': {'conv': ('convolution_param', 'bias_term'),
                 'innerproduct': ('inner_product_param', 'bias_term')},
    'weight_filler': {'conv': ('convolution_param', 'weight_filler'),
                      'innerproduct': ('inner_product_param', 'weight_filler')},
    'bias_filler': {'conv': ('convolution_param', 'bias_filler'),
                    'innerproduct': ('inner_product_param', 'bias_filler')},
    'pad': {'conv': ('convolution_param', 'pad'), 'pool': ('pooling_param', 'pad')},
    'kernelsize': {'conv': ('convolution_param', 'kernel_size'),
                   'pool': ('pooling_param', 'kernel_size')},
    'group': {'conv': ('convolution_param', 'group')},
    'stride': {'conv': ('convolution_param', 'stride'), 'pool': ('pooling_param', 'stride')},
    # V0 and V2 PoolMethod share their numbering (MAX 0, AVE 1, STOCHASTIC 2).
    'pool': {'pool': ('pooling_param', 'pool')},
    'dropout_ratio': {'dropout': ('dropout_param', 'dropout_ratio')},
    'local_size': {'lrn': ('lrn_param', 'local_size')},
    'alpha': {'lrn': ('lrn_param', 'alpha')},
    'beta': {'lrn': ('lrn_param', 'beta')},
    'k': {'lrn': ('lrn_param', 'k')},
    'source': dict({t: (p, 'source') for t, p in _DATA_LAYER_PARAMS.items()},
                   infogain_loss=('infogain_loss_param', 'source')),
    'scale': {None: ('transform_param', 'scale')},
    'meanfile': {None: ('transform_param', 'mean_file')},
    'batchsize': {t: (p, 'batch_size') for t, p in _DATA_LAYER_PARAMS.items()},
    'cropsize': {None: ('transform_param', 'crop_size')},
    'mirror': {None: ('transform_param', 'mirror')},
    'rand_skip': {'data': ('data_param', 'rand_skip'), 'images': ('image_data_param', 'rand_skip')},
    'shuffle_images': {'images': ('image_data_param', 'shuffle')},
    'new_height': {'images': ('image_data_param', 'new_height')},
    'new_width': {'images': ('image_data_param', 'new_width')},
    'concat_dim': {'concat': ('concat_param', 'concat_dim')},
    'det_fg_threshold': {'window_data': ('window_data_param', 'fg_threshold')},
    'det_bg_threshold': {'window_data': ('window_data_param', 'bg_threshold')},
    'det_fg_fraction': {'window_data': ('window_data_param', 'fg_fraction')},
    'det_context_pad': {'window_data': ('window_data_param', 'context_pad')},
    'det_crop_mode': {'window_data': ('window_data_param', 'crop_mode')},
    'hdf5_output_param': {'hdf5_output': ('hdf5_output_param', None)},
}

# V1 layer types whose own param carries the old transformation fields, and that param
# (Caffe: NetNeedsDataUpgrade / UpgradeNetDataTransformation).
_DATA_UPGRADE_PARAMS = {_V1.DATA: 'data_param', _V1.IMAGE_DATA: 'image_data_param',
                        _V1.WINDOW_DATA: 'window_data_param'}
_TRANSFORM_FIELDS = ('scale', 'mean_file', 'crop_size', 'mirror')

# The layer-specific params V1 knows; V1 -> V2 copies them verbatim (same names in both).
_V1_COPIED_PARAMS = (
    'accuracy_param', 'argmax_param', 'concat_param', 'contrastive_loss_param',
    'convolution_param', 'data_param', 'dropout_param', 'dummy_data_param', 'eltwise_param',
    'exp_param', 'hdf5_data_param', 'hdf5_output_param', 'hinge_loss_param',
    'image_data_param', 'infogain_loss_param', 'inner_product_param', 'lrn_param',
    'memory_data_param', 'mvn_param', 'pooling_param', 'power_param', 'relu_param',
    'sigmoid_param', 'softmax_param', 'slice_param', 'tanh_param', 'threshold_param',
    'window_data_param', 'transform_param', 'loss_param',
)

_V1_SHARE_MODES = {
    _V1.STRICT: caffe_pb2.ParamSpec.STRICT,
    _V1.PERMISSIVE: caffe_pb2.ParamSpec.PERMISSIVE,
}

_S = caffe_pb2.SolverParameter
# Deprecated SolverParameter.solver_type enum -> type string (Caffe: UpgradeSolverType).
SOLVER_TYPE_NAMES = {
    _S.SGD: 'SGD',
    _S.NESTEROV: 'Nesterov',
    _S.ADAGRAD: 'AdaGrad',
    _S.RMSPROP: 'RMSProp',
    _S.ADADELTA: 'AdaDelta',
    _S.ADAM: 'Adam',
    _S.LARSSGD: 'LarsSGD',  # qcaffe extension (DNS/INQ fork), compression.md section 2
}


def _where(source):
    return source or '<NetParameter>'


def _layer_desc(index, name):
    return 'layer #%d %r' % (index, name) if name else 'layer #%d' % index


def _require_text(layer, source, index, version):
    """Refuse a layer whose string fields are not UTF-8 (protobuf hands them over as bytes,
    which the upgraded layer cannot hold); Caffe copies the bytes, so a damaged name would
    leave that layer's weights silently unloaded."""
    for field, value in layer.ListFields():
        if field.type != field.TYPE_STRING:
            continue
        for item in (value if isinstance(value, (list, tuple)) or hasattr(value, 'append')
                     else [value]):
            if isinstance(item, bytes):
                name = layer.name if isinstance(layer.name, str) else ''
                raise UpgradeError('%s: cannot upgrade %s %s: its %s %r is not valid UTF-8 '
                                   'text (the file is damaged)'
                                   % (_where(source), version, _layer_desc(index, name),
                                      field.name, item))


# ---------------------------------------------------------------------------------------
# Which upgrades a net needs (Caffe: NetNeeds*Upgrade).

def net_needs_v0_to_v1_upgrade(net_param):
    """True if any ``layers`` entry carries a nested V0 ``layer`` (Caffe: NetNeedsV0ToV1Upgrade)."""
    return any(layer.HasField('layer') for layer in net_param.layers)


def net_needs_v1_to_v2_upgrade(net_param):
    """True if the net uses the V1 ``layers`` field (Caffe: NetNeedsV1ToV2Upgrade)."""
    return len(net_param.layers) > 0


def net_needs_data_upgrade(net_param):
    """True if a V1 data layer sets transformation fields in its own param.

    Caffe: NetNeedsDataUpgrade.
    """
    for layer in net_param.layers:
        param_name = _DATA_UPGRADE_PARAMS.get(layer.type)
        if param_name is not None:
            param = getattr(layer, param_name)
            if any(param.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def net_needs_input_upgrade(net_param):
    """True if the net uses the net-level ``input`` field (Caffe: NetNeedsInputUpgrade)."""
    return len(net_param.input) > 0


def net_needs_batch_norm_upgrade(net_param):
    """True if a BatchNorm layer declares exactly 3 ParamSpecs (Caffe: NetNeedsBatchNormUpgrade)."""
    return any(layer.type == 'BatchNorm' and len(layer.param) == 3 for layer in net_param.layer)


def net_needs_upgrade(net_param):
    """True if :func:`upgrade_net_as_needed` would change anything (Caffe: NetNeedsUpgrade)."""
    return (net_needs_v0_to_v1_upgrade(net_param) or net_needs_v1_to_v2_upgrade(net_param)
            or net_needs_data_upgrade(net_param) or net_needs_input_upgrade(net_param)
            or net_needs_batch_norm_upgrade(net_param))


# ---------------------------------------------------------------------------------------
# V0 -> V1

def upgrade_v0_padding_layers(net_param, source=''):
    """Return a copy of the V0 net without "padding" layers (Caffe: UpgradeV0PaddingLayers).

    A padding layer's ``pad`` moves into its consumer, which must be a conv or pool layer
    with a single bottom; the consumer's bottom is rewired to the padding layer's input.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    out.ClearField('layers')
    # blob name -> index of the last layer producing it (-1: a net input).
    producer = {name: -1 for name in net_param.input}
    for i, connection in enumerate(net_param.layers):
        v0 = connection.layer
        if v0.type != 'padding':
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in producer:
                raise UpgradeError(
                    '%s: cannot upgrade V0 net: %s takes bottom %r, which no earlier layer '
                    'produces and which is not a net input'
                    % (_where(source), _layer_desc(i, v0.name), blob))
            top_index = producer[blob]
            if top_index == -1:
                continue
            pad_layer = net_param.layers[top_index]
            if pad_layer.layer.type != 'padding':
                continue
            problem = None
            if v0.type not in ('conv', 'pool'):
                problem = ('a padding layer can only feed a "conv" or "pool" layer, not %r'
                           % v0.type)
            elif len(connection.bottom) != 1:
                problem = 'a layer fed by a padding layer must take a single bottom'
            elif len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                problem = ('padding layer %r must have exactly one bottom and one top'
                           % pad_layer.layer.name)
            if problem:
                raise UpgradeError('%s: cannot upgrade V0 net at %s: %s'
                                   % (_where(source), _layer_desc(i, v0.name), problem))
            consumer = out.layers[len(out.layers) - 1]
            consumer.layer.pad = pad_layer.layer.pad
            consumer.bottom[j] = pad_layer.bottom[0]
        for blob in connection.top:
            producer[blob] = i
    return out


def _set_v0_field(v1_layer, v0, field_name, param_name, target):
    value = getattr(v0, field_name)
    param = getattr(v1_layer, param_name)
    if target is None:
        param.CopyFrom(value)
        return
    field = param.DESCRIPTOR.fields_by_name[target]
    if field.message_type is not None:
        getattr(param, target).CopyFrom(value)
    elif (field.is_repeated if hasattr(field, 'is_repeated')  # protobuf 7 has no .label
          else field.label == field.LABEL_REPEATED):
        getattr(param, target).append(value)
    else:
        setattr(param, target, value)


def upgrade_v0_layer(v0_connection, source='', index=0):
    """Upgrade one V0 layer (a V1 entry with nested ``layer``); return (V1 layer, ok).

    Caffe: UpgradeV0LayerParameter. ``ok`` is False when a V0 field did not fit the layer
    type (it is then dropped and the problem logged).
    """
    _require_text(v0_connection, source, index, 'V0')
    _require_text(v0_connection.layer, source, index, 'V0')
    out = _V1()
    ok = True
    out.bottom.extend(v0_connection.bottom)
    out.top.extend(v0_connection.top)
    if not v0_connection.HasField('layer'):
        return out, ok
    v0 = v0_connection.layer
    if v0.HasField('name'):
        out.name = v0.name
    layer_type = v0.type
    if v0.HasField('type'):
        if layer_type not in V0_LAYER_TYPES:
            raise UpgradeError(
                '%s: cannot upgrade V0 %s: unknown V0 layer type %r (known: %s)'
                % (_where(source), _layer_desc(index, v0.name), layer_type,
                   ', '.join(sorted(V0_LAYER_TYPES))))
        out.type = V0_LAYER_TYPES[layer_type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field_name, targets in _V0_FIELD_TARGETS.items():
        if not v0.HasField(field_name):
            continue
        target = targets.get(layer_type, targets.get(None))
        if target is None:
            log.error('Unknown parameter %s for layer type %s (%s in %s); dropping it',
                      field_name, layer_type, _layer_desc(index, v0.name), _where(source))
            ok = False
            continue
        _set_v0_field(out, v0, field_name, *target)
    return out, ok


def upgrade_v0_net(net_param, source=''):
    """Return (V1 NetParameter, ok) for a V0 net (Caffe: UpgradeV0Net)."""
    padded = upgrade_v0_padding_layers(net_param, source)
    out = caffe_pb2.NetParameter()
    ok = True
    if padded.HasField('name'):
        out.name = padded.name
    for i, connection in enumerate(padded.layers):
        layer, layer_ok = upgrade_v0_layer(connection, source, i)
        out.layers.add().CopyFrom(layer)
        ok &= layer_ok
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField('force_backward'):
        out.force_backward = padded.force_backward
    return out, ok


# ---------------------------------------------------------------------------------------
# Data transformation

def upgrade_net_data_transformation(net_param):
    """Move scale/mean_file/crop_size/mirror of V1 data layers into ``transform_param``.

    In place. Caffe: UpgradeNetDataTransformation. Like Caffe's ``mutable_*`` calls, every
    Data/ImageData/WindowData layer ends up with its param and transform_param present.
    """
    for layer in net_param.layers:
        param_name = _DATA_UPGRADE_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# ---------------------------------------------------------------------------------------
# V1 -> V2

def upgrade_v1_layer(v1_layer, source='', index=0):
    """Upgrade one V1LayerParameter; return (LayerParameter, ok) (Caffe: UpgradeV1LayerParameter)."""
    _require_text(v1_layer, source, index, 'V1')
    out = caffe_pb2.LayerParameter()
    ok = True
    out.bottom.extend(v1_layer.bottom)
    out.top.extend(v1_layer.top)
    if v1_layer.HasField('name'):
        out.name = v1_layer.name
    out.include.extend(v1_layer.include)
    out.exclude.extend(v1_layer.exclude)
    if v1_layer.HasField('type'):
        if v1_layer.type not in V1_LAYER_TYPE_NAMES:
            raise UpgradeError('%s: cannot upgrade V1 %s: unknown V1 layer type %d'
                               % (_where(source), _layer_desc(index, v1_layer.name),
                                  v1_layer.type))
        out.type = V1_LAYER_TYPE_NAMES[v1_layer.type]
    out.blobs.extend(v1_layer.blobs)

    def param_spec(i):
        # ParamSpecs are created as needed, index-aligned with the layer's blobs.
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1_layer.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1_layer.blob_share_mode):
        if mode not in _V1_SHARE_MODES:
            raise UpgradeError('%s: cannot upgrade V1 %s: unknown blob_share_mode %d'
                               % (_where(source), _layer_desc(index, v1_layer.name), mode))
        param_spec(i).share_mode = _V1_SHARE_MODES[mode]
    for i, lr in enumerate(v1_layer.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1_layer.weight_decay):
        param_spec(i).decay_mult = decay
    out.loss_weight.extend(v1_layer.loss_weight)
    for name in _V1_COPIED_PARAMS:
        if v1_layer.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1_layer, name))
    if v1_layer.HasField('layer'):
        log.error('Input NetParameter has V0 layer -- ignoring (%s in %s).',
                  _layer_desc(index, v1_layer.name), _where(source))
        ok = False
    return out, ok


def upgrade_v1_net(net_param, source=''):
    """Return (NetParameter with ``layer``, ok) for a V1 net (Caffe: UpgradeV1Net)."""
    if len(net_param.layer) > 0:
        raise UpgradeError(
            "%s: refusing to upgrade inconsistent NetParameter: it has both 'layer' and "
            "'layers' fields. The current format is layer { type: \"Layer\" ... }, not "
            "layers { type: LAYER ... }; rewrite the definition in the 'layer' format."
            % _where(source))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    out.ClearField('layers')
    out.ClearField('layer')
    ok = True
    for i, v1_layer in enumerate(net_param.layers):
        layer, layer_ok = upgrade_v1_layer(v1_layer, source, i)
        out.layer.add().CopyFrom(layer)
        if not layer_ok:
            log.error('Upgrade of input layer %d failed.', i)
            ok = False
    return out, ok


# ---------------------------------------------------------------------------------------
# Input fields, BatchNorm

def upgrade_net_input(net_param, source=''):
    """Turn net-level input fields into an "Input" layer named "input" at the front.

    In place. Caffe: UpgradeNetInput. Without input_shape/input_dim (old caffemodels store
    bare input names) no layer is made; the input fields are cleared in every case.
    """
    has_shape = len(net_param.input_shape) > 0
    has_dim = len(net_param.input_dim) > 0
    if has_shape or has_dim:
        n = len(net_param.input)
        if has_shape and len(net_param.input_shape) < n:
            raise UpgradeError('%s: %d inputs (%s) but only %d input_shape entries'
                               % (_where(source), n, ', '.join(net_param.input),
                                  len(net_param.input_shape)))
        if not has_shape and len(net_param.input_dim) < 4 * n:
            raise UpgradeError('%s: %d inputs (%s) need 4 input_dim values each (%d), found %d'
                               % (_where(source), n, ', '.join(net_param.input), 4 * n,
                                  len(net_param.input_dim)))
        layer = caffe_pb2.LayerParameter(name='input', type='Input')
        input_param = layer.input_param
        input_param.SetInParent()
        for i, name in enumerate(net_param.input):
            layer.top.append(name)
            if has_shape:
                input_param.shape.add().CopyFrom(net_param.input_shape[i])
            else:
                input_param.shape.add().dim.extend(net_param.input_dim[4 * i:4 * i + 4])
        # At the front, so every layer's bottoms are produced before it.
        net_param.layer.insert(0, layer)
    net_param.ClearField('input')
    net_param.ClearField('input_shape')
    net_param.ClearField('input_dim')


def upgrade_net_batch_norm(net_param):
    """Set lr_mult = decay_mult = 0 in BatchNorm layers declaring 3 ParamSpecs.

    In place; other ParamSpec fields are kept. Caffe: UpgradeNetBatchNorm.
    """
    for layer in net_param.layer:
        if layer.type == 'BatchNorm' and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------------------------------
# The whole chain

def _log_attempt(what, source):
    log.info('Attempting to upgrade input file specified using deprecated %s: %s', what, source)


def _replace_net(net_param, convert, source, what, problem):
    """The V0 -> V1 and V1 -> V2 steps: ``convert`` builds a new NetParameter, copied over
    ``net_param``; logs as Caffe does and returns whether every field was carried over."""
    _log_attempt(what, source)
    upgraded, ok = convert(net_param, source)
    net_param.CopyFrom(upgraded)
    if ok:
        log.info('Successfully upgraded file specified using deprecated %s', what)
    else:
        log.error('Warning: had one or more problems upgrading %s (see above); '
                  'continuing anyway.', problem)
    return ok


def upgrade_net_as_needed(net_param, source=''):
    """Apply every needed upgrade to ``net_param`` IN PLACE; return (net_param, fully_compatible).

    ``source`` names the file in log lines and errors. ``fully_compatible`` is False when
    some deprecated field could not be carried over (logged as errors; the net is still
    usable, as Caffe continues too). Impossible upgrades raise :class:`UpgradeError`.

    Caffe: UpgradeNetAsNeeded.
    """
    ok = True
    if net_needs_v0_to_v1_upgrade(net_param):
        ok = _replace_net(net_param, upgrade_v0_net, source, 'V0LayerParameter',
                          'V0NetParameter to NetParameter') and ok
        log.warning('Note that future Caffe releases will not support V0NetParameter; use '
                    'upgrade_net_proto_text for prototxt and upgrade_net_proto_binary for '
                    'model weights to upgrade this and any other net protos to the new format.')
    if net_needs_data_upgrade(net_param):
        _log_attempt('transformation parameters', source)
        upgrade_net_data_transformation(net_param)
        log.info('Successfully upgraded file specified using deprecated data '
                 'transformation parameters.')
        log.warning('Note that future Caffe releases will only support transform_param '
                    'messages for transformation fields.')
    if net_needs_v1_to_v2_upgrade(net_param):
        ok = _replace_net(net_param, upgrade_v1_net, source, 'V1LayerParameter',
                          'V1LayerParameter') and ok
    if net_needs_input_upgrade(net_param):
        _log_attempt('input fields', source)
        upgrade_net_input(net_param, source)
        log.info('Successfully upgraded file specified using deprecated input fields.')
        log.warning('Note that future Caffe releases will only support input layers and '
                    'not input fields.')
    if net_needs_batch_norm_upgrade(net_param):
        log.info('Attempting to upgrade batch norm layers using deprecated params: %s', source)
        upgrade_net_batch_norm(net_param)
        log.info('Successfully upgraded batch norm layers using deprecated params.')
    return net_param, ok


# ---------------------------------------------------------------------------------------
# Solver

def solver_needs_type_upgrade(solver_param):
    """True if the deprecated ``solver_type`` enum is set (Caffe: SolverNeedsTypeUpgrade)."""
    return solver_param.HasField('solver_type')


def upgrade_solver_type(solver_param, source=''):
    """Replace ``solver_type`` (enum) by ``type`` (string), in place (Caffe: UpgradeSolverType)."""
    if solver_param.HasField('solver_type') and solver_param.HasField('type'):
        raise UpgradeError(
            '%s: cannot upgrade solver: the old solver_type field (enum, here %s) and the new '
            'type field (string, here %r) cannot both be specified; remove solver_type.'
            % (source or '<SolverParameter>',
               _S.SolverType.Name(solver_param.solver_type), solver_param.type))
    if not solver_param.HasField('solver_type'):
        log.error('Warning: solver type already up to date.')
        return False
    value = solver_param.solver_type
    if value not in SOLVER_TYPE_NAMES:
        raise UpgradeError('%s: unknown SolverParameter solver_type: %d'
                           % (source or '<SolverParameter>', value))
    solver_param.type = SOLVER_TYPE_NAMES[value]
    solver_param.ClearField('solver_type')
    return True


def upgrade_solver_as_needed(solver_param, path=''):
    """Upgrade a deprecated solver definition IN PLACE; return (solver_param, ok).

    Only the ``solver_type`` -> ``type`` upgrade, as in Caffe (UpgradeSolverAsNeeded, also
    what upgrade_solver_proto_text applies). The snapshot_prefix rule is
    :func:`upgrade_snapshot_prefix`, which ``read_solver_param`` applies as well.
    """
    ok = True
    if solver_needs_type_upgrade(solver_param):
        log.info("Attempting to upgrade input file specified using deprecated "
                 "'solver_type' field (enum)': %s", path)
        if upgrade_solver_type(solver_param, path):
            log.info("Successfully upgraded file specified using deprecated 'solver_type' "
                     "field (enum) to 'type' field (string).")
            log.warning("Note that future Caffe releases will only support 'type' field "
                        "(string) for a solver's type.")
        else:
            ok = False
            log.error('Warning: had one or more problems upgrading SolverType (see above).')
    return solver_param, ok


def upgrade_snapshot_prefix(solver_param, path):
    """Default or expand ``snapshot_prefix`` from the solver file name, in place.

    Unset -> ``path`` without its extension; an existing directory ``d`` (relative to the
    CWD, like every Caffe path) -> ``d/<solver file stem>``.
    Caffe: UpgradeSnapshotPrefixProperty.
    """
    path = os.fsdecode(os.fspath(path))
    if not solver_param.HasField('snapshot_prefix'):
        solver_param.snapshot_prefix = os.path.splitext(path)[0]
        log.info('snapshot_prefix was not specified and is set to %s',
                 solver_param.snapshot_prefix)
    elif os.path.isdir(solver_param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        solver_param.snapshot_prefix = os.path.join(solver_param.snapshot_prefix, stem)
        log.info('snapshot_prefix was a directory and is replaced to %s',
                 solver_param.snapshot_prefix)
    return solver_param
