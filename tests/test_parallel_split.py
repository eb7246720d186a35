"""Threaded batch/row splits (qcaffe.ops.parallel) give the same floats as one thread.

The layer tests use small blobs, below ``parallel.MIN_ELEMENTS``, so they never take the split
paths; here the threshold is lowered and 2-3 threads are forced (``QCAFFE_NUM_THREADS``).
"""
import os

import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.ops import parallel
from qcaffe.testing import make_layer


def _run(layer_type, shape, params, layout=None):
    rng = np.random.default_rng(0)
    layer = make_layer(layer_type, **params)
    bottom, top = Blob(shape), Blob()
    bottom.data[...] = rng.standard_normal(shape)
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    if layout:
        layer.layout = layout
    for blob in layer.blobs:
        blob.data[...] = rng.standard_normal(blob.shape) * 0.1
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = rng.standard_normal(top.shape)
    for blob in layer.blobs:
        blob.diff[...] = 0.5          # param diffs accumulate onto what is there
    layer.backward([top], [True], [bottom])
    return [y, bottom.diff.copy()] + [b.diff.copy() for b in layer.blobs]


CASES = [
    ('Convolution', (6, 9, 11, 10),
     dict(convolution_param=dict(num_output=7, kernel_size=[3], pad=[1], stride=[2]))),
    ('Convolution', (5, 8, 12, 12),
     dict(convolution_param=dict(num_output=6, kernel_size=[5], dilation=[2], pad=[2]))),
    ('Convolution', (7, 1, 14, 14), dict(convolution_param=dict(num_output=4, kernel_size=[5]))),
    ('Convolution', (6, 4, 9, 9),
     dict(convolution_param=dict(num_output=6, kernel_size=[3], group=2, pad=[1]))),
    ('Convolution', (6, 4, 5, 5), dict(convolution_param=dict(num_output=3, kernel_size=[1]))),
    ('InnerProduct', (9, 3, 4, 5), dict(inner_product_param=dict(num_output=11))),
    ('InnerProduct', (9, 60), dict(inner_product_param=dict(num_output=13, transpose=True))),
    # tiled max pooling: narrow maps move rows as float64/complex128 elements, wide ones not
    ('Pooling', (7, 5, 8, 8), dict(pooling_param=dict(pool='MAX', kernel_size=2, stride=2))),
    ('Pooling', (6, 4, 6, 6),
     dict(pooling_param=dict(pool='MAX', kernel_size=2, stride=2, pad=1))),
    ('Pooling', (5, 3, 24, 24), dict(pooling_param=dict(pool='MAX', kernel_size=2, stride=2))),
]


@pytest.mark.parametrize('layer_type,shape,params', CASES)
@pytest.mark.parametrize('threads', [2, 3])
def test_split_equals_one_thread(monkeypatch, layer_type, shape, params, threads):
    monkeypatch.setenv('QCAFFE_NUM_THREADS', '1')
    one = _run(layer_type, shape, params)
    monkeypatch.setenv('QCAFFE_NUM_THREADS', str(threads))
    monkeypatch.setattr(parallel, 'MIN_ELEMENTS', 1)
    calls = []
    real = parallel.run_parts
    monkeypatch.setattr(parallel, 'run_parts',
                        lambda bounds, *a, **k: (calls.append(len(bounds)), real(bounds, *a, **k)))
    split = _run(layer_type, shape, params)
    assert max(calls) > 1, 'the split path was not taken'
    for a, b in zip(one, split):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('layer_type,shape,params', CASES[:2])
def test_split_channels_last_matches_channels_first(monkeypatch, layer_type, shape, params):
    monkeypatch.setenv('QCAFFE_NUM_THREADS', '2')
    monkeypatch.setattr(parallel, 'MIN_ELEMENTS', 1)
    nhwc = _run(layer_type, shape, params)
    nchw = _run(layer_type, shape, params, layout='nchw')
    for a, b in zip(nhwc, nchw):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _solver_params(solver_type, tmp_path):
    from test_solvers import ip_solver     # the solver tests' small InnerProduct net
    s = ip_solver(tmp_path, solver_type=solver_type, batch=False)
    rng = np.random.default_rng(1)
    data = s.net.blob_by_name('data')
    data.data[...] = rng.standard_normal(data.shape)
    s.net.blob_by_name('label').data[...] = rng.integers(0, 10, data.shape[0])
    s.step(3)
    return [blob.data.copy() for blob in s.net.learnable_params]


