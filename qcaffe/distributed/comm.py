"""Communicators: the collective operations of data-parallel training, over MPI or NCCL.

Caffe equivalent: the NCCL calls of src/caffe/parallel.cpp (``ncclCommInitRank`` with a
unique id, ``ncclBcast``, ``ncclAllReduce``).  qcaffe puts the transport behind one small
interface, :class:`Communicator`, with two implementations on existing engines:

* :class:`MPICommunicator`: mpi4py on any MPI (MPICH, Open MPI), for processes started by
  ``mpiexec`` on one machine or many.  Host (numpy) buffers go to MPI directly; device (cupy)
  buffers are staged through the host.
* :class:`NCCLCommunicator`: NCCL through ``cupy.cuda.nccl`` for device buffers, one GPU
  per process.  Its unique id travels over MPI when the processes are MPI ranks, or is
  handed over by the caller (pycaffe ``caffe.NCCL(solver, uid)`` in the processes of
  python/train.py).

Array operations work in place on contiguous buffers; small Python objects (decisions, layer
state, checksums) go through :meth:`Communicator.bcast_object` /
:meth:`Communicator.allgather_object`.  Neither mpi4py nor cupy is imported before a
communicator is made.
"""
import os
import pickle

import numpy as np

from ..io.errors import QcaffeError

# Environment variables a process started by an MPI launcher has (MPICH/Intel MPI hydra,
# Open MPI, PMIx launchers such as srun --mpi=pmix, MVAPICH).
_LAUNCHER_VARIABLES = ('PMI_RANK', 'PMI_SIZE', 'PMIX_RANK', 'OMPI_COMM_WORLD_SIZE',
                       'MV2_COMM_WORLD_SIZE')


class DistributedError(QcaffeError):
    """Data-parallel training cannot start or the ranks disagree (names rank and cause)."""


def launched_by_mpi():
    """True when an MPI launcher (``mpiexec``, ``srun``) started this process.

    Read from the environment, so a plain ``qcaffe train`` never initialises MPI."""
    return any(v in os.environ for v in _LAUNCHER_VARIABLES)


