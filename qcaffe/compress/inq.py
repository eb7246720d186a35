"""Incremental Network Quantization (INQ) arithmetic (compression.md 2(b) "INQ").

Equivalent of the DNS/INQ fork's (NK) ``INQConvolutionLayer::ComputeQuantumRange`` and
``ShapeIntoTwoPower_cpu`` (identical in INQInnerProduct): pure functions on arrays, numpy or
cupy, used by :mod:`qcaffe.layers.inq`.

Mask semantics: 1 = free (full precision, trained), 0 = fixed (a power of two, or 0 when
pruned).  One INQ step moves the largest-magnitude free entries to the nearest power of two
until ``portion[1]`` of the layer's non-pruned entries are fixed:

* :func:`quantum_range` -- the exponents n1 (largest) and n2 = n1 − N + 1 (smallest) with
  N = ``num_quantum_values``; levels {0, ±2^n2, …, ±2^n1};
* :func:`shape_into_two_power` -- the partition and the rounding, in place;
* :func:`check_portions` -- the portion rules NK leaves to crashes (2(g)#9).

Rounding follows NK exactly: e = floor(log(4|w|/3) / log 2) in double (|w| in
[0.75·2^e, 1.5·2^e) goes to 2^e), and |w| < 0.75·2^n2 becomes 0 -- not the 0.5·2^n2 of
the paper and the original INQ code (2(g)#10).  Counts use C's ``round`` (half away from
zero) on doubles.
"""
import math

import numpy as np

from ..backend import get_array_module, to_host

# NK initialises its running maxima with INT_MIN converted to float and tests |B| <= FLT_EPSILON
_NONE = float(np.float32(-2147483648.0))
_EPS = float(np.finfo(np.float32).eps)
ALL_PRUNED = -100       # NK's "Max_power" sentinel: nothing left to quantize in this blob


class INQError(ValueError):
    """A blob that NK's CHECKs would abort on (the caller adds the layer and blob)."""


def _c_round(x):
    """C ``round`` on a double: half away from zero."""
    f = math.floor(abs(x))
    return int(math.copysign(f + (1 if abs(x) - f >= 0.5 else 0), x))


def _exponent(a):
    """NK: ``floor(log(4.0 * a / 3.0) / log(2.0))`` in double, elementwise (a > 0)."""
    xp = get_array_module(a)
    with np.errstate(divide='ignore'):
        return xp.floor(xp.log(4.0 * a.astype(xp.float64) / 3.0) / math.log(2.0))


def check_portions(portions, num_quantum_values):
    """Raise ValueError (one line, the rule and the values) unless the INQ parameters are
    usable: at least two portions, 0 <= p0 <= p1 <= 1, p0 < 1 and num_quantum_values >= 1."""
    p = [float(v) for v in portions]
    if len(p) < 2:
        raise ValueError('portion must be given at least twice (the fixed fraction before and '
                         'after this step, e.g. portion: 0.3 portion: 0.6); got %d value(s)'
                         % len(p))
    p0, p1 = p[0], p[1]
    if not 0.0 <= p0 <= p1 <= 1.0:
        raise ValueError('portions must satisfy 0 <= portion[0] <= portion[1] <= 1 (the '
                         'fraction fixed before, then after this step); got %g, %g' % (p0, p1))
    if p0 >= 1.0:
        raise ValueError('portion[0] = 1 leaves nothing to quantize (NK divides by 1 - '
                         'portion[0]); the last step is e.g. portion: 0.9 portion: 1')
    if num_quantum_values < 1:
        raise ValueError('num_quantum_values must be >= 1 (the number of powers of two per '
                         'sign, 7 in the LeNet example, 8 = 5-bit); got %d' % num_quantum_values)
    return p0, p1


