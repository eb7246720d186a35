"""pycaffe's ``caffe.Classifier``: image classification with a TEST-phase net.

Caffe equivalent: python/caffe/classifier.py (same constructor, same ``predict``).
"""
import numpy as np

from . import pycaffe_io
from .pycaffe import TEST, Net


def input_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The :class:`qcaffe.io.Transformer` of ``net``'s first input for H x W x K images.

    Shared by Classifier and Detector (upstream repeats these lines in both constructors):
    transpose (2, 0, 1), then each of mean / input_scale / raw_scale / channel_swap that is
    not None.
    """
    in_ = net.inputs[0]
    transformer = pycaffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """A :class:`qcaffe.pycaffe.Net` (TEST phase) that preprocesses images and predicts.

    ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` configure a
    :class:`qcaffe.io.Transformer` for the first input, with transpose (2, 0, 1) (images are
    H x W x K).  ``image_dims`` is the size images are resized to before cropping (default:
    the input's H x W).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if not image_dims:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores (N x classes) for an iterable of H x W x K images.

        ``oversample``: average the predictions of 10 crops per image (4 corners, centre and
        their mirrors); otherwise use the centre crop only.
        """
        inputs = list(inputs)
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                           inputs[0].shape[2]), dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = pycaffe_io.resize_image(in_, self.image_dims)
        if oversample:
            input_ = pycaffe_io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0,
                                                                self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_name = self.inputs[0]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(in_name, in_)
        out = self.forward_all(**{in_name: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
