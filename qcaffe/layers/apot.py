"""APoTConvolution and APoTInnerProduct: Convolution / InnerProduct with APoT-quantized weights
and inputs and learned clipping thresholds.

Original (no Caffe one): yhhhli/APoT_Quantization ``QuantConv2d`` (CIFAR10/ and
ImageNet/models/quant_layer.py) and its 8-bit ``first_conv`` / ``last_fc``; compression.md
section 3, §0.6.  The math lives in :mod:`qcaffe.compress.apot`; this module only wires it
around the Caffe layers:

* forward: the weights are quantized (``own_weight(0)``, the seam the parent layer computes
  with), every bottom is quantized into a buffer blob, and the parent's ``forward_impl`` runs
  on the buffers;
* backward: the parent's backward gives the gradients of the quantized weights and inputs;
  the quantizers' backward turns them into the gradients of the full-precision weights, of
  the bottoms and of the thresholds α_w, α_a.

Blobs: weight, bias (if ``bias_term``), α_w, α_a (one element each, initial 3.0 and 8.0 --
6.0 with ``variant: IMAGENET``).  ``first_last`` layers (the original's 8-bit first conv and
last FC: no input quantizer) and ``bit: 32`` (full precision) have no thresholds.
"""
import numpy as np

from ..blob import Blob
from ..compress import apot
from ..compress.apot import FIRST_LAST, FULL, QUANTIZED, layer_settings
from .base import register_layer
from .common import InnerProductLayer, param_needs_grad
from .vision import ConvolutionLayer


class _APoTLayer(object):
    """The APoT wiring shared by both layer types; listed before the Caffe layer it
    quantizes (``class APoTConvolutionLayer(_APoTLayer, ConvolutionLayer)``)."""

    def layer_setup(self, bottom, top):
        self.apot = layer_settings(self.layer_param)
        super().layer_setup(bottom, top)
        self.num_weight_blobs = len(self.blobs)            # weight (+ bias)
        self.has_thresholds = self.apot['mode'] == QUANTIZED
        if self.has_thresholds:
            for value in apot.initial_alphas(self.apot['variant']):
                self.new_blob(1).data[...] = value
        self._inputs = [Blob() for _ in bottom] if self.has_thresholds else None
        self._input_q = [None] * len(bottom)
        self._wq = self._wctx = None

    @property
    def alpha_w_index(self):
        return self.num_weight_blobs if self.has_thresholds else None

    @property
    def alpha_a_index(self):
        return self.num_weight_blobs + 1 if self.has_thresholds else None

    def required_blob_count(self):
        """A weights file may stop before the thresholds (a full-precision model to fine-tune
        from: they keep their initial values, as the original's ``strict=False`` load)."""
        return self.num_weight_blobs

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self._inputs is not None:
            for b, buf in zip(bottom, self._inputs):
                buf.reshape(b.shape)

    def _alpha(self, index):
        return np.float32(self.blobs[index].cpu_data().reshape(-1)[0])

    # --------------------------------------------------------------------- weights
    def quantized_weight(self):
        """The weights as this layer computes with them now (recomputed from blob 0); also
        keeps what the backward needs."""
        w = self.blobs[0].dev_data
        s = self.apot
        if s['mode'] == FIRST_LAST:
            self._wq, self._wctx = apot.first_last_weights(w), None
        else:
            self._wq, self._wctx = apot.quantize_weights(
                w, self._alpha(self.alpha_w_index), s['bit'], s['power'], s['additive'])
        return self._wq

    def own_weight(self, i):
        """Blob 0 is quantized (as of this forward); the bias is used as it is."""
        if i != 0 or self.apot['mode'] == FULL:
            return super().own_weight(i)
        if self._wq is None:
            self.quantized_weight()
        return self._wq

    # --------------------------------------------------------------- forward/backward
    def forward_impl(self, bottom, top):
        if self.apot['mode'] == FULL:
            return super().forward_impl(bottom, top)
        self.quantized_weight()
        if self._inputs is not None:
            s = self.apot
            alpha = self._alpha(self.alpha_a_index)
            for i, (b, buf) in enumerate(zip(bottom, self._inputs)):
                xq, self._input_q[i] = apot.quantize_acts(
                    b.dev_data, alpha, s['bit'], s['power'], s['additive'], s['variant'])
                buf.mutable_dev_data[...] = xq
            bottom = self._inputs
        super().forward_impl(bottom, top)

    def backward_impl(self, top, propagate_down, bottom):
        if self.apot['mode'] != QUANTIZED:
            # full precision, or first/last layer: the 8-bit weight rule is straight through
            return super().backward_impl(top, propagate_down, bottom)
        s = self.apot
        need_w = param_needs_grad(self, 0)
        need_aw = param_needs_grad(self, self.alpha_w_index)
        need_aa = param_needs_grad(self, self.alpha_a_index)
        # the parent computes the gradient of the quantized inputs wherever a bottom or α_a
        # needs it, and that of the quantized weights into a zeroed diff (param diffs
        # accumulate: the earlier sum is set aside and added back)
        down = [bool(pd) or need_aa for pd in propagate_down]
        wdiff = self.blobs[0].mutable_dev_diff
        earlier = wdiff.copy() if (need_w or need_aw) else None
        if earlier is not None:
            wdiff.fill(0)
        forced = need_aw and not need_w
        if forced:
            self.set_param_propagate_down(0, True)
        try:
            super().backward_impl(top, down, self._inputs)
        finally:
            if forced:
                self.set_param_propagate_down(0, False)
        if earlier is not None:
            grad_w, grad_aw = apot.weight_grads(wdiff, self._wctx, s['bit'], s['variant'],
                                                s['grad_scale'])
            if need_w:
                earlier += grad_w
            wdiff[...] = earlier
            if need_aw:
                self.blobs[self.alpha_w_index].mutable_dev_diff[...] += grad_aw
        alpha = self._alpha(self.alpha_a_index)
        for i, (b, buf) in enumerate(zip(bottom, self._inputs)):
            if not down[i]:
                continue
            grad_x, grad_aa = apot.act_grads(buf.dev_diff, b.dev_data, self._input_q[i], alpha,
                                             s['variant'], s['grad_scale'])
            if propagate_down[i]:
                b.mutable_dev_diff[...] = grad_x
            if need_aa:
                self.blobs[self.alpha_a_index].mutable_dev_diff[...] += grad_aa


@register_layer('APoTConvolution')
class APoTConvolutionLayer(_APoTLayer, ConvolutionLayer):
    """Convolution (``convolution_param``) with APoT quantization (``apot_param``): the
    original's ``QuantConv2d`` (bias allowed here), or ``first_conv`` with ``first_last``."""


@register_layer('APoTInnerProduct')
class APoTInnerProductLayer(_APoTLayer, InnerProductLayer):
    """InnerProduct (``inner_product_param``) with APoT quantization (``apot_param``): a
    ``QuantConv2d`` rule on a fully connected layer, or the original's ``last_fc`` with
    ``first_last``."""
