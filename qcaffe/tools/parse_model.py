"""``qcaffe parse_model <binary.caffemodel> <output.txt>``: a .caffemodel as protobuf text.

Equivalent of the DNS/INQ fork's compression_scripts/parse_model.py (``print >> f, model``
of the parsed NetParameter), with qcaffe's proto (so the DNS/INQ parameters, masks and μL2Q
fields are named) and without ``CAFFE_ROOT``.
"""
from . import ArgumentParser, require_file, run_main


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Convert a binary caffemodel to a '
                            'human-readable text file (protobuf text format).')
    parser.add_argument('binary_model', help='the .caffemodel to read')
    parser.add_argument('output', help='the text file to write')
    return parser


def run(args):
    from ..io.binary import read_binary_proto
    from ..io.files import atomic_write_bytes
    from ..proto import caffe_pb2
    require_file(args.binary_model, 'binary caffemodel')
    print('Parsing binary caffemodel ...')
    model = read_binary_proto(args.binary_model, caffe_pb2.NetParameter())
    print('Saving file: %s ...' % args.output)
    atomic_write_bytes(args.output, (str(model) + '\n').encode('utf-8'), 'text model')
    print('Success: file saved as %s' % args.output)
    return 0


def main(argv=None, prog='parse_model', command=None):
    return run_main(build_parser, run, argv, prog)
