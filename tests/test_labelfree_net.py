"""Label-free compression of whole nets (qcaffe.compress.labelfree_net, ``qcaffe labelfree``).

Each stage is checked against what the original computes: stage 1 against
:func:`fit_scale` of the full-precision weights, stage 2 (BatchNorm statistics streamed over
mini-batches, several passes) against the original's one TRAIN forward over all images in one
batch, stage 3 (step searches streamed) against the whole-array search on that forward's ReLU
tops.  Then the written model through ``qcaffe test``, the options and the bad inputs.

A learnable toy task keeps it fast: 8x8 images whose label is the brightest quadrant.
"""
import tracemalloc

import numpy as np
import pytest

import qcaffe
from qcaffe.cli import main as cli
from qcaffe.compress.labelfree import act_step_search, fit_scale
from qcaffe.compress.labelfree_net import (ALPHA_SUFFIX, LabelFree, LabelFreeError, Options,
                                           _stand_in, calibration_param)
from qcaffe.data.lmdb_io import encode_datums, key_for, write_lmdb
from qcaffe.io import load_weights_file, read_net_param, read_prototxt
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2

U = 2.0 ** -24

NET = """name: "QuadBN"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 crop_size: 7 }
  data_param { source: "%(train)s" batch_size: 32 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 crop_size: 7 }
  data_param { source: "%(test)s" batch_size: 50 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false
                      weight_filler { type: "xavier" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "drop2" type: "Dropout" bottom: "conv2" top: "conv2"
  dropout_param { dropout_ratio: 0.2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "bn3" type: "BatchNorm" bottom: "ip1" top: "ip1" }
layer { name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "%(net)s"
base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"
max_iter: 150 display: 0 snapshot: 0 random_seed: 3 solver_mode: CPU
"""


def quadrant_lmdb(path, n, seed, size=8, channels=1):
    """Images whose label is the brightest quadrant (as tests/test_cli.py's task)."""
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 4, n)
    images = rng.randint(0, 100, (n, channels, size, size)).astype(np.uint8)
    h = size // 2
    for q in range(4):
        r, c = divmod(q, 2)
        images[labels == q, :, h * r:h * r + h, h * c:h * c + h] += 120
    records = encode_datums(images, labels)
    write_lmdb(path, ((key_for(i), records[i]) for i in range(n)))
    return path


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """A trained full-precision BatchNorm net on the quadrant task: (dir, prototxt, weights,
    train LMDB)."""
    root = tmp_path_factory.mktemp('labelfree')
    train = quadrant_lmdb(str(root / 'train_lmdb'), 320, 0)
    test = quadrant_lmdb(str(root / 'test_lmdb'), 200, 1)
    net = root / 'net.prototxt'
    net.write_text(NET % {'train': train, 'test': test})
    (root / 'solver.prototxt').write_text(SOLVER % {'net': net})
    solver = qcaffe.SGDSolver(str(root / 'solver.prototxt'))
    solver.solve()
    weights = str(root / 'fp.caffemodel')
    solver.net.save(weights)
    return root, str(net), weights, train


def _lf(model, **options):
    _, net, weights, train = model
    return LabelFree(read_net_param(net), weights, train, Options(**options), source=net)


def _one_batch_net(lf, images, labels, dropout=False):
    """The original's way: the calibration net with every image in one batch."""
    param = calibration_param(lf.fp_param, dropout)
    for lp in param.layer:
        if lp.name == lf.data_lp.name:
            lp.CopyFrom(_stand_in(lf.data_lp, images.shape[1:], len(images)))
    net = Net.from_param(param, phase=caffe_pb2.TRAIN)
    net.copy_trained_layers_from_param(lf.net.to_proto())
    net.blob_by_name('data').data[...] = images
    net.blob_by_name('label').data[...] = labels
    return net


def _all_images(lf, count):
    batches = list(lf.images.batches())
    return (np.concatenate([d for _, d, _ in batches])[:count],
            np.concatenate([l for _, _, l in batches])[:count])


def _bn_blobs(net):
    return {n: [b.data.copy() for b in l.blobs] for n, l in zip(net.layer_names, net.layers)
            if l.type == 'BatchNorm'}


