"""Blob: an N-d float32 array with data and diff, like Caffe's ``Blob<float>``.

Memory follows Caffe's ``SyncedMemory``: each buffer has a host (numpy) copy and, in GPU
mode, a device (cupy) copy, and a *head* saying which one is current.  Reading one side
copies from the other only when the head is elsewhere; asking for a mutable side moves the head
there.  So ``blob.data[...] = x`` from Python (host, mutable) is seen by the next GPU forward,
and arrays taken from ``blob.data`` stay live views: the buffer is only reallocated when a
reshape needs more room than it has (Caffe's capacity rule).

Layer code uses ``dev_data`` / ``dev_diff`` (read) and ``mutable_dev_data`` /
``mutable_dev_diff`` (write): arrays in the current mode's memory (numpy on CPU, so on CPU
they are exactly the host arrays).  Python users use ``data`` and ``diff`` (host, mutable), as
in pycaffe.
"""
import numpy as np

from . import backend
from .io.errors import QcaffeError

_UNINIT, _HOST, _DEVICE, _SYNCED = 0, 1, 2, 3

# Caffe: blob.hpp kMaxBlobAxes, and Blob::Reshape's CHECK that the count fits an int.
MAX_BLOB_AXES = 32
INT_MAX = 2 ** 31 - 1


class BlobShapeError(QcaffeError, ValueError):
    """A shape Caffe's ``Blob::Reshape`` refuses (negative dim, more than 32 axes, more than
    INT_MAX elements); ``blob`` is the blob being reshaped (a Net names it)."""

    def __init__(self, message, blob=None):
        super().__init__(message)
        self.blob = blob


class BlobAllocationError(QcaffeError, MemoryError):
    """The memory of a blob buffer could not be allocated (Caffe: SyncedMemory's
    ``CHECK(*ptr) << "host allocation of size ... failed"``); ``buffer`` is the
    :class:`SyncedArray` (a Net names the blob owning it), ``nbytes`` the size asked for."""

    def __init__(self, message, buffer, nbytes):
        super().__init__(message)
        self.buffer = buffer
        self.nbytes = nbytes


