"""The kernels of qcaffe.ops against the short references of qcaffe.ops.reference, and the
same floats for every thread count.

Tolerances are float32 error bounds, not numbers that passed on one machine: a sum of K
products computed in float32, in any order, with or without FMA, is within
``K * u * sum|terms|`` of the exact sum (u = 2^-24; Higham, "Accuracy and Stability of Numerical
Algorithms", 3.1), and the references compute exactly in float64 from the same float32 inputs.
Across thread counts the results must be *identical*: the chunks are fixed by the shapes.
"""
import numpy as np
import pytest

from qcaffe.ops import conv as conv_ops
from qcaffe.ops import parallel, reference
from qcaffe.ops import pooling as pool_ops
from qcaffe.ops.conv import ConvPlan
from qcaffe.ops.gemm import gemm
from qcaffe.ops.im2col import ConvGeometry, padded
from qcaffe.layers.pooling import pooled_size

U = 2.0 ** -24


def assert_within_bound(actual, exact, terms, magnitude, what):
    """|actual - exact| <= (terms + 2) u magnitude, elementwise (``magnitude``: the exact sum
    of the absolute values of the terms)."""
    bound = (terms + 2) * U * magnitude + 1e-30
    err = np.abs(actual.astype(np.float64) - exact)
    worst = np.max(err / bound)
    assert worst <= 1.0, '%s: error %.3g of the float32 bound (max abs error %.3g)' % (
        what, worst, err.max())


@pytest.fixture
def many_chunks(monkeypatch):
    """Every job cut into as many chunks as it has rows (up to MAX_CHUNKS)."""
    monkeypatch.setattr(parallel, 'MIN_CHUNK_ELEMENTS', 1)


@pytest.fixture
def threads():
    """Set qcaffe's thread count inside a test; the default comes back after it."""
    before = parallel.num_threads()
    yield parallel.set_num_threads
    parallel.set_num_threads(before)


