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
