"""Solvers against real Caffe (../shared/data/caffe_ref/solvers) and Caffe's solver semantics.

Reference: for each tiny net and solver, real Caffe's loss before each of 3 updates and every
param after each update (BatchNorm statistics included), the TEST-phase forward of the final
weights, and Caffe's own ``_iter_3`` snapshots.  Beyond that: lr policies vs Caffe's log,
restore of Caffe's solverstates (tiny nets and LeNet at 10000 iterations), bitwise-equal
resume, atomic snapshots, NaN stop, signals/actions, callbacks and the error messages.
"""
import json
import logging
import os
import re

import numpy as np
import pytest
from google.protobuf import text_format

from shared_data import require_shared

from qcaffe.io.binary import read_solver_param
from qcaffe.io.errors import QcaffeError
from qcaffe.layers.base import layer_type_list
from qcaffe.log import fmt
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import (SOLVERS, AdamSolver, SGDSolver, SolverError,
                            TrainingDivergedError, create_solver, lr_policy)

SOLVER_NAMES = ['sgd', 'nesterov', 'adagrad', 'rmsprop', 'adadelta', 'adam',
                'sgd_itersize2', 'sgd_l1_clip']
NOISE_AMPLIFIERS = ('adagrad', 'rmsprop')
TINY_LAYERS = ('Input', 'Convolution', 'ReLU', 'Pooling', 'InnerProduct', 'SoftmaxWithLoss')
BN_LAYERS = TINY_LAYERS + ('BatchNorm', 'Scale')


def require_layers(*types):
    missing = sorted(set(types) - set(layer_type_list()))
    if missing:
        pytest.skip('layer types not implemented yet: %s' % ', '.join(missing))


def ref_dir():
    return require_shared('caffe_ref', 'solvers')


def feed(net, batch):
    net.blob_by_name('data').data[...] = batch['data']
    net.blob_by_name('label').data[...] = batch['label']


def tiny_solver(net_kind, name, tmp_path, **fields):
    """Caffe's tiny solver ``<net_kind>__<name>`` with its init weights and batch."""
    d = ref_dir()
    param = read_solver_param(os.path.join(d, '%s__%s.prototxt' % (net_kind, name)))
    param.net = os.path.join(d, '%s_train.prototxt' % net_kind)
    param.snapshot_prefix = str(tmp_path / name)
    param.weights.append(os.path.join(d, '%s_init.caffemodel' % net_kind))
    for k, v in fields.items():
        setattr(param, k, v)
    solver = create_solver(param)
    feed(solver.net, np.load(os.path.join(d, 'batch.npz')))
    return solver


def params_of(net):
    return {(net.layer_names[li], pid): net.layers[li].blobs[pid].data.copy()
            for li in range(len(net.layers)) for pid in range(len(net.layers[li].blobs))}


def assert_resume_is_exact(make_solver, total, stop, detour):
    """``make_solver(prefix)`` run ``total`` iterations in one go, and run ``stop``,
    snapshotted, restored into a fresh solver of the same prefix that first took ``detour``
    steps of its own, and finished: the weights must be bit-identical.  Returns the three
    solvers."""
    full = make_solver('full')
    full.step(total)
    first = make_solver('part')
    first.step(stop)
    state = first.snapshot()
    assert os.path.exists(state + '.layers.npz')
    resumed = make_solver('part')
    resumed.step(detour)
    resumed.restore(state)
    resumed.step(total - stop)
    for key, value in params_of(full.net).items():
        np.testing.assert_array_equal(params_of(resumed.net)[key], value, err_msg=str(key))
    return full, first, resumed


def assert_close(actual, expected, what, tol=1e-5):
    err = np.max(np.abs(np.asarray(actual, np.float64) - expected)) if np.size(expected) else 0
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    assert err <= tol * scale, '%s: max abs diff %g (tol %g)' % (what, err, tol * scale)


