"""Binary .caffemodel files written by the DNS/INQ fork: its layer parameters at their new numbers.

The fork (kai-xie/Neural-Network-Model-Compressing, "NK") numbered ``dns_convolution_param``
... ``cinner_product_param`` 147-152 in LayerParameter, numbers that BVLC and uL2Q use for
other fields (``swish_param``, ``clip_param``, ``weights_compress``...); qcaffe keeps the
names and moves them to 153-158 (compression.md §0.2).  A LayerParameter of the fork parsed
as it is would put a DNS layer's parameters into ``swish_param`` and an INQ layer's into
``weights_compress`` (then read as a μL2Q method).  So before a binary NetParameter is
parsed, the fields 147-152 of layers whose type is one of the fork's six are renumbered to
153-158, on the wire.  Other layers are left alone, and files without such layers are
returned unchanged (the common case costs one pass over the layer headers).
"""
NK_TYPES = (b'DNSConvolution', b'DNSInnerProduct', b'INQConvolution', b'INQInnerProduct',
            b'CConvolution', b'CInnerProduct')
_RENUMBER = {147 + k: 153 + k for k in range(6)}
_NET_LAYER = 100          # NetParameter.layer
_LAYER_TYPE = 2           # LayerParameter.type
_LENGTH_DELIMITED = 2


def _varint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(data):
    """(field number, wire type, start of the field, start of its payload, end) per field."""
    pos, n = 0, len(data)
    while pos < n:
        start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, end = _varint(data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
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
    if not types or types[-1] not in NK_TYPES:
        return None
    if not any(num in _RENUMBER and w == _LENGTH_DELIMITED for num, w, _, _, _ in fields):
        return None
    out = bytearray()
    for num, wire, start, pos, end in fields:
        if num in _RENUMBER and wire == _LENGTH_DELIMITED:
            out += _encode_varint(_RENUMBER[num] << 3 | _LENGTH_DELIMITED)
            out += _encode_varint(end - pos)
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
            out += _encode_varint(_NET_LAYER << 3 | _LENGTH_DELIMITED)
            out += _encode_varint(len(layers[start]))
            out += layers[start]
        else:
            out += view[start:end]
    return bytes(out)
