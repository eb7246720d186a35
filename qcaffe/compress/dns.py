"""Dynamic Network Surgery (DNS) arithmetic: statistics, threshold, surgery (compression.md 2(b)).

Equivalent of the DNS/INQ fork's (kai-xie/Neural-Network-Model-Compressing, "NK")
``DNSConvolutionLayer`` / ``DNSInnerProductLayer::Forward_cpu`` (and Guo's original
``CConvolution``): pure functions on arrays, numpy or cupy, used by
:mod:`qcaffe.layers.dns`.

* :func:`statistics` -- μ = Σ|m·w| / n and σ = sqrt((Σ m·w² − n·μ²) / n) over the weights
  *and* the bias of a layer, n = #(m·w ≠ 0), computed once per run.  NK accumulates in
  float32 one element after the other; ip1 of LeNet (400,500 values) only gets NK's masks
  bit for bit with that order (float64 sums flip 4 of its 400,000 masks, nk_ref/README.txt),
  so the sums here are sequential float32 too (``cumsum``; a parallel scan on the GPU).
* :func:`threshold` -- T = max(μ + c_rate·σ, 0), in float32 as NK.
* :func:`surgery` -- prune (m 1 → 0) where |w| ≤ alpha_low·T, splice (m 0 → 1) where
  |w| > alpha_high·T; other mask values are left alone, as in NK.
* :func:`surgery_probability` -- (1 + γ·iter)^−power, NK's chance that a training forward
  performs surgery.
"""
import numpy as np

from ..backend import get_array_module

f32 = np.float32


def _sequential_sum(v):
    """Σ v in float32, added left to right as NK's ``for`` loop does (numpy's ``sum`` adds
    pairwise, which is more accurate but not what the fork computed)."""
    xp = get_array_module(v)
    if v.size == 0:
        return f32(0)
    return f32(float(xp.cumsum(v, dtype=xp.float32)[-1]))


def statistics(pairs):
    """μ, σ (float32) and n over ``pairs`` = [(values, mask), ...] (the weights, then the bias).

    n = 0 (everything pruned or zero) gives μ = σ = 0, where NK divides by zero (2(g)#3b); a
    variance that rounding drives below zero gives σ = 0, where NK takes sqrt of a negative.
    """
    xp = get_array_module(pairs[0][0])
    absolute, squares, n = [], [], 0
    for values, mask in pairs:
        mw = xp.multiply(mask.reshape(-1), values.reshape(-1), dtype=xp.float32)
        absolute.append(xp.abs(mw))
        squares.append(mw * values.reshape(-1))        # NK: (m·w)·w in float32
        n += int(xp.count_nonzero(mw))
    if n == 0:
        return f32(0), f32(0), 0
    sum_abs = _sequential_sum(xp.concatenate(absolute))
    sum_sq = _sequential_sum(xp.concatenate(squares))
    fn = f32(n)
    mu = f32(sum_abs / fn)
    var = f32(f32(sum_sq - f32(fn * mu) * mu) / fn)
    return mu, f32(np.sqrt(max(var, f32(0)))), n


def threshold(mu, sigma, c_rate):
    """NK: ``std::max(mu_ + c_rate_ * std_, Dtype(0))`` in float32."""
    return max(f32(f32(mu) + f32(f32(c_rate) * f32(sigma))), f32(0))


def surgery(values, mask, t, alpha_low, alpha_high):
    """Prune and splice ``mask`` in place against threshold ``t``; returns (pruned, spliced)
    counts.  Pruned weights keep their values (only the mask changes), so they can return."""
    xp = get_array_module(values)
    a = xp.abs(values)
    prune = (mask == 1) & (a <= f32(f32(alpha_low) * f32(t)))
    splice = (mask == 0) & (a > f32(f32(alpha_high) * f32(t)))
    mask[prune] = 0
    mask[splice] = 1
    return int(xp.count_nonzero(prune)), int(xp.count_nonzero(splice))


def surgery_probability(gamma, power, it):
    """NK: ``pow(1 + gamma_ * iter_, -power_)`` (float32 base, C ``pow`` in double)."""
    base = f32(f32(1) + f32(f32(gamma) * f32(it)))
    with np.errstate(all='ignore'):
        return float(np.power(np.float64(base), -np.float64(f32(power))))
