"""pycaffe's ``caffe.Detector``: R-CNN style window classification with a TEST-phase net.

Caffe equivalent: python/caffe/detector.py (same constructor and methods).  Images are loaded
with :func:`qcaffe.io.load_image`; ``detect_selective_search`` needs the external
``selective_search_ijcv_with_python`` package, as upstream.
"""
import numpy as np

from . import pycaffe_io
from .classifier import input_transformer
from .pycaffe import TEST, Net


class Detector(Net):
    """A :class:`qcaffe.pycaffe.Net` (TEST phase) that classifies image windows.

    ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` configure the Transformer of
    the first input (transpose (2, 0, 1)); ``context_pad`` pads each window with that many
    pixels of image context (R-CNN), filled with the mean outside the image.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows: ``[(image filename, [(ymin, xmin, ymax, xmax), ...]), ...]`` ->
        a list of {'window', 'prediction', 'filename'} dicts, in input order."""
        window_inputs = []
        for image_fname, windows in images_windows:
            image = pycaffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + self.blobs[in_].data.shape[2:], dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({'window': window, 'prediction': predictions[ix],
                                   'filename': image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Selective Search proposals (external package) classified by ``detect_windows``."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise ImportError('detect_selective_search needs the selective_search_ijcv_with_'
                              'python package (and MATLAB), as in Caffe; use detect_windows '
                              'with your own windows instead')
        image_fnames = [str(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd='selective_search_rcnn')
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of ``im``, with context padding, warped to the
        net's input size."""
        crop = im[window[0]:window[2], window[1]:window[3]]
        if self.context_pad:
            box = np.array(window, dtype=float)
            crop_size = self.blobs[self.inputs[0]].width  # assumes square
            scale = crop_size / (1. * crop_size - self.context_pad * 2)
            half_h = (box[2] - box[0] + 1) / 2.
            half_w = (box[3] - box[1] + 1) / 2.
            center = (box[0] + half_h, box[1] + half_w)
            scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
            box = np.round(np.tile(center, 2) + scaled_dims)
            full_h = box[2] - box[0] + 1
            full_w = box[3] - box[1] + 1
            scale_h = crop_size / full_h
            scale_w = crop_size / full_w
            pad_y = round(max(0, -box[0]) * scale_h)   # amount out-of-bounds
            pad_x = round(max(0, -box[1]) * scale_w)
            im_h, im_w = im.shape[:2]
            box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
            clip_h = box[2] - box[0] + 1
            clip_w = box[3] - box[1] + 1
            crop_h = round(clip_h * scale_h)
            crop_w = round(clip_w * scale_w)
            if pad_y + crop_h > crop_size:
                crop_h = crop_size - pad_y
            if pad_x + crop_w > crop_size:
                crop_w = crop_size - pad_x
            context_crop = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
            context_crop = pycaffe_io.resize_image(context_crop, (int(crop_h), int(crop_w)))
            crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
            crop[int(pad_y):int(pad_y + crop_h), int(pad_x):int(pad_x + crop_w)] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set up context padding: the mean to fill with, in image (H x W x K) layout."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            transpose = self.transformer.transpose.get(in_)
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                inv_transpose = [transpose[t] for t in transpose]
                crop_mean = mean.copy().transpose(inv_transpose)
                if channel_order is not None:
                    channel_order_inverse = [channel_order.index(i)
                                             for i in range(crop_mean.shape[2])]
                    crop_mean = crop_mean[:, :, channel_order_inverse]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
