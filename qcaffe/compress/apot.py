"""APoT: additive powers-of-two quantization with learned clipping thresholds, as pure functions.

Original: yhhhli/APoT_Quantization (Li, Dong, Wang, ICLR 2020), PyTorch only.  Two rule sets:

* ``CIFAR`` (default; CIFAR10/models/quant_layer.py, the code behind the CIFAR-10 numbers):
  ``weight_quantize_fn`` / ``act_quantization`` with custom backward passes;
* ``IMAGENET`` (ImageNet/models/quant_layer.py ``QuantConv2d``; MNIST/ uses the same file):
  autograd through clamps and the weight normalisation, 2-bit weights with the
  "calibrated gradient", optional ``grad_scale`` on the clipping thresholds.

Spec: compression.md section 3, §0.6 and the errata under §0 (levels scaled by the float32
reciprocal of their maximum, ties resolved in the original's ``set`` order, activations use
APoT levels at every bit width).  All element-wise work is float32 as in PyTorch; the
threshold gradients are float32 products summed in float64.  Rounding is half to even
(``torch.round``).  Every function takes numpy or cupy arrays (``get_array_module``).

Quantities (per layer): ``x`` = normalised weight / α_w or input / α_a, ``q`` = its quantized
value in those units (a level), and the layer computes with ``q · α``.
"""
import collections
import functools

import numpy as np

from ..backend import get_array_module
from ..io.errors import LayerError
from ..proto import caffe_pb2
from .rounding import mean_std, round_half_even

CIFAR, IMAGENET = 'CIFAR', 'IMAGENET'
VARIANTS = (CIFAR, IMAGENET)
LAYER_TYPES = ('APoTConvolution', 'APoTInnerProduct')
# initial thresholds of the original: wgt_alpha / weight_alpha 3.0, act_alpha 8.0 (CIFAR)
# or 6.0 (ImageNet / MNIST)
ALPHA_W_INIT = 3.0
ALPHA_A_INIT = {CIFAR: 8.0, IMAGENET: 6.0}
FULL_PRECISION = 32
POWER_BITS = (2, 6)      # (A)PoT level sets exist for activations B = bit in 2..6
UNIFORM_BITS = (2, 8)
FIRST_LAST_CODES = 127   # the original's "8-bit" first/last layers: round(w / max(w) * 127)


# ------------------------------------------------------------------------------ level sets
class Levels(collections.namedtuple('Levels', 'values sorted rank thresholds')):
    """A level set: ``values`` in the original's order (its tie-break order), ``sorted``
    ascending, ``rank[i]`` = position of ``sorted[i]`` in ``values``, and ``thresholds[k]``
    = the smallest float32 that goes to ``sorted[k + 1]`` rather than ``sorted[k]``.
    float32 numpy arrays (read-only)."""
    __slots__ = ()


def _bases(B, additive):
    """The base lists of ``build_power_value(B, additive)``: each starts with 0; a level is
    one element of each list summed (compression.md 3(b))."""
    if not additive:                       # plain PoT: {0} ∪ {2^-1 ... 2^-(2^B - 1)}
        return [[0.0] + [2.0 ** -(i + 1) for i in range(2 ** B - 1)]]
    exps = {2: [[1, 2, 3]],
            3: [[1, 2, 4], [3]],
            4: [[1, 3, 5], [2, 4, 6]],
            5: [[1, 3, 6], [2, 4, 7], [5]],
            6: [[1, 4, 7], [2, 5, 8], [3, 6, 9]]}.get(B)
    if exps is None:
        raise ValueError('APoT level sets exist for B = 2..6 (additive), got B = %d' % B)
    return [[0.0] + [2.0 ** -e for e in row] for row in exps]


def _goes_up(x, lo, hi, up_first):
    """The original's choice between neighbours lo < x <= hi: float32 |x - v|, the nearer
    wins, a tie goes to the one listed first (``up_first``: hi is)."""
    d_lo, d_hi = np.float32(x - lo), np.float32(hi - x)
    return d_hi < d_lo or (d_hi == d_lo and up_first)


def _threshold(lo, hi, up_first):
    """Smallest float32 x in (lo, hi] with ``_goes_up``: bisection over the bit patterns
    (non-negative float32 order as their int32 patterns).  The choice is monotone in x since
    float32 subtraction is."""
    a = int(np.float32(lo).view(np.int32))     # goes down here (x = lo)
    b = int(np.float32(hi).view(np.int32))     # goes up here (x = hi)
    while b - a > 1:
        mid = (a + b) // 2
        if _goes_up(np.int32(mid).view(np.float32), lo, hi, up_first):
            b = mid
        else:
            a = mid
    return np.int32(b).view(np.float32)


