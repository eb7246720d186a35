"""pycaffe's ``caffe.io``: BlobProto/Datum <-> arrays, image loading, ``Transformer``.

Caffe equivalent: python/caffe/io.py, with the same functions and results, adapted to current
libraries:

* NumPy 2: ``tobytes`` / ``frombuffer`` instead of the removed ``tostring`` / binary
  ``fromstring``.
* Images are read and resized with Pillow (an optional dependency, imported on first use with a
  clear error when missing) instead of scikit-image/scipy, so ``import qcaffe`` needs neither.
  ``load_image`` returns what skimage gave (float32 in [0, 1], H x W x 3 RGB or H x W x 1,
  grey converted with skimage's weights 0.2125 R + 0.7154 G + 0.0721 B).  ``resize_image``
  interpolates each channel with Pillow (``interp_order`` 0 nearest, 1 bilinear, 2-3 bicubic,
  4-5 Lanczos); Pillow filters when it shrinks, so downsized images are smoother than
  skimage's unfiltered resize.
* ``Transformer.preprocess`` never modifies the caller's array (upstream scales a float32
  input in place when no resize is needed).
"""
import numpy as np

from .io.blobproto import array_to_blobproto, blobproto_to_array
from .proto import caffe_pb2

__all__ = ['blobproto_to_array', 'array_to_blobproto', 'arraylist_to_blobprotovector_str',
           'blobprotovector_str_to_arraylist', 'array_to_datum', 'datum_to_array',
           'Transformer', 'load_image', 'resize_image', 'oversample']


# --------------------------------------------------------------------- protos
# blobproto_to_array / array_to_blobproto are the model-file ones (qcaffe.io.blobproto): same
# shape rules as pycaffe (legacy dims -> 4-D, else shape.dim, ValueError on a count mismatch),
# values as float32 like Caffe's Blob<float> (pycaffe gave float64 copies of the same values).


def arraylist_to_blobproto_vector(arraylist):
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec


def arraylist_to_blobprotovector_str(arraylist):
    """Serialized BlobProtoVector (bytes) holding ``arraylist``."""
    return arraylist_to_blobproto_vector(arraylist).SerializeToString()


def blobprotovector_str_to_arraylist(data):
    """Inverse of ``arraylist_to_blobprotovector_str``: a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(bytes(data))
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum from a C x H x W array: uint8 as raw ``data`` bytes, else ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError('Incorrect array shape.')
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """A Datum's pixels as C x H x W: uint8 from ``data`` if set, else float from float_data."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        # copy: frombuffer over bytes is read-only, upstream's fromstring was writable
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# --------------------------------------------------------------------- images
def _pil_image():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError('caffe.io image functions need Pillow (pip install pillow): %s' % e)
    return Image


_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # skimage rgb2gray


def _pil_to_float(im):
    """Pillow image -> float32 array in [0, 1] (skimage ``img_as_float``), H x W [x C]."""
    if im.mode == 'P':
        im = im.convert('RGBA' if 'transparency' in im.info else 'RGB')
    elif im.mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        im = im.convert('RGB')
    arr = np.asarray(im)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind in 'ui':
        if im.mode.startswith('I;16') or (im.mode == 'I' and arr.max(initial=0) <= 65535):
            scale = 65535.0  # 16-bit images; Pillow may widen them to int32 ('I')
        else:
            scale = float(np.iinfo(arr.dtype).max)
        return arr.astype(np.float32) / np.float32(scale)
    return arr.astype(np.float32)


def load_image(filename, color=True):
    """Load an image as float32 in [0, 1]: H x W x 3 (RGB) or, with color=False, H x W x 1.

    Grey images are tiled to 3 channels when ``color`` is True; alpha is dropped.
    """
    Image = _pil_image()
    with Image.open(filename) as im:
        im.load()
        img = _pil_to_float(im)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[:, :, :img.shape[2] - 1]           # drop alpha (LA -> L, RGBA -> RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not color and img.ndim == 3:
        img = img[:, :, :3].dot(_GREY_WEIGHTS).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _pil_resample(Image, interp_order):
    order = int(interp_order)
    R = getattr(Image, 'Resampling', Image)
    if order <= 0:
        return R.NEAREST
    if order == 1:
        return R.BILINEAR
    if order <= 3:
        return R.BICUBIC
    return R.LANCZOS


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` (new_h, new_w): float32 new_h x new_w x K.

    A constant image is simply filled; otherwise each channel is interpolated
    (``interp_order``: 0 nearest, 1 bilinear, 2-3 bicubic, 4+ Lanczos).
    """
    im = np.asarray(im)
    new_h, new_w = int(new_dims[0]), int(new_dims[1])
    channels = im.shape[-1]
    im_min, im_max = (im.min(), im.max()) if im.size else (0, 0)
    if im_max <= im_min:
        return np.full((new_h, new_w, channels), im_min, dtype=np.float32)
    if im.shape[:2] == (new_h, new_w):
        return im.astype(np.float32)
    Image = _pil_image()
    resample = _pil_resample(Image, interp_order)
    out = np.empty((new_h, new_w, channels), dtype=np.float32)
    src = im.astype(np.float32)
    for k in range(channels):  # Pillow resizes one float ('F') plane at a time
        plane = Image.fromarray(np.ascontiguousarray(src[:, :, k]))  # float32 -> mode 'F'
        out[:, :, k] = np.asarray(plane.resize((new_w, new_h), resample))
    return out


def oversample(images, crop_dims):
    """10 crops per image: 4 corners and the centre, then their horizontal mirrors.

    ``images``: iterable of H x W x K arrays; returns (10 * N) x h x w x K float32.
    """
    images = list(images)
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in (0, im_shape[0] - crop_dims[0]):
        for j in (0, im_shape[1] - crop_dims[1]):
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0,
                                                              crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # the last 5 are the mirrors
    return crops


# ---------------------------------------------------------------- Transformer
class Transformer(object):
    """Turn images into net inputs and back (caffe.io.Transformer).

    ``inputs``: {input blob name: its shape (N, C, H, W)}.  ``preprocess`` applies, in order:
    resize to (H, W), transpose, channel swap, raw scale, mean subtraction, input scale.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception('{} is not one of the net inputs: {}'.format(in_, self.inputs))

    def preprocess(self, in_, data):
        """An image (H' x W' x K) as a C x H x W float32 net input."""
        self.__check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)  # a copy: the caller's array is kept
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Invert ``preprocess`` (except the resize): a net input back to an image."""
        self.__check_input(in_)
        decaf_in = np.array(data).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order taking the image (H, W, K) to the input (K, H, W), e.g. (2, 0, 1)."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception('Transpose order needs to have the same number of '
                            'dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order, e.g. (2, 1, 0) for RGB -> BGR (applied after the transpose)."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception('Channel swap needs to have the same number of '
                            'dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the raw image by ``scale`` (e.g. 255 for [0, 1] images and [0, 255]
        models), before mean subtraction."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: per channel (length C) or elementwise ((C,) H, W; resized to the
        input's H, W when it differs)."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
                mean = mean.reshape(ms)
            if len(ms) != 3:
                raise ValueError('Mean shape invalid')
            in_shape = tuple(self.inputs[in_][1:])
            if ms != in_shape:
                mean = resize_image(mean.transpose((1, 2, 0)),
                                    in_shape[1:]).transpose((2, 0, 1))
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the mean-subtracted input by ``scale`` (e.g. 0.017 for some models)."""
        self.__check_input(in_)
        self.input_scale[in_] = scale
