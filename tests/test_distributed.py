"""Data-parallel training (qcaffe.distributed): Caffe's multi-GPU semantics on MPI ranks.

In-process tests check the parts alone: Data / HDF5Data layers striding over the records, the
gradient buffer and its groups, when the reductions run (layer-wise, iter_size), the replica
check, the pycaffe surface and the launcher's pieces.  Then real ``mpiexec -n 2`` runs of
``qcaffe train`` and of python/train.py's pycaffe calls on CPU ranks check, on a small net:

* 2 ranks at batch B give exactly (bit for bit) the weights and solver history of one process
  at ``iter_size: 2`` when that process reads the records grouped as the ranks read them (rank
  k takes records k, k+2, ...; one process at iter_size 2 takes B consecutive records per
  pass: same records per iteration, other grouping; with the plain database the two differ by
  float rounding only, as the grouping changes the order of the gradient sums);
* every rank holds the same parameters at every iteration (checked after every iteration);
* ``--snapshot`` resumes at 2 ranks exactly, and at 1 rank from the same read position;
* an error on one rank ends both with that rank's message; Ctrl-C stops both at the root's
  iteration; ``--gpu 0,1`` starts the ranks.

The MPI tests skip (with the reason) where mpi4py or mpiexec is missing; ``pip install -e
".[test]"`` brings both (mpi4py, mpich).  NCCL (GPU) is exercised only where cupy and devices
exist: none of these tests needs one.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from qcaffe import backend
from qcaffe.blob import Blob
from qcaffe.data.lmdb_io import datum_bytes, encode_datums, key_for, read_lmdb, write_lmdb
from qcaffe.distributed import (DataParallel, DistributedError, GradientBuckets,
                                LocalCommunicator)
from qcaffe.distributed import launch
from qcaffe.distributed.comm import _Done
from qcaffe.io import load_weights_file
from qcaffe.io.solverstate import read_solver_state
from qcaffe.layers.base import LayerError, register_layer
from qcaffe.layers.common import InnerProductLayer
from qcaffe.solvers import create_solver
from qcaffe.testing import make_layer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8

NET = '''name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(train)s" batch_size: %(batch)d backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "db" batch_size: 16 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
%(extra)slayer { name: "ip" type: "InnerProduct" bottom: "%(ip_bottom)s" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

SOLVER = '''net: "%(net)s"
test_iter: 2
test_interval: 3
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 1
max_iter: 6
snapshot: 3
snapshot_prefix: "snap/%(prefix)s"
random_seed: 1
%(extra)s'''


def write_project(root, name, train='db', iter_size=1, layer_wise=True, python_layer=False):
    """``<name>.prototxt`` (solver) and ``<name>_net.prototxt`` in ``root``."""
    extra = ('layer { name: "boom" type: "Python" bottom: "pool" top: "boom"\n'
             '  python_param { module: "boom" layer: "Boom" } }\n') if python_layer else ''
    (root / ('%s_net.prototxt' % name)).write_text(NET % dict(
        train=train, batch=BATCH, extra=extra, ip_bottom='boom' if python_layer else 'pool'))
    lines = ('iter_size: %d\n' % iter_size if iter_size > 1 else '') + \
        ('' if layer_wise else 'layer_wise_reduce: false\n')
    (root / ('%s.prototxt' % name)).write_text(SOLVER % dict(
        net='%s_net.prototxt' % name, prefix=name, extra=lines))
    (root / 'snap').mkdir(exist_ok=True)
    return '%s.prototxt' % name


def grouped_as_ranks(values, ranks, batch):
    """The records reordered so that consecutive batches are those the ranks read together
    (rank k: records k, k+ranks, ...): one process at iter_size ``ranks`` then sees the same
    batches as the ranks."""
    span = ranks * batch
    order = [g + r + ranks * j for g in range(0, len(values) - len(values) % span, span)
             for r in range(ranks) for j in range(batch)]
    return [values[k] for k in order]


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp('distributed')
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (256, 1, 12, 12)).astype(np.uint8)
    records = encode_datums(images, rng.randint(0, 10, 256))
    write_lmdb(str(root / 'db'), ((key_for(i), records[i]) for i in range(256)))
    values = [v for _, v in read_lmdb(str(root / 'db'))]
    write_lmdb(str(root / 'db_grouped'), ((key_for(i), v) for i, v in
                                          enumerate(grouped_as_ranks(values, 2, BATCH))))
    (root / 'boom.py').write_text(BOOM)
    return root


@pytest.fixture
def solvers():
    """Restore the single-solver defaults after a test that pretends to be a rank."""
    yield backend
    backend.set_solver_count(1)
    backend.set_solver_rank(0)
    backend.set_multiprocess(False)


# ------------------------------------------------------------------ Data layers
def _label_db(path, n):
    write_lmdb(str(path), ((key_for(i), datum_bytes(np.full((1, 2, 2), i, np.uint8), i))
                           for i in range(n)))
    return str(path)


@pytest.mark.parametrize('in_memory', [True, False])
def test_data_layer_reads_every_nth_record(tmp_path, monkeypatch, solvers, in_memory):
    """Caffe's DataLayer::Skip: rank k of N keeps the records k, k+N, ... of the stream
    (wrapping around the end as the stream does); TEST nets read everything."""
    import qcaffe.layers.data as data_layers
    monkeypatch.setattr(data_layers, 'IN_MEMORY_LIMIT', 1 << 40 if in_memory else 0)
    source = _label_db(tmp_path / 'db', 20)
    params = dict(data_param=dict(source=source, batch_size=3, backend='LMDB'))
    solvers.set_solver_count(3)
    seen = []
    for rank in range(3):
        solvers.set_solver_rank(rank)
        layer = make_layer('Data', phase='TRAIN', **params)
        top = [Blob(), Blob()]
        layer.setup([], top)
        labels = []
        for _ in range(3):
            layer.forward([], top)
            labels.append(top[1].data.astype(int).tolist())
            np.testing.assert_array_equal(top[0].data[:, 0, 0, 0], top[1].data)
        assert labels == [[rank, rank + 3, rank + 6], [rank + 9, rank + 12, rank + 15],
                          [(rank + 18) % 20, (rank + 21) % 20, (rank + 24) % 20]]
        # the saved position is the stream's, the same on every rank: 3 batches of 3 x 3
        assert int(layer.extra_state()['source_position']) == 27 % 20
        seen += labels[0] + labels[1]
        layer.stop_prefetch()
    assert sorted(seen) == list(range(18))      # disjoint, nothing left out
    test_layer = make_layer('Data', phase='TEST', **params)
    top = [Blob(), Blob()]
    test_layer.setup([], top)
    test_layer.forward([], top)
    assert top[1].data.tolist() == [0, 1, 2]
    test_layer.stop_prefetch()


def test_hdf5_data_reads_every_nth_row(tmp_path, solvers):
    h5py = pytest.importorskip('h5py')
    with h5py.File(str(tmp_path / 'a.h5'), 'w') as f:
        f['data'] = np.arange(10, dtype=np.float32)[:, None]
        f['label'] = np.arange(10, dtype=np.float32)
    (tmp_path / 'list.txt').write_text(str(tmp_path / 'a.h5') + '\n')
    solvers.set_solver_count(2)
    solvers.set_solver_rank(1)
    layer = make_layer('HDF5Data', phase='TRAIN', hdf5_data_param=dict(
        source=str(tmp_path / 'list.txt'), batch_size=3))
    layer.layer_param.top.extend(['data', 'label'])
    top = [Blob(), Blob()]
    layer.setup([], top)
    labels = []
    for _ in range(2):
        layer.forward([], top)
        labels += top[1].data.astype(int).tolist()
    assert labels == [1, 3, 5, 7, 9, 1]
    shuffled = make_layer('HDF5Data', phase='TRAIN', name='h5', hdf5_data_param=dict(
        source=str(tmp_path / 'list.txt'), batch_size=3, shuffle=True))
    shuffled.layer_param.top.extend(['data', 'label'])
    with pytest.raises(LayerError, match="'h5'.*shuffle is not supported with 2"):
        shuffled.setup([], [Blob(), Blob()])


# ------------------------------------------------------------- gradient buffer
def _solver(root, name, **kw):
    old = os.getcwd()
    os.chdir(str(root))
    try:
        return create_solver(_read(root / write_project(root, name, **kw)), source=name)
    finally:
        os.chdir(old)


def _read(path):
    from qcaffe.io.binary import read_solver_param
    return read_solver_param(str(path))


def test_gradients_live_in_one_buffer_cut_at_layer_boundaries(project):
    solver = _solver(project, 'buckets')
    net = solver.net
    index = {id(l): i for i, l in enumerate(net.layers)}
    params = [(index[id(p.layer)], p.blob) for p in solver.update_params]
    buckets = GradientBuckets(params, group_bytes=1)        # every layer a group
    conv, ip = net.layer_names.index('conv'), net.layer_names.index('ip')
    assert [g.layers for g in buckets.groups] == [(ip,), (conv,)]   # backward order
    assert [g.first_layer for g in buckets.groups] == [ip, conv]
    sizes = [b.count for _, b in params]
    assert buckets.count == sum(sizes) == sum(g.array.size for g in buckets.groups)
    # the diffs are views of the buffer: the layers' backward writes land in it
    net.forward_backward()
    backward_order = sorted(params, key=lambda p: -p[0])    # ip weight, ip bias, conv ...
    flat = np.concatenate([b.diff.ravel() for _, b in backward_order])
    np.testing.assert_array_equal(buckets.buffer, flat)
    assert np.abs(flat).sum() > 0
    # a diff storage replaced behind the buffer's back is put back in (contents kept)
    blob = params[0][1]                     # conv weight: the last group starts with it
    other = Blob(*blob.shape)
    other.diff[...] = blob.diff + 1
    blob.share_diff(other)
    buckets.ensure()
    np.testing.assert_array_equal(buckets.groups[-1].array[:blob.count], other.diff.ravel())
    assert other.diff.ctypes.data == buckets.groups[-1].array.ctypes.data
    one = GradientBuckets(params)           # 8 MiB groups: LeNet-sized nets are one group
    assert len(one.groups) == 1 and one.groups[0].layers == (conv, ip)


class RecordingComm(LocalCommunicator):
    """One rank that records when each reduction starts (in which backward pass)."""

    def __init__(self, size=1):
        self.size = size
        self.calls = []
        self.passes = 0

    def start_allreduce(self, array):
        self.calls.append(('start', array.size, self.passes))
        return _Done()

    def allreduce(self, array):
        self.calls.append(('blocking', array.size, self.passes))


@pytest.mark.parametrize('layer_wise', [True, False])
def test_reductions_run_once_per_iteration_after_the_last_pass(project, layer_wise):
    """layer_wise_reduce: each group starts as soon as backward has passed it, only in the
    last of iter_size passes; otherwise one blocking call per group before the update.  With
    one rank the training is the plain one, bit for bit."""
    plain = _solver(project, 'plain_%d' % layer_wise, iter_size=2, layer_wise=layer_wise)
    plain.step(2)
    solver = _solver(project, 'dp_%d' % layer_wise, iter_size=2, layer_wise=layer_wise)
    comm = RecordingComm()
    dp = DataParallel(solver, comm, group_bytes=1)
    dp.bcast()
    dp.attach()
    solver.net.add_hook('after_backward', lambda i: setattr(
        comm, 'passes', comm.passes + (i == dp._lowest)))
    solver.step(2)
    sizes = [g.array.size for g in dp.buckets.groups]
    kind = 'start' if layer_wise else 'blocking'
    # 2 iterations x 2 passes: reductions only in pass 2 and 4 (0-based 1 and 3 while running,
    # or after them when blocking)
    expected = [(kind, s, p) for p in ((1, 3) if layer_wise else (2, 4)) for s in sizes]
    assert comm.calls == expected
    for a, b in zip(plain.learnable_params, solver.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


class TwoRanksSeenFromRankZero(LocalCommunicator):
    """Rank 0 of two, where rank 1 reports ``tamper(checksums)``."""
    size = 2

    def __init__(self, tamper):
        self.tamper = tamper

    def allgather_object(self, obj):
        return [obj, self.tamper(obj) if isinstance(obj, list) else obj]


def test_check_replicas_names_the_rank_and_the_blob(project, solvers):
    solvers.set_solver_count(2)
    solver = _solver(project, 'replicas')
    dp = DataParallel(solver, TwoRanksSeenFromRankZero(lambda c: c))
    dp.check_replicas()
    dp = DataParallel(solver, TwoRanksSeenFromRankZero(
        lambda c: [(w, v + 1 if w == 'ip/0 data' else v) for w, v in c]))
    with pytest.raises(DistributedError, match=r'rank 1 differs from rank 0 in ip/0 data$'):
        dp.check_replicas()
    # a rank whose solver was built for another rank or count is refused
    with pytest.raises(DistributedError, match='set_solver_count'):
        DataParallel(solver, RecordingComm(size=3))


@register_layer('RankCountingInnerProduct')
class RankCountingInnerProduct(InnerProductLayer):
    """InnerProduct with layer state beyond blobs that depends on the data (as DNS mu/sigma
    or INQ progress may): the sum of every input seen."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self.seen = 0.0

    def forward_impl(self, bottom, top):
        super().forward_impl(bottom, top)
        self.seen += float(bottom[0].data.sum())

    def extra_state(self):
        return {'seen': np.array(self.seen)}

    def load_extra_state(self, state):
        self.seen = float(state['seen'])


