"""Blob layout and roles shared by the DNS and INQ layers of the DNS/INQ fork (compression.md
2(b) "Blob layout", 2(g)#5).

NK's ``LayerSetUp`` appends one mask per weight blob after the base layer created them:
``[W, b, W_mask, b_mask]``, or ``[W, W_mask]`` without a bias.  The masks are float 0/1
arrays saved in the .caffemodel like any blob, so the fork's models load unchanged.

Roles, not indices (NK treats every blob with index >= 2 as a mask, which breaks bias-less
layers): :class:`MaskedWeights` says which blobs are weights (``learnable_blob_indices``:
the solver never updates, decays or keeps momentum for a mask) and which mask belongs to
each (``mask(i)``).  A plain 2-blob model loads into the first two blobs and leaves the masks
at their filler value 1 (NK net.cpp ``CopyTrainedLayersFrom``; ``required_blob_count``).
"""
from .base import LayerError


def mask_filler_value(layer, param, field):
    """NK fills masks with a FillerParameter that must be ``constant`` 1 (2(a)).  An unset
    filler means 1 here; NK's FillerParameter default (constant 0) would give an all-pruned
    DNS layer or an all-frozen INQ layer, which no prototxt of the fork relies on."""
    if not param.HasField(field):
        return 1.0
    f = getattr(param, field)
    if f.type != 'constant' or f.value != 1.0:
        raise LayerError('Layer %r (type %s): %s.%s must be { type: "constant" value: 1 } '
                         '(masks start all kept/free); got type %r value %g'
                         % (layer.name, layer.type, layer.compress_field, field, f.type,
                            f.value))
    return 1.0


class MaskedWeights(object):
    """Mixin placed before ConvolutionLayer / InnerProductLayer: the fork's mask blobs.

    ``compress_field`` names the layer's parameter message (e.g. ``dns_convolution_param``).
    """
    compress_field = None

    @property
    def compress_param(self):
        return getattr(self.layer_param, self.compress_field)

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)        # W (and b), as the plain layer makes them
        self.num_weights = len(self.blobs)
        p = self.compress_param
        # NK: with a bias, weight_mask_filler and bias_mask_filler; without, the one weight
        # mask takes bias_mask_filler (INQInnerProduct: weight_mask_filler).  Both must be 1.
        for field in ('weight_mask_filler', 'bias_mask_filler'):
            mask_filler_value(self, p, field)
        for i in range(self.num_weights):
            self.new_blob(*self.blobs[i].shape).mutable_dev_data.fill(1.0)

    def mask(self, i):
        """The mask blob of weight blob ``i`` (0 = W, 1 = b)."""
        return self.blobs[self.num_weights + i]

    def learnable_blob_indices(self):
        return list(range(self.num_weights))

    def required_blob_count(self):
        return self.num_weights