@functools.lru_cache(maxsize=None)
def level_set(B, additive=True):
    """``build_power_value(B, additive)`` bit-exactly, as a :class:`Levels`.

    The order is that of ``list(set(sums))`` (sums enumerated first base outermost), which
    CPython >= 3.7 gives identically for these floats; argmin ties pick the first level in
    that order (errata under §0).  The maximum becomes 1 by multiplying with the float32
    reciprocal of the maximum, as ``values.mul(1.0 / torch.max(values))`` does (for B = 5, 6
    a few levels differ from the exact quotient by one ulp).
    """
    bases = _bases(B, additive)
    while len(bases) < 3:
        bases.append([0.0])
    sums = [a + b + c for a in bases[0] for b in bases[1] for c in bases[2]]
    raw = np.array(list(set(sums)), dtype=np.float32)
    values = raw * (np.float32(1.0) / raw.max())
    if values[0] != 0:
        # below the smallest level (0) the original's ties among several levels go to the
        # first listed; project() sends such inputs to 0, right only while 0 is first
        raise AssertionError('APoT level set B=%d does not start with 0' % B)
    rank = np.argsort(values, kind='stable')
    srt = values[rank]
    thresholds = np.array([_threshold(srt[k], srt[k + 1], rank[k + 1] < rank[k])
                           for k in range(srt.size - 1)], dtype=np.float32)
    for arr in (values, srt, rank, thresholds):
        arr.setflags(write=False)
    return Levels(values, srt, rank, thresholds)


def project(a, levels):
    """Nearest level of every element of ``a`` (float32, any shape, all <= 1), ties to the
    level listed first in ``levels.values``: the original's ``(x - v).abs().min(dim=0)``
    over its level list, bit for bit.

    Levels beyond the two neighbours of ``a`` stay farther after float32 rounding (their
    extra distance is a level gap, far above the rounding error of a distance <= 1), so the
    choice is between neighbours, made by the
    precomputed thresholds: index = number of thresholds <= a (one compare per level, no
    argmin over a levels x elements array).  Below 0 every input goes to level 0.
    """
    xp = get_array_module(a)
    idx = xp.zeros(a.shape, dtype=np.uint8)
    above = xp.empty(a.shape, dtype=bool)
    for t in levels.thresholds:
        xp.greater_equal(a, t, out=above)
        idx += above
    return xp.asarray(levels.sorted).take(idx)


def _uniform(a, steps):
    """``round(a * steps) / steps`` in float32, half to even (the originals' uniform_quant)."""
    return round_half_even(a * np.float32(steps)) / np.float32(steps)


# ---------------------------------------------------------------------------- configuration
def check_config(bit, power=True, additive=True, variant=CIFAR):
    """Raise ValueError (one line, valid choices listed) for an unusable combination."""
    if variant not in VARIANTS:
        raise ValueError('variant %r; valid: %s' % (variant, ', '.join(VARIANTS)))
    if bit == FULL_PRECISION:
        return
    lo, hi = POWER_BITS if power else UNIFORM_BITS
    if not lo <= bit <= hi:
        kind = ('APoT' if additive else 'PoT') if power else 'uniform'
        raise ValueError('bit is %d, not available for %s quantization: valid bit widths are '
                         '%d..%d%s, or %d (full precision)'
                         % (bit, kind, lo, hi,
                            ' (7 and 8 bits only with power: false)' if power else '',
                            FULL_PRECISION))


FULL, FIRST_LAST, QUANTIZED = 'full precision', 'first_last', 'quantized'