# ------------------------------------------------------------------ parity with real Caffe
@pytest.mark.parametrize('net_kind', ['tiny', 'tiny_bn'])
@pytest.mark.parametrize('name', SOLVER_NAMES)
def test_three_steps_match_caffe(net_kind, name, tmp_path):
    require_layers(*(BN_LAYERS if net_kind == 'tiny_bn' else TINY_LAYERS))
    ref = np.load(os.path.join(ref_dir(), '%s__%s.npz' % (net_kind, name)))
    solver = tiny_solver(net_kind, name, tmp_path)
    assert solver.type == read_solver_param(
        os.path.join(ref_dir(), '%s__%s.prototxt' % (net_kind, name))).type
    losses = []
    solver.add_callback(lambda: None, lambda: losses.append(solver.smoothed_loss))
    for k in (1, 2, 3):
        solver.step(1)
        assert solver.iter == k
        assert_close(losses[-1], ref['loss/%d' % k], 'loss/%d' % k)
        for (layer, i), value in params_of(solver.net).items():
            key = 'step%d/%s/%d' % (k, layer, i)
            assert key in ref.files, key
            tol = 1e-5
            if (net_kind == 'tiny_bn' and name in NOISE_AMPLIFIERS
                    and (layer, i) in (('conv1', 1), ('bn1', 0))):
                # BatchNorm right after conv1 makes conv1's bias gradient exactly zero in exact
                # arithmetic: what is left is float rounding noise (~1e-7) on top of weight
                # decay, and AdaGrad/RMSProp divide by its RMS, so that step is noise-driven;
                # BatchNorm's running mean (bn1/0) contains the bias, so it inherits the noise.
                tol = 5e-4
            assert_close(value, ref[key], key, tol)
    # TEST-phase forward of the final weights (BatchNorm uses its global statistics)
    test = Net.from_param(solver.net.param, phase=caffe_pb2.TEST)
    test.share_trained_layers_with(solver.net)
    feed(test, np.load(os.path.join(ref_dir(), 'batch.npz')))
    test.forward_prefilled()
    assert_close(test.blob_by_name('ip1').data, ref['test/ip1'], 'test/ip1', 1e-4)
    assert_close(test.blob_by_name('loss').data, ref['test/loss'], 'test/loss', 1e-4)


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adadelta', 'sgd_itersize2'])
def test_restore_caffe_solverstate_and_continue(name, tmp_path):
    """Caffe's own _iter_3 snapshot restores to our 3-step state and continues identically."""
    require_layers(*TINY_LAYERS)
    d = ref_dir()
    ours = tiny_solver('tiny', name, tmp_path)
    ours.step(3)
    restored = tiny_solver('tiny', name, tmp_path)
    restored.restore(os.path.join(d, 'tiny__%s_iter_3.solverstate' % name))
    assert restored.iter == 3
    for key, value in params_of(restored.net).items():
        assert_close(value, params_of(ours.net)[key], 'restored %s' % (key,))
    for h_ours, h_caffe in zip(ours.history, restored.history):
        assert_close(h_caffe.data, h_ours.data, 'history', 1e-4)
    ours.step(2)
    restored.step(2)
    for key, value in params_of(restored.net).items():
        assert_close(value, params_of(ours.net)[key], 'continued %s' % (key,))


def test_lenet_iter_10000_solverstate_restores_and_continues(tmp_path, monkeypatch, qlog):
    require_layers(*TINY_LAYERS)
    d = os.path.abspath(require_shared('models', 'lenet'))
    # The solverstate names its weights by Caffe's relative path
    # examples/mnist/lenet_iter_10000.caffemodel; run where no such file exists (the repo's
    # own examples/mnist may hold one from the user's training run) so the file beside the
    # solverstate is the one restored.
    monkeypatch.chdir(tmp_path)
    net = caffe_pb2.NetParameter()
    text_format.Merge(open(os.path.join(d, 'lenet.prototxt')).read(), net)
    net.layer[0].input_param.shape[0].dim[0] = 8
    net.layer.add().CopyFrom(text_format.Parse(
        'name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } }',
        caffe_pb2.LayerParameter()))
    del net.layer[-2]       # the deploy net's Softmax "prob"
    net.layer.add().CopyFrom(text_format.Parse(
        'name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"',
        caffe_pb2.LayerParameter()))
    param = read_solver_param(os.path.join(d, 'lenet_solver.prototxt'))
    param.ClearField('net')
    param.ClearField('test_iter')
    param.ClearField('test_interval')
    param.net_param.CopyFrom(net)
    param.snapshot_prefix = str(tmp_path / 'lenet')
    solver = create_solver(param)
    solver.restore(os.path.join(d, 'lenet_iter_10000.solverstate'))
    assert solver.iter == 10000 and isinstance(solver, SGDSolver)
    # a real Caffe state has no layer-state companion and restores without a word about it
    assert not [r for r in qlog.records if r.levelno >= logging.WARNING]
    trained = Net.from_param(net)
    trained.copy_from(os.path.join(d, 'lenet_iter_10000.caffemodel'))
    for key, value in params_of(trained).items():
        np.testing.assert_array_equal(params_of(solver.net)[key], value)
    assert abs(solver.lr - 0.01 * (1 + 1e-4 * 10000) ** -0.75) < 1e-9
    # momentum history of a converged run is small but not zero
    assert 0 < float(np.abs(solver.history[0].data).max()) < 0.1
    batch = np.load(os.path.join(ref_dir(), 'batch.npz'))
    feed(solver.net, batch)
    solver.step(1)
    assert solver.iter == 10001 and solver.smoothed_loss < 0.5   # trained LeNet knows MNIST


# --------------------------------------------------------------------------- lr policies
def test_lr_policies_match_caffe_log():
    ref = json.load(open(os.path.join(ref_dir(), 'lr_policies.json')))
    for policy, case in ref.items():
        p = caffe_pb2.SolverParameter()
        text_format.Merge(case['solver'], p)
        p.base_lr = case['base_lr']
        if not p.HasField('max_iter'):
            p.max_iter = case['max_iter']
        current_step = 0
        for it, expected in case['lr']:
            rate, current_step = lr_policy.learning_rate(p, it, current_step)
            # the reference is Caffe's log text: 6 significant digits, compare as printed
            assert fmt(rate) == fmt(expected), (policy, it, rate, expected)


