"""Integer codes and scales of compressed weights, for hardware people (``.npz``).

Quantization-caffe leaves users with float files; its README gives the recipe to get the
integers back (QC demo.py ``parse_data``), applied here and checked to be exact:

* ``ULQ``: n = (quantize − delta)/alpha + 0.5, n ∈ [1 − 2^(k−1), 2^(k−1)];
* ``Ternary`` / ``Ternary_Quantize``: t = quantize/alpha ∈ {−1, 0, 1}
  (integer α of Ternary_Quantize = alpha/2^fixedpos);
* ``Quantize``: q = quantize/2^fixedpos, q ∈ ±(2^(k−1) − 1);
* ``Clip``: q = value/alpha, q ∈ ±127 (QC's Clip is 8-bit whatever ``maxbits`` says; with
  qcaffe's ``clip_to_maxbits`` ±(2^(k−1) − 1)) (weights, and activations of a forward).

Every code array comes with ``scale`` and ``offset`` such that ``value = codes·scale +
offset`` reproduces the float32 ``quantize`` buffer.  The entries are read either from a live
:class:`qcaffe.net.Net` (:func:`from_net`) or from files without building a net
(:func:`from_files`: a .caffemodel, optionally with the prototxt whose
``weights_compress`` settings apply; blobs without a stored ``quantize`` are quantized from
their full-precision data).

``qcaffe compress_export --weights W.caffemodel [--model M.prototxt] --output codes.npz``.
"""
import collections

import numpy as np

from ..backend import to_host
from ..io.errors import QcaffeError
from ..proto import caffe_pb2
from .quantizers import (METHODS, QC_CLIP_BITS, WEIGHT_METHODS, QuantState, apply, grid_bits,
                         setting)
from .rounding import round_away


class ExportError(QcaffeError):
    """Compressed values that are not an exact integer grid, or a bad export request."""


CompressedBlob = collections.namedtuple(
    'CompressedBlob', 'layer layer_type index method maxbits bits data quantize state source')
CompressedBlob.__doc__ = ("One compressed parameter blob: ``maxbits`` as set, ``bits`` of the "
                          "grid really used (8 for QC's Clip), FP ``data`` and dequantized "
                          "``quantize`` (host float32 arrays), its QuantState and where the "
                          "quantize array came from ('file', 'net' or 'computed').")


def from_net(net):
    """The compressed blobs of a built Net (quantize buffers refreshed as a forward would)."""
    from .hooks import refresh
    out = []
    for name, layer in zip(net.layer_names, net.layers):
        methods = getattr(layer, 'weights_compress', [])
        if not methods:
            continue
        refresh(layer)
        for i, method in enumerate(methods):
            blob = layer.blobs[i]
            st = blob.compress_state
            bits = grid_bits(method, layer.weights_compress_param[i])
            out.append(CompressedBlob(name, layer.type, i, method, st.maxbits, bits,
                                      to_host(blob.dev_data).copy(),
                                      to_host(blob.dev_quantize).copy(), st, 'net'))
    return out


def from_files(weights, model=None):
    """The compressed blobs of a .caffemodel; methods from ``model`` (a prototxt) if given,
    else from the layer parameters saved in the caffemodel itself (QC saves them)."""
    from ..io import read_net_param
    from .state import read_proto_extras
    wparam = read_net_param(weights)
    settings = {}
    for lp in (read_net_param(model).layer if model else wparam.layer):
        if len(lp.weights_compress):
            settings[lp.name] = (list(lp.weights_compress), list(lp.weights_compress_param))
    out = []
    for lp in wparam.layer:
        if lp.name not in settings:
            continue
        methods, params = settings[lp.name]
        if len(methods) > len(lp.blobs):
            raise ExportError('Layer %r: weights_compress has %d entries but %s stores %d blob(s)'
                              % (lp.name, len(methods), weights, len(lp.blobs)))
        for i, method in enumerate(methods):
            if method not in WEIGHT_METHODS:
                raise ExportError('Layer %r: weights_compress[%d] is %r. Valid choices: %s'
                                  % (lp.name, i, method, ', '.join(WEIGHT_METHODS)))
            param = params[i] if i < len(params) else caffe_pb2.CompressParameter()
            k, bits = setting(method, param)[1], grid_bits(method, param)
            bp = lp.blobs[i]
            shape = tuple(bp.shape.dim) if bp.HasField('shape') else (
                bp.num, bp.channels, bp.height, bp.width)
            data = np.asarray(bp.double_data or bp.data, dtype=np.float32).reshape(shape)
            quantize, state = read_proto_extras(bp)
            saved_with = None         # the setting the file's quantize array was made with
            if i < len(lp.weights_compress) and state is not None:
                f_param = (lp.weights_compress_param[i] if i < len(lp.weights_compress_param)
                           else caffe_pb2.CompressParameter(maxbits=state.maxbits))
                saved_with = setting(lp.weights_compress[i], f_param)
            if quantize is not None and saved_with == setting(method, param):
                out.append(CompressedBlob(lp.name, lp.type, i, method, k, bits, data,
                                          quantize.reshape(shape), state, 'file'))
                continue
            q = np.empty_like(data)
            state = apply(method, data, param, q)
            if state is None:
                raise ExportError('Layer %r blob %d: %s with maxbits %d leaves the weights '
                                  'unquantized' % (lp.name, i, method, k))
            out.append(CompressedBlob(lp.name, lp.type, i, method, k, bits, data, q, state,
                                      'computed'))
    return out


def _int_dtype(lo, hi):
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return np.int64