# ------------------------------------------------------------------------------ stages
def test_weights_stage(model):
    lf = _lf(model, bn_images=32, act_images=32)
    fp = {n: [b.data.copy() for b in l.blobs] for n, l in zip(lf.net.layer_names, lf.net.layers)}
    lf.quantize_weights()
    net = lf.net
    kinds = {'conv1': ('fixed', 8), 'conv2': ('power', 4), 'ip1': ('power', 4),
             'ip2': ('fixed', 8)}            # the first and last quantized layers: 8-bit fixed
    for name, (qtype, bits) in kinds.items():
        fit = fit_scale(fp[name][0], qtype, bits)
        layer = net.layers[net.layer_index(name)]
        alpha = net.layers[net.layer_index(name + ALPHA_SUFFIX)]
        np.testing.assert_array_equal(layer.blobs[0].data, fit.q)
        np.testing.assert_array_equal(alpha.blobs[0].data, fit.alpha)
        if len(fp[name]) > 1:       # conv keeps b, the Scale adds b(1 - alpha): alpha·Q∗x + b
            np.testing.assert_array_equal(layer.blobs[1].data, fp[name][1])
            np.testing.assert_array_equal(alpha.blobs[1].data,
                                          fp[name][1] * (np.float32(1) - fit.alpha))
        else:
            assert len(alpha.blobs) == 1
        levels = np.abs(fit.q[fit.q != 0])
        if qtype == 'power':        # powers of two 2^iw ... 2^(iw+6)
            e = np.log2(levels)
            assert (e == np.round(e)).all()
            assert e.min() >= fit.best_width and e.max() <= fit.best_width + 6
        else:                       # k * 2^-(8 - iw), k in -128 ... 127
            k = fit.q * 2.0 ** (8 - fit.best_width)
            assert (k == np.round(k)).all() and k.min() >= -128 and k.max() <= 127
    for name in ('bn1', 'sc1', 'bn2', 'bn3'):       # every other blob copied
        for b, f in zip(net.layers[net.layer_index(name)].blobs, fp[name]):
            np.testing.assert_array_equal(b.data, f)


def test_bn_and_activation_stages_match_one_big_batch(model):
    # 40 BatchNorm images in batches of 7 (the last one short), dropout off, random TRAIN crops
    lf = _lf(model, bn_images=40, act_images=30, batch_size=7, dropout=False)
    lf.quantize_weights()
    lf.renormalize()
    ours = _bn_blobs(lf.net)
    images, labels = _all_images(lf, 40)
    ref = _one_batch_net(lf, images, labels)
    ref.forward_prefilled()          # the original's renorm.py: one forward, batch statistics
    for name, (mean, var, factor) in _bn_blobs(ref).items():
        m = 40 * ref.bottom_vecs[ref.layer_index(name)][0].count(2) if \
            ref.bottom_vecs[ref.layer_index(name)][0].num_axes > 2 else 40
        tol = 4 * m * U             # float32 sums over m values (the reference's), twice
        assert factor[0] == ours[name][2][0] == 1
        np.testing.assert_allclose(ours[name][0], mean, rtol=tol, atol=tol * np.abs(mean).max())
        np.testing.assert_allclose(ours[name][1], var, rtol=tol)
    # stage 3: the original's activations_quan.py on one batch of the first 30 images, BN
    # with the new global statistics, against the streamed searches
    steps = lf.calibrate_activations()
    act = _one_batch_net(lf, images[:30], labels[:30])
    for layer in act.layers:
        if layer.type == 'BatchNorm':
            layer.use_global_stats = True
    act.copy_trained_layers_from_param(lf.net.to_proto())
    act.forward_prefilled()
    assert sorted(steps) == ['relu1', 'relu2', 'relu3']
    for name, step in steps.items():
        x = act.top_vecs[act.layer_index(name)][0].data
        whole = act_step_search(x)
        np.testing.assert_allclose(step, whole.step, rtol=x.size * U)
        assert step.dtype == np.float32 and step > 0