def test_a_rate_that_overflows_is_inf_as_in_caffe():
    """std::pow(float, int) overflows to inf in C++; Python's float ** int would raise."""
    p = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy='exp', gamma=2.0)
    assert lr_policy.learning_rate(p, 10000, 0)[0] == np.inf
    p = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy='step', gamma=10, stepsize=1)
    assert lr_policy.learning_rate(p, 400, 0) == (np.inf, 400)
    p.gamma = 0.5   # and the ordinary range is unchanged: 0.01 * 0.5^3
    assert lr_policy.learning_rate(p, 3, 0)[0] == np.float32(0.01 * 0.125)


def test_warm_up_ramps_to_the_schedule_and_respects_min_lr():
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy='fixed', rampup_interval=10,
                                  rampup_lr=0.01, min_lr=0.02)
    rates = [float(lr_policy.learning_rate(p, it, 0)[0]) for it in (0, 5, 10, 20)]
    np.testing.assert_allclose(rates, [0.02, 0.055, 0.1, 0.1], rtol=1e-6)
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy='fixed', rampup_interval=4)
    np.testing.assert_allclose([float(lr_policy.learning_rate(p, it, 0)[0]) for it in range(5)],
                               [0, 0.025, 0.05, 0.075, 0.1], rtol=1e-6)


# ------------------------------------------------------------ IP-only net for fast checks
IP_NET = '''name: "ipnet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 1 dim: 28 dim: 28 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.05 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc"
        include { phase: TEST } }
'''


def ip_solver(tmp_path, text='', solver_type='SGD', batch=True):
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss', 'Accuracy')
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" '
                      'gamma: 0.0001 power: 0.75 max_iter: 6 random_seed: 7', p)
    p.type = solver_type
    if solver_type in ('AdaGrad', 'RMSProp'):
        p.momentum = 0
    if solver_type == 'AdaDelta':
        p.base_lr, p.momentum = 1.0, 0.95
    text_format.Merge(IP_NET, p.net_param)
    p.snapshot_prefix = str(tmp_path / 'ip')
    text_format.Merge(text, p)
    s = create_solver(p)
    if batch:
        b = np.load(os.path.join(ref_dir(), 'batch.npz'))
        for n in [s.net] + list(s.test_nets):
            feed(n, b)
    return s


@pytest.mark.parametrize('solver_type', sorted(SOLVERS))
@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_resume_is_bitwise_equal_to_uninterrupted_run(solver_type, fmt, tmp_path):
    if fmt == 'HDF5':
        pytest.importorskip('h5py')
    text = 'snapshot_format: %s' % fmt
    os.makedirs(tmp_path / 'a')
    full = ip_solver(tmp_path / 'a', text, solver_type)
    full.step(6)
    os.makedirs(tmp_path / 'b')
    first = ip_solver(tmp_path / 'b', text, solver_type)
    first.step(3)
    state = first.snapshot()
    assert state.endswith('_iter_3.solverstate' + ('.h5' if fmt == 'HDF5' else ''))
    resumed = ip_solver(tmp_path / 'b', text, solver_type)   # fresh (random) weights
    resumed.restore(state)
    assert resumed.iter == 3
    resumed.step(3)
    for key, value in params_of(full.net).items():
        np.testing.assert_array_equal(params_of(resumed.net)[key], value, err_msg=str(key))
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_array_equal(a.data, b.data)


def test_solve_resume_via_solve_argument_and_snapshot_names(tmp_path):
    s = ip_solver(tmp_path, 'snapshot: 2 max_iter: 4')
    s.solve()
    names = sorted(os.listdir(tmp_path))
    assert names == ['ip_iter_2.caffemodel', 'ip_iter_2.solverstate',
                     'ip_iter_4.caffemodel', 'ip_iter_4.solverstate']
    state = caffe_pb2.SolverState()
    state.ParseFromString(open(tmp_path / 'ip_iter_4.solverstate', 'rb').read())
    assert state.iter == 4 and state.learned_net == str(tmp_path / 'ip_iter_4.caffemodel')
    assert len(state.history) == 2 and list(state.history[0].shape.dim) == [10, 784]
    r = ip_solver(tmp_path, 'snapshot: 2 max_iter: 6')
    r.solve(str(tmp_path / 'ip_iter_4.solverstate'))
    assert r.iter == 6 and os.path.exists(tmp_path / 'ip_iter_6.caffemodel')