class Loopback(LocalCommunicator):
    """Two ranks in one process: what rank 0 broadcasts, rank 1 receives (rank 0 runs
    first)."""
    size = 2

    def __init__(self, rank, wire):
        self.rank, self.wire = rank, wire

    def bcast(self, array, root=0):
        if self.rank == root:
            self.wire.append(array.copy())
        else:
            array[...] = self.wire.pop(0)

    def bcast_object(self, obj, root=0):
        if self.rank == root:
            self.wire.append(obj)
            return obj
        return self.wire.pop(0)

    def allgather_object(self, obj):
        return [obj, obj]


STATEFUL_NET = '''name: "stateful"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 } data_param { source: "db" batch_size: 8 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  activations_compress: "Clip"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "ip" type: "RankCountingInnerProduct" bottom: "conv" top: "ip"
  weights_compress: "ULQ" weights_compress_param { maxbits: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_state_beyond_gradients_is_the_roots_on_every_rank(project, solvers):
    """Statistics (BatchNorm), layer extra_state and compression parameters depend on each
    rank's data; after the broadcast at start and after every backward pass they are the
    root's everywhere, so the replicas' checksums agree."""
    (project / 'stateful_net.prototxt').write_text(STATEFUL_NET)
    (project / 'stateful.prototxt').write_text(SOLVER % dict(
        net='stateful_net.prototxt', prefix='stateful', extra=''))
    (project / 'snap').mkdir(exist_ok=True)
    solvers.set_solver_count(2)
    wire, ranks = [], []
    old = os.getcwd()
    os.chdir(str(project))
    try:
        for rank in (0, 1):
            solvers.set_solver_rank(rank)       # seed + rank, records rank, rank + 2, ...
            solver = create_solver(_read(project / 'stateful.prototxt'), source='stateful')
            ranks.append((solver, DataParallel(solver, Loopback(rank, wire))))
    finally:
        os.chdir(old)
    (s0, dp0), (s1, dp1) = ranks
    assert [n for n, _ in dp0.state_layers] == ['ip']
    assert [n for n, _ in dp0.compressed] == ['conv', 'ip']
    assert len(dp0.state_blobs) == 3          # BatchNorm's mean, variance, factor
    assert dp0.checksums() != dp1.checksums()     # other initial weights (seed + rank)
    dp0.bcast()
    dp1.bcast()
    assert dp0.checksums() == dp1.checksums() and not wire
    for s in (s0, s1):
        s.net.forward_backward()
    differ = [w for (w, a), (_, b) in zip(dp0.checksums(), dp1.checksums()) if a != b]
    assert set(differ) == {'bn/0 data', 'bn/1 data', 'ip state seen',
                           'conv compression parameters'}
    dp0.sync_state()
    dp1.sync_state()
    assert dp0.checksums() == dp1.checksums() and not wire
    assert s1.net.layers[s1.net.layer_names.index('ip')].seen == \
        s0.net.layers[s0.net.layer_names.index('ip')].seen


# ------------------------------------------------------------- pycaffe surface
def test_pycaffe_nccl_surface(project, solvers):
    import qcaffe as caffe
    pytest.importorskip('mpi4py')
    assert caffe.has_nccl() is True
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, bytes) and len(uid) == 128
    solver = _solver(project, 'nccl1')
    nccl = caffe.NCCL(solver, uid)          # one solver: trains as without it
    nccl.bcast()
    solver.add_callback(nccl)
    solver.net.add_hook('after_backward', nccl)
    solver.step(1)
    caffe.set_solver_count(2)
    solver2 = _solver(project, 'nccl2')
    if not launch.launched_by_mpi():
        with pytest.raises(DistributedError, match='mpiexec -n 2'):
            caffe.NCCL(solver2, uid)
    assert caffe.solver_count() == backend.solver_count() == 2


def test_launcher_pieces():
    cmd = launch.relaunch_command(['--solver', 's.prototxt', '--gpu', '0,1'], 2,
                                  mpiexec='mpiexec')
    assert cmd == ['mpiexec', '-n', '2', sys.executable, '-m', 'qcaffe', 'train', '--solver',
                   's.prototxt', '--gpu', '0,1']
    assert launch.local_device([2, 3], 1, 2) == 3
    with pytest.raises(DistributedError, match='4 ranks run on this machine but --gpu names '
                                               '2 devices'):
        launch.local_device([0, 1], 0, 4)


# ------------------------------------------------------------------ mpiexec runs
BOOM = '''import qcaffe as caffe


