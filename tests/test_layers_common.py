"""Forward values and numeric gradients of every layer in qcaffe/layers/common.py.

Forward values are compared to straightforward numpy formulas of Caffe's definitions; every
layer with a backward goes through ``check_gradient`` (Caffe's GradientChecker approach).
"""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.layers.base import LayerError
from qcaffe.testing import check_gradient, make_layer

from layer_helpers import _seed, blob, rand, run  # noqa: F401 (_seed: autouse fixture)


# ----------------------------------------------------------------------- InnerProduct
@pytest.mark.parametrize('transpose', [False, True])
def test_inner_product_forward_and_gradient(transpose):
    layer = make_layer('InnerProduct', inner_product_param=dict(
        num_output=5, transpose=transpose, weight_filler=dict(type='gaussian', std=0.5),
        bias_filler=dict(type='gaussian', std=0.5)))
    x = rand(2, 3, 2, 2)
    top, = run(layer, [blob(x)])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert layer.blobs[0].shape == ((12, 5) if transpose else (5, 12))
    expect = x.reshape(2, 12) @ (w if transpose else w.T) + b
    assert top.shape == (2, 5)
    np.testing.assert_allclose(top.data, expect, rtol=1e-5, atol=1e-6)
    check_gradient(layer, [blob(x)], [Blob()])


def test_inner_product_axis_and_no_bias():
    layer = make_layer('InnerProduct', inner_product_param=dict(
        num_output=4, axis=2, bias_term=False, weight_filler=dict(type='uniform')))
    x = rand(2, 3, 6)
    top, = run(layer, [blob(x)])
    assert top.shape == (2, 3, 4) and len(layer.blobs) == 1
    np.testing.assert_allclose(top.data, x @ layer.blobs[0].data.T, rtol=1e-5, atol=1e-6)
    check_gradient(layer, [blob(x)], [Blob()])


def test_inner_product_param_diffs_accumulate():
    layer = make_layer('InnerProduct', inner_product_param=dict(
        num_output=3, weight_filler=dict(type='gaussian')))
    bot = blob(rand(4, 5))
    top, = run(layer, [bot])
    top.diff[...] = 1
    layer.backward([top], [True], [bot])
    once = layer.blobs[0].diff.copy()
    layer.backward([top], [True], [bot])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)


def test_inner_product_rejects_size_change():
    layer = make_layer('InnerProduct', inner_product_param=dict(num_output=3))
    run(layer, [blob(rand(2, 4))])
    with pytest.raises(LayerError, match='K = 5'):
        layer.reshape([blob(rand(2, 5))], [Blob()])


def test_inner_product_needs_num_output():
    with pytest.raises(LayerError, match='num_output'):
        run(make_layer('InnerProduct'), [blob(rand(2, 4))])


# ----------------------------------------------------------------------------- Embed
def test_embed_forward_and_gradient():
    layer = make_layer('Embed', embed_param=dict(
        num_output=3, input_dim=5, weight_filler=dict(type='gaussian'),
        bias_filler=dict(type='gaussian')))
    idx = np.array([[0, 4], [2, 2]], dtype=np.float32)
    top, = run(layer, [blob(idx)])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert top.shape == (2, 2, 3)
    np.testing.assert_allclose(top.data, w[idx.astype(int)] + b, rtol=1e-6)
    # repeated index 2: the gradient of its row accumulates both uses
    check_gradient(layer, [blob(idx)], [Blob()], check_bottom=[])


def test_embed_rejects_out_of_range_index():
    layer = make_layer('Embed', embed_param=dict(num_output=2, input_dim=3))
    with pytest.raises(LayerError, match='input_dim = 3'):
        run(layer, [blob([0, 3])])


# ----------------------------------------------------------------- Flatten / Reshape
def test_flatten_shares_and_reshapes():
    x = rand(2, 3, 4, 5)
    bot = blob(x)
    top, = run(make_layer('Flatten'), [bot])
    assert top.shape == (2, 60)
    np.testing.assert_array_equal(top.data, x.reshape(2, 60))
    top2, = run(make_layer('Flatten', flatten_param=dict(axis=1, end_axis=2)), [bot])
    assert top2.shape == (2, 12, 5)
    top3, = run(make_layer('Flatten', flatten_param=dict(axis=0, end_axis=-1)), [bot])
    assert top3.shape == (120,)
    # backward: the diff is shared, so the bottom sees the top's diff
    top.diff[...] = 3
    assert (bot.diff == 3).all()


