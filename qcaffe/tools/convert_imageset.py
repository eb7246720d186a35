"""``qcaffe convert_imageset [flags] ROOTFOLDER/ LISTFILE DB_NAME``.

Caffe equivalent: tools/convert_imageset.cpp.  LISTFILE lines are ``relative/path label``
(the label is the text after the last space, so paths may contain spaces); each image is
read from ROOTFOLDER + path and stored as a Datum under the key ``"%08d_%s" % (line index,
path)``: raw BGR pixels C x H x W (Caffe reads with OpenCV, whose channel order is BGR), or
with --encoded the image file bytes (``encoded = true``), re-encoded only when a resize or
an --encode_type other than the file's own format asks for it.  Images that cannot be read
are skipped with an error line, as Caffe does.  Images are read by
:mod:`qcaffe.data.images` (Pillow; bilinear resize) and records written by
:mod:`qcaffe.data.lmdb_io`.
"""
import io
import logging
import os

import numpy as np

from . import ArgumentParser, ToolError, require_file, run_main

log = logging.getLogger('qcaffe')

# Pillow format name of each --encode_type / file extension.
_FORMATS = {'jpg': 'JPEG', 'jpeg': 'JPEG', 'png': 'PNG', 'bmp': 'BMP', 'tif': 'TIFF',
            'tiff': 'TIFF', 'ppm': 'PPM', 'pgm': 'PPM', 'webp': 'WEBP'}


def _encode(pixels, fmt):
    """uint8 C x H x W BGR (or 1-channel) pixels as image file bytes (Caffe: cv::imencode)."""
    from PIL import Image
    if pixels.shape[0] == 1:
        im = Image.fromarray(pixels[0], mode='L')
    else:
        im = Image.fromarray(np.ascontiguousarray(pixels[::-1].transpose(1, 2, 0)), mode='RGB')
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def read_list_file(path):
    """[(relative path, label)] of a LISTFILE (``path label`` per line, blank lines skipped)."""
    require_file(path, 'list file')
    lines = []
    with open(path, errors='replace') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            pos = line.rfind(' ')
            try:
                if pos < 0:
                    raise ValueError
                lines.append((line[:pos], int(line[pos + 1:])))
            except ValueError:
                raise ToolError('%s:%d: expected "relative/path label" (an integer label '
                                'after the last space), got %r' % (path, number, line)) \
                    from None
    return lines


def read_datum(filename, label, height, width, gray, encoded, encode_type):
    """One image as serialized Datum bytes and its shape; None when it cannot be read."""
    from ..data.images import ImageDecodeError, read_image
    from ..data.lmdb_io import datum_bytes
    try:
        pixels = read_image(filename, height, width, is_color=not gray)
    except ImageDecodeError as e:
        log.error('%s', e)  # Caffe: "Could not open or find file ..." and the image is skipped
        return None
    if not encoded:
        return datum_bytes(pixels, label), pixels.shape
    ext = os.path.splitext(filename)[1][1:].lower()
    fmt = _FORMATS.get((encode_type or ext).lower())
    if fmt is None:
        raise ToolError('--encode_type %r: unknown image format (valid: %s)'
                        % (encode_type or ext, ', '.join(sorted(_FORMATS))))
    resized = height > 0 and width > 0
    if not resized and not gray and _FORMATS.get(ext) == fmt:
        with open(filename, 'rb') as f:  # Caffe's ReadFileToDatum: the file bytes unchanged
            data = f.read()
    else:
        data = _encode(pixels, fmt)
    return datum_bytes(label=label, encoded=data), pixels.shape


def convert_imageset(root, list_file, db_path, gray=False, shuffle=False, backend='lmdb',
                     resize_width=0, resize_height=0, check_size=False, encoded=False,
                     encode_type=''):
    """Write the LMDB; return the number of images stored."""
    if backend != 'lmdb':
        raise ToolError('--backend %s is not supported: qcaffe writes lmdb only' % backend)
    if encode_type and not encoded:
        raise ToolError('--encode_type needs --encoded')
    if os.path.exists(db_path):
        raise ToolError('output DB %r already exists; remove it first' % db_path)
    lines = read_list_file(list_file)
    if shuffle:
        log.info('Shuffling data')
        from .. import backend as qbackend
        order = qbackend.rng().permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info('A total of %d images.', len(lines))
    if not lines:
        raise ToolError('list file %r names no images' % list_file)
    from ..data.lmdb_io import key_for, write_lmdb
    size = [None]

    def records():
        count = 0
        for index, (rel, label) in enumerate(lines):
            got = read_datum(os.path.join(root, rel) if root else rel, label, resize_height,
                             resize_width, gray, encoded, encode_type)
            if got is None:
                continue
            value, shape = got
            if check_size:
                if size[0] is None:
                    size[0] = shape
                elif size[0] != shape:
                    raise ToolError('%s: image size %s differs from the first image\'s %s '
                                    '(--check_size)' % (rel, shape, size[0]))
            count += 1
            if count % 1000 == 0:
                log.info('Processed %d files.', count)
            yield key_for(index, rel), value
        if count % 1000:
            log.info('Processed %d files.', count)
        size.append(count)

    write_lmdb(db_path, records())
    return size[-1]


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Convert a set of images to the lmdb '
                            'format used as input for Caffe. LISTFILE lines are '
                            '"subfolder1/file1.JPEG 7".')
    parser.add_argument('root', help='ROOTFOLDER/ prefixed to every path of the list')
    parser.add_argument('listfile', help='list of "relative/path label" lines')
    parser.add_argument('db', help='output DB directory (must not exist)')
    parser.add_bool_flag('gray', help='When this option is on, treat images as grayscale ones')
    parser.add_bool_flag('shuffle', help='Randomly shuffle the order of images and their '
                         'labels')
    parser.add_flag('backend', default='lmdb', help='The backend {lmdb} for storing the result')
    parser.add_flag('resize_width', type=int, default=0, help='Width images are resized to')
    parser.add_flag('resize_height', type=int, default=0, help='Height images are resized to')
    parser.add_bool_flag('check_size', help='When this option is on, check that all the datum '
                         'have the same size')
    parser.add_bool_flag('encoded', help='When this option is on, the encoded image will be '
                         'save in datum')
    parser.add_flag('encode_type', default='', help="Optional: What type should we encode "
                    "the image as ('png','jpg',...).")
    return parser


def run(args):
    convert_imageset(args.root, args.listfile, args.db, gray=args.gray, shuffle=args.shuffle,
                     backend=args.backend, resize_width=args.resize_width,
                     resize_height=args.resize_height, check_size=args.check_size,
                     encoded=args.encoded, encode_type=args.encode_type)
    return 0


def main(argv=None, prog='convert_imageset', command=None):
    return run_main(build_parser, run, argv, prog)
