"""Net semantics of shared/spec/caffe.md section 3 (Caffe's Net::Init and friends)."""
import numpy as np
import pytest

from qcaffe import backend
from qcaffe.io import parse_prototxt_text, read_binary_proto, read_net_param
from qcaffe.io.errors import QcaffeError
from qcaffe.net import Net, NetError, WeightsMismatchError
from qcaffe.proto import caffe_pb2
from shared_data import require_shared

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_net(text, phase=None, level=None, stages=None):
    param = caffe_pb2.NetParameter()
    parse_prototxt_text(text, param)
    return Net.from_param(param, phase=phase, level=level, stages=stages)


@pytest.fixture(autouse=True)
def _seed():
    backend.set_random_seed(1701)


INPUT = 'layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'


def ip(name, bottom, top, n=4, extra=''):
    return ('layer { name: "%s" type: "InnerProduct" bottom: "%s" top: "%s" %s '
            'inner_product_param { num_output: %d weight_filler { type: "gaussian" } '
            'bias_filler { type: "gaussian" } } }\n' % (name, bottom, top, extra, n))


# ------------------------------------------------------------------ include / exclude
RULES = INPUT + ''.join([
    ip('train_only', 'x', 't1', extra='include { phase: TRAIN }'),
    ip('test_only', 'x', 't2', extra='include { phase: TEST }'),
    ip('not_in_test', 'x', 't3', extra='exclude { phase: TEST }'),
    ip('stage_a', 'x', 't4', extra='include { stage: "a" }'),
    ip('stage_a_and_b', 'x', 't5', extra='include { stage: "a" stage: "b" }'),
    ip('stage_a_or_b', 'x', 't6', extra='include { stage: "a" } include { stage: "b" }'),
    ip('not_stage_b', 'x', 't7', extra='include { not_stage: "b" }'),
    ip('level_ge_2', 'x', 't8', extra='include { min_level: 2 }'),
    ip('level_le_1', 'x', 't9', extra='include { max_level: 1 }'),
    ip('train_stage_a', 'x', 't10', extra='include { phase: TRAIN stage: "a" }'),
])


def _names(net):
    return set(n for n in net.layer_names if not n.endswith('_split')) - {'data'}


@pytest.mark.parametrize('phase,level,stages,expect', [
    (TEST, None, None, {'test_only', 'not_stage_b', 'level_le_1'}),
    (TRAIN, None, None, {'train_only', 'not_in_test', 'not_stage_b', 'level_le_1'}),
    (TEST, None, ['a'], {'test_only', 'stage_a', 'stage_a_or_b', 'not_stage_b', 'level_le_1'}),
    (TEST, None, ['a', 'b'], {'test_only', 'stage_a', 'stage_a_and_b', 'stage_a_or_b',
                              'level_le_1'}),
    (TEST, None, ['b'], {'test_only', 'stage_a_or_b', 'level_le_1'}),
    (TEST, 2, None, {'test_only', 'not_stage_b', 'level_ge_2'}),
    (TRAIN, 1, ['a'], {'train_only', 'not_in_test', 'stage_a', 'stage_a_or_b', 'not_stage_b',
                       'level_le_1', 'train_stage_a'}),
])
def test_include_exclude_rules(phase, level, stages, expect):
    net = make_net(RULES, phase=phase, level=level, stages=stages)
    assert _names(net) == expect
    assert net.phase == phase
    # every layer gets the net's phase written into its LayerParameter
    assert all(lp.phase == phase for lp in net.param.layer)


def test_state_in_file_and_appended_stages():
    text = 'state { phase: TRAIN stage: "a" }\n' + RULES
    net = make_net(text)
    assert net.phase == TRAIN and 'train_stage_a' in _names(net)
    net = make_net(text, stages=['b'])  # appended to the file's stages: a and b
    assert 'stage_a_and_b' in _names(net)


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(NetError, match="'both'.*include and exclude"):
        make_net(INPUT + ip('both', 'x', 'y', extra='include { phase: TEST } '
                                                      'exclude { phase: TRAIN }'))


