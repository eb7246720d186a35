"""μL2Q / Quantization-caffe compression (compression.md section 1): quantizers against
hand-computed values and edge cases, hooks (fake quantization, STE gradients, activations),
save -> load -> identical outputs, integer export, report, NetSpec keywords."""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.compress import export
from qcaffe.compress import quantizers as Q
from qcaffe.compress.export import ExportError, integer_codes
from qcaffe.compress.rounding import floor_half_up, mean_std, round_away
from qcaffe.layers.base import LayerError
from qcaffe.proto import caffe_pb2
from qcaffe.testing import make_layer

F = np.float32
LAM2 = 0.99529008541347519
LAM1 = 1.5950161625215948


def run(fn, x, k):
    x = np.asarray(x, dtype=F)
    out = np.full_like(x, np.nan)
    st = fn(x, k, out)
    return out, st


# ------------------------------------------------------------------- rounding
def test_round_away_ties_and_float32_edge():
    x = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 3.2, -3.7], F)
    assert round_away(x).tolist() == [1, -1, 2, 3, -3, 0, 0, 3, -4]
    # the naive float32 floor(x + 0.5) gets 0.49999997 wrong: it is why rounding.py exists
    assert np.floor(F(0.49999997) + F(0.5)) == 1
    assert floor_half_up(np.array([-0.5, 0.5, 0.49999997, -1.5], F)).tolist() == [0, 1, 0, -1]
    assert round_away(x).dtype == F


def test_mean_std_is_the_forks_float32_mean_and_never_nan():
    x = np.full(1000, 0.1, F)          # E[x²] − μ² is slightly negative in float32
    mu, sigma = mean_std(x)
    assert 0.0 <= sigma < 1e-7
    total = F(0)
    for v in x:                        # QC caffe_cpu_meanstd: float total; total += X[i]
        total = F(total + v)
    assert mu == float(total / F(x.size)) and abs(mu - 0.1) < 2e-6
    w = np.random.RandomState(0).randn(3000).astype(F) * F(0.05)
    assert mean_std(w)[1] == pytest.approx(float(w.astype(np.float64).std()), rel=1e-6)


def test_sequential_sum_carries_across_chunks():
    from qcaffe.compress.rounding import sequential_sum_f32
    v = np.random.RandomState(1).randn(1001).astype(F) * F(100)
    total = F(0)
    for x in v:
        total = F(total + x)
    for chunk in (1, 7, 1000, 1 << 20):
        assert sequential_sum_f32(v, chunk) == total
    assert sequential_sum_f32(v[:0]) == 0


# ------------------------------------------------------------------------ ULQ
def test_ulq_2bit_hand_computed():
    w = [-1.0, 0.0, 1.0, 2.0]
    mu, sigma = 0.5, np.sqrt(1.25)
    a = F(LAM2 * sigma + 1e-7)
    q, st = run(Q.ulq, w, 2)
    # phi = (w-mu)/a + 0.5 = [-0.85, 0.05, 0.95, 1.85] -> n = [-1, 0, 1, 2]
    expect = np.array([-1.5, -0.5, 0.5, 1.5]) * a + mu
    np.testing.assert_allclose(q, expect, rtol=1e-6)
    assert st.alpha == pytest.approx(float(a)) and st.delta == pytest.approx(mu)
    assert (st.fixedpos, st.maxbits) == (0, 2)


def test_ulq_1bit_is_binary_around_mean():
    w = [-1.0, 0.0, 1.0, 2.0]
    a = F(LAM1 * np.sqrt(1.25) + 1e-7)
    q, st = run(Q.ulq, w, 1)
    # phi = [-0.34, 0.22, 0.78, 1.34] clipped to [0, 1] -> n = [0, 0, 1, 1]
    np.testing.assert_allclose(q, np.array([-0.5, -0.5, 0.5, 0.5]) * a + 0.5, rtol=1e-6)


@pytest.mark.parametrize('k', range(1, 9))
def test_ulq_levels_symmetric_and_codes_exact(k):
    w = np.random.RandomState(k).randn(4000).astype(F) * 0.05 + 0.01
    q, st = run(Q.ulq, w, k)
    levels = np.unique(q)
    assert len(levels) <= 2 ** k
    codes, scale, offset = integer_codes('ULQ', q, st)
    assert codes.min() >= 1 - 2 ** (k - 1) and codes.max() <= 2 ** (k - 1)
    np.testing.assert_allclose(codes * scale + offset, q, atol=1e-6)
    if k <= 4:   # all 2^k levels beta ± (j − ½)·alpha are used, symmetric around beta
        assert len(levels) == 2 ** k
        centred = levels.astype(np.float64) - st.delta
        np.testing.assert_allclose(centred, -centred[::-1], atol=1e-6)
        np.testing.assert_allclose(centred[-1], (2 ** (k - 1) - 0.5) * st.alpha, rtol=1e-5)


