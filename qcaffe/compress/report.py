"""``qcaffe compress_report``: what a compressed model really costs, per layer.

Pruned (DNS) and power-of-two (INQ) models get their own table: kept/total, sparsity, bits
and the size stored sparse (:mod:`.sparsity`).

For every blob with ``weights_compress``: method, bit width, the number of distinct values
actually present, and the size of the weights packed at their bit width (plus their float32
scale scalars) against float32.  Blobs without a method count at float32 in the totals.
APoT layers get a table of their own (:func:`apot_rows`): bits, learned thresholds α_w / α_a,
distinct weight values, packed size.  Beyond the originals (Quantization-caffe only stores
float copies; APoT only PyTorch checkpoints).

``qcaffe compress_report --weights W.caffemodel [--model M.prototxt]`` (no net is built, so
data layers and their databases are not needed).
"""
import numpy as np

from .export import ExportError, from_files, from_net, integer_codes
from .quantizers import METHODS

# float32 scalars stored with each method's codes (what hardware needs to dequantize)
_SCALARS = {'ULQ': 2, 'Ternary': 1, 'Ternary_Quantize': 1, 'Quantize': 1, 'Clip': 1}


def rows_for(entries):
    """One dict per compressed blob: layer, index, method, bits, count, distinct,
    packed_bytes, float_bytes, ratio, source."""
    rows = []
    for e in entries:
        bits = METHODS[e.method].bits(e.bits)
        count = int(e.quantize.size)
        integer_codes(e.method, e.quantize, e.state, 'layer %r blob %d' % (e.layer, e.index),
                      e.bits)
        packed = (count * bits + 7) // 8 + 4 * _SCALARS[e.method]
        rows.append(dict(layer=e.layer, index=e.index, method=e.method, bits=bits,
                         shape=tuple(e.quantize.shape), count=count,
                         distinct=int(np.unique(e.quantize).size),
                         packed_bytes=packed, float_bytes=4 * count,
                         ratio=4.0 * count / packed, source=e.source))
    return rows


def _fmt_bytes(n):
    for unit, size in (('MB', 1 << 20), ('KB', 1 << 10)):
        if n >= size:
            return '%.2f %s' % (n / size, unit)
    return '%d B' % n


def format_report(rows, total_float_bytes=None):
    """The table as text; ``total_float_bytes`` (all params of the model at float32) adds a
    whole-model line where uncompressed blobs stay at float32."""
    head = ('layer', 'blob', 'method', 'bits', 'shape', 'distinct', 'packed', 'float32',
            'ratio')
    table = [head]
    for r in rows:
        table.append((r['layer'], str(r['index']), r['method'], str(r['bits']),
                      'x'.join(map(str, r['shape'])), str(r['distinct']),
                      _fmt_bytes(r['packed_bytes']), _fmt_bytes(r['float_bytes']),
                      '%.1fx' % r['ratio']))
    return '\n'.join(_aligned(table) + _size_lines(rows, 'compressed blobs', total_float_bytes,
                                                   'uncompressed blobs at float32'))


def _aligned(table):
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    return ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in table]


def _size_lines(rows, what, total_float_bytes, rest):
    """The packed-vs-float32 total of ``rows`` and, given the model's float32 size, the
    whole-model line (the blobs not in ``rows`` at float32)."""
    lines = []
    packed = sum(r['packed_bytes'] for r in rows)
    flt = sum(r['float_bytes'] for r in rows)
    if rows:
        lines.append('%s: %s packed vs %s float32 (%.1fx)'
                     % (what, _fmt_bytes(packed), _fmt_bytes(flt), flt / float(packed)))
    if total_float_bytes is not None:
        model = total_float_bytes - flt + packed
        lines.append('whole model: %s vs %s float32 (%.1fx; %s)'
                     % (_fmt_bytes(model), _fmt_bytes(total_float_bytes),
                        total_float_bytes / float(max(model, 1)), rest))
    return lines


def net_report(net):
    """The report of a built Net as text (pycaffe: ``print(net_report(solver.net))``)."""
    total = sum(4 * b.count_all for layer in net.layers for b in layer.blobs)
    rows = rows_for(from_net(net))
    return with_apot(format_report(rows, total) if rows else '', apot_rows(net.to_proto()),
                     total)


def file_report(weights, model=None, index_bits=4):
    """The report of a .caffemodel (methods from ``model`` or the file) as text: the μL2Q
    table, the APoT one and/or the pruning / INQ one (:mod:`.sparsity`)."""
    from ..io import read_net_param
    from . import sparsity
    entries = from_files(weights, model)
    wparam = read_net_param(weights)
    apot = apot_rows(wparam, read_net_param(model) if model else None)
    total = 0
    for lp in wparam.layer:
        for bp in lp.blobs:
            total += 4 * (len(bp.data) or len(bp.double_data))
    text = with_apot(format_report(rows_for(entries), total) if entries else '', apot, total)
    sections = [text] if text else []
    pruned = sparsity.report(*sparsity.layers_from_files(weights, model), index_bits=index_bits)
    if pruned:
        sections.append(pruned)
    if not sections:
        raise ExportError('no layer of %s has weights_compress, is an APoT layer, or has DNS/INQ '
                          'masks, pruned (zero) or power-of-two weights%s: nothing to report'
                          % (weights, ' in ' + model if model else ''))
    return '\n\n'.join(sections)


