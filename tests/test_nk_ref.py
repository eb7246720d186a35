"""Replay of the DNS/INQ fork's own LeNet runs (../shared/data/nk_ref, README.txt there):
three SGD steps of DNS from the pretrained LeNet, of INQ 30 % and of INQ 60 %, with the
fork's prototxts and solvers, its init.caffemodel files and its recorded batches.

Two replays per run:
* with the fork's recorded gradients injected (``on_gradients_ready``): the masks (DNS
  surgery, INQ partition) must match bit for bit and every weight to float32 rounding of the
  update (1e-7 of the weights' scale), the INQ powers of two exactly;
* with qcaffe's own gradients: loss and logits as the fork's (1e-5 / 1e-4), the masks still
  bit for bit, and the gradients as the fork's (1e-4 of their scale) -- except where a max
  pooling window holds several equal maxima: the fork's float32 GEMM gives mathematically
  equal outputs slightly different values, so the gradient goes to a different element (the
  float64 PyTorch computation of the same step agrees with qcaffe there), so a conv output
  channel's weight gradient may differ only where its pooling windows had such ties.
"""
import os

import numpy as np
import pytest
from google.protobuf import text_format

from qcaffe.io import read_net_param, read_solver_param
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import create_solver
from shared_data import require_shared

LAYERS = ('conv1', 'conv2', 'ip1', 'ip2')
RUNS = {'dns': ('lenet_train_test_DNS', 'lenet_solver_DNS'),
        'inq30': ('lenet_train_test_inq_30', 'lenet_solver_inq_30'),
        'inq60': ('lenet_train_test_inq_60', 'lenet_solver_inq_60')}
INPUTS = ('name: "data" type: "Input" top: "data" input_param { shape { dim: 128 dim: 1 '
          'dim: 28 dim: 28 } }',
          'name: "label" type: "Input" top: "label" input_param { shape { dim: 128 } }')
# DNS thresholds max(mu + c_rate * sigma, 0) printed in nk_ref/README.txt (float32)
THRESHOLDS = {'conv1': 0.239137381, 'conv2': 0.0950838998, 'ip1': 0.055457294,
              'ip2': 0.184439421}


def fork_solver(run, tmp_path):
    """The fork's solver and net for ``run``, its Data layers replaced by Input layers."""
    d = require_shared('nk_ref', run)
    net_file, solver_file = RUNS[run]
    net = read_net_param(os.path.join(d, net_file + '.prototxt'))
    layers = [l for l in net.layer if l.type not in ('Data', 'Accuracy')]
    del net.layer[:]
    for text in INPUTS:
        net.layer.add().CopyFrom(text_format.Parse(text, caffe_pb2.LayerParameter()))
    for l in layers:
        net.layer.add().CopyFrom(l)
    param = read_solver_param(os.path.join(d, solver_file + '.prototxt'))
    for field in ('net', 'test_iter', 'test_interval'):
        param.ClearField(field)
    param.net_param.CopyFrom(net)
    param.snapshot = 0
    param.snapshot_prefix = str(tmp_path / run)
    param.weights.append(os.path.join(d, 'init.caffemodel'))
    return create_solver(param), np.load(os.path.join(d, 'trajectory.npz'))


def layer(solver, name):
    return solver.net.layers[solver.net.layer_index(name)]


def feed(solver, traj, k):
    solver.net.blob_by_name('data').data[...] = traj['step%d/data' % k]
    solver.net.blob_by_name('label').data[...] = traj['step%d/label' % k]


def scale_close(actual, expected, tol, what):
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    assert err <= tol * scale, '%s: max diff %g, %g of its scale %g' % (what, err,
                                                                        err / scale, scale)


