"""DNS and INQ (compression.md 2): the arithmetic against hand-computed values, the six layer
types (blob layout, forward, gradients, masks by role), the solver freezing INQ's fixed
entries with every update rule, snapshot/resume, and bad parameters."""
import math
import os

import numpy as np
import pytest
from google.protobuf import text_format

from layer_helpers import _seed, blob  # noqa: F401  (autouse seed fixture)
from qcaffe import backend
from qcaffe.blob import Blob
from qcaffe.compress import dns, inq
from qcaffe.io.errors import QcaffeError
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import create_solver
from qcaffe.testing import check_gradient, make_layer
from test_solvers import assert_resume_is_exact

f32 = np.float32


# ---------------------------------------------------------------- DNS arithmetic
def test_statistics_hand_computed_over_weights_and_bias():
    w = np.array([0.5, -1.0, 0.0, 2.0], f32)
    m = np.array([1, 1, 1, 0], f32)          # the 2.0 is pruned, the 0.0 does not count
    b = np.array([-0.5], f32)
    mu, sigma, n = dns.statistics([(w, m), (b, np.ones(1, f32))])
    assert n == 3
    assert mu == f32(2.0 / 3)
    assert sigma == pytest.approx(math.sqrt(1.5 / 3 - (2.0 / 3) ** 2), rel=1e-6)


def test_statistics_accumulate_in_float32_one_after_the_other():
    # NK adds |w| in a float32 loop: 2^24 + 1 + 1 stays 2^24 (numpy's pairwise sum or a
    # float64 sum gives 2^24 + 2); nk_ref's ip1 masks need exactly this order
    w = np.array([2.0 ** 24, 1.0, 1.0], f32)
    mu, _, n = dns.statistics([(w, np.ones(3, f32))])
    assert n == 3 and mu == f32(f32(2.0 ** 24) / f32(3))


def test_statistics_of_an_empty_layer_are_zero_not_nan():
    z = np.zeros(4, f32)
    assert dns.statistics([(z, np.ones(4, f32))]) == (0, 0, 0)
    assert dns.statistics([(np.ones(4, f32), z)]) == (0, 0, 0)


def test_threshold_clamps_at_zero_and_surgery_has_hysteresis():
    assert dns.threshold(f32(0.2), f32(0.1), -3) == 0
    assert dns.threshold(f32(0.2), f32(0.1), 1) == f32(f32(0.2) + f32(0.1))
    w = np.array([0.5, 0.96, 0.99, 1.02, 1.2, 0.5, 0.96, 1.04, 1.2, -1.2], f32)
    m = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], f32)
    dns.surgery(w, m, f32(1.0), 0.95, 1.05)
    # kept entries go at |w| <= 0.95, pruned ones come back at |w| > 1.05; between: unchanged
    np.testing.assert_array_equal(m, [0, 1, 1, 1, 1, 0, 0, 0, 1, 1])


def test_surgery_probability():
    assert dns.surgery_probability(1e-5, 1, 0) == 1.0
    assert dns.surgery_probability(1e-5, 1, 100000) == pytest.approx(0.5, rel=1e-6)
    assert dns.surgery_probability(0.5, 2, 2) == pytest.approx(0.25)


# ---------------------------------------------------------------- INQ arithmetic
W10 = np.array([0.9, -0.3, 0.05, 0.6, -0.01, 0.2, 0.4, -0.7, 0.1, 0.0], f32)


def test_quantum_range_cases():
    ones = np.ones(10, f32)
    # nothing fixed yet: n1 = floor(log2(4 * 0.9 / 3)) = 0
    assert inq.quantum_range(W10, ones, 7) == (0, -6)
    # DNS-pruned model: fixed entries all 0 -> from the free ones
    m = ones.copy()
    m[0] = 0
    w = W10.copy()
    w[0] = 0
    assert inq.quantum_range(w, m, 3) == (-1, -3)          # max free 0.7 -> floor(-0.1)
    # later step: n1 from the largest fixed power of two
    w[0] = 1.0
    assert inq.quantum_range(w, m, 3) == (0, -2)
    w[0] = 0.25                                        # free 0.7 needs 2^-1 > 2^-2
    with pytest.raises(inq.INQError, match='Hard situation'):
        inq.quantum_range(w, m, 3)
    # nothing free and nothing left: all pruned
    assert inq.quantum_range(np.zeros(3, f32), np.zeros(3, f32), 7)[0] == inq.ALL_PRUNED
    with pytest.raises(inq.INQError, match='neither 0'):
        inq.quantum_range(W10, np.full(10, 0.5, f32), 7)
    with pytest.raises(inq.INQError, match='all ~0'):
        inq.quantum_range(np.zeros(3, f32), np.ones(3, f32), 7)