class Boom(caffe.Layer):
    """Passes data through; fails on rank 1's third batch."""

    def setup(self, bottom, top):
        self.batches = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        self.batches += 1
        if caffe.solver_rank() == 1 and self.batches == 3:
            raise ValueError('boom on the third batch')
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''

# python/train.py's solve() (BVLC), on CPU ranks started by mpiexec: the same calls, with
# set_mode_cpu and the rank from MPI instead of a forked worker's argument.
TRAIN_PY_FLOW = '''import sys
from mpi4py import MPI
import qcaffe as caffe

rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
uid = caffe.NCCL.new_uid()
caffe.init_log()
caffe.set_mode_cpu()
caffe.set_solver_count(size)
caffe.set_solver_rank(rank)
caffe.set_multiprocess(True)
solver = caffe.SGDSolver(sys.argv[1])
nccl = caffe.NCCL(solver, uid)
nccl.bcast()
solver.add_callback(nccl)
if solver.param.layer_wise_reduce:
    solver.net.after_backward(nccl)
checks = []
solver.add_callback(lambda: None, lambda: checks.append(nccl.check_replicas()))
solver.step(solver.param.max_iter)
nccl.check_replicas()
# a rank that drifts is caught, on every rank, naming it
if rank == 1:
    solver.net.params['conv'][0].data[0, 0, 0, 0] += 1
try:
    nccl.check_replicas()
except caffe.io.QcaffeError as e:
    print('rank %d: %d checks; caught: %s' % (rank, len(checks), e), flush=True)
'''


