"""Label-free compression math: scale-fitted power-of-two / fixed-point weights and the
activation step search (pure functions on arrays).

Original equivalent (CAS-CLab Label-free-Network-Compression, compression.md 4(b)):
``python/utils.py`` (``power_quantization``, ``fixed_point_quantization``, ``alpha_init``,
``argmin_alpha``, ``argmin_B``, ``quantization_with_scale``) and lines 38-71 of
``python/activations_quan.py`` (the step of every ``Quant`` layer).  The arithmetic is the
original's, operation for operation, so its outputs replay bit-exactly
(``../shared/data/lf_ref``): float32 throughout, row sums as ``numpy.dot`` with a column of ones
(a plain ``sum`` differs by an ulp), the convergence test on ``numpy.linalg.norm(., 2)`` of
(n, 1) columns, ``floor(x/alpha + 0.5)`` of the activation codes added in float32.

Differences from the original, all from compression.md 4(g) and its errata:

* a weight row (output channel) that is all zero stays all zero with alpha = 0 (the original
  divides 0 by 0: Q = +1 with ``power``, an SVD error with ``fixed``); ``zero_rows`` says which;
* the alternating loops stop after ``MAX_ITER`` passes (the original has no cap) and say so;
* a dead activation (its maximum is not positive) gets step 1 instead of NaN (0/0);
* bit widths are parameters: ``power`` with k bits tries integer widths 0 … k-1 (the original:
  k = 4, widths 0-3) and has 2^(k-1) - 2 exponents above 2^iw; ``fixed`` with b bits tries
  1 … b (the original: b = 8); activations with k bits use codes 0 … 2^(k-1) - 1 (the original:
  "8-bit" = 0 … 127, 4(g)#7).
"""
import collections
import logging

import numpy as np

from ..backend import get_array_module, to_host
from .rounding import dot64

log = logging.getLogger('qcaffe')

MAX_ITER = 1000          # cap of every alternating loop (4(g)#2)
WEIGHT_EPS = 1e-7        # quantization_with_scale: stop when ||Δalpha|| / ||alpha|| <= 1e-7
ACT_EPS = 1e-3           # activations_quan.py: stop when |Δalpha| / alpha <= 1e-3
QTYPES = ('power', 'fixed')


# ----------------------------------------------------------------- element-wise quantizers
def power_quantization(b, integer_width, float_width):
    """utils.power_quantization (kernelwise=False): each value to the nearest power of two
    (ties to the lower one), powers <= 2^iw / 2 -> 0, powers >= 2^(iw + 2^(k-1) - 2) -> that
    maximum, sign kept (k = iw + fw; ±inf -> the maximum; NaN -> the original's initial 1).

    The original takes ``lower = floor(log2 |b|)`` in float32 and compares |b| with
    1.5 * 2^lower.  Here the exponent comes from ``frexp`` (|b| = m * 2^e, m in [0.5, 1):
    2^(e-1) if m <= 0.75 else 2^e), which is the same for every value: where a float32 log2
    rounds across an integer, |b| is next to that power of two and both forms pick it; the
    ties at 1.5 * 2^k are far from it.  About five times faster (no log2, no float powers).
    """
    b = np.asarray(b, dtype=np.float32)
    exponents = 2 ** (integer_width + float_width - 1) - 2
    mantissa, e = np.frexp(np.absolute(b))
    e -= mantissa <= np.float32(0.75)              # the nearest power: 2^e
    top = integer_width + exponents
    e[np.isinf(b)] = top
    np.minimum(e, top, out=e)
    with np.errstate(over='ignore'):             # 8 bits: 2^(iw + 126) is inf in float32,
        q = np.ldexp(np.float32(1), e)           # as in the original
    q[e < integer_width] = 0
    q[np.isnan(b)] = 1 if integer_width == 0 else 0
    q[b < 0] *= -1
    return q