def test_shape_into_two_power_hand_computed():
    w, m = W10.copy(), np.ones(10, f32)
    n1, n2 = inq.quantum_range(w, m, 3)
    assert (n1, n2) == (0, -2)
    # 10 free, p 0 -> 0.5: 5 stay free; threshold = sorted |w|[5] = 0.3; |w| >= 0.3 fixed
    assert inq.shape_into_two_power(w, m, (0.0, 0.5), n1, n2) == 5
    np.testing.assert_array_equal(m, [0, 0, 1, 0, 1, 1, 0, 0, 1, 1])
    # nearest power in linear distance: [0.75, 1.5) * 2^e -> 2^e
    np.testing.assert_array_equal(w, np.array([1, -0.25, 0.05, 0.5, -0.01, 0.2, 0.5, -0.5,
                                               0.1, 0.0], f32))
    # next step 0.5 -> 1.0 fixes the rest; NK's zero rule: |w| < 0.75 * 2^n2 = 0.1875 -> 0
    assert inq.quantum_range(w, m, 3) == (0, -2)
    assert inq.shape_into_two_power(w, m, (0.5, 1.0), 0, -2) == 5
    assert not m.any()
    np.testing.assert_array_equal(w, np.array([1, -0.25, 0, 0.5, 0, 0.25, 0.5, -0.5, 0, 0],
                                              f32))
    assert not np.signbit(w[w == 0]).any()            # NK writes +0


def test_shape_into_two_power_with_pruned_entries_and_ties():
    # 2 pruned (fixed at 0), 6 free: portions are of the 8 - 2 non-pruned... estimated as
    # round(6 / (1 - 0.25)) = 8; keep round(8 * 0.5) = 4 free; ties at the threshold all go
    w = np.array([0, 0, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3], f32)
    m = np.array([0, 0, 1, 1, 1, 1, 1, 1], f32)
    assert inq.shape_into_two_power(w, m, (0.25, 0.5), -1, -4) == 3
    np.testing.assert_array_equal(m, [0, 0, 0, 0, 0, 1, 1, 1])
    assert inq.shape_into_two_power(w, m, (0.5, 0.0), -1, -4) == 0      # p1 = 0: skipped
    assert inq.shape_into_two_power(w, m, (0.5, 1.0), inq.ALL_PRUNED, 0) == 0


def test_levels():
    np.testing.assert_array_equal(inq.levels(0, -2), [-1, -0.5, -0.25, 0, 0.25, 0.5, 1])


@pytest.mark.parametrize('portions, n, message', [
    ([0.6, 0.3], 7, r'0 <= portion\[0\] <= portion\[1\] <= 1'),
    ([1.0, 1.0], 7, r'portion\[0\] = 1'),
    ([0.3], 7, 'at least twice'),
    ([], 7, 'at least twice'),
    ([0.0, 1.2], 7, r'portion\[1\] <= 1'),
    ([-0.1, 0.3], 7, r'0 <= portion\[0\]'),
    ([0.0, 0.3], -1, 'num_quantum_values must be >= 1'),
])
def test_bad_portions_rejected(portions, n, message):
    with pytest.raises(ValueError, match=message):
        inq.check_portions(portions, n)


# ------------------------------------------------------------------------ layers
CONV = dict(convolution_param=dict(num_output=3, kernel_size=[3],
                                   weight_filler=dict(type='gaussian', std=0.5),
                                   bias_filler=dict(type='gaussian', std=0.5)))
IP = dict(inner_product_param=dict(num_output=4, weight_filler=dict(type='gaussian', std=0.5),
                                   bias_filler=dict(type='gaussian', std=0.5)))
