"""LMDB databases of Caffe ``Datum`` records: the one place qcaffe reads and writes them.

Caffe equivalent: src/caffe/util/db_lmdb.cpp (``LMDB``/``LMDBCursor``/``LMDBTransaction``),
``DecodeDatumNative`` / ``CVMatToDatum`` of src/caffe/util/io.cpp, and the record layout that
tools/convert_imageset.cpp and examples/mnist/convert_mnist_data.cpp write.

* Keys: ``"%08d" % index`` (convert_mnist_data) or ``"%08d_%s" % (index, filename)``
  (convert_imageset); records are read back in key order (LMDB sorts keys bytewise, which is
  the write order for these zero-padded keys).
* Values: serialized ``Datum`` (channels, height, width, data = uint8 C*H*W pixels, label;
  or float_data; or encoded = true with PNG/JPEG bytes in data).

Batches of records are decoded to one ``(N, C, H, W)`` array with numpy when every record has
the same layout (the common case: all records of a DB come from the same writer), so a training
iteration does not parse 64 protobuf messages one by one.
"""
import os
import threading
import weakref

import numpy as np
from google.protobuf.message import DecodeError

from ..io.blobproto import varint
from ..io.errors import QcaffeError
from ..log import get_logger
from ..proto import caffe_pb2

# Caffe's LMDB_MAP_SIZE is 1 TB (sparse); we start small and double on MDB_MAP_FULL so that
# file systems without sparse files are not asked for a terabyte.
_INITIAL_MAP_SIZE = 1 << 26

log = get_logger()

_DATA_TAG = 0x22   # Datum.data: field 4, length-delimited
_LABEL_TAG = 0x28  # Datum.label: field 5, varint


class DataSourceError(QcaffeError):
    """A data source (LMDB, list file, HDF5 list, image) that cannot be opened or decoded."""


class RecordShapeError(DataSourceError):
    """Records that must have one shape (a batch without cropping, a mean) do not."""


def _lmdb(layer=None):
    try:
        import lmdb
    except ImportError:  # pragma: no cover - lmdb is a core dependency
        raise DataSourceError('%sreading LMDB databases needs the "lmdb" package '
                              '(pip install lmdb)' % _where(layer))
    return lmdb


def _where(layer):
    return 'Layer %r: ' % layer if layer else ''


def key_for(index, name=None):
    """Caffe's keys: ``b"%08d"`` (convert_mnist_data) or ``b"%08d_<name>"`` (convert_imageset)."""
    if name is None:
        return b'%08d' % index
    if isinstance(name, str):
        name = name.encode('utf-8')
    return b'%08d_' % index + name


# --------------------------------------------------------------------- writing
def datum_bytes(array=None, label=0, encoded=None, float_data=None):
    """One serialized Datum.

    ``array``: uint8 ``(C, H, W)`` (or ``(H, W)``) pixels; ``encoded``: PNG/JPEG bytes instead
    (channels/height/width left 0, as convert_imageset --encoded writes them); ``float_data``: a
    float ``(C, H, W)`` array stored in ``float_data``.
    """
    d = caffe_pb2.Datum()
    if encoded is not None:
        d.data = bytes(encoded)
        d.encoded = True
    else:
        src = float_data if float_data is not None else array
        src = np.asarray(src)
        if src.ndim == 2:
            src = src[None]
        if src.ndim != 3:
            raise DataSourceError('a Datum holds a (C, H, W) or (H, W) array, got shape %s'
                                  % (src.shape,))
        d.channels, d.height, d.width = (int(s) for s in src.shape)
        if float_data is not None:
            d.float_data.extend(np.asarray(src, dtype=np.float32).ravel().tolist())
        else:
            if src.dtype != np.uint8:
                raise DataSourceError('Datum.data holds uint8 pixels, got dtype %s (use '
                                      'float_data= for float values)' % src.dtype)
            d.data = np.ascontiguousarray(src).tobytes()
    d.label = int(label)
    return d.SerializeToString()


