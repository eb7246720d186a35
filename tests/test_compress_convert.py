"""The DNS/INQ fork's scripts as qcaffe commands (dns_to_normal, model2INQ_raw, inq_to_normal,
parse_model), compress_report on pruned / INQ models, and the fork's caffemodels read with
their layer parameters (field numbers 147-152 -> 153-158)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from qcaffe.cli import main as cli
from qcaffe.compress import sparsity
from qcaffe.io import read_net_param
from qcaffe.io.nk_fields import renumber_nk_fields
from qcaffe.io.weights import load_weights_file
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2
from shared_data import require_shared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, 'examples', 'mnist')


def with_inputs(prototxt, tmp_path):
    """The example prototxt with its Data layers replaced by Input layers (no LMDB needed)."""
    net = read_net_param(os.path.join(MNIST, prototxt))
    rest = [l for l in net.layer if l.type != 'Data']
    del net.layer[:]
    for text in ('name: "data" type: "Input" top: "data" input_param { shape { dim: 2 '
                 'dim: 1 dim: 28 dim: 28 } }',
                 'name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } }'):
        net.layer.add().CopyFrom(text_format.Parse(text, caffe_pb2.LayerParameter()))
    for l in rest:
        net.layer.add().CopyFrom(l)
    path = str(tmp_path / prototxt)
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(net))
    return path


def blobs_of(path):
    return {name: [b.data for b in blobs] for name, _, blobs in load_weights_file(path)
            if blobs}


def run_cli(capsys, *args):
    status = cli(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_dns_to_normal_prints_the_forks_statistics(tmp_path, capsys):
    d = require_shared('nk_ref', 'dns')
    src = with_inputs('lenet_train_test_DNS.prototxt', tmp_path)
    dst = with_inputs('lenet_train_test.prototxt', tmp_path)
    out_model = str(tmp_path / 'normal.caffemodel')
    status, out, _ = run_cli(capsys, 'dns_to_normal', src,
                             os.path.join(d, 'after3.caffemodel'), dst, out_model)
    assert status == 0
    dns = blobs_of(os.path.join(d, 'after3.caffemodel'))
    normal = blobs_of(out_model)
    kept = total = 0
    for name in ('conv1', 'conv2', 'ip1', 'ip2'):
        w, b, wm, bm = dns[name]
        assert len(normal[name]) == 2
        np.testing.assert_array_equal(normal[name][0], np.where(wm == 1, w, 0))
        np.testing.assert_array_equal(normal[name][1], np.where(bm == 1, b, 0))
        kept += int(wm.sum() + bm.sum())
        total += wm.size + bm.size
        n = int(wm.sum())
        assert '%s layer w: %d/%d (%f %%) kept' % (name, n, wm.size, 100.0 * n / wm.size) in out
    # after 3 steps (nk_ref/README.txt): 192 + 625 + 4130 + 58 of 431,080
    assert kept == 5005 and total == 431080
    assert 'Final Statistics: 5005/ 431080 (1.161037 %) kept' in out
    assert 'Compression Rate: 86.129870' in out
    assert 'Model has been converted from DNS to normal, saved as %s' % out_model in out


def test_model2inq_raw_from_a_plain_model_is_the_forks_inq_init(tmp_path, capsys):
    lenet = require_shared('models', 'lenet', 'lenet_iter_10000.caffemodel')
    ref = require_shared('nk_ref', 'inq30', 'init.caffemodel')
    out_model = str(tmp_path / 'inq_raw.caffemodel')
    status, out, _ = run_cli(capsys, 'model2INQ_raw',
                             with_inputs('lenet_train_test.prototxt', tmp_path), lenet,
                             with_inputs('lenet_train_test_inq_30.prototxt', tmp_path),
                             out_model)
    assert status == 0 and 'is ready for INQ training' in out
    assert 'Final Statistics' not in out                  # no DNS layer in the source
    got, want = blobs_of(out_model), blobs_of(ref)
    for name in ('conv1', 'conv2', 'ip1', 'ip2'):
        for g, w in zip(got[name], want[name]):
            np.testing.assert_array_equal(g, w)


def test_model2inq_raw_from_dns_then_inq_to_normal(tmp_path, capsys):
    d = require_shared('nk_ref', 'dns')
    raw = str(tmp_path / 'raw.caffemodel')
    status, out, _ = run_cli(capsys, 'model2INQ_raw',
                             with_inputs('lenet_train_test_DNS.prototxt', tmp_path),
                             os.path.join(d, 'after3.caffemodel'),
                             with_inputs('lenet_train_test_inq_30.prototxt', tmp_path), raw)
    assert status == 0 and 'Final Statistics: 5005/ 431080' in out
    dns, inq = blobs_of(os.path.join(d, 'after3.caffemodel')), blobs_of(raw)
    for name in ('conv1', 'ip1'):
        w, b, wm, bm = dns[name]
        np.testing.assert_array_equal(inq[name][0], np.where(wm == 1, w, 0))
        np.testing.assert_array_equal(inq[name][2], wm)       # pruned = fixed at 0 for INQ
        np.testing.assert_array_equal(inq[name][3], bm)
    normal = str(tmp_path / 'normal.caffemodel')
    status, out, _ = run_cli(capsys, 'inq_to_normal',
                             with_inputs('lenet_train_test_inq_30.prototxt', tmp_path), raw,
                             with_inputs('lenet_train_test.prototxt', tmp_path), normal)
    assert status == 0 and 'Success: Model has been converted from INQ to normal' in out
    back = blobs_of(normal)
    for name in ('conv1', 'conv2', 'ip1', 'ip2'):
        assert len(back[name]) == 2
        for g, w in zip(back[name], inq[name][:2]):
            np.testing.assert_array_equal(g, w)


def test_layers_are_selected_by_type_not_name(tmp_path, capsys):
    # a DNS layer named "feat" (no "conv"/"ip" in it) and a BatchNorm are converted too
    text = '''name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "feat" type: "%s" bottom: "data" top: "feat"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } %s }
layer { name: "bn" type: "BatchNorm" bottom: "feat" top: "feat" }'''
    src, dst = str(tmp_path / 'src.prototxt'), str(tmp_path / 'dst.prototxt')
    with open(src, 'w') as f:
        f.write(text % ('DNSInnerProduct', 'dns_inner_product_param { c_rate: 1 }'))
    with open(dst, 'w') as f:
        f.write(text % ('InnerProduct', ''))
    p = caffe_pb2.NetParameter()
    text_format.Merge(open(src).read(), p)
    net = Net.from_param(p, phase=caffe_pb2.TEST)
    feat = net.layers[net.layer_index('feat')]
    feat.blobs[2].data[0] = 0
    for b in net.layers[net.layer_index('bn')].blobs:
        b.data[...] = np.arange(b.count, dtype=np.float32) + 1
    model = str(tmp_path / 'src.caffemodel')
    net.save(model)
    out_model = str(tmp_path / 'dst.caffemodel')
    status, out, _ = run_cli(capsys, 'dns_to_normal', src, model, dst, out_model)
    assert status == 0 and 'feat layer w: 9/12 (75.000000 %) kept' in out   # row 0 pruned
    got = blobs_of(out_model)
    np.testing.assert_array_equal(got['feat'][0][0], 0)
    np.testing.assert_array_equal(got['feat'][0][1:], feat.blobs[0].data[1:])
    np.testing.assert_array_equal(got['bn'][0], [1, 2, 3, 4])        # copied verbatim
    assert got['feat'][1].size == 4 and np.all(got['feat'][1] == feat.blobs[1].data)


def test_script_errors_are_clear(tmp_path, capsys):
    status, _, err = run_cli(capsys, 'dns_to_normal', 'a.prototxt', 'b')
    assert status == 1 and 'the following arguments are required: target_prototxt' in err
    status, _, err = run_cli(capsys, 'inq_to_normal', str(tmp_path / 'missing.prototxt'),
                             'm', 't', 'o')
    assert status == 1 and 'source net' in err and 'does not exist' in err
    # tools/*.py: the same command with the fork's script name
    r = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'model2INQ_raw.py')],
                       capture_output=True, text=True)
    assert r.returncode == 1 and 'model2INQ_raw.py' in r.stderr


def test_parse_model_writes_the_forks_parameters_by_name(tmp_path, capsys):
    model = require_shared('nk_ref', 'inq60', 'init.caffemodel')
    out_txt = str(tmp_path / 'model.txt')
    status, out, _ = run_cli(capsys, 'parse_model', model, out_txt)
    assert status == 0 and 'Success: file saved as %s' % out_txt in out
    # conv1's layer only: merging the whole text (862k numbers) back would take seconds
    blocks = open(out_txt).read().split('\nlayer {\n')[1:]
    block = [b for b in blocks if b.lstrip().startswith('name: "conv1"')][0]
    conv1 = text_format.Merge(block.rsplit('}', 1)[0], caffe_pb2.LayerParameter())
    assert list(conv1.inq_convolution_param.portion) == pytest.approx([0.3, 0.6])
    assert conv1.inq_convolution_param.num_quantum_values == 7
    assert not conv1.weights_compress and len(conv1.blobs) == 4
    r = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'parse_model.py'), model,
                        str(tmp_path / 'again.txt')], capture_output=True, text=True)
    assert r.returncode == 0 and open(str(tmp_path / 'again.txt')).read() == open(out_txt).read()


def test_fork_field_numbers_are_moved_on_read(tmp_path):
    d = require_shared('nk_ref', 'dns')
    raw = open(os.path.join(d, 'after3.caffemodel'), 'rb').read()
    net = read_net_param(os.path.join(d, 'after3.caffemodel'))
    ip2 = [l for l in net.layer if l.name == 'ip2'][0]
    assert ip2.dns_inner_product_param.c_rate == pytest.approx(3)
    assert ip2.dns_inner_product_param.iter_stop == 140000
    assert not ip2.HasField('clip_param')
    # what qcaffe writes is already in its own numbering: untouched
    ours = net.SerializeToString()
    assert renumber_nk_fields(ours) is ours
    assert renumber_nk_fields(raw) != raw
    # plain layers keep their fields 147-152 (swish_param is BVLC's 147), and so does a
    # qcaffe INQ layer that also has a μL2Q weights_compress (149)
    other = caffe_pb2.NetParameter()
    text_format.Merge('layer { name: "s" type: "Swish" swish_param { beta: 2 } } '
                      'layer { name: "q" type: "INQConvolution" weights_compress: "ULQ" '
                      'inq_convolution_param { portion: 0 portion: 0.5 } }', other)
    data = other.SerializeToString()
    assert renumber_nk_fields(data) is data


def test_compact_size_arithmetic():
    v = np.zeros(40, np.float32)
    v[[0, 3, 39]] = [0.5, -0.25, 1.0]
    # gaps from position -1: 1, 3, 36 -> 36 > 16 costs (36 - 1) // 16 = 2 fillers
    assert sparsity.compact_entries(v, 4) == 5
    assert sparsity.power_of_two_exponents(v) == (-2, 0)
    assert sparsity.code_bits((-2, 0)) == 3                      # 0, ±1/4, ±1/2, ±1
    assert sparsity.stored_bytes(v, 4) == (4 + 4 * 8 + (5 * 7 + 7) // 8, 'sparse')
    v[5] = 0.3                                                   # no longer powers of two
    assert sparsity.power_of_two_exponents(v) is None
    assert sparsity.stored_bytes(v, 4)[0] == 4 + (6 * 36 + 7) // 8     # gap 34: 2 fillers
    dense = np.full(64, 0.5, np.float32)
    assert sparsity.stored_bytes(dense, 4) == (4 * 4 + 64 * 2 // 8, 'dense')   # 0, ±1/2


def test_compress_report_on_the_forks_models(capsys):
    d = require_shared('nk_ref')
    status, out, _ = run_cli(capsys, 'compress_report', '--weights',
                             os.path.join(d, 'dns', 'after3.caffemodel'))
    assert status == 0
    assert 'conv1  DNSConvolution   192/520' in out and 'kept 5005/431080' in out
    status, out, _ = run_cli(capsys, 'compress_report', '--weights',
                             os.path.join(d, 'inq60', 'after3.caffemodel'))
    assert status == 0 and '60.0 %' in out                   # INQ fixed fraction
    layers, _ = sparsity.layers_from_files(os.path.join(d, 'inq60', 'after3.caffemodel'))
    rows = {r['layer']: r for r in map(sparsity.layer_row, layers)}
    assert rows['ip1']['fixed'] == 240300 and rows['ip1']['bits'] is None


def test_compress_report_on_a_fully_quantized_pruned_model(tmp_path, capsys):
    w = np.zeros((4, 6), np.float32)
    w[0, :3] = [0.5, -0.125, 0.25]
    w[3, 5] = -1.0
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" input_param { shape { '
            'dim: 1 dim: 6 } } } layer { name: "ip" type: "InnerProduct" bottom: "data" '
            'top: "ip" inner_product_param { num_output: 4 bias_term: false } }')
    p = caffe_pb2.NetParameter()
    text_format.Merge(text, p)
    net = Net.from_param(p)
    net.layers[1].blobs[0].data[...] = w
    path = str(tmp_path / 'q.caffemodel')
    net.save(path)
    status, out, _ = run_cli(capsys, 'compress_report', '--weights', path)
    assert status == 0
    row = out.splitlines()[1].split()
    assert row[:7] == ['ip', 'InnerProduct', '4/24', '83.33', '%', '-', '4']   # 9 codes: 0, ±2^-3..2^0
    # no pruning and no power-of-two values: nothing to report
    net.layers[1].blobs[0].data[...] = 0.3
    net.save(path)
    status, _, err = run_cli(capsys, 'compress_report', '--weights', path)
    assert status == 1 and 'nothing to report' in err
    # nor zero biases beside such weights (a fresh net's constant-0 bias filler)
    p.layer[1].inner_product_param.bias_term = True
    net = Net.from_param(p)
    net.layers[1].blobs[0].data[...] = 0.3
    assert not net.layers[1].blobs[1].data.any()
    net.save(path)
    status, _, err = run_cli(capsys, 'compress_report', '--weights', path)
    assert status == 1 and 'nothing to report' in err
