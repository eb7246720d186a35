"""Starting data-parallel training from the command line: ranks, devices, errors.

Caffe equivalent: the multi-GPU part of tools/caffe.cpp ``train()`` (``-gpu 0,1``: one solver
thread per GPU, ``NCCL::Run``).  qcaffe runs one process per solver instead:

* ``mpiexec -n N qcaffe train ...`` (one machine or many): every process is a rank of
  ``MPI.COMM_WORLD`` (:func:`world`); with ``--gpu`` each takes the device of its rank on its
  machine (:func:`local_device`);
* ``qcaffe train --gpu 0,1,...`` / ``--gpu all`` outside ``mpiexec`` starts
  ``mpiexec -n <number of GPUs>`` with the same command (:func:`relaunch`);
* the CPU engine's threads are the machine's cores shared by its ranks (:func:`share_cores`);
* on GPUs the gradients go through NCCL when cupy has it (its unique id sent over MPI), else
  through MPI via host memory (:func:`communicator`);
* an error on any rank is printed with that rank's number and ends every rank
  (``MPI_Abort``, :func:`abort_on_error`), so no rank waits forever in a collective.
"""
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import traceback

from ..io.errors import QcaffeError
from .comm import (DistributedError, MPICommunicator, NCCLCommunicator, launched_by_mpi,
                   nccl_module, new_nccl_uid)

log = logging.getLogger('qcaffe')


def world():
    """The ranks of ``mpiexec`` (an :class:`MPICommunicator`), or None outside a launcher."""
    return MPICommunicator() if launched_by_mpi() else None


def find_mpiexec():
    """The ``mpiexec`` next to this Python (pip's mpich installs one there), else on PATH."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    for name in ('mpiexec', 'mpirun'):
        exe = shutil.which(name, path=path)
        if exe:
            return exe
    raise DistributedError('training on several GPUs starts one process per GPU with '
                           'mpiexec, which was not found next to %s nor on PATH (pip install '
                           'mpi4py mpich)' % sys.executable)


def relaunch_command(argv, n, mpiexec=None):
    """``mpiexec -n <n> <python> -m qcaffe train <argv>``."""
    return [mpiexec or find_mpiexec(), '-n', str(int(n)), sys.executable, '-m', 'qcaffe',
            'train'] + list(argv)


def relaunch(argv, n):
    """Run this ``qcaffe train`` command as ``n`` MPI ranks; their exit status."""
    cmd = relaunch_command(argv, n)
    log.info('Starting %d processes, one per GPU: %s', n, ' '.join(cmd))
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the ranks too; they stop (and snapshot) per --sigint_effect
            continue


def local_device(gpus, local_rank, local_size):
    """The device of the rank ``local_rank`` of the ``local_size`` on this machine."""
    if local_size > len(gpus):
        raise DistributedError('%d ranks run on this machine but --gpu names %d device%s (%s); '
                               'give one device per rank on each machine'
                               % (local_size, len(gpus), '' if len(gpus) == 1 else 's',
                                  ','.join(str(g) for g in gpus)))
    return gpus[local_rank]


def share_cores(local_size):
    """The CPU engine's threads: this machine's cores shared by its ranks, unless
    ``QCAFFE_NUM_THREADS`` says otherwise (2 ranks on 2 cores: 1 thread each)."""
    from .. import config
    from ..ops import parallel
    if 'QCAFFE_NUM_THREADS' not in os.environ:
        parallel.set_num_threads(max(1, config.usable_cores() // local_size))
    return parallel.num_threads()


def communicator(world_comm, gpu):
    """What the gradients travel over: NCCL for GPU ranks when cupy has it, else MPI."""
    if not gpu:
        return world_comm
    if nccl_module() is None:
        log.warning('cupy has no NCCL: the gradients go through host memory over MPI')
        return world_comm
    uid = world_comm.bcast_object(new_nccl_uid() if world_comm.rank == 0 else None)
    return NCCLCommunicator(uid, world_comm.size, world_comm.rank, host=world_comm)


@contextlib.contextmanager
def abort_on_error(comm, prog):
    """Print an error raised on this rank (with the rank) and end all ranks."""
    try:
        yield
    except SystemExit as e:
        if e.code not in (None, 0):
            _fail(comm, prog, 'exit status %s' % e.code)
        raise
    except BaseException as e:
        from ..backend import BackendError
        text = (str(e) if isinstance(e, (QcaffeError, BackendError))
                else traceback.format_exc().rstrip())
        _fail(comm, prog, text)


def _fail(comm, prog, text):
    sys.stdout.flush()
    sys.stderr.flush()
    print('%s: error: rank %d of %d: %s' % (prog, comm.rank, comm.size, text),
          file=sys.stderr, flush=True)
    _drained(2)
    comm.abort(1)


def _drained(fd, timeout=5.0):
    """Wait (at most ``timeout`` s) until the reader of ``fd`` has taken all that was written.

    The launcher forwards a rank's output through a pipe and kills every rank as soon as it
    hears of an abort; without this wait the failing rank's message was lost about one time
    in ten on a loaded machine.  Not a pipe (a file, a terminal): returns at once."""
    import fcntl
    import struct
    import termios
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            unread = struct.unpack('i', fcntl.ioctl(fd, termios.FIONREAD, b'\0' * 4))[0]
        except (OSError, ValueError):
            return
        if unread == 0:
            return
        time.sleep(0.01)