def layer_settings(lp):
    """The checked ``apot_param`` of LayerParameter ``lp`` (an APoTConvolution or
    APoTInnerProduct) as a dict: mode (FULL, FIRST_LAST or QUANTIZED), bit, power, additive,
    variant, grad_scale.  A LayerError names the layer and the field."""
    p = lp.apot_param

    def bad(field, message):
        return LayerError('Layer %r (type %s): apot_param.%s %s' % (lp.name, lp.type, field,
                                                                    message))
    variant = caffe_pb2.APoTParameter.Variant.Name(p.variant)
    grad_scale = None
    if p.HasField('grad_scale'):
        grad_scale = float(p.grad_scale)
        if not grad_scale > 0:
            raise bad('grad_scale', 'is %g; it must be > 0 (to freeze a threshold give its '
                      'param entry lr_mult: 0)' % grad_scale)
    bit = int(p.bit)
    if p.first_last:
        if p.HasField('bit') and bit != 8:
            raise bad('bit', "is %d, but first_last layers are always 8-bit (the original's "
                      'first/last layer rule); leave bit unset or 8' % bit)
        mode = FIRST_LAST
    else:
        try:
            check_config(bit, p.power, p.additive, variant)
        except ValueError as e:      # 'bit is 7, not available ...'
            raise LayerError('Layer %r (type %s): apot_param.%s' % (lp.name, lp.type, e))
        mode = FULL if bit == FULL_PRECISION else QUANTIZED
    if len(lp.weights_compress):
        raise LayerError('Layer %r (type %s): weights_compress cannot be combined with APoT '
                         '(the layer quantizes its own weights); remove weights_compress'
                         % (lp.name, lp.type))
    return dict(mode=mode, bit=bit, power=bool(p.power), additive=bool(p.additive),
                variant=variant, grad_scale=grad_scale)


def initial_alphas(variant=CIFAR):
    """(α_w, α_a) a new layer starts with."""
    return ALPHA_W_INIT, ALPHA_A_INIT[variant]


def weight_levels(bit, power=True, additive=True):
    """Magnitude levels of ``bit``-bit weights (one bit is the sign, B = bit - 1), or None
    where the uniform rule applies (power off, or 2-bit weights: {-1, 0, 1} in every
    variant)."""
    if power and bit > 2:
        return level_set(bit - 1, additive)
    return None


def act_levels(bit, power=True, additive=True):
    """Levels of ``bit``-bit activations (unsigned: B = bit), or None for uniform."""
    return level_set(bit, additive) if power else None


# --------------------------------------------------------------------------------- weights
class WeightContext(collections.namedtuple('WeightContext', 'normalized x q std alpha')):
    """What the weight backward needs: the normalised weights, ``x`` = normalised / α,
    ``q`` its quantized value (units of α), the std and α (float32 scalars)."""
    __slots__ = ()


def weight_stats(w):
    """Mean and *unbiased* standard deviation of the whole tensor (torch ``mean``/``std``),
    in float64 rounded to float32.  torch sums in float32 and can differ by one ulp in the
    mean (apot_ref: 0.0015301886 vs the exact 0.0015301885), never in the quantized
    values of the reference data.  A constant tensor (Caffe's default weight filler is the
    constant 0) gets std 1 instead of the original's division by zero: its normalised
    weights are 0."""
    n = w.size
    mu, sd = mean_std(w)
    if n > 1:
        sd *= np.sqrt(n / (n - 1.0))
    return np.float32(mu), np.float32(sd if sd > 0 else 1.0)


def quantize_weights(w, alpha, bit, power=True, additive=True):
    """The weights a quantized layer computes with: ``q(clamp((w - mean) / std / α)) · α``
    (the normalisation is not undone: the original lets the following BN absorb the scale).

    ``alpha``: the float32 threshold α_w.  Returns ``(w_q, WeightContext)``.  The forward is
    the same in both variants.
    """
    xp = get_array_module(w)
    alpha = np.float32(alpha)
    mean, std = weight_stats(w)
    normalized = (w - mean) / std
    x = normalized / alpha
    xc = xp.clip(x, -1, 1)
    levels = weight_levels(bit, power, additive)
    if levels is None:
        q = xp.sign(xc) * _uniform(xp.abs(xc), 2 ** (bit - 1) - 1)
    else:
        q = xp.sign(xc) * project(xp.abs(xc), levels)
    q = q.astype(np.float32, copy=False)
    return q * alpha, WeightContext(normalized, x, q, std, alpha)


def _alpha_sum(g, terms, grad_scale):
    """``Σ g · terms`` (float32 products, float64 sum) times ``grad_scale``: a 0-d float32."""
    xp = get_array_module(g)
    s = xp.sum(g * terms, dtype=np.float64)
    if grad_scale is not None:
        s = s * grad_scale
    return s.astype(np.float32)


