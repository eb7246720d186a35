"""Text-format protobuf files (prototxt): nets, solvers, anything Caffe reads as text.

Caffe: ``ReadProtoFromTextFile`` / ``WriteProtoToTextFile`` (src/caffe/util/io.cpp), which use
``google::protobuf::TextFormat::Parse`` / ``Print``. ``text_format.Parse`` is the Python
equivalent with the same strictness (a singular field given twice is an error, unlike the
lenient ``text_format.Merge``).
"""
import logging
import re

from google.protobuf import text_format

from .errors import ModelFileError, ProtoParseError
from .files import atomic_write_bytes, display_path, read_file_bytes, sniff_content

log = logging.getLogger('qcaffe')


def _decode(data, path):
    # C++ reads bytes; Python's parser needs str. UTF-8 (BOM tolerated) covers every real
    # prototxt; Latin-1 never fails, so a stray accented comment does not stop the read.
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        log.warning('%s is not valid UTF-8 (byte 0x%02x at offset %d); reading it as Latin-1',
                    path, data[e.start], e.start)
        return data.decode('latin-1')


def _caret_excerpt(text, line, column):
    """The offending source line with a caret under ``column`` (both 1-based)."""
    lines = text.splitlines()
    if not lines or line is None or line < 1:
        return ''
    line = min(line, len(lines))
    source = lines[line - 1]
    # Keep tabs in the caret's indentation so it lines up however tabs are displayed.
    pad = ''.join(c if c == '\t' else ' ' for c in source[:max(column - 1, 0)])
    gutter = '%6d | ' % line
    return '\n%s%s\n%s%s^' % (gutter, source, ' ' * (len(gutter) - 2) + '| ', pad)


def _enum_choices(detail, message):
    """' Valid choices: A, B' when protobuf rejected an enum value name, else ''."""
    m = re.search(r'Enum type "([\w.]+)" has no value named', detail)
    if not m:
        return ''
    try:
        enum = message.DESCRIPTOR.file.pool.FindEnumTypeByName(m.group(1))
    except KeyError:
        return ''
    return ' Valid choices: %s.' % ', '.join(v.name for v in enum.values)


# Fields that published prototxts use but no proto defines: what to write instead.
_FIELD_HINTS = {
    'trust_coef': "the DNS/INQ fork's LarsSGD example uses it, but its proto never defined "
                  "it; LarsSGD's trust coefficient is local_gw_ratio",
}


def _parse_error(error, text, message, path):
    line, column = error.GetLine(), error.GetColumn()
    detail = str(error)
    if line is not None:
        # str(ParseError) is "LINE:COL : detail"; the location is restated below.
        prefix = '%d:%d : ' % (line, column)
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        lines = text.splitlines()
        if 0 < line <= len(lines):
            # Some details start with "'<the raw line>': "; the excerpt already shows it.
            quoted = "'%s': " % lines[line - 1]
            if detail.startswith(quoted):
                detail = detail[len(quoted):]
    detail += _enum_choices(detail, message)
    for field, hint in _FIELD_HINTS.items():
        if 'no field named "%s"' % field in detail:
            detail += ' (%s)' % hint
    where = path if line is None else '%s:%d:%d' % (path, line, column)
    # "file:line:column: ..." is the compiler convention editors and terminals link to.
    msg = ('%s: error parsing text-format %s: %s%s'
           % (where, message.DESCRIPTOR.full_name, detail, _caret_excerpt(text, line, column)))
    return ProtoParseError(msg, path=path, line=line, column=column)


def parse_prototxt_text(text, message, path='<string>'):
    """Parse text-format ``text`` (str or bytes) into ``message`` and return ``message``.

    ``message`` is cleared first, as ``TextFormat::Parse`` does. ``path`` only names the
    source in error messages. Raises :class:`ProtoParseError` (with ``path``, ``line``,
    ``column``) saying what protobuf expected at that position.

    Caffe: ``google::protobuf::TextFormat::Parse``.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = _decode(bytes(text), path)
    message.Clear()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise _parse_error(e, text, message, path) from None
    return message


def read_prototxt(path, message):
    """Read the text-format file ``path`` into ``message`` and return ``message``.

    A missing file, a directory, or a file that is obviously not text (an image, an HDF5 or
    binary protobuf file, an HTML page, a Git LFS pointer) raises :class:`ModelFileError`
    naming the file and what it looks like; a syntax error raises :class:`ProtoParseError`.
    No upgrade is applied (see ``read_net_param`` / ``read_solver_param`` for that).

    Caffe: ``ReadProtoFromTextFile``.
    """
    name = message.DESCRIPTOR.full_name
    data = read_file_bytes(path, 'text-format %s' % name)
    sniffed = sniff_content(data)
    if sniffed.kind not in ('text', 'empty'):
        hint = ''
        if sniffed.kind in ('binary', 'hdf5'):
            hint = (' Binary .caffemodel / .binaryproto / .solverstate files are read with '
                    'read_binary_proto or read_net_param, HDF5 weights with load_weights_file.')
        raise ModelFileError('%s is %s, not a text-format %s (prototxt).%s'
                             % (display_path(path), sniffed.description, name, hint))
    return parse_prototxt_text(data, message, path=str(path))


def format_prototxt(message):
    """``message`` in protobuf text format (Caffe: ``TextFormat::Print``)."""
    return text_format.MessageToString(message)


def write_prototxt(path, message):
    """Write ``message`` to ``path`` in text format, atomically.

    Caffe: ``WriteProtoToTextFile`` (which writes in place; here a temporary file in the same
    directory is renamed over ``path`` so a crash never leaves half a file).
    """
    atomic_write_bytes(path, format_prototxt(message).encode('utf-8'),
                       what='text-format %s' % message.DESCRIPTOR.full_name)