def fixed_point_quantization(b, integer_width, float_width):
    """utils.fixed_point_quantization: clamp to [-2^(iw-1), 2^(iw-1) - 2^-fw], then round to a
    multiple of 2^-fw with ties down (utils.rounding / binornd: floor, +1 step if the fraction
    of a step is > 0.5).  Every step is exact in float32 (scaling by powers of two)."""
    min_value = np.float32(-1 * (2 ** (integer_width - 1)))
    max_value = np.float32(2 ** (integer_width - 1) - 2 ** (-float_width))
    q = np.clip(np.asarray(b, dtype=np.float32), min_value, max_value)
    power = np.float32(2 ** float_width)
    q *= power
    floor = np.floor(q)
    q -= floor                                   # the fraction of a step
    floor += q > np.float32(0.5)
    floor /= power
    return floor


def weight_quantization(b, integer_width, float_width, qtype):
    """utils.weight_quantization."""
    if qtype == 'power':
        return power_quantization(b, integer_width, float_width)
    return fixed_point_quantization(b, integer_width, float_width)


# ------------------------------------------------------------------ scale fitting (weights)
def _row_sum(a):
    """Row sums as the original computes them: ``numpy.dot(a, ones((K, 1)))`` (float32 BLAS)."""
    return np.dot(a, np.ones((a.shape[1], 1), dtype=np.float32))


def alpha_init(w):
    """utils.alpha_init: the row mean of squares (sic, 4(g)#6), shape (n, 1)."""
    return _row_sum(w * w) / np.float32(w.shape[1])


def argmin_alpha(w, q):
    """utils.argmin_alpha: alpha_i = Σ_j w_ij q_ij / (Σ_j q_ij² + 1e-7)."""
    return _row_sum(w * q) / (_row_sum(q * q) + np.float32(WEIGHT_EPS))


def argmin_b(w, alpha, integer_width, float_width, qtype, zero_rows=None):
    """utils.argmin_B: quantize w / alpha row by row.  IEEE division as the original (a row
    whose alpha fell to 0 gets ±inf, i.e. the largest level, and recovers), except for the
    all-zero rows in the boolean mask ``zero_rows``, which give 0 where the original's 0/0
    gives NaN."""
    with np.errstate(divide='ignore', invalid='ignore'):
        b = w / alpha
    if zero_rows is not None:
        b[zero_rows] = 0
    return weight_quantization(b, integer_width, float_width, qtype)


def _relative_change(prev, alpha):
    """||prev - alpha||₂ / ||alpha||₂ of the (n, 1) columns, as the original: numpy's matrix
    2-norm (largest singular value), which is the vector norm up to rounding; float32, so an
    all-zero alpha gives inf (the loop goes on) or NaN (it stops)."""
    with np.errstate(divide='ignore', invalid='ignore'):   # alpha = 0: inf (go on), 0/0: stop
        return np.linalg.norm(prev - alpha, 2) / np.linalg.norm(alpha, 2)


def solve(w, integer_width, float_width, qtype):
    """The alternating minimisation of ||w - alpha·Q||² for one width (the loop body of
    quantization_with_scale).  ``w``: (n, K) float32.  Returns (Q, alpha (n, 1), passes)."""
    zero_rows = ~w.any(axis=1)
    alpha = alpha_init(w)
    q = argmin_b(w, alpha, integer_width, float_width, qtype, zero_rows)
    div = _relative_change(np.float32(1e10), alpha)
    prev, passes = alpha, 0
    while div > np.float64(WEIGHT_EPS):
        if passes == MAX_ITER:
            log.warning('label-free weights: the alternating loop (%s, integer width %d) did '
                        'not settle after %d passes (relative change %g); keeping the last '
                        'values', qtype, integer_width, MAX_ITER, div)
            break
        alpha = argmin_alpha(w, q)
        q = argmin_b(w, alpha, integer_width, float_width, qtype, zero_rows)
        div = _relative_change(prev, alpha)
        prev = alpha
        passes += 1
    return q, alpha, passes


ScaleFit = collections.namedtuple(
    'ScaleFit', 'q alpha qtype bits best_width widths errors passes zero_rows lines')
ScaleFit.__doc__ = """Result of :func:`fit_scale`.

``q``: the quantized values without alpha (conv/IP blob 0), shape of the weights; ``alpha``:
float32 (n,) (the ``_alpha_term`` Scale blob 0); ``best_width``: the chosen integer width;
``widths`` / ``errors`` / ``passes``: every candidate width, its error ||W - alpha·Q||² (float32,
what the original prints) and its number of alpha updates; ``zero_rows``: indices of all-zero
rows; ``lines``: the original's printed lines."""


