"""Learning-rate policies (Caffe: ``SGDSolver::GetLearningRate``, caffe.md 4.4) and warm-up.

Each policy is a small function ``policy(param, it, current_step) -> (rate, current_step)``
where ``param`` is the SolverParameter, ``it`` the current iteration (before the update) and
``current_step`` the solver's step counter (only "step" and "multistep" change it; it is saved
in the solverstate).  The arithmetic follows Caffe's C++ types, so the rates agree with
Caffe's logs digit for digit: ``pow(float, int)`` is computed in double, ``pow(float,
float)`` and ``exp(float)`` in float, and the result is stored in a float.

:func:`learning_rate` dispatches on ``lr_policy`` and then applies the warm-up of the DNS/INQ
fork (compression.md 2(c) "Warm-up": ``rampup_interval``, ``rampup_lr``, ``min_lr``), which
every SGD-family solver uses.
"""
import logging

import numpy as np

from ..io.errors import QcaffeError
from ..log import fmt

log = logging.getLogger('qcaffe')

f32 = np.float32


class LearningRateError(QcaffeError):
    """An lr_policy that is unknown or whose parameters Caffe refuses."""


def _check(cond, message):
    if not cond:
        raise LearningRateError(message)


def _pow_int(base, exponent):
    # C++ std::pow(float, int) promotes to double (libm pow); the caller rounds the product
    # to float.  An overflow gives inf, as in C++ (Python's float ** int would raise).
    with np.errstate(over='ignore'):
        return float(np.power(np.float64(f32(base)), np.float64(int(exponent))))


def fixed(param, it, current_step):
    """base_lr."""
    return f32(param.base_lr), current_step


def step(param, it, current_step):
    """base_lr * gamma ^ floor(iter / stepsize); sets current_step."""
    _check(param.stepsize > 0, 'lr_policy "step" needs stepsize > 0 (got %d)' % param.stepsize)
    _check(param.gamma >= 0, 'lr_policy "step" needs gamma >= 0 (got %s)' % fmt(param.gamma))
    current_step = it // param.stepsize
    return f32(float(f32(param.base_lr)) * _pow_int(param.gamma, current_step)), current_step


def exp(param, it, current_step):
    """base_lr * gamma ^ iter."""
    _check(param.gamma >= 0, 'lr_policy "exp" needs gamma >= 0 (got %s)' % fmt(param.gamma))
    return f32(float(f32(param.base_lr)) * _pow_int(param.gamma, it)), current_step


def inv(param, it, current_step):
    """base_lr * (1 + gamma * iter) ^ (-power)."""
    _check(param.gamma >= 0, 'lr_policy "inv" needs gamma >= 0 (got %s)' % fmt(param.gamma))
    with np.errstate(all='ignore'):
        base = f32(1) + f32(param.gamma) * f32(it)
        return f32(param.base_lr) * np.power(base, -f32(param.power)), current_step


def multistep(param, it, current_step):
    """base_lr * gamma ^ current_step; current_step advances by at most one per call."""
    if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
        current_step += 1
        log.info('MultiStep Status: Iteration %d, step = %d', it, current_step)
    return f32(float(f32(param.base_lr)) * _pow_int(param.gamma, current_step)), current_step


def poly(param, it, current_step):
    """base_lr * (1 - iter / max_iter) ^ power."""
    with np.errstate(all='ignore'):
        base = f32(1) - f32(it) / f32(param.max_iter)
        return f32(param.base_lr) * np.power(base, f32(param.power)), current_step


def sigmoid(param, it, current_step):
    """base_lr / (1 + exp(-gamma * (iter - stepsize)))."""
    _check(param.gamma >= 0, 'lr_policy "sigmoid" needs gamma >= 0 (got %s)' % fmt(param.gamma))
    _check(param.stepsize > 0,
           'lr_policy "sigmoid" needs stepsize > 0 (got %d)' % param.stepsize)
    with np.errstate(all='ignore'):
        e = np.exp(-f32(param.gamma) * (f32(it) - f32(param.stepsize)))
        return f32(param.base_lr) * (f32(1) / (f32(1) + e)), current_step


POLICIES = {
    'fixed': fixed,
    'step': step,
    'exp': exp,
    'inv': inv,
    'multistep': multistep,
    'poly': poly,
    'sigmoid': sigmoid,
}


def policy_function(name):
    """The policy function for ``name``; a clear error for unknown (or unset) names."""
    try:
        return POLICIES[name]
    except KeyError:
        raise LearningRateError(
            "Unknown learning rate policy: '%s'. Set lr_policy in the solver to one of: %s"
            % (name, ', '.join(sorted(POLICIES)))) from None


def warm_up(param, it, rate):
    """The DNS/INQ fork's warm-up, applied after the policy (compression.md 2(c)).

    While ``iter < rampup_interval`` the rate ramps linearly from ``rampup_lr`` to the
    scheduled rate (never above it); ``min_lr`` is a floor applied at every iteration.
    """
    rate = f32(rate)
    if it < param.rampup_interval:
        a = f32(it) / f32(param.rampup_interval)
        r0 = f32(param.rampup_lr)
        rate = min(rate, f32(r0 + (rate - r0) * a))
    return max(rate, f32(param.min_lr))


def learning_rate(param, it, current_step):
    """Caffe: ``GetLearningRate`` plus warm-up.  Returns ``(rate as float32, current_step)``."""
    rate, current_step = policy_function(param.lr_policy)(param, it, current_step)
    return warm_up(param, it, rate), current_step


def validate(param):
    """Raise :class:`LearningRateError` now for what Caffe would only reject at the first
    update (unknown policy, stepsize/gamma out of range).  Logs nothing, changes nothing."""
    fn = policy_function(param.lr_policy)
    if fn is not multistep:     # multistep only logs; it has no parameter checks
        fn(param, 0, 0)
