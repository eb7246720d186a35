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

Several solvers (Caffe's multi-GPU training, :mod:`qcaffe.distributed`): under
``mpiexec -n N`` every process is one solver (CPU, or with --gpu the device of its rank on its
machine); ``--gpu 0,1`` / ``--gpu all`` outside mpiexec starts one process per GPU through
mpiexec.  Rank 0 tests, logs and snapshots; an error on any rank ends them all.

Signals: :class:`qcaffe.solvers.action.SignalHandler` only records a received signal; the
solver polls its action function (Caffe's ``GetActionFunction``) once per iteration and during
testing and acts on the answer ('stop', 'snapshot' or 'none').
"""
import logging
import sys

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


def requested_gpus(args, solver_param):
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
    return parse_gpu_ids(spec)


def use_device(gpus, solver_param, local_rank=0, local_size=1):
    """Select this process's device: ``gpus[local_rank]`` (the CPU when ``gpus`` is empty)."""
    from .. import backend
    from ..distributed.launch import local_device
    if not gpus:
        log.info('Use CPU.')
        backend.set_mode_cpu()
        solver_param.solver_mode = caffe_pb2.SolverParameter.CPU
        return None
    log.info('Using GPUs %s', ','.join(str(g) for g in gpus))
    device = local_device(gpus, local_rank, local_size)
    select_gpu(device)
    log.info('GPU %d: %s', device, gpu_name(device))
    solver_param.device_id = device
    solver_param.solver_mode = caffe_pb2.SolverParameter.GPU
    return device


def make_solver(solver_param, source):
    """Caffe: ``SolverRegistry<float>::CreateSolver(solver_param)``."""
    from ..solvers import create_solver
    return create_solver(solver_param, source=source)


def run(args, argv=(), prog='train'):
    require_flag(args.solver, 'solver', 'a solver definition to train')
    if args.snapshot and args.weights:
        raise ToolError('Give a snapshot to resume training or weights to finetune but not '
                        'both.')
    for name in ('sigint_effect', 'sighup_effect'):
        if getattr(args, name) not in EFFECTS:
            raise ToolError('--%s must be one of %s, got %r'
                            % (name, ', '.join(EFFECTS), getattr(args, name)))
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
    gpus = requested_gpus(args, solver_param)

    from ..distributed import launch
    world = launch.world()      # the ranks of mpiexec, None outside it
    if world is None and len(gpus) > 1:
        # Caffe runs one solver thread per GPU; qcaffe one process per GPU, as MPI ranks
        return launch.relaunch(argv, len(gpus))
    if world is None or world.size == 1:
        if len(gpus) > 1:
            log.warning('mpiexec started one rank: training on GPU %d only (of %s)', gpus[0],
                        ','.join(str(g) for g in gpus))
        use_device(gpus[:1], solver_param)
        return train(args, solver_param)
    with launch.abort_on_error(world, prog):
        from .. import backend
        from ..distributed import quiet_non_root
        backend.set_solver_count(world.size)
        backend.set_solver_rank(world.rank)
        backend.set_multiprocess(True)
        quiet_non_root(world.rank)
        local_rank, local_size = world.local()
        log.info('Data-parallel training: %d solvers (MPI ranks), %d on this machine, %d '
                 'CPU thread(s) each', world.size, local_size, launch.share_cores(local_size))
        device = use_device(gpus, solver_param, local_rank, local_size)
        return train(args, solver_param, launch.communicator(world, device is not None))


def train(args, solver_param, comm=None):
    """Caffe: the solver part of ``train()`` (+ ``NCCL::Run`` when ``comm`` joins ranks)."""
    from ..solvers import SignalHandler
    with SignalHandler(args.sigint_effect, args.sighup_effect) as handler:
        # Caffe builds the solver (and probes the snapshot prefix) before training starts.
        solver = make_solver(solver_param, args.solver)
        solver.set_action_function(handler.get_action_function())
        if args.snapshot:
            log.info('Resuming from %s', args.snapshot)
            solver.restore(args.snapshot)
        parallel = None
        if comm is not None:
            from ..distributed import DataParallel
            parallel = DataParallel(solver, comm)
            parallel.bcast()
            parallel.attach()
        log.info('Starting Optimization')
        if solver.is_root:
            solver.solve()
        else:   # Caffe's worker solvers only Step; the root tests and snapshots
            solver.step(solver.param.max_iter - solver.iter)
        if parallel is not None:
            parallel.check_replicas()
    log.info('Optimization Done.')
    return 0


def main(argv=None, prog='train', command=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(build_parser, lambda args: run(args, argv, prog), argv, prog)
