"""Pruned and power-of-two models: what they cost stored sparse (``qcaffe compress_report``).

For DNS / INQ models (compression.md 2) and the plain models made from them
(``dns_to_normal``, ``inq_to_normal``), per Convolution / InnerProduct-like layer:
kept / total weights and biases, sparsity, whether the kept values are powers of two (INQ)
with their bit width and distinct values, and the size stored sparse against float32.

Kept entries: a DNS layer's mask = 1 (NK's count), otherwise the non-zero values (an INQ
layer's fixed zeros are pruned weights).  INQ layers also say how much is fixed (mask 0).

Sparse size, per blob, in the DNS/INQ fork's compact format (NK compression_scripts/
encode_compact.py, Deep Compression's relative indexing): each kept value is stored with the
gap to the previous one in ``index_bits`` bits; a gap larger than 2^index_bits costs a filler
entry (value 0) per 2^index_bits positions.  Values take their code width when they are
powers of two (codes = 0 and ±2^e for the exponents present, so 4 bits for INQ's 7 exponents)
plus a float32 codebook of 2^bits entries, else 32 bits; plus a 4-byte entry count.  Masks
are not stored: the indices replace them.  A blob that packs smaller dense (every value at
its code width, no indices: an INQ layer that is not pruned) counts dense.
"""
import math

import numpy as np

from .report import _fmt_bytes

# layer types whose blobs are [W, (b)] plus one mask per weight blob
DNS_TYPES = ('DNSConvolution', 'DNSInnerProduct', 'CConvolution', 'CInnerProduct')
INQ_TYPES = ('INQConvolution', 'INQInnerProduct')
PLAIN_TYPES = ('Convolution', 'InnerProduct')
INDEX_BITS = 4          # NK encode_compact.py: bits = 4


class LayerBlobs(object):
    """One weight layer: name, type, kind ('DNS', 'INQ' or 'plain'), weight arrays, masks."""

    def __init__(self, name, type_, weights, masks=None):
        self.name = name
        self.type = type_
        self.kind = ('DNS' if type_ in DNS_TYPES else 'INQ' if type_ in INQ_TYPES
                     else 'plain')
        self.weights = [np.asarray(w, np.float32).ravel() for w in weights]
        self.masks = None if masks is None else [np.asarray(m, np.float32).ravel()
                                                 for m in masks]


def split_roles(type_, bias_term, blobs):
    """(weights, masks) of a layer's stored blobs by its type: masked layers hold
    ``[W, b, W_mask, b_mask]`` (``[W, W_mask]`` without bias), plain ones ``[W, b]``."""
    if type_ in DNS_TYPES + INQ_TYPES:
        n = 1 + int(bias_term)
        if len(blobs) == 2 * n:
            return blobs[:n], blobs[n:]
    return blobs, None


def kept_values(layer):
    """Per weight blob: the stored values with pruned entries set to 0."""
    if layer.kind == 'DNS' and layer.masks is not None:
        return [np.where(m == 1, w, np.float32(0)) for w, m in zip(layer.weights, layer.masks)]
    return layer.weights


def power_of_two_exponents(values):
    """(emin, emax) when every non-zero value is ±2^e, else None (also for no non-zero)."""
    nz = values[values != 0]
    if not nz.size:
        return None
    mant, exp = np.frexp(np.abs(nz))
    if not np.all(mant == 0.5):
        return None
    return int(exp.min()) - 1, int(exp.max()) - 1