def weight_grads(g, ctx, bit, variant=CIFAR, grad_scale=None):
    """Gradients for the raw weights and α_w from ``g`` = dL/d(w_q).

    Both variants: dL/dα_w = Σ g · (sign(x)·[|x| > 1] + (q - x)·[|x| <= 1]) (× grad_scale).
    CIFAR: straight through, not clipped, mean/std detached: dL/dw = g / std.
    IMAGENET: clipped to |x| <= 1 (torch clamp passes its bounds), except 2-bit weights
    (calibrated gradient: not clipped); then through the live mean and unbiased std:
    dL/dw = (h - mean(h) - n · Σ(h·n) / (N - 1)) / std with h the gradient of the
    normalised weights n.  ``grad_scale`` is the ImageNet option; qcaffe applies it in either
    variant when given.  Returns ``(grad_w, grad_alpha)``.
    """
    xp = get_array_module(g)
    x = ctx.x
    outside = xp.abs(x) > 1
    grad_alpha = _alpha_sum(g, xp.where(outside, xp.sign(x), ctx.q - x), grad_scale)
    if variant == CIFAR:
        return g / ctx.std, grad_alpha
    h = g if bit <= 2 else xp.where(outside, np.float32(0), g)
    n = ctx.normalized
    count = h.size
    mean_h = np.float32(float(xp.sum(h, dtype=np.float64)) / count)
    dot = np.float32(float(xp.sum(h * n, dtype=np.float64)) / max(count - 1, 1))
    grad_w = h - mean_h
    grad_w -= n * dot
    grad_w /= ctx.std
    return grad_w, grad_alpha


# ------------------------------------------------------------------------------ activations
def quantize_acts(x, alpha, bit, power=True, additive=True, variant=CIFAR):
    """The input a quantized layer computes with.  Returns ``(x_q, q)`` with ``q`` in units
    of α_a (kept for the backward).

    CIFAR: u = x / α clamped above at 1 only (inputs are post-ReLU; a negative one goes to
    the nearest level, 0, or stays negative on the uniform path); IMAGENET: clamped to [0, 1].
    power: nearest level of B = bit; uniform: round(u · (2^bit - 1)) / (2^bit - 1).
    """
    xp = get_array_module(x)
    alpha = np.float32(alpha)
    u = x / alpha
    if variant == CIFAR:
        uc = xp.minimum(u, np.float32(1))
    else:
        uc = xp.clip(u, 0, 1)
    levels = act_levels(bit, power, additive)
    q = project(uc, levels) if levels is not None else _uniform(uc, 2 ** bit - 1)
    q = q.astype(np.float32, copy=False)
    return q * alpha, q


def act_grads(g, x, q, alpha, variant=CIFAR, grad_scale=None):
    """Gradients for the input and α_a from ``g`` = dL/d(x_q); ``q`` from quantize_acts.

    CIFAR: dL/dx = g · [u <= 1] (negative inputs pass); dL/dα = Σ g · ([u > 1] + (q - u)·[u <= 1])
    (a negative input contributes g · (q - u)).
    IMAGENET (autograd through clamp(0, 1)): dL/dx = g · [0 <= u <= 1];
    dL/dα = Σ g · (q - u · [0 <= u <= 1]).  Returns ``(grad_x, grad_alpha)``.
    """
    xp = get_array_module(g)
    u = x / np.float32(alpha)
    above = u > 1
    if variant == CIFAR:
        inside = ~above
        terms = xp.where(above, np.float32(1), q - u)
    else:
        inside = ~above & (u >= 0)
        terms = q - xp.where(inside, u, np.float32(0))
    grad_x = xp.where(inside, g, np.float32(0))
    return grad_x, _alpha_sum(g, terms, grad_scale)


# ----------------------------------------------------------------------- first / last layer
def first_last_codes(w):
    """Integer codes of the original's "8-bit" first conv / last FC: ``round(w / m · 127)``
    with m the *signed* maximum (no clamp: weights below -m get codes beyond -127).
    Returns ``(codes, m)``; ``codes`` is None when m <= 0 (the original would divide by zero
    or flip signs; qcaffe then leaves the weights unchanged)."""
    xp = get_array_module(w)
    m = np.float32(float(xp.max(w))) if w.size else np.float32(0)
    if not m > 0:
        return None, m
    return round_half_even(w / m * np.float32(FIRST_LAST_CODES)), m


def first_last_weights(w):
    """``round(w / m · 127) / 127 · m`` (see :func:`first_last_codes`); the gradient is the
    identity (straight through)."""
    codes, m = first_last_codes(w)
    if codes is None:
        return w.copy()
    return codes / np.float32(FIRST_LAST_CODES) * m