@pytest.mark.parametrize('run', sorted(RUNS))
def test_replay_with_the_forks_gradients(run, tmp_path):
    s, traj = fork_solver(run, tmp_path)
    for name in LAYERS:           # init.caffemodel holds what the fork's net held
        for j in range(4):
            np.testing.assert_array_equal(layer(s, name).blobs[j].data,
                                          traj['step0/param/%s/%d' % (name, j)])
    k = [0]

    def inject():
        for name in LAYERS:
            for j in (0, 1):
                layer(s, name).blobs[j].diff[...] = traj['step%d/grad/%s/%d' % (k[0], name, j)]
        if run != 'dns' and k[0] == 1:       # after step 1's forward: quantized, not updated
            for name in LAYERS:
                for j in range(4):
                    np.testing.assert_array_equal(layer(s, name).blobs[j].data,
                                                  traj['step1/fwd_param/%s/%d' % (name, j)],
                                                  err_msg='%s/%d' % (name, j))
    s.add_callback(lambda: None, inject)
    for k[0] in (1, 2, 3):
        feed(s, traj, k[0])
        s.step(1)
        for name in LAYERS:
            blobs = layer(s, name).blobs
            for j in (2, 3):
                np.testing.assert_array_equal(blobs[j].data, traj['step%d/param/%s/%d'
                                                                  % (k[0], name, j)])
            for j in (0, 1):
                ref = traj['step%d/param/%s/%d' % (k[0], name, j)]
                scale_close(blobs[j].data, ref, 1e-7, 'step %d %s/%d' % (k[0], name, j))
                if run != 'dns':              # fixed entries: exact powers of two, unchanged
                    fixed = blobs[j + 2].data == 0
                    np.testing.assert_array_equal(blobs[j].data[fixed], ref[fixed])
    if run == 'dns':
        for name, t in THRESHOLDS.items():
            lay = layer(s, name)
            from qcaffe.compress.dns import threshold
            assert threshold(lay.mu, lay.sigma, lay.c_rate) == np.float32(t)


def tied_channels(top):
    """Output channels of a (N, C, H, W) conv top where some 2x2 max pooling window holds
    two equal non-zero maxima (all-zero windows give zero whichever element wins)."""
    n, c, h, w = top.shape
    win = top.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, h // 2, w // 2, 4)
    s = np.sort(win, axis=-1)
    return ((s[..., 3] == s[..., 2]) & (s[..., 3] != 0)).any(axis=(0, 2, 3))


@pytest.mark.parametrize('run', sorted(RUNS))
def test_replay_with_qcaffes_own_gradients(run, tmp_path):
    s, traj = fork_solver(run, tmp_path)
    k = [0]
    checked = []

    def compare_gradients():
        for name in LAYERS:
            lay = layer(s, name)
            for j in (0, 1):
                ref = traj['step%d/grad/%s/%d' % (k[0], name, j)]
                got = lay.blobs[j].diff
                if name.startswith('conv') and j == 0:
                    # a channel may differ only where pooling had tied maxima to route to
                    tol = 1e-4 * np.max(np.abs(ref))
                    off = np.abs(got - ref).reshape(len(ref), -1).max(axis=1) > tol
                    tied = tied_channels(s.net.blob_by_name(name).data)
                    assert not np.any(off & ~tied), (name, np.flatnonzero(off & ~tied))
                    checked.append(int(np.count_nonzero(~off)))
                    continue
                scale_close(got, ref, 1e-4, 'step %d grad %s/%d' % (k[0], name, j))
    s.add_callback(lambda: None, compare_gradients)
    for k[0] in (1, 2, 3):
        feed(s, traj, k[0])
        s.step(1)
        assert s.smoothed_loss == pytest.approx(float(traj['step%d/loss' % k[0]]), rel=1e-5)
        scale_close(s.net.blob_by_name('ip2').data, traj['step%d/blob/ip2' % k[0]], 1e-4,
                    'step %d ip2' % k[0])
        for name in LAYERS:
            for j in (2, 3):
                np.testing.assert_array_equal(layer(s, name).blobs[j].data,
                                              traj['step%d/param/%s/%d' % (k[0], name, j)],
                                              err_msg='step %d %s mask %d' % (k[0], name, j))
    assert min(checked) > 0          # most channels agree (see the module docstring)