def width_candidates(qtype, bits):
    """Integer widths tried: power 0 … k-1 (fw = k - iw), fixed 1 … b (fw = b - iw)."""
    return list(range(0, bits)) if qtype == 'power' else list(range(1, bits + 1))


def _line(*values):
    """One ``print a, b, c`` line of the Python 2 original (values joined by spaces)."""
    return ' '.join(str(v) for v in values)


def fit_scale(w, qtype='power', bits=None, report=None):
    """utils.quantization_with_scale(W, alpha, qtype): per-output-channel alpha and Q with
    W ≈ alpha·Q, trying every integer width and keeping the first with the strictly smallest
    error (4(b)).  ``w``: weights with the output channels on axis 0 (conv (n, c, h, w), IP
    (n, K)); ``bits``: 4 for power, 8 for fixed by default (the original's); ``report``: called
    with each of the original's lines as soon as it is known (big layers take a while)."""
    if qtype not in QTYPES:
        raise ValueError('label-free qtype must be one of %s, got %r' % (', '.join(QTYPES), qtype))
    bits = (4 if qtype == 'power' else 8) if bits is None else int(bits)
    shape = np.shape(w)
    w = np.array(w, dtype=np.float32).reshape(shape[0], -1)
    zero_rows = np.flatnonzero(~w.any(axis=1))
    min_error, best = 1e10, None
    widths, errors, passes, results, lines = [], [], [], [], []
    for iw in width_candidates(qtype, bits):
        q, alpha, n = solve(w, iw, bits - iw, qtype)
        residual = (w - q * alpha).ravel()
        error = np.dot(residual, residual)
        if error < min_error:
            min_error, best = error, len(widths)
        widths.append(iw)
        errors.append(error)
        passes.append(n)
        results.append((q, alpha))
        lines.append(_width_line(qtype, iw, error, min_error, best=False))
        if report is not None:
            report(lines[-1])
    if best is None:          # every error NaN (cannot happen once zero rows are handled)
        best = 0
    lines.append(_width_line(qtype, widths[best], min_error, min_error, best=True))
    if report is not None:
        report(lines[-1])
    q, alpha = results[best]
    return ScaleFit(q.reshape(shape), alpha.reshape(-1), qtype, bits, widths[best], widths,
                    np.array(errors, dtype=np.float32), passes, zero_rows, lines)


def _width_line(qtype, iw, error, min_error, best):
    """The original's per-width (and final BEST) line."""
    if qtype == 'power':
        head, width = '2^n starts from \t: ', np.power(2., iw)
    else:
        head, width = ('Bitwidth \t: ' if best else 'INT Bitwidth \t: '), iw
    return _line(('BEST ' if best else '') + head, width, '\t| LOSS : ', error,
                 '\t| MIN LOSS ', min_error)


# -------------------------------------------------------------------- activation step search
def act_max_code(bits):
    """Largest activation code for ``bits``: 2^(bits-1) - 1 (8 bits: 127, as the original)."""
    return 2 ** (int(bits) - 1) - 1


def act_codes(x, alpha, max_code):
    """``clip(floor(x/alpha + 0.5), 0, max_code)`` in float32, as activations_quan.py computes
    it (the 0.5 is added in float32 there; the Quant layer adds it exactly)."""
    xp = get_array_module(x)
    q = xp.floor(x / alpha + np.float32(0.5))
    xp.clip(q, 0, max_code, out=q)
    return q


