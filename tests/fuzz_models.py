"""Seeded fuzzing of model loading: mutated copies of real Caffe files must load or fail with
a one-line :class:`qcaffe.io.QcaffeError`, never with another exception.

The inputs are the shared LeNet files (``models/lenet``: V2 prototxt, caffemodel, solver
and solverstate; ``models/lenet_v1``: the same net in the V1 format).  Each case mutates
ONE file of such a set and then does what a user does: ``Net(prototxt, TEST,
weights=caffemodel)`` and a forward pass on random input or, for a solver or solverstate
case, the solver on that net, ``Solver.restore`` and one training step.

Binary mutations (bit flips, byte overwrites, truncation, deleted / duplicated / inserted
ranges) land on the protobuf framing (tags, lengths, varints, names) rather than on the
float payload, where a flip only changes a weight.  Text mutations replace numbers with
extreme values (0, -1, INT_MAX + 1, 2**32, 1e30, nan...), swap strings, enum names and
field names, and delete, duplicate or swap lines and punctuation.

Every case runs in a process whose address space is limited (``RLIMIT_AS``), so a mutated
dimension that asks for gigabytes fails at once with an allocation error, which qcaffe must
report as a QcaffeError naming layer, blob, shape and bytes.

``python tests/fuzz_models.py --mutations 5000 --seed 7`` runs a big campaign and prints the
failures by exception type (``test_fuzz_models.py`` runs a small one in the suite).
"""
import argparse
import collections
import json
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shared_data import shared_path  # noqa: E402

from qcaffe.io.binary import read_varint  # noqa: E402

# Address-space limit of a fuzzing process: a real load of LeNet needs < 1 GB.
MEMORY_LIMIT = 3 << 30
CASE_TIMEOUT_S = 20

INTERESTING_NUMBERS = ('0', '-1', '1', '2', '3', '7', '-7', '65', '1000', '2147483647',
                       '2147483648', '4294967296', '4294967295', '-2147483649',
                       '9223372036854775807', '99999999999999999999', '1e30', '-1e30',
                       '0.5', '1e-45', 'nan', 'inf', '-inf', '0x10')
INTERESTING_STRINGS = ('', 'data', 'conv1', 'ip1', 'prob', 'x' * 300, 'Convolution',
                       'InnerProduct', 'Pooling', 'ReLU', 'Softmax', 'Nope', 'xavier',
                       'gaussian', 'constant', 'bogus', '\\377\\376', '\\000', 'a b',
                       'data_data_0_split', 'fixed', 'step', 'exp', 'inv', 'multistep',
                       'poly', 'sigmoid', 'SGD', 'Adam', 'AdaDelta', 'Nesterov', 'L1', 'L2')


# ------------------------------------------------------------------ binary mutations
def structure_offsets(data, descriptor, start=0, end=None, out=None, depth=0):
    """Offsets of the framing bytes of a protobuf (tags, lengths, varints, string bytes, the
    edges of packed arrays), where a mutation changes the structure rather than a weight."""
    end = len(data) if end is None else end
    out = [] if out is None else out
    pos = start
    while pos < end:
        tag_pos = pos
        tag, pos = read_varint(data, pos, end)
        if tag is None:
            return out
        out.extend(range(tag_pos, pos))
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number) if descriptor else None
        if wire == 0:
            v_pos = pos
            _, pos = read_varint(data, pos, end)
            out.extend(range(v_pos, pos))
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            l_pos = pos
            length, pos = read_varint(data, pos, end)
            if length is None:
                return out
            out.extend(range(l_pos, pos))
            stop = min(pos + length, end)
            if field is not None and field.message_type is not None and depth < 20:
                structure_offsets(data, field.message_type, pos, stop, out, depth + 1)
            elif field is not None and field.type in (field.TYPE_STRING, field.TYPE_BYTES):
                out.extend(range(pos, stop))
            else:   # packed numbers: their edges only
                out.extend(range(pos, min(pos + 4, stop)))
                out.extend(range(max(stop - 4, pos), stop))
            pos = stop
        else:
            return out
    return out


def mutate_binary(data, offsets, rng):
    """One random structural mutation of ``data``; returns (new bytes, description)."""
    data = bytearray(data)
    if not data:
        return bytes(data), 'nothing left to mutate'

    def position():     # framing bytes mostly (offsets of the pristine file: a stacked
        # mutation may have shortened the data, hence the clamp)
        if offsets and rng.random() < 0.9:
            return min(rng.choice(offsets), len(data) - 1)
        return rng.randrange(len(data))
    at = position()
    kind = rng.choice(('bitflip', 'byte', 'byte', 'varint', 'truncate', 'delete',
                       'duplicate', 'insert', 'zero'))
    if kind == 'bitflip':
        for _ in range(rng.randint(1, 3)):
            data[at] ^= 1 << rng.randrange(8)
            at = position()
    elif kind == 'byte':
        data[at] = rng.choice((0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, rng.randrange(256)))
    elif kind == 'varint':  # a length/count/dim made huge or negative
        data[at:at + 1] = rng.choice((b'\xff\xff\xff\xff\x0f', b'\x80\x80\x80\x80\x10',
                                      b'\xff' * 9 + b'\x01', b'\x00'))
    elif kind == 'truncate':
        del data[at:]
    elif kind == 'delete':
        del data[at:at + rng.randint(1, 64)]
    elif kind == 'duplicate':
        n = rng.randint(1, 64)
        data[at:at] = data[at:at + n]
    elif kind == 'insert':
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
        data[at:at + rng.randint(1, 16)] = bytes(rng.randint(1, 16))
    return bytes(data), '%s at byte %d' % (kind, at)


