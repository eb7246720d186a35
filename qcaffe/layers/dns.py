"""Dynamic Network Surgery layers: DNSConvolution, DNSInnerProduct, CConvolution, CInnerProduct.

Caffe equivalent: the DNS/INQ fork's (kai-xie/Neural-Network-Model-Compressing, "NK")
src/caffe/layers/{dns_conv,dns_inner_product,cconv,cinner_product}_layer.cpp; CConvolution /
CInnerProduct are Guo's original names (yiwenguo/Dynamic-Network-Surgery) for the same layers,
reading ``cconvolution_param`` / ``cinner_product_param``.  compression.md 2(b), 2(c).

Blobs ``[W, b, W_mask, b_mask]`` (``[W, W_mask]`` without a bias; :mod:`.masked`).  Every
forward computes with W ⊙ W_mask and b ⊙ b_mask (``own_weight``).  A TRAIN forward first
performs surgery (:mod:`qcaffe.compress.dns`):

1. once per run, μ and σ of the masked weights and bias together (NK: at iteration 0);
2. with probability (1 + γ·iter)^−power, and while iter < ``iter_stop``, prune (mask 1 → 0)
   where |w| <= alpha_low·T and splice (0 → 1) where |w| > alpha_high·T, T = max(μ + c_rate·σ,
   0).  The draw is one uniform number per layer and forward from qcaffe's RNG (seeded by
   the solver's ``random_seed``; NK calls the unseeded C ``rand()``).

Backward is the plain layer's with the effective weights: the weight gradient is ∂L/∂(W ⊙ M)
and reaches every W entry, pruned ones included, so a pruned weight can grow back (splicing);
weight decay applies to all of W.  NK multiplies the diff by the mask before accumulating,
which only matters with ``iter_size`` > 1 (2(g)#7); qcaffe keeps the ``iter_size`` = 1
semantics.

Differences from NK, all from compression.md 2(g): the statistics use the masked weights in
every layer (NK's CPU InnerProduct uses the unmasked ones -- the same for the all-ones masks a
run starts from), they are computed at the first TRAIN forward of a run whatever the
iteration and saved with snapshots (NK: only at iteration 0, so a resumed run has T = 0 and
splices everything back), a layer with nothing left (n = 0) does no surgery (NK: NaN), the
CPU convolution writes image n at its own output offset (NK CPU bug #1) and CConvolution's σ
is the correct one (NK's CPU CConvolution gets NaN, §0 errata).
"""
import logging

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..compress import dns
from ..proto import caffe_pb2
from .common import InnerProductLayer
from .base import register_layer
from .masked import MaskedWeights
from .vision import ConvolutionLayer

log = logging.getLogger('qcaffe')
f32 = np.float32


class DNSSurgery(MaskedWeights):
    """Mixin: DNS masks, statistics and surgery over a ConvolutionLayer / InnerProductLayer."""

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        p = self.compress_param
        self.gamma, self.power, self.c_rate = f32(p.gamma), f32(p.power), f32(p.c_rate)
        self.alpha_low, self.alpha_high = f32(p.alpha_low), f32(p.alpha_high)
        self.iter_stop = int(p.iter_stop)       # NK: int iter_stop_ = the float field
        self.mu = self.sigma = f32(0)
        self.stats_count = 0                    # n: entries the statistics were taken over
        self.stats_done = False
        self._effective = {}

    # ------------------------------------------------------------------ forward
    def forward(self, bottom, top):
        if self.phase == caffe_pb2.TRAIN:
            self.surgery()
        return super().forward(bottom, top)

    def surgery(self):
        """NK Forward_cpu's TRAIN part: statistics once, then surgery with probability."""
        pairs = [(self.blobs[i].dev_data, self.mask(i).dev_data)
                 for i in range(self.num_weights)]
        if not self.stats_done:
            self.mu, self.sigma, self.stats_count = dns.statistics(pairs)
            self.stats_done = True
            total = sum(b.count for b in self.blobs[:self.num_weights])
            log.info('%s (%s): mu %s sigma %s, %d/%d non-zero, threshold %s', self.name,
                     self.type, self.mu, self.sigma, self.stats_count, total,
                     dns.threshold(self.mu, self.sigma, self.c_rate))
            if self.current_iter > 0:
                log.warning('%s (%s): DNS statistics taken at iteration %d from the current '
                            '(possibly pruned) weights: the run did not start at iteration 0 '
                            'and no saved statistics were restored', self.name, self.type,
                            self.current_iter)
        r = f32(backend.rng().random_sample())   # NK: rand()/RAND_MAX, one per forward
        if (self.stats_count and self.current_iter < self.iter_stop and
                dns.surgery_probability(self.gamma, self.power, self.current_iter) > r):
            t = dns.threshold(self.mu, self.sigma, self.c_rate)
            for values, mask in pairs:
                dns.surgery(values, mask, t, self.alpha_low, self.alpha_high)

    def own_weight(self, i):
        """W ⊙ W_mask, b ⊙ b_mask (NK's weight_tmp_ / bias_tmp_), in a reused buffer."""
        data = self.blobs[i].dev_data
        if i >= self.num_weights:
            return data
        xp = get_array_module(data)
        buf = self._effective.get(i)
        if buf is None or buf.shape != data.shape or get_array_module(buf) is not xp:
            buf = self._effective[i] = xp.empty_like(data)
        return xp.multiply(data, self.mask(i).dev_data, out=buf)

    # ------------------------------------------------------------------- state
    def extra_state(self):
        return {'mu': np.float32(self.mu), 'sigma': np.float32(self.sigma),
                'stats_count': np.int64(self.stats_count),
                'stats_done': np.bool_(self.stats_done)}

    def load_extra_state(self, state):
        self.mu = f32(state['mu'])
        self.sigma = f32(state['sigma'])
        self.stats_count = int(state['stats_count'])
        self.stats_done = bool(state['stats_done'])


@register_layer('DNSConvolution')
class DNSConvolutionLayer(DNSSurgery, ConvolutionLayer):
    """NK: DNSConvolutionLayer (``convolution_param`` + ``dns_convolution_param``)."""
    type = 'DNSConvolution'
    compress_field = 'dns_convolution_param'


@register_layer('DNSInnerProduct')
class DNSInnerProductLayer(DNSSurgery, InnerProductLayer):
    """NK: DNSInnerProductLayer (``inner_product_param`` + ``dns_inner_product_param``)."""
    type = 'DNSInnerProduct'
    compress_field = 'dns_inner_product_param'


@register_layer('CConvolution')
class CConvolutionLayer(DNSConvolutionLayer):
    """Guo's CConvolution (NK cconv_layer.cpp): DNSConvolution reading ``cconvolution_param``
    (its defaults differ: c_rate 3)."""
    type = 'CConvolution'
    compress_field = 'cconvolution_param'


@register_layer('CInnerProduct')
class CInnerProductLayer(DNSInnerProductLayer):
    """Guo's CInnerProduct (NK cinner_product_layer.cpp): DNSInnerProduct reading
    ``cinner_product_param``."""
    type = 'CInnerProduct'
    compress_field = 'cinner_product_param'