def test_dropout_follows_training_by_default_and_repeats(model):
    runs = [_lf(model, bn_images=30, act_images=20, batch_size=8, dropout=d).run()[1]
            for d in (True, True, False)]
    bns = [{lp.name: [np.array(b.data) for b in lp.blobs] for lp in w.layer
            if lp.type == 'BatchNorm'} for w in runs]
    for name in ('bn1', 'bn2', 'bn3'):
        for a, b in zip(bns[0][name], bns[1][name]):
            np.testing.assert_array_equal(a, b)              # same seed: same result
    # bn3 comes after the dropout: its statistics see the TRAIN-phase masks unless disabled
    np.testing.assert_array_equal(bns[0]['bn2'][1], bns[2]['bn2'][1])
    assert not np.allclose(bns[0]['bn3'][1], bns[2]['bn3'][1], rtol=1e-3)


# ------------------------------------------------------------------ command and files
def test_command_writes_a_model_that_qcaffe_test_scores(model, capsys):
    root, net, weights, train = model
    q_model, q_weights = str(root / 'q.prototxt'), str(root / 'q.caffemodel')
    assert cli(['labelfree', '--model', net, '--weights', weights, '--images', train,
                '--bn-images', '64', '--act-images', '32', '--batch-size', '16',
                '--output-model', q_model, '--output-weights', q_weights]) == 0
    err = capsys.readouterr().err
    for text in ('Label-free 1/3', '>> Conv/FC conv1 (fixed, 8 bits)', 'BEST Bitwidth',
                 'BEST 2^n starts from', 'Label-free 2/3', '>> BN bn3', 'Label-free 3/3',
                 '>> processing conv2', 'iter  1  | alpha', '>> relu3: step'):
        assert text in err, text
    final = read_prototxt(q_model, caffe_pb2.NetParameter())
    by_name = {}
    for lp in final.layer:
        by_name.setdefault(lp.name, lp)
    assert [lp.name for lp in final.layer].count('data') == 2     # the user's Data layers
    for relu in ('relu1', 'relu2', 'relu3'):
        assert by_name[relu].type == 'Quant' and by_name[relu].relu_param.negative_slope > 0
        assert not by_name[relu].relu_param.HasField('quant_bits')   # 8 bits: the original's
    for bn in ('bn1', 'bn2', 'bn3'):
        p = by_name[bn].batch_norm_param
        assert p.use_global_stats and p.moving_average_fraction == pytest.approx(0.999)
    names = [lp.name for lp in final.layer]
    for conv, bias in (('conv1', True), ('conv2', False), ('ip1', True), ('ip2', True)):
        scale = by_name[conv + ALPHA_SUFFIX]
        assert names.index(conv + ALPHA_SUFFIX) == names.index(conv) + 1
        assert scale.type == 'Scale' and scale.bottom == scale.top == by_name[conv].top[:1]
        assert scale.scale_param.bias_term == bias
    saved = {name: blobs for name, _, blobs in load_weights_file(q_weights)}
    assert saved['data'] == [] and len(saved['conv1' + ALPHA_SUFFIX]) == 2

    # the round trip: qcaffe test scores both models on the test LMDB
    def accuracy(m, w):
        assert cli(['test', '--model', m, '--weights', w, '--iterations', '4']) == 0
        line = [l for l in capsys.readouterr().err.splitlines() if '] accuracy = ' in l][-1]
        return float(line.rsplit('= ', 1)[1])
    fp_acc, q_acc = accuracy(net, weights), accuracy(q_model, q_weights)
    assert fp_acc >= 0.95 and q_acc >= fp_acc - 0.05, (fp_acc, q_acc)

    # the quantized net runs Quant layers: every ReLU output on its step grid, codes <= 127
    qnet = qcaffe.Net(q_model, q_weights, qcaffe.TEST)
    qnet.forward()
    for relu, top in (('relu1', 'conv1'), ('relu2', 'conv2'), ('relu3', 'ip1')):
        codes = qnet.blobs[top].data / np.float32(by_name[relu].relu_param.negative_slope)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert codes.min() >= 0 and codes.max() <= 127 + 1e-3
    # alpha·Q∗x + b: the conv with Q then its alpha Scale equals a conv with weights alpha·Q
    conv1 = qnet.params['conv1']
    alpha = qnet.params['conv1' + ALPHA_SUFFIX]
    x = qnet.blobs['data'].data
    w_eff = conv1[0].data * alpha[0].data[:, None, None, None]
    ref = _conv_same(x, w_eff) + conv1[1].data[None, :, None, None]
    got = _conv_same(x, conv1[0].data) + conv1[1].data[None, :, None, None]
    got = got * alpha[0].data[None, :, None, None] + alpha[1].data[None, :, None, None]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _conv_same(x, w):
    """3x3 convolution, pad 1, stride 1 (direct sum)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum('nchw,oc->nohw', xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out


def test_act_bits_option_writes_quant_bits(model, tmp_path):
    _, net, weights, train = model
    final, _ = _lf(model, act_bits=4, bn_images=16, act_images=16, batch_size=16).run()
    quant = [lp for lp in final.layer if lp.type == 'Quant']
    assert len(quant) == 3 and all(lp.relu_param.quant_bits == 4 for lp in quant)


# --------------------------------------------------------------------------- bad input
def assert_fails(capsys, args, *needles):
    assert cli(['labelfree'] + args) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if ': error: ' in l]
    assert len(lines) == 1 and 'Traceback' not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _args(fixture, tmp_path, **flags):
    _, net, weights, train = fixture
    args = {'model': net, 'weights': weights, 'images': train,
            'output-model': str(tmp_path / 'q.prototxt'),
            'output-weights': str(tmp_path / 'q.caffemodel'), 'bn-images': '16',
            'act-images': '16'}
    args.update(flags)
    return [a for k, v in args.items() for a in ('--' + k, v)]


@pytest.mark.parametrize('flag,value,message', [
    ('weight-bits', '9', 'weight_bits (--weight-bits) must be in 2..8, got 9'),
    ('weight-bits', '1', 'weight_bits (--weight-bits) must be in 2..8, got 1'),
    ('act-bits', '17', 'act_bits (--act-bits) must be in 2..16, got 17'),
    ('edge-bits', '1', 'edge_bits (--edge-bits) must be in 2..16, got 1'),
    ('bn-images', '1', 'bn_images (--bn-images) must be at least 2, got 1'),
    ('batch-size', '0', 'batch_size (--batch-size) must be at least 1, got 0')])
def test_bits_and_counts_out_of_range(model, tmp_path, capsys, flag, value, message):
    assert_fails(capsys, _args(model, tmp_path, **{flag: value}), message)


def test_too_few_images(model, tmp_path, capsys):
    assert_fails(capsys, _args(model, tmp_path, **{'bn-images': '1000'}),
                 'holds 320 records, fewer than the 1000 asked for', '--images',
                 '1000 for BatchNorm, 16 for activations')


def test_no_batchnorm(model, tmp_path, capsys):
    plain = tmp_path / 'plain.prototxt'
    text = open(model[1]).read()
    for bn in ('bn1', 'bn2', 'bn3'):
        start = text.index('layer { name: "%s"' % bn)
        text = text[:start] + text[text.index('\n', start) + 1:]
    plain.write_text(text)
    assert_fails(capsys, _args(model, tmp_path, model=str(plain)), 'has no BatchNorm layer',
                 str(plain))


def test_missing_inputs(model, tmp_path, capsys):
    args = _args(model, tmp_path)
    i = args.index('--images')
    assert_fails(capsys, args[:i] + args[i + 2:], '--images is required')
    assert_fails(capsys, _args(model, tmp_path, images=str(tmp_path / 'nope')),
                 'does not exist')
    assert_fails(capsys, _args(model, tmp_path, **{'output-model': str(tmp_path / 'x' / 'q')}),
                 '--output-model', 'does not exist')


# ------------------------------------------------------------------- other net shapes
DEPLOY = """name: "DW"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "conv1" top: "dw"
  convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 bias_term: false
                      weight_filler { type: "xavier" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "dw" top: "dw" }
