"""Opt-in compatibility: make a plain ``import caffe`` resolve to qcaffe.

pycaffe scripts that cannot be edited to say ``import qcaffe as caffe`` can run unchanged
once the shim folder is on ``sys.path``.  Nothing here is active by default: importing
qcaffe never touches the ``caffe`` name.  Two ways to turn it on::

    export PYTHONPATH=$(python -m qcaffe.compat path)${PYTHONPATH:+:$PYTHONPATH}
    python -m qcaffe.compat install [--user]     # writes qcaffe_caffe_compat.pth
    python -m qcaffe.compat uninstall [--user]   # removes it again

The shim is a package ``caffe`` whose import replaces itself with ``qcaffe`` and installs an
import hook that serves ``caffe.<sub>`` (``caffe.proto.caffe_pb2``, ``caffe.io``,
``caffe.draw``...) as the already-imported ``qcaffe.<sub>`` module, so both names share one
module object (a second copy of caffe_pb2 would clash in protobuf's descriptor pool).
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

ALIAS = 'caffe'
TARGET = 'qcaffe'
PTH_NAME = 'qcaffe_caffe_compat.pth'


def shim_path():
    """The folder to put on sys.path: it holds the ``caffe`` shim package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), '_shim')


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target_name):
        self.target_name = target_name

    def create_module(self, spec):
        return importlib.import_module(self.target_name)

    def exec_module(self, module):
        pass  # already executed under its qcaffe name


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``caffe.X.Y`` as the module ``qcaffe.X.Y``."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(ALIAS + '.'):
            return None
        target_name = TARGET + fullname[len(ALIAS):]
        if importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(target_name))


def install_alias():
    """Register the ``caffe.*`` import hook and return the qcaffe package (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    package = importlib.import_module(TARGET)
    sys.modules[ALIAS] = package
    return package


def _site_dir(user):
    import site
    import sysconfig
    if user:
        return site.getusersitepackages()
    return sysconfig.get_paths()['purelib']


def install(user=False, directory=None):
    """Write the .pth file that puts the shim on sys.path; returns its path.

    ``directory``: a site directory of your own instead of site-packages.
    """
    directory = directory or _site_dir(user)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, PTH_NAME)
    with open(path, 'w') as f:
        f.write(shim_path() + '\n')
    return path


def uninstall(user=False, directory=None):
    """Remove the .pth file; returns its path, or None if it was not there."""
    path = os.path.join(directory or _site_dir(user), PTH_NAME)
    if os.path.exists(path):
        os.remove(path)
        return path
    return None