def compact_entries(values, index_bits=INDEX_BITS):
    """Entries of NK's compact format: kept values plus the fillers of long gaps."""
    idx = np.flatnonzero(values)
    if not idx.size:
        return 0
    gaps = np.diff(np.concatenate([[-1], idx]))
    span = 1 << index_bits
    return int(idx.size + np.sum((gaps[gaps > span] - 1) // span))


def code_bits(exponents):
    """Bits of a code for 0 and ±2^e, e in [emin, emax]."""
    emin, emax = exponents
    return max(1, int(math.ceil(math.log2(2 * (emax - emin + 1) + 1))))


def stored_bytes(values, index_bits=INDEX_BITS):
    """(bytes, 'sparse' or 'dense'): one blob in the compact format (see the module
    docstring) or, when that is smaller, all its values packed at their code width."""
    exps = power_of_two_exponents(values)
    value_bits = 32 if exps is None else code_bits(exps)
    codebook = 0 if exps is None else 4 * (1 << value_bits)
    entries = compact_entries(values, index_bits)
    sparse = 4 + codebook + (entries * (value_bits + index_bits) + 7) // 8
    dense = codebook + (values.size * value_bits + 7) // 8
    return (sparse, 'sparse') if sparse < dense else (dense, 'dense')


def layer_row(layer, index_bits=INDEX_BITS):
    """The report's numbers for one layer (a dict)."""
    values = kept_values(layer)
    total = sum(v.size for v in values)
    if layer.kind == 'DNS' and layer.masks is not None:
        kept = sum(int(np.count_nonzero(m == 1)) for m in layer.masks)
    else:
        kept = sum(int(np.count_nonzero(v)) for v in values)
    exps = [power_of_two_exponents(v) for v in values]
    quantized = all(e is not None or not np.count_nonzero(v) for e, v in zip(exps, values))
    present = [e for e in exps if e is not None]
    bits = code_bits((min(e[0] for e in present), max(e[1] for e in present))) \
        if quantized and present else None
    fixed = None
    if layer.kind == 'INQ' and layer.masks is not None:
        fixed = sum(int(np.count_nonzero(m == 0)) for m in layer.masks)
    distinct = len(np.unique(np.concatenate([v[v != 0] for v in values])))
    stored = [stored_bytes(v, index_bits) for v in values]
    return dict(layer=layer.name, type=layer.type, kind=layer.kind, kept=kept, total=total,
                weights_pruned=bool(values) and np.count_nonzero(values[0]) < values[0].size,
                sparsity=1.0 - kept / float(total) if total else 0.0, bits=bits,
                distinct=distinct, fixed=fixed,
                stored_bytes=sum(b for b, _ in stored), float_bytes=4 * total,
                format='/'.join(sorted(set(f for _, f in stored))))


def worth_reporting(rows):
    """True when some layer is masked, has pruned (zero) weights or is power-of-two.  A plain
    float model is not, even with zero biases (a bias filler's constant 0 is no pruning)."""
    return any(r['kind'] != 'plain' or r['weights_pruned'] or r['bits'] is not None
               for r in rows)


def format_rows(rows, other_float_bytes=0, index_bits=INDEX_BITS):
    """The table as text, with the totals and the whole model (other blobs at float32)."""
    head = ('layer', 'type', 'kept/total', 'sparsity', 'INQ fixed', 'bits', 'distinct',
            'stored', 'as', 'float32', 'ratio')
    table = [head]
    for r in rows:
        fixed = '-' if r['fixed'] is None else '%.1f %%' % (100.0 * r['fixed'] / r['total'])
        table.append((r['layer'], r['type'], '%d/%d' % (r['kept'], r['total']),
                      '%.2f %%' % (100.0 * r['sparsity']), fixed,
                      '-' if r['bits'] is None else str(r['bits']), str(r['distinct']),
                      _fmt_bytes(r['stored_bytes']), r['format'], _fmt_bytes(r['float_bytes']),
                      '%.1fx' % (r['float_bytes'] / float(max(r['stored_bytes'], 1)))))
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in table]
    kept = sum(r['kept'] for r in rows)
    total = sum(r['total'] for r in rows)
    stored = sum(r['stored_bytes'] for r in rows)
    flt = sum(r['float_bytes'] for r in rows)
    lines.append('kept %d/%d weights and biases (%.4f %%, %.1fx fewer); stored (sparse with '
                 '%d-bit relative indices, or dense, whichever is smaller): %s vs %s float32 '
                 '(%.1fx)' % (kept, total, 100.0 * kept / total, total / float(max(kept, 1)),
                              index_bits, _fmt_bytes(stored), _fmt_bytes(flt),
                              flt / float(stored)))
    if other_float_bytes:
        lines.append('whole model: %s vs %s float32 (%.1fx; other blobs at float32, masks '
                     'not stored)' % (_fmt_bytes(stored + other_float_bytes),
                                      _fmt_bytes(flt + other_float_bytes),
                                      (flt + other_float_bytes) /
                                      float(stored + other_float_bytes)))
    return '\n'.join(lines)


# ------------------------------------------------------------------ model sources
def layers_from_files(weights, model=None):
    """(weight layers, float bytes of the other blobs) of a .caffemodel; layer types and
    bias_term from ``model`` (a prototxt) when given, else from the file's own layers."""
    from ..io import read_net_param
    from ..io.weights import weights_from_net_param
    saved = read_net_param(weights)
    params = {lp.name: lp for lp in saved.layer}
    if model:
        params.update((lp.name, lp) for lp in read_net_param(model).layer)
    layers, other = [], 0
    for name, _type, blobs in weights_from_net_param(saved, weights):
        lp = params[name]
        arrays = [b.data for b in blobs]
        if lp.type in DNS_TYPES + INQ_TYPES + PLAIN_TYPES and arrays:
            bias = (lp.convolution_param.bias_term if 'Convolution' in lp.type
                    else lp.inner_product_param.bias_term)
            w, m = split_roles(lp.type, bias, arrays)
            layers.append(LayerBlobs(name, lp.type, w, m))
        else:
            other += sum(4 * a.size for a in arrays)
    return layers, other


def layers_from_net(net):
    """(weight layers, float bytes of the other blobs) of a built Net."""
    from ..layers.masked import MaskedWeights
    layers, other = [], 0
    for name, layer in zip(net.layer_names, net.layers):
        arrays = [b.data for b in layer.blobs]
        if isinstance(layer, MaskedWeights):
            n = layer.num_weights
            layers.append(LayerBlobs(name, layer.type, arrays[:n], arrays[n:]))
        elif layer.type in PLAIN_TYPES:
            layers.append(LayerBlobs(name, layer.type, arrays))
        else:
            other += sum(4 * a.size for a in arrays)
    return layers, other


def report(layers, other_float_bytes=0, index_bits=INDEX_BITS):
    """The text of the pruning / INQ section, or '' when no layer is pruned or quantized."""
    rows = [layer_row(layer, index_bits) for layer in layers]
    if not rows or not worth_reporting(rows):
        return ''
    return format_rows(rows, other_float_bytes, index_bits)
