"""Solver state snapshots (.solverstate / .solverstate.h5), either format.

Caffe chooses the format by name: a path ending in ".h5" is HDF5, anything else a binary
``SolverState`` (Caffe: Solver::Restore, and the snapshot_format of Solver::Snapshot).
Both come back as a ``caffe_pb2.SolverState`` so the solver has one code path.
"""
import os

from ..proto import caffe_pb2
from .binary import read_binary_proto, write_binary_proto
from .errors import ModelFileError
from .files import display_path
from .hdf5 import read_hdf5_solver_state, write_hdf5_solver_state


_TEXT_FIELDS = ('learned_net', 'layer_state_file', 'layer_state_id')


def is_hdf5_name(path):
    """True if Caffe would treat ``path`` as HDF5 (its name ends in ".h5")."""
    return os.fsdecode(os.fspath(path)).endswith('.h5')


def read_solver_state(path):
    """Read a solver state (binary or HDF5 by name) as ``caffe_pb2.SolverState``.

    Caffe: Solver::Restore -> RestoreSolverStateFromBinaryProto / FromHDF5 (file side).
    """
    if is_hdf5_name(path):
        return read_hdf5_solver_state(path)
    state = read_binary_proto(path, caffe_pb2.SolverState())
    for name in _TEXT_FIELDS:
        value = getattr(state, name)
        if isinstance(value, bytes):    # protobuf's way of handing over non-UTF-8 text
            raise ModelFileError('%s: %s %r is not valid UTF-8 text (the file is damaged)'
                                 % (display_path(path), name, value))
    return state


def write_solver_state(path, state):
    """Write ``state`` (binary, or HDF5 when ``path`` ends in ".h5"), atomically.

    Caffe: SnapshotSolverStateToBinaryProto / SnapshotSolverStateToHDF5 (file side).
    """
    if is_hdf5_name(path):
        write_hdf5_solver_state(path, state)
    else:
        write_binary_proto(path, state)
