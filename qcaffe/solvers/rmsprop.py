"""RMSProp (Caffe: ``RMSPropSolver::ComputeUpdateValue``; momentum must be 0).

    h = rms_decay * h + (1 - rms_decay) * g^2 ;  step = local_rate * g / (sqrt(h) + delta)
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class RMSPropSolver(Solver):
    type = 'RMSProp'

    def check_param(self):
        p = self.param
        if p.momentum != 0:
            self._fail('momentum', 'Momentum cannot be used with RMSProp (got %g); remove it '
                       'or set it to 0' % p.momentum)
        if not 0 <= p.rms_decay < 1:
            self._fail('rms_decay', 'must be in [0, 1) (got %g)' % p.rms_decay)

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, t = hist[0], tmp[0]
        decay = np.float32(self.param.rms_decay)
        xp = get_array_module(g)
        xp.multiply(g, g, out=t)
        t *= np.float32(1) - decay
        h *= decay
        h += t
        xp.sqrt(h, out=t)
        t += np.float32(self.param.delta)
        g /= t
        g *= self.local_rate(i, rate)