def mpi():
    """``mpi4py.MPI`` (initialising MPI on first use), or a clear error."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError('data-parallel training needs mpi4py and an MPI library (pip '
                               'install mpi4py mpich, or mpi4py built against the cluster\'s '
                               'MPI); importing mpi4py failed: %s' % e) from None
    return MPI


def nccl_module():
    """``cupy.cuda.nccl`` when cupy has NCCL, else None."""
    try:
        from cupy.cuda import nccl
    except Exception:
        return None
    return nccl if getattr(nccl, 'available', True) else None


def _is_host(array):
    return isinstance(array, np.ndarray)


class _Done(object):
    """The handle of an operation that already finished."""

    def wait(self):
        pass


class Communicator(object):
    """``size`` processes, this one ``rank``; collectives every rank calls in the same order.

    ``allreduce`` sums in place, ``start_allreduce`` does the same without waiting (its
    handle's ``wait()`` does), ``bcast`` copies the root's array into every rank's."""
    rank = 0
    size = 1

    def allreduce(self, array):
        raise NotImplementedError

    def start_allreduce(self, array):
        self.allreduce(array)
        return _Done()

    def bcast(self, array, root=0):
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        raise NotImplementedError

    def allgather_object(self, obj):
        raise NotImplementedError

    def barrier(self):
        self.allgather_object(None)

    def abort(self, code=1):
        """End every rank now (after an error on this one); does not return."""
        os._exit(code)


class LocalCommunicator(Communicator):
    """One process alone (every collective is the identity): one-solver ``caffe.NCCL``."""

    def allreduce(self, array):
        pass

    def bcast(self, array, root=0):
        pass

    def bcast_object(self, obj, root=0):
        return obj

    def allgather_object(self, obj):
        return [obj]


class MPICommunicator(Communicator):
    """The processes of an MPI communicator (default ``MPI.COMM_WORLD``)."""

    def __init__(self, comm=None):
        self.MPI = mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allreduce(self, array):
        if _is_host(array):
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        else:           # device buffer, MPI without CUDA awareness: through the host
            host = array.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            array.set(host)

    def start_allreduce(self, array):
        if not _is_host(array):
            return super().start_allreduce(array)
        return _Request(self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM))

    def bcast(self, array, root=0):
        if _is_host(array):
            self.comm.Bcast(array, root=root)
        else:
            host = array.get()
            self.comm.Bcast(host, root=root)
            array.set(host)

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)

    def local(self):
        """(rank, size) among the ranks on this machine (shared memory)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()


def new_nccl_uid():
    """Caffe: ``NCCL::new_uid``: a fresh NCCL unique id as bytes."""
    uid = nccl_module().get_unique_id()
    # cupy returns bytes, or (older versions) a tuple of signed chars
    return uid if isinstance(uid, bytes) else bytes(c & 0xFF for c in uid)


class NCCLCommunicator(Communicator):
    """NCCL on the current CUDA device (Caffe: ``ncclCommInitRank(size, uid, rank)``).

    ``host``: an :class:`MPICommunicator` over the same ranks for objects and host arrays, or
    None (then those go through NCCL as bytes).  Reductions started with
    :meth:`start_allreduce` run on a stream of their own, after the work queued so far, so
    they overlap the rest of the backward pass (Caffe's ``layer_wise_reduce``).
    """

    def __init__(self, uid, size, rank, host=None):
        import cupy
        nccl = nccl_module()
        if nccl is None:
            raise DistributedError('NCCL is not available in this cupy installation')
        self.cp, self.nccl = cupy, nccl
        self.size, self.rank, self.host = int(size), int(rank), host
        try:
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        except TypeError:   # older cupy: the id as a tuple of signed chars
            self.comm = nccl.NcclCommunicator(
                self.size, tuple(b - 256 if b > 127 else b for b in uid), self.rank)
        self.side = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.int64): nccl.NCCL_INT64,
                       np.dtype(np.uint8): nccl.NCCL_UINT8}

    def _device(self, array):
        return self.cp.asarray(array) if _is_host(array) else array

    def allreduce(self, array):
        if _is_host(array) and self.host is not None:
            return self.host.allreduce(array)
        dev = self._device(array)
        self.comm.allReduce(dev.data.ptr, dev.data.ptr, dev.size, self._types[dev.dtype],
                            self.nccl.NCCL_SUM, self.cp.cuda.get_current_stream().ptr)
        if dev is not array:
            array[...] = dev.get()

    def start_allreduce(self, array):
        if _is_host(array):
            return super().start_allreduce(array)
        ready = self.cp.cuda.Event()
        ready.record(self.cp.cuda.get_current_stream())
        self.side.wait_event(ready)     # the gradients computed so far
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size,
                            self._types[array.dtype], self.nccl.NCCL_SUM, self.side.ptr)
        return _StreamDone(self.side)

    def bcast(self, array, root=0):
        if _is_host(array) and self.host is not None:
            return self.host.bcast(array, root)
        dev = self._device(array)
        self.comm.bcast(dev.data.ptr, dev.size, self._types[dev.dtype], root,
                        self.cp.cuda.get_current_stream().ptr)
        if dev is not array:
            array[...] = dev.get()

    def bcast_object(self, obj, root=0):
        if self.host is not None:
            return self.host.bcast_object(obj, root)
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else data.size], np.int64)
        self.bcast(n, root)
        buf = data.copy() if data is not None else np.empty(int(n[0]), np.uint8)
        self.bcast(buf, root)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj):
        if self.host is not None:
            return self.host.allgather_object(obj)
        return [self.bcast_object(obj, root) for root in range(self.size)]

    def abort(self, code=1):
        if self.host is not None:
            self.host.abort(code)
        self.comm.abort()
        os._exit(code)


class _Request(object):
    def __init__(self, request):
        self.request = request

    def wait(self):
        self.request.Wait()


class _StreamDone(object):
    def __init__(self, stream):
        self.stream = stream

    def wait(self):
        self.stream.synchronize()