KINDS = {  # type: (plain params, compression field, its params)
    'DNSConvolution': (CONV, 'dns_convolution_param', dict(c_rate=0.5)),
    'CConvolution': (CONV, 'cconvolution_param', dict(c_rate=0.5)),
    'DNSInnerProduct': (IP, 'dns_inner_product_param', dict(c_rate=0.5)),
    'CInnerProduct': (IP, 'cinner_product_param', dict(c_rate=0.5)),
    'INQConvolution': (CONV, 'inq_convolution_param',
                       dict(portion=[0.0, 0.5], num_quantum_values=4)),
    'INQInnerProduct': (IP, 'inq_inner_product_param',
                        dict(portion=[0.0, 0.5], num_quantum_values=4)),
}


def layer_of(type_name, phase='TEST', bias=True, **extra):
    import copy
    plain, field, params = KINDS[type_name]
    plain = copy.deepcopy(plain)
    plain[list(plain)[0]]['bias_term'] = bias
    params = dict(params, **extra)
    return make_layer(type_name, phase=phase, name='l', **dict(plain, **{field: params}))


def bottom_for(type_name, seed=3):
    shape = (2, 2, 5, 5) if 'Convolution' in type_name else (2, 6)
    return blob(np.random.RandomState(seed).randn(*shape))


def built(type_name, phase='TEST', bias=True, **extra):
    """(layer, bottom, top) of a set-up layer of ``type_name``."""
    layer = layer_of(type_name, phase=phase, bias=bias, **extra)
    x, top = bottom_for(type_name), Blob()
    layer.setup([x], [top])
    return layer, x, top


def plain_twin(type_name):
    """The plain Convolution / InnerProduct of the same shape (weights set by the caller)."""
    plain, _, _ = KINDS[type_name]
    return make_layer('Convolution' if 'Convolution' in type_name else 'InnerProduct',
                      name='twin', **plain)


@pytest.mark.parametrize('type_name', sorted(KINDS))
@pytest.mark.parametrize('bias', [True, False])
def test_blob_layout_and_roles(type_name, bias):
    layer = layer_of(type_name, bias=bias)
    top = Blob()
    layer.setup([bottom_for(type_name)], [top])
    n = 2 if bias else 1
    assert len(layer.blobs) == 2 * n
    for i in range(n):
        assert layer.blobs[n + i].shape == layer.blobs[i].shape
        assert np.all(layer.blobs[n + i].data == 1)
    assert layer.learnable_blob_indices() == list(range(n))
    assert layer.required_blob_count() == n
    assert layer.type == type_name


def test_c_layers_read_their_own_messages_and_defaults():
    p = caffe_pb2.LayerParameter()
    assert p.cconvolution_param.c_rate == 3 and p.dns_convolution_param.c_rate == 1
    assert caffe_pb2.CConvolutionParameter.DESCRIPTOR.fields_by_name['iter_stop'].number == 3
    assert caffe_pb2.CInnerProductParameter.DESCRIPTOR.fields_by_name['iter_stop'].number == 4
    layer = layer_of('CConvolution', iter_stop=7)
    layer.setup([bottom_for('CConvolution')], [Blob()])
    assert layer.iter_stop == 7 and layer.c_rate == f32(0.5)


@pytest.mark.parametrize('type_name', sorted(KINDS))
def test_test_forward_equals_the_plain_layer_with_masked_weights(type_name):
    layer, x, top = built(type_name)
    rs = np.random.RandomState(5)
    for i in (0, 1):
        layer.blobs[2 + i].data[...] = rs.randint(0, 2, layer.blobs[i].shape)
    layer.forward([x], [top])
    twin = plain_twin(type_name)
    ttop = Blob()
    twin.setup([x], [ttop])
    dnsish = type_name in ('DNSConvolution', 'CConvolution', 'DNSInnerProduct',
                           'CInnerProduct')
    for i in (0, 1):
        twin.blobs[i].data[...] = layer.blobs[i].data * (layer.blobs[2 + i].data if dnsish
                                                         else 1)
    twin.forward([x], [ttop])
    np.testing.assert_array_equal(top.data, ttop.data)


