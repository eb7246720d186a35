"""Quant: the activation quantizer of Label-free network compression.

Original equivalent: ``QuantLayer`` of CAS-CLab/Label-free-Network-Compression
(act_quantize.cpp / act_quantize.cu, type string "Quant"; compression.md 4(a)-(b), 4(g)#1).
``qcaffe labelfree`` writes it in place of every ReLU, with the step it calibrated.
"""
import numpy as np

from ..backend import get_array_module
from ..compress.labelfree import act_max_code
from ..compress.rounding import floor_half_up
from .base import register_layer
from .neuron import NeuronLayer, _fail

QUANT_BITS_RANGE = (2, 16)


@register_layer('Quant')
class QuantLayer(NeuronLayer):
    """``y = s * min(floor(x/s + 0.5), M)`` for x > 0, else 0, with the step s in
    ``relu_param.negative_slope`` (the original prototxts keep it there) and M = 127
    (``relu_param.quant_bits``, a qcaffe field, default 8: M = 2^(bits-1) - 1).

    This is the original's GPU kernel on every backend (4(g)#1; its CPU version forgets the
    final ``* s`` and outputs the integer codes); ``+ 0.5`` is exact (the kernel adds a double
    0.5), so x/s = 0.49999997 gives code 0.  The original has no backward (inference only);
    here the gradient passes straight through where the quantizer follows its input,
    ``dx = dy`` for 0 < x <= M*s and 0 elsewhere (a clipped ReLU's), so a quantized net can be
    fine-tuned.
    """
    keeps_bottom = True

    def layer_setup(self, bottom, top):
        p = self.layer_param.relu_param
        self.step = np.float32(p.negative_slope)
        if not (np.isfinite(self.step) and self.step > 0):
            _fail(self, 'relu_param.negative_slope is the quantization step and must be '
                  'positive and finite, got %g (qcaffe labelfree writes it; the original writes '
                  'NaN for a ReLU that never fires, qcaffe labelfree writes 1 there).',
                  self.step)
        bits = int(p.quant_bits)
        lo, hi = QUANT_BITS_RANGE
        if not lo <= bits <= hi:
            _fail(self, 'relu_param.quant_bits must be in %d..%d (codes 0 ... 2^(bits-1) - 1), '
                  'got %d.', lo, hi, bits)
        self.max_code = np.float32(act_max_code(bits))

    def forward_impl(self, bottom, top):
        self.save_bottom(bottom, top)
        x = bottom[0].dev_data
        xp = get_array_module(x)
        code = floor_half_up(x / self.step)
        xp.clip(code, 0, self.max_code, out=code)    # x <= 0 gives a code <= 0: clipped to 0
        xp.multiply(code, self.step, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.bottom_data(bottom, top)
        xp = get_array_module(x)
        inside = (x > 0) & (x <= self.max_code * self.step)
        xp.multiply(top[0].dev_diff, inside, out=bottom[0].mutable_dev_diff)
