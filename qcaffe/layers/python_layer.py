"""The ``Python`` layer type: layers written in Python by the user (pycaffe's Python layers).

Caffe equivalent: ``PythonLayer`` (include/caffe/layers/python_layer.hpp).  A prototxt layer

    layer { type: "Python" python_param { module: "m" layer: "Cls" param_str: "..." } }

imports module ``m`` (the normal ``sys.path`` lookup; the working directory is tried as well,
as ``caffe train`` run from a folder of layer modules expects), builds ``m.Cls(layer_param)``
(the class normally derives from ``caffe.Layer`` = ``qcaffe.pycaffe.Layer``), sets its
``param_str`` and ``phase`` and calls, with lists of Blobs whose ``data``/``diff`` are numpy
arrays: ``setup(bottom, top)`` then ``reshape(bottom, top)`` at net construction,
``reshape`` + ``forward(bottom, top)`` on every forward and
``backward(top, propagate_down, bottom)``.  Learnable blobs added by the user with
``self.blobs.add_blob(...)`` are this layer's blobs (solver updates, snapshots, copy_from).

Exceptions raised by the user code propagate with their own type (pycaffe's test suite
expects the RuntimeError of a failing ``setup`` out of the Net constructor); a note naming the
layer, module and class is attached.  ``net.layers[i]`` is this wrapper; attributes it does
not have are looked up on the user's object, so ``net.layers[i].my_attribute`` works as in
pycaffe.  In GPU mode the user code still sees host (numpy) arrays.
"""
import importlib
import os
import sys

from .base import Layer, LayerError, register_layer


def _import_module(name, layer):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name.split('.')[0] and e.name != name:
            raise  # the module exists but imports something missing: show that error
        cwd = os.getcwd()
        if cwd not in sys.path and '' not in sys.path:
            sys.path.append(cwd)
            try:
                return importlib.import_module(name)
            except ModuleNotFoundError:
                pass
        raise LayerError('Python layer %r: cannot import module %r (python_param.module) '
                         'from sys.path or the working directory %r; put its folder on '
                         'PYTHONPATH' % (layer, name, cwd)) from None


def _note(exc, text):
    if hasattr(exc, 'add_note'):
        exc.add_note(text)


@register_layer('Python')
class PythonLayer(Layer):
    """Caffe: ``PythonLayer``: delegates to the user's Python object (``self.py``)."""
    # Caffe calls the user's reshape before every forward.
    reshape_every_forward = True

    def __init__(self, layer_param):
        super().__init__(layer_param)
        p = layer_param.python_param
        if not p.module or not p.layer:
            raise LayerError('Python layer %r: python_param.module and python_param.layer are '
                             'both required (got module=%r layer=%r)'
                             % (layer_param.name, p.module, p.layer))
        module = _import_module(p.module, layer_param.name)
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise LayerError('Python layer %r: module %r (%s) has no class %r '
                             '(python_param.layer); it defines %s'
                             % (layer_param.name, p.module, getattr(module, '__file__', '?'),
                                p.layer, ', '.join(n for n in dir(module)
                                                   if isinstance(getattr(module, n), type))
                                or 'no classes'))
        self._where = 'Python layer %r (%s.%s)' % (layer_param.name, p.module, p.layer)
        try:
            py = cls(layer_param)
        except Exception as e:
            _note(e, 'while constructing ' + self._where)
            raise
        self.py = py
        # The user's blobs are the layer's blobs: one list object for both.
        if getattr(py, 'blobs', None) is None:
            py.blobs = self.blobs
        self.blobs = py.blobs

    def __getattr__(self, name):
        # Only called for attributes the wrapper lacks: pycaffe's net.layers[i].<user attr>.
        if name == 'py' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.py, name)

    def _call(self, method, *args):
        try:
            return getattr(self.py, method)(*args)
        except Exception as e:
            _note(e, 'in %s.%s()' % (self._where, method))
            raise

    def layer_setup(self, bottom, top):
        p = self.layer_param.python_param
        self.py.param_str = p.param_str
        self.py.phase = self.layer_param.phase
        self._call('setup', bottom, top)
        self.blobs = self.py.blobs  # the user may have replaced the list in setup

    def reshape(self, bottom, top):
        self._call('reshape', bottom, top)

    def forward_impl(self, bottom, top):
        self._call('forward', bottom, top)

    def backward_impl(self, top, propagate_down, bottom):
        self._call('backward', top, list(propagate_down), bottom)
