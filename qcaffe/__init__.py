"""qcaffe: Caffe reimplemented in Python (numpy / cupy), with model compression built in.

``import qcaffe as caffe`` gives pycaffe's API (caffe.md 6.1): ``caffe.Net``,
``caffe.SGDSolver`` & co, ``caffe.get_solver``, ``caffe.set_mode_cpu``, ``caffe.TRAIN``,
``caffe.Layer`` (base of Python layers), ``caffe.io``, ``caffe.NetSpec``, ``caffe.layers`` /
``caffe.params``, ``caffe.Classifier``, ``caffe.draw``...  Existing scripts that say
``import caffe`` can use qcaffe through the opt-in shim of :mod:`qcaffe.compat`.

The names are resolved on first use (PEP 562 module ``__getattr__``), so ``import qcaffe`` and
``import qcaffe.blob`` stay cheap and do not load every layer module, and optional
dependencies (pydot for ``draw``) are only needed by what uses them.
"""
import importlib

__version__ = '0.1.0'

# name -> (module, attribute); attribute None means the module itself.
_LAZY = {
    # pycaffe.py: Net, solvers, module functions
    'Net': ('qcaffe.pycaffe', 'Net'),
    'SGDSolver': ('qcaffe.pycaffe', 'SGDSolver'),
    'NesterovSolver': ('qcaffe.pycaffe', 'NesterovSolver'),
    'AdaGradSolver': ('qcaffe.pycaffe', 'AdaGradSolver'),
    'RMSPropSolver': ('qcaffe.pycaffe', 'RMSPropSolver'),
    'AdaDeltaSolver': ('qcaffe.pycaffe', 'AdaDeltaSolver'),
    'AdamSolver': ('qcaffe.pycaffe', 'AdamSolver'),
    'get_solver': ('qcaffe.pycaffe', 'get_solver'),
    'Layer': ('qcaffe.pycaffe', 'Layer'),
    'Timer': ('qcaffe.pycaffe', 'Timer'),
    'NCCL': ('qcaffe.pycaffe', 'NCCL'),
    'set_mode_cpu': ('qcaffe.pycaffe', 'set_mode_cpu'),
    'set_mode_gpu': ('qcaffe.pycaffe', 'set_mode_gpu'),
    'set_device': ('qcaffe.pycaffe', 'set_device'),
    'set_random_seed': ('qcaffe.pycaffe', 'set_random_seed'),
    'layer_type_list': ('qcaffe.pycaffe', 'layer_type_list'),
    'init_log': ('qcaffe.pycaffe', 'init_log'),
    # the glog module qcaffe.log is itself callable: caffe.log("msg") writes an INFO line
    'log': ('qcaffe.log', None),
    'solver_count': ('qcaffe.pycaffe', 'solver_count'),
    'set_solver_count': ('qcaffe.pycaffe', 'set_solver_count'),
    'solver_rank': ('qcaffe.pycaffe', 'solver_rank'),
    'set_solver_rank': ('qcaffe.pycaffe', 'set_solver_rank'),
    'set_multiprocess': ('qcaffe.pycaffe', 'set_multiprocess'),
    'has_nccl': ('qcaffe.pycaffe', 'has_nccl'),
    # the CPU engine's threads (qcaffe.config: QCAFFE_NUM_THREADS is the default)
    'num_threads': ('qcaffe.ops.parallel', 'num_threads'),
    'set_num_threads': ('qcaffe.ops.parallel', 'set_num_threads'),
    'TRAIN': ('qcaffe.pycaffe', 'TRAIN'),
    'TEST': ('qcaffe.pycaffe', 'TEST'),
    # net_spec
    'layers': ('qcaffe.net_spec', 'layers'),
    'params': ('qcaffe.net_spec', 'params'),
    'NetSpec': ('qcaffe.net_spec', 'NetSpec'),
    'to_proto': ('qcaffe.net_spec', 'to_proto'),
    # classifier / detector
    'Classifier': ('qcaffe.classifier', 'Classifier'),
    'Detector': ('qcaffe.detector', 'Detector'),
    # submodules scripts reach as attributes (caffe.io.Transformer, caffe.proto.caffe_pb2)
    'io': ('qcaffe.io', None),
    'proto': ('qcaffe.proto', None),
    'net_spec': ('qcaffe.net_spec', None),
    'pycaffe': ('qcaffe.pycaffe', None),
    'classifier': ('qcaffe.classifier', None),
    'detector': ('qcaffe.detector', None),
    'draw': ('qcaffe.draw', None),
    'coord_map': ('qcaffe.coord_map', None),
}

__all__ = ['__version__'] + [k for k, (_, attr) in _LAZY.items() if attr is not None]


def __getattr__(name):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError("module 'qcaffe' has no attribute %r" % name) from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # cache: later lookups do not come back here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
