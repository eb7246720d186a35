"""Trained weights files, whatever their format: what ``Net.copy_from`` reads.

Caffe: Net::CopyTrainedLayersFrom: an HDF5 file (detected by its signature, like
``H5Fis_hdf5``) goes to the HDF5 loader; anything else is read as a binary NetParameter
and upgraded (so V0/V1 .caffemodels load). Both give the same result here: per source layer,
its name, its type (None for HDF5, which does not store types) and its blobs as
:class:`WeightBlob`. Matching layers by name, the blob-count check and the copy itself are
the Net's job (shared/spec/caffe.md section 3.8); :meth:`WeightBlob.shape_matches` gives
it Caffe's ShapeEquals.
"""
import logging

from ..proto import caffe_pb2
from .binary import read_binary_proto
from .blobproto import (blob_shape_from_proto, blobproto_to_array,  # noqa: F401 (re-exported)
                        legacy_shape_equals, shape_equals, shape_string)
from .errors import BlobProtoError, ModelFileError
from .files import display_path, file_is_hdf5
from .hdf5 import read_hdf5_weights
from .upgrade import upgrade_net_as_needed

log = logging.getLogger('qcaffe')


class WeightBlob:
    """One stored parameter blob.

    ``shape``: as stored (legacy files: the 4-D num, channels, height, width);
    ``legacy``: True when stored with legacy dims (right-aligned ShapeEquals applies);
    ``data``: float32 array of ``shape``; ``diff``: float32 array or None when not stored.
    """
    __slots__ = ('shape', 'legacy', 'data', 'diff', 'quantize', 'qstate')

    def __init__(self, shape, legacy, data, diff=None, quantize=None, qstate=None):
        self.shape = tuple(shape)
        self.legacy = legacy
        self.data = data
        self.diff = diff
        # uL2Q / Quantization-caffe extras (BlobProto 10-17), see qcaffe.compress.state
        self.quantize = quantize
        self.qstate = qstate

    def shape_matches(self, target_shape):
        """True if a blob of ``target_shape`` may receive this one (Caffe: Blob::ShapeEquals)."""
        return shape_equals(target_shape, self.shape, self.legacy)

    def shape_string(self):
        """Caffe's "d0 d1 ... (count)" of the stored shape, for mismatch messages."""
        return shape_string(self.shape)

    def __repr__(self):
        return 'WeightBlob(shape=%r, legacy=%r%s)' % (
            self.shape, self.legacy, ', with diff' if self.diff is not None else '')


def weight_blob_from_proto(proto):
    """A :class:`WeightBlob` from a BlobProto (Caffe: Blob::FromProto with reshape)."""
    shape, legacy = blob_shape_from_proto(proto)
    data = blobproto_to_array(proto)
    diff = None
    if len(proto.diff) or len(proto.double_diff):
        diff = blobproto_to_array(proto, return_diff=True)
    from ..compress.state import read_proto_extras
    quantize, qstate = read_proto_extras(proto)
    return WeightBlob(shape, legacy, data, diff, quantize, qstate)


def weights_from_net_param(net_param, source=''):
    """``[(layer_name, layer_type, [WeightBlob, ...]), ...]`` of an (upgraded) NetParameter."""
    out = []
    for i, layer in enumerate(net_param.layer):
        if isinstance(layer.name, bytes):   # protobuf's way of handing over non-UTF-8 text
            log.warning('%s: the name %r of layer #%d is not valid UTF-8 (a damaged file?); '
                        'no layer can match it, so its weights are not loaded',
                        source or '<NetParameter>', layer.name, i)
        blobs = []
        for j, proto in enumerate(layer.blobs):
            try:
                blobs.append(weight_blob_from_proto(proto))
            except BlobProtoError as e:
                raise ModelFileError('%s: blob %d of layer %r: %s (corrupt file?)'
                                     % (source or '<NetParameter>', j, layer.name, e)) from None
        out.append((layer.name, layer.type, blobs))
    return out


def read_weights_file(path):
    """``(layers, compress)``: :func:`load_weights_file`'s list, and for a binary file the
    compression settings its layers were saved with (``{layer name: LayerParameter}``, see
    :func:`qcaffe.compress.state.layer_compress_params`; ``{}`` for HDF5, which stores none).

    Caffe: Net::CopyTrainedLayersFrom (file side).
    """
    if file_is_hdf5(path):
        return [(name, None, [None if a is None else WeightBlob(a.shape, False, a) for a in arrays])
                for name, arrays in read_hdf5_weights(path)], {}
    net_param = read_binary_proto(path, caffe_pb2.NetParameter())
    if not len(net_param.layer) and not len(net_param.layers):
        raise ModelFileError('%s is a NetParameter without any layer, so it holds no weights; '
                             'expected a trained .caffemodel.' % display_path(path))
    upgrade_net_as_needed(net_param, str(path))
    from ..compress.state import layer_compress_params
    return weights_from_net_param(net_param, str(path)), layer_compress_params(net_param)


def load_weights_file(path):
    """Read trained weights: ``[(layer_name, layer_type or None, [WeightBlob or None, ...])]``.

    Binary .caffemodel (any version, upgraded) or HDF5 .caffemodel.h5 (detected from the
    content, not the name). HDF5 layers have type None and may contain None for a shared
    parameter that was not saved.
    """
    return read_weights_file(path)[0]