def test_include_and_exclude_together_names_the_layer():
    with pytest.raises(QcaffeError, match='both'):
        make_net(INPUT + ip('both', 'x', 'y', extra='include { phase: TEST } '
                                                      'exclude { phase: TRAIN }'))


# ------------------------------------------------------------------------ splits
SPLITS = INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y1') + ip('c', 'h', 'y2') + (
    'layer { name: "sm" type: "Softmax" bottom: "h" top: "h" }\n') + ip('d', 'h', 'y3')


def test_split_names_and_wiring():
    net = make_net(INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y1') + ip('c', 'h', 'y2'))
    assert net.layer_names == ['data', 'a', 'h_a_0_split', 'b', 'c']
    split = net.param.layer[2]
    assert split.type == 'Split' and list(split.bottom) == ['h']
    assert list(split.top) == ['h_a_0_split_0', 'h_a_0_split_1']
    assert list(net.param.layer[3].bottom) == ['h_a_0_split_0']
    assert list(net.param.layer[4].bottom) == ['h_a_0_split_1']
    assert net.blob_names == ['x', 'h', 'h_a_0_split_0', 'h_a_0_split_1', 'y1', 'y2']
    net.forward_prefilled()
    h = net.blob_by_name('h').data
    np.testing.assert_array_equal(net.blob_by_name('h_a_0_split_1').data, h)


def test_split_after_last_in_place_writer():
    net = make_net(INPUT + ip('a', 'x', 'h') +
                   'layer { name: "sm" type: "Softmax" bottom: "h" top: "h" }\n' +
                   ip('b', 'h', 'y1') + ip('c', 'h', 'y2'))
    # the producer of the split's input is the in-place layer "sm", top index 0
    assert 'h_sm_0_split' in net.layer_names
    assert net.layer_names.index('h_sm_0_split') == net.layer_names.index('sm') + 1


def test_split_with_loss_weight_on_consumed_top():
    net = make_net(INPUT + ip('a', 'x', 'h', extra='loss_weight: 2') + ip('b', 'h', 'y'))
    split = net.param.layer[net.layer_names.index('h_a_0_split')]
    assert list(split.loss_weight) == [2.0, 0.0]
    assert list(net.param.layer[1].loss_weight) == []
    # the consumer reads split_1; split_0 carries the loss
    assert list(net.param.layer[net.layer_names.index('b')].bottom) == ['h_a_0_split_1']
    _, loss = net.forward_prefilled()
    np.testing.assert_allclose(loss, 2 * net.blob_by_name('h').data.sum(dtype=np.float64),
                               rtol=1e-5)


def test_filtered_consumers_do_not_get_splits():
    net = make_net(INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y1') +
                   ip('c', 'h', 'y2', extra='include { phase: TRAIN }'), phase=TEST)
    assert not any(n.endswith('_split') for n in net.layer_names)


# --------------------------------------------------------------------- in place
def test_in_place_layer_reuses_the_blob():
    net = make_net(INPUT + ip('a', 'x', 'h') +
                   'layer { name: "sm" type: "Softmax" bottom: "h" top: "h" }\n')
    ia, isf = net.layer_names.index('a'), net.layer_names.index('sm')
    assert net.top_vecs[isf][0] is net.bottom_vecs[isf][0] is net.top_vecs[ia][0]
    assert net.blob_names == ['x', 'h']
    net.forward_prefilled()
    np.testing.assert_allclose(net.blob_by_name('h').data.sum(axis=1), 1, rtol=1e-5)


def test_top_produced_twice_is_an_error():
    with pytest.raises(NetError, match="'h' produced by multiple sources.*'b'"):
        make_net(INPUT + ip('a', 'x', 'h') + ip('b', 'x', 'h'))


# ------------------------------------------------------------------- loss weights
LOSS = INPUT + (
    'layer { name: "t" type: "Input" top: "target" input_param { shape { dim: 2 dim: 4 } } }\n'
) + ip('a', 'x', 'y') + (
    'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "l" }\n')


def test_loss_layer_default_weight_and_net_loss():
    net = make_net(LOSS)
    lp = net.param.layer[net.layer_names.index('loss')]
    assert list(lp.loss_weight) == [1.0]          # written into the layer's own parameter
    assert net.blob_loss_weights_list[net.blob_names.index('l')] == 1.0
    net.blob_by_name('x').data[...] = np.random.RandomState(0).rand(2, 3)
    net.blob_by_name('target').data[...] = np.random.RandomState(1).rand(2, 4)
    _, loss = net.forward_prefilled()
    y, t = net.blob_by_name('y').data, net.blob_by_name('target').data
    np.testing.assert_allclose(loss, ((y - t) ** 2).sum() / 4, rtol=1e-5)


def test_any_layer_is_a_loss_with_loss_weight_and_scaled_gradient():
    net = make_net(LOSS.replace('top: "l" }', 'top: "l" loss_weight: 3 }'))
    net.blob_by_name('x').data[...] = 1
    _, loss3 = net.forward_prefilled()
    net3_grad = (net.backward_all(), net.params_list[0].diff.copy())[1]
    net1 = make_net(LOSS)
    net1.copy_trained_layers_from_param(net.to_proto())
    net1.blob_by_name('x').data[...] = 1
    _, loss1 = net1.forward_prefilled()
    net1.backward_all()
    np.testing.assert_allclose(loss3, 3 * loss1, rtol=1e-5)
    np.testing.assert_allclose(net3_grad, 3 * net1.params_list[0].diff, rtol=1e-5)


def test_loss_weight_count_must_match_tops():
    with pytest.raises(QcaffeError, match='loss_weight'):
        make_net(INPUT + 'layer { name: "s" type: "Slice" bottom: "x" top: "p" top: "q" '
                 'slice_param { axis: 1 slice_point: 1 } loss_weight: 1 }\n')


# --------------------------------------------------------------- params and sharing
SHARED = INPUT + (
    ip('a', 'x', 'y1', extra='param { name: "w" lr_mult: 2 } param { name: "b" decay_mult: 0 }')
    + ip('b', 'x', 'y2', extra='param { name: "w" } param { name: "b" lr_mult: 5 }')
    + ip('c', 'x', 'y3', extra='param { lr_mult: 0 } param { lr_mult: 0.5 decay_mult: 3 }'))


def test_param_sharing_by_name():
    net = make_net(SHARED)
    a, b = net.layers[net.layer_index('a')], net.layers[net.layer_index('b')]
    assert len(net.params_list) == 6 and len(net.learnable_params) == 4
    assert net.param_owners == [-1, -1, 0, 1, -1, -1]
    assert b.blobs[0].shares_data_with(a.blobs[0])
    a.blobs[0].data[...] = 0.25
    assert (b.blobs[0].data == 0.25).all()
    # both layers accumulate their gradient into the one (shared) diff buffer
    net.clear_param_diffs()
    net.forward_prefilled()
    for name in ('y1', 'y2'):
        net.blob_by_name(name).diff[...] = 1
    net.backward_from_to(net.layer_index('b'), net.layer_index('a'))
    x = net.blob_by_name('x').data
    np.testing.assert_allclose(a.blobs[0].diff, 2 * np.ones((4, 1)) * x.sum(0), rtol=1e-5)


def test_lr_and_decay_mult():
    net = make_net(SHARED)
    # owners: a.w (lr 2, decay 1), a.b (lr 1 -> adopted 5 from the sharer, decay 0), c.w, c.b
    assert net.params_lr == [2.0, 5.0, 0.0, 0.5]
    assert net.params_weight_decay == [1.0, 0.0, 1.0, 3.0]
    c = net.layers[net.layer_index('c')]
    assert c.param_propagate_down == [False, True]   # lr_mult 0: no gradient computed


def test_lr_mult_mismatch_on_shared_param():
    with pytest.raises(NetError, match="Shared param 'w' has mismatched lr_mult"):
        make_net(INPUT + ip('a', 'x', 'y1', extra='param { name: "w" lr_mult: 1 }') +
                 ip('b', 'x', 'y2', extra='param { name: "w" lr_mult: 2 }'))


def test_shared_param_shape_mismatch():
    with pytest.raises(NetError, match="Cannot share param 'w' owned by layer 'a' with layer "
                                       "'b'; shape mismatch"):
        make_net(INPUT + ip('a', 'x', 'y1', extra='param { name: "w" }') +
                 ip('b', 'x', 'y2', n=5, extra='param { name: "w" }'))


def test_permissive_sharing_checks_count_only():
    net = make_net(INPUT + ip('a', 'x', 'y1', n=6, extra='param { name: "w" }') +
                   'layer { name: "b" type: "InnerProduct" bottom: "x" top: "y2" '
                   'param { name: "w" share_mode: PERMISSIVE } inner_product_param { '
                   'num_output: 6 transpose: true } }\n'.replace('x" top: "y2"', 'x" top: "y2"'))
    a, b = net.layers[net.layer_index('a')], net.layers[net.layer_index('b')]
    assert a.blobs[0].shape == (6, 3) and b.blobs[0].shape == (3, 6)
    assert b.blobs[0].shares_data_with(a.blobs[0])


def test_too_many_param_specs():
    with pytest.raises(NetError, match="Too many params specified for layer 'a'"):
        make_net(INPUT + ip('a', 'x', 'y', extra='param {} param {} param {}'))


# ---------------------------------------------------- backward needs, force_backward
def test_backward_needs_and_force_backward():
    text = LOSS + ip('side', 'x', 'unused')
    net = make_net(text)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need['a'] and need['loss'] and not need['side'] and not need['data']
    loss_i = net.layer_index('loss')
    assert net.bottom_need_backward[loss_i] == [True, False]
    forced = make_net('force_backward: true\n' + text)
    assert all(forced.layer_need_backward)
    # the label bottom of a LossLayer is refused, EuclideanLoss allows both
    assert forced.bottom_need_backward[forced.layer_index('loss')] == [True, True]
    assert forced.bottom_need_backward[forced.layer_index('a')] == [True]


def test_propagate_down_false_skips_the_branch():
    text = LOSS.replace('top: "l" }', 'top: "l" propagate_down: false propagate_down: false }')
    net = make_net(text)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert not need['a']
    assert net.bottom_need_backward[net.layer_index('loss')] == [False, False]


def test_propagate_down_count_must_match():
    with pytest.raises(NetError, match='propagate_down'):
        make_net(LOSS.replace('top: "l" }', 'top: "l" propagate_down: false }'))


def test_lr_mult_zero_everywhere_means_no_backward():
    net = make_net(LOSS.replace('bottom: "x" top: "y"',
                                'bottom: "x" top: "y" param { lr_mult: 0 } param { lr_mult: 0 }'))
    assert not net.layer_need_backward[net.layer_index('a')]


# --------------------------------------------------------------- forward/backward ranges
def test_forward_backward_from_to():
    # force_backward: without a loss no layer would run backward at all (Caffe skips them)
    net = make_net('force_backward: true\n' + INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y'))
    net.blob_by_name('x').data[...] = 1
    net.forward_prefilled()
    y_full = net.blob_by_name('y').data.copy()
    net.blob_by_name('y').data[...] = 0
    net.blob_by_name('h').data[...] *= 2
    net.forward_from_to(net.layer_index('b'), net.layer_index('b'))
    w, bias = net.layers[2].blobs[0].data, net.layers[2].blobs[1].data
    np.testing.assert_allclose(net.blob_by_name('y').data,
                               2 * (y_full - bias) + bias, rtol=1e-5, atol=1e-5)
    del w
    # backward only through "b": a's params see nothing
    net.clear_param_diffs()
    net.blob_by_name('y').diff[...] = 1
    net.backward_from_to(net.layer_index('b'), net.layer_index('b'))
    assert (net.layers[1].blobs[0].diff == 0).all()
    assert (net.layers[2].blobs[1].diff == 2).all()


def test_backward_skips_layers_that_do_not_need_it():
    net = make_net(INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y'))   # no loss: nothing to do
    net.forward_prefilled()
    net.blob_by_name('y').diff[...] = 1
    net.backward_from_to()
    assert not net.layers[2].blobs[1].diff.any()


def test_backward_from_to_runs_every_layer_asked_for():
    net = make_net('force_backward: true\n' + INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y'))
    net.blob_by_name('x').data[...] = 1
    net.forward_prefilled()
    net.blob_by_name('y').diff[...] = 1
    net.backward_from_to()
    assert net.blob_by_name('x').diff.any()


# -------------------------------------------------------------------------- outputs
def test_outputs_sorted_by_name_and_inputs_in_order():
    net = make_net(INPUT + 'layer { name: "d2" type: "Input" top: "in2" input_param '
                   '{ shape { dim: 2 dim: 3 } } }\n' + ip('a', 'x', 'zeta') + ip('b', 'x', 'alpha')
                   + ip('c', 'in2', 'mid') + ip('d', 'mid', 'beta'))
    assert [net.blob_names[i] for i in net.output_blob_ids] == ['alpha', 'beta', 'zeta']
    assert [net.blob_names[i] for i in net.input_blob_ids] == ['x', 'in2']


# ------------------------------------------------------------- weights: copy / share / save
def test_copy_from_shape_mismatch_names_layer_index_and_shapes(tmp_path):
    src = make_net(INPUT + ip('a', 'x', 'h', n=4) + ip('b', 'h', 'y', n=2))
    path = tmp_path / 'src.caffemodel'
    src.save(str(path))
    dst = make_net(INPUT + ip('a', 'x', 'h', n=5) + ip('b', 'h', 'y', n=2))
    with pytest.raises(WeightsMismatchError) as e:
        dst.copy_from(str(path))
    msg = str(e.value)
    for part in ("Cannot copy param 0 weights from layer 'a'", '4 3 (12)', '5 3 (15)',
                 'src.caffemodel'):
        assert part in msg, msg
    assert isinstance(e.value, QcaffeError)


def test_copy_from_blob_count_mismatch(tmp_path):
    src = make_net(INPUT + ip('a', 'x', 'h'))
    path = tmp_path / 'src.caffemodel'
    src.save(str(path))
    dst = make_net(INPUT + ip('a', 'x', 'h', extra='').replace(
        'inner_product_param {', 'inner_product_param { bias_term: false'))
    with pytest.raises(WeightsMismatchError, match="Incompatible number of blobs for layer 'a'"):
        dst.copy_from(str(path))


def test_copy_from_matches_by_name_and_ignores_unknown(tmp_path):
    src = make_net(INPUT + ip('a', 'x', 'h') + ip('extra', 'x', 'e'))
    path = tmp_path / 'src.caffemodel'
    src.save(str(path))
    dst = make_net(INPUT + ip('other', 'x', 'o') + ip('a', 'x', 'h'))
    other = dst.layers[dst.layer_index('other')]
    other_before = other.blobs[0].data.copy()
    dst.copy_from(str(path))
    np.testing.assert_array_equal(dst.layers[dst.layer_index('a')].blobs[0].data,
                                  src.layers[src.layer_index('a')].blobs[0].data)
    np.testing.assert_array_equal(other.blobs[0].data, other_before)


def test_save_load_bit_identical(tmp_path):
    net = make_net(LOSS + ip('b', 'x', 'z', n=7))
    for p in net.params_list:   # include values with every bit pattern class: denormal, -0, nan
        p.data.ravel()[:3] = np.array([1e-40, -0.0, np.nan], np.float32)
    p1 = tmp_path / 'one.caffemodel'
    net.save(str(p1))
    net2 = make_net(LOSS + ip('b', 'x', 'z', n=7))
    net2.copy_from(str(p1))
    for a, b in zip(net.params_list, net2.params_list):
        assert a.data.tobytes() == b.data.tobytes()
    p2 = tmp_path / 'two.caffemodel'
    net2.save(str(p2))
    assert p1.read_bytes() == p2.read_bytes()
    saved = read_binary_proto(str(p1), caffe_pb2.NetParameter())
    # blobs in the file carry the exact bits, as BlobShape dims (Caffe's ToProto)
    lp = [l for l in saved.layer if l.name == 'b'][0]
    assert list(lp.blobs[0].shape.dim) == [7, 3]
    assert np.array(lp.blobs[0].data, np.float32).tobytes() == \
        net.layers[net.layer_index('b')].blobs[0].data.tobytes()
    # the phase and the LossLayer's default loss_weight are saved, as Caffe does
    assert [l for l in saved.layer if l.name == 'loss'][0].loss_weight == [1.0]


def test_split_layers_are_saved(tmp_path):
    net = make_net(INPUT + ip('a', 'x', 'h') + ip('b', 'h', 'y1') + ip('c', 'h', 'y2'))
    path = tmp_path / 'n.caffemodel'
    net.save(str(path))
    saved = read_binary_proto(str(path), caffe_pb2.NetParameter())
    assert [l.name for l in saved.layer] == net.layer_names
    assert len(saved.layer[2].blobs) == 0 and saved.layer[2].type == 'Split'


def test_hdf5_round_trip(tmp_path):
    pytest.importorskip('h5py')
    net = make_net(LOSS)
    path = tmp_path / 'n.caffemodel.h5'
    net.save_hdf5(str(path))
    net2 = make_net(LOSS)
    net2.copy_from(str(path))
    for a, b in zip(net.params_list, net2.params_list):
        assert a.data.tobytes() == b.data.tobytes()
    bad = make_net(LOSS.replace('num_output: 4', 'num_output: 3').replace(
        'dim: 2 dim: 4', 'dim: 2 dim: 3'))
    with pytest.raises(WeightsMismatchError, match="param 0 weights from layer 'a'"):
        bad.copy_from(str(path))


def test_share_with_aliases_data():
    train = make_net(LOSS, phase=TRAIN)
    test = make_net(LOSS, phase=TEST)
    test.share_trained_layers_with(train)
    a_train = train.layers[train.layer_index('a')]
    a_test = test.layers[test.layer_index('a')]
    assert a_test.blobs[0].shares_data_with(a_train.blobs[0])
    a_train.blobs[0].data[...] = 0.5
    assert (a_test.blobs[0].data == 0.5).all()
    a_test.blobs[0].diff[...] = 3      # diffs stay separate
    assert not (a_train.blobs[0].diff == 3).all()
    other = make_net(LOSS.replace('num_output: 4', 'num_output: 3').replace(
        'dim: 2 dim: 4', 'dim: 2 dim: 3'))
    with pytest.raises(NetError, match="Cannot share param 0 weights from layer 'a'"):
        other.share_trained_layers_with(train)


# ------------------------------------------------------------------------- upgrades
def test_v1_caffemodel_legacy_dims_load_into_modern_net():
    path = require_shared('models', 'lenet_v1', 'lenet_iter_10000.caffemodel')
    raw = read_binary_proto(path, caffe_pb2.NetParameter())
    assert len(raw.layers) and not len(raw.layer)          # really a V1 file
    net = make_net('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 '
                   'dim: 800 } } }\n' + ip('ip1', 'x', 'h', n=500) + ip('ip2', 'h', 'y', n=10))
    net.copy_from(path)
    v1 = {l.name: l for l in raw.layers}
    w = v1['ip1'].blobs[0]
    assert (w.num, w.channels, w.height, w.width) == (1, 1, 500, 800)   # legacy 4-D dims
    np.testing.assert_array_equal(net.layers[1].blobs[0].data.ravel(),
                                  np.array(w.data, np.float32))
    np.testing.assert_array_equal(net.layers[2].blobs[1].data.ravel(),
                                  np.array(v1['ip2'].blobs[1].data, np.float32))


def test_v1_prototxt_upgrades():
    path = require_shared('models', 'lenet_v1', 'lenet.prototxt')
    param = read_net_param(path)
    assert not len(param.layers)
    types = [l.type for l in param.layer]
    assert types[:3] == ['Input', 'Convolution', 'Pooling'] or types[:2] == ['Convolution',
                                                                             'Pooling']
    assert 'InnerProduct' in types and 'Softmax' in types


def test_v0_net_upgrades_and_builds(tmp_path):
    v0 = '''name: "old"
input: "x" input_dim: 2 input_dim: 3 input_dim: 1 input_dim: 1
layers { layer { name: "fc" type: "innerproduct" num_output: 4
                 weight_filler { type: "gaussian" } blobs_lr: 1 blobs_lr: 2 weight_decay: 1
                 weight_decay: 0 } bottom: "x" top: "y" }
layers { layer { name: "prob" type: "softmax" } bottom: "y" top: "p" }
'''
    path = tmp_path / 'v0.prototxt'
    path.write_text(v0)
    param = read_net_param(str(path))
    net = Net.from_param(param)
    assert [l.type for l in net.param.layer] == ['Input', 'InnerProduct', 'Softmax']
    assert net.layers[1].blobs[0].shape == (4, 3)
    assert net.params_lr == [1.0, 2.0] and net.params_weight_decay == [1.0, 0.0]
    net.blob_by_name('x').data[...] = 1
    outs, _ = net.forward_prefilled()
    np.testing.assert_allclose(outs[0].data.sum(axis=1), 1, rtol=1e-5)


def test_real_caffemodel_round_trips_bit_identically(tmp_path):
    """Real Caffe's LeNet (deploy prototxt + caffemodel) loaded and saved again by qcaffe: every
    weight BlobProto in our file is byte-identical to Caffe's, and it loads back the same."""
    path = require_shared('models', 'lenet', 'lenet_iter_10000.caffemodel')
    net = Net.from_param(read_net_param(require_shared('models', 'lenet', 'lenet.prototxt')))
    net.copy_from(path)
    out = tmp_path / 'again.caffemodel'
    net.save(str(out))
    theirs = {l.name: l for l in read_binary_proto(path, caffe_pb2.NetParameter()).layer}
    ours = {l.name: l for l in read_binary_proto(str(out), caffe_pb2.NetParameter()).layer}
    with_blobs = [n for n in net.layer_names if len(net.layers[net.layer_index(n)].blobs)]
    assert with_blobs == ['conv1', 'conv2', 'ip1', 'ip2']
    for name in with_blobs:
        assert len(ours[name].blobs) == len(theirs[name].blobs) == 2
        for a, b in zip(ours[name].blobs, theirs[name].blobs):
            assert list(a.shape.dim) == list(b.shape.dim)
            assert a.SerializeToString() == b.SerializeToString()
    again = Net.from_param(read_net_param(require_shared('models', 'lenet', 'lenet.prototxt')))
    again.copy_from(str(out))
    for a, b in zip(net.params_list, again.params_list):
        assert a.data.tobytes() == b.data.tobytes()


def test_net_backward_matches_numeric_gradient_through_splits_and_sharing():
    """End to end: a net with a split (h feeds two layers), a shared weight and an in-place
    Softmax; the param diffs after backward equal central differences of the net loss."""
    text = (INPUT + 'layer { name: "t" type: "Input" top: "target" input_param { shape { '
            'dim: 2 dim: 4 } } }\n' + ip('a', 'x', 'h', n=4) +
            ip('b', 'h', 'y1', extra='param { name: "shared" }') +
            ip('c', 'h', 'y2', extra='param { name: "shared" }') +
            'layer { name: "sm" type: "Softmax" bottom: "y2" top: "y2" }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "y1" bottom: "y2" top: "s" }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "target" '
            'top: "l" }\n')
    net = make_net(text)
    rs = np.random.RandomState(3)
    net.blob_by_name('x').data[...] = rs.uniform(-1, 1, (2, 3))
    net.blob_by_name('target').data[...] = rs.uniform(-1, 1, (2, 4))
    assert 'h_a_0_split' in net.layer_names
    net.clear_param_diffs()
    net.forward_backward()
    analytic = [p.diff.astype(np.float64).copy() for p in net.learnable_params]
    step = 1e-2
    for p, grad in zip(net.learnable_params, analytic):
        flat = p.data.ravel()
        for e in range(flat.size):
            x0 = float(flat[e])
            flat[e] = x0 + step
            plus = net.forward_prefilled()[1]
            flat[e] = x0 - step
            minus = net.forward_prefilled()[1]
            flat[e] = x0
            numeric = (plus - minus) / (2 * step)
            assert abs(grad.ravel()[e] - numeric) <= 2e-3 * max(1, abs(numeric)), \
                (e, grad.ravel()[e], numeric)
    # the shared weight is one learnable param that received both layers' gradients
    assert len(net.learnable_params) == 5