def test_ulq_large_k_keeps_the_forks_sigma_squared_step():
    w = np.random.RandomState(0).randn(500).astype(F) * 0.05
    _, sigma = mean_std(w)
    _, st = run(Q.ulq, w, 16)
    assert st.alpha == pytest.approx(6.2 * sigma * sigma / (2 ** 16 - 1) + 1e-7, rel=1e-5)
    assert Q.ulq_step(sigma, 16, large_k_compat=False) == pytest.approx(
        6.2 * sigma / (2 ** 16 - 1) + 1e-7, rel=1e-5)


def test_ulq_edge_cases():
    q, st = run(Q.ulq, np.zeros(6), 2)        # all-zero bias: finite, tiny
    assert np.isfinite(q).all() and np.abs(q).max() <= 1e-7 and st.alpha == pytest.approx(1e-7)
    q, st = run(Q.ulq, np.full(5, 0.3), 4)    # single value: stays that value
    np.testing.assert_allclose(q, 0.3, atol=1e-6)
    integer_codes('ULQ', q, st)
    q, st = run(Q.ulq, [-3.0, -2.0, -1.0], 2)  # all negative
    assert (q < 0).all()
    out = np.full(3, 7.0, F)                   # maxbits <= 0: untouched (the fork returns)
    assert Q.ulq(np.ones(3, F), 0, out) is None and (out == 7).all()


# -------------------------------------------------------------------- Ternary
W_T = [0.9, -0.5, 0.1, -0.05, 0.0, 0.6]


def test_ternary_hand_computed():
    q, st = run(Q.ternary, W_T, 8)
    delta = 0.7 * 2.15 / 6
    alpha = (0.9 + 0.5 + 0.6) / 3
    np.testing.assert_allclose(q, np.array([1, -1, 0, 0, 0, 1]) * alpha, rtol=1e-6)
    assert st.delta == pytest.approx(delta, rel=1e-6) and st.alpha == pytest.approx(alpha)


@pytest.mark.parametrize('k,alpha,fp', [(4, 0.625, -3), (2, 0.5, -1), (1, 0.0, 0),
                                         (8, 85 / 128.0, -7)])
def test_ternary_quantize_fixed_point_alpha(k, alpha, fp):
    # alpha = 2/3: fp = floor(log2 α) − (k−2); a = round_away(α/2^fp) within ±(2^(k−1)−1)
    q, st = run(Q.ternary_quantize, W_T, k)
    assert st.alpha == pytest.approx(alpha) and st.fixedpos == (fp if alpha else st.fixedpos)
    np.testing.assert_allclose(q, np.array([1, -1, 0, 0, 0, 1]) * alpha, rtol=1e-6)
    codes, _, _ = integer_codes('Ternary_Quantize', q, st)
    assert set(codes.tolist()) <= {-1, 0, 1}
    if alpha:
        assert float(st.alpha / 2.0 ** st.fixedpos).is_integer()   # integer α for hardware


def test_ternary_all_zero():
    for fn in (Q.ternary, Q.ternary_quantize):
        q, st = run(fn, np.zeros(4), 4)
        assert (q == 0).all() and st.alpha == 0 and st.fixedpos == 0


# ------------------------------------------------------------------- Quantize
def test_quantize_hand_computed():
    q, st = run(Q.quantize, [0.9, -0.5, 0.1, -0.05, 0.0625, -0.0625], 4)
    # max 0.9: fp = floor(log2 .9) − 2 = −3, step 1/8; 0.0625/0.125 = 0.5 ties away
    np.testing.assert_array_equal(q, np.array([7, -4, 1, 0, 1, -1]) / 8.0)
    assert st.fixedpos == -3 and st.alpha == 0 and st.delta == 0   # QC leaves alpha, delta


