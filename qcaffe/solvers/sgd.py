"""SGD with momentum (Caffe: ``SGDSolver::ComputeUpdateValue``).

    h = momentum * h + local_rate * g ;  step = h
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class SGDSolver(Solver):
    type = 'SGD'

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, t = hist[0], tmp[0]
        # caffe_cpu_axpby(local_rate, g, momentum, h): h = momentum * h, then h += rate * g
        h *= np.float32(self.param.momentum)
        get_array_module(g).multiply(g, self.local_rate(i, rate), out=t)
        h += t
        g[...] = h
