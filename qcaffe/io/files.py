"""File access shared by the readers and writers of qcaffe.io.

* :func:`read_file_bytes`: read a whole file, turning OS errors into messages that name the
  file (and, for relative paths, the working directory, since Caffe resolves every path
  against the CWD and not against the prototxt that mentions it).
* :func:`sniff_content`: recognise what a file really is from its first bytes, so that a
  PNG, an HDF5 file, a Git LFS pointer or an HTML error page given as a model is reported as
  such instead of as "wire format was corrupt".
* :func:`atomic_output_path` / :func:`atomic_write_bytes`: write through a temporary file in
  the destination directory and ``os.replace`` it, so an interrupted snapshot never leaves a
  truncated .caffemodel behind (Caffe writes in place and can);
  :func:`clean_orphaned_temporaries` removes the temporary files of a writer that was killed.
"""
import contextlib
import os
import re
import secrets
import stat

from .errors import ModelFileError, ModelFileNotFoundError

# The HDF5 superblock signature; it may sit at byte 0 or after a user block at 512, 1024,
# 2048, ... bytes (HDF5 spec "Format Signature"), which is what H5Fis_hdf5 checks.
HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'

# (prefix, description) of formats people mistake for Caffe files. Order matters only
# where prefixes overlap.
_SIGNATURES = (
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF87a', 'a GIF image'),
    (b'GIF89a', 'a GIF image'),
    (b'\x93NUMPY', 'a NumPy .npy array file'),
    (b'PK\x03\x04', 'a ZIP archive (for example a PyTorch .pt/.pth checkpoint or a NumPy .npz)'),
    (b'\x1f\x8b', 'a gzip-compressed file (decompress it first)'),
    (b'BZh', 'a bzip2-compressed file (decompress it first)'),
    (b'\xfd7zXZ\x00', 'an xz-compressed file (decompress it first)'),
    (b'version https://git-lfs', 'a Git LFS pointer file, not the real content (run "git lfs pull")'),
)

# Control bytes that never occur in a text prototxt but occur within the first few bytes of
# any binary protobuf (field tags 0x08/0x10/0x12/0x18/0x1a and short length prefixes).
_BINARY_BYTES = bytes(set(range(0x20)) - set(b'\t\n\v\f\r')) + b'\x7f'
_TEXT_SNIFF_BYTES = 65536


def display_path(path):
    """``path`` as a string for messages (Caffe paths are relative to the CWD, so say so)."""
    path = os.fsdecode(os.fspath(path))
    if os.path.isabs(path):
        return "'%s'" % path
    return "'%s' (relative to the current directory %s)" % (path, os.getcwd())