def test_quantize_saturates_and_edge_cases():
    q, st = run(Q.quantize, [0.99, -0.99], 3)     # 3.96 -> 4 -> saturates to 3
    np.testing.assert_array_equal(q, [0.75, -0.75])
    q, st = run(Q.quantize, np.zeros(3), 4)
    assert (q == 0).all() and st.fixedpos == 0
    q, st = run(Q.quantize, [0.3, -0.2], 1)       # 1 bit: ±(2^0 − 1) = 0
    assert (q == 0).all()


# ----------------------------------------------------------------------- Clip
def test_clip_is_8_bit_whatever_maxbits_says():
    """QC's Clip always uses 127 levels per sign (compression.md 0.9); maxbits is stored."""
    x = [-2.0, 1.0, 0.5, 0.25]
    for k in (1, 2, 3, 8):
        q, st = run(Q.clip, x, k)
        # s = 127/2; x·s = [-127, 63.5, 31.75, 15.875] -> [-127, 64, 32, 16]; alpha = 2/127
        np.testing.assert_allclose(q, np.array([-127, 64, 32, 16]) * (2 / 127.0), rtol=1e-6)
        assert st.alpha == pytest.approx(2 / 127.0) and st.maxbits == k


def test_clip_to_maxbits_opt_in_hand_computed():
    q, st = run(lambda x, k, out: Q.clip(x, k, out, to_maxbits=True), [-2.0, 1.0, 0.5, 0.25], 3)
    # s = 3/2; x·s = [-3, 1.5, .75, .375] -> [-3, 2, 1, 0]; alpha = 2/3
    np.testing.assert_allclose(q, np.array([-3, 2, 1, 0]) * (2 / 3.0), rtol=1e-6)
    assert st.alpha == pytest.approx(2 / 3.0) and st.maxbits == 3


def test_clip_zero_and_one_bit():
    q, st = run(Q.clip, np.zeros(3), 8)
    assert (q == 0).all() and st.alpha == 0
    out = np.empty(2, F)
    st = Q.clip(np.array([1.0, -2.0], F), 1, out, to_maxbits=True)    # 1 bit: 0 levels
    assert (out == 0).all() and st.alpha == 0


@pytest.mark.parametrize('method,exact_clip', [(m, False) for m in Q.WEIGHT_METHODS]
                         + [('Clip', True)])      # Clip with qcaffe's clip_to_maxbits
@pytest.mark.parametrize('k', range(1, 9))
def test_every_method_and_width_gives_exact_codes(method, exact_clip, k):
    w = np.random.RandomState(10 * k).randn(3000).astype(F) * 0.1
    param = caffe_pb2.CompressParameter(maxbits=k, clip_to_maxbits=exact_clip)
    q = np.empty_like(w)
    st = Q.apply(method, w, param, q)
    assert np.isfinite(q).all()
    bits = Q.grid_bits(method, param)
    assert bits == (8 if method == 'Clip' and not exact_clip else k)
    codes, scale, offset = integer_codes(method, q, st, bits=bits)
    lo, hi = Q.METHODS[method].code_range(bits)
    assert lo <= codes.min() and codes.max() <= hi
    assert len(np.unique(q)) <= hi - lo + 1
    np.testing.assert_allclose(codes * scale + offset, q, atol=1e-6)


def test_export_rejects_values_off_grid():
    q, st = run(Q.ulq, np.random.RandomState(0).randn(50), 2)
    q[3] += st.alpha * 0.3
    with pytest.raises(ExportError, match='integer grid'):
        integer_codes('ULQ', q, st)


# ---------------------------------------------------------------- layer hooks
def ip_layer(phase='TRAIN', **compress):
    return make_layer('InnerProduct', phase=phase, name='ip',
                      inner_product_param=dict(num_output=5,
                                               weight_filler=dict(type='gaussian', std=0.3),
                                               bias_filler=dict(type='gaussian', std=0.1)),
                      **compress)


def setup_pair(**compress):
    """A compressed IP layer and a plain one whose weights are the first one's Q(W)."""
    rs = np.random.RandomState(3)
    x = Blob(4, 6)
    x.data[...] = rs.randn(4, 6)
    comp, plain = ip_layer(**compress), ip_layer()
    tc, tp = Blob(), Blob()
    comp.setup([x], [tc])
    plain.setup([x], [tp])
    return x, comp, plain, tc, tp


