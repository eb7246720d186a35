"""Data-parallel training on several processes: MPI (CPU, many machines) and NCCL (GPUs).

Caffe equivalent: src/caffe/parallel.cpp (``NCCL<Dtype>``, ``P2PSync`` before it), the
multi-GPU path of ``caffe train -gpu 0,1`` and pycaffe's ``caffe.NCCL``.  The map:

* :mod:`.comm` -- :class:`Communicator`: the collectives (all-reduce, broadcast, objects),
  implemented by :class:`MPICommunicator` (mpi4py), :class:`NCCLCommunicator`
  (``cupy.cuda.nccl``) and :class:`LocalCommunicator` (one process);
* :mod:`.buckets` -- :class:`GradientBuckets`: every learnable diff in one buffer, cut into
  groups of consecutive layers, one reduction call per group;
* :mod:`.sync` -- :class:`DataParallel`: the solver callback that broadcasts the root's
  state, reduces the gradients (overlapped with backward under ``layer_wise_reduce``), keeps
  masks / statistics / layer state / compression parameters equal and checks the replicas;
* :mod:`.launch` -- the command line: ranks from ``mpiexec``, ``--gpu 0,1`` starting the
  ranks itself, one device per rank, an error on one rank ending all.

The solver side is the collective seam of ``qcaffe.solvers.base`` (``Solver.is_root``,
``Solver.decide``, callbacks between backward and update); Data layers read every N-th record
(``qcaffe.layers.data``).
"""
from .buckets import GROUP_BYTES, GradientBuckets
from .comm import (Communicator, DistributedError, LocalCommunicator, MPICommunicator,
                   NCCLCommunicator, launched_by_mpi, nccl_module, new_nccl_uid)
from .sync import DataParallel, gradient_params, quiet_non_root

__all__ = ['Communicator', 'LocalCommunicator', 'MPICommunicator', 'NCCLCommunicator', 'DistributedError',
           'GradientBuckets', 'GROUP_BYTES', 'DataParallel', 'gradient_params', 'quiet_non_root',
           'launched_by_mpi', 'nccl_module', 'new_nccl_uid']
