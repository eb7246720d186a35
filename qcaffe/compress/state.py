"""The compression fields of a .caffemodel: per blob (BlobProto 10–17) in and out of a Blob,
and per layer (LayerParameter 149–152, the settings a model was saved with).

Caffe equivalent: Quantization-caffe ``Blob::ToProto(proto, write_diff, save_quantize)`` and
``Blob::FromProto(proto, reshape, FPfirst)`` (compression.md 1(d)).  A compressed blob
carries, next to its full-precision ``data``, the dequantized ``quantize`` buffer (field 14,
``double_quantize`` 15; the older ``ternary`` 10 / ``double_ternary`` 11 are read too) and the
scalars ``delta`` 12, ``alpha`` 13, ``fixedpos`` 16, ``maxbits`` 17.  Real Caffe skips these
fields as unknown, so the same file loads there with the full-precision weights.
"""
import numpy as np

from ..proto import caffe_pb2
from .quantizers import QuantState

_QUANTIZE_FIELDS = ('double_quantize', 'quantize', 'double_ternary', 'ternary')


def read_proto_extras(proto):
    """``(quantize array or None, QuantState or None)`` stored in a BlobProto.

    As QC: alpha/delta are taken only when both are present (else 0), fixedpos/maxbits only
    when both are present (else 0 and 8).
    """
    quantize = None
    for field in _QUANTIZE_FIELDS:
        values = getattr(proto, field)
        if len(values):
            quantize = np.asarray(values, dtype=np.float32)
            break
    has = proto.HasField
    if quantize is None and not any(has(f) for f in ('alpha', 'delta', 'fixedpos', 'maxbits')):
        return None, None
    both_ad = has('alpha') and has('delta')
    both_fm = has('fixedpos') and has('maxbits')
    state = QuantState(float(proto.alpha) if both_ad else 0.0,
                       float(proto.delta) if both_ad else 0.0,
                       int(proto.fixedpos) if both_fm else 0,
                       int(proto.maxbits) if both_fm else 8)
    return quantize, state


def load_extras(blob, quantize, state):
    """Give ``blob`` the quantize buffer and state read from a file (or forget them).

    ``blob.quantize_from_file`` tells the layer's compression hook (run right after, from
    ``Layer.after_weights_loaded``) that the buffer came with the weights.
    """
    if quantize is None or quantize.size != blob.count_all:
        blob.quantize_from_file = False
        return
    blob.set_quantize(quantize.reshape(blob.shape))
    blob.compress_state = state
    blob.quantize_from_file = True


def load_weight_blob_extras(blob, weight_blob):
    """:func:`load_extras` from a :class:`qcaffe.io.weights.WeightBlob`."""
    load_extras(blob, getattr(weight_blob, 'quantize', None),
                getattr(weight_blob, 'qstate', None))


def write_proto_extras(blob, proto):
    """Add ``quantize`` and the state to ``proto`` when ``blob`` is compressed (QC ToProto)."""
    state = getattr(blob, 'compress_state', None)
    if state is None or not blob.has_quantize:
        return
    proto.quantize.extend(blob.cpu_quantize().ravel().tolist())
    proto.delta = state.delta
    proto.alpha = state.alpha
    proto.fixedpos = state.fixedpos
    proto.maxbits = state.maxbits


_LAYER_FIELDS = ('weights_compress', 'weights_compress_param', 'activations_compress',
                 'activations_compress_param')


def layer_compress_params(net_param):
    """``{layer name: LayerParameter with only its compression fields}`` of a NetParameter
    read from a weights file, for the layers saved with any (QC saves the methods and the
    learned params next to the blobs; compression.md 1(d)).  The net compares them with its
    prototxt (``LayerCompression.take_file_params``)."""
    out = {}
    for lp in net_param.layer:
        if len(lp.weights_compress) or len(lp.activations_compress):
            kept = caffe_pb2.LayerParameter()
            for field in _LAYER_FIELDS:
                getattr(kept, field).extend(getattr(lp, field))
            out[lp.name] = kept
    return out