@pytest.mark.parametrize('solver_type', ['SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta',
                                         'Adam'])
def test_solver_update_split_in_slices_and_threads_is_identical(monkeypatch, tmp_path,
                                                               solver_type):
    """The update is shared out over threads in slices of Solver.CHUNK elements: element-wise,
    so any slicing and thread count give the very same floats."""
    from qcaffe.solvers.base import Solver
    monkeypatch.setenv('QCAFFE_NUM_THREADS', '1')
    one = _solver_params(solver_type, tmp_path / 'one')
    monkeypatch.setenv('QCAFFE_NUM_THREADS', '3')
    monkeypatch.setattr(parallel, 'MIN_ELEMENTS', 1)
    monkeypatch.setattr(Solver, 'CHUNK', 512)         # 7840 weights: several slices a thread
    calls = []
    real = parallel.run_parts
    monkeypatch.setattr(parallel, 'run_parts',
                        lambda bounds, *a, **k: (calls.append(len(bounds)), real(bounds, *a, **k)))
    split = _solver_params(solver_type, tmp_path / 'split')
    assert max(calls) > 1, 'the split path was not taken'
    for a, b in zip(one, split):
        np.testing.assert_array_equal(b, a)


# ------------------------------------------------------------------ the worker pool itself
def _split_sum(n=3):
    """Every slice of [0, 3000) summed by its own thread; returns (sums, thread names)."""
    out, names = {}, {}

    def work(k, s, e):
        out[k] = sum(range(s, e))
        import threading
        names[k] = threading.current_thread().name
    parallel.run_parts([(1000 * k, 1000 * (k + 1)) for k in range(n)], work)
    return out, names


@pytest.mark.parametrize('spin', [True, False])
def test_pool_hands_slices_to_workers_and_reraises_their_errors(monkeypatch, spin):
    if spin and parallel._spinlocks() is None:
        pytest.skip('no pthread spinlocks in this libc')
    if not spin:   # the portable hand-off (plain locks): what macOS/Windows get
        monkeypatch.setattr(parallel, '_spin', {'funcs': None})
        monkeypatch.setitem(parallel._pool_state, 'workers', [])  # a fresh pool, and the
        monkeypatch.setitem(parallel._pool_state, 'pid', os.getpid())   # old one back after
    sums, names = _split_sum()
    assert sums == {k: sum(range(1000 * k, 1000 * (k + 1))) for k in range(3)}
    assert names[0] == 'MainThread' and names[1] == names[2] == 'qcaffe-worker'
    assert all(w.spinning == spin for w in parallel._pool_state['workers'])

    def fail(k, s, e):
        if k == 2:
            raise ValueError('slice %d failed' % k)
    with pytest.raises(ValueError, match='slice 2 failed'):
        parallel.run_parts([(0, 1), (1, 2), (2, 3)], fail)
    assert _split_sum()[0][2] == sum(range(2000, 3000))    # the pool still works


def test_spinning_workers_park_when_idle_and_stop_using_cpu(monkeypatch):
    """Workers busy-wait (GIL released) only for SPIN_S after a split, then block on a
    lock: an idle qcaffe process does not keep its cores busy."""
    if parallel._spinlocks() is None:
        pytest.skip('no pthread spinlocks in this libc')
    import time
    start = time.monotonic()
    _split_sum()
    workers = parallel._pool_state['workers']
    assert workers and all(w.spinning for w in workers)
    if time.monotonic() - start < parallel.SPIN_S / 2:    # (a stalled machine may park them)
        assert any(not w.parked for w in workers)      # spinning right after the split
    deadline = time.monotonic() + parallel.SPIN_S * 3 + 2.0
    while not all(w.parked for w in workers) and time.monotonic() < deadline:
        time.sleep(parallel.SPIN_S / 5)
    assert all(w.parked for w in workers)
    t = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - t < 0.1               # spinning would use ~0.6 s of CPU
    sums, _ = _split_sum()                             # parked workers wake for the next one
    assert sums[1] == sum(range(1000, 2000))


def test_spin_time_from_the_environment_and_a_bad_value_named():
    assert parallel._spin_seconds('50') == pytest.approx(0.05)
    assert parallel._spin_seconds('0') == 0.0
    assert parallel._spin_seconds('') == 0.0
    with pytest.warns(UserWarning, match=r"QCAFFE_SPIN_MS='fast' is not a number"):
        assert parallel._spin_seconds('fast') == pytest.approx(0.05)
