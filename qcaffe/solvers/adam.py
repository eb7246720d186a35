"""Adam (Caffe: ``AdamSolver::ComputeUpdateValue``; beta1 = momentum, beta2 = momentum2).

    m = beta1 * m + (1 - beta1) * g ;  v = beta2 * v + (1 - beta2) * g^2 ;
    step = local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + delta),  t = iter + 1
The correction is computed in double as C++ ``std::pow(float, int)`` does, then stored as
float; ``delta`` is added to sqrt(v) without bias correction, as in Caffe.
"""
import math

import numpy as np

from ..backend import get_array_module
from .base import Solver


class AdamSolver(Solver):
    type = 'Adam'
    num_history_sets = 2

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        m, v = hist
        t = tmp[0]
        p = self.param
        beta1, beta2 = np.float32(p.momentum), np.float32(p.momentum2)
        it = self.iter + 1
        correction = np.float32(math.sqrt(1.0 - float(beta2) ** it) / (1.0 - float(beta1) ** it))
        xp = get_array_module(g)
        m *= beta1
        xp.multiply(g, np.float32(1) - beta1, out=t)
        m += t
        xp.multiply(g, g, out=t)
        t *= np.float32(1) - beta2
        v *= beta2
        v += t
        xp.sqrt(v, out=t)
        t += np.float32(p.delta)
        xp.divide(m, t, out=g)
        g *= self.local_rate(i, rate) * correction
