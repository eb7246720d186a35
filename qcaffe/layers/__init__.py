"""Caffe's layer library: one module per family, one class per layer type.

Importing this package registers every layer type (each module uses ``@register_layer``).
"""
import importlib
import pkgutil

from .base import Layer, LayerError, register_layer, create_layer, layer_type_list, layer_class

for _info in pkgutil.iter_modules(__path__):
    if _info.name != 'base':
        importlib.import_module('%s.%s' % (__name__, _info.name))

__all__ = ['Layer', 'LayerError', 'register_layer', 'create_layer', 'layer_type_list',
           'layer_class']


def __getattr__(name):
    # pycaffe's ``caffe.layers`` is net_spec's layer factory (``L.Convolution(...)``), but
    # importing this subpackage binds the attribute ``qcaffe.layers`` to it, whichever was
    # there first; so layer-type names (CamelCase) missing here come from the factory.
    if name[:1].isupper():
        from ..net_spec import layers as factory
        return getattr(factory, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
