"""Binary protobuf files (.caffemodel, .binaryproto, .solverstate) and the net/solver readers.

Caffe: ``ReadProtoFromBinaryFile`` / ``WriteProtoToBinaryFile`` (src/caffe/util/io.cpp),
``ReadNetParamsFrom{Text,Binary}FileOrDie`` and ``ReadSolverParamsFromTextFileOrDie``
(src/caffe/util/upgrade_proto.cpp).

A wrong file given to Caffe fails with "Wire format was corrupt" or, worse, parses into
garbage (protobuf keeps unknown fields silently). Here the content is checked first, so a
PNG, an HDF5 file, a text prototxt, an empty or truncated file, or a Caffe file of the
wrong kind (a mean file given as weights...) is reported for what it is.
"""
import logging

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from .blobproto import array_to_blobproto, blobproto_to_array  # noqa: F401  (re-exported)
from .errors import BlobProtoError, ModelFileError
from .files import atomic_write_bytes, display_path, read_file_bytes, sniff_content
from .prototxt import parse_prototxt_text, read_prototxt
from .upgrade import upgrade_net_as_needed, upgrade_snapshot_prefix, upgrade_solver_as_needed

log = logging.getLogger('qcaffe')

# What users call each message's files, for messages.
_FILE_KINDS = {
    'caffe.NetParameter': 'a .caffemodel',
    'caffe.SolverState': 'a .solverstate',
    'caffe.BlobProto': 'a .binaryproto such as mean.binaryproto',
    'caffe.BlobProtoVector': 'a BlobProtoVector',
    'caffe.Datum': 'a Datum',
    'caffe.SolverParameter': 'a binary solver definition',
}

# Kinds a misplaced Caffe file is recognised as: (message, "is it really one?", description).
# A candidate counts only if it parses with no unknown top-level field and has content.
_GUESSES = (
    (caffe_pb2.NetParameter, lambda m: len(m.layer) or len(m.layers),
     'a Caffe model (NetParameter, as in a .caffemodel)'),
    (caffe_pb2.SolverState, lambda m: m.HasField('learned_net') or len(m.history),
     'a Caffe solver state (.solverstate)'),
    (caffe_pb2.BlobProto, lambda m: len(m.data) or len(m.double_data),
     'a single BlobProto (such as a mean.binaryproto)'),
    (caffe_pb2.BlobProtoVector, lambda m: len(m.blobs),
     'a BlobProtoVector'),
    (caffe_pb2.Datum, lambda m: m.HasField('channels') and (m.HasField('data') or len(m.float_data)),
     'a Datum (one LMDB record)'),
)


def _has_unknown_fields(message):
    return len(unknown_fields.UnknownFieldSet(message)) > 0


def _guess_caffe_message(data, exclude):
    """Describe which other Caffe message ``data`` cleanly parses as, or None."""
    for cls, looks_real, description in _GUESSES:
        if cls.DESCRIPTOR.full_name == exclude:
            continue
        candidate = cls()
        try:
            candidate.ParseFromString(data)
        except DecodeError:
            continue
        if looks_real(candidate) and not _has_unknown_fields(candidate):
            return description
    return None


# ---------------------------------------------------------------------------------------
# Locating the damage in a file protobuf refused.

class _WireProblem(Exception):
    def __init__(self, text, truncated):
        super().__init__(text)
        self.truncated = truncated


def read_varint(data, pos, end):
    """``(value, position after it)`` of the protobuf varint at ``data[pos:end]``; the value
    is None when the varint runs past ``end``."""
    result = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7f) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    return None, pos


def _submessage_name(data, pos, end, descriptor):
    # A layer's "name" (field 1) is normally its first field; show it to locate the damage.
    field = descriptor.fields_by_number.get(1)
    if field is None or field.name != 'name' or field.type != field.TYPE_STRING:
        return ''
    tag, p = read_varint(data, pos, end)
    if tag != (1 << 3 | 2):
        return ''
    length, p = read_varint(data, p, end)
    if length is None or p + length > end or length > 200:
        return ''
    return ' %r' % data[p:p + length].decode('utf-8', 'replace')


