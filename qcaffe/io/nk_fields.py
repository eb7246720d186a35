"""Binary .caffemodel files written by the DNS/INQ fork: its layer parameters at their new numbers.

The fork (kai-xie/Neural-Network-Model-Compressing, "NK") numbered ``dns_convolution_param``
... ``cinner_product_param`` 147-152 in LayerParameter, numbers that BVLC and uL2Q use for
other fields (``swish_param``, ``clip_param``, ``weights_compress``...); qcaffe keeps the
names and moves them to 153-158 (compression.md §0.2).  A LayerParameter of the fork parsed
as it is would put a DNS layer's parameters into ``swish_param`` and an INQ layer's into
``weights_compress`` (then read as a μL2Q method).  So before a binary NetParameter is
parsed, a layer of one of the fork's six types that holds its own type's message at the
fork's number (DNSConvolution: 147, ..., CInnerProduct: 152) and not at qcaffe's gets it
renumbered, on the wire.  Everything else -- other fields, other layers, files written by
qcaffe (a DNS layer with a μL2Q ``weights_compress`` at 149 included) -- is left alone, and a
file without such layers is returned unchanged (one pass over the layer headers).
"""
from .binary import read_varint
from .blobproto import varint

# layer type -> (the fork's number of its parameter message, qcaffe's number)
NK_FIELDS = {b'DNSConvolution': (147, 153), b'DNSInnerProduct': (148, 154),
             b'INQConvolution': (149, 155), b'INQInnerProduct': (150, 156),
             b'CConvolution': (151, 157), b'CInnerProduct': (152, 158)}
_NET_LAYER = 100          # NetParameter.layer
_LAYER_TYPE = 2           # LayerParameter.type
_LENGTH_DELIMITED = 2


def _fields(data):
    """(field number, wire type, start of the field, start of its payload, end) per field."""
    pos, n = 0, len(data)
    while pos < n:
        start = pos
        tag, pos = read_varint(data, pos, n)
        if tag is None:
            raise ValueError('truncated tag')
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, end = read_varint(data, pos, n)
        elif wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = read_varint(data, pos, n)
            if length is None:
                raise ValueError('truncated length')
            end = pos + length
        else:
            raise ValueError('unsupported wire type %d' % wire)
        if end > n:
            raise ValueError('truncated field %d' % number)
        yield number, wire, start, pos, end
        pos = end


def _renumber_layer(layer):
    """The layer's bytes with NK's fields renumbered, or None when there is nothing to do."""
    fields = list(_fields(layer))
    types = [bytes(layer[p:e]) for num, w, _, p, e in fields if num == _LAYER_TYPE]
    if not types or types[-1] not in NK_FIELDS:
        return None
    old, new = NK_FIELDS[types[-1]]
    numbers = {num for num, w, _, _, _ in fields if w == _LENGTH_DELIMITED}
    if old not in numbers or new in numbers:      # not the fork's, or already qcaffe's
        return None
    out = bytearray()
    for num, wire, start, pos, end in fields:
        if num == old and wire == _LENGTH_DELIMITED:
            out += varint(new << 3 | _LENGTH_DELIMITED)
            out += varint(end - pos)
            out += layer[pos:end]
        else:
            out += layer[start:end]
    return bytes(out)


def renumber_nk_fields(data):
    """Binary NetParameter ``data`` with the fork's layer parameters at qcaffe's numbers.

    Returns ``data`` itself when no layer needs it (or when it does not walk as protobuf:
    the parser then reports the problem).
    """
    view = memoryview(data)         # slices without copying the blobs
    try:
        fields = list(_fields(view))
        layers = {}
        for num, wire, start, pos, end in fields:
            if num == _NET_LAYER and wire == _LENGTH_DELIMITED:
                new = _renumber_layer(view[pos:end])
                if new is not None:
                    layers[start] = new
    except (ValueError, IndexError):
        return data
    if not layers:
        return data
    out = bytearray()
    for num, wire, start, pos, end in fields:
        if start in layers:
            out += varint(_NET_LAYER << 3 | _LENGTH_DELIMITED)
            out += varint(len(layers[start]))
            out += layers[start]
        else:
            out += view[start:end]
    return bytes(out)
