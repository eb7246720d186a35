"""The μL2Q / Quantization-caffe quantizers as pure functions (numpy and cupy alike).

Caffe equivalent: ``Blob::ulq_weights``, ``ternarize_data``, ``quantize_data``, ``clip_data``
of Quantization-caffe (QC, src/caffe/blob.cpp) with the kernels ``caffe_cpu_ulq``,
``caffe_cpu_ternary``, ``caffe_cpu_quantizea``, ``caffe_cpu_quantizec``
(src/caffe/util/math_functions.cpp/.cu); spec: compression.md 1(b) and the fixes of 1(g).

Every quantizer has the signature ``fn(x, maxbits, out) -> QuantState``: it reads ``x``
(float32, any shape), writes the dequantized ("fake-quantized") values into ``out`` (which may
be ``x`` itself, as for activations, quantized in place) and returns the blob state the fork
keeps next to the buffer (``alpha``, ``delta``, ``fixedpos``, ``maxbits``).  Statistics are
taken in float64, element-wise math is float32 as in the fork; ties round half away from zero.

``METHODS`` describes, per method name, how to recover the integer code from the dequantized
values and the state (the QC README recipe) and the code range, for export and reports.
"""
import collections
import math

import numpy as np

from .. import backend
from ..backend import get_array_module, to_host
from .rounding import mean_std, round_away, round_away_scalar, sequential_sum_f32

# λ_k of the released code (index k-1); compression.md 1(b).1 -- not the paper's table.
ULQ_LAMBDA = (1.5950161625215948, 0.99529008541347519, 0.5872211503939504,
              0.3358904980253396, 0.18944224088629152, 0.10570877041455067,
              0.057082736023857356, 0.030482181036739827)
ULQ_EPS = 1e-7          # added to the step (UL/QC), keeps all-zero blobs finite
TERNARY_DELTA_RATIO = 0.7
QC_CLIP_BITS = 8        # QC's Clip: a local max_bits = 8 in Blob::clip_data, whatever maxbits says

# Compatibility switches (compression.md 0.4 / 1(g)): QC semantics unless asked otherwise.
OPTIONS = {
    # ULQ k > 8: the fork's α = 6.2σ²/(2^k−1) (True) or the paper's 6.2σ/(2^k−1) (False)
    'ulq_large_k_compat': True,
    # Quantize: 'qc' (deterministic, ±(2^(k−1)−1)) or 'ul' (uL2Q/QT: stochastic rounding from
    # the seeded qcaffe RNG, fp = floor(log2 max) − (k−1), ±(2^k−1))
    'quantize_variant': 'qc',
}


def set_options(**options):
    """Switch to the older uL2Q behaviours, e.g. ``set_options(quantize_variant='ul')``."""
    valid = {'ulq_large_k_compat': (True, False), 'quantize_variant': ('qc', 'ul')}
    for key, value in options.items():
        if key not in valid:
            raise ValueError('unknown compression option %r; valid: %s'
                             % (key, ', '.join(sorted(valid))))
        if value not in valid[key]:
            raise ValueError('compression option %s=%r; valid values: %s'
                             % (key, value, ', '.join(map(repr, valid[key]))))
        OPTIONS[key] = value


class QuantState(collections.namedtuple('QuantState', 'alpha delta fixedpos maxbits')):
    """Per-blob scalars of the fork (BlobProto fields 13, 12, 16, 17)."""
    __slots__ = ()


def ulq_step(sigma, maxbits, large_k_compat=True):
    """The μL2Q step α for bit width ``maxbits`` and standard deviation ``sigma``.

    In the fork's float32 arithmetic (``Blob::ulq_weights``): λ_k as float32, λ_k·σ in
    float32, + 1e-7 in double, stored as float32.  k > 8: the fork computes
    λ = 6.2σ/(2^k−1) and then α = λσ (σ twice, 1(g).1); kept by default for fidelity,
    ``large_k_compat=False`` gives the paper's α = 6.2σ/(2^k−1).
    """
    k = int(maxbits)
    sigma = np.float32(sigma)
    if k <= len(ULQ_LAMBDA):
        lam = np.float32(ULQ_LAMBDA[k - 1])
    else:
        lam = np.float32(2 * 3.1 * float(sigma) / (2.0 ** k - 1))
        if not large_k_compat:
            return float(np.float32(float(lam) + ULQ_EPS))
    return float(np.float32(float(lam * sigma) + ULQ_EPS))


