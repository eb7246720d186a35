"""Data layers: Input, DummyData, MemoryData, HDF5Data, HDF5Output, ImageData, Data.

Caffe equivalents: src/caffe/layers/{input,dummy_data,memory_data,hdf5_data,hdf5_output,
image_data,data,base_data}_layer.cpp.  Data and ImageData load batches on a background thread
(:mod:`qcaffe.data.prefetch`, Caffe's BasePrefetchingDataLayer) and transform them with
:class:`qcaffe.data.DataTransformer`; the forward pass only copies a ready batch into the tops.
Label tops are 1-D ``(batch_size,)`` float32, as in Caffe.

Data-parallel training (``qcaffe.distributed``): in the TRAIN phase, Data and HDF5Data layers
of solver ``solver_rank`` of ``solver_count`` read the records ``rank, rank + count,
rank + 2*count, ...`` of their source (Caffe: ``DataLayer::Skip`` / ``HDF5DataLayer::Skip``,
record by record), so the solvers see disjoint data and one iteration covers the records one
solver would read at ``iter_size: solver_count``.  Their read position is that of the whole
stream (the same on every rank), so a snapshot resumes at any number of ranks.  ImageData and
MemoryData do not stride (as in Caffe).
"""
import os

import numpy as np

from .. import backend, config
from ..data.lmdb_io import DataSourceError, LMDBReader, decode_datums, load_in_memory
from ..data.prefetch import Prefetcher
from ..data.transformer import DataTransformer
from ..fillers import fill_array
from ..log import get_logger
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer

log = get_logger()


def _set_top(blob, host_array):
    """Copy a host batch into a top blob (reshaping it), on the current device."""
    if blob.shape != host_array.shape:
        blob.reshape(host_array.shape)
    blob.mutable_dev_data[...] = backend.to_device(host_array)


def _blob_shape(shape_proto):
    return tuple(int(d) for d in shape_proto.dim)


def _share(layer):
    """(stride, offset) of this solver's records: (solver_count, solver_rank) in TRAIN,
    (1, 0) in TEST (Caffe: only the root solver tests, over all the data)."""
    if layer.phase == caffe_pb2.TRAIN:
        return backend.solver_count(), backend.solver_rank()
    return 1, 0


# ----------------------------------------------------------------------------- Input
@register_layer('Input')
class InputLayer(Layer):
    """Caffe: ``InputLayer``: shapes its tops from ``input_param.shape``; data is set by the user.

    No shape: the tops are left for the user to reshape; one shape: used for every top; else
    one shape per top.  Reshape and Forward do nothing, so user reshapes persist.
    """
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise LayerError('Layer %r: input_param.shape must be given 0, 1 or %d (number of '
                             'tops) times, got %d' % (self.name, len(top), len(shapes)))
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape(_blob_shape(shapes[0 if len(shapes) == 1 else i]))

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        pass


