"""``qcaffe dns_to_normal | model2INQ_raw | inq_to_normal <source.prototxt> <source.caffemodel>
<target.prototxt> <target.caffemodel>``.

Equivalent of the DNS/INQ fork's compression_scripts/{dns_to_normal,model2INQ_raw,
inq_to_normal}.py (same positional arguments, same printed statistics): both nets are built
in the TEST phase as the scripts build them (so their data sources must exist, as for
``caffe.Net``), the source with its weights, the target from its fillers; the weights are
converted by layer type (:mod:`qcaffe.compress.convert`) and the target is saved.

* ``dns_to_normal``: a DNS model to a plain one, pruned weights set to 0; prints kept/total
  per DNS layer, the total and the compression rate;
* ``model2INQ_raw``: a DNS or plain model to the starting model of INQ (masks carried over or
  all 1), same statistics;
* ``inq_to_normal``: an INQ model to a plain one (masks dropped).
"""
import functools

from . import ArgumentParser, require_file, run_main

DESCRIPTIONS = {
    'dns_to_normal': 'Convert a DNS-pruned model to a normal model (pruned weights = 0).',
    'model2INQ_raw': 'Convert a normal or DNS-pruned model to an INQ raw model (the masks of '
                     'DNS layers carry over, others start at 1).',
    'inq_to_normal': 'Convert a quantized INQ raw model to a normal model (masks dropped, '
                     'about half the size).',
}
DONE = {
    'dns_to_normal': 'Model has been converted from DNS to normal, saved as %(target)s',
    'model2INQ_raw': 'Model(%(weights)s) has been converted to INQ raw model, saved as '
                     '%(target)s',
    'inq_to_normal': 'Success: Model has been converted from INQ to normal, saved as '
                     '%(target)s',
}


def build_parser(prog, command):
    parser = ArgumentParser(prog=prog, description=DESCRIPTIONS[command])
    parser.add_argument('source_prototxt', help='the net the source weights belong to')
    parser.add_argument('source_model', help='its .caffemodel')
    parser.add_argument('target_prototxt', help='the net to convert to')
    parser.add_argument('target_model', help='where to write the converted .caffemodel')
    return parser


def run(args, command):
    from ..compress.convert import convert
    from ..proto import caffe_pb2
    from .test import load_net
    require_file(args.source_prototxt, 'source net')
    require_file(args.source_model, 'source model')
    require_file(args.target_prototxt, 'target net')
    source = load_net(args.source_prototxt, caffe_pb2.TEST, 0, '')
    source.copy_from(args.source_model)
    target = load_net(args.target_prototxt, caffe_pb2.TEST, 0, '')
    convert(source, target, command)
    target.save(args.target_model)
    print(DONE[command] % dict(weights=args.source_model, target=args.target_model))
    if command == 'model2INQ_raw':
        print(' ')
        print('Model %s is ready for INQ training.' % args.target_model)
    print(' ')
    return 0


def main(argv=None, prog=None, command='dns_to_normal'):
    return run_main(functools.partial(build_parser, command=command),
                    functools.partial(run, command=command), argv, prog or command)