def ulq(x, maxbits, out=None, large_k_compat=None):
    """μL2Q (``ULQ``): 2^k levels β ± (j − ½)α, j = 1…2^(k−1), α = λ_k σ + 1e-7, β = μ.

    n = round_away(clip((w − β)/α + ½, 1 − 2^(k−1), 2^(k−1))), w_q = (n − ½)α + β.  As in
    the fork (``caffe_cpu_ulq``) the division is a float32 multiplication by 1/α and the
    restore ``(n − ½)/(1/α) + β`` is computed in double and stored as float32, so the result
    matches the fork's CPU build bit for bit when α does.
    k ≤ 0 leaves ``out`` untouched and returns None (the fork's early return).
    """
    k = int(maxbits)
    if k <= 0:
        return None
    xp = get_array_module(x)
    out = x if out is None else out
    mu, sigma = mean_std(x)
    if large_k_compat is None:
        large_k_compat = OPTIONS['ulq_large_k_compat']
    alpha = ulq_step(sigma, k, large_k_compat)
    beta = np.float32(mu)
    inv = np.float32(1.0) / np.float32(alpha)
    phi = xp.subtract(x, beta)
    phi *= inv
    phi += np.float32(0.5)
    xp.clip(phi, np.float32(1 - 2 ** (k - 1)), np.float32(2 ** (k - 1)), out=phi)
    n = round_away(phi).astype(np.float64)
    n -= 0.5
    n /= np.float64(inv)
    n += np.float64(beta)
    out[...] = n
    return QuantState(alpha, float(beta), 0, k)


def _fixed_point_alpha(alpha, maxbits):
    """QC ``Ternary_Quantize``: α on a k-bit grid, fp = floor(log2 α) − (k − 2).

    a = round_away(α / 2^fp) clamped to ±(2^(k−1) − 1); returns (a·2^fp, fp).  α ≤ 0 (all
    weights inside ±δ, or an all-zero blob) has no logarithm: α = 0, fp = 0 (1(g) fix).
    """
    if alpha <= 0:
        return 0.0, 0
    k = int(maxbits)
    fp = int(math.floor(math.log2(alpha))) - (k - 2)
    lim = 2 ** (k - 1) - 1
    a = min(max(round_away_scalar(alpha / 2.0 ** fp), -lim), lim)
    return float(np.float32(a * 2.0 ** fp)), fp


def _ternary(x, maxbits, out, fixed_point):
    xp = get_array_module(x)
    out = x if out is None else out
    ax = xp.abs(x)
    delta = float(ax.mean(dtype=np.float64)) * TERNARY_DELTA_RATIO if x.size else 0.0
    delta = float(np.float32(min(max(delta, -100.0), 100.0)))
    nz = ax > np.float32(delta)     # |w| > δ  <=>  w > δ or w < −δ (strict, as the fork)
    t = xp.sign(x)
    t *= nz
    count = int(xp.count_nonzero(nz))
    # α = Σtw / Σt², the sum in float32 and element order as the fork's caffe_cpu_ternary
    alpha = float(sequential_sum_f32(to_host(ax[nz])) / np.float32(count)) if count else 0.0
    fixedpos = 0
    if fixed_point:
        alpha, fixedpos = _fixed_point_alpha(alpha, maxbits)
    alpha = float(np.float32(alpha))
    xp.multiply(t, np.float32(alpha), out=out)
    return QuantState(alpha, delta, fixedpos, int(maxbits))