@pytest.mark.parametrize('dims,axis,num_axes,expect', [
    ([0, -1], 0, -1, (2, 60)),
    ([6, 10], 1, -1, (2, 6, 10)),
    ([3, 1], 1, 1, (2, 3, 1, 4, 5)),
    ([-1], 1, 2, (2, 12, 5)),
    ([1], -1, 0, (2, 3, 4, 5, 1)),
    ([1, 1], 0, 0, (1, 1, 2, 3, 4, 5)),
    ([0, 0, 0, 0], 0, -1, (2, 3, 4, 5)),
])
def test_reshape_shapes(dims, axis, num_axes, expect):
    layer = make_layer('Reshape', reshape_param=dict(shape=dict(dim=dims), axis=axis,
                                                     num_axes=num_axes))
    x = rand(2, 3, 4, 5)
    top, = run(layer, [blob(x)])
    assert top.shape == expect
    np.testing.assert_array_equal(top.data.ravel(), x.ravel())


def test_reshape_errors():
    with pytest.raises(LayerError, match='multiple -1'):
        run(make_layer('Reshape', reshape_param=dict(shape=dict(dim=[-1, -1]))),
            [blob(rand(2, 3))])
    with pytest.raises(LayerError, match='divisible'):
        run(make_layer('Reshape', reshape_param=dict(shape=dict(dim=[-1, 4]))),
            [blob(rand(2, 3))])


# ----------------------------------------------------------------------- BatchReindex
def test_batch_reindex_forward_and_gradient():
    x = rand(4, 2, 3)
    idx = np.array([2, 0, 2, 3, 1], dtype=np.float32)
    layer = make_layer('BatchReindex')
    top, = run(layer, [blob(x), blob(idx)])
    np.testing.assert_array_equal(top.data, x[idx.astype(int)])
    check_gradient(make_layer('BatchReindex'), [blob(x), blob(idx)], [Blob()],
                   check_bottom=[0])


# ------------------------------------------------------------------------------ Split
def test_split_shares_data_and_sums_diffs():
    x = rand(2, 3)
    layer = make_layer('Split')
    bot = blob(x)
    tops = run(layer, [bot], ntop=3)
    for t in tops:
        np.testing.assert_array_equal(t.data, x)
    check_gradient(make_layer('Split'), [blob(x)], [Blob(), Blob(), Blob()])


# ----------------------------------------------------------------------- Concat/Slice
@pytest.mark.parametrize('axis', [0, 1, -1])
def test_concat_forward_and_gradient(axis):
    a, b = rand(2, 3, 4, seed=1), rand(2, 3, 4, seed=2)
    shape_b = list(b.shape)
    shape_b[axis] = 2
    b = rand(*shape_b, seed=2)
    top, = run(make_layer('Concat', concat_param=dict(axis=axis)), [blob(a), blob(b)])
    np.testing.assert_array_equal(top.data, np.concatenate([a, b], axis=axis))
    check_gradient(make_layer('Concat', concat_param=dict(axis=axis)), [blob(a), blob(b)],
                   [Blob()])


def test_concat_legacy_concat_dim_and_errors():
    a, b = rand(2, 3), rand(2, 3)
    top, = run(make_layer('Concat', concat_param=dict(concat_dim=0)), [blob(a), blob(b)])
    assert top.shape == (4, 3)
    with pytest.raises(LayerError, match='same shape'):
        run(make_layer('Concat'), [blob(rand(2, 3)), blob(rand(3, 3))])
    with pytest.raises(LayerError, match='not both'):
        run(make_layer('Concat', concat_param=dict(axis=1, concat_dim=1)), [blob(a), blob(b)])


@pytest.mark.parametrize('points,axis', [([1, 4], 1), ([], 1), ([2], 0)])
def test_slice_forward_and_gradient(points, axis):
    x = rand(4, 6, 2)
    ntop = len(points) + 1 if points else 3
    layer = make_layer('Slice', slice_param=dict(axis=axis, slice_point=points))
    tops = run(layer, [blob(x)], ntop=ntop)
    expect = (np.split(x, points, axis=axis) if points else np.split(x, ntop, axis=axis))
    for t, e in zip(tops, expect):
        np.testing.assert_array_equal(t.data, e)
    check_gradient(make_layer('Slice', slice_param=dict(axis=axis, slice_point=points)),
                   [blob(x)], [Blob() for _ in range(ntop)])


def test_slice_errors():
    with pytest.raises(LayerError, match='evenly divide'):
        run(make_layer('Slice'), [blob(rand(2, 5))], ntop=2)
    with pytest.raises(LayerError, match='strictly increasing'):
        run(make_layer('Slice', slice_param=dict(slice_point=[3, 2])), [blob(rand(2, 5))],
            ntop=3)


