"""Rounding rules of the compression forks, exact in float32, numpy/cupy generic.

Caffe forks (uL2Q / Quantization-caffe, DNS/INQ) round half away from zero:
``x > 0 ? floor(x + 0.5) : ceil(x - 0.5)`` with a *double* 0.5, i.e. exactly.  numpy's
``round``/``rint`` round half to even, and ``floor(x + 0.5)`` done in float32 is wrong for
0.49999997 (the sum rounds up to 1.0).  Splitting ``x`` into ``trunc(x)`` and its fraction is
exact in binary floating point, so the functions below decide ties on the exact fraction.
:func:`mean_std` gives the blob statistics of μL2Q in the fork's own float32 order.
"""
import numpy as np

from ..backend import get_array_module, to_host


def round_away(x):
    """Round half away from zero (Caffe forks' rounding) without float32 tie errors.

    ``rint`` (exact, half to even) differs from it only on exact ties ``|x - rint(x)| = 0.5``,
    which are rare, so only those few elements are redone: ~3 passes instead of ~8.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    shape = x.shape
    x = x.reshape(-1)                 # 0-d inputs too (ufuncs would return scalars)
    r = xp.rint(x)
    d = xp.subtract(x, r)
    xp.abs(d, out=d)
    ties = d == 0.5
    if bool(ties.any()):
        xt = x[ties]
        r[ties] = xp.trunc(xt) + xp.sign(xt)
    return r.reshape(shape)


def floor_half_up(x):
    """``floor(x + 0.5)`` computed exactly (ties toward +inf; Label-free activations)."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    f = xp.floor(x)
    return f + ((x - f) >= 0.5).astype(x.dtype)


def round_half_even(x):
    """Half to even, as ``torch.round`` (APoT); numpy/cupy ``rint``."""
    xp = get_array_module(x)
    return xp.rint(x)


def round_away_scalar(v):
    """Python-float twin of :func:`round_away` for scalars (scale factors)."""
    return float(round_away(np.float64(v)))


def dot64(a, b):
    """``a · b`` of two flat float32 arrays accumulated in float64, without float64 copies on
    the CPU (numpy's einsum casts element by element)."""
    xp = get_array_module(a)
    if xp is np:
        return float(np.einsum('i,i->', a, b, dtype=np.float64, casting='safe'))
    return float(a.astype(np.float64).dot(b.astype(np.float64)))


def sequential_sum_f32(v, chunk=1 << 20):
    """Left-to-right float32 sum of a 1-D host array, as a C loop ``float t = 0; t += x[i]``.

    ``np.add.accumulate`` adds strictly in order (``sum`` is pairwise); chunks carry the
    running total so the temporary stays small.
    """
    total = np.float32(0.0)
    buf = np.empty(min(v.size, chunk) + 1, np.float32)
    for start in range(0, v.size, chunk):
        part = v[start:start + chunk]
        m = part.size + 1
        buf[0] = total
        buf[1:m] = part
        total = np.add.accumulate(buf[:m], out=buf[:m])[-1]
    return np.float32(total)


def mean_std(x):
    """Mean and population standard deviation of a whole blob for μL2Q (QC
    ``caffe_cpu_meanstd``), the mean as the fork computes it: a float32 sum in element order
    divided by n.

    That mean is saved as ULQ's ``delta`` and shifts every level, so it is the fork's to the
    bit (a float64 mean differs by up to ~1e-5 relative on a 400,000-weight layer).  σ is
    computed in float64 as sqrt(E[x²] − E[x]²) clamped at 0: the fork's float32 version
    (BLAS ``sdot``, not reproducible in order) goes negative (NaN) or stays far from 0 for
    near-constant blobs, compression.md 1(g).8; otherwise both agree to ~1 float32 ulp.
    Returns float32 values as Python floats; arrays on the GPU are summed on the host for
    the mean, so both backends agree.
    """
    xp = get_array_module(x)
    v = xp.asarray(x).ravel()
    n = v.size
    if n == 0:
        return 0.0, 0.0
    s1 = float(v.sum(dtype=np.float64))
    s2 = dot64(v, v)
    mu = s1 / n
    var = s2 / n - mu * mu
    mean = sequential_sum_f32(np.asarray(to_host(v), dtype=np.float32)) / np.float32(n)
    return float(mean), float(np.float32(np.sqrt(max(var, 0.0))))