def ternary(x, maxbits, out=None):
    """``Ternary``: δ = 0.7·mean|W|, t = sign(w)·[|w| > δ], α = mean |w| over t ≠ 0; α·t."""
    return _ternary(x, maxbits, out, fixed_point=False)


def ternary_quantize(x, maxbits, out=None):
    """``Ternary_Quantize``: ``Ternary`` with α itself a k-bit fixed-point number (QC)."""
    return _ternary(x, maxbits, out, fixed_point=True)


def abs_max(x):
    """max|x| without an |x| temporary (0 for an empty blob)."""
    if x.size == 0:
        return 0.0
    return max(float(x.max()), -float(x.min()))


def fixed_point_position(m, maxbits):
    """QC dynamic fixed point: fp = floor(log2 max|x|) − (k − 2), 0 for an all-zero blob."""
    return 0 if m <= 0 else int(math.floor(math.log2(m))) - (int(maxbits) - 2)


def quantize(x, maxbits, out=None):
    """``Quantize`` (QC, deterministic): q = round_away(x / 2^fp) saturated to ±(2^(k−1)−1).

    The result q·2^fp is written; the state carries ``fixedpos`` (integer = value / 2^fixedpos)
    and, as in QC's ``quantize_data``, alpha = delta = 0.
    """
    xp = get_array_module(x)
    out = x if out is None else out
    k = int(maxbits)
    m = abs_max(x)
    if OPTIONS['quantize_variant'] == 'ul':
        # uL2Q/QT: one more bit of range and stochastic rounding (u ~ U[-0.5, 0.5))
        fp = 0 if m <= 0 else int(math.floor(math.log2(m))) - (k - 1)
        step = np.float32(2.0 ** fp)
        lim = np.float32(2 ** k - 1)
        u = backend.rng().uniform(-0.5, 0.5, size=x.shape).astype(np.float32)
        q = round_away(x / step + backend.to_device(u))
    else:
        fp = fixed_point_position(m, k)
        step = np.float32(2.0 ** fp)
        lim = np.float32(2 ** (k - 1) - 1)
        q = round_away(x / step)
    xp.clip(q, -lim, lim, out=q)
    xp.multiply(q, step, out=out)
    return QuantState(0.0, 0.0, fp, k)


def clip_grid_bits(maxbits, to_maxbits=False):
    """Bit width of the grid ``Clip`` really uses: Quantization-caffe's 8 whatever
    ``maxbits`` says (compression.md 0.9), or ``maxbits`` with qcaffe's ``clip_to_maxbits``."""
    return int(maxbits) if to_maxbits else QC_CLIP_BITS


def clip(x, maxbits, out=None, to_maxbits=False):
    """``Clip`` (QC): s = 127/max|x|, result round_away(x·s)·α with α = 1/s (float32 as the
    fork's ``caffe_cpu_quantizec`` + ``caffe_cpu_scale``).

    Quantization-caffe's ``clip_data`` passes a local ``max_bits = 8`` to the kernel, so Clip
    has 127 levels per sign whatever ``maxbits`` says; ``maxbits`` is only stored (and saved).
    ``to_maxbits=True`` (qcaffe's ``clip_to_maxbits`` opt-in) uses s = (2^(k−1) − 1)/max|x|.
    max|x| = 0 (and k = 1 with the opt-in, where s = 0) gives zeros and α = 0 instead of
    inf/NaN (1(g).9).
    """
    xp = get_array_module(x)
    out = x if out is None else out
    k = int(maxbits)
    m = abs_max(x)
    levels = 2 ** (clip_grid_bits(k, to_maxbits) - 1) - 1
    if m == 0 or levels == 0:
        out[...] = 0
        return QuantState(0.0, 0.0, 0, k)
    s = np.float32(levels) / np.float32(m)
    alpha = np.float32(1.0) / s
    xp.multiply(round_away(x * s), alpha, out=out)
    return QuantState(float(alpha), 0.0, 0, k)