def read_file_bytes(path, what):
    """Return the content of ``path``; ``what`` names the expected kind for error messages.

    Caffe: the ``open()`` + ``CHECK_NE(fd, -1) << "File not found: "`` of ReadProtoFrom*File.
    """
    try:
        with open(path, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        raise ModelFileNotFoundError(
            '%s file %s does not exist' % (what, display_path(path))) from None
    except IsADirectoryError:
        raise ModelFileError(
            '%s file %s is a directory, not a file' % (what, display_path(path))) from None
    except OSError as e:
        raise ModelFileError('cannot read %s file %s: %s'
                             % (what, display_path(path), e.strerror or e)) from None


def is_hdf5(data):
    """True if ``data`` (a file's bytes, or at least its head) starts an HDF5 file.

    Caffe: ``H5Fis_hdf5`` (checks byte 0 and every power of two from 512 on).
    """
    if data[:8] == HDF5_SIGNATURE:
        return True
    offset = 512
    while offset + 8 <= len(data):
        if data[offset:offset + 8] == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def file_is_hdf5(path):
    """:func:`is_hdf5` on a file, reading only the superblock candidates."""
    try:
        with open(path, 'rb') as f:
            if f.read(8) == HDF5_SIGNATURE:
                return True
            size = os.fstat(f.fileno()).st_size
            offset = 512
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return True
                offset *= 2
    except OSError:
        # Let the real reader report the problem with its own wording.
        return False
    return False


def looks_like_text(data):
    """True if ``data`` has no control bytes in its head, i.e. it cannot be a binary protobuf."""
    head = data[:_TEXT_SNIFF_BYTES]
    # translate() with a delete table drops the control bytes; unchanged means none were there.
    return len(head) > 0 and head.translate(None, _BINARY_BYTES) == head


def _first_line(data):
    line = data[:_TEXT_SNIFF_BYTES].lstrip().split(b'\n', 1)[0].strip()
    text = line.decode('utf-8', 'replace')
    return text if len(text) <= 60 else text[:57] + '...'


class Sniffed:
    """What a file looks like: ``kind`` and a human ``description`` for messages.

    ``kind`` is one of ``'empty'``, ``'text'``, ``'binary'`` (unrecognised binary: maybe a
    protobuf), ``'hdf5'`` or ``'foreign'`` (a known non-Caffe format: image, archive, HTML,
    Git LFS pointer ...).
    """
    __slots__ = ('kind', 'description')

    def __init__(self, kind, description):
        self.kind = kind
        self.description = description

    def __repr__(self):
        return 'Sniffed(%r, %r)' % (self.kind, self.description)


def sniff_content(data):
    """Recognise what ``data`` (a file's bytes) is, for choosing a parser and wording errors."""
    for prefix, description in _SIGNATURES:
        if data.startswith(prefix):
            return Sniffed('foreign', description)
    if is_hdf5(data):
        return Sniffed('hdf5', 'an HDF5 file')
    if not data:
        return Sniffed('empty', 'an empty file (0 bytes)')
    if looks_like_text(data):
        head = data[:512].lstrip().lower()
        if head.startswith((b'<!doctype html', b'<html')):
            return Sniffed('foreign', 'an HTML page (a failed download?)')
        return Sniffed('text', 'a text file (first line: "%s")' % _first_line(data))
    return Sniffed('binary', 'a binary file')


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary files of atomic writes are ".<name>.<writer pid>-<random hex>.tmp" beside <name>.
TEMP_SUFFIX = '.tmp'
_TEMP_NAME = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$')


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # PermissionError: it exists, owned by someone else
        return True
    return True


def clean_orphaned_temporaries(directory, name_prefix):
    """Remove the temporary files an interrupted atomic write left in ``directory`` for
    outputs whose names start with ``name_prefix``; return ``(removed, kept)`` paths.

    A temporary file whose writer (the pid in its name) is no longer running is an orphan
    of a killed process and is removed; one whose writer still runs (another training with
    the same snapshot prefix, or a reused pid) is kept and returned in ``kept``.
    """
    try:
        names = os.listdir(directory or '.')
    except OSError:
        return [], []
    removed, kept = [], []
    for entry in sorted(names):
        m = _TEMP_NAME.match(entry)
        if not m or not m.group('name').startswith(name_prefix):
            continue
        path = os.path.join(directory, entry)
        if _process_alive(int(m.group('pid'))):
            kept.append(path)
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            kept.append(path)
    return removed, kept


@contextlib.contextmanager
def atomic_output_path(path, what='output'):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the complete file to the yielded path (by any means, e.g. h5py). On
    normal exit the temporary file is fsync'ed and renamed over ``path``; on an exception it
    is removed and ``path`` is left untouched. A symlink at ``path`` is written through, as
    an in-place write would.
    """
    path = os.fsdecode(os.fspath(path))
    if os.path.islink(path):
        path = os.path.realpath(path)
    directory = os.path.dirname(path) or '.'
    if not os.path.isdir(directory):
        raise ModelFileError('cannot write %s file %s: directory %s does not exist'
                             % (what, display_path(path), display_path(directory)))
    if os.path.isdir(path):
        raise ModelFileError('cannot write %s file %s: it is a directory'
                             % (what, display_path(path)))
    tmp = os.path.join(directory, '.%s.%d-%s%s' % (os.path.basename(path), os.getpid(),
                                                   secrets.token_hex(4), TEMP_SUFFIX))
    try:
        # os.open with 0o666 lets the umask decide the mode, as for a file created in place.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        if os.path.exists(path):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    except OSError as e:
        raise ModelFileError('cannot write %s file %s: %s'
                             % (what, display_path(path), e.strerror or e)) from None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path, data, what='output'):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_output_path(path, what) as tmp:
        try:
            with open(tmp, 'wb') as f:
                f.write(data)
        except OSError as e:
            raise ModelFileError('cannot write %s file %s: %s'
                                 % (what, display_path(path), e.strerror or e)) from None
