"""A snapshot is one commit: the weights and the layer-state companion
(``<state>.layers.npz``) are written first and the ``.solverstate`` last, so a run killed
between the writes leaves the previous snapshot as the latest complete one; a restore whose
companion is missing or belongs to another snapshot says so; temporary files of a killed
writer are removed at the next start; a state with a negative iteration is refused.

The net reads a small LMDB with random crops and mirrors and has a Dropout layer, so both
the data layer's state and the host RNG travel in the companion.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import qcaffe.solvers.base as solver_base
from qcaffe.data.lmdb_io import encode_datums, key_for, write_lmdb
from qcaffe.io.solverstate import read_solver_state, write_solver_state
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import SolverError, create_solver

NET = '''
layer { name: "d" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 crop_size: 6 mirror: true }
  data_param { source: "%s" batch_size: 4 backend: LMDB } }
layer { name: "drop" type: "Dropout" bottom: "data" top: "drop" }
layer { name: "ip" type: "InnerProduct" bottom: "drop" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


@pytest.fixture(scope='module')
def db(tmp_path_factory):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(10, 1, 8, 8)).astype(np.uint8)
    records = encode_datums(images, rng.randint(0, 3, size=10))
    path = str(tmp_path_factory.mktemp('snap') / 'db')
    write_lmdb(path, ((key_for(i), records[i]) for i in range(10)))
    return path


def make_solver(db, prefix, fmt='BINARYPROTO', snapshot=2):
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 6 '
                      'random_seed: 5 display: 0 snapshot_format: %s' % fmt, p)
    text_format.Merge(NET % db, p.net_param)
    p.snapshot = snapshot
    p.snapshot_prefix = str(prefix)
    return create_solver(p)


def weights(solver):
    return solver.net.layers[solver.net.layer_index('ip')].blobs[0].data.copy()


def test_a_kill_between_the_writes_leaves_no_state_and_the_previous_snapshot_resumes(
        db, tmp_path, monkeypatch):
    full = make_solver(db, tmp_path / 'full')
    full.step(6)
    run = make_solver(db, tmp_path / 'run')
    real_write = solver_base.atomic_write_bytes

    def killed_at_iteration_4(path, data, what='output'):
        if path.endswith('_iter_4.solverstate' + solver_base.Solver.LAYER_STATE_SUFFIX):
            raise KeyboardInterrupt     # the process dies while writing the companion
        real_write(path, data, what)
    monkeypatch.setattr(solver_base, 'atomic_write_bytes', killed_at_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        run.step(6)
    monkeypatch.undo()
    # The state of iteration 4 was never committed: no .solverstate refers to missing data
    assert not os.path.exists(str(tmp_path / 'run_iter_4.solverstate'))
    assert os.path.exists(str(tmp_path / 'run_iter_2.solverstate.layers.npz'))
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]
    # ... and the latest complete snapshot resumes exactly
    resumed = make_solver(db, tmp_path / 'resumed')
    resumed.restore(str(tmp_path / 'run_iter_2.solverstate'))
    resumed.step(4)
    np.testing.assert_array_equal(weights(resumed), weights(full))


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_the_state_records_its_companion_and_a_missing_one_is_reported(
        fmt, db, tmp_path, qlog):
    if fmt == 'HDF5':
        pytest.importorskip('h5py')
    run = make_solver(db, tmp_path / 'run', fmt)
    run.step(2)
    state_file = run.last_snapshot[1]
    companion = state_file + solver_base.Solver.LAYER_STATE_SUFFIX
    state = read_solver_state(state_file)
    assert state.layer_state_file == os.path.basename(companion)
    assert len(state.layer_state_id) == 16
    os.remove(companion)                # lost (or not copied along with the state)
    resumed = make_solver(db, tmp_path / 'resumed', fmt)
    resumed.restore(state_file)
    assert resumed.iter == 2            # resumes as Caffe would ...
    warning, = qlog.warnings()          # ... and says what is not restored, once
    assert state_file in warning and os.path.basename(companion) in warning
    assert 'which is missing' in warning and 'will not match an uninterrupted run' in warning
    assert "layer(s) 'd' restart from their first record" in warning


def test_a_companion_of_another_snapshot_is_ignored_with_a_warning(db, tmp_path, qlog):
    a = make_solver(db, tmp_path / 'a')
    a.step(2)
    b = make_solver(db, tmp_path / 'b', snapshot=3)
    b.step(3)
    # b's iteration 3 companion put where a's iteration 2 state looks for its own
    os.replace(b.last_snapshot[1] + '.layers.npz', a.last_snapshot[1] + '.layers.npz')
    resumed = make_solver(db, tmp_path / 'r')
    resumed.restore(a.last_snapshot[1])
    warning, = qlog.warnings()
    assert 'belongs to another snapshot' in warning and 'ignored' in warning


def test_a_renamed_state_finds_its_companion_by_the_recorded_name(db, tmp_path, qlog):
    full = make_solver(db, tmp_path / 'full')
    full.step(6)
    run = make_solver(db, tmp_path / 'run')
    run.step(2)
    renamed = str(tmp_path / 'renamed.solverstate')
    os.rename(run.last_snapshot[1], renamed)
    resumed = make_solver(db, tmp_path / 'resumed')
    resumed.restore(renamed)
    resumed.step(4)
    np.testing.assert_array_equal(weights(resumed), weights(full))
    assert not qlog.warnings()


def test_a_damaged_companion_is_a_clear_error(db, tmp_path):
    run = make_solver(db, tmp_path / 'run')
    run.step(2)
    with open(run.last_snapshot[1] + '.layers.npz', 'r+b') as f:
        f.truncate(100)
    resumed = make_solver(db, tmp_path / 'resumed')
    with pytest.raises(SolverError) as e:
        resumed.restore(run.last_snapshot[1])
    msg = str(e.value)
    assert '\n' not in msg and 'run_iter_2.solverstate.layers.npz' in msg
    assert 'Delete it to resume as Caffe does' in msg


def test_a_state_without_layer_state_drops_a_stale_companion(db, tmp_path):
    run = make_solver(db, tmp_path / 'run')
    run.step(2)
    companion = run.last_snapshot[1] + '.layers.npz'
    assert os.path.exists(companion)
    # the same snapshot name, now from a net without layer state (a plain Input net)
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot: 2', p)
    text_format.Merge('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 '
                      'dim: 2 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: '
                      '"ip" inner_product_param { num_output: 1 } } layer { name: "l" type: '
                      '"EuclideanLoss" bottom: "ip" bottom: "ip" top: "l" }', p.net_param)
    p.snapshot_prefix = str(tmp_path / 'run')
    plain = create_solver(p)
    plain.step(2)
    assert not os.path.exists(companion)
    assert not read_solver_state(plain.last_snapshot[1]).HasField('layer_state_file')


@pytest.mark.parametrize('field', ['iter', 'current_step'])
def test_a_negative_iteration_in_a_state_is_refused(field, db, tmp_path):
    run = make_solver(db, tmp_path / 'run')
    run.step(2)
    state = read_solver_state(run.last_snapshot[1])
    setattr(state, field, -5)
    bad = str(tmp_path / 'bad.solverstate')
    write_solver_state(bad, state)
    resumed = make_solver(db, tmp_path / 'resumed')
    with pytest.raises(SolverError, match=r"bad\.solverstate.*: %s is -5; it must be >= 0"
                       % field):
        resumed.restore(bad)
    assert resumed.iter == 0


def _dead_pid():
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def test_temporaries_of_a_killed_snapshot_writer_are_removed_at_the_next_start(
        db, tmp_path, qlog):
    orphan = tmp_path / ('.run_iter_4.caffemodel.%d-0123abcd.tmp' % _dead_pid())
    live = tmp_path / ('.run_iter_4.solverstate.%d-0123abcd.tmp' % os.getpid())
    other = tmp_path / ('.elsewhere_iter_4.caffemodel.%d-0123abcd.tmp' % _dead_pid())
    for path in (orphan, live, other):
        path.write_bytes(b'half a snapshot')
    make_solver(db, tmp_path / 'run')
    assert not orphan.exists()
    assert live.exists()                # its writer still runs: reported, not touched
    assert other.exists()               # another prefix's business
    removed, running = qlog.warnings()
    assert 'Removed 1 incomplete snapshot file(s)' in removed and str(orphan) in removed
    assert str(live) in running and 'another running process' in running


def test_an_interrupted_atomic_write_leaves_no_temporary(tmp_path):
    from qcaffe.io.files import atomic_output_path
    target = tmp_path / 'x.caffemodel'
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_path(str(target)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'partial')
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
