"""AdaDelta (Caffe: ``AdaDeltaSolver::ComputeUpdateValue``; momentum is the decay).

    h = momentum * h + (1 - momentum) * g^2 ;
    d = g * sqrt((u + delta) / (h + delta)) ;
    u = momentum * u + (1 - momentum) * d^2 ;   step = local_rate * d
History set 0 is h, set 1 is u (Caffe's history_[i] and history_[i + N]).
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class AdaDeltaSolver(Solver):
    type = 'AdaDelta'
    num_history_sets = 2
    num_temps = 2

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, u = hist
        t, t2 = tmp
        momentum = np.float32(self.param.momentum)
        one_minus = np.float32(1) - momentum
        delta = np.float32(self.param.delta)
        xp = get_array_module(g)
        xp.multiply(g, g, out=t)
        t *= one_minus
        h *= momentum
        h += t
        xp.add(h, delta, out=t)
        xp.add(u, delta, out=t2)
        t2 /= t
        xp.sqrt(t2, out=t2)
        g *= t2
        xp.multiply(g, g, out=t)
        t *= one_minus
        u *= momentum
        u += t
        g *= self.local_rate(i, rate)