def test_snapshot_is_atomic(tmp_path, monkeypatch):
    import qcaffe.io.files as files
    s = ip_solver(tmp_path)
    s.step(1)
    state = s.snapshot()
    model = s.last_snapshot[0]
    before = open(model, 'rb').read(), open(state, 'rb').read()
    s.iter = 1          # write the same names again, failing after the bytes are written
    s.step(1)
    s.iter = 1

    def broken_fsync(fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(files.os, 'fsync', broken_fsync)
    with pytest.raises(OSError):
        s.snapshot()
    monkeypatch.undo()
    assert (open(model, 'rb').read(), open(state, 'rb').read()) == before
    assert sorted(os.listdir(tmp_path)) == ['ip_iter_1.caffemodel', 'ip_iter_1.solverstate']


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_nan_loss_stops_with_iteration_and_layer(tmp_path):
    s = ip_solver(tmp_path, 'snapshot: 2 display: 1')
    s.step(2)
    assert os.path.exists(tmp_path / 'ip_iter_2.caffemodel')
    kept = open(tmp_path / 'ip_iter_2.caffemodel', 'rb').read()
    w = s.net.layers[s.net.layer_index('ip1')].blobs[0].data
    w[0, 5] = np.inf
    with pytest.raises(TrainingDivergedError) as e:
        s.solve()
    assert e.value.iteration == 2 and e.value.layer == 'ip1'
    assert 'Iteration 2' in str(e.value) and "'ip1'" in str(e.value)
    assert 'ip_iter_2.caffemodel' in str(e.value)
    assert open(tmp_path / 'ip_iter_2.caffemodel', 'rb').read() == kept
    assert sorted(os.listdir(tmp_path)) == ['ip_iter_2.caffemodel', 'ip_iter_2.solverstate']


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_nan_input_names_the_first_layer_with_a_non_finite_output(tmp_path):
    s = ip_solver(tmp_path)
    s.net.blob_by_name('data').data[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDivergedError) as e:
        s.step(1)
    assert e.value.iteration == 0 and e.value.layer == 'data' and e.value.blob == 'data'


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_diverging_learning_rate_is_caught(tmp_path):
    s = ip_solver(tmp_path, 'base_lr: 1e30 lr_policy: "fixed"')
    with pytest.raises(TrainingDivergedError) as e:
        s.step(20)
    assert 0 < e.value.iteration < 20


# ---------------------------------------------------------------- loop semantics
def test_display_and_test_lines_parse_like_caffe(tmp_path, qlog):
    s = ip_solver(tmp_path, 'display: 2 test_iter: 2 test_interval: 2 test_compute_loss: true '
                  'max_iter: 4 snapshot_after_train: false average_loss: 2')
    s.solve()
    msgs = [r.getMessage() for r in qlog.records]
    start = msgs.index('Solving ipnet')
    assert msgs[start + 1] == 'Learning Rate Policy: inv'
    body = msgs[start:]
    assert body[2] == 'Iteration 0, Testing net (#0)'
    assert body[3].startswith('Test loss: ')
    assert re.match(r'    Test net output #0: acc = [\d.]+$', body[4])
    assert re.match(r'    Test net output #1: loss = ([\d.]+) \(\* 1 = \1 loss\)$', body[5])
    assert re.match(r'Iteration 0 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.]+$',
                    body[6])
    assert re.match(r'    Train net output #0: loss = ([\d.]+) \(\* 1 = \1 loss\)$', body[7])
    assert body[8] == 'Iteration 0, lr = 0.01'
    assert 'Iteration 2, Testing net (#0)' in body
    assert body[-1] == 'Optimization Done.'
    assert re.match(r'Iteration 4, loss = [\d.]+$', body[-6])   # then the final test
    assert body[-5] == 'Iteration 4, Testing net (#0)'
    assert len(s.test_results[0]) == 2 and s.test_results[0][0][0] == 'acc'


def test_smoothed_loss_and_iter_size(tmp_path):
    s = ip_solver(tmp_path, 'average_loss: 3')
    losses = []
    s.add_callback(lambda: None, lambda: losses.append(s._losses[:]))
    s.step(5)
    assert len(s._losses) == 3
    expected = np.mean([l for l in losses[-1]])
    assert abs(s.smoothed_loss - expected) < 1e-6


def test_callbacks_run_in_order_each_iteration(tmp_path):
    s = ip_solver(tmp_path)
    calls = []

    class Hook(object):
        def on_start(self):
            calls.append(('start', s.iter, float(np.abs(s.net.learnable_params[0].diff).sum())))

        def on_gradients_ready(self):
            calls.append(('ready', s.iter,
                          float(np.abs(s.net.learnable_params[0].diff).sum())))
    s.add_callback(Hook())
    s.step(2)
    assert [c[:2] for c in calls] == [('start', 0), ('ready', 0), ('start', 1), ('ready', 1)]
    assert calls[0][2] == 0 and calls[1][2] > 0     # diffs cleared before, ready after


def test_action_requests_snapshot_and_stop(tmp_path):
    s = ip_solver(tmp_path, 'max_iter: 100')
    script = {2: 'snapshot', 4: 'stop'}
    s.set_action_function(lambda: script.get(s.iter, 'none'))
    s.solve()
    assert s.iter == 4 and s.requested_early_exit
    # snapshot at 2 by request, at 4 by snapshot_after_train (also after an early stop)
    assert sorted(os.listdir(tmp_path)) == ['ip_iter_2.caffemodel', 'ip_iter_2.solverstate',
                                            'ip_iter_4.caffemodel', 'ip_iter_4.solverstate']


def test_signal_handler_maps_signals_to_actions():
    import signal
    from qcaffe.solvers import SignalHandler
    h = SignalHandler('stop', 'snapshot')
    with h:
        assert h.check_for_signals() == 'none'
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.check_for_signals() == 'snapshot'
        os.kill(os.getpid(), signal.SIGINT)
        assert h.check_for_signals() == 'stop'
        assert h.check_for_signals() == 'none'


def test_apply_update_uses_current_lr_and_increments_iter(tmp_path):
    s = ip_solver(tmp_path, 'momentum: 0 weight_decay: 0 lr_policy: "fixed" base_lr: 0.5')
    w = s.net.learnable_params[0]
    before = w.data.copy()
    s.net.clear_param_diffs()
    w.diff[...] = 1.0
    s.apply_update()
    np.testing.assert_allclose(w.data, before - 0.5, rtol=1e-6)
    assert s.iter == 1


def test_param_update_mask_freezes_entries(tmp_path):
    s = ip_solver(tmp_path)
    layer = s.net.layers[s.net.layer_index('ip1')]
    mask = np.ones((10, 784), np.float32)
    mask[:5] = 0
    layer.param_update_mask = lambda i: mask if i == 0 else None
    w = layer.blobs[0].data
    before = w.copy()
    s.step(3)
    np.testing.assert_array_equal(w[:5], before[:5])
    assert np.any(w[5:] != before[5:])
    assert not np.any(s.history[0].data[:5])


def test_lars_scales_by_trust_ratio_and_ignores_lr_mult(tmp_path):
    s = ip_solver(tmp_path, 'momentum: 0 weight_decay: 0.001 lr_policy: "fixed" base_lr: 2 '
                  'local_gw_ratio: 0.01', solver_type='LarsSGD')
    bias = s.net.learnable_params[1]
    w = s.net.learnable_params[0]
    s.net.clear_param_diffs()
    s.net.forward_backward()
    g = w.diff.copy() + np.float32(0.001) * w.data     # regularized (decay_mult 1)
    wb = w.data.copy()
    b_before, gb = bias.data.copy(), bias.diff.copy()  # bias: decay_mult 0, lr_mult 2 ignored
    s.apply_update()
    wn, gn = np.linalg.norm(wb), np.linalg.norm(g)
    np.testing.assert_allclose(w.data, wb - 2 * 0.01 * wn / (gn + 0.001 * wn) * g,
                               rtol=1e-5, atol=1e-7)
    bn, gbn = np.linalg.norm(b_before), np.linalg.norm(gb)
    np.testing.assert_allclose(bias.data, b_before - 2 * 0.01 * bn / (gbn + 0.001 * bn) * gb,
                               rtol=1e-5, atol=1e-7)


def test_random_seed_makes_runs_repeatable(tmp_path):
    a = ip_solver(tmp_path)
    b = ip_solver(tmp_path)
    np.testing.assert_array_equal(a.net.learnable_params[0].data, b.net.learnable_params[0].data)
    a.step(2)
    b.step(2)
    np.testing.assert_array_equal(a.net.learnable_params[0].data, b.net.learnable_params[0].data)


def test_states_and_test_nets_from_net_param(tmp_path):
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss', 'Accuracy')
    text = IP_NET + ('layer { name: "extra" type: "Accuracy" bottom: "ip1" bottom: "label" '
                     'top: "extra" include { phase: TEST stage: "val" } }')
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy='fixed', test_interval=10)
    text_format.Merge(text, p.net_param)
    p.test_iter.extend([1, 2])
    p.test_state.add().stage.append('val')
    p.test_state.add()
    s = create_solver(p)
    assert len(s.test_nets) == 2
    assert s.net.phase == caffe_pb2.TRAIN
    assert 'extra' in s.test_nets[0].layer_names and 'extra' not in s.test_nets[1].layer_names
    assert 'acc' not in s.net.layer_names


