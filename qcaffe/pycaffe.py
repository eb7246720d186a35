"""pycaffe's API on top of qcaffe: ``import qcaffe as caffe`` runs pycaffe scripts unchanged.

Caffe equivalent: python/caffe/pycaffe.py (the Python side of ``caffe.Net``) and
python/caffe/_caffe.cpp (the Boost.Python bindings: Net constructors, Layer, solvers, the
module functions).  Everything here is a thin front end (caffe.md section 6):

* :class:`Net` is a :class:`qcaffe.net.Net` with pycaffe's constructors and members
  (``blobs``, ``params``, ``forward``...).  The arrays it returns are the blobs' live host
  views, as in pycaffe (trap 1), never copies, except ``forward_all`` which concatenates.
* the solver classes wrap :mod:`qcaffe.solvers` (the update rules live there);
* :class:`Layer` is the base class of Python layers (``type: "Python"``).
"""
import collections
import logging
import os
import sys
import time

import numpy as np

from . import backend
from .blob import Blob, BlobVec
from .distributed import DataParallel
from .io.errors import ModelFileNotFoundError, QcaffeError
from .net import Net as _CoreNet
from .net import NetError
from .proto import caffe_pb2

__all__ = ['Net', 'Layer', 'Blob', 'Timer', 'NCCL', 'TRAIN', 'TEST',
           'SGDSolver', 'NesterovSolver', 'AdaGradSolver', 'RMSPropSolver', 'AdaDeltaSolver',
           'AdamSolver', 'get_solver',
           'set_mode_cpu', 'set_mode_gpu', 'set_device', 'set_random_seed', 'layer_type_list',
           'init_log', 'solver_count', 'set_solver_count', 'solver_rank', 'set_solver_rank',
           'set_multiprocess', 'has_nccl']

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
_PHASES = {TRAIN: 'TRAIN', TEST: 'TEST'}

log = logging.getLogger('qcaffe')


class PycaffeFileError(ModelFileNotFoundError, RuntimeError):
    """pycaffe's ``RuntimeError("Could not open file <f>")`` (also a FileNotFoundError)."""


class PycaffeRuntimeError(NetError, RuntimeError):
    """A RuntimeError raised by user code (a Python layer's setup) while building a net.

    pycaffe lets it propagate as RuntimeError (upstream test_python_layer relies on it); this
    keeps that type and adds the layer context of :class:`qcaffe.net.NetError`.
    """


# ------------------------------------------------------------------ module functions
def set_mode_cpu():
    """pycaffe ``caffe.set_mode_cpu()``: compute with numpy (the default)."""
    backend.set_mode_cpu()


def set_mode_gpu():
    """pycaffe ``caffe.set_mode_gpu()``: compute with cupy (set it before building nets)."""
    backend.set_mode_gpu()


def set_device(device_id):
    """pycaffe ``caffe.set_device(id)``: the GPU ordinal used in GPU mode."""
    backend.set_device(device_id)


def set_random_seed(seed):
    """pycaffe ``caffe.set_random_seed(seed)`` (fillers, dropout, crops, mirrors)."""
    backend.set_random_seed(seed)


def layer_type_list():
    """pycaffe ``caffe.layer_type_list()``: the registered layer type names."""
    from .layers.base import layer_type_list as _types
    return _types()


def init_log(level=0, stderr=True):
    """pycaffe ``caffe.init_log([level[, stderr]])``: glog-format log lines on stderr.

    ``level`` is glog's minloglevel (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).  glog without
    ``stderr`` writes log files under /tmp; qcaffe always writes to stderr.
    """
    from .log import setup_logging
    setup_logging(logging.INFO + 10 * int(level), stream=_CurrentStderr())


class _CurrentStderr(object):
    """Writes to whatever ``sys.stderr`` is at the time (Jupyter and pytest replace it)."""

    def write(self, text):
        sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


