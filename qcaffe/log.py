"""glog-style logging for qcaffe, so Caffe's log parsers read our logs.

Caffe logs through Google glog; tools/extra/parse_log.py and parse_log.sh rely on its line
prefix (caffe.md 4.5, trap 15)::

    I1125 13:39:22.381027 25210 solver.cpp:204] Iteration 100, lr = 0.00992565

i.e. severity letter, MMDD, HH:MM:SS.microseconds, thread id right-aligned in 5 columns,
``file:line]`` and the message.  Every qcaffe module logs to the ``'qcaffe'`` logger (or a
child of it); :func:`setup_logging` attaches a handler with :class:`GlogFormatter`.

Numbers in messages follow C++ iostream defaults (6 significant digits, ``%g``); use
:func:`fmt`.
"""
import logging
import math
import sys
import threading
import time

LOGGER_NAME = 'qcaffe'

# glog has INFO, WARNING, ERROR, FATAL; DEBUG (glog's VLOG) prints as INFO.
_SEVERITY = ((logging.CRITICAL, 'F'), (logging.ERROR, 'E'), (logging.WARNING, 'W'))


def severity_letter(levelno):
    for level, letter in _SEVERITY:
        if levelno >= level:
            return letter
    return 'I'


class GlogFormatter(logging.Formatter):
    """Caffe: glog's ``LogMessage`` prefix ``<S><MMDD> <HH:MM:SS.uuuuuu> <tid> <file>:<line>] ``.

    The prefix goes on the first line only, as glog does for multi-line messages.  The thread
    id is the OS thread id modulo 100000 (glog prints the whole id; the modulo keeps the
    5-column layout position-based parsers such as parse_log.sh assume).
    """

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = message + '\n' + record.exc_text
        return self.prefix(record) + message

    @staticmethod
    def prefix(record):
        t = time.localtime(record.created)
        usec = int((record.created - math.floor(record.created)) * 1e6)
        tid = getattr(record, 'thread_native_id', None)
        if tid is None:
            tid = _native_id(record)
        return '%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] ' % (
            severity_letter(record.levelno), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
            t.tm_sec, usec, tid % 100000, record.filename, record.lineno)


def _native_id(record):
    # logging records the Python thread ident; the OS id is what glog prints.  Records are
    # formatted in the emitting thread by the default StreamHandler, so the current native id
    # is the emitter's, except for records formatted elsewhere (QueueHandler...).
    if record.thread == threading.get_ident():
        return threading.get_native_id()
    return record.thread or 0


class _Handler(logging.StreamHandler):
    """Marker class so setup_logging can replace its own handler idempotently.

    Given no stream, or ``sys.stderr`` itself, it writes to the *current* ``sys.stderr``
    (looked up at each record), so a replaced stderr (pytest's capture, Jupyter) is never
    written to after it is gone, e.g. by a data layer's prefetch thread logging later.
    """

    def __init__(self, stream=None):
        self._follow_stderr = stream is None or stream is sys.stderr
        super().__init__(sys.stderr if stream is None else stream)

    def emit(self, record):
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def setup_logging(level=logging.INFO, stream=None):
    """Send the ``'qcaffe'`` logger's records to ``stream`` (default stderr) in glog format.

    Caffe's tool logs everything to stderr (``alsologtostderr``).  Calling this again replaces
    the handler it installed before (other handlers are left alone).  Returns the logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if isinstance(h, _Handler):
            logger.removeHandler(h)
    handler = _Handler(stream)
    handler.setFormatter(GlogFormatter())
    logger.addHandler(handler)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get_logger(name=None):
    """The ``'qcaffe'`` logger or its child ``'qcaffe.<name>'``."""
    return logging.getLogger(LOGGER_NAME if not name else LOGGER_NAME + '.' + name)


def fmt(x):
    """A number as C++ ``ostream << x`` prints it by default (caffe.md 4.5).

    Integers print in full; floats with 6 significant digits in ``%g`` style (``0.00992565``,
    ``1e-05``, ``2.32``).  Non-finite values print as glibc does (``inf``, ``-inf``, ``nan``,
    ``-nan``).
    """
    if isinstance(x, bool):
        return '1' if x else '0'
    if isinstance(x, int) or (hasattr(x, 'dtype') and x.dtype.kind in 'iu'):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return '-nan' if math.copysign(1.0, x) < 0 else 'nan'
    return '%g' % x


# ------------------------------------------------------------------ pycaffe's caffe.log
def log_info(message):
    """pycaffe ``caffe.log(str)``: one INFO line (Caffe: ``LOG(INFO) << str``)."""
    get_logger().info('%s', message, stacklevel=3)  # file:line of the caller


class _CallableModule(type(sys)):
    """This module, callable: ``caffe.log("msg")`` is pycaffe's log function while
    ``qcaffe.log.setup_logging`` stays reachable.  Both need the package attribute ``log``,
    and importing this submodule rebinds that attribute to the module, so the module itself
    must be the function."""

    def __call__(self, message):
        log_info(message)


sys.modules[__name__].__class__ = _CallableModule
