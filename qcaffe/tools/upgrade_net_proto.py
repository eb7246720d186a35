"""``qcaffe upgrade_net_proto_text | upgrade_net_proto_binary | upgrade_solver_proto_text IN OUT``.

Caffe equivalent: tools/upgrade_net_proto_text.cpp, upgrade_net_proto_binary.cpp and
upgrade_solver_proto_text.cpp.  Read IN without upgrading it, apply the upgrade chain of
:mod:`qcaffe.io.upgrade` (caffe.md 1.4) when it is needed (otherwise log "File already in
latest proto format"), write OUT in the same encoding.  The exit status is 1 when the
upgrade was not fully compatible (OUT is still written, as Caffe does).
"""
import functools
import logging

from . import ArgumentParser, require_file, run_main
from ..io import upgrade
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')

# command -> (message class, binary?, description)
KINDS = {
    'upgrade_net_proto_text': (caffe_pb2.NetParameter, False, 'NetParameter text proto'),
    'upgrade_net_proto_binary': (caffe_pb2.NetParameter, True, 'NetParameter binary proto'),
    'upgrade_solver_proto_text': (caffe_pb2.SolverParameter, False,
                                  'SolverParameter text proto'),
}


def _read(path, message, binary):
    if binary:
        from ..io.binary import read_binary_proto
        return read_binary_proto(path, message)
    from ..io.prototxt import read_prototxt
    return read_prototxt(path, message)


def _write(path, message, binary):
    if binary:
        from ..io.binary import write_binary_proto
        write_binary_proto(path, message)
    else:
        from ..io.prototxt import write_prototxt
        write_prototxt(path, message)


def upgrade_file(command, in_path, out_path):
    """Upgrade ``in_path`` into ``out_path``; return True when fully compatible."""
    cls, binary, what = KINDS[command]
    require_file(in_path, 'input file')
    message = _read(in_path, cls(), binary)
    success = True
    if cls is caffe_pb2.SolverParameter:
        needed = upgrade.solver_needs_type_upgrade(message)
        if needed:
            message, success = upgrade.upgrade_solver_as_needed(message, in_path)
    else:
        needed = upgrade.net_needs_upgrade(message)
        if needed:
            message, success = upgrade.upgrade_net_as_needed(message, in_path)
    if not needed:
        log.error('File already in latest proto format: %s', in_path)
    elif not success:
        log.error('Encountered error(s) while upgrading %s; see details above.', in_path)
    _write(out_path, message, binary)
    log.info('Wrote upgraded %s to %s', what, out_path)
    return success


def build_parser(prog, command):
    parser = ArgumentParser(prog=prog, description='Upgrade a %s written in a deprecated '
                            'format to the current format.' % KINDS[command][2])
    parser.add_argument('input', help='file to upgrade')
    parser.add_argument('output', help='where to write the upgraded file')
    return parser


def run(args, command):
    return 0 if upgrade_file(command, args.input, args.output) else 1


def main(argv=None, prog=None, command='upgrade_net_proto_text'):
    return run_main(functools.partial(build_parser, command=command),
                    functools.partial(run, command=command), argv, prog or command)