def _mpiexec():
    pytest.importorskip('mpi4py', reason='no MPI: pip install mpi4py mpich (the test extra)')
    try:
        return launch.find_mpiexec()
    except DistributedError as e:
        pytest.skip('no MPI: %s' % e)


def _run(cmd, cwd, timeout=120):
    env = dict(os.environ)
    env.pop('QCAFFE_NUM_THREADS', None)     # ranks share the cores; results do not depend on it
    env['PYTHONPATH'] = os.pathsep.join([REPO, str(cwd), env.get('PYTHONPATH', '')])
    return subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


def _train(cwd, solver, ranks=None, extra=()):
    cmd = [sys.executable, '-m', 'qcaffe', 'train', '--solver', solver] + list(extra)
    if ranks:
        cmd = [_mpiexec(), '-n', str(ranks)] + cmd
    r = _run(cmd, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(root, name):
    """[(layer, [arrays])] of the layers with weights in snap/<name>.caffemodel."""
    return [(layer, [b.data for b in blobs]) for layer, _, blobs in
            load_weights_file(str(root / 'snap' / (name + '.caffemodel'))) if blobs]


def _same_weights_and_history(root, a, b):
    wa, wb = _weights(root, a), _weights(root, b)
    assert [name for name, _ in wa] == [name for name, _ in wb] == ['conv', 'ip']
    for (name, xs), (_, ys) in zip(wa, wb):
        for x, y in zip(xs, ys):
            np.testing.assert_array_equal(x, y, err_msg=name)
    ha = read_solver_state(str(root / 'snap' / (a + '.solverstate'))).history
    hb = read_solver_state(str(root / 'snap' / (b + '.solverstate'))).history
    assert len(ha) == len(hb) == 4
    for x, y in zip(ha, hb):
        assert list(x.data) == list(y.data)


def _position(root, name):
    with np.load(str(root / 'snap' / (name + '.solverstate.layers.npz'))) as f:
        return int(f['data/source_position'])


@pytest.fixture(scope='module')
def two_ranks(project):
    """``mpiexec -n 2 qcaffe train``: 6 iterations at batch 8, snapshots at 3 and 6."""
    solver = write_project(project, 'mpi')
    r = _train(project, solver, ranks=2)
    return project, r.stderr


def test_two_ranks_train_like_one_process_at_iter_size_two(two_ranks):
    root, log = two_ranks
    assert 'Data-parallel training: 2 solvers (MPI ranks), 2 on this machine' in log
    # rank 0 alone tests, logs and snapshots
    assert log.count('Iteration 3, Testing net (#0)') == 1
    assert log.count('Snapshotting to binary proto file snap/mpi_iter_3.caffemodel') == 1
    assert _position(root, 'mpi_iter_6') == 6 * 2 * BATCH   # both ranks' records consumed
    _train(root, write_project(root, 'grouped', train='db_grouped', iter_size=2))
    _same_weights_and_history(root, 'mpi_iter_6', 'grouped_iter_6')
    # the plain database at iter_size 2: the same records per iteration, grouped otherwise,
    # so the batch sums of the gradients round differently: a few float32 ulps (~1e-7
    # relative) per step, times lr 0.05 and at most 1/(1 - momentum) = 10 steps of history,
    # over 6 iterations: well under 1e-6 on weights of size ~0.1-0.5
    _train(root, write_project(root, 'iter2', iter_size=2))
    for (_, xs), (_, ys) in zip(_weights(root, 'mpi_iter_6'), _weights(root, 'iter2_iter_6')):
        for x, y in zip(xs, ys):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_resume_at_two_ranks_is_exact_and_at_one_rank_continues(two_ranks):
    root, _ = two_ranks
    solver = write_project(root, 'resumed')
    _train(root, solver, ranks=2, extra=['--snapshot', 'snap/mpi_iter_3.solverstate'])
    _same_weights_and_history(root, 'mpi_iter_6', 'resumed_iter_6')
    # one process, iter_size 2, carries on from the 2-rank run's read position
    solver = write_project(root, 'resumed1', iter_size=2)
    _train(root, solver, extra=['--snapshot', 'snap/mpi_iter_3.solverstate'])
    assert _position(root, 'mpi_iter_3') == 3 * 2 * BATCH
    assert _position(root, 'resumed1_iter_6') == _position(root, 'mpi_iter_6')


def test_train_py_flow_on_cpu_ranks_keeps_replicas_identical(two_ranks):
    """python/train.py's calls (NCCL, bcast, add_callback, after_backward) with
    layer_wise_reduce off; the replicas are compared after every iteration."""
    root, _ = two_ranks
    (root / 'flow.py').write_text(TRAIN_PY_FLOW)
    solver = write_project(root, 'flow', layer_wise=False)
    r = _run([_mpiexec(), '-n', '2', sys.executable, 'flow.py', solver], root)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert ('rank %d: 6 checks; caught: rank 1 differs from rank 0 in conv/0 data'
                % rank) in r.stdout
    _same_weights_and_history(root, 'mpi_iter_6', 'flow_iter_6')


def test_error_on_one_rank_ends_all(project):
    solver = write_project(project, 'boom', python_layer=True)
    r = _run([_mpiexec(), '-n', '2', sys.executable, '-m', 'qcaffe', 'train', '--solver',
              solver], project, timeout=60)
    assert r.returncode != 0
    assert 'qcaffe train: error: rank 1 of 2:' in r.stderr
    assert 'boom on the third batch' in r.stderr


@pytest.mark.skipif(not hasattr(os, 'killpg'), reason='POSIX process groups')
def test_ctrl_c_stops_every_rank_at_the_roots_iteration(project):
    """Ctrl-C reaches every rank; the root's stop decision ends all at one iteration, the
    root snapshots (--sigint_effect stop), nobody hangs."""
    import signal
    solver = write_project(project, 'sigint')
    text = (project / solver).read_text()
    (project / solver).write_text(text.replace('max_iter: 6', 'max_iter: 1000000').replace(
        'snapshot: 3', 'snapshot: 0').replace('display: 1', 'display: 100').replace(
        'test_interval: 3', 'test_interval: 100000'))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
    proc = subprocess.Popen([_mpiexec(), '-n', '2', sys.executable, '-m', 'qcaffe', 'train',
                             '--solver', solver], cwd=str(project), env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if 'Iteration 200 (' in line:
                break
        os.killpg(proc.pid, signal.SIGINT)      # what Ctrl-C in a terminal does
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=60) == 0, ''.join(lines[-20:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = ''.join(lines)
    assert log.count('Optimization stopped early.') == 1
    assert log.count('Snapshotting solver state') == 1
    assert 'error' not in log


def test_gpu_list_starts_one_rank_per_gpu(project):
    """``--gpu 0,1`` outside mpiexec starts 2 ranks; without a GPU each says so and all end."""
    try:
        import cupy  # noqa: F401
        pytest.skip('cupy is installed: this checks the path without GPUs')
    except ImportError:
        pass
    _mpiexec()
    solver = write_project(project, 'gpus')
    r = _run([sys.executable, '-m', 'qcaffe', 'train', '--solver', solver, '--gpu', '0,1'],
             project, timeout=60)
    assert r.returncode != 0
    assert 'Starting 2 processes, one per GPU' in r.stderr
    assert 'of 2: GPU mode needs cupy' in r.stderr
