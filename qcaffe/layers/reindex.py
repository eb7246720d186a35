"""Layers that only re-index their input: Crop and Permute.

Caffe equivalents: src/caffe/layers/crop_layer.cpp (BVLC) and permute_layer.cpp (SSD fork,
weiliu89/caffe; ``PermuteParameter.order``).  Both are one slice / transpose copy of the whole
batch; the backward is the adjoint (zero-filled scatter for Crop, inverse transpose for
Permute).
"""
import numpy as np

from ..backend import get_array_module
from .base import Layer, LayerError, register_layer
from .common import canonical_axis


@register_layer('Crop')
class CropLayer(Layer):
    """Caffe: CropLayer.  Crops bottom[0] to the shape of bottom[1] on every axis from
    ``crop_param.axis`` (default 2) on, starting at ``offset`` (none: 0; one value: all axes;
    otherwise one per cropped axis).  Gradient flows to bottom[0] only."""
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.crop_param
        self.start_axis = canonical_axis(self, bottom[0], p.axis, 'crop_param.axis')
        nd = bottom[0].num_axes
        self.offsets_param = [int(v) for v in p.offset]
        if len(self.offsets_param) > 1 and self.start_axis + len(self.offsets_param) != nd:
            raise LayerError('Layer %r (type Crop): number of crop_param.offset values (%d) '
                             'must be equal to the number of dimensions following axis %d '
                             '(%d) of bottom %s'
                             % (self.name, len(self.offsets_param), self.start_axis,
                                nd - self.start_axis, bottom[0].shape_string()))

    def reshape(self, bottom, top):
        a, b = bottom[0], bottom[1]
        if b.num_axes < a.num_axes:
            raise LayerError('Layer %r (type Crop): the reference bottom %s has fewer axes than '
                             'the cropped bottom %s' % (self.name, b.shape_string(),
                                                        a.shape_string()))
        shape, offsets = [], []
        for i in range(a.num_axes):
            off, size = 0, a.shape[i]
            if i >= self.start_axis:
                size = b.shape[i]
                if len(self.offsets_param) == 1:
                    off = self.offsets_param[0]
                elif len(self.offsets_param) > 1:
                    off = self.offsets_param[i - self.start_axis]
                if a.shape[i] - off < size:
                    raise LayerError('Layer %r (type Crop): invalid crop parameters in '
                                     'dimension: %d (bottom size %d, offset %d, crop size %d)'
                                     % (self.name, i, a.shape[i], off, size))
            shape.append(size)
            offsets.append(off)
        self.slices = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
        top[0].reshape(tuple(shape))

    def forward_impl(self, bottom, top):
        top[0].mutable_dev_data[...] = bottom[0].dev_data[self.slices]

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].mutable_dev_diff
            dx.fill(0)
            dx[self.slices] = top[0].dev_diff


@register_layer('Permute')
class PermuteLayer(Layer):
    """SSD's PermuteLayer: ``top = bottom.transpose(order)``; ``permute_param.order`` lists the
    leading new axes (each < num_axes, no duplicates); the missing axes follow in increasing
    order.  Identity orders copy."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        nd = bottom[0].num_axes
        order = []
        for o in self.layer_param.permute_param.order:
            o = int(o)
            if o >= nd:
                raise LayerError('Layer %r (type Permute): permute_param.order %d should be '
                                 'less than the input dimension %d (bottom %s)'
                                 % (self.name, o, nd, bottom[0].shape_string()))
            if o in order:
                raise LayerError('Layer %r (type Permute): there are duplicate orders in '
                                 'permute_param.order %s'
                                 % (self.name, list(self.layer_param.permute_param.order)))
            order.append(o)
        order += [i for i in range(nd) if i not in order]
        self.order = tuple(order)
        self.inverse = tuple(int(v) for v in np.argsort(order))

    def reshape(self, bottom, top):
        if bottom[0].num_axes != len(self.order):
            raise LayerError('Layer %r (type Permute): the bottom must keep %d axes, got %s'
                             % (self.name, len(self.order), bottom[0].shape_string()))
        top[0].reshape(tuple(bottom[0].shape[o] for o in self.order))

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        get_array_module(x).copyto(top[0].mutable_dev_data, x.transpose(self.order))

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].dev_diff
            get_array_module(dy).copyto(bottom[0].mutable_dev_diff, dy.transpose(self.inverse))