# ---------------------------------------------------------------------------- APoT layers
def _signed_bits(lo, hi):
    """Bits of the smallest two's-complement integer holding every code in [lo, hi]."""
    bits = 1
    while lo < -(1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:
        bits += 1
    return bits


def apot_rows(weights_param, model_param=None):
    """One dict per APoT layer (APoTConvolution / APoTInnerProduct) of ``weights_param`` (a
    NetParameter with blobs: a .caffemodel or ``Net.to_proto()``): layer, type, rule, bits
    (per weight code), alpha_w, alpha_a, count, distinct (values of the weights the layer
    computes with), packed_bytes (codes + float32 thresholds or scale), float_bytes, ratio.
    Settings (type, ``apot_param``) from ``model_param``'s same-named layer when given.
    Thresholds missing from the file (a full-precision model) count at their initial values.
    """
    from ..io.blobproto import blobproto_to_array
    from . import apot
    spec = {lp.name: lp for lp in (model_param or weights_param).layer
            if lp.type in apot.LAYER_TYPES}
    rows = []
    for lp in weights_param.layer:
        sp = spec.get(lp.name)
        if sp is None or not len(lp.blobs):
            continue
        s = apot.layer_settings(sp)
        w = blobproto_to_array(lp.blobs[0])
        alphas, scalars = ('-', '-'), 0
        if s['mode'] == apot.QUANTIZED:
            nw = 1 + int(sp.convolution_param.bias_term if sp.type == 'APoTConvolution'
                         else sp.inner_product_param.bias_term)
            stored = [float(blobproto_to_array(b).ravel()[0]) for b in lp.blobs[nw:nw + 2]]
            alphas = tuple(stored) if len(stored) == 2 else apot.initial_alphas(s['variant'])
            wq = apot.quantize_weights(w, alphas[0], s['bit'], s['power'], s['additive'])[0]
            bits, distinct, scalars = s['bit'], np.unique(wq).size, 2
            rule = ('APoT' if s['additive'] else 'PoT') if s['power'] and s['bit'] > 2 \
                else 'uniform'
        elif s['mode'] == apot.FIRST_LAST:
            codes, _ = apot.first_last_codes(w)
            if codes is None:           # no positive weight: stays float
                bits, distinct, rule = 32, np.unique(w).size, 'first/last (float)'
            else:
                bits = max(8, _signed_bits(int(codes.min()), int(codes.max())))
                distinct, scalars, rule = np.unique(codes).size, 1, 'first/last'
        else:
            bits, distinct, rule = 32, np.unique(w).size, 'full precision'
        count = int(w.size)
        packed = (count * bits + 7) // 8 + 4 * scalars
        rows.append(dict(layer=lp.name, type=sp.type, rule=rule, bits=bits, alpha_w=alphas[0],
                         alpha_a=alphas[1], count=count, distinct=int(distinct),
                         packed_bytes=packed, float_bytes=4 * count,
                         ratio=4.0 * count / packed))
    return rows


def format_apot_report(rows, total_float_bytes=None):
    """The APoT table as text (weights only: biases and BatchNorm stay float32);
    ``total_float_bytes`` adds the whole-model line."""
    def alpha(v):
        return v if isinstance(v, str) else '%.4g' % v
    table = [('layer', 'type', 'rule', 'bits', 'alpha_w', 'alpha_a', 'distinct', 'packed',
              'float32', 'ratio')]
    for r in rows:
        table.append((r['layer'], r['type'], r['rule'], str(r['bits']), alpha(r['alpha_w']),
                      alpha(r['alpha_a']), str(r['distinct']), _fmt_bytes(r['packed_bytes']),
                      _fmt_bytes(r['float_bytes']), '%.1fx' % r['ratio']))
    return '\n'.join(_aligned(table) + _size_lines(rows, 'APoT weights', total_float_bytes,
                                                   'other blobs at float32'))


def with_apot(text, rows, total_float_bytes):
    """``text`` (the weights_compress report, may be empty) followed by the APoT table; the
    APoT whole-model line only when it stands alone."""
    if not rows:
        return text
    apot_text = format_apot_report(rows, None if text else total_float_bytes)
    return (text + '\n\n' + apot_text) if text else apot_text


# ----------------------------------------------------------------------------- CLI
def build_parser(prog):
    from ..tools import ArgumentParser
    p = ArgumentParser(prog=prog, description='Per layer: compression method, bits, distinct '
                       'values and packed size vs float32 of a compressed .caffemodel.')
    p.add_flag('weights', default='', help='The trained .caffemodel.')
    p.add_flag('model', default='', help='Optional prototxt whose weights_compress settings '
               'apply (default: those saved in the caffemodel).')
    p.add_flag('index_bits', type=int, default=4, help='Bits of the relative index of pruned '
               'layers stored sparse (the DNS/INQ fork uses 4).')
    return p


def run(args):
    from ..tools import require_file, require_flag
    require_flag(args.weights, 'weights', 'the .caffemodel to report on')
    require_file(args.weights, 'weights file (--weights)')
    if args.model:
        require_file(args.model, 'model definition (--model)')
    if not 1 <= args.index_bits <= 32:
        raise ExportError('--index_bits must be 1..32, got %d' % args.index_bits)
    print(file_report(args.weights, args.model or None, args.index_bits))
    return 0


def main(argv=None, prog='compress_report', command=None):
    from ..tools import run_main
    return run_main(build_parser, run, argv, prog)
