"""LarsSGD: layer-wise adaptive rate scaling (compression.md 2(c); NK larssgd_solver.cpp).

Per param, after normalization and regularization (so the diff includes weight decay):

    wn = ||W||,  gn = ||diff||
    local_lr = local_gw_ratio * wn / (gn + weight_decay * wn)   if wn > 0 and gn > 0, else 1
    h = momentum * h + rate * local_lr * diff ;  step = h

As in the original, ``lr_mult`` is ignored and the denominator uses the solver's
``weight_decay`` (not times ``decay_mult``).  Warm-up applies (it is in the lr schedule).
"""
import math

import numpy as np

from ..backend import get_array_module
from .base import Solver


class LarsSGDSolver(Solver):
    type = 'LarsSGD'
    whole_blob = True           # the norms are over the whole blob

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        h, t = hist[0], tmp[0]
        p = self.param
        wn = math.sqrt(float(w.dot(w)))
        gn = math.sqrt(float(g.dot(g)))
        local_lr = 1.0
        if wn > 0 and gn > 0:
            local_lr = p.local_gw_ratio * wn / (gn + p.weight_decay * wn)
        h *= np.float32(p.momentum)
        get_array_module(g).multiply(g, np.float32(rate) * np.float32(local_lr), out=t)
        h += t
        g[...] = h
