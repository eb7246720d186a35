"""BlobProto <-> numpy, with Caffe's shape rules (shared/spec/caffe.md section 1.2).

* Reading (Caffe: Blob::FromProto): if ANY legacy dim (num/channels/height/width) is
  present the shape is exactly [num, channels, height, width]; otherwise ``shape.dim`` (no
  dims at all: a 0-axis blob of one value). ``double_data`` wins over ``data`` when present.
* Writing (Caffe: Blob::ToProto): ``shape`` (never legacy dims), then ``data`` and, if
  asked, ``diff``, as float32.
* Comparing (Caffe: Blob::ShapeEquals): legacy dims match a target of <= 4 axes
  right-aligned, missing leading axes counting as 1 (1x1x4096x9216 == (4096, 9216));
  modern shapes must be equal.

Values are float32 because Caffe's tools and pycaffe only ever use ``Blob<float>``.
"""
import math

import numpy as np

from ..proto import caffe_pb2
from .errors import BlobProtoError

_LEGACY_DIMS = ('num', 'channels', 'height', 'width')


def blob_shape_from_proto(proto):
    """Return ``(shape tuple, is_legacy)`` of a BlobProto (Caffe: the shape part of FromProto)."""
    if any(proto.HasField(name) for name in _LEGACY_DIMS):
        return (proto.num, proto.channels, proto.height, proto.width), True
    return tuple(proto.shape.dim), False


def shape_equals(target_shape, source_shape, is_legacy):
    """Caffe's Blob::ShapeEquals on plain shapes: right-aligned 4-D rule when ``is_legacy``."""
    target = tuple(int(d) for d in target_shape)
    source = tuple(int(d) for d in source_shape)
    if is_legacy:
        # LegacyShape(i) is 1 for axes the target does not have.
        return len(target) <= 4 and (1,) * (4 - len(target)) + target == source
    return target == source


def legacy_shape_equals(target_shape, proto):
    """True if a blob of ``target_shape`` can receive BlobProto ``proto`` (Caffe: Blob::ShapeEquals)."""
    shape, is_legacy = blob_shape_from_proto(proto)
    return shape_equals(target_shape, shape, is_legacy)


def shape_string(shape):
    """Caffe's Blob::shape_string: "20 1 5 5 (500)"; used in copy/share error messages."""
    shape = tuple(int(d) for d in shape)
    return ''.join('%d ' % d for d in shape) + '(%d)' % math.prod(shape)


def blobproto_to_array(blob, return_diff=False):
    """The data (or diff) of BlobProto ``blob`` as a float32 array of the proto's shape.

    ``double_data`` / ``double_diff`` take precedence over ``data`` / ``diff``, as in Caffe.
    A value count that does not fit the shape raises :class:`BlobProtoError` (a ValueError,
    as pycaffe raises through numpy; e.g. no shape at all with 100 values).

    Caffe: Blob<float>::FromProto; pycaffe: caffe.io.blobproto_to_array.
    """
    shape, is_legacy = blob_shape_from_proto(blob)
    if return_diff:
        what, values = ('double_diff', blob.double_diff) if len(blob.double_diff) else ('diff', blob.diff)
    else:
        what, values = ('double_data', blob.double_data) if len(blob.double_data) else ('data', blob.data)
    count = math.prod(shape)
    if len(values) != count:
        kind = 'legacy num/channels/height/width' if is_legacy else 'shape'
        raise BlobProtoError('BlobProto has %d %s values but its %s %s needs %d'
                             % (len(values), what, kind, list(shape), count))
    # np.array reads the protobuf repeated field without a Python-level loop.
    return np.array(values, dtype=np.float32).reshape(shape)


def varint(value):
    """Protobuf's base-128 varint encoding of an int (what ``qcaffe.io.binary`` reads back)."""
    value &= (1 << 64) - 1  # negative int32 labels are 10-byte varints, as protobuf writes them
    out = bytearray()
    while True:
        low = value & 0x7f
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _packed_float_field(field_number, array):
    # The packed wire encoding of a repeated float field: tag, byte length, raw little-endian
    # float32. Parsing these bytes is ~40x faster than extend() on large blobs and keeps every
    # bit (NaN payloads included).
    raw = np.ascontiguousarray(array, dtype='<f4').tobytes()
    if not raw:
        return b''
    return varint(field_number << 3 | 2) + varint(len(raw)) + raw


_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['data'].number
_DIFF_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['diff'].number


def array_to_blobproto(arr, diff=None, out=None):
    """A BlobProto holding ``arr`` (and ``diff``) as float32 with ``shape.dim`` = arr.shape.

    ``out``: fill this BlobProto (cleared first, e.g. ``layer.blobs.add()``) instead of a new
    one. A 0-d array gets no ``shape`` at all, like Caffe's ToProto of a 0-axis blob.

    Caffe: Blob<float>::ToProto; pycaffe: caffe.io.array_to_blobproto.
    """
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto() if out is None else out
    blob.Clear()
    if arr.ndim:
        blob.shape.dim.extend(int(d) for d in arr.shape)
    payload = _packed_float_field(_DATA_FIELD, arr)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise BlobProtoError('diff has %d values but data has %d (shape %s)'
                                 % (diff.size, arr.size, list(arr.shape)))
        payload += _packed_float_field(_DIFF_FIELD, diff)
    if payload:
        blob.MergeFromString(payload)
    return blob