# ---------------------------------------------------------------------------- Eltwise
def _eltwise_inputs():
    return [rand(2, 3, 4, seed=s) for s in (1, 2, 3)]


def test_eltwise_prod():
    xs = _eltwise_inputs()
    top, = run(make_layer('Eltwise', eltwise_param=dict(operation='PROD')),
               [blob(x) for x in xs])
    np.testing.assert_allclose(top.data, xs[0] * xs[1] * xs[2], rtol=1e-6)
    for stable in (True, False):
        check_gradient(make_layer('Eltwise', eltwise_param=dict(
            operation='PROD', stable_prod_grad=stable)), [blob(x) for x in xs], [Blob()])


def test_eltwise_sum_coeffs():
    xs = _eltwise_inputs()
    layer = make_layer('Eltwise', eltwise_param=dict(operation='SUM', coeff=[1, -0.5, 2]))
    top, = run(layer, [blob(x) for x in xs])
    np.testing.assert_allclose(top.data, xs[0] - 0.5 * xs[1] + 2 * xs[2], rtol=1e-6,
                               atol=1e-7)
    check_gradient(make_layer('Eltwise', eltwise_param=dict(operation='SUM',
                                                             coeff=[1, -0.5, 2])),
                   [blob(x) for x in xs], [Blob()])


def test_eltwise_max_forward_gradient_and_ties():
    # values 0.01 apart, so no finite-difference step crosses a tie
    vals = np.random.RandomState(5).permutation(72).astype(np.float32) * 0.01
    xs = list(vals.reshape(3, 2, 3, 4))
    top, = run(make_layer('Eltwise', eltwise_param=dict(operation='MAX')),
               [blob(x) for x in xs])
    np.testing.assert_array_equal(top.data, np.maximum(np.maximum(xs[0], xs[1]), xs[2]))
    check_gradient(make_layer('Eltwise', eltwise_param=dict(operation='MAX')),
                   [blob(x) for x in xs], [Blob()], step=1e-3)
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom must be strictly greater.
    a = np.ones((1, 3), np.float32)
    layer = make_layer('Eltwise', eltwise_param=dict(operation='MAX'))
    bots = [blob(a), blob(a), blob(a)]
    top, = run(layer, bots)
    top.diff[...] = 1
    layer.backward([top], [True, True, True], bots)
    assert (bots[0].diff == 0).all() and (bots[1].diff == 1).all() and (bots[2].diff == 0).all()


def test_eltwise_errors():
    with pytest.raises(LayerError, match='one coefficient per bottom'):
        run(make_layer('Eltwise', eltwise_param=dict(coeff=[1])), [blob(rand(2)), blob(rand(2))])
    with pytest.raises(LayerError, match='only takes coefficients for summation'):
        run(make_layer('Eltwise', eltwise_param=dict(operation='PROD', coeff=[1, 1])),
            [blob(rand(2)), blob(rand(2))])


