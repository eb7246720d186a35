"""Incremental Network Quantization layers: INQConvolution, INQInnerProduct.

Caffe equivalent: the DNS/INQ fork's (kai-xie/Neural-Network-Model-Compressing, "NK")
src/caffe/layers/inq_{conv,inner_product}_layer.cpp and the masked update of
sgd_solver.cpp / larssgd_solver.cpp.  compression.md 2(b) "INQ", 2(c).

Blobs ``[W, b, W_mask, b_mask]`` (``[W, W_mask]`` without a bias; :mod:`.masked`), mask 1 =
free (full precision, trained), 0 = fixed (a power of two or 0).  The first TRAIN forward of
a run does one INQ step, in place on W and b, each with its own exponent range
(:mod:`qcaffe.compress.inq`): ``inq_*_param { portion: p0 portion: p1 num_quantum_values: N }``
fixes the largest free entries until p1 of the non-pruned ones are powers of two.  The
forward and backward are the plain layer's with the (partly quantized) W, b.

The solver freezes fixed entries through ``param_update_mask``: their update and momentum
history are multiplied by the mask (NK: ``h = mask ⊙ (momentum·h + rate·diff)``), so they do
not move at all -- no gradient, no weight decay -- with every solver type (NK: SGD and
LarsSGD only).  The masks themselves are never learnable.

The "quantized" flag is saved with snapshots, so a resumed run does not quantize again; NK
quantizes only at iteration 0, qcaffe at the first TRAIN forward of a run that has not
(2(g)#8).  Bad portions are rejected when the layer is set up (2(g)#9).
"""
import logging

import numpy as np

from ..compress import inq
from ..proto import caffe_pb2
from .base import LayerError, register_layer
from .common import InnerProductLayer
from .masked import MaskedWeights
from .vision import ConvolutionLayer

log = logging.getLogger('qcaffe')

BLOB_NAMES = ('weights', 'bias')


class INQSteps(MaskedWeights):
    """Mixin: INQ masks and the one quantization step of a run."""

    def layer_setup(self, bottom, top):
        p = self.compress_param
        try:
            self.portions = inq.check_portions(p.portion, p.num_quantum_values)
        except ValueError as e:
            raise LayerError('Layer %r (type %s), %s: %s'
                             % (self.name, self.type, self.compress_field, e)) from None
        self.num_quantum_values = int(p.num_quantum_values)
        super().layer_setup(bottom, top)
        self.quantized = False
        self.exponents = [None] * self.num_weights      # (n1, n2) per weight blob

    def forward(self, bottom, top):
        if self.phase == caffe_pb2.TRAIN and not self.quantized:
            self.quantize()
        return super().forward(bottom, top)

    def quantize(self):
        """NK Forward_cpu at iteration 0: ComputeQuantumRange + ShapeIntoTwoPower for W, b."""
        if self.current_iter > 0:
            log.warning('%s (%s): INQ step at iteration %d: the run did not start at '
                        'iteration 0 and no saved INQ state was restored, so the weights are '
                        'quantized now (portions %g -> %g)', self.name, self.type,
                        self.current_iter, *self.portions)
        for i in range(self.num_weights):
            values, mask = self.blobs[i].mutable_dev_data, self.mask(i).mutable_dev_data
            try:
                n1, n2 = inq.quantum_range(values, mask, self.num_quantum_values)
            except inq.INQError as e:
                raise LayerError('Layer %r (type %s), %s blob (%d): cannot quantize: %s'
                                 % (self.name, self.type, BLOB_NAMES[i], i, e)) from None
            self.exponents[i] = (n1, n2)
            done = inq.shape_into_two_power(values, mask, self.portions, n1, n2)
            if n1 == inq.ALL_PRUNED:
                log.info('%s (%s) %s: all pruned already, skipped', self.name, self.type,
                         BLOB_NAMES[i])
            else:
                log.info('%s (%s) %s: Max_power %d, Min_power %d; portions %g -> %g: %d '
                         'more fixed, %d of %d fixed', self.name, self.type, BLOB_NAMES[i],
                         n1, n2, self.portions[0], self.portions[1], done,
                         mask.size - int((mask == 1).sum()), mask.size)
        self.quantized = True

    def param_update_mask(self, i):
        """Fixed entries (mask 0) of W and b never move."""
        if i < self.num_weights:
            return self.mask(i).dev_data
        return None

    def extra_state(self):
        return {'quantized': np.bool_(self.quantized)}

    def load_extra_state(self, state):
        self.quantized = bool(state['quantized'])


@register_layer('INQConvolution')
class INQConvolutionLayer(INQSteps, ConvolutionLayer):
    """NK: INQConvolutionLayer (``convolution_param`` + ``inq_convolution_param``)."""
    type = 'INQConvolution'
    compress_field = 'inq_convolution_param'


@register_layer('INQInnerProduct')
class INQInnerProductLayer(INQSteps, InnerProductLayer):
    """NK: INQInnerProductLayer (``inner_product_param`` + ``inq_inner_product_param``)."""
    type = 'INQInnerProduct'
    compress_field = 'inq_inner_product_param'
