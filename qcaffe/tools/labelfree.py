"""``qcaffe labelfree --model M --weights W --images LMDB --output-model Q.prototxt
--output-weights Q.caffemodel [--weight-bits 4 --act-bits 8 --bn-images 1000 --act-images 400]``.

Original equivalent: ``python weights_quan.py; python renorm.py; python activations_quan.py``
of CAS-CLab/Label-free-Network-Compression with their config.py (compression.md 4(e)), in one
command; the logic is :mod:`qcaffe.compress.labelfree_net`.  Flags are spelled with dashes
(as here) or underscores (``--weight_bits``), with one or two leading dashes.
"""
import os

from . import (ArgumentParser, ToolError, parse_gpu_ids, require_file, require_flag, run_main,
               use_single_device)
from ..compress.labelfree_net import Options, compress

_DEFAULTS = Options()


def build_parser(prog):
    p = ArgumentParser(prog=prog, description='Label-free compression: quantize a trained '
                       'BatchNorm model to low-bit weights (per-channel scale) and activations '
                       'with unlabeled images, no training.')

    def flag(name, **kwargs):      # --output-model and --output_model alike
        spellings = sorted({'--' + name, '--' + name.replace('-', '_')}, reverse=True)
        p.add_argument(*spellings, dest=name.replace('-', '_'), **kwargs)

    flag('model', default='', help='The full-precision model definition (train_val prototxt '
         'with a TRAIN-phase Data layer, whose transform is applied to the images).')
    flag('weights', default='', help='The full-precision .caffemodel.')
    flag('images', default='', help='LMDB of (unlabeled) training images; the first '
         'max(--bn-images, --act-images) records are used.')
    flag('output-model', default='', help='The quantized prototxt to write (ReLU -> Quant).')
    flag('output-weights', default='', help='The quantized .caffemodel to write.')
    flag('weight-bits', type=int, default=_DEFAULTS.weight_bits,
         help='Bits of the power-of-two weights of the inner layers (2-8; default 4).')
    flag('edge-bits', type=int, default=_DEFAULTS.edge_bits,
         help='Fixed-point bits of the first and last Convolution/InnerProduct (2-16; '
         'default 8).')
    flag('act-bits', type=int, default=_DEFAULTS.act_bits,
         help='Activation bits: codes 0 ... 2^(bits-1)-1 (2-16; default 8: 0 ... 127).')
    flag('bn-images', type=int, default=_DEFAULTS.bn_images,
         help='Images for the BatchNorm statistics (default 1000).')
    flag('act-images', type=int, default=_DEFAULTS.act_images,
         help='Images for the activation steps (default 400).')
    flag('batch-size', type=int, default=_DEFAULTS.batch_size,
         help='Images per forward pass; memory grows with it, not with the image counts '
         '(default 100).')
    flag('seed', type=int, default=_DEFAULTS.seed,
         help='Seed of the random crops, mirrors and dropout masks (default 1).')
    p.add_bool_flag('dropout', default=True, help='Run Dropout layers as in training during '
                    'calibration, as the original does (default); --nodropout runs them as in '
                    'testing.')
    flag('gpu', default='', help='Optional; run in GPU mode on the given device ID.')
    return p


def run(args):
    require_flag(args.model, 'model', 'the full-precision model definition')
    require_flag(args.weights, 'weights', 'the full-precision weights')
    require_flag(args.images, 'images', 'an LMDB of training images')
    require_flag(args.output_model, 'output-model', 'the quantized prototxt to write')
    require_flag(args.output_weights, 'output-weights', 'the quantized weights to write')
    require_file(args.model, 'model definition (--model)')
    require_file(args.weights, 'weights file (--weights)')
    for flag, path in (('output-model', args.output_model),
                       ('output-weights', args.output_weights)):
        folder = os.path.dirname(path) or '.'
        if not os.path.isdir(folder):   # fail now, not after the calibration
            raise ToolError('--%s %s: directory %s does not exist' % (flag, path, folder))
    use_single_device(parse_gpu_ids(args.gpu))
    options = Options(args.weight_bits, args.edge_bits, args.act_bits, args.bn_images,
                      args.act_images, args.batch_size, args.seed, args.dropout)
    compress(args.model, args.weights, args.images, args.output_model, args.output_weights,
             options)
    return 0


def main(argv=None, prog='labelfree', command=None):
    return run_main(build_parser, run, argv, prog)