def sign_ternary(x, maxbits, out=None):
    """Activation ``Ternary`` / ``Ternary_Quantize`` (QC): t with δ = 0, i.e. sign(x)."""
    xp = get_array_module(x)
    out = x if out is None else out
    out[...] = xp.sign(x)
    return QuantState(0.0, 0.0, 0, int(maxbits))


# --------------------------------------------------------------------- integer codes
def _codes_ulq(q, st):
    return (q - st.delta) / st.alpha + 0.5


def _codes_scaled(q, st):
    return q / st.alpha if st.alpha else q * 0.0


def _codes_fixed(q, st):
    return q / (2.0 ** st.fixedpos)


def _ul_extra_bit():
    return 1 if OPTIONS['quantize_variant'] == 'ul' else 0


def _quantize_range(k):
    lim = 2 ** (k - 1 + _ul_extra_bit()) - 1
    return -lim, lim


# code_range(g) and bits(g) take the bit width g of the grid the method really produces
# (grid_bits: maxbits, except QC's Clip, which always uses 8)
Method = collections.namedtuple('Method', 'name fn codes code_range bits')

METHODS = {
    'ULQ': Method('ULQ', ulq, _codes_ulq,
                  lambda k: (1 - 2 ** (k - 1), 2 ** (k - 1)), lambda k: k),
    'Ternary': Method('Ternary', ternary, _codes_scaled, lambda k: (-1, 1), lambda k: 2),
    'Ternary_Quantize': Method('Ternary_Quantize', ternary_quantize, _codes_scaled,
                               lambda k: (-1, 1), lambda k: 2),
    'Quantize': Method('Quantize', quantize, _codes_fixed,
                       lambda k: _quantize_range(k), lambda k: k + _ul_extra_bit()),
    'Clip': Method('Clip', clip, _codes_scaled,
                   lambda k: (1 - 2 ** (k - 1), 2 ** (k - 1) - 1), lambda k: k),
}

# weights_compress[i] (QC accepts Clip on weights too)
WEIGHT_METHODS = ('Ternary', 'Ternary_Quantize', 'Quantize', 'Clip', 'ULQ')
# activations_compress[i]: QC's activation ULQ is broken (1(b).5) -> rejected
ACTIVATION_FUNCS = {'Clip': clip, 'Quantize': quantize,
                    'Ternary': sign_ternary, 'Ternary_Quantize': sign_ternary}
ACTIVATION_METHODS = tuple(ACTIVATION_FUNCS)


def effective_maxbits(maxbits):
    """``maxbits`` absent or 0 means 8 (QC)."""
    return 8 if not maxbits else int(maxbits)


def setting(method, param):
    """What decides the values ``method`` produces with a CompressParameter ``param``:
    ``(method, maxbits with 0 = 8, clip_to_maxbits for Clip)``.  Two equal settings quantize
    alike, so a stored quantize array of one serves the other (compression.md 0.10)."""
    return (method, effective_maxbits(param.maxbits),
            bool(param.clip_to_maxbits) if method == 'Clip' else False)


def grid_bits(method, param):
    """Bit width of the integer grid ``method`` produces with the settings of a
    CompressParameter ``param``: its ``maxbits`` (0 = 8), except ``Clip``, which is 8-bit
    unless ``clip_to_maxbits`` is set (QC, compression.md 0.9)."""
    k = effective_maxbits(param.maxbits)
    return clip_grid_bits(k, param.clip_to_maxbits) if method == 'Clip' else k


def apply(method, x, param, out=None, activations=False):
    """Quantize ``x`` with ``method`` and the settings of a CompressParameter ``param``
    (weights: ``METHODS``; ``activations=True``: ``ACTIVATION_FUNCS``); see each function.
    Returns the QuantState (``maxbits`` as the param gives it)."""
    k = effective_maxbits(param.maxbits)
    if method == 'Clip':
        return clip(x, k, out, to_maxbits=param.clip_to_maxbits)
    fn = ACTIVATION_FUNCS[method] if activations else METHODS[method].fn
    return fn(x, k, out)