# Data-parallel training (qcaffe.distributed).  Caffe keeps these values in its per-process
# singleton; qcaffe in qcaffe.backend, where the solver (seed + rank) and the Data layers
# (every solver_count-th record from solver_rank on) read them.
def solver_count():
    return backend.solver_count()


def set_solver_count(count):
    backend.set_solver_count(count)


def solver_rank():
    return backend.solver_rank()


def set_solver_rank(rank):
    backend.set_solver_rank(rank)


def set_multiprocess(value):
    backend.set_multiprocess(value)


def has_nccl():
    """True when :class:`NCCL` works in this process: cupy with NCCL (GPU processes) or mpi4py
    (processes started by mpiexec).  pycaffe: True in builds made with USE_NCCL."""
    from .distributed import nccl_module
    if nccl_module() is not None:
        return True
    try:
        import mpi4py  # noqa: F401  (not mpi4py.MPI: that would start MPI)
    except ImportError:
        return False
    return True


class NCCL(DataParallel):
    """pycaffe ``caffe.NCCL(solver, uid)``: this process's solver trains together with the
    solvers of the other ``solver_count()`` processes (Caffe: ``NCCL<Dtype>``, a
    :class:`qcaffe.distributed.DataParallel`).  Wire it as python/train.py does:
    ``nccl.bcast()``, ``solver.add_callback(nccl)`` and, with ``layer_wise_reduce``,
    ``solver.net.after_backward(nccl)``.

    * GPU mode and cupy with NCCL: an NCCL communicator from ``uid`` (one ``NCCL.new_uid()``
      handed to every process, as python/train.py does; under mpiexec the root's uid is used);
    * otherwise (CPU): the processes must be the ranks of ``mpiexec -n <solver_count()>``;
      ``uid`` is not needed.  The workers python/train.py forks are not MPI ranks, so its
      flow runs on GPUs (NCCL); on CPUs run the same calls in processes started by mpiexec.
    """

    def __init__(self, solver, uid):
        super().__init__(solver, _communicator(uid))

    @staticmethod
    def new_uid():
        """Caffe: ``NCCL::new_uid``: an NCCL unique id (bytes); without NCCL, random bytes
        (CPU ranks meet through MPI and do not use it)."""
        from .distributed import nccl_module, new_nccl_uid
        return new_nccl_uid() if nccl_module() is not None else os.urandom(128)


def _communicator(uid):
    from .distributed import (DistributedError, LocalCommunicator, MPICommunicator,
                              NCCLCommunicator, launched_by_mpi, nccl_module)
    count, rank = backend.solver_count(), backend.solver_rank()
    world = MPICommunicator() if launched_by_mpi() else None
    if world is not None and (world.size, world.rank) != (count, rank):
        raise DistributedError('caffe.NCCL: this process is MPI rank %d of %d but solver_rank '
                               '%d of solver_count %d; set caffe.set_solver_count(%d) and '
                               'caffe.set_solver_rank(%d) before building the solver'
                               % (world.rank, world.size, rank, count, world.size, world.rank))
    if backend.is_gpu() and nccl_module() is not None:
        if world is not None:
            uid = world.bcast_object(uid)
        return NCCLCommunicator(uid, count, rank, host=world)
    if world is not None:
        return world
    if count == 1:
        return LocalCommunicator()
    raise DistributedError('caffe.NCCL on the CPU joins MPI processes: start the %d processes '
                           'with mpiexec -n %d (the workers python/train.py forks are not MPI '
                           'ranks; with GPUs and cupy\'s NCCL they meet through the uid)'
                           % (count, count))


