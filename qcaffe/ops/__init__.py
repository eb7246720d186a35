"""Shared numeric kernels used by several layers (numpy and cupy through the same code).

* :mod:`qcaffe.ops.im2col`: N-D im2col / col2im (convolution, deconvolution, Im2col layer,
  pooling windows), in channels-first (Caffe's) and channels-last layouts.
"""
from .im2col import (ConvGeometry, as_strided, col2im, im2col, kernel_taps, padded,
                     split_axes, tap_slices, window_view)

__all__ = ['ConvGeometry', 'as_strided', 'col2im', 'im2col', 'kernel_taps', 'padded',
           'split_axes', 'tap_slices', 'window_view']