# ----------------------------------------------------------------------------- Filter
def test_filter_forward_and_gradient():
    x, y = rand(5, 2, 3, seed=1), rand(5, 4, seed=2)
    sel = np.array([1, 0, 1, 1, 0], dtype=np.float32).reshape(5, 1)
    layer = make_layer('Filter')
    bots = [blob(x), blob(y), blob(sel)]
    tops = [Blob(), Blob()]
    layer.setup(bots, tops)
    assert tops[0].shape == (5, 2, 3)  # Caffe's first reshape keeps all items
    layer.forward(bots, tops)
    keep = [0, 2, 3]
    np.testing.assert_array_equal(tops[0].data, x[keep])
    np.testing.assert_array_equal(tops[1].data, y[keep])
    tops[0].diff[...] = 1
    tops[1].diff[...] = 2
    layer.backward(tops, [True, True, False], bots)
    np.testing.assert_array_equal(bots[0].diff[:, 0, 0], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(bots[1].diff[:, 0], [2, 0, 2, 2, 0])
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(0)


# -------------------------------------------------------------------------- Parameter
def test_parameter_layer_exposes_its_blob():
    layer = make_layer('Parameter', parameter_param=dict(shape=dict(dim=[2, 3])))
    top, = run(layer, [])
    assert top.shape == (2, 3) and layer.blobs[0].shape == (2, 3)
    layer.blobs[0].data[...] = 7
    layer.forward([], [top])
    assert (top.data == 7).all()
    top.diff[...] = 2          # consumers write the top diff = the param diff
    assert (layer.blobs[0].diff == 2).all()


# -------------------------------------------------------------------------- Reduction
@pytest.mark.parametrize('op', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
@pytest.mark.parametrize('axis', [0, 1, 2])
def test_reduction(op, axis):
    x = rand(2, 3, 4)
    x[np.abs(x) < 0.05] = 0.3   # keep ASUM away from its kink
    coeff = 0.7
    layer = make_layer('Reduction', reduction_param=dict(operation=op, axis=axis, coeff=coeff))
    top, = run(layer, [blob(x)])
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    f = {'SUM': flat.sum(1), 'ASUM': np.abs(flat).sum(1), 'SUMSQ': (flat ** 2).sum(1),
         'MEAN': flat.mean(1)}[op] * coeff
    assert top.shape == x.shape[:axis]
    np.testing.assert_allclose(top.data.ravel(), f, rtol=1e-5)
    check_gradient(make_layer('Reduction', reduction_param=dict(operation=op, axis=axis,
                                                                 coeff=coeff)),
                   [blob(x)], [Blob()], step=1e-3)


# ---------------------------------------------------------------------------- Silence
def test_silence():
    layer = make_layer('Silence')
    bot = blob(rand(2, 3))
    bot.diff[...] = 5
    run(layer, [bot], ntop=0)
    layer.backward([], [True], [bot])
    assert (bot.diff == 0).all()


# ----------------------------------------------------------------------------- ArgMax
def test_argmax_default_and_top_k_and_max_val():
    x = rand(3, 2, 5)
    flat = x.reshape(3, -1)
    top, = run(make_layer('ArgMax'), [blob(x)])
    assert top.shape == (3, 1, 1)
    np.testing.assert_array_equal(top.data.ravel(), flat.argmax(1))
    top, = run(make_layer('ArgMax', argmax_param=dict(top_k=3, out_max_val=True)), [blob(x)])
    assert top.shape == (3, 2, 3)
    order = np.argsort(-flat, axis=1)[:, :3]
    np.testing.assert_array_equal(top.data[:, 0, :], order)
    np.testing.assert_allclose(top.data[:, 1, :], np.take_along_axis(flat, order, 1))


def test_argmax_axis_and_ties():
    x = rand(2, 4, 3)
    top, = run(make_layer('ArgMax', argmax_param=dict(axis=1, top_k=2)), [blob(x)])
    assert top.shape == (2, 2, 3)
    np.testing.assert_array_equal(top.data, np.argsort(-x, axis=1)[:, :2, :])
    top, = run(make_layer('ArgMax', argmax_param=dict(axis=1, out_max_val=True)), [blob(x)])
    np.testing.assert_allclose(top.data[:, 0, :], x.max(1))
    # ties: std::greater on (value, index) pairs -> the higher index first
    t = np.array([[1, 3, 3, 0]], dtype=np.float32)
    top, = run(make_layer('ArgMax', argmax_param=dict(top_k=2)), [blob(t)])
    np.testing.assert_array_equal(top.data.ravel(), [2, 1])
    with pytest.raises(LayerError, match='top_k'):
        run(make_layer('ArgMax', argmax_param=dict(top_k=5)), [blob(t)])


# ------------------------------------------------------------------------------- Tile
@pytest.mark.parametrize('axis', [0, 1, -1])
def test_tile(axis):
    x = rand(2, 3, 2)
    top, = run(make_layer('Tile', tile_param=dict(axis=axis, tiles=3)), [blob(x)])
    reps = [1, 1, 1]
    reps[axis] = 3
    np.testing.assert_array_equal(top.data, np.tile(x, reps))
    check_gradient(make_layer('Tile', tile_param=dict(axis=axis, tiles=3)), [blob(x)],
                   [Blob()])


# ---------------------------------------------------------------------------- Softmax
@pytest.mark.parametrize('axis', [1, 2, -1])
def test_softmax(axis):
    x = rand(2, 3, 4) * 5
    top, = run(make_layer('Softmax', softmax_param=dict(axis=axis)), [blob(x)])
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(top.data, e / e.sum(axis=axis, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    check_gradient(make_layer('Softmax', softmax_param=dict(axis=axis)), [blob(x)], [Blob()])


def test_softmax_in_place():
    x = rand(2, 5) * 3
    b = blob(x)
    layer = make_layer('Softmax')
    layer.setup([b], [b])
    layer.forward([b], [b])
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(b.data, e / e.sum(1, keepdims=True), rtol=1e-5)
    # in-place backward: dx = (dy - sum(dy*y)) * y computed from the top diff
    y = b.data.copy()
    dy = rand(2, 5, seed=3)
    b.diff[...] = dy
    layer.backward([b], [True], [b])
    np.testing.assert_allclose(b.diff, (dy - (dy * y).sum(1, keepdims=True)) * y, rtol=1e-5,
                               atol=1e-7)