class Timer(object):
    """pycaffe ``caffe.Timer``: ``start()``, ``stop()``, ``ms`` (wall-clock milliseconds)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            if backend.is_gpu():
                backend.cupy_module().cuda.Device().synchronize()
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self):
        if self._start is not None:  # Caffe's Timer stops itself when read while running
            self.stop()
        return self._elapsed * 1000.0


# ------------------------------------------------------------------------ Python layers
class Layer(object):
    """Base class of Python layers (pycaffe ``caffe.Layer``).

    A prototxt layer ``type: "Python"`` with ``python_param { module: "m" layer: "Cls" }``
    makes the net create ``m.Cls(layer_param)``; before ``setup`` it sets ``param_str`` and
    ``phase``.  Subclasses override ``setup(bottom, top)``, ``reshape(bottom, top)``,
    ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``; bottom/top are
    lists of :class:`qcaffe.blob.Blob` whose ``data``/``diff`` are numpy arrays.  Learnable
    parameters go in ``self.blobs`` (``self.blobs.add_blob(*shape)``).
    """
    type = 'Python'

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.blobs = BlobVec()
        python_param = layer_param.python_param if layer_param is not None else None
        self.param_str = python_param.param_str if python_param is not None else ''
        self.phase = layer_param.phase if layer_param is not None else TRAIN

    def setup(self, bottom, top):
        """Caffe: ``LayerSetUp`` (called once, at net construction)."""

    def reshape(self, bottom, top):
        """Size the tops; called at setup and before every forward."""

    def forward(self, bottom, top):
        raise NotImplementedError('%s must implement forward(bottom, top)' % type(self).__name__)

    def backward(self, top, propagate_down, bottom):
        """Default: no gradient (layers that never need backward may omit it)."""


# -------------------------------------------------------------------------------- Net
def _is_path(x):
    return isinstance(x, (str, bytes, os.PathLike))


def _check_readable(path):
    if not os.path.isfile(path):
        raise PycaffeFileError('Could not open file %s' % os.fsdecode(path))


def _check_phase(phase):
    try:
        phase = int(phase)
    except (TypeError, ValueError):
        phase = None
    if phase not in _PHASES:
        raise QcaffeError('Net phase must be caffe.TRAIN (0) or caffe.TEST (1)')
    return phase


class Net(_CoreNet):
    """pycaffe ``caffe.Net``.

    Constructors (all of pycaffe's):

    * ``Net(network_file, phase, level=0, stages=None, weights=None)``
    * ``Net(network_file, weights, phase)`` (deprecated in pycaffe, still accepted)
    * keyword forms: ``Net(network_file, phase=caffe.TEST, weights=...)``

    ``network_file`` is a prototxt (or binary NetParameter) path, upgraded like Caffe;
    a ``caffe_pb2.NetParameter`` is accepted too.  ``weights`` are copied in with
    :meth:`copy_from` (binary .caffemodel or HDF5).
    """

    def __init__(self, network_file, *args, **kwargs):
        weights = kwargs.pop('weights', None)
        phase = kwargs.pop('phase', None)
        level = kwargs.pop('level', 0)
        stages = kwargs.pop('stages', None)
        if kwargs:
            raise TypeError('Net() got unexpected keyword argument(s) %s; valid: phase, level, '
                            'stages, weights' % ', '.join(sorted(kwargs)))
        args = list(args)
        if args and _is_path(args[0]):
            # legacy Net(network_file, pretrained_file, phase)
            if weights is not None:
                raise TypeError('Net(): weights given twice (positionally and as weights=)')
            weights = args.pop(0)
            legacy = True
        else:
            legacy = False
        for name in ('phase', 'level', 'stages', 'weights'):
            if not args:
                break
            value = args.pop(0)
            if name == 'phase':
                if phase is not None:
                    raise TypeError('Net(): phase given twice')
                phase = value
            elif name == 'level':
                level = value
            elif name == 'stages':
                stages = value
            else:
                weights = value
        if args:
            raise TypeError('Net() takes at most 5 positional arguments (network_file, phase, '
                            'level, stages, weights)')
        if phase is None:
            raise TypeError('Net() needs a phase: caffe.TRAIN or caffe.TEST')
        phase = _check_phase(phase)
        if legacy:
            log.warning('DEPRECATION WARNING - deprecated use of Python interface')
            log.warning('Use this instead (with the named "weights" parameter):')
            log.warning("Net('%s', caffe.%s, weights='%s')", os.fsdecode(network_file),
                        _PHASES[phase], os.fsdecode(weights))
        if stages is not None and isinstance(stages, str):
            stages = [stages]

        if isinstance(network_file, caffe_pb2.NetParameter):
            param, source = network_file, '<NetParameter>'
        else:
            from .io.binary import read_net_param
            _check_readable(network_file)
            param, source = read_net_param(network_file), os.fsdecode(network_file)
        if weights is not None:
            _check_readable(weights)
        try:
            self._init(param, phase, int(level), list(stages or []), source)
        except NetError as e:
            if isinstance(e.__cause__, RuntimeError):
                raise PycaffeRuntimeError(str(e)) from e.__cause__
            raise
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------ cached views
    # pycaffe caches blobs/params/... on first access (the net's structure never changes).
    def _cached(self, key, build):
        cache = self.__dict__.setdefault('_pycaffe_cache', {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    @property
    def blobs(self):
        """OrderedDict blob name -> Blob, in creation order (Split blobs included)."""
        return self._cached('blobs', lambda: collections.OrderedDict(
            zip(self.blob_names, self.blobs_list)))

    @property
    def blob_loss_weights(self):
        """OrderedDict blob name -> its loss weight."""
        return self._cached('blob_loss_weights', lambda: collections.OrderedDict(
            zip(self.blob_names, self.blob_loss_weights_list)))

    @property
    def layer_dict(self):
        """OrderedDict layer name -> Layer."""
        return self._cached('layer_dict', lambda: collections.OrderedDict(
            zip(self.layer_names, self.layers)))

    @property
    def params(self):
        """OrderedDict layer name -> that layer's blobs, for layers with at least one blob."""
        return self._cached('params', lambda: collections.OrderedDict(
            (name, layer.blobs) for name, layer in zip(self.layer_names, self.layers)
            if len(layer.blobs) > 0))

    @property
    def top_names(self):
        return self._cached('top_names', lambda: collections.OrderedDict(
            (name, [self.blob_names[j] for j in self.top_ids[i]])
            for i, name in enumerate(self.layer_names)))

    @property
    def bottom_names(self):
        return self._cached('bottom_names', lambda: collections.OrderedDict(
            (name, [self.blob_names[j] for j in self.bottom_ids[i]])
            for i, name in enumerate(self.layer_names)))

    @property
    def inputs(self):
        """Names of the Input layers' tops, in order."""
        return [self.blob_names[i] for i in self.input_blob_ids]

    @property
    def outputs(self):
        """Names of the net outputs (tops nobody consumes), sorted by name like Caffe."""
        return [self.blob_names[i] for i in self.output_blob_ids]

    # raw members of the C++ binding
    _layer_names = property(lambda self: self.layer_names)
    _blob_names = property(lambda self: self.blob_names)
    _blobs = property(lambda self: self.blobs_list)
    _blob_loss_weights = property(lambda self: self.blob_loss_weights_list)
    _inputs = property(lambda self: list(self.input_blob_ids))
    _outputs = property(lambda self: list(self.output_blob_ids))

    def _bottom_ids(self, i):
        return list(self.bottom_ids[i])

    def _top_ids(self, i):
        return list(self.top_ids[i])

    def _forward(self, start, end):
        """Layers ``start``..``end`` (indices, inclusive); returns the loss."""
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    def _layer_position(self, name, what):
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise NetError('%s=%r is not a layer of net %r; layers: %s'
                           % (what, name, self.name, ', '.join(self.layer_names))) from None

    # --------------------------------------------------------------- forward/backward
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Forward from layer ``start`` to ``end`` (names, inclusive), like pycaffe.

        ``kwargs`` name exactly the net inputs; each array (batch-sized) is copied into its
        blob.  Returns {name: blob.data} (live arrays) for the outputs (or the tops of
        ``end``) and the extra blob names in ``blobs``.
        """
        blobs = list(blobs or [])
        start_ind = self._layer_position(start, 'start') if start is not None else 0
        if end is not None:
            end_ind = self._layer_position(end, 'end')
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise Exception('Input blob arguments do not match net inputs.')
            for name, array in kwargs.items():
                blob = self.blobs[name]
                if not _batch_sized(array, blob):
                    raise Exception('Input is not batch sized')
                blob.data[...] = array
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backward from layer ``start`` down to ``end`` (names, inclusive), like pycaffe.

        ``kwargs`` name exactly the net outputs (top diffs to set).  Returns {name: blob.diff}
        for the inputs (or the bottoms of ``end``) and the names in ``diffs``.  Param diffs
        accumulate; clear them with ``clear_param_diffs()``.
        """
        diffs = list(diffs or [])
        start_ind = (self._layer_position(start, 'start') if start is not None
                     else len(self.layers) - 1)
        if end is not None:
            end_ind = self._layer_position(end, 'end')
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise Exception('Top diff arguments do not match net outputs.')
            for name, diff in kwargs.items():
                blob = self.blobs[name]
                if not _batch_sized(diff, blob):
                    raise Exception('Diff is not batch sized')
                blob.diff[...] = diff
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def forward_all(self, blobs=None, **kwargs):
        """Forward whole arrays in batches; returns {name: concatenated copies}.

        The inputs are cut into batches of the first input blob's batch size, the last one
        zero-padded; outputs are concatenated and the padding stripped (pycaffe's rule).
        """
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **batch)
            for out, out_blob in outs.items():
                all_outs[out].extend(out_blob.copy())
        return self._stack_and_strip(all_outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward over whole arrays: returns (outputs, diffs)."""
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        all_diffs = {diff: [] for diff in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({name: kwargs[name] for name in self.inputs
                                       if name in kwargs})
        backward_batches = self._batch({name: kwargs[name] for name in self.outputs
                                        if name in kwargs})
        for fb, bb in _zip_longest_empty(forward_batches, backward_batches):
            batch_blobs = self.forward(blobs=blobs, **fb)
            batch_diffs = self.backward(diffs=diffs, **bb)
            for out, out_blobs in batch_blobs.items():
                all_outs[out].extend(out_blobs.copy())
            for diff, out_diffs in batch_diffs.items():
                all_diffs[diff].extend(out_diffs.copy())
        return (self._stack_and_strip(all_outs, kwargs),
                self._stack_and_strip(all_diffs, kwargs))

    def _stack_and_strip(self, collected, kwargs):
        out = {k: np.asarray(v) for k, v in collected.items()}
        if kwargs:
            pad = len(next(iter(out.values()))) - len(next(iter(kwargs.values())))
            if pad:
                for k in out:
                    out[k] = out[k][:-pad]
        return out

    def _batch(self, blobs):
        """Yield dicts of batch-sized slices of ``blobs`` (the last one zero-padded)."""
        if not blobs:
            return
        num = len(next(iter(blobs.values())))
        batch_size = self.blobs_list[0].shape[0]
        remainder = num % batch_size
        num_batches = num // batch_size
        for b in range(num_batches):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if remainder > 0:
            padded = {}
            for name in blobs:
                pad_shape = (batch_size - remainder,) + tuple(np.shape(blobs[name])[1:])
                padded[name] = np.concatenate([blobs[name][-remainder:],
                                               np.zeros(pad_shape)])
            yield padded

    # -------------------------------------------------------------------- the rest
    def set_input_arrays(self, data, labels):
        """Feed a MemoryData layer (layer 0): data N x C x H x W float32, labels length N.

        The net keeps references to the arrays (no copy), as pycaffe does; N must be a
        multiple of the layer's batch_size.
        """
        if not len(self.layers) or self.layers[0].type != 'MemoryData':
            raise NetError('set_input_arrays may only be called if the first layer is a '
                           'MemoryData layer (net %r starts with %s)'
                           % (self.name, self.layers[0].type if self.layers else 'nothing'))
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        return self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data, labels):
        layer = self.layers[0]
        for what, arr in (('data', data), ('labels', labels)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise NetError('set_input_arrays: %s must be a float32 numpy array, got %s'
                               % (what, getattr(arr, 'dtype', type(arr).__name__)))
            if not arr.flags['C_CONTIGUOUS']:
                raise NetError('set_input_arrays: %s must be C contiguous' % what)
            if arr.ndim != 4:
                raise NetError('set_input_arrays: %s must be 4-D, got shape %s'
                               % (what, arr.shape))
        if data.shape[0] != labels.shape[0]:
            raise NetError('set_input_arrays: data has %d items but labels %d'
                           % (data.shape[0], labels.shape[0]))
        reset = getattr(layer, 'reset', None)
        if reset is None:
            raise NetError('set_input_arrays: the MemoryData layer %r has no reset()'
                           % layer.name)
        reset(data, labels, data.shape[0])

    def reshape(self):
        """Re-run every layer's Reshape (after changing input blob shapes)."""
        self.reshape_all()

    def share_with(self, other):
        """Share (alias) the data of same-named layers' blobs of ``other``."""
        self.share_trained_layers_with(other)

    def load_hdf5(self, filename):
        self.copy_trained_layers_from_hdf5(filename)

    def before_forward(self, fn):
        self.add_hook('before_forward', fn)

    def after_forward(self, fn):
        self.add_hook('after_forward', fn)

    def before_backward(self, fn):
        self.add_hook('before_backward', fn)

    def after_backward(self, fn):
        self.add_hook('after_backward', fn)


def _batch_sized(array, blob):
    """pycaffe's check: same first dimension (a 0-axis blob, e.g. a loss, takes one value)."""
    shape = np.shape(array)
    if not blob.shape:
        return int(np.prod(shape)) == 1
    return len(shape) >= 1 and shape[0] == blob.shape[0]


def _zip_longest_empty(a, b):
    """zip_longest of two batch generators, filling with {} (pycaffe's izip_longest)."""
    import itertools
    for x, y in itertools.zip_longest(a, b, fillvalue={}):
        yield x, y


# ----------------------------------------------------------------------------- solvers
# The update rules and the training loop are qcaffe.solvers'; pycaffe's classes are the same
# classes building pycaffe Nets, so ``solver.net.blobs`` / ``solver.test_nets[0].forward()``
# work as in pycaffe.
from . import solvers as _solvers  # noqa: E402  (after Net, which the subclasses name)


def _pycaffe_solver_class(core_cls):
    return type(core_cls.__name__, (core_cls,), {
        'net_class': Net, '__module__': __name__,
        '__doc__': 'pycaffe ``caffe.%s(solver_file)``: %s' % (
            core_cls.__name__, (core_cls.__doc__ or '').strip().split('\n')[0])})


SGDSolver = _pycaffe_solver_class(_solvers.SGDSolver)
NesterovSolver = _pycaffe_solver_class(_solvers.NesterovSolver)
AdaGradSolver = _pycaffe_solver_class(_solvers.AdaGradSolver)
RMSPropSolver = _pycaffe_solver_class(_solvers.RMSPropSolver)
AdaDeltaSolver = _pycaffe_solver_class(_solvers.AdaDeltaSolver)
AdamSolver = _pycaffe_solver_class(_solvers.AdamSolver)
_BY_CORE = {c.__bases__[0]: c for c in (SGDSolver, NesterovSolver, AdaGradSolver,
                                        RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(filename):
    """pycaffe ``caffe.get_solver(file)``: the solver class named by the file's ``type``
    (legacy ``solver_type`` upgraded), with pycaffe Nets."""
    from .io.binary import read_solver_param
    _check_readable(filename)
    source = os.fsdecode(os.fspath(filename))
    param = read_solver_param(source)
    core_cls = _solvers.solver_class(param.type, source)
    cls = _BY_CORE.get(core_cls)
    if cls is None:  # a type beyond pycaffe's six (LarsSGD, registered extensions)
        cls = _BY_CORE[core_cls] = _pycaffe_solver_class(core_cls)
    return cls(param, source=source)
