"""``qcaffe <command> [flags]``: dispatch to the command modules of :mod:`qcaffe.tools`.

Caffe equivalent: the ``caffe`` brew tool (tools/caffe.cpp: train, test, time, device_query)
with the other Caffe tools added as commands.  This module only finds the command; each
command's flags and logic live in its own module (``qcaffe.tools.<command>``).
"""
import importlib
import sys

# command -> (module, one-line description); the order is the one of the usage text.
COMMANDS = {
    'train': ('qcaffe.tools.train', 'train or finetune a model'),
    'test': ('qcaffe.tools.test', 'score a model'),
    'time': ('qcaffe.tools.time', 'benchmark model execution time'),
    'device_query': ('qcaffe.tools.device_query', 'show CPU and GPU diagnostic information'),
    'convert_mnist_data': ('qcaffe.tools.convert_mnist_data',
                           'convert MNIST IDX files into an LMDB of Datum'),
    'convert_imageset': ('qcaffe.tools.convert_imageset',
                         'convert a list of images into an LMDB of Datum'),
    'compute_image_mean': ('qcaffe.tools.compute_image_mean',
                           'compute the mean image of an LMDB (mean.binaryproto)'),
    'parse_log': ('qcaffe.tools.parse_log', 'parse a training log into .train/.test CSV files'),
    'plot_training_log': ('qcaffe.tools.plot_training_log',
                          'plot a training log (needs matplotlib)'),
    'upgrade_net_proto_text': ('qcaffe.tools.upgrade_net_proto',
                               'upgrade a text net definition to the current format'),
    'upgrade_net_proto_binary': ('qcaffe.tools.upgrade_net_proto',
                                 'upgrade a binary net (.caffemodel) to the current format'),
    'upgrade_solver_proto_text': ('qcaffe.tools.upgrade_net_proto',
                                  'upgrade a text solver definition to the current format'),
    'compress_report': ('qcaffe.compress.report',
                        'per-layer bits, distinct values and packed size of a compressed model'),
    'compress_export': ('qcaffe.compress.export',
                        'export integer codes + scales of compressed weights to .npz'),
    'labelfree': ('qcaffe.tools.labelfree',
                  'label-free compression: low-bit weights and activations from unlabeled images'),
    # the DNS/INQ fork's compression_scripts (compression.md 2(e))
    'dns_to_normal': ('qcaffe.tools.compress_convert',
                      'DNS-pruned model -> normal model (pruned weights 0), with statistics'),
    'model2INQ_raw': ('qcaffe.tools.compress_convert',
                      'normal or DNS model -> INQ raw model (masks carried over or 1)'),
    'inq_to_normal': ('qcaffe.tools.compress_convert',
                      'INQ raw model -> normal model (masks dropped)'),
    'parse_model': ('qcaffe.tools.parse_model', 'write a .caffemodel as protobuf text'),
}


def usage():
    lines = ['usage: qcaffe <command> [flags]', '', 'commands:']
    width = max(len(c) for c in COMMANDS)
    lines += ['  %-*s  %s' % (width, c, d) for c, (_, d) in COMMANDS.items()]
    lines += ['', 'Run "qcaffe <command> --help" for the flags of a command.']
    return '\n'.join(lines)


def main(argv=None):
    """Entry point of the ``qcaffe`` console script and of ``python -m qcaffe``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '-help', '--help', 'help'):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 1
    # gflags lets flags come before the command: take the first word that names a command.
    pos = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if pos is None:
        word = next((a for a in argv if not a.startswith('-')), argv[0])
        print('qcaffe: error: Unknown action: %s (available: %s)'
              % (word, ', '.join(COMMANDS)), file=sys.stderr)
        return 1
    command = argv[pos]
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(argv[:pos] + argv[pos + 1:], prog='qcaffe ' + command, command=command)


if __name__ == '__main__':
    sys.exit(main())
