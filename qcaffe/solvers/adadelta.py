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

    def compute_update_value(self, i, rate):
        g = self._params[i].blob.mutable_dev_diff
        h = self.history_array(i, 0)
        u = self.history_array(i, 1)
        tmp, tmp2 = self.temp(i, 0), self.temp(i, 1)
        momentum = np.float32(self.param.momentum)
        one_minus = np.float32(1) - momentum
        delta = np.float32(self.param.delta)
        xp = get_array_module(g)
        xp.multiply(g, g, out=tmp)
        tmp *= one_minus
        h *= momentum
        h += tmp
        xp.add(h, delta, out=tmp)
        xp.add(u, delta, out=tmp2)
        tmp2 /= tmp
        xp.sqrt(tmp2, out=tmp2)
        g *= tmp2
        xp.multiply(g, g, out=tmp)
        tmp *= one_minus
        u *= momentum
        u += tmp
        g *= self.local_rate(i, rate)
