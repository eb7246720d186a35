"""Caffe's HDF5 snapshot files: weights (.caffemodel.h5) and solver states (.solverstate.h5).

Layouts (Caffe: Net::ToHDF5 / CopyTrainedLayersFromHDF5, SGDSolver::SnapshotSolverStateToHDF5
/ RestoreSolverStateFromHDF5):

* weights: group ``data``, one subgroup per layer (every layer, also those without
  parameters), float32 datasets ``0``, ``1``, ... with the blob shapes; a shared (non-owner)
  parameter is not written, leaving a gap. ``diff`` has the same layout when diffs are saved.
  A layer name containing "/" (e.g. "conv1/bn") becomes nested groups, as HDF5 path syntax
  makes Caffe do; reading walks the nesting back into the full name.
* solver state: int datasets ``iter`` and ``current_step`` (shape (1,)), string
  ``learned_net`` (fixed-length, scalar), group ``history`` with float32 datasets ``0``...

h5py is optional: without it these functions raise a QcaffeError saying how to install it.
"""
import os

import numpy as np

from ..proto import caffe_pb2
from .blobproto import array_to_blobproto, blobproto_to_array
from .errors import ModelFileError, ModelFileNotFoundError, QcaffeError
from .files import atomic_output_path, display_path, file_is_hdf5, sniff_content


def _h5py():
    try:
        import h5py
    except ImportError:
        raise QcaffeError('HDF5 files (.caffemodel.h5, .solverstate.h5) need the h5py package, '
                          'which is not installed: pip install h5py  (or: pip install qcaffe[hdf5])'
                          ) from None
    return h5py


class _OpenHDF5:
    """``with _OpenHDF5(path, what) as f``: h5py.File for reading, with clear errors."""

    def __init__(self, path, what):
        self.path = path
        self.what = what
        self.file = None

    def __enter__(self):
        h5py = _h5py()
        path = self.path
        if not os.path.exists(path):
            raise ModelFileNotFoundError('%s file %s does not exist' % (self.what, display_path(path)))
        if os.path.isdir(path):
            raise ModelFileError('%s file %s is a directory, not a file'
                                 % (self.what, display_path(path)))
        if not file_is_hdf5(path):
            with open(path, 'rb') as f:
                head = f.read(65536)
            raise ModelFileError('%s is %s, not an HDF5 %s file.'
                                 % (display_path(path), sniff_content(head).description, self.what))
        try:
            self.file = h5py.File(path, 'r')
        except OSError as e:
            raise ModelFileError('cannot open HDF5 %s file %s (truncated or damaged?): %s'
                                 % (self.what, display_path(path), e)) from None
        return self.file

    def __exit__(self, *exc):
        self.file.close()
        return False


def _float_dataset(dataset, path):
    if dataset.dtype.kind != 'f':
        # Caffe: CHECK_EQ(class_, H5T_FLOAT) << "Expected float or double data".
        raise ModelFileError('%s: dataset %s has type %s; Caffe blobs are stored as float data'
                             % (display_path(path), dataset.name, dataset.dtype))
    return np.asarray(dataset[()], dtype=np.float32)


def _numbered_datasets(group, path):
    """{index: float32 array} of the datasets "0", "1", ... directly in ``group``."""
    h5py = _h5py()
    found = {}
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            if not key.isdigit():
                raise ModelFileError('%s: unexpected dataset %s; Caffe names blob datasets '
                                     '0, 1, 2, ...' % (display_path(path), item.name))
            found[int(key)] = _float_dataset(item, path)
    return found


def _read_layers(group, prefix, path, out):
    h5py = _h5py()
    for key, item in group.items():
        if not isinstance(item, h5py.Group):
            if not prefix:
                raise ModelFileError('%s: unexpected dataset %s; Caffe stores one group per '
                                     'layer in %s' % (display_path(path), item.name, group.name))
            continue  # a blob of the enclosing layer, read by _numbered_datasets
        name = prefix + key
        blobs = _numbered_datasets(item, path)
        # Index-aligned with the layer's blobs; None where a shared parameter was not saved.
        arrays = [blobs.get(i) for i in range(max(blobs) + 1)] if blobs else []
        out.append((name, arrays))
        _read_layers(item, name + '/', path, out)


def read_hdf5_weights(path, diff=False):
    """Read an HDF5 weights file: a list of ``(layer_name, [float32 array or None, ...])``.

    Layers come in the file's order (creation order where the file tracks it, as those
    written by :func:`write_hdf5_weights` do; otherwise HDF5's name order, as for files
    written by Caffe). ``None`` marks a missing index (a shared parameter Caffe did not
    write). ``diff=True`` reads the ``diff`` group instead of ``data``.

    Caffe: Net::CopyTrainedLayersFromHDF5 (file side).
    """
    group_name = 'diff' if diff else 'data'
    with _OpenHDF5(path, 'weights (.caffemodel.h5)') as f:
        if group_name not in f:
            raise ModelFileError('%s has no "%s" group, so it is not a Caffe HDF5 weights file '
                                 '(top-level entries: %s)'
                                 % (display_path(path), group_name, ', '.join(f.keys()) or 'none'))
        out = []
        _read_layers(f[group_name], '', path, out)
    return out


