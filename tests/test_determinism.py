"""Training is a function of its inputs and ``random_seed`` only: LeNet trained with 1, 2 or
3 threads, and beside a process that keeps the cores busy, ends with bit-identical weights;
so do the update rules of every solver split in slices over threads.

This holds by construction (qcaffe.ops.parallel: chunks fixed by the shapes, BLAS single-
threaded inside them, partial sums added in chunk order), which is why the comparisons here
are exact.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from qcaffe.data.lmdb_io import encode_datums, key_for, write_lmdb
from qcaffe.io import read_net_param
from qcaffe.ops import parallel
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import create_solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERATIONS = 12


@pytest.fixture(scope='module')
def mnist_like_lmdb(tmp_path_factory):
    """256 28x28 grey images of blurred strokes with labels 0-9, as an LMDB of Datums."""
    rng = np.random.default_rng(5)
    images = np.zeros((256, 1, 28, 28), np.uint8)
    for img, (r, c) in zip(images, rng.integers(4, 20, (256, 2))):
        img[0, r:r + 8, c:c + 3] = 255
        img[0, r + 3:r + 5, :] = rng.integers(0, 255)
    labels = rng.integers(0, 10, 256)
    path = str(tmp_path_factory.mktemp('det') / 'train_lmdb')
    records = encode_datums(images, labels)
    write_lmdb(path, ((key_for(i), r) for i, r in enumerate(records)))
    return path


def lenet_solver(source, solver_type='SGD'):
    """examples/mnist's LeNet and solver (Data layer with prefetch, SGD momentum, weight
    decay, inv policy), reading ``source``, without test nets."""
    net = read_net_param(os.path.join(REPO, 'examples', 'mnist', 'lenet_train_test.prototxt'))
    for layer in net.layer:
        if layer.type == 'Data':
            layer.data_param.source = source
    param = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" '
                      'gamma: 0.0001 power: 0.75 max_iter: 100 random_seed: 42 '
                      'solver_mode: CPU', param)
    param.type = solver_type
    param.net_param.CopyFrom(net)
    param.train_state.phase = caffe_pb2.TRAIN
    return create_solver(param)


def train(source, threads):
    before = parallel.num_threads()
    parallel.set_num_threads(threads)
    try:
        solver = lenet_solver(source)
        solver.step(ITERATIONS)
        return [p.data.copy() for p in solver.net.learnable_params]
    finally:
        parallel.set_num_threads(before)


def test_lenet_weights_identical_for_1_2_3_threads_and_under_load(mnist_like_lmdb,
                                                                   monkeypatch):
    # small chunks: many of them, so the threads really share every pass
    monkeypatch.setattr(parallel, 'MIN_CHUNK_ELEMENTS', 1 << 12)
    one = train(mnist_like_lmdb, 1)
    for threads in (2, 3):
        for a, b in zip(one, train(mnist_like_lmdb, threads)):
            np.testing.assert_array_equal(a, b)
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
            for _ in range(os.cpu_count() or 1)]
    try:
        loaded = train(mnist_like_lmdb, 2)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    for a, b in zip(one, loaded):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(one[0], lenet_solver(mnist_like_lmdb).net.learnable_params[0]
                              .data), 'training changed nothing: the test would prove nothing'


@pytest.mark.parametrize('solver_type', ['SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta',
                                         'Adam'])
def test_solver_update_in_slices_over_threads_is_identical(monkeypatch, tmp_path, solver_type):
    """The update runs in slices of Solver.CHUNK elements shared out over the threads;
    element-wise, so any slicing and thread count give the very same floats."""
    from test_solvers import ip_solver     # the solver tests' small InnerProduct net
    from qcaffe.solvers.base import Solver

    def params(threads, chunk):
        monkeypatch.setattr(Solver, 'CHUNK', chunk)
        before = parallel.num_threads()
        parallel.set_num_threads(threads)
        try:
            s = ip_solver(tmp_path / ('%d_%d' % (threads, chunk)), solver_type=solver_type,
                          batch=False)
            rng = np.random.default_rng(1)
            data = s.net.blob_by_name('data')
            data.data[...] = rng.standard_normal(data.shape)
            s.net.blob_by_name('label').data[...] = rng.integers(0, 10, data.shape[0])
            s.step(3)
            return [blob.data.copy() for blob in s.net.learnable_params]
        finally:
            parallel.set_num_threads(before)
    whole = params(1, 1 << 30)
    for threads, chunk in ((1, 512), (3, 512), (3, 1000)):   # 7840 weights: many slices
        for a, b in zip(whole, params(threads, chunk)):
            np.testing.assert_array_equal(a, b)


def test_thread_count_from_the_environment_and_a_bad_value_named():
    code = 'import qcaffe; print(qcaffe.num_threads())'
    env = dict(os.environ, QCAFFE_NUM_THREADS='3', PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == '3', r.stderr
    env['QCAFFE_NUM_THREADS'] = 'many'
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "QCAFFE_NUM_THREADS='many': expected a whole number >= 1" in r.stderr