@pytest.mark.parametrize('type_name', ['DNSConvolution', 'DNSInnerProduct'])
def test_dns_train_forward_prunes_as_computed_by_hand(type_name):
    layer, x, top = built(type_name, phase='TRAIN', c_rate=0.3)
    w, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    a = np.abs(np.concatenate([w.ravel(), b.ravel()])).astype(np.float64)
    mu, sd = a.mean(), math.sqrt((a ** 2).mean() - a.mean() ** 2)
    t = mu + 0.3 * sd
    layer.forward([x], [top])
    assert layer.mu == pytest.approx(mu, rel=1e-6) and layer.sigma == pytest.approx(sd, rel=1e-5)
    margin = np.abs(np.abs(w) - 0.95 * t) > 1e-5 * t     # away from the float32 boundary
    np.testing.assert_array_equal(layer.blobs[2].data[margin], (np.abs(w) > 0.95 * t)[margin])
    np.testing.assert_array_equal(layer.blobs[0].data, w)   # W itself is never zeroed
    # the statistics stay; a weight grown past 1.05 T is spliced back at the next forward
    k = np.argmin(layer.blobs[2].data.ravel())
    layer.blobs[0].data.ravel()[k] = 2 * t
    layer.forward([x], [top])
    assert layer.blobs[2].data.ravel()[k] == 1 and layer.mu == pytest.approx(mu, rel=1e-6)


def test_dns_surgery_stops_at_iter_stop_and_follows_the_probability():
    layer, x, top = built('DNSInnerProduct', phase='TRAIN', iter_stop=5)
    layer.forward([x], [top])                  # iteration 0: statistics and surgery
    before = layer.blobs[2].data.copy()
    layer.blobs[0].data[...] *= 10            # would splice everything back
    layer.current_iter = 5
    layer.forward([x], [top])
    np.testing.assert_array_equal(layer.blobs[2].data, before)
    # gamma so large that the surgery probability is ~0 at iteration 1
    layer = layer_of('DNSInnerProduct', phase='TRAIN', gamma=1e9)
    layer.setup([x], [top])
    layer.forward([x], [top])
    before = layer.blobs[2].data.copy()
    layer.blobs[0].data[...] *= 10
    layer.current_iter = 1
    state = backend.rng().get_state()[2]
    layer.forward([x], [top])
    np.testing.assert_array_equal(layer.blobs[2].data, before)
    assert backend.rng().get_state()[2] != state      # one draw per forward regardless


def test_dns_test_phase_never_prunes():
    layer, x, top = built('DNSConvolution', phase='TEST', c_rate=2.0)
    layer.forward([x], [top])
    assert np.all(layer.blobs[2].data == 1) and not layer.stats_done


@pytest.mark.parametrize('type_name', ['INQConvolution', 'INQInnerProduct'])
def test_inq_quantizes_once_at_the_first_train_forward(type_name):
    layer, x, top = built(type_name, phase='TRAIN')
    w0 = layer.blobs[0].data.copy()
    expected_w, expected_m = w0.copy(), np.ones_like(w0)
    n1, n2 = inq.quantum_range(expected_w, expected_m, 4)
    inq.shape_into_two_power(expected_w, expected_m, (0.0, 0.5), n1, n2)
    layer.forward([x], [top])
    np.testing.assert_array_equal(layer.blobs[0].data, expected_w)
    np.testing.assert_array_equal(layer.blobs[2].data, expected_m)
    assert layer.quantized and layer.exponents[0] == (n1, n2)
    fixed = layer.blobs[2].data == 0
    assert abs(fixed.mean() - 0.5) < 0.1
    q = layer.blobs[0].data[fixed]
    assert set(np.unique(np.abs(q))) <= set(np.abs(inq.levels(n1, n2)))
    layer.blobs[0].data[~fixed] += 0.01      # training moves the free part...
    snapshot = layer.blobs[0].data.copy()
    layer.forward([x], [top])                # ...and nothing is quantized again
    np.testing.assert_array_equal(layer.blobs[0].data, snapshot)


def test_layer_errors_name_layer_field_and_rule():
    with pytest.raises(QcaffeError, match=r"Layer 'l' \(type INQConvolution\), "
                       r"inq_convolution_param: portion\[0\] = 1"):
        layer_of('INQConvolution', portion=[1.0, 1.0]).setup([bottom_for('INQConvolution')],
                                                             [Blob()])
    with pytest.raises(QcaffeError, match='num_quantum_values must be >= 1'):
        layer_of('INQInnerProduct', num_quantum_values=-2).setup(
            [bottom_for('INQInnerProduct')], [Blob()])
    with pytest.raises(QcaffeError, match=r'dns_convolution_param.weight_mask_filler must be '
                       r'\{ type: "constant" value: 1 \}'):
        layer_of('DNSConvolution', weight_mask_filler=dict(type='constant', value=0)).setup(
            [bottom_for('DNSConvolution')], [Blob()])
    layer = layer_of('INQInnerProduct', phase='TRAIN')
    x = bottom_for('INQInnerProduct')
    layer.setup([x], [Blob()])
    layer.blobs[0].data[...] = 0              # an untrained, all-zero layer
    with pytest.raises(QcaffeError, match=r"Layer 'l' \(type INQInnerProduct\), weights blob "
                       r"\(0\): cannot quantize: its entries are all ~0"):
        layer.forward([x], [Blob()])