def encode_datums(images, labels):
    """Serialized Datums of uint8 ``images`` ``(N, C, H, W)`` or ``(N, H, W)`` with ``labels``.

    Returns a uint8 matrix with one record per row when every label is in 0..127 (every record
    then has the same length: built with numpy in one go), else a list of bytes.  Each record
    equals ``datum_bytes(images[i], labels[i])`` byte for byte.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataSourceError('encode_datums needs uint8 images of shape (N, C, H, W) or '
                              '(N, H, W), got %s %s' % (images.dtype, images.shape))
    labels = np.asarray(labels).astype(np.int64).ravel()
    n, c, h, w = images.shape
    if labels.shape[0] != n:
        raise DataSourceError('%d images but %d labels' % (n, labels.shape[0]))
    if n and (labels.min() < 0 or labels.max() >= 0x80):
        # Labels of two or more varint bytes: records differ in length; go through protobuf.
        return [datum_bytes(img, lab) for img, lab in zip(images, labels)]
    size = c * h * w
    template = datum_bytes(np.zeros((c, h, w), np.uint8), 0)
    header = np.frombuffer(template[:len(template) - size - 2], dtype=np.uint8)
    hl = len(header)
    records = np.empty((n, hl + size + 2), dtype=np.uint8)
    records[:, :hl] = header
    records[:, hl:hl + size] = images.reshape(n, size)
    records[:, hl + size] = _LABEL_TAG
    records[:, hl + size + 1] = labels
    return records


def write_lmdb(path, items, count=None, layer=None):
    """Create the LMDB directory ``path`` holding ``items`` ((key, value) pairs, in order).

    Values may be bytes or rows of a uint8 matrix (``encode_datums``).  Like Caffe's NEW mode,
    the directory must not exist already.  Commits every 1000 records as Caffe's tools do; the
    map grows (doubling) when full.  ``count`` is only a size hint.  Returns the record count.
    """
    lmdb = _lmdb(layer)
    if os.path.exists(os.path.join(path, 'data.mdb')):
        raise DataSourceError('LMDB %r already exists; remove it first (Caffe opens output '
                              'databases in NEW mode)' % path)
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(path, map_size=_INITIAL_MAP_SIZE, subdir=True, meminit=False,
                    map_async=True)
    written = 0
    try:
        pending = []

        def commit():
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in pending:
                            txn.put(k, v, append=False)
                    return
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()['map_size'] * 2)

        for key, value in items:
            if isinstance(key, str):
                key = key.encode('utf-8')
            if isinstance(value, np.ndarray):
                value = value.tobytes()
            pending.append((key, value))
            if len(pending) == 1000:
                commit()
                written += len(pending)
                pending = []
        if pending:
            commit()
            written += len(pending)
        env.sync(True)
    finally:
        env.close()
    return written


# --------------------------------------------------------------------- reading
# LMDB forbids opening one environment twice in a process, while a train and a test net (or
# two pycaffe nets) may read the same database: readers share one Environment, ref-counted.
_envs = {}
_envs_lock = threading.Lock()


def _open_shared(lmdb, key, subdir, path, layer):
    with _envs_lock:
        entry = _envs.get(key)
        if entry is None:
            try:
                # lock=False: read-only sources (shared folders) need no writable lock file.
                env = lmdb.open(key, readonly=True, lock=False, subdir=subdir,
                                readahead=False, max_readers=126)
            except lmdb.Error as e:
                raise DataSourceError('%scannot open LMDB %r: %s' % (_where(layer), path, e))
            entry = _envs[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _close_shared(key):
    with _envs_lock:
        entry = _envs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _envs[key]
            entry[0].close()


class LMDBReader(object):
    """Sequential reader of an LMDB with Caffe's wrap-around (Caffe: ``LMDBCursor``).

    ``next_records(n)`` returns the next ``n`` records, restarting from the first record at the
    end of the database and logging "Restarting data prefetching from start." as Caffe does.
    """

    def __init__(self, path, layer=None):
        lmdb = _lmdb(layer)
        self.path = path
        self.layer = layer
        if not os.path.exists(path):
            raise DataSourceError('%sdata source %r does not exist (expected an LMDB '
                                  'directory with data.mdb; paths are relative to the working '
                                  'directory %r)' % (_where(layer), path, os.getcwd()))
        subdir = os.path.isdir(path)
        if subdir and not os.path.exists(os.path.join(path, 'data.mdb')):
            raise DataSourceError('%sdata source %r is a directory without data.mdb: not an '
                                  'LMDB (LevelDB databases are not supported; convert with '
                                  'backend lmdb)' % (_where(layer), path))
        self._key = os.path.realpath(path)
        self._lmdb_error = lmdb.Error
        self.env = _open_shared(lmdb, self._key, subdir, path, layer)
        self.entries = self.env.stat()['entries']
        if self.entries == 0:
            self.close()
            raise DataSourceError('%sLMDB %r holds no records' % (_where(layer), path))
        self.txn = self.env.begin(buffers=False)
        self.cursor = self.txn.cursor()
        self.cursor.first()
        self.index = 0  # position of the cursor in key order (for exact resume)

    def skip(self, n):
        """Advance the cursor by ``n`` records (Caffe's rand_skip), wrapping around."""
        for _ in range(int(n) % self.entries):
            if not self.cursor.next():
                self.cursor.first()
        self.index = (self.index + int(n)) % self.entries

    def seek(self, index):
        """Put the cursor on record number ``index`` (modulo the record count)."""
        self.cursor.first()
        self.index = 0
        self.skip(index)

    def peek(self):
        """``(index, key, value)`` of the record under the cursor, without moving it."""
        try:
            return self.index, self.cursor.key(), self.cursor.value()
        except self._lmdb_error as e:
            raise self.error(self.index, None, 'cannot be read: %s' % e) from None

    def next_records(self, n):
        """``(index of the first, [keys], [values])`` of the next ``n`` records."""
        cursor = self.cursor
        start = self.index
        keys, values = [], []
        try:
            for _ in range(n):
                keys.append(cursor.key())
                values.append(cursor.value())
                if not cursor.next():
                    log.info('Restarting data prefetching from start.')
                    cursor.first()
        except self._lmdb_error as e:
            raise self.error((start + len(values)) % self.entries, None,
                             'cannot be read: %s' % e) from None
        self.index = (self.index + n) % self.entries
        return start, keys, values

    def where(self, index, key):
        """``LMDB 'path', record 17 (key '00000017')``: a record, for messages."""
        return '%sLMDB %r, record %d%s' % (
            _where(self.layer), self.path, index,
            ' (key %r)' % key.decode('utf-8', 'backslashreplace') if key is not None else '')

    def error(self, index, key, problem):
        """A :class:`DataSourceError` naming the database, the record and ``problem``."""
        return DataSourceError('%s %s' % (self.where(index, key), problem))

    def describe(self, start, keys, step=1):
        """``where(i)`` for :func:`decode_datums`: record ``i`` of a batch that took every
        ``step``-th record from ``start`` (``keys``: theirs)."""
        return lambda i: self.where((start + i * step) % self.entries, keys[i])

    def all_values(self):
        """Every value in key order (for loading a small database into memory)."""
        with self.env.begin(buffers=False) as txn:
            return list(txn.cursor().iternext(keys=False, values=True))

    def first_value(self):
        with self.env.begin() as txn:
            c = txn.cursor()
            c.first()
            return c.value()

    def close(self):
        env, self.env = getattr(self, 'env', None), None
        if env is not None:
            txn = getattr(self, 'txn', None)
            if txn is not None:
                try:
                    txn.abort()
                except Exception:
                    pass
            _close_shared(self._key)

    def __del__(self):
        self.close()


def read_lmdb(path, layer=None):
    """All ``(key, value)`` pairs of an LMDB in key order (small databases, tests, tools)."""
    reader = LMDBReader(path, layer)
    try:
        return list(reader.txn.cursor().iternext(keys=True, values=True))
    finally:
        reader.close()


# --------------------------------------------------------------------- decoding
def parse_datum(value):
    d = caffe_pb2.Datum()
    d.ParseFromString(value)
    return d


def _decode_encoded(datum, force_color=False, force_gray=False, layer=None):
    """Decode an encoded Datum (PNG/JPEG bytes) to uint8 (C, H, W), BGR like OpenCV."""
    from .images import decode_image_bytes
    is_color = None
    if force_color:
        is_color = True
    elif force_gray:
        is_color = False
    return decode_image_bytes(datum.data, is_color, what='encoded Datum', layer=layer)


def datum_to_array(datum, force_color=False, force_gray=False, layer=None):
    """One Datum as an array (C, H, W): uint8 pixels, float32 float_data, or decoded image."""
    if datum.encoded:
        return _decode_encoded(datum, force_color, force_gray, layer)
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if min(shape) < 0:
        raise DataSourceError('%sDatum has negative dimensions: channels %d, height %d, '
                              'width %d' % ((_where(layer),) + shape))
    if len(datum.data):
        if len(datum.data) != size:
            raise DataSourceError('%sDatum has %d data bytes but channels*height*width = %d'
                                  % (_where(layer), len(datum.data), size))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise DataSourceError('%sDatum has %d float_data values but channels*height*width '
                              '= %d' % (_where(layer), len(datum.float_data), size))
    if size == 0:   # Caffe: DataTransformer's CHECK_GT(datum_channels, 0) and friends
        raise DataSourceError('%sDatum is empty: channels %d, height %d, width %d and no '
                              'pixels' % ((_where(layer),) + shape))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def _fast_layout(first):
    """(prefix, label_len, suffix) of a plain uint8 Datum record, or None."""
    d = parse_datum(first)
    if d.encoded or not len(d.data):
        return None
    size = len(d.data)
    head = caffe_pb2.Datum(channels=d.channels, height=d.height, width=d.width)
    prefix = head.SerializeToString() + bytes([_DATA_TAG]) + varint(size)
    if not first.startswith(prefix):
        return None
    tail = first[len(prefix) + size:]
    if not tail or tail[0] != _LABEL_TAG:
        return None
    k = 1
    while k < len(tail) and tail[k] & 0x80:
        k += 1
    label_len = k  # bytes of the varint after the tag
    return d, prefix, size, label_len, tail[1 + label_len:]


def decode_uniform(values):
    """Decode plain uint8 Datums that share one layout with numpy alone, or return None.

    ``(data (N, C, H, W) uint8, labels int64 (N,))`` where every record has the same length,
    the same channels/height/width header and a label field (varints checked byte by byte),
    as every writer of such databases produces; ``data`` is a strided view into one buffer.
    """
    n = len(values)
    if n == 0:
        return None
    first = values[0]
    length = len(first)
    if not all(len(v) == length for v in values):
        return None
    layout = _fast_layout(first)
    if layout is None:
        return None
    d, prefix, size, label_len, suffix = layout
    p = len(prefix)
    rec = np.frombuffer(b''.join(values), dtype=np.uint8).reshape(n, length)
    lab = rec[:, p + size + 1:p + size + 1 + label_len]
    ok = ((rec[:, :p] == np.frombuffer(prefix, np.uint8)).all()
          and (rec[:, p + size] == _LABEL_TAG).all()
          and (rec[:, p + size + 1 + label_len:] == np.frombuffer(suffix, np.uint8)).all()
          and (lab[:, :-1] >= 0x80).all() and (lab[:, -1] < 0x80).all())
    if not ok:
        return None
    shifts = np.arange(label_len, dtype=np.uint64) * np.uint64(7)
    labels = ((lab & 0x7f).astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
    labels = labels.view(np.int64).astype(np.int32).astype(np.int64)
    return rec[:, p:p + size].reshape(n, d.channels, d.height, d.width), labels


def decode_datum(value, force_color=False, force_gray=False, where='record'):
    """``(array (C, H, W), label)`` of one serialized Datum; errors name ``where``."""
    if not len(value):
        raise DataSourceError('%s is empty (0 bytes), not a Datum' % where)
    try:
        datum = parse_datum(value)
    except DecodeError as e:
        raise DataSourceError('%s is not a Datum (%d bytes; protobuf: %s)'
                              % (where, len(value), e)) from None
    try:
        return datum_to_array(datum, force_color, force_gray), datum.label
    except QcaffeError as e:
        raise type(e)('%s: %s' % (where, e)) from None


def decode_datums(values, force_color=False, force_gray=False, layer=None, ragged=False,
                  where=None):
    """Decode serialized Datums to ``(data (N, C, H, W), labels int64 (N,))``.

    Plain uint8 records of one layout are decoded together with numpy (``decode_uniform``: no
    per-record protobuf parse); anything else (float_data, encoded images, mixed layouts)
    record by record.  Records of different shapes are an error unless ``ragged``: then
    ``data`` is a list of (C, H, W) arrays (a cropping transform can still make one batch of
    them, as in Caffe).  ``where(i)`` names record ``i`` in errors (its database, index and
    key: :meth:`LMDBReader.describe`).
    """
    n = len(values)
    if n == 0:
        raise DataSourceError('%sno records to decode' % _where(layer))
    fast = decode_uniform(values)
    if fast is not None:
        return fast
    if where is None:
        where = lambda i: '%srecord %d of %d' % (_where(layer), i, n)  # noqa: E731
    arrays, labels = [], np.empty(n, dtype=np.int64)
    for i, v in enumerate(values):
        arrays.append(None)
        arrays[i], labels[i] = decode_datum(v, force_color, force_gray, where(i))
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1 and not ragged:
        other = next(i for i, s in enumerate(shapes) if s != shapes[0])
        raise RecordShapeError('%s has shape %s but %s has %s'
                               % (where(other), shapes[other], where(0), shapes[0]))
    if ragged and len(set(shapes)) != 1:
        return arrays, labels
    return np.stack(arrays), labels


class DecodedDB(object):
    """A whole database of plain uint8 Datums decoded into memory (read-only, shared).

    ``data``: uint8 (N, C, H, W); ``labels``: float32 (N,), in key order.
    """
    __slots__ = ('data', 'labels', '__weakref__')

    def __init__(self, data, labels):
        self.data = np.ascontiguousarray(data)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.data.flags.writeable = False  # shared by every layer reading the same source
        self.labels.flags.writeable = False


# Nets on one database (a train net and its test net, pycaffe scripts rebuilding nets) share
# one decoded copy while any of them lives; a rewritten database (new mtime/size) is reloaded.
_decoded = weakref.WeakValueDictionary()
_decoded_lock = threading.Lock()


def load_in_memory(reader):
    """The database of ``reader`` as a shared :class:`DecodedDB`, or None when its records
    are not all plain uint8 Datums of one layout (then it must be streamed)."""
    path = reader.path
    st = os.stat(os.path.join(path, 'data.mdb') if os.path.isdir(path) else path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    with _decoded_lock:
        hit = _decoded.get(key)
        if hit is None:
            fast = decode_uniform(reader.all_values())
            if fast is None:
                return None
            hit = _decoded[key] = DecodedDB(*fast)
        return hit