# ------------------------------------------------------------------------------ errors
def solver_param(text):
    p = caffe_pb2.SolverParameter()
    text_format.Merge(text, p)
    text_format.Merge(IP_NET, p.net_param)
    return p


def test_unknown_solver_type_lists_valid_types():
    with pytest.raises(SolverError) as e:
        create_solver(solver_param('type: "Adamm" base_lr: 0.1 lr_policy: "fixed"'))
    msg = str(e.value)
    assert "'Adamm'" in msg and "Did you mean 'Adam'" in msg
    for t in ('SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam', 'LarsSGD'):
        assert t in msg


def test_legacy_solver_type_enum_selects_the_class():
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss')
    s = create_solver(solver_param('solver_type: ADAM base_lr: 0.1 lr_policy: "fixed"'))
    assert isinstance(s, AdamSolver) and s.param.type == 'Adam'


def test_missing_lr_policy_is_a_clear_error():
    with pytest.raises(SolverError, match='lr_policy: is not set.*fixed, step'):
        create_solver(solver_param('base_lr: 0.1'))
    with pytest.raises(SolverError, match="Unknown learning rate policy: 'cosine'"):
        create_solver(solver_param('base_lr: 0.1 lr_policy: "cosine"'))


def test_solver_constraints():
    with pytest.raises(SolverError, match='Momentum cannot be used with AdaGrad'):
        create_solver(solver_param('type: "AdaGrad" momentum: 0.9 lr_policy: "fixed"'))
    with pytest.raises(SolverError, match='rms_decay'):
        create_solver(solver_param('type: "RMSProp" rms_decay: 1.5 lr_policy: "fixed"'))
    with pytest.raises(SolverError, match='regularization type'):
        create_solver(solver_param('regularization_type: "L3" lr_policy: "fixed"'))
    with pytest.raises(SolverError, match='test_interval'):
        create_solver(solver_param('test_iter: 1 lr_policy: "fixed"'))


