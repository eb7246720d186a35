"""μL2Q compression through the Net: .caffemodel fields (BlobProto 10–17), save → load →
identical outputs, TEST-phase use of the stored quantize array, plain-prototxt loading,
pycaffe attributes, NetSpec keywords, compress_report / compress_export."""
import numpy as np
import pytest

from qcaffe.io import parse_prototxt_text
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2

NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.4 }
                        bias_filler { type: "gaussian" std: 0.2 } }
  %s }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "out"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.4 } }
  %s }
'''
COMP1 = ('weights_compress: "ULQ" weights_compress: "Ternary_Quantize" '
         'weights_compress_param { maxbits: 2 } weights_compress_param { maxbits: 4 } '
         'activations_compress: "Clip" activations_compress_param { maxbits: 8 }')
COMP2 = 'weights_compress: "Quantize" weights_compress_param { maxbits: 4 }'


def make_net(phase, comp1=COMP1, comp2=COMP2):
    param = caffe_pb2.NetParameter()
    parse_prototxt_text(NET % (comp1, comp2), param)
    return Net.from_param(param, phase=phase)


@pytest.fixture
def trained(tmp_path):
    """A TRAIN net forwarded once and saved; returns (net, path, input, output)."""
    net = make_net(caffe_pb2.TRAIN)
    x = np.random.RandomState(0).randn(3, 8).astype(np.float32)
    net.blob_by_name('data').data[...] = x
    net.forward_prefilled()
    path = str(tmp_path / 'tiny.caffemodel')
    net.save(path)
    return net, path, x, net.blob_by_name('out').data.copy()


def forward(net, x):
    net.blob_by_name('data').data[...] = x
    net.forward_prefilled()
    return net.blob_by_name('out').data.copy()


def test_caffemodel_holds_fp_data_quantize_and_params(trained):
    net, path, _, _ = trained
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
    w = net.layers[net.layer_names.index('ip1')].blobs[0]
    np.testing.assert_array_equal(np.asarray(ip1.blobs[0].data, np.float32).reshape(6, 8),
                                  w.data)          # real Caffe reads the FP weights
    np.testing.assert_array_equal(np.asarray(ip1.blobs[0].quantize, np.float32).reshape(6, 8),
                                  w.quantize)
    assert ip1.blobs[0].maxbits == 2 and ip1.blobs[0].alpha == pytest.approx(
        w.compress_state.alpha)
    assert ip1.blobs[1].fixedpos == net.layers[1].blobs[1].compress_state.fixedpos
    assert list(ip1.weights_compress) == ['ULQ', 'Ternary_Quantize']
    assert ip1.weights_compress_param[0].alpha == pytest.approx(w.compress_state.alpha)
    assert ip1.activations_compress_param[0].alpha > 0
    relu = [l for l in saved.layer if l.name == 'relu'][0]
    assert not relu.blobs
    # BVLC Caffe sees fields 10–17 as unknown: dropping them leaves a valid plain model
    plain = caffe_pb2.BlobProto()
    plain.CopyFrom(ip1.blobs[0])
    for f in ('quantize', 'alpha', 'delta', 'fixedpos', 'maxbits'):
        plain.ClearField(f)
    assert len(plain.data) == 48


def test_save_load_identical_outputs_train_and_test(trained):
    net, path, x, out = trained
    for phase in (caffe_pb2.TEST, caffe_pb2.TRAIN):
        net2 = make_net(phase)
        net2.copy_from(path)
        np.testing.assert_array_equal(forward(net2, x), out)
        l1, l2 = net.layers[1], net2.layers[1]
        np.testing.assert_array_equal(l1.blobs[0].quantize, l2.blobs[0].quantize)
        assert l2.weights_compress_param[0].alpha == pytest.approx(
            l1.weights_compress_param[0].alpha)
        assert l2.weights_compress == ['ULQ', 'Ternary_Quantize']
        assert l2.activations_compress == ['Clip']


def test_test_phase_uses_stored_quantize_until_weights_change(trained, tmp_path):
    net, path, x, out = trained
    # a file whose stored quantize differs from Q(W) (e.g. written by the fork with its
    # one-update lag): TEST runs with the stored array
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    ip2 = [l for l in saved.layer if l.name == 'ip2'][0]
    q = np.asarray(ip2.blobs[0].quantize, np.float32)
    ip2.blobs[0].ClearField('quantize')
    ip2.blobs[0].quantize.extend((q * 2).tolist())
    tampered = str(tmp_path / 'tampered.caffemodel')
    open(tampered, 'wb').write(saved.SerializeToString())
    net2 = make_net(caffe_pb2.TEST)
    net2.copy_from(tampered)
    y = forward(net2, x)
    np.testing.assert_allclose(y, 2 * out, rtol=1e-5, atol=1e-6)   # ip2 is linear after ReLU
    # once the FP weights change (e.g. shared with a training net) Q(W) is recomputed
    ip2_blob = net2.layers[net2.layer_names.index('ip2')].blobs[0]
    ip2_blob.data[...] *= 1.0 + 1e-3
    y = forward(net2, x)
    assert np.abs(y - out).max() < 0.1 * np.abs(out).max()
    # TRAIN never uses the stored array
    net3 = make_net(caffe_pb2.TRAIN)
    net3.copy_from(tampered)
    np.testing.assert_array_equal(forward(net3, x), out)


def test_saved_quantize_follows_the_updated_weights(trained, tmp_path):
    from qcaffe.compress.quantizers import ulq
    net = trained[0]
    w = net.layers[1].blobs[0]
    w.data[...] *= 1.5          # an update after the last forward
    path = str(tmp_path / 'updated.caffemodel')
    net.save(path)
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    expect = np.empty_like(w.data)
    st = ulq(w.data, 2, expect)
    np.testing.assert_array_equal(np.asarray(saved.layer[1].blobs[0].quantize,
                                             np.float32).reshape(w.shape), expect)
    assert saved.layer[1].blobs[0].alpha == pytest.approx(st.alpha)
    assert saved.layer[1].weights_compress_param[0].alpha == pytest.approx(st.alpha)


def test_test_phase_without_stored_quantize_computes_it(trained, tmp_path):
    net, path, x, out = trained
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    for l in saved.layer:
        for b in l.blobs:
            b.ClearField('quantize')
    stripped = str(tmp_path / 'fp_only.caffemodel')
    open(stripped, 'wb').write(saved.SerializeToString())
    net2 = make_net(caffe_pb2.TEST)
    net2.copy_from(stripped)
    np.testing.assert_array_equal(forward(net2, x), out)


def test_plain_prototxt_runs_with_the_quantized_values(trained):
    net, path, x, _ = trained
    plain = make_net(caffe_pb2.TEST, comp1='', comp2='')
    plain.copy_from(path)
    for name in ('ip1', 'ip2'):
        src = net.layers[net.layer_names.index(name)]
        dst = plain.layers[plain.layer_names.index(name)]
        for i, b in enumerate(dst.blobs):
            ref = src.blobs[i].quantize
            np.testing.assert_array_equal(b.data, src.blobs[i].data if ref is None else ref)
            assert b.quantize is None
    forward(plain, x)   # runs (without the activation Clip of the compressed prototxt)


def test_report_and_export_from_files(trained, tmp_path, capsys):
    from qcaffe.cli import main
    net, path, _, _ = trained
    assert main(['compress_report', '--weights', path]) == 0
    text = capsys.readouterr().out
    assert 'ip1' in text and 'ULQ' in text and 'Ternary_Quantize' in text
    line = [l for l in text.splitlines() if l.startswith('ip1') and 'ULQ' in l][0]
    assert line.split()[3] == '2' and line.split()[5] in ('3', '4')    # bits, distinct values
    assert 'whole model' in text
    out = str(tmp_path / 'codes.npz')
    assert main(['compress_export', '-weights', path, '-output', out]) == 0
    z = np.load(out)
    codes = z['ip1/0/codes']
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 0, 1, 2}
    w = net.layers[1].blobs[0]
    np.testing.assert_allclose(codes * z['ip1/0/scale'] + z['ip1/0/offset'], w.quantize,
                               atol=1e-6)
    assert set(np.unique(z['ip1/1/codes'])) <= {-1, 0, 1}
    assert float(z['ip1/1/alpha_int']).is_integer()
    assert np.abs(z['ip2/0/codes']).max() <= 7
    # a plain model has nothing to export: clear message, status 1
    plain = make_net(caffe_pb2.TEST, comp1='', comp2='')
    p2 = str(tmp_path / 'plain.caffemodel')
    plain.save(p2)
    assert main(['compress_export', '--weights', p2, '--output', out]) == 1
    assert 'nothing to export' in capsys.readouterr().err


def test_report_of_live_net(trained):
    from qcaffe.compress.report import net_report
    text = net_report(trained[0])
    assert 'Quantize' in text and 'whole model' in text


def test_net_spec_keywords_give_the_repeated_messages():
    from qcaffe import net_spec
    L = net_spec.layers
    n = net_spec.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weights_compress=["ULQ", "ULQ"],
                            weights_compress_param=[{"maxbits": 2}, {"maxbits": 2}],
                            activations_compress="Clip",
                            activations_compress_param={"maxbits": 8})
    proto = n.to_proto()
    conv = proto.layer[1]
    assert list(conv.weights_compress) == ['ULQ', 'ULQ']
    assert [p.maxbits for p in conv.weights_compress_param] == [2, 2]
    assert list(conv.activations_compress) == ['Clip']
    assert [p.maxbits for p in conv.activations_compress_param] == [8]
    text = str(proto)
    assert 'weights_compress: "ULQ"' in text and 'activations_compress_param {' in text


def test_pycaffe_surface_and_qc_parse_data_recipe(tmp_path):
    """QC demo.py: integers back from layer.blobs[i].quantize and the layer's params."""
    import qcaffe as caffe
    proto = tmp_path / 'net.prototxt'
    proto.write_text(NET % (COMP1, COMP2))
    net = caffe.Net(str(proto), caffe.TRAIN)
    net.blobs['data'].data[...] = np.random.RandomState(1).randn(3, 8)
    net.forward()
    layer = net.layer_dict['ip1']
    assert layer.weights_compress == ['ULQ', 'Ternary_Quantize']
    p0, p1 = layer.weights_compress_param
    ulq_int = (layer.blobs[0].quantize - p0.delta) / p0.alpha + 0.5
    np.testing.assert_allclose(ulq_int, np.round(ulq_int), atol=1e-4)
    assert set(np.round(ulq_int).ravel()) <= {-1.0, 0.0, 1.0, 2.0}
    tq_int = layer.blobs[1].quantize / p1.alpha
    assert set(np.round(tq_int, 4).ravel()) <= {-1.0, 0.0, 1.0}
    assert float(p1.alpha / 2.0 ** p1.fixedpos).is_integer()
    act = net.blobs['ip1'].data / layer.activations_compress_param[0].alpha   # Clip
    np.testing.assert_allclose(act, np.round(act), atol=1e-3)
    assert np.abs(np.round(act)).max() <= 127
    assert net.params['ip2'][0].quantize is not None and net.params['ip2'][1].quantize is None
    with pytest.raises(AttributeError):
        p0.alpha = 1.0                     # read-only as in QC's bindings


def test_report_of_a_float_model_with_a_compressed_prototxt(tmp_path, capsys):
    """--model applies its weights_compress to a plain caffemodel: quantized on the fly."""
    from qcaffe.cli import main
    plain = make_net(caffe_pb2.TEST, comp1='', comp2='')
    weights = str(tmp_path / 'fp.caffemodel')
    plain.save(weights)
    model = tmp_path / 'q.prototxt'
    model.write_text(NET % (COMP1, COMP2))
    assert main(['compress_report', '--weights', weights, '--model', str(model)]) == 0
    out = capsys.readouterr().out
    assert 'computed' not in out and 'ip2' in out and 'Quantize' in out
    from qcaffe.compress.export import from_files
    entries = from_files(weights, str(model))
    assert [e.source for e in entries] == ['computed'] * 3


@pytest.mark.parametrize('argv,msg', [
    (['compress_report'], '--weights is required'),
    (['compress_report', '--weights', '/nonexistent.caffemodel'], 'does not exist'),
    (['compress_export', '--weights', '/nonexistent.caffemodel'], '--output is required'),
])
def test_cli_errors_are_one_clear_line(argv, msg, capsys):
    from qcaffe.cli import main
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert msg in err and 'Traceback' not in err


def test_example_prototxts_match_the_netspec_script(tmp_path):
    """examples/mnist/lenet_quant_*.prototxt are what quant_lenet_netspec.py writes."""
    import os
    import sys
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    sys.path.insert(0, os.path.join(root, 'examples', 'mnist'))
    try:
        import quant_lenet_netspec as qs
    finally:
        sys.path.pop(0)
    for method, bits, tag in (('ULQ', 2, 'ulq2'), ('Ternary_Quantize', 4, 'tq4')):
        net_path, solver_path = qs.write(method, bits, str(tmp_path))
        committed = os.path.join(root, 'examples', 'mnist',
                                 'lenet_quant_%s_train_test.prototxt' % tag)
        assert open(net_path).read() == open(committed).read()
        param = caffe_pb2.NetParameter()
        parse_prototxt_text(open(committed).read(), param)
        conv1 = [l for l in param.layer if l.name == 'conv1'][0]
        assert list(conv1.weights_compress) == [method, method]
        assert [p.maxbits for p in conv1.weights_compress_param] == [bits, bits]
        assert list(conv1.activations_compress) == ['Clip']
        s = caffe_pb2.SolverParameter()
        parse_prototxt_text(open(solver_path).read(), s)
        assert (s.max_iter, s.lr_policy) == (15620, 'inv')
        assert (s.base_lr, s.momentum, s.weight_decay) == pytest.approx((0.01, 0.9, 5e-4))


# ------------------------------------------------ loading rules (compression.md 0.10)
def test_loading_takes_the_files_params_when_settings_agree(trained, qlog):
    net, path, x, out = trained
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    f_ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
    net2 = make_net(caffe_pb2.TEST)
    net2.copy_from(path)
    ip1 = net2.layers[net2.layer_names.index('ip1')]
    for mine, theirs in ((ip1.weights_compress_param, f_ip1.weights_compress_param),
                         (ip1.activations_compress_param, f_ip1.activations_compress_param)):
        for p, f in zip(mine, theirs):     # before any forward: the file's values
            assert (p.alpha, p.delta, p.fixedpos, p.maxbits) == (f.alpha, f.delta, f.fixedpos,
                                                                 f.maxbits)
    assert ip1.activations_compress_param[0].alpha > 0
    assert not [m for m in qlog.warnings() if 'weights file' in m]
    np.testing.assert_array_equal(forward(net2, x), out)


@pytest.mark.parametrize('comp1,what', [
    (COMP1.replace('weights_compress_param { maxbits: 2 }', 'weights_compress_param { maxbits: 4 }'),
     ('blob 0', 'ULQ maxbits 2', 'ULQ maxbits 4')),
    (COMP1.replace('weights_compress: "ULQ"', 'weights_compress: "Quantize"'),
     ('blob 0', 'ULQ maxbits 2', 'Quantize maxbits 2')),
], ids=['maxbits', 'method'])
def test_prototxt_setting_wins_over_the_files_with_a_warning(trained, qlog, comp1, what):
    from qcaffe.compress.quantizers import METHODS
    net, path, x, _ = trained
    net2 = make_net(caffe_pb2.TEST, comp1=comp1)
    net2.copy_from(path)
    warned = [m for m in qlog.warnings() if 'weights file' in m]
    assert len(warned) == 1
    for part in ('Layer ip1',) + what + (path,):
        assert part in warned[0]
    forward(net2, x)
    ip1 = net2.layers[net2.layer_names.index('ip1')]
    p0 = ip1.weights_compress_param[0]
    method, k = ip1.weights_compress[0], p0.maxbits
    assert (method, k) != ('ULQ', 2) and p0.maxbits == (4 if method == 'ULQ' else 2)
    expect = np.empty_like(ip1.blobs[0].data)
    METHODS[method].fn(ip1.blobs[0].data, k, expect)    # quantized afresh, prototxt's setting
    np.testing.assert_array_equal(ip1.blobs[0].quantize, expect)
    saved = caffe_pb2.NetParameter()       # the file's array of the agreeing blob 1 is used
    saved.ParseFromString(open(path, 'rb').read())
    f_ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
    np.testing.assert_array_equal(ip1.blobs[1].quantize.ravel(), f_ip1.blobs[1].quantize)


def test_activation_setting_and_clip_opt_in_compared_and_saved(tmp_path, qlog):
    exact = COMP1.replace('activations_compress_param { maxbits: 8 }',
                          'activations_compress_param { maxbits: 2 clip_to_maxbits: true }')
    net = make_net(caffe_pb2.TRAIN, comp1=exact)
    forward(net, np.random.RandomState(0).randn(3, 8).astype(np.float32))
    ip1 = net.layers[net.layer_names.index('ip1')]
    assert len(np.unique(net.blob_by_name('ip1').data)) <= 3      # a true 2-bit Clip
    path = str(tmp_path / 'exact.caffemodel')
    net.save(path)
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, 'rb').read())
    f_ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
    assert f_ip1.activations_compress_param[0].clip_to_maxbits     # saved with the model
    assert f_ip1.activations_compress_param[0].maxbits == 2
    del qlog.records[:]
    net2 = make_net(caffe_pb2.TEST)          # the prototxt's Clip: QC's, maxbits 8
    net2.copy_from(path)
    warned = [m for m in qlog.warnings() if 'weights file' in m]
    assert len(warned) == 1 and 'Layer ip1 top 0' in warned[0]
    assert 'Clip maxbits 2 clip_to_maxbits' in warned[0] and 'Clip maxbits 8' in warned[0]
    p = net2.layers[net2.layer_names.index('ip1')].activations_compress_param[0]
    assert p.maxbits == 8 and not p.clip_to_maxbits and p.alpha == 0   # the file's not taken
    assert ip1.activations_compress_param[0].alpha > 0


@pytest.mark.parametrize('exact,bits', [(False, 8), (True, 2)])
def test_report_and_export_count_clip_at_the_bits_it_uses(tmp_path, capsys, exact, bits):
    from qcaffe.cli import main
    comp2 = ('weights_compress: "Clip" weights_compress_param { maxbits: 2%s }'
             % (' clip_to_maxbits: true' if exact else ''))
    net = make_net(caffe_pb2.TRAIN, comp2=comp2)
    forward(net, np.random.RandomState(2).randn(3, 8).astype(np.float32))
    path = str(tmp_path / 'clip.caffemodel')
    net.save(path)
    assert main(['compress_report', '--weights', path]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('ip2')][0]
    assert line.split()[2:4] == ['Clip', str(bits)]
    out = str(tmp_path / 'codes.npz')
    assert main(['compress_export', '--weights', path, '--output', out]) == 0
    z = np.load(out)
    assert int(z['ip2/0/bits']) == bits and int(z['ip2/0/maxbits']) == 2
    assert np.abs(z['ip2/0/codes']).max() == 2 ** (bits - 1) - 1
