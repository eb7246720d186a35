"""Command-line tools: ``qcaffe <command>`` and the data utilities.

Caffe equivalent: tools/caffe.cpp (train, test, time, device_query), the data tools
(convert_mnist_data, convert_imageset, compute_image_mean, upgrade_*) and the Python
scripts of tools/extra (parse_log, plot_training_log).  One module per command; this module
holds what they share:

* gflags-compatible flag spelling (``-solver x``, ``--solver x``, ``--solver=x``,
  ``-shuffle``/``-noshuffle``/``--shuffle=false``) on top of argparse;
* one error path: every bad input raises :class:`qcaffe.io.errors.QcaffeError` (usage
  mistakes raise :class:`ToolError`), which :func:`run_main` prints as one clear message on
  stderr and turns into exit status 1, instead of Caffe's ``CHECK`` abort with a stack dump;
* the ``-gpu`` / ``-stage`` flag parsing of caffe.cpp and the device selection that goes
  with it.
"""
import argparse
import logging
import os
import sys

import numpy as np

from ..io.errors import QcaffeError

log = logging.getLogger('qcaffe')

_TRUE = ('true', 't', 'yes', 'y', '1')
_FALSE = ('false', 'f', 'no', 'n', '0')


class ToolError(QcaffeError):
    """A command line that cannot be carried out (missing flag, bad value, missing file)."""


# ---------------------------------------------------------------------------- flags
def normalize_flags(argv, bool_flags=()):
    """Rewrite gflags spellings into the ones argparse understands.

    * ``-name`` / ``-name=value`` (single dash, long name) become ``--name`` / ``--name=value``;
      a negative number such as ``-1`` is left alone (it is a value, not a flag);
    * for the boolean flags in ``bool_flags``: ``--name=true`` becomes ``--name`` and
      ``--name=false`` becomes ``--noname`` (gflags' negated form, which the parsers built by
      :func:`add_bool_flag` accept as well);
    * everything after ``--`` is passed through untouched.
    """
    out = []
    argv = list(argv)
    for i, tok in enumerate(argv):
        if tok == '--':
            out.extend(argv[i:])
            break
        if (len(tok) > 2 and tok[0] == '-' and tok[1] != '-'
                and (tok[1].isalpha() or tok[1] == '_')):
            tok = '-' + tok
        if tok.startswith('--') and '=' in tok:
            name, value = tok[2:].split('=', 1)
            if name in bool_flags:
                if value.lower() in _TRUE:
                    tok = '--' + name
                elif value.lower() in _FALSE:
                    tok = '--no' + name
                else:
                    raise ToolError('flag --%s is a boolean: give --%s, --no%s or --%s=true|false '
                                    '(got %r)' % (name, name, name, name, value))
        out.append(tok)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse with gflags spellings and errors raised as :class:`ToolError` (exit status 1).

    argparse's own ``error`` prints the usage and exits with status 2; the qcaffe tools
    report every bad input the same way (one message, status 1), so errors are raised and
    :func:`run_main` prints them.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('allow_abbrev', False)  # gflags never accepts abbreviated names
        super().__init__(*args, **kwargs)
        self.bool_flags = set()

    def add_flag(self, name, **kwargs):
        """A flag accepted as ``--name`` (and ``-name`` through :func:`normalize_flags`)."""
        return self.add_argument('--' + name, **kwargs)

    def add_bool_flag(self, name, help=None, default=False):
        """A gflags boolean: ``--name``, ``--noname``, ``--name=true|false``."""
        self.add_argument('--' + name, dest=name, action='store_true', default=default,
                          help=help)
        self.add_argument('--no' + name, dest=name, action='store_false',
                          help=argparse.SUPPRESS)
        self.bool_flags.add(name)

    def flag_names(self):
        names = []
        for action in self._actions:
            if action.help == argparse.SUPPRESS:
                continue
            names.extend(s for s in action.option_strings if s.startswith('--'))
        return names

    def error(self, message):
        if message.startswith('unrecognized arguments'):
            message += '; valid flags: %s' % ', '.join(self.flag_names())
        raise ToolError('%s (run "%s --help" for usage)' % (message, self.prog))

    def parse_flags(self, argv):
        return self.parse_args(normalize_flags(argv, self.bool_flags))


