"""``qcaffe time --model M [--iterations 50] [--phase TRAIN|TEST] [--gpu id] [--level] [--stage]``.

Caffe equivalent: ``caffe time`` (tools/caffe.cpp ``time()``).  Builds the net (TRAIN phase
unless --phase says otherwise; -weights is ignored, as in Caffe), runs one warm-up forward
("Initial loss") and backward, then times ``iterations`` rounds of every layer's forward in
order and every layer's backward in reverse order (each layer's backward is called whether
or not the net needs it, as Caffe does), and logs per-layer averages and the totals in
Caffe's exact wording.  On GPU the queue is drained before every clock reading, which is
what Caffe's event-based GPU timer measures.
"""
import logging
import time as _time

from . import ArgumentParser, ToolError, require_flag, run_main, synchronize
from .test import add_net_flags, net_from_flags
from ..log import fmt
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')

PHASES = {'TRAIN': caffe_pb2.TRAIN, 'TEST': caffe_pb2.TEST}


def _now_us():
    synchronize()
    return _time.perf_counter() * 1e6


def benchmark(net, iterations):
    """Time ``iterations`` forward/backward rounds layer by layer.

    Returns ``(forward_us_per_layer, backward_us_per_layer, forward_us, backward_us,
    total_us)``, all sums over the iterations.
    """
    layers, bottoms, tops = net.layers, net.bottom_vecs, net.top_vecs
    need = net.bottom_need_backward
    n = len(layers)
    forward_per_layer = [0.0] * n
    backward_per_layer = [0.0] * n
    forward_time = backward_time = 0.0
    total_start = _now_us()
    for j in range(iterations):
        iter_start = forward_start = _now_us()
        for i in range(n):
            t = _now_us()
            layers[i].forward(bottoms[i], tops[i])
            forward_per_layer[i] += _now_us() - t
        forward_time += _now_us() - forward_start
        backward_start = _now_us()
        for i in range(n - 1, -1, -1):
            t = _now_us()
            layers[i].backward(tops[i], need[i], bottoms[i])
            backward_per_layer[i] += _now_us() - t
        backward_time += _now_us() - backward_start
        log.info('Iteration: %d forward-backward time: %s ms.', j + 1,
                 fmt((_now_us() - iter_start) / 1000.0))
    total = _now_us() - total_start
    return forward_per_layer, backward_per_layer, forward_time, backward_time, total


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Benchmark the execution time of a model, '
                            'layer by layer.')
    add_net_flags(parser)
    parser.add_flag('phase', default='', help='Optional; network phase (TRAIN or TEST). '
                    'Default TRAIN.')
    parser.add_flag('weights', default='', help='Ignored (accepted for compatibility with '
                    "Caffe's flags; time runs on the initial weights).")
    return parser


def run(args):
    require_flag(args.model, 'model', 'a model definition to time')
    if args.phase and args.phase not in PHASES:
        raise ToolError('--phase must be "TRAIN" or "TEST", got %r' % args.phase)
    net = net_from_flags(args, PHASES[args.phase or 'TRAIN'])

    # A clean forward and backward first, so buffers exist and timings are stable.
    log.info('Performing Forward')
    _, initial_loss = net.forward_prefilled()
    log.info('Initial loss: %s', fmt(initial_loss))
    log.info('Performing Backward')
    net.backward_all()

    log.info('*** Benchmark begins ***')
    log.info('Testing for %d iterations.', args.iterations)
    fwd, bwd, fwd_total, bwd_total, total = benchmark(net, args.iterations)
    n = args.iterations
    log.info('Average time per layer: ')
    for name, f, b in zip(net.layer_names, fwd, bwd):
        log.info('%10s\tforward: %s ms.', name, fmt(f / 1000.0 / n))
        log.info('%10s\tbackward: %s ms.', name, fmt(b / 1000.0 / n))
    log.info('Average Forward pass: %s ms.', fmt(fwd_total / 1000.0 / n))
    log.info('Average Backward pass: %s ms.', fmt(bwd_total / 1000.0 / n))
    log.info('Average Forward-Backward: %s ms.', fmt(total / 1000.0 / n))
    log.info('Total Time: %s ms.', fmt(total / 1000.0))
    log.info('*** Benchmark ends ***')
    return 0


def main(argv=None, prog='time', command=None):
    return run_main(build_parser, run, argv, prog)