def _walk_wire(data, descriptor, start, end, label, depth):
    """Check protobuf framing of data[start:end]; raise _WireProblem at the first fault."""
    total = len(data)
    counts = {}
    pos = start
    while pos < end:
        tag_pos = pos
        tag, pos = read_varint(data, pos, end)
        if tag is None:
            raise _WireProblem('the data ends inside a field tag at byte offset %d%s'
                               % (tag_pos, label), pos >= total)
        number, wire_type = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number) if descriptor is not None else None
        name = field.name if field is not None else 'unknown field %d' % number
        if field is not None and (field.is_repeated if hasattr(field, 'is_repeated')
                                  else field.label == field.LABEL_REPEATED):  # protobuf 7
            index = counts.get(number, 0)
            counts[number] = index + 1
            name = '%s[%d]' % (name, index)
        where = '%s%s' % (label + '.' if label else '', name)
        if number == 0:
            raise _WireProblem('invalid field number 0 at byte offset %d' % tag_pos, False)
        if wire_type == 0:
            value, pos = read_varint(data, pos, end)
            if value is None:
                raise _WireProblem('the data ends inside %s (byte offset %d)' % (where, tag_pos),
                                   pos >= total)
            continue
        if wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if pos + size > end:
                raise _WireProblem('%s at byte offset %d needs %d bytes, only %d remain'
                                   % (where, tag_pos, size, end - pos), pos + size > total)
            pos += size
            continue
        if wire_type != 2:
            raise _WireProblem('%s at byte offset %d uses wire type %d, which Caffe never writes'
                               % (where, tag_pos, wire_type), False)
        length, pos = read_varint(data, pos, end)
        if length is None:
            raise _WireProblem('the data ends inside the length of %s (byte offset %d)'
                               % (where, tag_pos), pos >= total)
        if pos + length > end:
            raise _WireProblem('%s at byte offset %d declares %d bytes but only %d remain'
                               % (where, tag_pos, length, end - pos), pos + length > total)
        sub = field.message_type if field is not None else None
        if sub is not None and depth < 64:
            _walk_wire(data, sub, pos, pos + length,
                       where + _submessage_name(data, pos, pos + length, sub), depth + 1)
        pos += length


def _decode_failure(data, message, path):
    name = message.DESCRIPTOR.full_name
    expected = '%s (%s)' % (name, _FILE_KINDS.get(name, 'binary protobuf'))
    guess = _guess_caffe_message(data, exclude=name)
    if guess:
        return ModelFileError('%s looks like %s, not a binary %s.'
                              % (display_path(path), guess, expected))
    try:
        _walk_wire(data, message.DESCRIPTOR, 0, len(data), '', 0)
    except _WireProblem as problem:
        if problem.truncated:
            return ModelFileError(
                '%s is truncated: %s. The file is %d bytes; it was probably cut short by an '
                'interrupted download, copy or snapshot. Expected a complete binary %s.'
                % (display_path(path), problem, len(data), expected))
        return ModelFileError('%s is corrupt or not a binary %s: %s.'
                              % (display_path(path), expected, problem))
    return ModelFileError('%s is not a valid binary %s: protobuf reports corrupt wire format '
                          'although the framing is intact (a different protobuf message, or '
                          'damaged content).' % (display_path(path), expected))


def parse_binary_proto(data, message, path='<bytes>'):
    """Parse binary protobuf ``data`` into ``message`` (cleared first) and return it.

    Raises :class:`ModelFileError` naming ``path`` when the data is empty, truncated,
    corrupt, of a known non-Caffe format, text, or a different Caffe message.
    """
    name = message.DESCRIPTOR.full_name
    expected = '%s (%s)' % (name, _FILE_KINDS.get(name, 'binary protobuf'))
    sniffed = sniff_content(data)
    if sniffed.kind == 'empty':
        raise ModelFileError('%s is empty (0 bytes); expected a binary %s. An empty file is '
                             'usually left by an interrupted write or download.'
                             % (display_path(path), expected))
    if sniffed.kind in ('foreign', 'hdf5'):
        hint = ''
        if sniffed.kind == 'hdf5':
            hint = (' HDF5 weights (.caffemodel.h5) are read with load_weights_file, HDF5 '
                    'solver states (.solverstate.h5) with read_solver_state; both need the '
                    '.h5 name or HDF5 detection those functions do.')
        raise ModelFileError('%s is %s, not a binary %s.%s'
                             % (display_path(path), sniffed.description, expected, hint))
    if name == 'caffe.NetParameter':
        from .nk_fields import renumber_nk_fields
        data = renumber_nk_fields(data)    # DNS/INQ fork's layer parameters (§0.2)
    try:
        message.ParseFromString(data)
    except DecodeError:
        if sniffed.kind == 'text':
            raise _text_given(path, sniffed, expected) from None
        raise _decode_failure(data, message, path) from None
    if _has_unknown_fields(message):
        # Protobuf skips unknown fields silently, so a wrong file can "parse". Real Caffe files
        # (forks included) rarely carry unknown top-level fields; check what it really is.
        if sniffed.kind == 'text':
            raise _text_given(path, sniffed, expected)
        guess = _guess_caffe_message(data, exclude=name)
        if guess:
            raise ModelFileError('%s looks like %s, not a binary %s.'
                                 % (display_path(path), guess, expected))
        if not message.ListFields():
            raise ModelFileError('%s is not a binary %s: none of its fields belong to %s.'
                                 % (display_path(path), expected, name))
        log.info('%s: ignoring fields unknown to %s', path, name)
    return message