def integer_codes(method, values, state, what='blob', bits=None):
    """``(codes, scale, offset)`` with ``values ≈ codes·scale + offset`` to float32 precision.

    ``bits``: the width of the grid the values are on (default: ``state.maxbits``, and 8 for
    ``Clip`` as in QC; pass :func:`~.quantizers.grid_bits` for ``clip_to_maxbits``).
    Raises :class:`ExportError` when ``values`` are not on the method's grid (e.g. a quantize
    array edited by hand) or a code falls outside the method's range.
    """
    m = METHODS[method]
    k = int(state.maxbits)
    if bits is None:
        bits = QC_CLIP_BITS if method == 'Clip' else k
    v = np.asarray(values, dtype=np.float64)
    st = QuantState(float(state.alpha), float(state.delta), int(state.fixedpos), k)
    if method == 'ULQ':
        scale, offset = st.alpha, st.delta - 0.5 * st.alpha
    elif method == 'Quantize':
        scale, offset = 2.0 ** st.fixedpos, 0.0
    else:
        scale, offset = st.alpha, 0.0
    codes_f = m.codes(v, st) if scale else np.zeros_like(v)
    codes = round_away(codes_f)
    lo, hi = m.code_range(bits)
    recon = codes * scale + offset
    tol = 8 * np.finfo(np.float32).eps * (float(np.abs(v).max(initial=0.0)) + abs(offset)
                                          + abs(scale))
    err = float(np.abs(recon - v).max(initial=0.0))
    if err > tol:
        raise ExportError('%s (%s, maxbits %d): the values are not on the integer grid '
                          '(reconstruction error %.3g > %.3g)' % (what, method, k, err, tol))
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ExportError('%s (%s, maxbits %d): codes span [%d, %d], outside [%d, %d]'
                          % (what, method, k, codes.min(), codes.max(), lo, hi))
    return codes.astype(_int_dtype(lo, hi)), scale, offset


def activation_codes(layer, top_index, values):
    """Integer codes of ``values`` (a top of ``layer`` after a forward) for its
    ``activations_compress[top_index]`` method (QC README: Clip integer = activation/alpha)."""
    method = layer.activations_compress[top_index]
    p = layer.activations_compress_param[top_index]
    if method not in ('Clip', 'Quantize'):
        raise ExportError('Layer %r top %d: integer export supports Clip and Quantize '
                          'activations, not %r' % (layer.name, top_index, method))
    st = QuantState(p.alpha, p.delta, p.fixedpos, setting(method, p)[1])
    return integer_codes(method, to_host(values), st, 'layer %r top %d' % (layer.name, top_index),
                         grid_bits(method, p))


def export_npz(entries, path):
    """Write ``<layer>/<i>/codes`` (+ ``scale``, ``offset``, ``alpha``, ``delta``,
    ``fixedpos``, ``maxbits``, ``method``, ``shape``; ``alpha_int`` for Ternary_Quantize) of
    every entry to ``path``; returns the dict written."""
    arrays = {}
    for e in entries:
        codes, scale, offset = integer_codes(e.method, e.quantize, e.state,
                                             'layer %r blob %d' % (e.layer, e.index), e.bits)
        key = '%s/%d/' % (e.layer, e.index)
        arrays[key + 'codes'] = codes
        arrays[key + 'scale'] = np.float64(scale)
        arrays[key + 'offset'] = np.float64(offset)
        arrays[key + 'alpha'] = np.float64(e.state.alpha)
        arrays[key + 'delta'] = np.float64(e.state.delta)
        arrays[key + 'fixedpos'] = np.int32(e.state.fixedpos)
        arrays[key + 'maxbits'] = np.int32(e.state.maxbits)
        arrays[key + 'bits'] = np.int32(e.bits)      # of the codes (QC's Clip: 8)
        arrays[key + 'method'] = np.str_(e.method)
        arrays[key + 'shape'] = np.asarray(e.quantize.shape, dtype=np.int64)
        if e.method == 'Ternary_Quantize':
            arrays[key + 'alpha_int'] = np.float64(e.state.alpha / 2.0 ** e.state.fixedpos)
    from ..io.files import atomic_write_bytes
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return arrays


# ----------------------------------------------------------------------------- CLI
def build_parser(prog):
    from ..tools import ArgumentParser
    p = ArgumentParser(prog=prog, description='Export the integer codes and scales of the '
                       'compressed (weights_compress) blobs of a .caffemodel to an .npz.')
    p.add_flag('weights', default='', help='The trained .caffemodel.')
    p.add_flag('model', default='', help='Optional prototxt whose weights_compress settings '
               'apply (default: those saved in the caffemodel).')
    p.add_flag('output', default='', help='The .npz file to write.')
    return p


def run(args):
    from ..tools import require_file, require_flag
    require_flag(args.weights, 'weights', 'the .caffemodel to export')
    require_flag(args.output, 'output', 'the .npz file to write')
    require_file(args.weights, 'weights file (--weights)')
    if args.model:
        require_file(args.model, 'model definition (--model)')
    entries = from_files(args.weights, args.model or None)
    if not entries:
        raise ExportError('no layer of %s has weights_compress%s: nothing to export'
                          % (args.weights, ' in ' + args.model if args.model else ''))
    export_npz(entries, args.output)
    for e in entries:
        print('%s[%d] %s %d-bit %s -> codes %s' % (e.layer, e.index, e.method, e.bits,
                                                  'x'.join(map(str, e.quantize.shape)),
                                                  e.source))
    print('wrote %s (%d blobs)' % (args.output, len(entries)))
    return 0


def main(argv=None, prog='compress_export', command=None):
    from ..tools import run_main
    return run_main(build_parser, run, argv, prog)