# --------------------------------------------------------------------- gradients
@pytest.mark.parametrize('type_name', ['DNSConvolution', 'DNSInnerProduct', 'CConvolution'])
@pytest.mark.parametrize('bias', [True, False])
def test_dns_gradients_are_those_of_the_masked_weights_for_every_entry(type_name, bias):
    layer, x, top = built(type_name, bias=bias)
    n = layer.num_weights
    rs = np.random.RandomState(9)
    for i in range(n):
        layer.blobs[n + i].data[...] = rs.randint(0, 2, layer.blobs[i].shape)
    # input gradient through W ⊙ mask: numeric check (TEST phase: no surgery)
    check_gradient(layer, [x], [top], check_params=False, setup=False)
    # straight-through: dL/dW is dL/d(W ⊙ mask) at every entry, pruned ones included
    twin = plain_twin(type_name) if bias else None
    if bias:
        ttop = Blob()
        twin.setup([x], [ttop])
        for i in range(n):
            twin.blobs[i].data[...] = layer.blobs[i].data * layer.blobs[n + i].data
        check_gradient(twin, [x], [ttop], setup=False)
        layer.forward([x], [top])
        twin.forward([x], [ttop])
        dy = np.random.RandomState(4).randn(*top.shape).astype(f32)
        for lay, t in ((layer, top), (twin, ttop)):
            t.diff[...] = dy
            for b in lay.blobs:
                b.diff[...] = 0
            x.diff[...] = 0
            lay.backward([t], [True], [x])
        for i in range(n):
            np.testing.assert_allclose(layer.blobs[i].diff, twin.blobs[i].diff, rtol=1e-6,
                                       atol=1e-6)
            pruned = layer.blobs[n + i].data == 0
            assert np.any(layer.blobs[i].diff[pruned] != 0)
            assert not np.any(layer.blobs[n + i].diff)        # masks get no gradient


@pytest.mark.parametrize('type_name', ['INQConvolution', 'INQInnerProduct'])
@pytest.mark.parametrize('bias', [True, False])
def test_inq_gradients_numeric_with_partly_fixed_weights(type_name, bias):
    layer, x, top = built(type_name, bias=bias)
    n = layer.num_weights
    layer.blobs[n].data.ravel()[::2] = 0     # half fixed: the layer's gradient is unmasked
    check_gradient(layer, [x], [top], setup=False)