def test_unwritable_snapshot_dir_fails_before_training(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    prefix = str(blocker / 'snapshots' / 'lenet')
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix '%s'"
                       % re.escape(prefix)):
        create_solver(solver_param('lr_policy: "fixed" snapshot: 100 snapshot_prefix: "%s"'
                                   % prefix))
    # snapshot == 0 but a final snapshot is due: solve() refuses before the first iteration
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss')
    s = create_solver(solver_param('lr_policy: "fixed" max_iter: 5 snapshot_prefix: "%s"'
                                   % prefix))
    with pytest.raises(SolverError, match='Cannot write to snapshot prefix'):
        s.solve()
    assert s.iter == 0


def test_missing_net_file_and_bad_state_are_clear(tmp_path):
    with pytest.raises(QcaffeError, match='no_such_net.prototxt'):
        create_solver(caffe_pb2.SolverParameter(net=str(tmp_path / 'no_such_net.prototxt'),
                                                lr_policy='fixed'))
    s = ip_solver(tmp_path, solver_type='Adam', batch=False)
    sgd = ip_solver(tmp_path, batch=False)
    state = sgd.snapshot()
    with pytest.raises(SolverError, match='Incorrect length of history blobs'):
        s.restore(state)


def test_layer_extra_state_survives_snapshot_and_restore(tmp_path):
    s = ip_solver(tmp_path)
    layer = s.net.layers[s.net.layer_index('ip1')]
    layer.extra_state = lambda: {'mu': np.array([1.5, 2.5]), 'done': np.array(True)}
    s.step(1)
    state = s.snapshot()
    assert os.path.exists(state + '.layers.npz')
    r = ip_solver(tmp_path)
    got = {}
    r.net.layers[r.net.layer_index('ip1')].load_extra_state = got.update
    r.restore(state)
    np.testing.assert_array_equal(got['mu'], [1.5, 2.5])
    assert bool(got['done'])
    # layers without extra state write no side file
    os.makedirs(tmp_path / 'sub')
    plain = ip_solver(tmp_path / 'sub')
    assert not os.path.exists(plain.snapshot() + '.layers.npz')


def test_blobs_outside_learnable_blob_indices_never_move(tmp_path, monkeypatch):
    require_layers('InnerProduct')
    from qcaffe.layers.base import layer_class
    # e.g. a compression layer whose blob 1 is a mask or a statistic, not a weight
    monkeypatch.setattr(layer_class('InnerProduct'), 'learnable_blob_indices', lambda self: [0])
    s = ip_solver(tmp_path)
    assert [p.learnable for p in s._params] == [True, False]
    layer = s.net.layers[s.net.layer_index('ip1')]
    bias = layer.blobs[1].data.copy()
    weights = layer.blobs[0].data.copy()
    s.step(2)
    np.testing.assert_array_equal(layer.blobs[1].data, bias)
    assert np.any(layer.blobs[0].data != weights)


def test_test_initialization_false_skips_the_iteration_0_test(tmp_path, qlog):
    s = ip_solver(tmp_path, 'test_iter: 1 test_interval: 2 test_initialization: false '
                  'max_iter: 2 snapshot_after_train: false')
    s.solve()
    tests = [r.getMessage() for r in qlog.records if 'Testing net' in r.getMessage()]
    assert tests == ['Iteration 2, Testing net (#0)']


@pytest.mark.parametrize('net_kind', ['tiny', 'tiny_bn'])
def test_snapshot_files_match_caffes_own(net_kind, tmp_path):
    """Our _iter_3 snapshot vs Caffe's: same layer definitions (as modified at setup), blobs
    within 1e-5, same solverstate layout (iter, current_step, history shapes)."""
    require_layers(*(BN_LAYERS if net_kind == 'tiny_bn' else TINY_LAYERS))
    s = tiny_solver(net_kind, 'sgd', tmp_path)
    s.step(3)
    state_file = s.snapshot()
    assert state_file == str(tmp_path / 'sgd_iter_3.solverstate')

    def read(message, path):
        message.ParseFromString(open(path, 'rb').read())
        return message
    ref_prefix = os.path.join(ref_dir(), '%s__sgd_iter_3' % net_kind)
    ours = read(caffe_pb2.NetParameter(), s.last_snapshot[0])
    ref = read(caffe_pb2.NetParameter(), ref_prefix + '.caffemodel')
    assert ours.name == ref.name and len(ours.layer) == len(ref.layer)
    for a, b in zip(ours.layer, ref.layer):
        assert len(a.blobs) == len(b.blobs)
        for i, (x, y) in enumerate(zip(a.blobs, b.blobs)):
            assert list(x.shape.dim) == list(y.shape.dim)
            assert_close(np.array(x.data), np.array(y.data), '%s/%d' % (a.name, i))
        del a.blobs[:]
        del b.blobs[:]
        assert a == b, a.name
    so = read(caffe_pb2.SolverState(), state_file)
    sr = read(caffe_pb2.SolverState(), ref_prefix + '.solverstate')
    assert (so.iter, so.current_step) == (sr.iter, sr.current_step)
    assert so.learned_net == s.last_snapshot[0]
    assert [list(h.shape.dim) for h in so.history] == [list(h.shape.dim) for h in sr.history]
    for x, y in zip(so.history, sr.history):
        assert_close(np.array(x.data), np.array(y.data), 'history')


