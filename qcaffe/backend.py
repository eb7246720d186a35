"""Compute backend: CPU (numpy) or GPU (cupy), the active device, and the random generator.

Caffe equivalent: the ``Caffe`` singleton (``Caffe::set_mode``, ``Caffe::SetDevice``,
``Caffe::set_random_seed``, ``caffe_rng``, ``Caffe::solver_count`` / ``solver_rank`` /
``multiprocess``).  Layer code never imports numpy or cupy directly for
computation; it asks ``get_array_module(array)`` (Chainer's idiom) or ``xp()`` for the module that
matches the current mode, so the same code runs on both backends.  cupy is imported only when
GPU mode is requested.
"""
import numpy as np

CPU = 'cpu'
GPU = 'gpu'

_state = {'mode': CPU, 'device': 0, 'seed': None,
          # data-parallel training (qcaffe.distributed): how many solvers train together and
          # which one this process is; Data layers read every solver_count-th record from
          # solver_rank on, and the solver seeds with random_seed + solver_rank
          'solver_count': 1, 'solver_rank': 0, 'multiprocess': False}
_cupy = None
_rng = np.random.RandomState()


class BackendError(RuntimeError):
    """GPU mode asked for but not available."""


def cupy_module():
    """Import cupy on first use; raise a clear error when it is missing."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise BackendError('GPU mode needs cupy (pip install cupy-cuda12x); '
                               'it could not be imported: %s' % e)
        _cupy = cupy
    return _cupy


def gpu_available():
    try:
        cp = cupy_module()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def set_mode_cpu():
    """Caffe: ``Caffe::set_mode(Caffe::CPU)`` / pycaffe ``caffe.set_mode_cpu()``."""
    _state['mode'] = CPU


def set_mode_gpu():
    """Caffe: ``Caffe::set_mode(Caffe::GPU)``.  Needs cupy and a CUDA device."""
    cp = cupy_module()
    cp.cuda.Device(_state['device']).use()
    _state['mode'] = GPU


def set_device(device_id):
    """Caffe: ``Caffe::SetDevice``."""
    _state['device'] = int(device_id)
    if _state['mode'] == GPU:
        cupy_module().cuda.Device(_state['device']).use()


def mode():
    return _state['mode']


def is_gpu():
    return _state['mode'] == GPU


def device_id():
    return _state['device']


def solver_count():
    """Caffe: ``Caffe::solver_count``: solvers training together (1 = no data parallelism)."""
    return _state['solver_count']


def set_solver_count(count):
    count = int(count)
    if count < 1:
        raise ValueError('solver_count must be >= 1, got %d' % count)
    _state['solver_count'] = count


def solver_rank():
    """Caffe: ``Caffe::solver_rank``: this process's solver, 0 = the root solver."""
    return _state['solver_rank']


def set_solver_rank(rank):
    rank = int(rank)
    if rank < 0:
        raise ValueError('solver_rank must be >= 0, got %d' % rank)
    _state['solver_rank'] = rank


def multiprocess():
    """Caffe: ``Caffe::multiprocess``: one solver per process (always so in qcaffe)."""
    return _state['multiprocess']


def set_multiprocess(value):
    _state['multiprocess'] = bool(value)


def xp():
    """The array module of the current mode (numpy or cupy)."""
    return cupy_module() if _state['mode'] == GPU else np


def get_array_module(*arrays):
    """numpy or cupy, whichever owns ``arrays`` (Chainer's ``get_array_module``)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_host(array):
    """A numpy array with the contents of ``array`` (no copy when it is already numpy)."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


def to_device(array):
    """``array`` in the current mode's memory."""
    if _state['mode'] == GPU:
        return cupy_module().asarray(array)
    return to_host(array)


def set_random_seed(seed):
    """Caffe: ``Caffe::set_random_seed``; seeds fillers, dropout, shuffling, mirror/crop.

    A negative seed (Caffe's default -1) seeds from the clock, as Caffe does.
    """
    global _rng
    seed = int(seed)
    _state['seed'] = seed if seed >= 0 else None
    _rng = np.random.RandomState(seed if seed >= 0 else None)
    if _cupy is not None and seed >= 0:
        _cupy.random.seed(seed)


def rank_seed(state_keys, rank):
    """A seed for solver ``rank``'s own random stream, derived from ``state_keys`` (the key
    array of a RandomState state).  A snapshot holds the root solver's streams; after a
    data-parallel resume the other ranks split theirs off this way, so they stay distinct."""
    import zlib
    return int(np.random.SeedSequence([zlib.crc32(np.asarray(state_keys).tobytes()),
                                       int(rank)]).generate_state(1)[0])


def rng():
    """The host random generator (numpy RandomState) seeded by ``set_random_seed``."""
    return _rng


def random_uniform(shape, low=0.0, high=1.0, dtype=np.float32):
    """Uniform samples on the current device (dropout masks, stochastic pooling)."""
    if _state['mode'] == GPU:
        return cupy_module().random.uniform(low, high, size=shape).astype(dtype)
    return _rng.uniform(low, high, size=shape).astype(dtype, copy=False)