def test_weight_hook_forward_and_straight_through_backward():
    x, comp, plain, tc, tp = setup_pair(weights_compress=['ULQ', 'Ternary_Quantize'],
                                        weights_compress_param=[{'maxbits': 2}, {'maxbits': 4}])
    w_fp = [b.data.copy() for b in comp.blobs]
    comp.forward([x], [tc])
    for i in range(2):
        ref = np.empty_like(w_fp[i])
        Q.METHODS[comp.weights_compress[i]].fn(w_fp[i], [2, 4][i], ref)
        np.testing.assert_array_equal(comp.blobs[i].quantize, ref)
        plain.blobs[i].data[...] = ref
    plain.forward([x], [tp])
    np.testing.assert_allclose(tc.data, tp.data, rtol=1e-6)
    assert len(np.unique(comp.blobs[0].quantize)) <= 4
    g = np.random.RandomState(4).randn(*tc.shape).astype(F)
    for layer, top in ((comp, tc), (plain, tp)):
        top.diff[...] = g
        for b in layer.blobs:
            b.diff[...] = 1.0               # param diffs accumulate (Caffe)
        layer.backward([top], [True], [x])
        if layer is comp:
            dx_c = x.diff.copy()
    np.testing.assert_allclose(dx_c, x.diff, rtol=1e-5)   # bottom diff computed with Q(W)
    for bc, bp, w in zip(comp.blobs, plain.blobs, w_fp):
        np.testing.assert_allclose(bc.diff, bp.diff, rtol=1e-5)   # ∂L/∂Q(W) reaches W
        np.testing.assert_array_equal(bc.data, w)                 # FP weights untouched
    # the layer param carries the learned scalars (saved with the model)
    p = comp.weights_compress_param
    assert p[0].alpha == pytest.approx(comp.blobs[0].compress_state.alpha)
    assert p[1].fixedpos == comp.blobs[1].compress_state.fixedpos and p[1].maxbits == 4


def test_set_maxbits_takes_effect_next_forward():
    x, comp, _, tc, _ = setup_pair(weights_compress=['ULQ'],
                                   weights_compress_param=[{'maxbits': 1}])
    comp.forward([x], [tc])
    assert len(np.unique(comp.blobs[0].quantize)) == 2
    comp.weights_compress_param[0].set_maxbits(3)
    comp.forward([x], [tc])
    assert 2 < len(np.unique(comp.blobs[0].quantize)) <= 8
    assert comp.layer_param.weights_compress_param[0].maxbits == 3
    assert comp.blobs[1].quantize is None       # uncompressed blob: no quantize (1(g).11)


def test_missing_param_entry_defaults_to_8_bits():
    x, comp, _, tc, _ = setup_pair(weights_compress=['Quantize'])
    comp.forward([x], [tc])
    assert comp.weights_compress_param[0].maxbits == 8
    assert len(np.unique(comp.blobs[0].quantize)) > 4


@pytest.mark.parametrize('exact', [False, True])
def test_activation_clip_in_place_with_straight_through_gradient(exact, qlog):
    param = {'maxbits': 3, 'clip_to_maxbits': True} if exact else {'maxbits': 3}
    x, comp, plain, tc, tp = setup_pair(activations_compress=['Clip'],
                                        activations_compress_param=[param])
    warned = [m for m in qlog.warnings() if 'Clip' in m]
    if exact:
        assert not warned
    else:   # one warning for the layer, saying what happens and how to get k bits
        assert len(warned) == 1 and "Layer ip" in warned[0]
        assert 'activations_compress_param[0] maxbits 3' in warned[0]
        assert '8 bits' in warned[0] and 'clip_to_maxbits: true' in warned[0]
    for b, c in zip(plain.blobs, comp.blobs):
        b.data[...] = c.data
    comp.forward([x], [tc])
    plain.forward([x], [tp])
    out = np.empty_like(tp.data)
    st = Q.clip(tp.data, 3, out, to_maxbits=exact)
    np.testing.assert_array_equal(tc.data, out)
    levels = 3 if exact else 127
    assert len(np.unique(tc.data)) <= 2 * levels + 1
    p = comp.activations_compress_param[0]
    assert p.alpha == pytest.approx(st.alpha) and p.maxbits == 3   # stored as given
    assert p.clip_to_maxbits == exact
    codes = export.activation_codes(comp, 0, tc.data)[0]   # Clip integer = activation / alpha
    assert np.abs(codes).max() == levels
    g = np.ones(tc.shape, F)
    tc.diff[...] = g
    tp.diff[...] = g
    comp.backward([tc], [True], [x])
    dx = x.diff.copy()
    plain.backward([tp], [True], [x])
    np.testing.assert_allclose(dx, x.diff, rtol=1e-6)