# --------------------------------------------------------------------------- convolution
# (x shape, num_output, kernel, stride, pad, dilation, group, bias): the layouts and paths of
# ConvPlan -- channels-first (C < 8), channels-last, 1x1, groups, 3-D, no bias
CONV_CASES = {
    'nchw': ((7, 3, 9, 8), 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    'nchw_lenet_conv1': ((6, 1, 12, 12), 4, (5, 5), (1, 1), (0, 0), (1, 1), 1, True),
    'nhwc_stride_pad': ((6, 9, 11, 10), 7, (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    'nhwc_dilation': ((5, 8, 12, 12), 6, (5, 5), (1, 1), (2, 2), (2, 2), 1, True),
    'nhwc_no_bias': ((5, 10, 7, 7), 4, (3, 2), (1, 2), (0, 1), (1, 1), 1, False),
    'one_by_one': ((6, 4, 5, 5), 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    'groups': ((6, 4, 9, 9), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True),
    'three_d': ((4, 2, 5, 6, 4), 3, (2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 1), 1, True),
}


def _conv_inputs(case):
    shape, o, k, st, pd, dl, g, bias = CONV_CASES[case]
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((o, shape[1] // g) + k) * 0.3).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    geom = ConvGeometry(shape[2:], k, st, pd, dl)
    dy = rng.standard_normal(shape[:1] + (o,) + geom.out_shape).astype(np.float32)
    return x, w, b, dy, geom, g


def _conv_run(case):
    """forward + backward through a fresh ConvPlan: (y, dx, dw, db, plan)."""
    x, w, b, dy, geom, g = _conv_inputs(case)
    plan = ConvPlan(geom, x.shape[0], x.shape[1], w.shape[0], g, b is not None)
    y = np.empty(dy.shape, np.float32)
    plan.forward(x, w, b, y)
    dx = np.empty_like(x)
    dw = np.full_like(w, 0.5)            # param diffs accumulate onto what is there
    db = None if b is None else np.full_like(b, 0.25)
    plan.backward(x, w, dy, dx, dw, db)
    return y, dx, dw, db, plan


@pytest.mark.parametrize('case', sorted(CONV_CASES))
@pytest.mark.parametrize('keep_cols', [True, False])
def test_conv_plan_matches_the_reference(monkeypatch, many_chunks, case, keep_cols):
    if not keep_cols:        # columns over budget: rebuilt per chunk in backward
        monkeypatch.setattr(conv_ops, 'COL_BUDGET_BYTES', 2000)
    x, w, b, dy, geom, g = _conv_inputs(case)
    y, dx, dw, db, plan = _conv_run(case)
    assert plan.keep_cols == keep_cols or plan.is_1x1
    if case.startswith('nhwc'):
        assert plan.layout == 'nhwc'
    st, pd, dl = geom.stride, geom.pad, geom.dilation
    taps = geom.kernel_count * w.shape[1]
    ax, aw, ady = np.abs(x), np.abs(w), np.abs(dy)
    ab = None if b is None else np.abs(b)
    assert_within_bound(y, reference.conv(x, w, b, st, pd, dl, g), taps,
                        reference.conv(ax, aw, ab, st, pd, dl, g), 'forward')
    rdx, rdw, rdb = reference.conv_backward(x, w, dy, st, pd, dl, g)
    mdx, mdw, mdb = reference.conv_backward(ax, aw, ady, st, pd, dl, g)
    assert_within_bound(dx, rdx, w.shape[0] * geom.kernel_count, mdx, 'input gradient')
    positions = x.shape[0] * geom.out_count
    assert_within_bound(dw, rdw + 0.5, positions, mdw + 0.5, 'weight gradient')
    if b is not None:
        assert_within_bound(db, rdb + 0.25, positions, mdb + 0.25, 'bias gradient')


@pytest.mark.parametrize('case', sorted(CONV_CASES))
def test_conv_plan_gives_the_same_floats_for_any_thread_count(many_chunks, threads, case):
    runs = []
    for n in (1, 2, 3):
        threads(n)
        runs.append(_conv_run(case))
    assert len(runs[0][-1].bounds) > 1, 'the chunked path was not taken'
    for other in runs[1:]:
        for a, b in zip(runs[0][:-1], other[:-1]):
            if a is not None:
                np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- pooling
# (x shape, kernel, stride, pad, ceil): the tiled fast path (narrow rows moved as float32 /
# float64 / complex128 elements, and a wide map), overlapping windows, padding, FLOOR
POOL_CASES = {
    'tiled_lenet_pool1': ((5, 3, 24, 24), (2, 2), (2, 2), (0, 0), True),
    'tiled_rows_complex128': ((6, 4, 8, 8), (2, 2), (2, 2), (0, 0), True),
    'tiled_rows_float64': ((5, 2, 3, 6), (3, 3), (3, 3), (0, 0), True),
    'tiled_rows_float32': ((5, 2, 4, 3), (2, 3), (2, 3), (0, 0), True),
    'overlap_pad': ((6, 4, 9, 9), (3, 3), (2, 2), (1, 1), True),
    'overlap_floor': ((5, 3, 10, 11), (3, 2), (2, 1), (0, 0), False),
}


def _pool_inputs(case):
    shape, k, s, p, ceil = POOL_CASES[case]
    rng = np.random.default_rng(sorted(POOL_CASES).index(case) + 100)
    # values on a coarse grid: many exact ties, where the first maximum must win
    x = (np.round(rng.standard_normal(shape) * 2) / 2).astype(np.float32)
    out = tuple(pooled_size(sz, kk, st, pd, ceil, p != (0, 0))
                for sz, kk, st, pd in zip(shape[2:], k, s, p))
    geom = ConvGeometry(shape[2:], k, s, p, out_shape=out)
    tiled = s == k and geom.padded_shape == (out[0] * k[0], out[1] * k[1])
    dy = rng.standard_normal(shape[:2] + out).astype(np.float32)
    return x, dy, geom, tiled


def _pool_run(case):
    """MAX (max only, max + argmax, backward) and AVE (forward, backward) through qcaffe.ops."""
    x, dy, geom, tiled = _pool_inputs(case)
    xpad = padded(x, geom, -np.inf, name=('pad', -np.inf))
    y_only = np.empty(dy.shape, np.float32)
    pool_ops.max_pool(xpad, y_only, geom)
    y_max = np.empty(dy.shape, np.float32)
    arg = pool_ops.max_pool_argmax(xpad, y_max, geom, tiled)
    dx_max = np.empty_like(x)
    pool_ops.route_back(dy, dx_max, geom, arg, tiled)
    kh, kw = geom.kernel
    ph, pw = geom.out_shape
    start = [np.arange(o) * st - pd for o, st, pd in zip(geom.out_shape, geom.stride, geom.pad)]
    sizes = [np.minimum(s0 + k, i + pd) - s0 for s0, k, i, pd in
             zip(start, geom.kernel, geom.in_shape, geom.pad)]
    divisor = np.outer(*sizes).astype(np.float32)
    y_ave = np.empty(dy.shape, np.float32)
    pool_ops.ave_pool(padded(x, geom, 0.0, name=('pad', 0.0)), y_ave, geom, divisor)
    dx_ave = np.empty_like(x)
    pool_ops.route_back(dy / divisor, dx_ave, geom, None, tiled)
    return y_only, y_max, arg.astype(np.int64), dx_max, y_ave, dx_ave


@pytest.mark.parametrize('case', sorted(POOL_CASES))
def test_pooling_ops_match_the_reference(many_chunks, case):
    x, dy, geom, tiled = _pool_inputs(case)
    shape, k, s, p, ceil = POOL_CASES[case]
    assert tiled == case.startswith('tiled')
    y_only, y_max, arg, dx_max, y_ave, dx_ave = _pool_run(case)
    ref, mask = reference.pool(x, k, s, p, 'MAX', ceil)
    np.testing.assert_array_equal(y_only, ref)              # a max is exact
    np.testing.assert_array_equal(y_max, ref)
    # the tap index of the first maximum, as Caffe's mask (h * W + w) names it
    hs = (np.arange(y_max.shape[2]) * s[0] - p[0]).reshape(-1, 1)
    ws = (np.arange(y_max.shape[3]) * s[1] - p[1]).reshape(1, -1)
    np.testing.assert_array_equal((hs + arg // k[1]) * x.shape[3] + ws + arg % k[1], mask)
    # each input gets the gradients of the windows whose maximum it is: a sum of at most
    # ceil(k/s) per axis overlapping windows
    overlap = int(np.prod([-(-kk // st) for kk, st in zip(k, s)]))
    rdx = reference.pool_backward(x.shape, dy, mask, k, s, p, 'MAX', ceil)
    mdx = reference.pool_backward(x.shape, np.abs(dy), mask, k, s, p, 'MAX', ceil)
    assert_within_bound(dx_max, rdx, overlap, mdx, 'MAX backward')
    ref_ave, _ = reference.pool(x, k, s, p, 'AVE', ceil)
    assert_within_bound(y_ave, ref_ave, k[0] * k[1] + 1,
                        reference.pool(np.abs(x), k, s, p, 'AVE', ceil)[0], 'AVE forward')
    rdx = reference.pool_backward(x.shape, dy, None, k, s, p, 'AVE', ceil)
    mdx = reference.pool_backward(x.shape, np.abs(dy), None, k, s, p, 'AVE', ceil)
    assert_within_bound(dx_ave, rdx, overlap + 1, mdx, 'AVE backward')


@pytest.mark.parametrize('case', sorted(POOL_CASES))
def test_pooling_ops_give_the_same_floats_for_any_thread_count(many_chunks, threads, case):
    runs = []
    for n in (1, 3):
        threads(n)
        runs.append(_pool_run(case))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------- GEMM
@pytest.mark.parametrize('m,k,n', [(40, 30, 7), (7, 30, 40), (13, 50, 13)])
@pytest.mark.parametrize('accumulate', [False, True])
def test_gemm_matches_the_reference_and_any_thread_count(many_chunks, threads, m, k, n,
                                                         accumulate):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    outs = []
    for t in (1, 2, 3):
        threads(t)
        out = np.full((m, n), 2.0, np.float32) if accumulate else np.empty((m, n), np.float32)
        gemm(a, b, out, acc=np.empty_like(out) if accumulate else None)
        outs.append(out)
    base = 2.0 if accumulate else 0.0
    assert_within_bound(outs[0], reference.gemm(a, b) + base, k + 1,
                        reference.gemm(np.abs(a), np.abs(b)) + base, 'gemm')
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


# ------------------------------------------------------------------------ chunks and pool
def test_chunks_depend_on_the_work_only():
    assert parallel.chunks(64, 10) == [(0, 64)]                       # small: one chunk
    big = parallel.chunks(64, 64 * parallel.MIN_CHUNK_ELEMENTS)
    assert len(big) == parallel.MAX_CHUNKS
    assert big[0][0] == 0 and big[-1][1] == 64
    assert all(a[1] == b[0] for a, b in zip(big, big[1:]))
    assert parallel.chunks(5, 1 << 30) == [(i, i + 1) for i in range(5)]  # one row each


def test_pool_runs_every_chunk_once_in_workers_and_reraises_errors(threads):
    import threading
    threads(3)
    seen, names = {}, set()

    def work(k, s, e):
        seen[k] = (s, e)
        names.add(threading.current_thread().name)
    bounds = [(i, i + 1) for i in range(40)]
    parallel.run(bounds, work)
    assert seen == dict(enumerate(bounds))
    assert 'MainThread' in names

    def fail(k, s, e):
        if k == 7:
            raise ValueError('chunk %d failed' % k)
    with pytest.raises(ValueError, match='chunk 7 failed'):
        parallel.run(bounds, fail)
    seen.clear()
    parallel.run(bounds, work)                        # the pool still works
    assert len(seen) == 40


def test_work_started_inside_a_chunk_runs_in_that_chunk(threads):
    threads(2)
    inner = []

    def outer(k, s, e):
        parallel.run([(0, 1), (1, 2)], lambda j, a, b: inner.append((k, j)))
    parallel.run([(0, 1), (1, 2), (2, 3)], outer)
    assert sorted(inner) == [(k, j) for k in range(3) for j in range(2)]


def test_blas_is_single_threaded_inside_and_restored_after():
    libs = parallel._blas_libs()
    if not libs:
        pytest.skip('numpy uses no BLAS that threadpoolctl controls')
    before = [lib.get_num_threads() for lib in libs]
    with parallel.blas_single_threaded():
        with parallel.blas_single_threaded():
            assert all(lib.get_num_threads() == 1 for lib in libs)
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before


def test_set_num_threads_rejects_nonsense():
    with pytest.raises(ValueError, match='must be >= 1'):
        parallel.set_num_threads(0)