def format_bytes(n):
    """``12.2 GiB (13107200000 bytes)``: a size for messages."""
    for unit, size in (('TiB', 1 << 40), ('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
        if n >= size:
            return '%.3g %s (%d bytes)' % (n / size, unit, n)
    return '%d bytes' % n


class SyncedArray(object):
    """A flat float32 buffer with a host and a device copy (Caffe: SyncedMemory).

    ``shape`` is the blob shape that asked for this size, for messages only.
    """

    __slots__ = ('host', 'device', 'head', 'size', 'shape')

    def __init__(self, size, shape=None):
        self.size = int(size)
        self.shape = shape
        self.host = None
        self.device = None
        self.head = _UNINIT

    def _allocate(self, make):
        try:
            return make(self.size, dtype=np.float32)
        except MemoryError as e:
            nbytes = self.size * 4
            where = 'host' if make in (np.zeros, np.empty) else 'device'
            shape = (' of shape %s' % ' '.join(str(d) for d in self.shape)
                     if self.shape is not None else '')
            raise BlobAllocationError('cannot allocate %s of %s memory for a blob%s (%d float32 '
                                      'elements): %s' % (format_bytes(nbytes), where, shape,
                                                         self.size, e), self, nbytes) from None

    def host_array(self, mutable):
        if self.head == _UNINIT:
            self.host = self._allocate(np.zeros)
            self.head = _HOST
        elif self.head == _DEVICE:
            if self.host is None:
                self.host = self._allocate(np.empty)
            self.host[...] = self.device.get()
            self.head = _SYNCED
        if mutable:
            self.head = _HOST
        return self.host

    def device_array(self, mutable):
        cp = backend.cupy_module()
        if self.head == _UNINIT:
            self.device = self._allocate(cp.zeros)
            self.head = _DEVICE
        elif self.head == _HOST:
            if self.device is None:
                self.device = self._allocate(cp.empty)
            self.device.set(self.host)
            self.head = _SYNCED
        if mutable:
            self.head = _DEVICE
        return self.device

    def adopt(self, flat):
        """Keep this buffer in ``flat`` from now on (a 1-D float32 numpy or cupy array of
        ``size`` elements, typically a slice of a larger buffer), contents preserved.

        Caffe: ``SyncedMemory::set_cpu_data`` / ``set_gpu_data``, which parallel.cpp's
        ``apply_buffers`` uses to lay all gradients out in one buffer for the all-reduce.
        Blobs sharing this buffer (``share_diff``) follow, as they hold this object.
        """
        if flat.shape != (self.size,):
            raise ValueError('adopt needs a flat array of %d elements, got shape %s'
                             % (self.size, flat.shape))
        if isinstance(flat, np.ndarray):
            flat[...] = self.host_array(False)
            self.host, self.head = flat, _HOST
        else:
            flat[...] = self.device_array(False)
            self.device, self.head = flat, _DEVICE


def _as_shape(args, blob=None):
    """The shape of ``Blob.reshape(*args)``, with Caffe's ``Blob::Reshape`` CHECKs."""
    if len(args) == 1 and not np.isscalar(args[0]):
        args = tuple(args[0])
    shape = tuple(int(d) for d in args)
    if len(shape) > MAX_BLOB_AXES:
        raise BlobShapeError('a blob has at most %d axes (Caffe: kMaxBlobAxes), got %d: %s'
                             % (MAX_BLOB_AXES, len(shape), shape), blob)
    count = 1
    for d in shape:
        if d < 0:
            raise BlobShapeError('blob dimensions must be >= 0, got %s' % (shape,), blob)
        if count != 0 and d > INT_MAX // count:
            raise BlobShapeError(
                'blob shape %s has %d elements; Caffe\'s Blob::Reshape allows at most INT_MAX '
                '= %d (blob size exceeds INT_MAX)'
                % (' '.join(str(x) for x in shape), int(np.prod(shape, dtype=object)), INT_MAX),
                blob)
        count *= d
    return shape


def _count_range(shape, start=0, end=None):
    end = len(shape) if end is None else end
    c = 1
    for d in shape[start:end]:
        c *= d
    return c


class BlobCount(int):
    """An ``int`` (the blob's total count) that is also callable as ``count(start, end)``.

    pycaffe exposes ``blob.count`` as an int property while Caffe's C++ (and qcaffe layer
    code) calls ``count()`` / ``count(start, end)``; this keeps both spellings valid.
    Arithmetic on it gives plain ints.
    """

    def __new__(cls, value, shape):
        self = int.__new__(cls, value)
        self._shape = shape
        return self

    def __call__(self, start=0, end=None):
        return _count_range(self._shape, start, end)

    def __repr__(self):
        return int.__repr__(self)


class BlobVec(list):
    """A layer's list of learnable blobs (pycaffe ``layer.blobs``) with ``add_blob(*dims)``."""

    def add_blob(self, *dims):
        """Append a new zero-filled blob of shape ``dims`` (pycaffe ``BlobVec.add_blob``)."""
        blob = Blob(*dims)
        self.append(blob)
        return blob


class Blob(object):
    """Caffe: ``Blob<float>``.  ``Blob(shape)`` or ``Blob()`` (empty, 0 axes... count 0)."""

    def __init__(self, *shape):
        self._shape = ()
        self._count = 0
        self._capacity = 0
        self._data = SyncedArray(0)
        self._diff = SyncedArray(0)
        self._quantize = None  # extra buffer of compressed blobs (uL2Q), created on demand
        # the shaped views layer code asks for many times a step: [(flat, shape, view)] per
        # data/diff x host/device (see _dev_view)
        self._dev_views = [None, None, None, None]
        self.compress_state = None      # QuantState of a compressed blob (qcaffe.compress)
        self.quantize_from_file = False  # quantize buffer came with loaded weights
        if shape:
            self.reshape(*shape)

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        """Caffe: ``Blob::Reshape``; reallocates only when the new count exceeds capacity."""
        shape = _as_shape(shape, self)
        count = 1
        for d in shape:
            count *= d
        self._shape = shape
        self._count = count
        if count > self._capacity:
            self._capacity = count
            self._data = SyncedArray(count, shape)
            self._diff = SyncedArray(count, shape)
            if self._quantize is not None:
                self._quantize = SyncedArray(count, shape)
        return self

    def owns_buffer(self, buffer):
        """True if ``buffer`` (a :class:`SyncedArray`) is this blob's data, diff or quantize."""
        return buffer is self._data or buffer is self._diff or buffer is self._quantize

    def reshape_like(self, other):
        return self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count_all(self):
        return self._count

    @property
    def count(self):
        """Total element count (pycaffe ``blob.count``, an int).

        The value is a :class:`BlobCount`, an ``int`` that can also be called like Caffe's
        ``Blob::count(start, end)``, so both ``blob.count`` and ``blob.count(1)`` work.
        Prefer ``count_range(start, end)`` in new code for a sub-range of axes.
        """
        return BlobCount(self._count, self._shape)

    def count_range(self, start=0, end=None):
        """Caffe: ``Blob::count(start, end)``: product of the dims in ``[start, end)``."""
        return _count_range(self._shape, start, end)

    @property
    def num_axes(self):
        return len(self._shape)

    def canonical_axis_index(self, axis):
        """Caffe: ``CanonicalAxisIndex``; negative axes count from the end."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ValueError('axis %d out of range for a %d-axis blob of shape %s'
                             % (axis, n, self.shape_string()))
        return axis + n if axis < 0 else axis

    def legacy_shape(self, index):
        """Caffe: ``LegacyShape``; axes beyond the blob's count as 1 (num/channels/height/width)."""
        if self.num_axes > 4:
            raise ValueError('legacy accessors need a blob of at most 4 axes, this one has %d'
                             % self.num_axes)
        if index >= self.num_axes or index < -self.num_axes:
            return 1
        return self._shape[index]

    num = property(lambda self: self.legacy_shape(0))
    channels = property(lambda self: self.legacy_shape(1))
    height = property(lambda self: self.legacy_shape(2))
    width = property(lambda self: self.legacy_shape(3))

    def shape_string(self):
        return ' '.join(str(d) for d in self._shape) + ' (%d)' % self._count

    # ---------------------------------------------------------------- buffers
    def _view(self, flat):
        return flat[:self._count].reshape(self._shape)

    def _dev_view(self, flat, slot):
        """``_view(flat)``, built once per buffer and shape: layer code asks for the same views
        ~100 times a LeNet step and building one costs ~1.5 us.  Only the layer-side accessors
        (``dev_*``) use it; ``data``/``diff`` hand users a fresh view they may reshape."""
        cached = self._dev_views[slot]
        if cached is not None and cached[0] is flat and cached[1] is self._shape:
            return cached[2]
        view = flat[:self._count].reshape(self._shape)
        self._dev_views[slot] = (flat, self._shape, view)
        return view

    @property
    def data(self):
        """Host data, mutable (pycaffe ``blob.data``): writes are seen by the next forward."""
        return self._view(self._data.host_array(True))

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        """Host diff, mutable (pycaffe ``blob.diff``)."""
        return self._view(self._diff.host_array(True))

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def cpu_data(self):
        """Host data for reading (Caffe: ``cpu_data``); does not move the head."""
        return self._view(self._data.host_array(False))

    def cpu_diff(self):
        return self._view(self._diff.host_array(False))

    @property
    def dev_data(self):
        """Data in the current mode's memory, for reading (Caffe: ``cpu_data``/``gpu_data``)."""
        if backend._state['mode'] == backend.CPU:
            return self._dev_view(self._data.host_array(False), 0)
        return self._dev_view(self._data.device_array(False), 2)

    @property
    def dev_diff(self):
        if backend._state['mode'] == backend.CPU:
            return self._dev_view(self._diff.host_array(False), 1)
        return self._dev_view(self._diff.device_array(False), 3)

    @property
    def mutable_dev_data(self):
        """Data in the current mode's memory, for writing (Caffe: ``mutable_{cpu,gpu}_data``)."""
        if backend._state['mode'] == backend.CPU:
            return self._dev_view(self._data.host_array(True), 0)
        return self._dev_view(self._data.device_array(True), 2)

    @property
    def mutable_dev_diff(self):
        if backend._state['mode'] == backend.CPU:
            return self._dev_view(self._diff.host_array(True), 1)
        return self._dev_view(self._diff.device_array(True), 3)

    # raw device pointers (pycaffe GPU builds: ``_gpu_data_ptr`` / ``_gpu_diff_ptr``)
    @property
    def _gpu_data_ptr(self):
        return int(self._data.device_array(True).data.ptr)

    @property
    def _gpu_diff_ptr(self):
        return int(self._diff.device_array(True).data.ptr)

    # quantize: the third buffer of uL2Q-compressed blobs (BlobProto field 14)
    @property
    def has_quantize(self):
        return self._quantize is not None

    def _quantize_buffer(self):
        if self._quantize is None or self._quantize.size < self._count:
            self._quantize = SyncedArray(max(self._capacity, self._count), self._shape)
        return self._quantize

    @property
    def quantize(self):
        """Host view of the quantized copy of the data (Quantization-caffe ``blob.quantize``).

        ``None`` for a blob that is not compressed (QC returns zeros; compression.md 1(g).11).
        """
        if self._quantize is None:
            return None
        return self._view(self._quantize_buffer().host_array(True))

    @quantize.setter
    def quantize(self, value):
        self.set_quantize(value)

    def set_quantize(self, value):
        """Write the quantize buffer (created if needed)."""
        self._view(self._quantize_buffer().host_array(True))[...] = value

    def cpu_quantize(self):
        return self._view(self._quantize_buffer().host_array(False))

    def clear_quantize(self):
        """Forget the quantize buffer and compression state (the blob is plain again)."""
        self._quantize = None
        self.compress_state = None
        self.quantize_from_file = False

    @property
    def dev_quantize(self):
        buf = self._quantize_buffer()
        if backend._state['mode'] == backend.CPU:
            return self._view(buf.host_array(False))
        return self._view(buf.device_array(False))

    @property
    def mutable_dev_quantize(self):
        buf = self._quantize_buffer()
        if backend._state['mode'] == backend.CPU:
            return self._view(buf.host_array(True))
        return self._view(buf.device_array(True))

    # ---------------------------------------------------------------- sharing
    def share_data(self, other):
        """Caffe: ``ShareData``: this blob's data becomes ``other``'s buffer (counts must match)."""
        if self._count != other._count:
            raise ValueError('share_data needs equal counts: %s vs %s'
                             % (self.shape_string(), other.shape_string()))
        self._data = other._data
        self._capacity = min(self._capacity, other._capacity) or other._capacity

    def share_diff(self, other):
        """Caffe: ``ShareDiff``."""
        if self._count != other._count:
            raise ValueError('share_diff needs equal counts: %s vs %s'
                             % (self.shape_string(), other.shape_string()))
        self._diff = other._diff

    def adopt_diff(self, flat):
        """Keep the diff in ``flat`` from now on (see :meth:`SyncedArray.adopt`); the data
        parallel trainer points every learnable diff into one gradient buffer this way."""
        self._diff.adopt(flat)

    def shares_data_with(self, other):
        return self._data is other._data

    # ------------------------------------------------------------------- math
    def update(self):
        """Caffe: ``Blob::Update``: data -= diff."""
        d = self.mutable_dev_data
        d -= self.dev_diff

    def asum_data(self):
        x = backend.get_array_module(self.dev_data)
        return float(x.abs(self.dev_data).sum(dtype=np.float64))

    def asum_diff(self):
        x = backend.get_array_module(self.dev_diff)
        return float(x.abs(self.dev_diff).sum(dtype=np.float64))

    def sumsq_data(self):
        d = self.dev_data.ravel()
        return float(d.dot(d))

    def sumsq_diff(self):
        d = self.dev_diff.ravel()
        return float(d.dot(d))

    def scale_diff(self, factor):
        d = self.mutable_dev_diff
        d *= factor

    # ------------------------------------------------------------------ proto
    def from_proto(self, proto, reshape=True):
        """Caffe: ``Blob::FromProto``.  Legacy num/channels/height/width give exactly 4 axes."""
        legacy = any(proto.HasField(f) for f in ('num', 'channels', 'height', 'width'))
        if legacy:
            shape = (proto.num, proto.channels, proto.height, proto.width)
        else:
            shape = tuple(proto.shape.dim)
        if reshape:
            self.reshape(shape)
        elif int(np.prod(shape, dtype=np.int64)) != self._count:
            raise ValueError('blob proto of shape %s does not fit blob %s'
                             % (shape, self.shape_string()))
        if len(proto.double_data) > 0:
            self.data[...] = np.asarray(proto.double_data, dtype=np.float64).reshape(self._shape)
        elif len(proto.data) > 0:
            self.data[...] = np.asarray(proto.data, dtype=np.float32).reshape(self._shape)
        if len(proto.double_diff) > 0:
            self.diff[...] = np.asarray(proto.double_diff, dtype=np.float64).reshape(self._shape)
        elif len(proto.diff) > 0:
            self.diff[...] = np.asarray(proto.diff, dtype=np.float32).reshape(self._shape)
        from .compress.state import load_extras, read_proto_extras
        load_extras(self, *read_proto_extras(proto))  # uL2Q quantize + alpha/delta/...
        return self

    def to_proto(self, proto=None, write_diff=False):
        """Caffe: ``Blob::ToProto``: always ``shape``, then data, diff only when asked."""
        from .proto import caffe_pb2
        if proto is None:
            proto = caffe_pb2.BlobProto()
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        proto.data.extend(self.cpu_data().ravel().tolist())
        if write_diff:
            proto.diff.extend(self.cpu_diff().ravel().tolist())
        from .compress.state import write_proto_extras
        write_proto_extras(self, proto)  # uL2Q quantize + alpha/delta/fixedpos/maxbits
        return proto

    def __repr__(self):
        return 'Blob(%s)' % self.shape_string()
