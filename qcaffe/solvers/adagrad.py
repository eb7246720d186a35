"""AdaGrad (Caffe: ``AdaGradSolver::ComputeUpdateValue``; momentum must be 0).

    h = h + g^2 ;  step = local_rate * g / (sqrt(h) + delta)
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class AdaGradSolver(Solver):
    type = 'AdaGrad'

    def check_param(self):
        if self.param.momentum != 0:
            self._fail('momentum', 'Momentum cannot be used with AdaGrad (got %g); remove it '
                       'or set it to 0' % self.param.momentum)

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, t = hist[0], tmp[0]
        xp = get_array_module(g)
        xp.multiply(g, g, out=t)
        h += t
        xp.sqrt(h, out=t)
        t += np.float32(self.param.delta)
        g /= t
        g *= self.local_rate(i, rate)
