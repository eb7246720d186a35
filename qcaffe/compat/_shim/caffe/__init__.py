"""``import caffe`` -> qcaffe (opt-in shim; see ``python -m qcaffe.compat --help``).

This package is only importable when its parent folder is on ``sys.path`` (through
``PYTHONPATH=$(python -m qcaffe.compat path)`` or the .pth file written by
``python -m qcaffe.compat install``).  It makes ``caffe`` and every ``caffe.<sub>`` the very
same module objects as ``qcaffe`` and ``qcaffe.<sub>`` (one copy of caffe_pb2, one registry).
"""
import sys

from qcaffe.compat import install_alias as _install_alias

sys.modules[__name__] = _install_alias()