layer { name: "relu2" type: "ReLU" bottom: "dw" top: "dw" }
layer { name: "fc" type: "InnerProduct" bottom: "dw" top: "fc"
  inner_product_param { num_output: 5 transpose: true weight_filler { type: "xavier" } } }
"""


def test_depthwise_prelu_transposed_ip_and_input_layer(tmp_path):
    images = quadrant_lmdb(str(tmp_path / 'rgb_lmdb'), 24, 2, size=6, channels=3)
    (tmp_path / 'dw.prototxt').write_text(DEPLOY)
    fp = qcaffe.Net(str(tmp_path / 'dw.prototxt'), qcaffe.TEST)
    fp.params['prelu1'][0].data[...] = np.linspace(0.1, 0.6, 6)
    fp.save(str(tmp_path / 'dw.caffemodel'))
    final, weights = LabelFree(read_net_param(str(tmp_path / 'dw.prototxt')),
                               str(tmp_path / 'dw.caffemodel'), images,
                               Options(bn_images=24, act_images=24, batch_size=10)).run()
    names = [lp.name for lp in final.layer]
    assert 'dw' + ALPHA_SUFFIX in names and 'fc' + ALPHA_SUFFIX in names   # 4(g)#5
    saved = {lp.name: [np.array(b.data) for b in lp.blobs] for lp in weights.layer}
    np.testing.assert_allclose(saved['prelu1'][0], np.linspace(0.1, 0.6, 6), rtol=1e-6)
    # transposed IP: weights (K, n), alpha per output (column)
    w_fp = fp.params['fc'][0].data
    q, alpha = saved['fc'][0].reshape(w_fp.shape), saved['fc' + ALPHA_SUFFIX][0]
    assert alpha.shape == (5,)
    np.testing.assert_array_equal(q.T, fit_scale(w_fp.T, 'fixed').q)
    assert [lp.type for lp in final.layer if lp.name == 'relu2'] == ['Quant']
    assert [lp.type for lp in final.layer if lp.name == 'prelu1'] == ['PReLU']
    # the written pair runs
    net = Net.from_param(final, phase=caffe_pb2.TEST)
    net.copy_trained_layers_from_param(weights)
    net.forward_prefilled()
    assert np.isfinite(net.blob_by_name('fc').data).all()


def test_input_layer_shape_must_match_the_images(tmp_path):
    images = quadrant_lmdb(str(tmp_path / 'gray_lmdb'), 8, 2, size=6, channels=1)
    (tmp_path / 'dw.prototxt').write_text(DEPLOY)
    qcaffe.Net(str(tmp_path / 'dw.prototxt'), qcaffe.TEST).save(str(tmp_path / 'dw.caffemodel'))
    with pytest.raises(LabelFreeError, match=r"Input layer 'data' expects items of shape "
                       r"\(3, 6, 6\); the images are \(1, 6, 6\)"):
        LabelFree(read_net_param(str(tmp_path / 'dw.prototxt')), str(tmp_path / 'dw.caffemodel'),
                  images, Options(bn_images=8, act_images=8))


# ---------------------------------------------------------------------------- memory
BIG = """name: "Big"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 } data_param { source: "%s" batch_size: 20 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 6 stride: 6 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
"""


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    # 300 images of 26x26: conv1 alone would hold 300*8*24*24*4 B = 5.5 MB if the images went
    # through in one batch (the original); streamed in batches of 20 the peak stays put
    images = quadrant_lmdb(str(tmp_path / 'big_lmdb'), 300, 5, size=26)
    (tmp_path / 'big.prototxt').write_text(BIG % images)
    net = qcaffe.Net(str(tmp_path / 'big.prototxt'), qcaffe.TEST)
    net.save(str(tmp_path / 'big.caffemodel'))
    del net
    peaks = []
    for count in (30, 300):
        tracemalloc.start()
        LabelFree(read_net_param(str(tmp_path / 'big.prototxt')), str(tmp_path / 'big.caffemodel'),
                  images, Options(bn_images=count, act_images=count, batch_size=20)).run()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 0.5e6, peaks


def test_shared_weights_are_refused(model, tmp_path):
    root, net, weights, train = model
    text = open(net).read().replace(
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"',
        'layer { name: "ip1b" type: "InnerProduct" bottom: "ip1" top: "ip1b" param { name: "w" }\n'
        '  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }\n'
        'layer { name: "ip1c" type: "InnerProduct" bottom: "ip1b" top: "ip1c" param { name: "w" }\n'
        '  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }\n'
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip1c" top: "ip2"')
    (tmp_path / 'shared.prototxt').write_text(text)
    with pytest.raises(LabelFreeError, match="layer 'ip1c' shares its weights with layer 'ip1b'"):
        LabelFree(read_net_param(str(tmp_path / 'shared.prototxt')), weights, train,
                  Options(bn_images=8, act_images=8))