def test_clip_warning_once_per_layer_and_not_for_8_bits(qlog):
    ip_layer(weights_compress=['Clip', 'Clip'],
             weights_compress_param=[{'maxbits': 2}, {'maxbits': 4}],
             activations_compress=['Clip'], activations_compress_param=[{'maxbits': 2}])
    warned = [m for m in qlog.warnings() if 'Clip' in m]
    assert len(warned) == 1
    for entry in ('weights_compress_param[0] maxbits 2', 'weights_compress_param[1] maxbits 4',
                  'activations_compress_param[0] maxbits 2'):
        assert entry in warned[0]
    del qlog.records[:]
    ip_layer(weights_compress=['Clip', 'ULQ'],
             weights_compress_param=[{'maxbits': 8}, {'maxbits': 2}],
             activations_compress=['Clip'])          # 8 bits, 0 = 8, ULQ: nothing to say
    assert not [m for m in qlog.warnings() if 'Clip' in m]


def test_activation_ulq_rejected_with_choices():
    with pytest.raises(LayerError) as e:
        ip_layer(activations_compress=['ULQ'])
    msg = str(e.value)
    assert "'ip'" in msg and 'activations_compress[0]' in msg and 'Clip' in msg
    assert 'Valid choices' in msg


@pytest.mark.parametrize('methods,pattern', [([''], 'empty method name'),
                                              (['ULQ2'], "unknown method 'ULQ2'")])
def test_bad_weight_method_rejected(methods, pattern):
    with pytest.raises(LayerError, match=pattern) as e:
        ip_layer(weights_compress=methods)
    assert 'Ternary_Quantize' in str(e.value)


def test_more_methods_than_blobs_is_a_clear_error():
    layer = make_layer('InnerProduct', phase='TRAIN', name='nobias',
                       inner_product_param=dict(num_output=2, bias_term=False),
                       weights_compress=['ULQ', 'ULQ'])
    x, t = Blob(2, 3), Blob()
    layer.setup([x], [t])
    with pytest.raises(LayerError, match="'nobias'.*2 entries.*1 learnable"):
        layer.forward([x], [t])


def test_negative_maxbits_rejected():
    with pytest.raises(LayerError, match='maxbits'):
        ip_layer(weights_compress=['ULQ'], weights_compress_param=[{'maxbits': -1}])


def test_cupy_twin_equality():
    from qcaffe import backend
    if not backend.gpu_available():
        pytest.skip('no GPU / cupy')
    cp = backend.cupy_module()
    w = np.random.RandomState(0).randn(5000).astype(F) * 0.1
    for name, m in Q.METHODS.items():
        for k in (1, 2, 4, 8):
            a, sa = run(m.fn, w, k)
            out = cp.empty(w.shape, F)
            sb = m.fn(cp.asarray(w), k, out)
            np.testing.assert_allclose(cp.asnumpy(out), a, rtol=1e-6, atol=1e-7,
                                       err_msg='%s %d' % (name, k))
            assert sa.fixedpos == sb.fixedpos
            assert sa.alpha == pytest.approx(sb.alpha, rel=1e-6)


def test_ul_compat_switches():
    from qcaffe import backend
    w = np.array([0.9, -0.5, 0.1, -0.05], F)
    try:
        Q.set_options(quantize_variant='ul')
        backend.set_random_seed(5)
        a, st = run(Q.quantize, w, 4)
        backend.set_random_seed(5)
        b, _ = run(Q.quantize, w, 4)
        np.testing.assert_array_equal(a, b)            # seeded stochastic rounding
        assert st.fixedpos == -4                       # floor(log2 .9) − (k − 1)
        assert set(np.round(a * 16).tolist()) <= {14, 15, -8, -9, 1, 2, -1, 0, -0}
        codes, _, _ = integer_codes('Quantize', a, st)
        assert np.abs(codes).max() <= 15
        Q.set_options(ulq_large_k_compat=False)
        _, st = run(Q.ulq, np.random.RandomState(0).randn(100) * 0.05, 12)
        _, sigma = mean_std(np.random.RandomState(0).randn(100).astype(F) * F(0.05))
        assert st.alpha == pytest.approx(6.2 * sigma / (2 ** 12 - 1) + 1e-7, rel=1e-4)
        with pytest.raises(ValueError, match="valid values: 'qc', 'ul'"):
            Q.set_options(quantize_variant='stochastic')
    finally:
        Q.set_options(quantize_variant='qc', ulq_large_k_compat=True)
