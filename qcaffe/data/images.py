"""Image decoding for ImageData and encoded Datums, with pillow as an optional dependency.

Caffe equivalent: ``ReadImageToCVMat`` / ``DecodeDatumToCVMat`` (src/caffe/util/io.cpp, which
use OpenCV).  Results follow OpenCV's conventions so trained models see what they saw in
Caffe: uint8, channels first (C, H, W), colour images in BGR order, grayscale with one channel.
Resizing uses bilinear interpolation (OpenCV's INTER_LINEAR default); pillow and OpenCV
interpolate slightly differently, so resized pixels can differ by a few levels.
"""
import io

import numpy as np

from ..io.errors import QcaffeError


class ImageDecodeError(QcaffeError):
    """An image file or encoded Datum that cannot be decoded (or pillow is missing)."""


def _pil_image(what, layer=None):
    try:
        from PIL import Image
    except ImportError:
        raise ImageDecodeError('%sdecoding %s needs pillow, which is not installed '
                               '(pip install pillow, or pip install qcaffe[images])'
                               % ('Layer %r: ' % layer if layer else '', what))
    return Image


def _to_array(im, is_color, new_height=0, new_width=0):
    from PIL import Image
    if is_color is None:  # keep what the file has (Caffe: DecodeDatumToCVMatNative)
        is_color = im.mode not in ('L', 'I;16', 'I', 'F', '1', 'LA')
    im = im.convert('RGB' if is_color else 'L')
    if new_height > 0 and new_width > 0:
        im = im.resize((int(new_width), int(new_height)), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    if is_color:
        return np.ascontiguousarray(a[:, :, ::-1].transpose(2, 0, 1))  # HWC RGB -> CHW BGR
    return a[None]


def decode_image_bytes(data, is_color=None, new_height=0, new_width=0, what='image',
                       layer=None):
    """Decode PNG/JPEG/... bytes to uint8 (C, H, W) BGR.  ``is_color`` None keeps the file's."""
    Image = _pil_image(what, layer)
    try:
        im = Image.open(io.BytesIO(bytes(data)))
        im.load()
    except Exception as e:
        raise ImageDecodeError('%scannot decode %s (%d bytes): %s'
                               % ('Layer %r: ' % layer if layer else '', what, len(data), e))
    return _to_array(im, is_color, new_height, new_width)


def read_image(path, new_height=0, new_width=0, is_color=True, layer=None):
    """Caffe: ``ReadImageToCVMat(filename, height, width, is_color)`` -> uint8 (C, H, W)."""
    Image = _pil_image('image %r' % path, layer)
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise ImageDecodeError('%scould not open or find file %r'
                               % ('Layer %r: ' % layer if layer else '', path))
    except Exception as e:
        raise ImageDecodeError('%scannot decode image %r: %s'
                               % ('Layer %r: ' % layer if layer else '', path, e))
    return _to_array(im, is_color, new_height, new_width)