def _write_layers(group, layers, path):
    written = set()
    for name, arrays in layers:
        if not name or name in written:
            raise ModelFileError('cannot write %s: %s layer name %r (HDF5 weights are stored '
                                 'by layer name)' % (display_path(path),
                                                     'empty' if not name else 'duplicate', name))
        written.add(name)
        # require_group: "a/b" may already have created group "a" as its parent.
        layer_group = group.require_group(name)
        for i, array in enumerate(arrays):
            if array is None:
                continue  # shared (non-owner) parameter: Caffe writes only owners
            layer_group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32),
                                       track_times=False)


def write_hdf5_weights(path, layers, diffs=None):
    """Write an HDF5 weights file atomically.

    ``layers``: ``[(layer_name, [array or None, ...]), ...]`` for every layer of the net in
    order (layers without parameters get an empty group, as in Caffe; ``None`` skips a
    shared parameter). ``diffs``: the same structure for the ``diff`` group, or None.

    Caffe: Net::ToHDF5.
    """
    h5py = _h5py()
    with atomic_output_path(path, 'HDF5 weights') as tmp:
        # track_order keeps the net's layer order readable; Caffe reads by name either way.
        with h5py.File(tmp, 'w', track_order=True) as f:
            _write_layers(f.create_group('data', track_order=True), layers, path)
            if diffs is not None:
                _write_layers(f.create_group('diff', track_order=True), diffs, path)


def _read_scalar(f, name, path):
    if name not in f:
        raise ModelFileError('%s has no "%s" dataset; not a Caffe HDF5 solver state'
                             % (display_path(path), name))
    return np.asarray(f[name][()]).reshape(-1)


def read_hdf5_solver_state(path):
    """Read an HDF5 solver state into a ``caffe_pb2.SolverState`` (history as BlobProtos).

    Caffe: SGDSolver::RestoreSolverStateFromHDF5 (file side).
    """
    state = caffe_pb2.SolverState()
    with _OpenHDF5(path, 'solver state (.solverstate.h5)') as f:
        state.iter = int(_read_scalar(f, 'iter', path)[0])
        for name in ('learned_net',) + _QCAFFE_STRINGS:
            if name in f:
                setattr(state, name, _read_string(f, name, path))
        state.current_step = int(_read_scalar(f, 'current_step', path)[0])
        if 'history' not in f:
            raise ModelFileError('%s has no "history" group; not a Caffe HDF5 solver state'
                                 % display_path(path))
        history = _numbered_datasets(f['history'], path)
        missing = sorted(set(range(len(history))) - set(history))
        if missing:
            raise ModelFileError('%s: history datasets are not numbered 0..%d (missing %s)'
                                 % (display_path(path), len(history) - 1, missing))
        for i in range(len(history)):
            array_to_blobproto(history[i], out=state.history.add())
    return state


# qcaffe's own SolverState fields (the snapshot's layer-state companion), stored like
# learned_net when set; Caffe reads its datasets by name and ignores these.
_QCAFFE_STRINGS = ('layer_state_file', 'layer_state_id')


def _read_string(f, name, path):
    value = f[name][()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b''
    if isinstance(value, bytes):
        try:
            value = value.rstrip(b'\0').decode('utf-8')
        except UnicodeDecodeError:
            raise ModelFileError('%s: %s is not valid UTF-8: %r'
                                 % (display_path(path), name, value)) from None
    if not isinstance(value, str):
        raise ModelFileError('%s: dataset %s holds %s, expected a string'
                             % (display_path(path), name, type(value).__name__))
    return value


def _write_fixed_string(h5py, f, name, text):
    # Caffe (H5LTmake_dataset_string) stores a scalar fixed-length, NUL-terminated ASCII
    # string; h5py's own str/bytes writing would make a variable-length or NUL-padded one.
    raw = text.encode('utf-8') + b'\0'
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dataset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype='S%d' % len(raw)), mtype=tid)


def write_hdf5_solver_state(path, state):
    """Write ``caffe_pb2.SolverState`` ``state`` as an HDF5 solver state, atomically.

    Caffe: SGDSolver::SnapshotSolverStateToHDF5.
    """
    h5py = _h5py()
    with atomic_output_path(path, 'HDF5 solver state') as tmp:
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('iter', data=np.array([state.iter], dtype=np.int32), track_times=False)
            _write_fixed_string(h5py, f, 'learned_net', state.learned_net)
            f.create_dataset('current_step', data=np.array([state.current_step], dtype=np.int32),
                             track_times=False)
            for name in _QCAFFE_STRINGS:
                if state.HasField(name):
                    _write_fixed_string(h5py, f, name, getattr(state, name))
            history = f.create_group('history')
            for i, blob in enumerate(state.history):
                history.create_dataset(str(i), data=blobproto_to_array(blob), track_times=False)