# -------------------------------------------------------------------- text mutations
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:e-?\d+)?|[A-Za-z_]\w*|[{}:]')


def mutate_text(text, rng):
    """One random mutation of a prototxt; returns (new text, description)."""
    if not text:
        return text, 'nothing left to mutate'
    tokens = list(_TOKEN.finditer(text))
    lines = text.split('\n')
    pick = {'number': lambda t: t[0].isdigit() or t[0] == '-',
            'string': lambda t: t[0] == '"',
            'ident': lambda t: t[0].isalpha() or t[0] == '_',
            'punct': lambda t: t in '{}:'}
    kind = rng.choice(('number', 'number', 'number', 'string', 'string', 'ident', 'ident',
                       'delete_line', 'dup_line', 'swap_lines', 'punct', 'char'))
    cands = [m for m in tokens if pick[kind](m.group())] if kind in pick else []
    if kind in pick and not cands:     # an earlier mutation left none of those
        kind = 'char'
    if kind in ('number', 'string', 'ident'):
        m = rng.choice(cands)
        if kind == 'number':
            new = rng.choice(INTERESTING_NUMBERS)
        elif kind == 'string':
            new = '"%s"' % rng.choice(INTERESTING_STRINGS + tuple(
                c.group()[1:-1] for c in cands))
        else:
            idents = sorted({c.group() for c in tokens if c.group()[0].isalpha()})
            new = rng.choice(idents + ['MAX', 'AVE', 'STOCHASTIC', 'CONVOLUTION', 'layers',
                                       'layer', 'bogus_field', 'true', 'false'])
        return (text[:m.start()] + new + text[m.end():],
                '%s %r -> %r (line %d)' % (kind, m.group(), new,
                                           text.count('\n', 0, m.start()) + 1))
    i = rng.randrange(len(lines))
    if kind == 'delete_line':
        del lines[i]
    elif kind == 'dup_line':
        lines.insert(i, lines[i])
    elif kind == 'swap_lines':
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 'punct':
        m = rng.choice(cands)
        new = rng.choice(('', '{', '}', ':', '""'))
        return text[:m.start()] + new + text[m.end():], 'punct %r -> %r' % (m.group(), new)
    else:
        pos = rng.randrange(len(text))
        c = chr(rng.choice((0, 0x22, 0x5c, 0x7b, 0x7d, 0x23, rng.randrange(32, 127))))
        return text[:pos] + c + text[pos + 1:], 'char %d -> %r' % (pos, c)
    return '\n'.join(lines), '%s line %d' % (kind, i + 1)


# ------------------------------------------------------------------------ the cases
class Inputs(object):
    """The pristine files of both LeNet versions and the framing offsets of each binary."""

    def __init__(self):
        from qcaffe.proto import caffe_pb2
        self.sets = {}
        for version, d in (('v2', 'lenet'), ('v1', 'lenet_v1')):
            files = {}
            for kind, name, desc in (('prototxt', 'lenet.prototxt', None),
                                     ('solver', 'lenet_solver.prototxt', None),
                                     ('caffemodel', 'lenet_iter_10000.caffemodel',
                                      caffe_pb2.NetParameter.DESCRIPTOR),
                                     ('solverstate', 'lenet_iter_10000.solverstate',
                                      caffe_pb2.SolverState.DESCRIPTOR)):
                with open(shared_path('models', d, name), 'rb') as f:
                    data = f.read()
                offsets = structure_offsets(data, desc) if desc else None
                files[kind] = (name, data, offsets)
            self.sets[version] = files


def make_case(inputs, rng):
    """(version, mutated kind, {kind: bytes}, description) of one random case."""
    version = rng.choice(('v2', 'v1'))
    files = inputs.sets[version]
    kind = rng.choice(('prototxt', 'prototxt', 'caffemodel', 'caffemodel', 'solverstate',
                       'solver'))
    contents = {k: v[1] for k, v in files.items()}
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):    # mostly one mutation, sometimes more
        if kind in ('prototxt', 'solver'):
            text, what = mutate_text(contents[kind].decode('utf-8', 'surrogateescape'), rng)
            contents[kind] = text.encode('utf-8', 'surrogateescape')
        else:
            contents[kind], what = mutate_binary(contents[kind], files[kind][2], rng)
        done.append(what)
    return version, kind, contents, '; '.join(done)


