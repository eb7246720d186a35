"""Nesterov's accelerated gradient (Caffe: ``NesterovSolver::ComputeUpdateValue``).

    h_prev = h ;  h = momentum * h + local_rate * g ;
    step = (1 + momentum) * h - momentum * h_prev
"""
import numpy as np

from ..backend import get_array_module
from .base import Solver


class NesterovSolver(Solver):
    type = 'Nesterov'
    num_temps = 2

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, h_prev = hist[0], tmp[1]
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