# ------------------------------------------------------------------------- running
def add_level_stage_flags(parser):
    """caffe.cpp's -level and -stage, the NetState flags of train, test and time."""
    parser.add_flag('level', type=int, default=0, help='Optional; network level.')
    parser.add_flag('stage', default='', help="Optional; network stages (not to be confused "
                    "with phase), separated by ','.")


def setup_logging():
    """glog-format logging on stderr, as Caffe's tools do (``FLAGS_alsologtostderr``)."""
    # 'from ..log import' (not 'from .. import log'): qcaffe.log is pycaffe's caffe.log()
    # function at package level, the glog module only as a submodule.
    from ..log import setup_logging as glog_setup
    glog_setup(logging.INFO)  # follows the current sys.stderr (see qcaffe.log._Handler)


def run_main(build_parser, run, argv, prog):
    """Parse ``argv`` with ``build_parser(prog)``, call ``run(args)``; return the exit status.

    Every :class:`QcaffeError` (and an unavailable GPU backend) becomes one message on stderr
    and status 1; Ctrl-C outside training (which handles SIGINT itself) gives status 130.
    """
    from ..backend import BackendError
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(prog)
        args = parser.parse_flags(argv)
        setup_logging()
        # Float overflow / NaN are reported the Caffe way (the solver stops on a non-finite
        # loss and names the layer), not as numpy RuntimeWarnings in the middle of the log.
        with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
            status = run(args)
    except (QcaffeError, BackendError) as e:
        sys.stderr.flush()
        print('%s: error: %s' % (prog, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('%s: interrupted' % prog, file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


def require_flag(value, flag, what):
    """Caffe's ``CHECK_GT(FLAGS_x.size(), 0) << "Need ..."`` as a clear error."""
    if not value:
        raise ToolError('--%s is required: %s' % (flag, what))
    return value


def require_file(path, what):
    """Fail early, with the file and what it should be, when an input file is missing."""
    from ..io.files import display_path
    if not os.path.exists(path):
        raise ToolError('%s %s does not exist' % (what, display_path(path)))
    if os.path.isdir(path):
        raise ToolError('%s %s is a directory, not a file' % (what, display_path(path)))
    return path


def split_list(value):
    """Caffe: ``boost::split(v, s, is_any_of(","))`` (so "" gives one empty string)."""
    return value.split(',')


# -------------------------------------------------------------------------- devices
def parse_gpu_ids(spec):
    """Caffe: ``get_gpus``: "" -> no GPU, "all" -> every device, else comma-separated ids."""
    if not spec:
        return []
    from .. import backend
    if spec == 'all':
        cp = backend.cupy_module()
        return list(range(cp.cuda.runtime.getDeviceCount()))
    ids = []
    for s in spec.split(','):
        try:
            ids.append(int(s))
        except ValueError:
            raise ToolError("--gpu expects comma-separated device ids (e.g. 0 or 0,1) or 'all', "
                            'got %r' % spec) from None
    return ids


def gpu_name(device_id):
    from .. import backend
    props = backend.cupy_module().cuda.runtime.getDeviceProperties(device_id)
    name = props.get('name', b'?')
    return name.decode() if isinstance(name, bytes) else str(name)


def use_single_device(gpus):
    """Device choice of caffe.cpp ``test``/``time``: first GPU of the list, else the CPU."""
    from .. import backend
    while len(gpus) > 1:
        log.info('Not using GPU #%d for single-GPU function', gpus.pop())
    if gpus:
        log.info('Use GPU with device ID %d', gpus[0])
        select_gpu(gpus[0])
        log.info('GPU device name: %s', gpu_name(gpus[0]))
    else:
        log.info('Use CPU.')
        backend.set_mode_cpu()


def select_gpu(device_id):
    """Caffe: ``Caffe::SetDevice(id); Caffe::set_mode(Caffe::GPU)`` with a clear error."""
    from .. import backend
    cp = backend.cupy_module()
    count = cp.cuda.runtime.getDeviceCount()
    if not 0 <= device_id < count:
        raise ToolError('--gpu %d: no such device (this machine has %d GPU%s: ids 0-%d)'
                        % (device_id, count, '' if count == 1 else 's', count - 1)
                        if count else '--gpu %d: no CUDA device found' % device_id)
    backend.set_device(device_id)
    backend.set_mode_gpu()


def synchronize():
    """Wait for queued GPU work (Caffe's GPU Timer stops on a CUDA event); no-op on CPU."""
    from .. import backend
    if backend.is_gpu():
        backend.cupy_module().cuda.get_current_stream().synchronize()