_on_disk = {}     # path -> the bytes object last written there


def run_case(workdir, inputs, version, kind, contents):
    """Load the case's files as a user would; returns None or raises what qcaffe raised."""
    import qcaffe
    from qcaffe.solvers import create_solver
    paths = {}
    for k, data in contents.items():
        paths[k] = os.path.join(workdir, version, inputs.sets[version][k][0])
        os.makedirs(os.path.dirname(paths[k]), exist_ok=True)
        if _on_disk.get(paths[k]) is not data:     # pristine files are written once
            with open(paths[k], 'wb') as f:
                f.write(data)
            _on_disk[paths[k]] = data
    if kind in ('solverstate', 'solver'):
        # LeNet's solver on the deploy net (its train net reads an LMDB we do not have),
        # test_iter capped, snapshots kept in the work folder; then restore and train on.
        from qcaffe.io.binary import read_solver_param
        param = read_solver_param(paths['solver'])
        if param.HasField('net'):
            param.net = paths['prototxt']
        param.test_iter[:] = [min(t, 2) for t in param.test_iter]
        param.snapshot_prefix = os.path.join(workdir, 'snap')
        solver = create_solver(param, source=paths['solver'])
        for net in [solver.net] + solver.test_nets:
            small_batch(net)
        cwd = os.getcwd()
        os.chdir(workdir)     # learned_net is relative, as Caffe wrote it
        try:
            solver.restore(paths['solverstate'])
            solver.step(1)
        finally:
            os.chdir(cwd)
        return
    net = qcaffe.Net(paths['prototxt'], qcaffe.TEST, weights=paths['caffemodel'])
    small_batch(net)
    for b in net.inputs:
        blob = net.blobs[b]
        blob.data[...] = np.random.RandomState(0).rand(*blob.data.shape)
    net.forward()


def small_batch(net):
    """At most 2 items per input (the shapes the file asked for were checked at setup):
    the forward passes cost a tenth of LeNet's 64."""
    for blob in net.input_blobs:
        if blob.shape and blob.shape[0] > 2:
            blob.reshape((2,) + blob.shape[1:])
    net.reshape_all()


class _Timeout(Exception):
    pass


_EXCERPT = (re.compile(r'^ +\d+ \| '), re.compile(r'^ +\| *\^$'))


def is_one_line(error):
    """True if ``str(error)`` is one line; a ProtoParseError may add the compiler-style
    excerpt of the offending line with a caret under the column (two more lines)."""
    from qcaffe.io.errors import ProtoParseError
    lines = str(error).split('\n')
    if isinstance(error, ProtoParseError) and len(lines) == 3:
        return all(p.match(line) for p, line in zip(_EXCERPT, lines[1:]))
    return len(lines) == 1 and bool(lines[0].strip())


def _alarm(signum, frame):
    raise _Timeout('case took more than %d s' % CASE_TIMEOUT_S)


def campaign(mutations, seed, limit_memory=True, verbose=False):
    """Run ``mutations`` cases; returns a dict of counts and the first failures per type."""
    import logging
    from qcaffe import backend
    from qcaffe.io.errors import QcaffeError
    logging.getLogger('qcaffe').setLevel(logging.CRITICAL)
    if limit_memory:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _alarm)
    inputs = Inputs()
    rng = random.Random(seed)
    outcomes = collections.Counter()
    bad = collections.OrderedDict()      # exception type -> [examples]
    multiline = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix='qcaffe_fuzz_') as workdir:
        for i in range(mutations):
            version, kind, contents, what = make_case(inputs, rng)
            label = '#%d %s %s: %s' % (i, version, kind, what)
            backend.set_random_seed(i)
            signal.alarm(CASE_TIMEOUT_S)
            try:
                with np.errstate(all='ignore'):
                    run_case(workdir, inputs, version, kind, contents)
                outcomes['loaded'] += 1
            except QcaffeError as e:
                outcomes['QcaffeError'] += 1
                if not is_one_line(e):
                    multiline.append('%s: %s: %r' % (label, type(e).__name__, str(e)[:400]))
            except BaseException as e:  # what the fuzzing is for
                if isinstance(e, KeyboardInterrupt):
                    raise
                name = type(e).__name__
                outcomes[name] += 1
                bad.setdefault(name, [])
                if len(bad[name]) < 5:
                    bad[name].append('%s: %s' % (label, str(e)[:300]))
            finally:
                signal.alarm(0)
            if verbose and (i + 1) % 200 == 0:
                print('%d cases, %.0f s: %s' % (i + 1, time.time() - start, dict(outcomes)),
                      file=sys.stderr, flush=True)
    return {'mutations': mutations, 'seed': seed, 'seconds': round(time.time() - start, 1),
            'outcomes': dict(outcomes), 'failures': bad, 'multiline': multiline[:10],
            'multiline_count': len(multiline)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mutations', type=int, default=300)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')
    args = parser.parse_args(argv)
    result = campaign(args.mutations, args.seed, verbose=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