def _text_given(path, sniffed, expected):
    return ModelFileError('%s is %s, not a binary %s. Text prototxt files are read with '
                          'read_prototxt or read_net_param.'
                          % (display_path(path), sniffed.description, expected))


def read_binary_proto(path, message):
    """Read binary protobuf file ``path`` into ``message`` and return ``message``.

    Caffe: ``ReadProtoFromBinaryFile`` (no upgrade; see :func:`read_net_param`).
    """
    name = message.DESCRIPTOR.full_name
    data = read_file_bytes(path, 'binary %s' % name)
    return parse_binary_proto(data, message, path=str(path))


def write_binary_proto(path, message):
    """Write ``message`` to ``path`` in binary wire format, atomically (temp file, fsync, rename).

    The bytes are the same as C++ Caffe writes for the same content (fields in number order).
    Caffe: ``WriteProtoToBinaryFile``.
    """
    atomic_write_bytes(path, message.SerializeToString(),
                       what='binary %s' % message.DESCRIPTOR.full_name)


# ---------------------------------------------------------------------------------------
# Net and solver definitions, upgraded.

def read_net_param(path):
    """Read a NetParameter from a text prototxt or a binary .caffemodel, upgraded.

    The format is detected from the content. The whole upgrade chain (V0, V1, data
    transformation, input fields, BatchNorm) is applied; problems that Caffe only logs are
    logged on the ``qcaffe`` logger.

    Caffe: ``ReadNetParamsFromTextFileOrDie`` / ``ReadNetParamsFromBinaryFileOrDie``.
    """
    net_param = caffe_pb2.NetParameter()
    data = read_file_bytes(path, 'net (NetParameter)')
    sniffed = sniff_content(data)
    if sniffed.kind in ('text', 'empty'):
        parse_prototxt_text(data, net_param, path=str(path))
    elif sniffed.kind == 'hdf5':
        raise ModelFileError('%s is an HDF5 weights file: it holds only weights, not a net '
                             'definition. Read the net from its prototxt and the weights with '
                             'load_weights_file.' % display_path(path))
    else:
        parse_binary_proto(data, net_param, path=str(path))
    upgrade_net_as_needed(net_param, str(path))
    return net_param


_INLINE_NETS = ('net_param', 'train_net_param')


def read_solver_param(path):
    """Read a text-format solver definition, upgraded.

    Applies the solver_type -> type upgrade and the snapshot_prefix rule (unset: the solver
    path without extension; an existing directory: ``<dir>/<solver file stem>``). Nets
    given inline (net_param, train_net_param, test_net_param) also go through the net
    upgrade, which Caffe skips for them (so there an inline V1 net silently has no layers).

    Caffe: ``ReadSolverParamsFromTextFileOrDie``.
    """
    solver_param = read_prototxt(path, caffe_pb2.SolverParameter())
    upgrade_solver_as_needed(solver_param, str(path))
    upgrade_snapshot_prefix(solver_param, path)
    for field in _INLINE_NETS:
        if solver_param.HasField(field):
            upgrade_net_as_needed(getattr(solver_param, field), '%s (%s)' % (path, field))
    for i, net in enumerate(solver_param.test_net_param):
        upgrade_net_as_needed(net, '%s (test_net_param[%d])' % (path, i))
    return solver_param


# ---------------------------------------------------------------------------------------
# Mean files

def read_mean_binaryproto(path):
    """Read a mean file (a BlobProto) as a float32 array; (1, C, H, W) for compute_image_mean output.

    Caffe: ``ReadProtoFromBinaryFileOrDie`` + ``Blob::FromProto`` in DataTransformer
    (transform_param.mean_file).
    """
    blob = read_binary_proto(path, caffe_pb2.BlobProto())
    if not len(blob.data) and not len(blob.double_data):
        raise ModelFileError('%s holds a BlobProto without any values; expected a mean image '
                             '(as written by compute_image_mean).' % display_path(path))
    try:
        return blobproto_to_array(blob)
    except BlobProtoError as e:
        raise ModelFileError('%s: %s' % (display_path(path), e)) from None