class StepSearch(object):
    """The step search of activations_quan.py for one ReLU top, driven by statistics.

    The original loops over the whole activation array x::

        alpha = max(x)/127; q = codes(x, alpha); prev = alpha; pre_loss = 1e10
        while |prev - alpha|/alpha > 1e-3 (first: (1e10 - alpha)/alpha):
            alpha = x·q / q·q; q = codes(x, alpha)
            loss = ||x - alpha q||
            if loss > pre_loss: break
            pre_loss = loss; prev = alpha
        step = prev

    Every quantity it needs of x is a sum over elements, so the search runs on statistics:
    ``alpha`` is the step to evaluate next and :meth:`update` takes, for the codes q of x at
    that step, ``x·q``, ``q·q`` and ``||x - alpha q||`` (ignored for the first step), summed
    over mini-batches by :class:`StepStats` -- so memory does not grow with the number of
    images (the original holds them all).  The sums are float64 where the original takes
    float32 BLAS dot products, whose rounding depends on the BLAS kernel (lf_ref's
    ``act/heavy`` third step differs by one ulp between two x86 machines running the
    original's own code); everything element-wise is the original's float32.  ``trace`` holds
    the printed (alpha, loss) pairs.
    """

    def __init__(self, x_max, max_code=127, name=''):
        self.name = name
        self.max_code = max_code
        self.trace = []
        self.step = None
        self.dead = not float(x_max) > 0
        if self.dead:           # 4(g)#2: max(x) = 0 -> 0/0 in the original; all-zero output
            self.done = True
            self.step = np.float32(1)
            return
        self.alpha = np.float32(x_max) / np.float32(max_code)
        self.prev = self.alpha
        self.pre_loss = 1e10
        self.div = abs(np.float32(1e10) - self.alpha) / self.alpha
        self.updates = 0
        self._candidate = False     # alpha came from an update: its loss decides
        self.done = False
        self._check_div()

    @property
    def needs_loss(self):
        return self._candidate

    def _check_div(self):
        if not self.div > np.float64(ACT_EPS):
            self._finish()

    def _finish(self):
        self.done = True
        self.step = self.prev

    def update(self, sum_xq, sum_qq, loss=None):
        """Statistics of the codes at ``self.alpha``; advances the search by one pass."""
        if self.done:
            raise RuntimeError('StepSearch %r is finished' % self.name)
        if self._candidate:
            loss = np.float32(loss)
            self.trace.append((self.alpha, loss))
            if loss > self.pre_loss:
                return self._finish()
            self.pre_loss, self.prev = loss, self.alpha
            self._check_div()
            if self.done:
                return None
        if self.updates == MAX_ITER:
            log.warning('label-free activations %s: the step search did not settle after %d '
                        'passes; keeping step %g', self.name, MAX_ITER, self.prev)
            return self._finish()
        alpha = np.float32(sum_xq) / np.float32(sum_qq)
        if not (np.isfinite(alpha) and alpha > 0):
            log.warning('label-free activations %s: step update gave %g (no activation above '
                        'half a step); keeping step %g', self.name, alpha, self.prev)
            return self._finish()
        self.div = abs(self.prev - alpha) / alpha
        self.alpha = alpha
        self.updates += 1
        self._candidate = True
        return None

    def lines(self):
        """The original's printed lines for this ReLU top."""
        return [_line('iter ', i + 1, ' | alpha', a, ' | loss ', l)
                for i, (a, l) in enumerate(self.trace)]


class StepStats(object):
    """The sums :meth:`StepSearch.update` needs, accumulated over batches of activations:
    ``x·q``, ``q·q`` and ``Σ(x - alpha q)²`` for the codes q at step ``alpha``.  Codes and
    residuals are float32 element-wise, as the original; the sums are float64, so they do not
    depend on how the activations are split into batches (to rounding)."""

    def __init__(self, alpha, max_code):
        self.alpha = np.float32(alpha)
        self.max_code = max_code
        self.xq = self.qq = self.rr = 0.0

    def add(self, x):
        x = x.reshape(-1)
        q = act_codes(x, self.alpha, self.max_code)
        r = x - self.alpha * q
        self.xq += dot64(x, q)
        self.qq += dot64(q, q)
        self.rr += dot64(r, r)

    def update(self, search):
        """Feed the sums to ``search`` (a :class:`StepSearch` at this step)."""
        search.update(self.xq, self.qq, np.sqrt(self.rr))


def act_step_search(x, bits=8, name=''):
    """activations_quan.py's step for the activation array ``x`` (any shape, flattened) held
    whole; returns the finished :class:`StepSearch` (``.step``, ``.trace``, ``.lines()``).  The
    label-free command runs the same search with :class:`StepStats` over mini-batches."""
    x = np.asarray(to_host(x), dtype=np.float32).ravel()
    search = StepSearch(np.max(x) if x.size else 0, act_max_code(bits), name)
    while not search.done:
        stats = StepStats(search.alpha, search.max_code)
        stats.add(x)
        stats.update(search)
    return search
