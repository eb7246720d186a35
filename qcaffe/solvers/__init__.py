"""Solvers: Caffe's training loop (base.py) and one short module per update rule.

Caffe: ``SolverRegistry``.  Solver classes are found by the ``type`` string of the
SolverParameter ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", and the
DNS/INQ fork's "LarsSGD") or by the legacy ``solver_type`` enum.
"""
import difflib
import os

from ..io.binary import read_solver_param
from ..io.upgrade import upgrade_solver_as_needed
from ..proto import caffe_pb2
from .action import SignalHandler  # noqa: F401
from .adadelta import AdaDeltaSolver
from .adagrad import AdaGradSolver
from .adam import AdamSolver
from .base import Solver, SolverError, TrainingDivergedError  # noqa: F401
from .lars import LarsSGDSolver
from .nesterov import NesterovSolver
from .rmsprop import RMSPropSolver
from .sgd import SGDSolver

__all__ = ['Solver', 'SolverError', 'TrainingDivergedError', 'SignalHandler', 'SGDSolver',
           'NesterovSolver', 'AdaGradSolver', 'RMSPropSolver', 'AdaDeltaSolver', 'AdamSolver',
           'LarsSGDSolver', 'SOLVERS', 'register_solver', 'solver_class', 'create_solver',
           'get_solver']

SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver, LarsSGDSolver)}
_ENUM = caffe_pb2.SolverParameter
LEGACY_TYPES = {_ENUM.SGD: 'SGD', _ENUM.NESTEROV: 'Nesterov', _ENUM.ADAGRAD: 'AdaGrad',
                _ENUM.RMSPROP: 'RMSProp', _ENUM.ADADELTA: 'AdaDelta', _ENUM.ADAM: 'Adam'}


def register_solver(cls, type_name=None):
    """Register a Solver subclass under ``type_name`` (default ``cls.type``)."""
    SOLVERS[type_name or cls.type] = cls
    return cls


def solver_class(solver_type, source=None):
    """The class for a type string or a legacy ``solver_type`` enum value."""
    if isinstance(solver_type, int) and not isinstance(solver_type, bool):
        if solver_type not in LEGACY_TYPES:
            raise SolverError('Unknown solver_type enum value %d%s; valid: %s'
                              % (solver_type, ' in %s' % source if source else '',
                                 ', '.join('%d (%s)' % kv for kv in sorted(LEGACY_TYPES.items()))))
        solver_type = LEGACY_TYPES[solver_type]
    try:
        return SOLVERS[solver_type]
    except KeyError:
        close = difflib.get_close_matches(solver_type, SOLVERS, n=3, cutoff=0.4)
        hint = (' Did you mean %s?' % ' or '.join(repr(c) for c in close)) if close else ''
        raise SolverError('Unknown solver type: %r%s (field "type").%s Valid types: %s'
                          % (solver_type, ' in %s' % source if source else '', hint,
                             ', '.join(sorted(SOLVERS)))) from None


def create_solver(param, source=None, **kwargs):
    """Caffe: ``SolverRegistry::CreateSolver`` / pycaffe ``get_solver``: the class named by
    the parameter's ``type``.  ``param``: a SolverParameter or a solver prototxt path."""
    if not isinstance(param, caffe_pb2.SolverParameter):
        source = os.fsdecode(os.fspath(param))
        param = read_solver_param(source)
    elif param.HasField('solver_type'):
        p = caffe_pb2.SolverParameter()
        p.CopyFrom(param)
        param, _ = upgrade_solver_as_needed(p, source or '<SolverParameter>')
    cls = solver_class(param.type, source)
    return cls(param, source=source, **kwargs)


get_solver = create_solver