def test_debug_info_logs_caffes_per_layer_lines_on_display_iterations(tmp_path, qlog):
    s = ip_solver(tmp_path, 'debug_info: true display: 2')
    s.step(2)
    msgs = [r.getMessage() for r in qlog.records if '[Forward]' in r.getMessage()
            or '[Backward]' in r.getMessage()]
    assert any(m.startswith('    [Forward] Layer ip1, top blob ip1 data: ') for m in msgs)
    assert any(re.match(r'    \[Forward\] Layer ip1, param blob 0 data: [\d.e-]+$', m)
               for m in msgs)
    assert any(re.match(r'    \[Backward\] Layer ip1, param blob 1 diff: [\d.e-]+$', m)
               for m in msgs)
    # the data layers do not get a bottom line; only iteration 0 is a display iteration
    assert not any('bottom blob data' in m for m in msgs)
    assert len([m for m in msgs if m.startswith('    [Forward] Layer loss')]) == 1


def test_restore_errors_name_the_files(tmp_path):
    s = ip_solver(tmp_path, batch=False)
    with pytest.raises(QcaffeError, match='missing.solverstate'):
        s.restore(str(tmp_path / 'missing.solverstate'))
    state = caffe_pb2.SolverState(iter=5, learned_net=str(tmp_path / 'gone.caffemodel'))
    for h in s.history:
        h.to_proto(state.history.add())
    (tmp_path / 'x.solverstate').write_bytes(state.SerializeToString())
    with pytest.raises(SolverError, match="'.*gone.caffemodel'.*neither relative"):
        s.restore(str(tmp_path / 'x.solverstate'))


def test_weights_field_loads_into_train_and_test_nets_and_snapshot_diff(tmp_path):
    src = ip_solver(tmp_path, 'snapshot_diff: true')
    src.step(1)
    src.snapshot()
    model = src.last_snapshot[0]
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(model, 'rb').read())
    ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
    assert len(ip1.blobs[0].diff) == 7840            # snapshot_diff writes the diffs too
    s = ip_solver(tmp_path, 'test_iter: 1 test_interval: 1 weights: "%s"' % model, batch=False)
    for net in [s.net] + s.test_nets:
        np.testing.assert_array_equal(net.layers[net.layer_index('ip1')].blobs[0].data,
                                      src.net.learnable_params[0].data)


def test_train_net_and_test_net_files(tmp_path):
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss', 'Accuracy')
    net_file = tmp_path / 'net.prototxt'
    net_file.write_text(IP_NET)
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy='fixed', train_net=str(net_file),
                                  test_interval=5)
    p.test_net.extend([str(net_file)] * 2)
    p.test_iter.extend([1, 1])
    s = create_solver(p)
    assert [n.phase for n in s.test_nets] == [caffe_pb2.TEST] * 2
    assert 'acc' in s.test_nets[1].layer_names and 'acc' not in s.net.layer_names
    p.net = str(net_file)
    with pytest.raises(SolverError, match='exactly one of train_net_param, train_net, '
                       'net_param, net.*found train_net, net'):
        create_solver(p)
    p.ClearField('net')
    del p.test_iter[1:]
    with pytest.raises(SolverError, match='test_iter.*2 test nets, 1 test_iter'):
        create_solver(p)


def test_hdf5_snapshot_writes_diffs_when_asked(tmp_path):
    h5py = pytest.importorskip('h5py')
    s = ip_solver(tmp_path, 'snapshot_format: HDF5 snapshot_diff: true')
    s.step(1)
    state = s.snapshot()
    assert state == str(tmp_path / 'ip_iter_1.solverstate.h5')
    with h5py.File(s.last_snapshot[0], 'r') as f:
        np.testing.assert_array_equal(f['data/ip1/0'][()], s.net.learnable_params[0].data)
        np.testing.assert_array_equal(f['diff/ip1/0'][()], s.net.learnable_params[0].diff)
        assert list(f['data/loss'].keys()) == []


def test_hdf5_weights_skip_shared_params_like_caffe(tmp_path):
    h5py = pytest.importorskip('h5py')
    require_layers('Input', 'InnerProduct')
    net = caffe_pb2.NetParameter()
    text_format.Merge('''name: "shared"
      layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
              inner_product_param { num_output: 3 bias_term: false } }
      layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
              inner_product_param { num_output: 3 bias_term: false } }''', net)
    n = Net.from_param(net)
    n.save_hdf5(str(tmp_path / 'w.caffemodel.h5'))
    with h5py.File(tmp_path / 'w.caffemodel.h5', 'r') as f:
        assert list(f['data/a'].keys()) == ['0'] and list(f['data/b'].keys()) == []
        assert 'diff' not in f
    back = Net.from_param(net)
    back.copy_from(str(tmp_path / 'w.caffemodel.h5'))
    np.testing.assert_array_equal(back.layers[2].blobs[0].data, n.layers[1].blobs[0].data)


