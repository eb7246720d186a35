"""DepthwiseConvolution: the depthwise convolution layer type of the MobileNet Caffe forks.

Fork equivalent: ``DepthwiseConvolutionLayer`` (yonghenglh6/DepthwiseConvolution, type string
"DepthwiseConvolution"), a ConvolutionLayer with its own GPU kernel for ``group`` = channels;
its CPU path is Caffe's grouped convolution.  Label-free compression quantizes it like a
Convolution (compression.md 4(b), 4(g)#5), so its prototxts must load.
"""
from .base import register_layer
from .vision import ConvolutionLayer, _err


@register_layer('DepthwiseConvolution')
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """A Convolution whose ``convolution_param.group`` equals the input channels (one filter
    group per channel, weights (num_output, 1, kh, kw)); same math as Caffe's grouped
    Convolution, which computes it here."""

    def layer_setup(self, bottom, top):
        ConvolutionLayer.layer_setup(self, bottom, top)
        if self.group != self.channels:
            raise _err(self, 'a depthwise convolution needs convolution_param.group equal to '
                       'the input channels (%d), got group %d', self.channels, self.group)
