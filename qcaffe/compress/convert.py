"""Model conversions of the DNS/INQ fork's scripts (compression.md 2(e), 2(g)#14).

Equivalent of NK's compression_scripts/dns_to_normal.py, model2INQ_raw.py and inq_to_normal.py:
weights go from a source Net to a target Net built from another prototxt, layer by layer
(same names), and the DNS statistics are printed as the scripts print them.  The scripts
pick layers by name ("conv", "ip", "fc", "fire" in the name); here the layer *type* decides
what a layer is:

* a DNS layer (DNSConvolution, DNSInnerProduct, CConvolution, CInnerProduct) holds W, b and
  keep-masks: ``dns_to_normal`` writes W ⊙ [mask = 1], ``model2INQ_raw`` writes the same and
  passes the masks on (pruned entries become INQ's "fixed at 0");
* an INQ layer holds W, b and free-masks (0 = fixed, not pruned): its W, b are copied as they
  are, and ``model2INQ_raw`` passes the masks on;
* a plain Convolution / InnerProduct copies W, b; into an INQ/DNS target its masks are set to
  1 (``model2INQ_raw``: everything free);
* any other layer with blobs (BatchNorm, Scale, ...) is copied verbatim -- NK leaves those at
  the target's filler values unless their names happen to match.
"""
import numpy as np

from ..io.errors import QcaffeError
from ..layers.dns import DNSSurgery
from ..layers.masked import MaskedWeights
from .sparsity import PLAIN_TYPES

RULE = '=' * 55         # NK: num_mark = 55 decorative marks
MODES = ('dns_to_normal', 'model2INQ_raw', 'inq_to_normal')


class ConvertError(QcaffeError):
    """Source and target nets that do not fit together (names the layer and the blobs)."""


def _weights_of(layer):
    """(weights, masks or None) of a layer: its learnable blobs W (, b) and the masks."""
    if isinstance(layer, MaskedWeights):
        n = layer.num_weights
        return [b.data for b in layer.blobs[:n]], [b.data for b in layer.blobs[n:]]
    return [b.data for b in layer.blobs], None


def _put(target_layer, name, j, array):
    dst = target_layer.blobs[j].data
    if dst.size != array.size:
        raise ConvertError('layer %r blob %d: the target has %s values, the source %s'
                           % (name, j, dst.size, array.size))
    dst[...] = array.reshape(dst.shape)


class DNSStatistics(object):
    """The per-layer lines and the final summary NK's scripts print for DNS layers."""

    def __init__(self, write=print):
        self.write = write
        self.total = 0
        self.kept = 0

    def layer(self, name, masks):
        w_kept = int(np.count_nonzero(masks[0] == 1))
        lines = ['%s layer w: %d/%d (%f %%) kept' % (name, w_kept, masks[0].size,
                                                     100.0 * w_kept / masks[0].size)]
        kept, total = w_kept, masks[0].size
        if len(masks) > 1:
            b_kept = int(np.count_nonzero(masks[1] == 1))
            lines.append('%s       b: %d/%d (%f %%) kept' % (' ' * len(name), b_kept,
                                                             masks[1].size,
                                                             100.0 * b_kept / masks[1].size))
            kept, total = kept + b_kept, total + masks[1].size
        lines.append('%s   total: %d/%d (%f %%) kept' % (' ' * len(name), kept, total,
                                                        100.0 * kept / total))
        self.write(RULE)
        for line in lines:
            self.write(line)
        self.total += total
        self.kept += kept

    def summary(self):
        if not (self.total and self.kept):
            return
        self.write(' ')
        self.write('*' * len(RULE))
        self.write(' ')
        self.write('Final Statistics: %d/ %d (%f %%) kept' % (self.kept, self.total,
                                                             100.0 * self.kept / self.total))
        self.write('Compression Rate: %f' % (self.total / float(self.kept)))
        self.write(' ')
        self.write('*' * len(RULE))


def convert(source, target, mode, write=print):
    """Copy ``source``'s weights into ``target`` (two Nets) as NK's script ``mode`` does;
    returns the :class:`DNSStatistics` (DNS layers only)."""
    if mode not in MODES:
        raise ConvertError('unknown conversion %r (valid: %s)' % (mode, ', '.join(MODES)))
    stats = DNSStatistics(write)
    for name, layer in zip(source.layer_names, source.layers):
        if not layer.blobs:
            continue
        if name not in target.layer_names:
            raise ConvertError('the target net has no layer %r (type %s in the source); the '
                               'conversion matches layers by name' % (name, layer.type))
        dst = target.layers[target.layer_names.index(name)]
        weights, masks = _weights_of(layer)
        if masks is None and layer.type not in PLAIN_TYPES:
            if len(dst.blobs) != len(layer.blobs):
                raise ConvertError('layer %r (%s): the source has %d blobs, the target (%s) '
                                   '%d' % (name, layer.type, len(layer.blobs), dst.type,
                                           len(dst.blobs)))
            for j, w in enumerate(weights):       # BatchNorm, Scale, ...: verbatim
                _put(dst, name, j, w)
            continue
        if isinstance(layer, DNSSurgery) and mode != 'inq_to_normal':
            stats.layer(name, masks)
            weights = [np.where(m == 1, w, np.float32(0)) for w, m in zip(weights, masks)]
        if len(_weights_of(dst)[0]) != len(weights):
            raise ConvertError('layer %r: the source (%s) has %d weight blob(s), the target '
                               '(%s) %d; bias_term must agree'
                               % (name, layer.type, len(weights), dst.type,
                                  len(_weights_of(dst)[0])))
        for j, w in enumerate(weights):
            _put(dst, name, j, w)
        if mode == 'model2INQ_raw' and isinstance(dst, MaskedWeights):
            n = dst.num_weights
            if masks is None:
                masks = [np.ones_like(w) for w in weights]
            for j, m in enumerate(masks):
                _put(dst, name, n + j, m)
    stats.summary()
    return stats