# ------------------------------------------------------------------------- DummyData
@register_layer('DummyData')
class DummyDataLayer(Layer):
    """Caffe: ``DummyDataLayer``: tops of ``shape`` (or legacy num/channels/height/width) filled
    by ``data_filler`` (none: constant 0; one: for every top; else one per top).

    Constant fillers run once at setup, so values the user writes persist; other fillers
    refill on every forward.
    """
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise LayerError('Layer %r: dummy_data_param.data_filler must be given 0, 1 or %d '
                             '(number of tops) times, got %d' % (self.name, n, nf))
        legacy = [p.num, p.channels, p.height, p.width]
        has_legacy = any(len(f) for f in legacy)
        if has_legacy and len(p.shape):
            raise LayerError('Layer %r: dummy_data_param takes either shape or the legacy '
                             'num/channels/height/width, not both' % self.name)
        if has_legacy:
            for name, f in zip(('num', 'channels', 'height', 'width'), legacy):
                if len(f) not in (1, n):
                    raise LayerError('Layer %r: dummy_data_param.%s must be given 1 or %d '
                                     '(number of tops) times, got %d'
                                     % (self.name, name, n, len(f)))
            shapes = [tuple(int(f[0 if len(f) == 1 else i]) for f in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise LayerError('Layer %r: dummy_data_param.shape must be given 1 or %d '
                                 '(number of tops) times, got %d' % (self.name, n, len(p.shape)))
            shapes = [_blob_shape(p.shape[0 if len(p.shape) == 1 else i]) for i in range(n)]
        if nf == 0:
            fillers = [caffe_pb2.FillerParameter(type='constant', value=0)] * n
        else:
            fillers = [p.data_filler[0 if nf == 1 else i] for i in range(n)]
        self.fillers = fillers
        self.refill = [f.type != 'constant' for f in fillers]
        for t, s, f in zip(top, shapes, fillers):
            t.reshape(s)
            t.mutable_dev_data[...] = backend.to_device(fill_array(f, s))

    def reshape(self, bottom, top):
        pass  # Caffe: tops are shaped once, in LayerSetUp

    def forward_impl(self, bottom, top):
        for t, f, refill in zip(top, self.fillers, self.refill):
            if refill:
                t.mutable_dev_data[...] = backend.to_device(fill_array(f, t.shape))

    def backward_impl(self, top, propagate_down, bottom):
        pass


# ------------------------------------------------------------------------ MemoryData
@register_layer('MemoryData')
class MemoryDataLayer(Layer):
    """Caffe: ``MemoryDataLayer``: serves batches of arrays handed over by ``reset`` (pycaffe
    ``net.set_input_arrays(data, labels)``), walking through them and wrapping around.

    The arrays are referenced, not copied (as Caffe), so later writes to them are seen.
    """
    exact_num_bottom = 0
    exact_num_top = 2
    per_rank_state = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        if self.batch_size <= 0 or min(self.item_shape) <= 0:
            raise LayerError('Layer %r: memory_data_param batch_size, channels, height and '
                             'width must be specified and positive (got %d, %d, %d, %d)'
                             % ((self.name, self.batch_size) + self.item_shape))
        self.data = None
        self.labels = None
        self.n = 0
        self.pos = 0
        top[0].reshape((self.batch_size,) + self.item_shape)
        top[1].reshape(self.batch_size)

    def reshape(self, bottom, top):
        pass

    def reset(self, data, labels, n):
        """Caffe: ``MemoryDataLayer::Reset(data, labels, n)``; ``n`` a multiple of batch_size."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        n = int(n)
        if n % self.batch_size:
            raise LayerError('Layer %r: the number of items (%d) must be a multiple of the '
                             'batch size (%d)' % (self.name, n, self.batch_size))
        if data.shape[1:] != self.item_shape or data.shape[0] < n:
            raise LayerError('Layer %r: data of shape %s does not fit memory_data_param '
                             '(N, %d, %d, %d) with N >= %d'
                             % ((self.name, data.shape) + self.item_shape + (n,)))
        if labels.size < n:
            raise LayerError('Layer %r: %d labels for %d items' % (self.name, labels.size, n))
        self.data = data.reshape(data.shape[0], -1)
        self.labels = labels.reshape(labels.shape[0], -1)[:, 0] if labels.ndim > 1 else labels
        self.n = n
        self.pos = 0

    def set_input_arrays(self, data, labels):
        """``reset(data, labels, len(data))``; labels of shape (N,) or (N, 1, 1, 1)."""
        self.reset(data, labels, len(data))

    def extra_state(self):
        return {'pos': np.array(self.pos)}

    def load_extra_state(self, state):
        self.pos = int(state['pos']) % max(self.n, 1)

    def set_batch_size(self, new_size):
        """Caffe: ``MemoryDataLayer::set_batch_size`` (pycaffe does not expose it)."""
        if self.data is not None and self.n % int(new_size):
            raise LayerError('Layer %r: batch size %d does not divide the %d items set'
                             % (self.name, new_size, self.n))
        self.batch_size = int(new_size)

    def forward_impl(self, bottom, top):
        if self.data is None:
            raise LayerError('Layer %r: MemoryData needs its arrays before the first forward: '
                             'call net.set_input_arrays(data, labels) (Caffe: Reset)'
                             % self.name)
        b = self.batch_size
        _set_top(top[0], self.data[self.pos:self.pos + b].reshape((b,) + self.item_shape)
                 .astype(np.float32, copy=False))
        _set_top(top[1], self.labels[self.pos:self.pos + b].astype(np.float32, copy=False))
        self.pos = (self.pos + b) % self.n

    def backward_impl(self, top, propagate_down, bottom):
        pass


# -------------------------------------------------------------------------- HDF5
def _h5py(layer, what):
    try:
        import h5py
    except ImportError:
        raise LayerError('Layer %r: %s needs the h5py package, which is not installed '
                         '(pip install h5py, or pip install qcaffe[hdf5])' % (layer, what))
    return h5py


def _read_list_file(path, layer, what):
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f]
    except OSError as e:
        raise DataSourceError('Layer %r: cannot read %s %r: %s (paths are relative to the '
                              'working directory %r)' % (layer, what, path, e.strerror,
                                                         os.getcwd()))
    return [(i + 1, ln) for i, ln in enumerate(lines) if ln]


@register_layer('HDF5Data')
class HDF5DataLayer(Layer):
    """Caffe: ``HDF5DataLayer``: ``hdf5_data_param.source`` is a text file listing .h5 files;
    each top reads the dataset of the same name; rows are served in order (or shuffled with
    ``shuffle``), moving to the next file at the end of one and looping at the end of the list.
    """
    exact_num_bottom = 0
    min_top = 1
    per_rank_state = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        self.h5py = _h5py(self.name, 'HDF5Data')
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise LayerError('Layer %r: hdf5_data_param.batch_size must be positive, got %d'
                             % (self.name, self.batch_size))
        self.files = [ln for _, ln in _read_list_file(p.source, self.name,
                                                       'hdf5_data_param.source list')]
        if not self.files:
            raise DataSourceError('Layer %r: source %r must list at least one HDF5 file'
                                  % (self.name, p.source))
        log.info('Number of HDF5 files: %d', len(self.files))
        self.names = list(self.layer_param.top)
        self.shuffle = bool(p.shuffle)
        self.stride, self.offset = _share(self)
        if self.shuffle and self.stride > 1:
            # the ranks would shuffle differently (each has its own random stream), so their
            # every-N-th rows would overlap
            raise LayerError('Layer %r: hdf5_data_param.shuffle is not supported with %d '
                             'data-parallel solvers; shuffle the HDF5 files beforehand or use '
                             'a Data layer' % (self.name, self.stride))
        self.rng = np.random.RandomState(int(backend.rng().randint(0, 2 ** 31 - 1)))
        self.file_perm = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_perm)
        self.current_file = 0
        self._load(self.file_perm[0])
        for t, name in zip(top, self.names):
            t.reshape((self.batch_size,) + self.arrays[name].shape[1:])

    def _load(self, index):
        path = self.files[index]
        if not os.path.isfile(path):
            raise DataSourceError('Layer %r: HDF5 file %r (listed in %r) does not exist'
                                  % (self.name, path, self.layer_param.hdf5_data_param.source))
        log.info('Loading HDF5 file: %s', path)
        arrays = {}
        try:
            with self.h5py.File(path, 'r') as f:
                for name in self.names:
                    if name not in f:
                        raise DataSourceError('Layer %r: HDF5 file %r has no dataset %r (top '
                                              'names must be dataset names; it has %s)'
                                              % (self.name, path, name,
                                                 ', '.join(sorted(f.keys())) or 'none'))
                    ds = f[name]
                    if ds.ndim < 1:
                        raise DataSourceError('Layer %r: dataset %r of %r is a scalar; rows '
                                              'are needed' % (self.name, name, path))
                    arrays[name] = np.asarray(ds[()], dtype=np.float32)
        except OSError as e:
            raise DataSourceError('Layer %r: cannot read HDF5 file %r: %s' % (self.name, path, e))
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1:
            raise DataSourceError('Layer %r: datasets of %r have different numbers of rows: %s'
                                  % (self.name, path,
                                     {k: a.shape[0] for k, a in arrays.items()}))
        self.rows = rows.pop()
        if self.rows == 0:
            raise DataSourceError('Layer %r: HDF5 file %r has no rows' % (self.name, path))
        self.arrays = arrays
        self.data_perm = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.data_perm)
        self.current_row = 0

    def _next_file(self):
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_perm)
                log.info('Looping around to first file.')
            self._load(self.file_perm[self.current_file])
        else:
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.data_perm)

    def extra_state(self):
        """File, row, permutations and random state: a resumed run continues exactly."""
        _, keys, pos, has_gauss, gauss = self.rng.get_state()
        return {'file_index': np.array(self.current_file), 'row': np.array(self.current_row),
                'file_perm': self.file_perm.copy(), 'data_perm': self.data_perm.copy(),
                'rng_keys': np.asarray(keys), 'rng_pos': np.array([pos, has_gauss]),
                'rng_gauss': np.array(gauss)}

    def load_extra_state(self, state):
        self.file_perm = np.asarray(state['file_perm'], np.int64)
        self.current_file = int(state['file_index'])
        self._load(self.file_perm[self.current_file])
        self.data_perm = np.asarray(state['data_perm'], np.int64)
        self.current_row = int(state['row'])
        pos, has_gauss = (int(x) for x in state['rng_pos'])
        self.rng.set_state(('MT19937', np.asarray(state['rng_keys'], np.uint32), pos,
                            has_gauss, float(state['rng_gauss'])))

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        b = self.batch_size * self.stride     # this solver keeps every stride-th row
        outs = [np.empty((b,) + self.arrays[n].shape[1:], np.float32) for n in self.names]
        filled = 0
        # One slice per file segment: a batch spans at most a few files.
        while filled < b:
            k = min(b - filled, self.rows - self.current_row)
            idx = self.data_perm[self.current_row:self.current_row + k]
            for out, name in zip(outs, self.names):
                out[filled:filled + k] = self.arrays[name][idx]
            filled += k
            self.current_row += k
            if self.current_row == self.rows:
                self._next_file()
        for t, out in zip(top, outs):
            _set_top(t, out[self.offset::self.stride])

    def backward_impl(self, top, propagate_down, bottom):
        pass


@register_layer('HDF5Output')
class HDF5OutputLayer(Layer):
    """Caffe: ``HDF5OutputLayer``: writes its two bottoms to ``hdf5_output_param.file_name``
    as datasets "data" and "label".  The file is created at setup; where Caffe fails on a
    second forward (the datasets exist), qcaffe appends the rows of every forward.
    """
    exact_num_bottom = 2
    exact_num_top = 0

    def layer_setup(self, bottom, top):
        self.h5py = _h5py(self.name, 'HDF5Output')
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise LayerError('Layer %r: hdf5_output_param.file_name is required' % self.name)
        try:
            self.h5py.File(self.file_name, 'w').close()
        except OSError as e:
            raise DataSourceError('Layer %r: cannot create HDF5 output file %r: %s'
                                  % (self.name, self.file_name, e))

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise LayerError('Layer %r: data and label must have the same number of rows, got '
                             '%s and %s' % (self.name, bottom[0].shape, bottom[1].shape))
        with self.h5py.File(self.file_name, 'a') as f:
            for name, b in (('data', bottom[0]), ('label', bottom[1])):
                arr = backend.to_host(b.dev_data)
                if arr.ndim == 0:
                    arr = arr.reshape(1)
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:],
                                     chunks=True)
                else:
                    ds = f[name]
                    if ds.shape[1:] != arr.shape[1:]:
                        raise LayerError('Layer %r: %s rows of shape %s after rows of shape %s'
                                         % (self.name, name, arr.shape[1:], ds.shape[1:]))
                    old = ds.shape[0]
                    ds.resize(old + arr.shape[0], axis=0)
                    ds[old:] = arr

    def backward_impl(self, top, propagate_down, bottom):
        pass


# ------------------------------------------------------------------- prefetching base
class BasePrefetchingDataLayer(Layer):
    """Caffe: ``BasePrefetchingDataLayer``: a background thread fills ``prefetch`` batches.

    Subclasses implement ``data_layer_setup(top)`` (returning the shape of one raw item,
    before the transform), ``load_batch(batch, rng)`` (filling ``batch['data']`` and
    ``batch['label']`` in place or replacing them) and ``source_state()`` /
    ``restore_source_state(state)`` (where the next record comes from, as a dict of arrays).

    Beyond Caffe (which restarts a resumed run at the first record): ``extra_state()`` is the
    source position and random state of the next batch the net will consume, so a solver
    snapshot taken at iteration k resumes with exactly the batches an uninterrupted run sees.
    """
    exact_num_bottom = 0
    min_top = 1
    max_top = 2
    per_rank_state = True

    def layer_setup(self, bottom, top):
        self.output_labels = len(top) > 1
        # Caffe reads PREFETCH_COUNT from data_param for every prefetching layer.
        self.prefetch_count = int(self.layer_param.data_param.prefetch)
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                           self.name)
        item_shape = self.data_layer_setup(top)
        self.data_shape = (self.batch_size,) + tuple(self.transformer.infer_shape(item_shape))
        top[0].reshape(self.data_shape)
        if self.output_labels:
            top[1].reshape(self.batch_size)
        log.info('output data size: %s', ','.join(str(d) for d in self.data_shape))
        # Caffe seeds each prefetch thread from the main generator when it starts.
        self._start_prefetch(np.random.RandomState(int(backend.rng().randint(0, 2 ** 31 - 1))))

    def _start_prefetch(self, rng):
        self._next_state = (self.source_state(), rng.get_state())
        self.prefetcher = Prefetcher(self._fill, self._make_batch, self.prefetch_count,
                                     self.name, rng=rng)

    def _make_batch(self):
        return {'data': np.empty(self.data_shape, np.float32),
                'label': np.empty(self.batch_size, np.float32)}

    def _fill(self, batch, rng):
        self.load_batch(batch, rng)
        batch['next_state'] = (self.source_state(), rng.get_state())

    def transform_into(self, batch, raw, rng):
        """Transform raw items into ``batch['data']`` (reshaped when needed); see
        :meth:`DataTransformer.transform_items`."""
        batch['data'] = self.transformer.transform_items(raw, batch['data'], rng)

    def reshape(self, bottom, top):
        pass  # the tops take each batch's shape in forward (Caffe: Forward_cpu reshapes)

    def forward_impl(self, bottom, top):
        batch = self.prefetcher.next()
        try:
            _set_top(top[0], batch['data'])
            if self.output_labels:
                _set_top(top[1], batch['label'])
            self._next_state = batch['next_state']
        finally:
            self.prefetcher.release(batch)

    def backward_impl(self, top, propagate_down, bottom):
        pass

    def extra_state(self):
        source, (_, keys, pos, has_gauss, gauss) = self._next_state
        state = {'source_' + k: np.asarray(v) for k, v in source.items()}
        state.update(rng_keys=np.asarray(keys), rng_pos=np.array([pos, has_gauss]),
                     rng_gauss=np.array(gauss))
        return state

    def load_extra_state(self, state):
        """Continue from a snapshot's ``extra_state``: drop prefetched batches, reposition."""
        self.prefetcher.stop()
        self.restore_source_state({k[len('source_'):]: v for k, v in state.items()
                                   if k.startswith('source_')})
        rng = np.random.RandomState()
        pos, has_gauss = (int(x) for x in state['rng_pos'])
        rng.set_state(('MT19937', np.asarray(state['rng_keys'], np.uint32), pos, has_gauss,
                       float(state['rng_gauss'])))
        if backend.solver_rank() > 0:   # the snapshot holds the root's stream: split it off
            rng = np.random.RandomState(backend.rank_seed(state['rng_keys'],
                                                          backend.solver_rank()))
        self._start_prefetch(rng)

    def stop_prefetch(self):
        p = getattr(self, 'prefetcher', None)
        if p is not None:
            p.stop()


# ------------------------------------------------------------------------------ Data
# A database of plain uint8 Datums whose records total at most this many bytes is decoded
# into one array at setup (MNIST train: 47 MB): each batch is then a slice, so the prefetch
# thread makes a handful of numpy calls per batch instead of 128 LMDB calls, and barely
# competes with the training thread for the GIL.  Order and wrap-around are unchanged.
IN_MEMORY_LIMIT = config.DATA_IN_MEMORY_BYTES


@register_layer('Data')
class DataLayer(BasePrefetchingDataLayer):
    """Caffe: ``DataLayer``: Datum records of an LMDB, read in key order with wrap-around.

    ``backend: LEVELDB`` (Caffe's default) is accepted only when the source is in fact an
    LMDB directory (a warning says so); LevelDB itself is not supported.  Small databases of
    plain uint8 Datums are held in memory (``IN_MEMORY_LIMIT``, environment variable
    ``QCAFFE_DATA_IN_MEMORY_MB`` of :mod:`qcaffe.config`; 0 always streams), larger ones
    are streamed.
    """
    memory = None

    def data_layer_setup(self, top):
        p = self.layer_param.data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise LayerError('Layer %r: data_param.batch_size must be positive, got %d'
                             % (self.name, self.batch_size))
        if not p.source:
            raise LayerError('Layer %r: data_param.source is required' % self.name)
        if p.backend != caffe_pb2.DataParameter.LMDB:
            if os.path.exists(os.path.join(p.source, 'data.mdb')):
                log.warning('Layer %r: data_param.backend is LEVELDB (Caffe\'s default when '
                            'unset) but %r is an LMDB; reading it as LMDB. Add "backend: '
                            'LMDB" to the prototxt for real Caffe.', self.name, p.source)
            else:
                raise LayerError('Layer %r: data_param.backend LEVELDB (the default when '
                                 'backend is not set) is not supported; qcaffe reads LMDB '
                                 'only: convert the data to LMDB and set "backend: LMDB" '
                                 '(source %r)' % (self.name, p.source))
        self.force_color = bool(p.force_encoded_color or
                                self.layer_param.transform_param.force_color)
        self.force_gray = bool(self.layer_param.transform_param.force_gray)
        self.stride, self.offset = _share(self)
        self.reader = LMDBReader(p.source, self.name)
        if p.rand_skip:
            skip = int(backend.rng().randint(0, p.rand_skip))
            log.info('Skipping first %d data points.', skip)
            self.reader.skip(skip)
        index, key, first = self.reader.peek()
        raw, _ = decode_datums([first], self.force_color, self.force_gray, self.name,
                               where=self.reader.describe(index, [key]))
        self.pos = self.reader.index
        if self.reader.entries * len(first) <= IN_MEMORY_LIMIT:
            self.memory = load_in_memory(self.reader)
            if self.memory is not None:
                log.info('Layer %s: %d records of %s held in memory (%.1f MB)', self.name,
                         len(self.memory.labels), p.source, self.memory.data.nbytes / 1e6)
                self.reader.close()
                self.reader = None
        return raw.shape[1:]

    def source_state(self):
        return {'position': self.pos if self.memory is not None else self.reader.index}

    def restore_source_state(self, state):
        if self.memory is not None:
            self.pos = int(state['position']) % len(self.memory.labels)
        else:
            self.reader.seek(int(state['position']))

    def load_batch(self, batch, rng):
        # the next stride*batch_size records of the stream; this solver's are every
        # stride-th from offset on (all of them without data parallelism)
        span = self.stride * self.batch_size
        if self.memory is not None:
            data, labels = self.memory.data, self.memory.labels
            n, pos = len(labels), self.pos
            first, last = pos + self.offset, pos + span
            if last <= n:
                raw = data[first:last:self.stride]          # views, no copy
                lab = labels[first:last:self.stride]
            else:
                idx = np.arange(first, last, self.stride) % n
                raw, lab = data[idx], labels[idx]
            if last >= n:
                log.info('Restarting data prefetching from start.')
            self.pos = last % n
            self.transform_into(batch, raw, rng)
            batch['label'][...] = lab
            return
        start, keys, values = self.reader.next_records(span)
        keys, values = keys[self.offset::self.stride], values[self.offset::self.stride]
        raw, labels = decode_datums(values, self.force_color, self.force_gray, self.name,
                                    ragged=True, where=self.reader.describe(
                                        start + self.offset, keys, self.stride))
        self.transform_into(batch, raw, rng)
        batch['label'][...] = labels

    def __del__(self):
        self.stop_prefetch()
        r = getattr(self, 'reader', None)
        if r is not None:
            r.close()


# ------------------------------------------------------------------------- ImageData
@register_layer('ImageData')
class ImageDataLayer(BasePrefetchingDataLayer):
    """Caffe: ``ImageDataLayer``: ``source`` lists "path label" lines (the label after the
    last space); images are read from ``root_folder + path``, resized to new_height x
    new_width when both are set, in colour (BGR) or gray (``is_color``), shuffled at start and
    at every pass with ``shuffle``.  Decoding needs pillow.
    """

    def data_layer_setup(self, top):
        p = self.layer_param.image_data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise LayerError('Layer %r: image_data_param.batch_size must be positive, got %d'
                             % (self.name, self.batch_size))
        if (p.new_height > 0) != (p.new_width > 0):
            raise LayerError('Layer %r: image_data_param new_height and new_width must be set '
                             'together (got %d and %d)' % (self.name, p.new_height, p.new_width))
        self.lines = []
        for number, line in _read_list_file(p.source, self.name, 'image_data_param.source'):
            path, sep, label = line.rpartition(' ')
            try:
                self.lines.append((path if sep else line, int(label)))
            except ValueError:
                raise DataSourceError('Layer %r: %s:%d: expected "path label" with an integer '
                                      'label after the last space, got %r'
                                      % (self.name, p.source, number, line))
        if not self.lines:
            raise DataSourceError('Layer %r: image list %r is empty' % (self.name, p.source))
        self.shuffle = bool(p.shuffle)
        self.root = p.root_folder
        self.new_hw = (int(p.new_height), int(p.new_width))
        self.is_color = bool(p.is_color)
        self.order = np.arange(len(self.lines))
        if self.shuffle:
            log.info('Shuffling data')
            self.order = backend.rng().permutation(len(self.lines))
        elif _share(self)[1] > 0 and not p.rand_skip:
            # Caffe: ImageData does not stride; unshuffled, every solver reads the same images
            log.warning('Layer %s: shuffling or skipping recommended for multi-GPU (every '
                        'solver reads the same images in the same order)', self.name)
        log.info('A total of %d images.', len(self.lines))
        self.pos = 0
        if p.rand_skip:
            self.pos = int(backend.rng().randint(0, p.rand_skip)) % len(self.lines)
            log.info('Skipping first %d data points.', self.pos)
        return self._read(self.lines[self.order[self.pos]][0]).shape

    def source_state(self):
        return {'position': self.pos, 'order': self.order.copy()}

    def restore_source_state(self, state):
        order = np.asarray(state['order'], dtype=np.int64)
        if order.shape != (len(self.lines),):
            raise LayerError('Layer %r: saved image order has %d entries but the list has %d '
                             'images' % (self.name, order.size, len(self.lines)))
        self.order = order
        self.pos = int(state['position']) % len(self.lines)

    def _read(self, rel):
        from ..data.images import read_image
        return read_image(self.root + rel, self.new_hw[0], self.new_hw[1], self.is_color,
                          self.name)

    def load_batch(self, batch, rng):
        images, labels = [], []
        for _ in range(self.batch_size):  # one decode per file: no way around it
            rel, label = self.lines[self.order[self.pos]]
            images.append(self._read(rel))
            labels.append(label)
            self.pos += 1
            if self.pos == len(self.lines):
                log.info('Restarting data prefetching from start.')
                self.pos = 0
                if self.shuffle:  # Caffe: ShuffleImages at every pass
                    self.order = rng.permutation(len(self.lines))
        if len({im.shape for im in images}) > 1:
            self.transform_into(batch, images, rng)  # ragged: fine if crop_size evens them
        else:
            self.transform_into(batch, np.stack(images), rng)
        batch['label'][...] = labels

    def __del__(self):
        self.stop_prefetch()