# -------------------------------------------------------------- nets and solvers
NET = '''name: "tiny_dns_inq"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 6 dim: 1 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
layer { name: "conv" type: "%(conv)s" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 bias_term: %(bias)s
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }
  %(conv_param)s }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "%(ip)s" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 bias_term: %(bias)s
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } }
  %(ip_param)s }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''
DNS_P = 'gamma: 0.3 power: 1 c_rate: %s'
INQ_P = 'portion: 0.0 portion: 0.5 num_quantum_values: 5'


def net_text(kind, bias=True):
    if kind == 'DNS':
        return NET % dict(conv='DNSConvolution', ip='DNSInnerProduct', bias=str(bias).lower(),
                          conv_param='dns_convolution_param { %s }' % (DNS_P % 0.2),
                          ip_param='dns_inner_product_param { %s }' % (DNS_P % 0.5))
    return NET % dict(conv='INQConvolution', ip='INQInnerProduct', bias=str(bias).lower(),
                      conv_param='inq_convolution_param { %s }' % INQ_P,
                      ip_param='inq_inner_product_param { %s }' % INQ_P)


def solver(tmp_path, kind, solver_type='SGD', extra='', bias=True, prefix='s'):
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.05 momentum: 0.9 weight_decay: 0.01 lr_policy: "inv" '
                      'gamma: 0.0001 power: 0.75 max_iter: 100 random_seed: 11', p)
    p.type = solver_type
    if solver_type == 'Adam':
        p.base_lr, p.momentum2 = 0.01, 0.999
    text_format.Merge(net_text(kind, bias), p.net_param)
    text_format.Merge(extra, p)
    p.snapshot_prefix = str(tmp_path / prefix)
    s = create_solver(p)
    rs = np.random.RandomState(2)
    s.net.blob_by_name('data').data[...] = rs.randn(6, 1, 8, 8)
    s.net.blob_by_name('label').data[...] = rs.randint(0, 3, 6)
    return s


SOLVER_CASES = [('SGD', ''), ('Nesterov', ''), ('Adam', ''), ('LarsSGD', 'local_gw_ratio: 0.1'),
                ('SGD', 'rampup_interval: 5 rampup_lr: 0.001 min_lr: 0.0001')]


@pytest.mark.parametrize('solver_type, extra', SOLVER_CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_inq_fixed_entries_and_masks_never_move(tmp_path, solver_type, extra, bias):
    s = solver(tmp_path, 'INQ', solver_type, extra, bias)
    s.step(1)                                   # quantizes, then the first update
    layers = [s.net.layers[s.net.layer_index(n)] for n in ('conv', 'ip')]
    fixed = {(l.name, i): (l.blobs[i].data.copy(), l.mask(i).data.copy())
             for l in layers for i in range(l.num_weights)}
    s.step(4)
    for l in layers:
        for i in range(l.num_weights):
            w0, m0 = fixed[(l.name, i)]
            np.testing.assert_array_equal(l.mask(i).data, m0)
            np.testing.assert_array_equal(l.blobs[i].data[m0 == 0], w0[m0 == 0])
            assert np.any(l.blobs[i].data[m0 == 1] != w0[m0 == 1])
            assert set(np.unique(np.abs(w0[m0 == 0]))) <= set(np.abs(inq.levels(
                *l.exponents[i])))
    for h, prm in zip(s.history, s._params):
        if prm.learnable:
            m = prm.layer.mask(prm.index).data
            assert not np.any(h.data[m == 0])        # momentum of fixed entries is zeroed
        else:
            assert not np.any(h.data)


@pytest.mark.parametrize('solver_type, extra', SOLVER_CASES)
def test_dns_masks_are_not_learnable_and_pruned_weights_keep_training(tmp_path, solver_type,
                                                                      extra):
    s = solver(tmp_path, 'DNS', solver_type, extra)
    s.step(1)
    conv = s.net.layers[s.net.layer_index('conv')]
    assert [p.learnable for p in s._params] == [True, True, False, False] * 2
    pruned = conv.mask(0).data == 0
    assert pruned.any() and not pruned.all()
    w = conv.blobs[0].data.copy()
    s.step(1)
    assert np.all(conv.blobs[0].data[pruned] != w[pruned])    # splicing: still trained
    assert set(np.unique(conv.mask(0).data)) <= {0, 1}


def test_bias_less_layers_train(tmp_path):
    s = solver(tmp_path, 'DNS', bias=False)
    s.step(3)
    conv = s.net.layers[s.net.layer_index('conv')]
    assert len(conv.blobs) == 2 and set(np.unique(conv.blobs[1].data)) <= {0, 1}
    assert [p.learnable for p in s._params] == [True, False] * 2


@pytest.mark.parametrize('kind', ['DNS', 'INQ'])
def test_resume_is_bit_exact(tmp_path, kind):
    made = []

    def make(prefix):
        # the solver that resumes starts from other weights (random_seed 12): its detour
        # computes other statistics / quantizes otherwise, and the restore must undo that
        made.append(prefix)
        return solver(tmp_path, kind, prefix=prefix, extra='random_seed: %d'
                      % (12 if len(made) == 3 else 11))

    full, first, resumed = assert_resume_is_exact(make, total=8, stop=3, detour=2)
    a, b = (s.net.layers[s.net.layer_index('conv')] for s in (full, resumed))
    if kind == 'DNS':
        assert (a.mu, a.sigma, a.stats_count) == (b.mu, b.sigma, b.stats_count)
        # with gamma 0.3 the surgery probability falls to 1/3.1 by iteration 7: the draws
        # decide, and they come from the restored random_seed stream
    else:
        assert b.quantized


def test_restored_statistics_are_not_recomputed(tmp_path, qlog):
    s = solver(tmp_path, 'DNS')
    s.step(2)
    state = s.snapshot()
    r = solver(tmp_path, 'DNS', prefix='r')
    r.restore(state)
    conv = r.net.layers[r.net.layer_index('conv')]
    assert conv.stats_done and conv.mu == s.net.layers[s.net.layer_index('conv')].mu
    r.step(1)
    assert not any('statistics taken at iteration' in rec.getMessage() for rec in qlog.records)
    # without the layer state (e.g. a solverstate written by the fork): computed, with a warning
    os.remove(state + '.layers.npz')
    r2 = solver(tmp_path, 'DNS', prefix='r2')
    r2.restore(state)
    r2.step(1)
    assert any('DNS statistics taken at iteration 2' in rec.getMessage()
               for rec in qlog.records if rec.levelname == 'WARNING')


def test_plain_model_loads_into_masked_layers_and_test_nets_share_masks(tmp_path):
    plain = caffe_pb2.NetParameter()
    text_format.Merge(NET % dict(conv='Convolution', ip='InnerProduct', bias='true',
                                 conv_param='', ip_param=''), plain)
    path = str(tmp_path / 'plain.caffemodel')
    Net.from_param(plain).save(path)
    p = caffe_pb2.NetParameter()
    text_format.Merge(net_text('INQ'), p)
    net = Net.from_param(p, phase=caffe_pb2.TRAIN)
    net.copy_from(path)
    ref = Net.from_param(plain)
    ref.copy_from(path)
    conv = net.layers[net.layer_index('conv')]
    np.testing.assert_array_equal(conv.blobs[0].data, ref.layers[ref.layer_index('conv')]
                                  .blobs[0].data)
    assert np.all(conv.blobs[2].data == 1) and np.all(conv.blobs[3].data == 1)
    test = Net.from_param(p, phase=caffe_pb2.TEST)
    test.share_trained_layers_with(net)
    conv.blobs[2].data[0] = 0
    assert not test.layers[test.layer_index('conv')].blobs[2].data[0].any()
    # fewer blobs than W, b: refused (NK copies whatever leading blobs there are)
    saved = net.to_proto()
    del saved.layer[net.layer_index('conv')].blobs[1:]
    with pytest.raises(QcaffeError, match="Incompatible number of blobs for layer 'conv'"):
        net.copy_trained_layers_from_param(saved)


def test_cupy_twin_equality():
    if not backend.gpu_available():
        pytest.skip('no GPU / cupy')
    cp = backend.cupy_module()
    rs = np.random.RandomState(0)
    w = (rs.randn(3000) * 0.1).astype(f32)
    m = (rs.rand(3000) > 0.3).astype(f32)
    mu, sigma, n = dns.statistics([(w, m)])
    gmu, gsigma, gn = dns.statistics([(cp.asarray(w), cp.asarray(m))])
    assert gn == n and gmu == pytest.approx(mu, rel=1e-6) and gsigma == pytest.approx(sigma,
                                                                                        rel=1e-5)
    gm = cp.asarray(m)
    dns.surgery(cp.asarray(w), gm, dns.threshold(mu, sigma, 1), 0.95, 1.05)
    dns.surgery(w, m, dns.threshold(mu, sigma, 1), 0.95, 1.05)
    np.testing.assert_array_equal(cp.asnumpy(gm), m)
    m = np.ones(3000, f32)
    gw, gm = cp.asarray(w), cp.asarray(m)
    n1, n2 = inq.quantum_range(w, m, 7)
    assert inq.quantum_range(gw, gm, 7) == (n1, n2)
    assert inq.shape_into_two_power(gw, gm, (0, 0.6), n1, n2) == inq.shape_into_two_power(
        w, m, (0, 0.6), n1, n2)
    np.testing.assert_array_equal(cp.asnumpy(gw), w)
    np.testing.assert_array_equal(cp.asnumpy(gm), m)


def test_trust_coef_of_the_forks_lars_example_is_rejected_with_the_right_name(tmp_path):
    from qcaffe.io import read_solver_param
    path = tmp_path / 'lars.prototxt'
    path.write_text('type: "LarsSGD"\ntrust_coef: 0.1\n')
    with pytest.raises(QcaffeError, match=r'lars.prototxt:2:1: .*no field named "trust_coef".*'
                       r'trust coefficient is local_gw_ratio'):
        read_solver_param(str(path))
