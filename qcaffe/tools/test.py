"""``qcaffe test --model M --weights W [--iterations 50] [--gpu id] [--level] [--stage]``.

Caffe equivalent: ``caffe test`` (tools/caffe.cpp ``test()``).  Builds the net in the TEST
phase, loads the weights, runs ``iterations`` forward passes and logs, per batch and per
output element, "Batch i, <blob> = <value>", then "Loss: <mean loss>" and for every output
element "<blob> = <mean>" plus " (* w = w*mean loss)" for loss outputs.  Scores are summed in
float32, as Caffe's ``vector<float>`` does.  Beyond Caffe: a warning names the first layer
whose output holds NaN/inf (and weights that do), since an Accuracy computed from NaN scores
reads 1 in Caffe and here.
"""
import logging

import numpy as np

from . import (ArgumentParser, ToolError, add_level_stage_flags, parse_gpu_ids, require_file,
               require_flag, run_main, split_list, use_single_device)
from ..backend import to_host
from ..log import fmt
from ..proto import caffe_pb2

log = logging.getLogger('qcaffe')


def add_net_flags(parser):
    """Flags shared by test and time (caffe.cpp's -model, -gpu, -level, -stage, -iterations)."""
    parser.add_flag('model', default='', help='The model definition protocol buffer text file.')
    parser.add_flag('gpu', default='', help="Optional; run in GPU mode on the given device ID "
                    "(comma-separated ids use the first one; 'all' uses device 0).")
    parser.add_flag('iterations', type=int, default=50, help='The number of iterations to run.')
    add_level_stage_flags(parser)


def load_net(model, phase, level, stage):
    """Caffe: ``Net<float>(FLAGS_model, phase, FLAGS_level, &stages)`` (prototxt upgraded)."""
    from ..io import read_net_param
    from ..net import Net
    require_file(model, 'model definition (--model)')
    param = read_net_param(model)
    return Net.from_param(param, phase=phase, level=level, stages=split_list(stage),
                          source=model)


def net_from_flags(args, phase):
    """What test and time do once their own flags are checked: -iterations must be at least
    1, -gpu picks the one device, then the -model net in ``phase`` with -level / -stage."""
    if args.iterations < 1:
        raise ToolError('--iterations must be at least 1, got %d' % args.iterations)
    use_single_device(parse_gpu_ids(args.gpu))
    return load_net(args.model, phase, args.level, args.stage)


def load_weights(net, weights):
    """Caffe: ``CopyTrainedLayersFrom`` for each comma-separated weights file (a warning
    names the file and layer when the weights hold NaN/inf)."""
    for path in split_list(weights):
        require_file(path, 'weights file (--weights)')
        net.copy_from(path)
        found = net.first_non_finite(tops=False)
        if found is not None:
            i, blobs, _ = found
            log.warning('Weights file %s: layer %r (type %s) parameter blob(s) %s hold NaN or '
                        'infinite values', path, net.layer_names[i], net.layers[i].type, blobs)


def warn_non_finite(net, batch):
    """Say where NaN/inf first appears, once per run: the outputs may still look fine (Caffe's
    Accuracy, which qcaffe follows, counts a NaN score as a correct prediction).  True if
    it warned."""
    found = net.first_non_finite(params=False)
    if found is None:
        return False
    i, _, top = found
    log.warning('Batch %d: layer %r (type %s) outputs NaN or infinite values in top %r; the '
                'scores of this run are not meaningful (Caffe\'s Accuracy counts a NaN score '
                'as a correct prediction, so accuracy can read 1)', batch, net.layer_names[i],
                net.layers[i].type, top)
    return True


def output_elements(net):
    """(blob name, loss weight, flat host values) of every output blob, in output order."""
    out = []
    for bid in net.output_blob_ids:
        values = to_host(net.blobs_list[bid].dev_data).ravel()
        out.append((net.blob_names[bid], net.blob_loss_weights_list[bid], values))
    return out


def score(net, iterations):
    """Run ``iterations`` forwards; return (mean loss, [(name, loss weight, mean score)])."""
    names, weights, sums = [], [], None
    loss = np.float32(0)
    warned = False
    for i in range(iterations):
        _, iter_loss = net.forward_prefilled()
        warned = warned or warn_non_finite(net, i)
        loss += np.float32(iter_loss)
        outputs = output_elements(net)
        flat = np.concatenate([v for _, _, v in outputs]).astype(np.float32)
        if sums is None:
            sums = flat.copy()
            for name, w, values in outputs:
                names += [name] * values.size
                weights += [w] * values.size
        else:
            sums += flat
        for name, value in zip(names, flat):
            log.info('Batch %d, %s = %s', i, name, fmt(value))
    loss = loss / np.float32(iterations)
    means = [] if sums is None else sums / np.float32(iterations)
    return float(loss), list(zip(names, weights, (float(m) for m in means)))


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Score a model: run --iterations TEST-phase '
                            'forward passes and report the mean of every net output.')
    add_net_flags(parser)
    parser.add_flag('weights', default='', help="The trained weights (.caffemodel or "
                    ".caffemodel.h5); several files separated by ','.")
    return parser


def run(args):
    require_flag(args.model, 'model', 'a model definition to score')
    require_flag(args.weights, 'weights', 'model weights to score')
    net = net_from_flags(args, caffe_pb2.TEST)
    load_weights(net, args.weights)
    log.info('Running for %d iterations.', args.iterations)
    loss, results = score(net, args.iterations)
    log.info('Loss: %s', fmt(loss))
    for name, weight, mean in results:
        suffix = ''
        if weight:
            suffix = ' (* %s = %s loss)' % (fmt(weight), fmt(np.float32(weight) *
                                                            np.float32(mean)))
        log.info('%s = %s%s', name, fmt(mean), suffix)
    return 0


def main(argv=None, prog='test', command=None):
    return run_main(build_parser, run, argv, prog)
