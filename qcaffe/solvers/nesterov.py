"""Nesterov's accelerated gradient (Caffe: ``NesterovSolver::ComputeUpdateValue``).

    h_prev = h ;  h = momentum * h + local_rate * g ;
    step = (1 + momentum) * h - momentum * h_prev
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class NesterovSolver(Solver):
    type = 'Nesterov'

    def compute_update_value(self, i, rate):
        g = self._params[i].blob.mutable_dev_diff
        h = self.history_array(i)
        h_prev = self.temp(i, 1)
        momentum = np.float32(self.param.momentum)
        h_prev[...] = h
        h *= momentum
        xp = get_array_module(g)
        xp.multiply(g, self.local_rate(i, rate), out=g)
        h += g
        # update = (1 + momentum) * h - momentum * h_prev (caffe_cpu_axpby), copied into diff
        h_prev *= -momentum
        xp.multiply(h, np.float32(1) + momentum, out=g)
        g += h_prev