def quantum_range(values, mask, num_quantum_values):
    """(n1, n2): the largest and smallest exponent of the levels (NK ComputeQuantumRange).

    n1 = floor(log2(4A/3)) with A = max |w| over free entries while nothing is fixed yet (or
    everything fixed is ~0: a DNS-pruned model); once entries are fixed, n1 = round(log2 B)
    with B = max |w| over fixed entries (a power of two).  A blob with no free entries left
    whose fixed entries are all ~0 gives ``ALL_PRUNED``.  Mask values other than 0 and 1, a
    blob whose free entries are all ~0, and free entries too large for the fixed levels raise
    :class:`INQError`, where NK logs an error or aborts.
    """
    xp = get_array_module(values)
    v = xp.abs(values.reshape(-1))
    m = mask.reshape(-1)
    free, fixed = m == 1, m == 0
    bad = int(v.size - int(xp.count_nonzero(free)) - int(xp.count_nonzero(fixed)))
    if bad:
        raise INQError('%d mask value(s) are neither 0 (fixed) nor 1 (free), e.g. %g'
                       % (bad, float(to_host(m[~(free | fixed)][:1])[0])))
    n_fixed = int(xp.count_nonzero(fixed))
    a = float(v[free].max()) if n_fixed < v.size else _NONE
    b = float(v[fixed].max()) if n_fixed else _NONE
    if abs(b) <= _EPS:                      # fixed entries are all ~0: pruned by DNS
        if a == _NONE:
            n1 = ALL_PRUNED
        elif a <= _EPS:
            raise INQError('its free entries are all ~0 (max |w| = %g): nothing to quantize; '
                           'is this a trained model?' % a)
        else:
            n1 = int(_exponent(np.float64(a)))
    elif b == _NONE:                        # nothing fixed yet: a plain trained model
        if a <= _EPS:
            raise INQError('its entries are all ~0 (max |w| = %g): nothing to quantize; is '
                           'this a trained model?' % a)
        n1 = int(_exponent(np.float64(a)))
    else:                                   # both: a later INQ step
        n1 = _c_round(math.log(b) / math.log(2.0))
        if a != _NONE:
            if a <= _EPS:
                raise INQError('its free entries are all ~0 (max |w| = %g)' % a)
            na = int(_exponent(np.float64(a)))
            if n1 < na:
                raise INQError('a free entry (|w| = %g, exponent %d) is larger than the largest '
                               'fixed level 2^%d (NK: "Hard situation"); the fixed entries '
                               'must come from the same INQ run' % (a, na, n1))
    if n1 == ALL_PRUNED:
        return n1, n1
    return n1, n1 - int(num_quantum_values) + 1


def levels(n1, n2):
    """The 2N+1 levels {0, ±2^n2 .. ±2^n1} as a sorted float32 array."""
    if n1 == ALL_PRUNED:
        return np.zeros(1, np.float32)
    pos = np.ldexp(np.float32(1), np.arange(n2, n1 + 1)).astype(np.float32)
    return np.concatenate([-pos[::-1], [np.float32(0)], pos]).astype(np.float32)


def shape_into_two_power(values, mask, portions, n1, n2):
    """One INQ step on a blob, in place (NK ShapeIntoTwoPower_cpu); returns how many entries
    it fixed.

    F free entries are taken as what is left of round(F / (1 − p0)) non-pruned ones, of which
    round(·(1 − p1)) stay free: every free entry with |w| >= the threshold (the
    sorted magnitudes at that index; ties all go) becomes sign(w)·2^e, or 0 when e < n2, and
    is fixed (mask 0).  Skipped when p1 = 0 or the blob is ``ALL_PRUNED``.
    """
    p0, p1 = float(np.float32(portions[0])), float(np.float32(portions[1]))
    if p1 == 0 or n1 == ALL_PRUNED:
        return 0
    xp = get_array_module(values)
    v = values.reshape(-1)
    m = mask.reshape(-1)
    free = m == 1
    n_free = int(xp.count_nonzero(free))
    n_init = _c_round(n_free / (1.0 - p0))
    n_keep = _c_round(n_init * (1.0 - p1))
    if n_free - n_keep <= 0:
        return 0
    t = xp.sort(xp.abs(v[free]))[n_keep]
    pick = free & (xp.abs(v) >= t)
    w = v[pick]
    e = _exponent(xp.abs(w))
    # 2^e, or +0 below the smallest level (e = -inf for w = 0; no clamp at n1 is needed:
    # n1 >= every free entry's exponent by construction, as in NK)
    q = xp.ldexp(xp.ones(e.shape, v.dtype), xp.maximum(e, n2).astype(xp.int32))
    v[pick] = xp.where(e >= n2, xp.copysign(q, w), v.dtype.type(0))
    m[pick] = 0
    return int(xp.count_nonzero(pick))