def test_resume_with_an_lmdb_data_layer_sees_the_same_batches(tmp_path):
    """Data layers report their read position through Layer.extra_state, which snapshots
    carry, so a resumed run reads exactly the batches an uninterrupted one reads (beyond
    Caffe, which restarts the database at the first record)."""
    require_layers('Data', 'InnerProduct', 'SoftmaxWithLoss')
    pytest.importorskip('lmdb')
    from qcaffe.data.lmdb_io import encode_datums, key_for, write_lmdb
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(13, 1, 6, 6)).astype(np.uint8)   # 13: batches wrap
    records = encode_datums(images, rng.randint(0, 10, size=13))
    write_lmdb(str(tmp_path / 'db'), [(key_for(i), records[i]) for i in range(13)])
    net = '''name: "lmdbnet"
      layer { name: "data" type: "Data" top: "data" top: "label"
              transform_param { scale: 0.00390625 mirror: true }
              data_param { source: "%s" batch_size: 5 backend: LMDB } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    ''' % (tmp_path / 'db')

    def solver(prefix):
        p = caffe_pb2.SolverParameter()
        text_format.Merge('base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" random_seed: 3 '
                          'snapshot_prefix: "%s"' % (tmp_path / prefix), p)
        text_format.Merge(net, p.net_param)
        return create_solver(p)
    # the resumed solver consumes other batches first: the restore must reposition
    for s in assert_resume_is_exact(solver, total=7, stop=3, detour=2):
        s.net.layers[0].stop_prefetch()


def test_resume_with_dropout_is_bitwise_equal(tmp_path):
    """Dropout draws from the seeded host RNG; its state travels in the side file."""
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss', 'Dropout')
    text = IP_NET.replace(
        'layer { name: "loss"',
        'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
        'dropout_param { dropout_ratio: 0.5 } }\nlayer { name: "loss"')
    assert 'Dropout' in text

    def solver(sub):
        os.makedirs(tmp_path / sub, exist_ok=True)
        p = caffe_pb2.SolverParameter()
        text_format.Merge('base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" random_seed: 5 '
                          'snapshot_prefix: "%s"' % (tmp_path / sub / 'd'), p)
        text_format.Merge(text, p.net_param)
        s = create_solver(p)
        feed(s.net, np.load(os.path.join(ref_dir(), 'batch.npz')))
        return s
    # the resumed solver draws other masks first: the restore must rewind the RNG
    assert_resume_is_exact(solver, total=6, stop=3, detour=1)


@pytest.mark.parametrize('solver_type', sorted(SOLVERS))
def test_apply_update_allocates_no_param_sized_arrays(solver_type, tmp_path):
    """The update loop reuses its work buffers: no param-sized allocation per iteration."""
    import tracemalloc
    s = ip_solver(tmp_path, solver_type=solver_type)
    s.step(2)                   # work buffers exist now
    for p in s.net.learnable_params:
        p.diff[...] = 0.01
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        s.apply_update()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 7840 * 4 // 2, '%s allocated %d bytes in apply_update' % (solver_type, peak)


def test_solver_file_with_legacy_enum_and_solver_class_by_enum(tmp_path):
    require_layers('Input', 'InnerProduct', 'SoftmaxWithLoss')
    from qcaffe.solvers import NesterovSolver, solver_class
    net_file = tmp_path / 'net.prototxt'
    net_file.write_text(IP_NET)
    solver_file = tmp_path / 'old_solver.prototxt'
    solver_file.write_text('net: "%s"\nsolver_type: NESTEROV\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                           'momentum: 0.9\n' % net_file)
    s = create_solver(str(solver_file))
    assert isinstance(s, NesterovSolver) and s.param.type == 'Nesterov'
    assert s.param.snapshot_prefix == str(tmp_path / 'old_solver')   # Caffe's default prefix
    assert solver_class(caffe_pb2.SolverParameter.ADADELTA).type == 'AdaDelta'
    with pytest.raises(SolverError, match='Unknown solver_type enum value 9'):
        solver_class(9)


@pytest.mark.parametrize('solver_type', sorted(SOLVERS))
@pytest.mark.parametrize('reg', ['L2', 'L1'])
def test_cache_blocked_update_equals_whole_array_update(solver_type, reg, tmp_path):
    """Large params are updated slice by slice on the CPU: bitwise the same result."""
    text = ('regularization_type: "%s" iter_size: 2 clip_gradients: 0.5 weight_decay: 0.01'
            % reg)
    whole = ip_solver(tmp_path, text, solver_type)
    blocked = ip_solver(tmp_path, text, solver_type)
    blocked.CHUNK = 1000        # ip1's 7840 weights in 8 slices, the last one partial
    mask = (np.arange(7840) % 3 != 0).astype(np.float32).reshape(10, 784)
    for s in (whole, blocked):
        s.net.layers[s.net.layer_index('ip1')].param_update_mask = \
            lambda i: mask if i == 0 else None
        s.step(3)
    for key, value in params_of(whole.net).items():
        np.testing.assert_array_equal(params_of(blocked.net)[key], value, err_msg=str(key))
    for a, b in zip(whole.history, blocked.history):
        np.testing.assert_array_equal(a.data, b.data)
