"""``qcaffe compress_report``: what a compressed model really costs, per layer.

For every blob with ``weights_compress``: method, bit width, the number of distinct values
actually present, and the size of the weights packed at their bit width (plus their float32
scale scalars) against float32.  Blobs without a method count at float32 in the totals.
Beyond the originals (Quantization-caffe only stores float copies).

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
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in table]
    packed = sum(r['packed_bytes'] for r in rows)
    flt = sum(r['float_bytes'] for r in rows)
    if rows:
        lines.append('compressed blobs: %s packed vs %s float32 (%.1fx)'
                     % (_fmt_bytes(packed), _fmt_bytes(flt), flt / float(packed)))
    if total_float_bytes is not None:
        model = total_float_bytes - flt + packed
        lines.append('whole model: %s vs %s float32 (%.1fx; uncompressed blobs at float32)'
                     % (_fmt_bytes(model), _fmt_bytes(total_float_bytes),
                        total_float_bytes / float(max(model, 1))))
    return '\n'.join(lines)


def net_report(net):
    """The report of a built Net as text (pycaffe: ``print(net_report(solver.net))``)."""
    total = sum(4 * b.count_all for layer in net.layers for b in layer.blobs)
    return format_report(rows_for(from_net(net)), total)


def file_report(weights, model=None):
    """The report of a .caffemodel (methods from ``model`` or the file) as text."""
    from ..io import read_net_param
    entries = from_files(weights, model)
    if not entries:
        raise ExportError('no layer of %s has weights_compress%s: nothing to report'
                          % (weights, ' in ' + model if model else ''))
    total = 0
    for lp in read_net_param(weights).layer:
        for bp in lp.blobs:
            total += 4 * (len(bp.data) or len(bp.double_data))
    return format_report(rows_for(entries), total)


# ----------------------------------------------------------------------------- CLI
def build_parser(prog):
    from ..tools import ArgumentParser
    p = ArgumentParser(prog=prog, description='Per layer: compression method, bits, distinct '
                       'values and packed size vs float32 of a compressed .caffemodel.')
    p.add_flag('weights', default='', help='The trained .caffemodel.')
    p.add_flag('model', default='', help='Optional prototxt whose weights_compress settings '
               'apply (default: those saved in the caffemodel).')
    return p


def run(args):
    from ..tools import require_file, require_flag
    require_flag(args.weights, 'weights', 'the .caffemodel to report on')
    require_file(args.weights, 'weights file (--weights)')
    if args.model:
        require_file(args.model, 'model definition (--model)')
    print(file_report(args.weights, args.model or None))
    return 0


def main(argv=None, prog='compress_report', command=None):
    from ..tools import run_main
    return run_main(build_parser, run, argv, prog)
