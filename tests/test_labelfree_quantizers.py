"""Label-free compression math (qcaffe.compress.labelfree): the original's weight quantizers,
scale fitting and activation step search, against hand-computed values and the outputs of the
original code (../shared/data/lf_ref, README.txt there).

What is exact: the element-wise quantizers, Q, the chosen width and the iteration counts.
Sums of many float32 terms depend on the BLAS kernel's summation order (the original's own
code gives act/heavy's third step one ulp away from lf_ref on this machine), so alpha, the
width errors and the activation traces are compared within the float32 summation bound
gamma_n = n * 2^-24 (|fl(sum) - sum| <= gamma_n * sum for n non-negative terms, on both sides).
"""
import re

import numpy as np
import pytest

from qcaffe.compress import labelfree as lf
from shared_data import require_shared

U = 2.0 ** -24
WEIGHT_CASES = ('conv_power', 'conv_fixed', 'fc_power', 'fc_fixed', 'heavy_power', 'heavy_fixed')


@pytest.fixture(scope='module')
def ref():
    return np.load(require_shared('lf_ref', 'lf.npz'))


def assert_lines_match(ours, theirs, rtol):
    """The printed lines: same text, numbers equal within ``rtol``."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        num = r'[-+]?\d+\.?\d*(?:e[-+]?\d+)?'
        assert re.sub(num, '#', a) == re.sub(num, '#', b), (a, b)
        np.testing.assert_allclose([float(v) for v in re.findall(num, a)],
                                   [float(v) for v in re.findall(num, b)], rtol=rtol)


# ------------------------------------------------------------------- element-wise quantizers
def test_power_quantization_by_hand():
    # iw = 0, 4 bits: levels 0, ±1 ... ±64; nearest power of two with ties to the lower one,
    # <= 0.75 -> 0
    x = [0, 0.74, 0.75, 0.76, 1.0, 1.5, 1.51, 3.0, 6.0, 65, 100, 200, -0.76, -3, -1000]
    want = [0, 0, 0, 1, 1, 1, 2, 2, 4, 64, 64, 64, -1, -2, -64]
    np.testing.assert_array_equal(lf.power_quantization(x, 0, 4), want)
    # iw = 2: levels 0, ±4 ... ±256
    np.testing.assert_array_equal(lf.power_quantization([2.9, 3.1, 300, -5], 2, 2),
                                  [0, 4, 256, -4])
    # 2 bits: no exponent above 2^iw (ternary {0, ±2^iw})
    np.testing.assert_array_equal(lf.power_quantization([0.5, 0.8, 5, -9], 0, 2), [0, 1, 1, -1])


def test_fixed_point_quantization_by_hand():
    # iw = 2, fw = 6: grid 1/64 on [-2, 2 - 1/64]; exact ties round down
    s = 1 / 64
    x = [0.5 + s / 2, 0.5 + 0.75 * s, -0.5 - s / 2, 5, -5, s / 4, 0.49 * s]
    want = [0.5, 0.5 + s, -0.5 - s, 2 - s, -2, 0, 0]
    np.testing.assert_array_equal(lf.fixed_point_quantization(x, 2, 6), want)


@pytest.mark.parametrize('iw', [0, 1, 2, 3])
def test_power_quantization_replays_lf_ref(ref, iw):
    np.testing.assert_array_equal(lf.power_quantization(ref['pq/in'], iw, 4 - iw),
                                  ref['pq/iw%d/out' % iw])


@pytest.mark.parametrize('iw', range(1, 9))
def test_fixed_point_quantization_replays_lf_ref(ref, iw):
    np.testing.assert_array_equal(lf.fixed_point_quantization(ref['fx/iw%d/in' % iw], iw, 8 - iw),
                                  ref['fx/iw%d/out' % iw])


# ------------------------------------------------------------------------ scale fitting
def test_solve_by_hand_recovers_from_alpha_zero():
    # W = [3, 1], power iw = 0: alpha_init = (9 + 1)/2 = 5 quantizes both to 0, alpha = 0/1e-7
    # = 0, then W/0 = inf takes the top level 64 (the original's IEEE path), alpha =
    # 256/8192, Q = [64, 32]; 224/5120, Q = [64, 16]; 208/4352 twice: 5 updates.
    q, alpha, passes = lf.solve(np.array([[3, 1]], np.float32), 0, 4, 'power')
    np.testing.assert_array_equal(q, [[64, 16]])
    assert alpha[0, 0] == np.float32(208) / np.float32(4352)
    assert passes == 5


@pytest.mark.parametrize('qtype,best', [('power', 0), ('fixed', 7)])
def test_fit_scale_by_hand_on_equal_magnitudes(qtype, best):
    # rows of one magnitude c = 2^-5 or 2^-4: alpha_init = c^2, so w/alpha = ±1/c = ±32 or
    # ±16.  Powers of two: clamped to the top level 2^(iw+6), then alpha = c/2^(iw+6) is
    # exact, every error 0 and the first width wins (a strictly smaller error is needed to
    # move on).  Fixed point: 32 only fits below 2^(iw-1) - 2^(iw-8) from iw = 7 on; smaller
    # widths clamp it to 127/128 of a power of two, which alpha cannot undo exactly.
    w = np.array([[1, -1, 1, -1], [-2, 2, 2, 2]], np.float32) * np.float32(2 ** -5)
    fit = lf.fit_scale(w, qtype)
    assert fit.widths == (list(range(4)) if qtype == 'power' else list(range(1, 9)))
    assert fit.best_width == best
    assert fit.errors[fit.widths.index(best)] == 0 and fit.errors[:fit.widths.index(best)].all()
    np.testing.assert_array_equal(fit.q * fit.alpha[:, None], w)
    assert len(fit.lines) == len(fit.widths) + 1 and fit.lines[-1].startswith('BEST ')


def test_fit_scale_rejects_unknown_type():
    with pytest.raises(ValueError, match='power, fixed'):
        lf.fit_scale(np.ones((2, 2), np.float32), 'log')


@pytest.mark.parametrize('case', WEIGHT_CASES)
def test_fit_scale_replays_lf_ref(ref, case):
    w, qtype = ref[case + '/W'], str(ref[case + '/qtype'])
    w_before = w.copy()
    fit = lf.fit_scale(w, qtype)
    np.testing.assert_array_equal(w, w_before)           # the input is not modified
    k = w[0].size
    np.testing.assert_array_equal(fit.q, ref[case + '/Q'])
    assert fit.best_width == ref[case + '/best_width']
    assert fit.widths == list(ref[case + '/width_candidates'])
    assert fit.passes == list(ref[case + '/width_iters'])
    np.testing.assert_allclose(fit.alpha, ref[case + '/alpha'], rtol=4 * k * U, atol=0)
    np.testing.assert_allclose(fit.errors, ref[case + '/width_errors'], rtol=2 * w.size * U)
    np.testing.assert_allclose(fit.q * fit.alpha.reshape((-1,) + (1,) * (w.ndim - 1)),
                               ref[case + '/Q_times_alpha'], rtol=4 * k * U)
    assert_lines_match(fit.lines, str(ref[case + '/log']).splitlines(), rtol=2 * w.size * U)
    assert fit.alpha.shape == (w.shape[0],) and fit.alpha.dtype == np.float32
    if case + '/scale_bias' in ref:   # what the alpha Scale layer's bias gets: b * (1 - alpha)
        b = ref[case + '/bias']
        np.testing.assert_allclose(b * (np.float32(1) - fit.alpha), ref[case + '/scale_bias'],
                                   rtol=8 * k * U)


def test_fit_scale_zero_row_power(ref):
    # the original: the dead row ends with Q = +1 and alpha = 0 (NaN comparisons); qcaffe keeps
    # it at zero (compression.md errata 4(b)); the other rows are the original's
    w = ref['zero_row_power/W']
    fit = lf.fit_scale(w, 'power')
    assert list(fit.zero_rows) == [2]
    live = [0, 1, 3]
    np.testing.assert_array_equal(fit.q[live], ref['zero_row_power/Q'][live])
    assert not fit.q[2].any() and fit.alpha[2] == 0 == ref['zero_row_power/alpha'][2]
    np.testing.assert_allclose(fit.alpha, ref['zero_row_power/alpha'], rtol=4 * w[0].size * U)
    assert fit.passes == list(ref['zero_row_power/width_iters'])
    np.testing.assert_allclose(fit.errors, ref['zero_row_power/width_errors'],
                               rtol=2 * w.size * U)


def test_fit_scale_zero_row_fixed(ref):
    # the original raises (SVD did not converge) with numpy >= 1.26; qcaffe quantizes the
    # live rows and keeps the dead one at zero
    assert 'SVD did not converge' in str(ref['zero_row_fixed/error'])
    w = ref['zero_row_fixed/W']
    fit = lf.fit_scale(w, 'fixed')
    assert list(fit.zero_rows) == [2] and fit.alpha[2] == 0 and not fit.q[2].any()
    assert np.isfinite(fit.q).all() and np.isfinite(fit.errors).all()
    assert fit.errors.min() < 1e-4 * float(np.dot(w.ravel(), w.ravel()))   # 8 bits: close fit
    # the same live rows without the dead one give the same fit
    alone = lf.fit_scale(w[[0, 1, 3]], 'fixed')
    np.testing.assert_array_equal(alone.q, fit.q[[0, 1, 3]])


def test_alpha_init_is_the_row_mean_of_squares(ref):
    for case in WEIGHT_CASES:
        w = ref[case + '/W'].reshape(ref[case + '/W'].shape[0], -1)
        np.testing.assert_allclose(lf.alpha_init(w).ravel(), ref[case + '/alpha_init'],
                                   rtol=4 * w.shape[1] * U)


# --------------------------------------------------------------------- activation steps
def test_step_search_by_hand():
    # activations on the grid 0.5 * k, k = 0 ... 127: alpha0 = 63.5/127 = 0.5 reproduces them,
    # the update gives 0.5 again with loss 0: one printed iteration, step 0.5
    x = np.arange(128, dtype=np.float32) * np.float32(0.5)
    s = lf.act_step_search(x)
    assert s.step == np.float32(0.5) and s.step.dtype == np.float32
    assert s.trace == [(np.float32(0.5), np.float32(0))]
    assert s.lines() == ['iter  1  | alpha 0.5  | loss  0.0']
    # 4 bits: codes 0 ... 7
    s4 = lf.act_step_search(np.arange(8, dtype=np.float32) * np.float32(0.25), bits=4)
    assert s4.step == np.float32(0.25)


def test_step_search_stops_when_the_loss_grows():
    # drive the state machine with a loss that goes up at the second candidate: the step is
    # the previous candidate (activations_quan.py's "if loss > pre_loss: break")
    s = lf.StepSearch(12.7)                                 # alpha0 = 0.1
    s.update(10.0, 50.0)                                    # alpha1 = 0.2 (div 0.5)
    assert not s.done and s.alpha == np.float32(0.2)
    s.update(10.0, 40.0, loss=1.0)                          # loss(0.2) = 1 accepted; alpha2 = 0.25
    assert not s.done and s.alpha == np.float32(0.25)
    s.update(10.0, 40.0, loss=1.5)                          # loss(0.25) > 1: stop at 0.2
    assert s.done and s.step == np.float32(0.2)
    assert [a for a, _ in s.trace] == [np.float32(0.2), np.float32(0.25)]


def test_step_search_dead_relu_gets_step_one(ref):
    s = lf.act_step_search(ref['act/dead/x'])
    assert np.isnan(ref['act/dead/step'])                  # the original: 0/0
    assert s.dead and s.step == 1 and s.trace == []


@pytest.mark.parametrize('case', ['relu', 'heavy', 'expo'])
def test_step_search_replays_lf_ref(ref, case):
    x = ref['act/%s/x' % case]
    s = lf.act_step_search(x, name=case)
    rtol = x.size * U
    assert len(s.trace) == ref['act/%s/n_iter' % case]
    np.testing.assert_allclose([a for a, _ in s.trace], ref['act/%s/trace_alpha' % case],
                               rtol=rtol)
    np.testing.assert_allclose([l for _, l in s.trace], ref['act/%s/trace_loss' % case],
                               rtol=rtol)
    np.testing.assert_allclose(s.step, ref['act/%s/step' % case], rtol=rtol)
    assert s.step.dtype == np.float32
    assert s.alpha is not None and np.float32(x.max()) / np.float32(127) == \
        ref['act/%s/init_alpha' % case]
    log = str(ref['act/log']).splitlines()
    start = log.index('>> processing ' + case) + 1
    assert_lines_match(s.lines(), log[start:start + len(s.trace)], rtol=rtol)


def test_step_stats_do_not_depend_on_the_batches(ref):
    # the command sums over mini-batches: any split gives the same search (float64 sums)
    x = ref['act/heavy/x']
    whole = lf.act_step_search(x)
    search = lf.StepSearch(x.max())
    while not search.done:
        stats = lf.StepStats(search.alpha, search.max_code)
        for part in np.array_split(x.ravel(), 7):
            stats.add(part)
        stats.update(search)
    assert search.trace == whole.trace and search.step == whole.step


def test_power_quantization_next_to_powers_and_ties():
    # values one ulp around 2^k and around the ties 1.5 * 2^k, where a float32 log2 could
    # round across an integer: the nearest power of two (ties down) computed in float64
    k = np.arange(-20, 12, dtype=np.float32)
    centres = np.concatenate([np.float32(2) ** k, np.float32(1.5) * np.float32(2) ** k])
    x = np.concatenate([centres, np.nextafter(centres, np.float32(0)),
                        np.nextafter(centres, np.float32(np.inf))])
    x = np.concatenate([x, -x])
    for iw in range(4):
        e = np.floor(np.log2(np.abs(x.astype(np.float64))))
        nearest = np.where(np.abs(x) <= 1.5 * 2.0 ** e, 2.0 ** e, 2.0 ** (e + 1))
        want = np.sign(x) * np.where(nearest < 2.0 ** iw, 0, np.minimum(nearest, 2.0 ** (iw + 6)))
        np.testing.assert_array_equal(lf.power_quantization(x, iw, 4 - iw), want)
    # inf (a row whose alpha fell to 0) takes the top level; 0 stays 0
    np.testing.assert_array_equal(lf.power_quantization([np.inf, -np.inf, 0.0], 1, 3),
                                  [128, -128, 0])
