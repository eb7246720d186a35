"""``qcaffe train --solver S [--weights a,b | --snapshot s] [--gpu ids|all] [--iterations N]
[--sigint_effect stop|snapshot|none] [--sighup_effect ...] [--level L] [--stage a,b]``.

Caffe equivalent: ``caffe train`` (tools/caffe.cpp ``train()``) with its SignalHandler
(src/caffe/util/signal_handler.cpp).  Reads and upgrades the solver file, adds --level and
--stage to ``train_state``, chooses the device as Caffe does (``solver_mode: GPU`` in the file
counts only when --gpu is empty; without cupy or a device qcaffe then warns and trains on the
CPU instead of dying as a CPU-only Caffe build does), installs the SIGINT / SIGHUP handlers,
builds the solver, restores --snapshot ("Resuming from X") or copies --weights into the train
and test nets, and runs ``Solve``.

--iterations (not a Caffe train flag) overrides ``max_iter``: handy for short runs and tests.

Signals: :class:`qcaffe.solvers.action.SignalHandler` only records a received signal; the
solver polls its action function (Caffe's ``GetActionFunction``) once per iteration and during
testing and acts on the answer ('stop', 'snapshot' or 'none').
"""
import logging
from . import ArgumentParser, ToolError, add_level_stage_flags, gpu_name, parse_gpu_ids, require_file, require_flag
from . import run_main, select_gpu, split_list
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')

EFFECTS = ('stop', 'snapshot', 'none')


# ------------------------------------------------------------------------- parsing
def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Train or finetune a model.')
    parser.add_flag('solver', default='', help='The solver definition protocol buffer text '
                    'file.')
    parser.add_flag('weights', default='', help="Optional; the pretrained weights to "
                    "initialize finetuning, separated by ','. Cannot be set simultaneously "
                    'with snapshot.')
    parser.add_flag('snapshot', default='', help='Optional; the snapshot solver state to '
                    'resume training.')
    parser.add_flag('gpu', default='', help="Optional; run in GPU mode on given device IDs "
                    "separated by ','. Use '-gpu all' to run on all available GPUs.")
    parser.add_flag('iterations', type=int, default=None, help='Optional (qcaffe); train for '
                    'this many iterations in all instead of the solver\'s max_iter.')
    add_level_stage_flags(parser)
    parser.add_flag('sigint_effect', default='stop', help='Optional; action to take when a '
                    'SIGINT signal is received: snapshot, stop or none.')
    parser.add_flag('sighup_effect', default='snapshot', help='Optional; action to take when '
                    'a SIGHUP signal is received: snapshot, stop or none.')
    return parser


def read_solver(path):
    from ..io import read_solver_param
    require_file(path, 'solver definition (--solver)')
    return read_solver_param(path)


def choose_devices(args, solver_param):
    """caffe.cpp: --gpu, else ``solver_mode: GPU`` set explicitly in the file, else the CPU."""
    from .. import backend
    spec = args.gpu
    from_file = False
    if not spec and solver_param.HasField('solver_mode') and \
            solver_param.solver_mode == caffe_pb2.SolverParameter.GPU:
        spec = str(solver_param.device_id if solver_param.HasField('device_id') else 0)
        from_file = True
    if spec and from_file and not backend.gpu_available():
        log.warning('The solver file asks for solver_mode: GPU but no GPU is usable (cupy '
                    'not installed or no CUDA device); training on the CPU.')
        spec = ''
    gpus = parse_gpu_ids(spec)
    if not gpus:
        log.info('Use CPU.')
        backend.set_mode_cpu()
        solver_param.solver_mode = caffe_pb2.SolverParameter.CPU
        return gpus
    if len(gpus) > 1:
        # Caffe runs one solver per GPU through NCCL; qcaffe trains on one device.
        log.warning('Multi-GPU training is not supported: using GPU %d only (of %s)',
                    gpus[0], ','.join(str(g) for g in gpus))
        gpus = gpus[:1]
    log.info('Using GPUs %s', ','.join(str(g) for g in gpus))
    select_gpu(gpus[0])
    for g in gpus:
        log.info('GPU %d: %s', g, gpu_name(g))
    solver_param.device_id = gpus[0]
    solver_param.solver_mode = caffe_pb2.SolverParameter.GPU
    return gpus


def make_solver(solver_param, source):
    """Caffe: ``SolverRegistry<float>::CreateSolver(solver_param)``."""
    from ..solvers import create_solver
    return create_solver(solver_param, source=source)


def run(args):
    require_flag(args.solver, 'solver', 'a solver definition to train')
    if args.snapshot and args.weights:
        raise ToolError('Give a snapshot to resume training or weights to finetune but not '
                        'both.')
    solver_param = read_solver(args.solver)
    solver_param.train_state.level = args.level
    solver_param.train_state.stage.extend(split_list(args.stage))
    if args.iterations is not None:
        if args.iterations < 0:
            raise ToolError('--iterations must be >= 0, got %d' % args.iterations)
        solver_param.max_iter = args.iterations
    if args.snapshot:
        require_file(args.snapshot, 'solver state (--snapshot)')
        del solver_param.weights[:]
    elif args.weights:
        del solver_param.weights[:]
        for path in split_list(args.weights):
            require_file(path, 'weights file (--weights)')
            solver_param.weights.append(path)
    choose_devices(args, solver_param)

    for name in ('sigint_effect', 'sighup_effect'):
        if getattr(args, name) not in EFFECTS:
            raise ToolError('--%s must be one of %s, got %r'
                            % (name, ', '.join(EFFECTS), getattr(args, name)))
    from ..solvers import SignalHandler
    with SignalHandler(args.sigint_effect, args.sighup_effect) as handler:
        # Caffe builds the solver (and probes the snapshot prefix) before training starts.
        solver = make_solver(solver_param, args.solver)
        solver.set_action_function(handler.get_action_function())
        if args.snapshot:
            log.info('Resuming from %s', args.snapshot)
            solver.restore(args.snapshot)
        log.info('Starting Optimization')
        solver.solve()
    log.info('Optimization Done.')
    return 0


def main(argv=None, prog='train', command=None):
    return run_main(build_parser, run, argv, prog)
