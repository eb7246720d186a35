"""Solver action requests (Caffe: ``SolverAction`` and ``SignalHandler``, util/signal_handler.cpp).

The solver never installs signal handlers itself; it polls a *request function* between
iterations (and between test batches).  The CLI installs :class:`SignalHandler` and passes
its :meth:`SignalHandler.get_action_function` to ``Solver.set_action_function``, which is how
``caffe train --sigint_effect stop --sighup_effect snapshot`` works.
"""
import signal

NONE = 'none'
STOP = 'stop'
SNAPSHOT = 'snapshot'
ACTIONS = (NONE, STOP, SNAPSHOT)

# caffe_pb2 has no SolverAction enum; Caffe's C++ enum values, for callers that pass ints.
_BY_INT = {0: NONE, 1: STOP, 2: SNAPSHOT}


def normalize(action):
    """'stop' / 'snapshot' / 'none' from a string, Caffe's enum int, or None."""
    if action is None:
        return NONE
    if isinstance(action, int):
        return _BY_INT.get(action, NONE)
    action = str(action).lower()
    if action not in ACTIONS:
        from ..io.errors import QcaffeError
        raise QcaffeError('Invalid solver action %r; valid: %s' % (action, ', '.join(ACTIONS)))
    return action


class SignalHandler(object):
    """Caffe: ``caffe::SignalHandler(sigint_effect, sighup_effect)``.

    While installed (a context manager, or :meth:`install` / :meth:`uninstall`), SIGINT and
    SIGHUP only set a flag; the solver asks :meth:`check_for_signals` (via the function from
    :meth:`get_action_function`) what to do at the next safe point.
    """

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT):
        self.sigint_effect = normalize(sigint_effect)
        self.sighup_effect = normalize(sighup_effect)
        self._got_sigint = False
        self._got_sighup = False
        self._previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            self._got_sigint = True
        else:
            self._got_sighup = True

    def install(self):
        for name in ('SIGINT', 'SIGHUP'):
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}

    __enter__ = install

    def __exit__(self, *exc):
        self.uninstall()

    def check_for_signals(self):
        """Caffe: ``SignalHandler::CheckForSignals``: SIGHUP wins only if no SIGINT came."""
        if self._got_sighup:
            self._got_sighup = False
            return self.sighup_effect
        if self._got_sigint:
            self._got_sigint = False
            return self.sigint_effect
        return NONE

    def get_action_function(self):
        return self.check_for_signals
