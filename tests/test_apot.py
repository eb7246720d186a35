"""APoT (compression.md section 3): level sets, quantizers and gradients replayed from the
original's outputs (../shared/data/apot_ref), the layers' forward/backward against the
original's QuantConv2d / first_conv / last_fc, numeric gradient checks (plain where the layer
is smooth, of the straight-through definitions where it quantizes), save -> load, resume,
fine-tuning from a full-precision model, NetSpec, compress_report, bad apot_param values,
and the MNIST example nets."""
import json
import os
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from shared_data import require_shared

from qcaffe.backend import to_host
from qcaffe.blob import Blob
from qcaffe.compress import apot
from qcaffe.io import ProtoParseError, parse_prototxt_text
from qcaffe.io.errors import LayerError
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2
from qcaffe.solvers import create_solver
from qcaffe.testing import check_gradient, make_layer

F = np.float32
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'mnist')


def ref(name):
    path = require_shared('apot_ref', name)
    return json.load(open(path)) if name.endswith('.json') else np.load(path)


def rel_err(actual, expected):
    """max |a - e| / max |e| (the suite's blob error measure)."""
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected))
                 / max(np.max(np.abs(expected)), 1e-30))


def assert_sum_close(actual, g, terms, expected):
    """A threshold gradient Σ g·terms: the original sums float32 products in float32 (torch's
    cascade), we in float64, so the two differ by the float32 summation error,
    ~log2(N)·eps·Σ|g·terms| << 1e-6·Σ|g·terms|."""
    bound = 1e-6 * float(np.sum(np.abs(np.asarray(g, np.float64) * terms)))
    assert abs(float(actual) - float(expected)) <= bound, (actual, expected, bound)


# ------------------------------------------------------------------------------ level sets
def test_level_sets_are_the_originals_bit_for_bit_in_its_order():
    levels = ref('levels.json')
    for key, additive, bits in (('additive', True, range(2, 7)),
                                ('non_additive', False, range(2, 5))):
        for B in bits:
            want = levels[key][str(B)]
            got = apot.level_set(B, additive)
            np.testing.assert_array_equal(got.values, np.array(want['set_order'], F))
            np.testing.assert_array_equal(got.sorted, np.array(want['sorted'], F))
    # the reciprocal recipe: one ulp below the exact quotient (errata under §0)
    assert 0.04999999701976776 in apot.level_set(5).values.tolist()
    assert F(0.05) not in apot.level_set(5).values
    assert len(apot.level_set(6).values) == 64 and apot.level_set(4).values.max() == 1
    for B in (1, 7):                     # the original returns [nan]; never a valid config
        with pytest.raises(ValueError, match='B = 2..6'):
            apot.level_set(B)


def test_projection_equals_the_originals_argmin_on_every_kind_of_input():
    rs = np.random.RandomState(0)
    for B, additive in ((2, True), (3, True), (4, True), (5, True), (6, True), (3, False)):
        lv = apot.level_set(B, additive)
        t = lv.thresholds
        a = np.concatenate([rs.uniform(-0.2, 1, 5000).astype(F), t, np.nextafter(t, F(-1)),
                            lv.sorted, F([-1e9, -1e4, -1, 0, 1])])
        # the original: (x - v).abs().min(dim=0) over the set-ordered list, first index wins
        want = lv.values[np.abs(a[None, :] - lv.values[:, None]).argmin(axis=0)]
        np.testing.assert_array_equal(apot.project(a, lv), want)


def test_ties_follow_the_originals_set_order():
    z = ref('quant.npz')
    for b in (2, 3, 4):
        x = z['ties/a_b%d/in' % b]
        out, _ = apot.quantize_acts(x, 1.0, b)
        np.testing.assert_array_equal(out, z['ties/a_b%d/out' % b])
    # 2-bit activations search [0, 1, 0.5, 0.25]: 0.375 -> 0.5, 0.75 -> 1, 0.125 -> 0
    out, _ = apot.quantize_acts(F([0.125, 0.375, 0.75]), 1.0, 2)
    assert out.tolist() == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------------------ quantizers
@pytest.mark.parametrize('key', ['w/b2', 'w/b3', 'w/b4', 'w/b5', 'w_s/b2', 'w_s/b3', 'w_s/b4'])
def test_weight_quantizer_and_gradients_replay_the_original(key):
    z = ref('quant.npz')
    bit = int(key[-1])
    w, alpha, g = z[key + '/in'], z[key + '/alpha'], z[key + '/grad_out']
    out, ctx = apot.quantize_weights(w, alpha, bit)
    np.testing.assert_array_equal(out, z[key + '/out'])
    np.testing.assert_array_equal(ctx.q, z[key + '/q_unit'])
    assert ctx.std == z[key + '/std']
    # the mean is float64-exact here; torch's float32 sum is one ulp off (weight_stats doc)
    np.testing.assert_allclose(ctx.normalized, z[key + '/normalized'], rtol=0, atol=1e-6)
    grad_w, grad_alpha = apot.weight_grads(g, ctx, bit)
    np.testing.assert_array_equal(grad_w, z[key + '/grad_in'])
    x = ctx.x
    terms = np.where(np.abs(x) > 1, np.sign(x), ctx.q - x)
    assert_sum_close(grad_alpha, g, terms, z[key + '/grad_alpha'])
    if z[key + '/power']:
        np.testing.assert_array_equal(apot.weight_levels(bit).values, z[key + '/levels'])


@pytest.mark.parametrize('case', ['a', 'a6', 'a_s', 'a_neg'])
@pytest.mark.parametrize('bit', [2, 3, 4])
def test_activation_quantizer_and_gradients_replay_the_original(case, bit):
    z = ref('quant.npz')
    key = '%s/b%d' % (case, bit)
    x, alpha, g = z[key + '/in'], z[key + '/alpha'], z[key + '/grad_out']
    out, q = apot.quantize_acts(x, alpha, bit)
    np.testing.assert_array_equal(out, z[key + '/out'])
    grad_x, grad_alpha = apot.act_grads(g, x, q, alpha)
    np.testing.assert_array_equal(grad_x, z[key + '/grad_in'])
    u = x / alpha
    assert_sum_close(grad_alpha, g, np.where(u > 1, 1, q - u), z[key + '/grad_alpha'])
    np.testing.assert_array_equal(apot.act_levels(bit).values, z[key + '/levels'])


def test_uniform_branch_and_first_last_rule_by_hand():
    # 4-bit uniform weights: 7 steps per sign, half to even (0.5/7 steps -> 0)
    x = F([-2, -1, -0.5, 0.5 / 7, 1.5 / 7, 0.3, 1])
    q = np.sign(np.clip(x, -1, 1)) * np.rint(np.abs(np.clip(x, -1, 1)) * 7) / 7
    w = x * F(0.1)      # mean/std normalisation: pick α so that the normalised x is exact
    out, ctx = apot.quantize_weights(w, 1.0, 4, power=False)
    np.testing.assert_array_equal(ctx.q, (np.sign(ctx.x) * np.rint(
        np.abs(np.clip(ctx.x, -1, 1)) * 7) / 7).astype(F))
    assert set(np.round(ctx.q * 7, 4).tolist()) <= set(range(-7, 8))
    assert q[3] == 0 and q[4] == F(2 / 7)     # ties to even: 0.5 -> 0, 1.5 -> 2
    out, ctx = apot.quantize_weights(np.zeros((4, 3), F), 3.0, 4)    # Caffe's default filler
    assert ctx.std == 1 and not out.any()
    codes, m = apot.first_last_codes(F([-0.5, -0.1, 0.0, 0.1, 0.3]))
    assert m == F(0.3) and codes.tolist() == [-212, -42, 0, 42, 127]   # signed max, no clamp


# ----------------------------------------------------------------------- layers vs original
def layer(kind, bias=False, phase='TRAIN', num_output=16, **apot_param):
    if kind == 'conv':
        return make_layer('APoTConvolution', phase=phase, apot_param=apot_param,
                          convolution_param=dict(num_output=num_output, kernel_size=[3],
                                                 pad=[1], bias_term=bias))
    return make_layer('APoTInnerProduct', phase=phase, apot_param=apot_param,
                      inner_product_param=dict(num_output=num_output, bias_term=bias))


def run_layer(lay, x, blobs, grad_out):
    """setup, load ``blobs`` (by index), forward, backward of ``grad_out``; returns the top
    and bottom Blobs."""
    bottom, top = Blob(*x.shape), Blob()
    bottom.data[...] = x
    lay.setup([bottom], [top])
    for i, v in blobs.items():
        lay.blobs[i].data[...] = v
    lay.forward([bottom], [top])
    top.diff[...] = grad_out
    for b in lay.blobs:
        b.diff[...] = 0
    lay.backward([top], [True], [bottom])
    return top, bottom


@pytest.mark.parametrize('bit', [4, 3, 2])
def test_apot_convolution_replays_the_original_quantconv2d(bit):
    z = ref('conv.npz')
    k = 'b%d/' % bit
    lay = layer('conv', bit=bit)
    top, bottom = run_layer(lay, z[k + 'x'], {0: z[k + 'weight']}, z[k + 'grad_out'])
    assert len(lay.blobs) == 3 and lay.blobs[1].data[0] == 3.0 and lay.blobs[2].data[0] == 8.0
    np.testing.assert_array_equal(to_host(lay.own_weight(0)), z[k + 'weight_q'])
    np.testing.assert_array_equal(lay._inputs[0].data, z[k + 'x_q'])
    assert rel_err(top.data, z[k + 'out']) <= 1e-5
    assert rel_err(bottom.diff, z[k + 'grad_x']) <= 1e-5
    assert rel_err(lay.blobs[0].diff, z[k + 'grad_weight']) <= 1e-5
    assert rel_err(lay.blobs[1].diff, z[k + 'grad_wgt_alpha']) <= 1e-5
    assert rel_err(lay.blobs[2].diff, z[k + 'grad_act_alpha']) <= 1e-5


@pytest.mark.parametrize('key', ['apot/b2', 'apot/b3', 'apot/b4', 'apot/b5', 'uniform/b2',
                                 'uniform/b4', 'apot_neg/b4'])
def test_imagenet_variant_replays_the_original(key):
    z = ref('imagenet_conv.npz')
    k = key + '/'
    lay = layer('conv', bit=int(key[-1]), power=not key.startswith('uniform'),
                variant='IMAGENET')
    top, bottom = run_layer(lay, z[k + 'x'], {0: z[k + 'weight'], 1: z[k + 'weight_alpha'],
                                              2: z[k + 'act_alpha']}, z[k + 'grad_out'])
    assert rel_err(top.data, z[k + 'out']) <= 1e-5
    assert rel_err(bottom.diff, z[k + 'grad_x']) <= 1e-5
    assert rel_err(lay.blobs[0].diff, z[k + 'grad_weight']) <= 1e-5
    assert rel_err(lay.blobs[1].diff, z[k + 'grad_weight_alpha']) <= 1e-5
    assert rel_err(lay.blobs[2].diff, z[k + 'grad_act_alpha']) <= 1e-5
    if key == 'apot_neg/b4':           # [0, 1] clamp: no gradient for negative inputs
        assert np.all(bottom.diff[z[k + 'x'] < 0] == 0)


def test_first_and_last_layer_replay_the_original():
    z = ref('conv.npz')
    lay = layer('conv', first_last=True)
    top, bottom = run_layer(lay, z['first_conv/x'], {0: z['first_conv/weight']},
                            z['first_conv/grad_out'])
    assert len(lay.blobs) == 1
    np.testing.assert_array_equal(to_host(lay.own_weight(0)), z['first_conv/weight_q'])
    for key, blob in (('out', top.data), ('grad_x', bottom.diff),
                      ('grad_weight', lay.blobs[0].diff)):
        assert rel_err(blob, z['first_conv/' + key]) <= 1e-5, key
    lay = layer('ip', bias=True, num_output=10, first_last=True, bit=8)
    top, bottom = run_layer(lay, z['last_fc/x'], {0: z['last_fc/weight'],
                                                  1: z['last_fc/bias']}, z['last_fc/grad_out'])
    assert len(lay.blobs) == 2
    np.testing.assert_array_equal(to_host(lay.own_weight(0)), z['last_fc/weight_q'])
    for key, blob in (('out', top.data), ('grad_x', bottom.diff),
                      ('grad_weight', lay.blobs[0].diff), ('grad_bias', lay.blobs[1].diff)):
        assert rel_err(blob, z['last_fc/' + key]) <= 1e-5, key


# ------------------------------------------------------------------ numeric gradient checks
def test_plain_gradient_check_where_the_layers_are_smooth():
    """bit 32 is a plain layer; a first/last layer is linear in its input (and its bias)."""
    rs = np.random.RandomState(3)
    for kind in ('conv', 'ip'):
        for params, check_params in ((dict(bit=32), True), (dict(first_last=True), False)):
            lay = layer(kind, bias=True, num_output=4, **params)
            bottom, top = Blob(2, 3, 5, 5), Blob()
            bottom.data[...] = rs.randn(2, 3, 5, 5)
            check_gradient(lay, [bottom], [top], check_params=check_params, step=1e-2)
            assert len(lay.blobs) == 2


def _conv64(x, w, b):
    """float64 3x3 convolution, pad 1, stride 1 (NCHW, weights OIHW)."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    y = np.einsum('nchwij,ocij->nohw', win, w)
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


def _ip64(x, w, b):
    y = x.reshape(x.shape[0], -1) @ w.T
    return y + (0 if b is None else b)


def _straight_through(variant, bit, power, x0, w0, aw0, aa0, first_last):
    """Per parameter, the smooth function whose exact derivative the layer's backward is
    defined to be (straight-through estimator: the quantization residual q - clamp(x) frozen
    at the current point).  Returns functions of (x, W, α_w, α_a) -> (input, weights) the
    plain layer computes with."""
    f64 = np.float64
    if first_last:
        wq0 = apot.first_last_weights(w0).astype(f64)
        return lambda x, w, aw, aa: (x, w + (wq0 - w0))
    q_a = apot.quantize_acts(x0, aa0, bit, power, True, variant)[1].astype(f64)
    ctx = apot.quantize_weights(w0, aw0, bit, power, True)[1]
    q_w, n0 = ctx.q.astype(f64), ctx.normalized.astype(f64)
    mean0 = apot.weight_stats(w0)[0]
    lo = -np.inf if variant == apot.CIFAR else 0.0

    def acts(x, aa):
        u = x / aa
        return aa * (np.clip(u, lo, 1) + (q_a - np.clip(x0 / aa0, lo, 1)))

    def clamp_w(n, aw):                  # the α_w rule (both variants)
        return aw * (np.clip(n / aw, -1, 1) + (q_w - np.clip(n0 / aw0, -1, 1)))

    def weights(w, aw):
        if variant == apot.CIFAR:        # not clipped; mean/std detached
            n = (w - float(mean0)) / float(ctx.std)
            return aw * (n / aw + (q_w - n0 / aw0))
        n = (w - w.mean()) / w.std(ddof=1)
        if bit <= 2:                     # calibrated gradient: not clipped
            return aw * (n / aw + (q_w - n0 / aw0))
        return clamp_w(n, aw)

    def surrogate(x, w, aw, aa, wrt):
        if wrt == 'alpha_w':
            return acts(x, aa), clamp_w(n0, aw)
        return acts(x, aa), weights(w, aw)
    return surrogate


CONFIGS = [('CIFAR', 4, True), ('CIFAR', 3, True), ('CIFAR', 2, True), ('CIFAR', 3, False),
           ('IMAGENET', 4, True), ('IMAGENET', 2, True), ('IMAGENET', 3, False), 'first_last']


@pytest.mark.parametrize('kind', ['conv', 'ip'])
@pytest.mark.parametrize('config', CONFIGS, ids=str)
def test_backward_is_the_exact_derivative_of_the_straight_through_definition(kind, config):
    """Central differences (float64) of the straight-through surrogate vs the layer's
    backward for every element of the bottom, weights, bias and both thresholds."""
    rs = np.random.RandomState(5)
    first_last = config == 'first_last'
    variant, bit, power = ('CIFAR', 8, True) if first_last else config
    params = dict(first_last=True) if first_last else dict(bit=bit, power=power,
                                                           variant=variant)
    lay = layer(kind, bias=True, num_output=4, **params)
    x0 = (rs.randn(2, 3, 5, 5) * 1.2).astype(F)      # some negative, some above α_a
    w0 = (rs.randn(4, 3, 3, 3) if kind == 'conv' else rs.randn(4, 75)).astype(F) * F(0.2)
    b0 = rs.randn(4).astype(F)
    aw0, aa0 = F(1.3), F(1.5)                         # some |w_n| / α_w > 1
    blobs = {0: w0, 1: b0} if first_last else {0: w0, 1: b0, 2: aw0, 3: aa0}
    R = rs.uniform(-1, 1, (2, 4, 5, 5) if kind == 'conv' else (2, 4))
    top, bottom = run_layer(lay, x0, blobs, R.astype(F))
    analytic = {'x': bottom.diff.copy(), 'w': lay.blobs[0].diff.copy(),
                'b': lay.blobs[1].diff.copy()}
    if not first_last:
        analytic['alpha_w'] = lay.blobs[2].diff.copy()
        analytic['alpha_a'] = lay.blobs[3].diff.copy()
    surrogate = _straight_through(variant, bit, power, x0, w0, aw0, aa0, first_last)
    op = _conv64 if kind == 'conv' else _ip64
    point = {'x': x0.astype(np.float64), 'w': w0.astype(np.float64),
             'b': b0.astype(np.float64), 'alpha_w': np.array([aw0], np.float64),
             'alpha_a': np.array([aa0], np.float64)}

    def objective(p, wrt):
        if first_last:
            xs, ws = surrogate(p['x'], p['w'], None, None)
        else:
            xs, ws = surrogate(p['x'], p['w'], p['alpha_w'][0], p['alpha_a'][0], wrt)
        return float(np.sum(R * op(xs, ws, p['b'])))

    # at the point, the surrogate is the layer's forward
    xs, ws = (surrogate(point['x'], point['w'], None, None) if first_last
              else surrogate(point['x'], point['w'], float(aw0), float(aa0), 'w'))
    np.testing.assert_allclose(op(xs, ws, point['b']), top.data, rtol=1e-5, atol=1e-4)
    h = 1e-4
    failures = []
    for name, grad in analytic.items():
        base = point[name]
        for e in range(base.size):
            flat = base.reshape(-1)
            v = flat[e]
            flat[e] = v + h
            plus = objective(point, name)
            flat[e] = v - h
            minus = objective(point, name)
            flat[e] = v
            numeric = (plus - minus) / (2 * h)
            a = float(grad.reshape(-1)[e])
            if abs(a - numeric) > 1e-3 * max(abs(a), abs(numeric), 1.0):
                failures.append('%s[%d]: analytic %.6g numeric %.6g' % (name, e, a, numeric))
    assert not failures, '%d mismatches, e.g. %s' % (len(failures), failures[:5])


# ------------------------------------------------------------------------------ in a Net
NET = '''name: "apot_tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "APoTConvolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 1 } param { lr_mult: 3 }
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } }
  apot_param { bit: %(bit)d %(extra)s } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "APoTInnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } }
  apot_param { first_last: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def net_param(bit=4, extra=''):
    p = caffe_pb2.NetParameter()
    parse_prototxt_text(NET % dict(bit=bit, extra=extra), p)
    return p


def batch(seed=0):
    rs = np.random.RandomState(seed)
    return rs.uniform(-0.5, 3, (4, 2, 6, 6)).astype(F), rs.randint(0, 3, 4).astype(F)


def feed_forward(net, x, y):
    net.blob_by_name('data').data[...] = x
    net.blob_by_name('label').data[...] = y
    net.forward_prefilled()
    return net.blob_by_name('ip').data.copy()


def solver(tmp_path, tag, bit=4, extra=''):
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                      'max_iter: 6 random_seed: 11', p)
    p.net_param.CopyFrom(net_param(bit, extra))
    os.makedirs(str(tmp_path / tag), exist_ok=True)
    p.snapshot_prefix = str(tmp_path / tag / 'apot')
    s = create_solver(p)
    x, y = batch()
    s.net.blob_by_name('data').data[...] = x
    s.net.blob_by_name('label').data[...] = y
    return s


def test_thresholds_are_params_learned_by_the_solver_and_readable(tmp_path):
    s = solver(tmp_path, 'a')
    params = s.net.params if hasattr(s.net, 'params') else None
    conv = s.net.layers[s.net.layer_names.index('conv')]
    assert [tuple(b.shape) for b in conv.blobs] == [(5, 2, 3, 3), (5,), (1,), (1,)]
    assert (conv.blobs[2].data[0], conv.blobs[3].data[0]) == (3.0, 8.0)
    s.step(3)
    aw, aa = conv.blobs[2].data[0], conv.blobs[3].data[0]
    assert aw != 3.0 and aa != 8.0                        # learned
    ip = s.net.layers[s.net.layer_names.index('ip')]
    assert len(ip.blobs) == 2                             # first/last: no thresholds
    import qcaffe as caffe                                # pycaffe: net.params[name][i].data
    path = str(tmp_path / 'net.prototxt')
    open(path, 'w').write(str(net_param()))
    weights = str(tmp_path / 'w.caffemodel')
    s.net.save(weights)
    pnet = caffe.Net(path, caffe.TEST, weights=weights)
    assert pnet.params['conv'][2].data[0] == aw and pnet.params['conv'][3].data[0] == aa
    assert params is None or params['conv'][2].data[0] == aw


def test_lr_mult_zero_freezes_a_threshold(tmp_path):
    s = solver(tmp_path, 'b', extra='')
    s.net.param.layer  # noqa: B018 (the net built)
    p = net_param()
    p.layer[2].param[3].lr_mult = 0
    sp = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.05 lr_policy: "fixed" max_iter: 2 random_seed: 1', sp)
    sp.net_param.CopyFrom(p)
    sp.snapshot_prefix = str(tmp_path / 'frozen')
    s = create_solver(sp)
    x, y = batch()
    s.net.blob_by_name('data').data[...] = x
    s.net.blob_by_name('label').data[...] = y
    s.step(2)
    conv = s.net.layers[s.net.layer_names.index('conv')]
    assert conv.blobs[3].data[0] == 8.0 and conv.blobs[2].data[0] != 3.0


@pytest.mark.parametrize('bit,extra', [(4, ''), (3, 'variant: IMAGENET'), (2, ''),
                                       (4, 'power: false'), (3, 'additive: false')])
def test_save_load_identical_outputs(tmp_path, bit, extra):
    s = solver(tmp_path, 'c', bit, extra)
    s.step(2)
    x, y = batch(1)
    out = feed_forward(s.net, x, y)
    path = str(tmp_path / 'm.caffemodel')
    s.net.save(path)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        net = Net.from_param(net_param(bit, extra), phase=phase)
        net.copy_from(path)
        np.testing.assert_array_equal(feed_forward(net, x, y), out)


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    full = solver(tmp_path, 'full', 3, 'variant: IMAGENET grad_scale: 0.5')
    full.step(6)
    first = solver(tmp_path, 'part', 3, 'variant: IMAGENET grad_scale: 0.5')
    first.step(3)
    state = first.snapshot()
    resumed = solver(tmp_path, 'part', 3, 'variant: IMAGENET grad_scale: 0.5')
    resumed.restore(state)
    resumed.step(3)
    for name in ('conv', 'ip'):
        a = full.net.layers[full.net.layer_names.index(name)].blobs
        b = resumed.net.layers[resumed.net.layer_names.index(name)].blobs
        for i, (pa, pb) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(pa.data, pb.data, err_msg='%s %d' % (name, i))


def test_fine_tune_from_a_full_precision_model_keeps_initial_thresholds(tmp_path):
    fp = net_param()
    for lay in fp.layer:                                  # the same net in plain Caffe
        if lay.type.startswith('APoT'):
            lay.type = lay.type[len('APoT'):]
            lay.ClearField('apot_param')
            del lay.param[2:]
    fpnet = Net.from_param(fp, phase=caffe_pb2.TRAIN)
    path = str(tmp_path / 'fp.caffemodel')
    fpnet.save(path)
    net = Net.from_param(net_param(extra='variant: IMAGENET'), phase=caffe_pb2.TRAIN)
    net.copy_from(path)
    conv = net.layers[net.layer_names.index('conv')]
    src = fpnet.layers[fpnet.layer_names.index('conv')]
    np.testing.assert_array_equal(conv.blobs[0].data, src.blobs[0].data)
    assert (conv.blobs[2].data[0], conv.blobs[3].data[0]) == (3.0, 6.0)
    # fewer blobs than weight + bias is still an error naming the layer
    fp.layer[2].convolution_param.bias_term = False
    del fp.layer[2].param[1:]
    nobias = Net.from_param(fp, phase=caffe_pb2.TRAIN)
    nobias.save(path)
    from qcaffe.io.errors import QcaffeError
    with pytest.raises(QcaffeError, match="layer 'conv'.*has 1, the net has 4"):
        net.copy_from(path)


@pytest.mark.parametrize('extra,bit,msg', [
    ('', 7, r"apot_param.bit is 7, not available for APoT quantization: valid bit "
            r"widths are 2..6 \(7 and 8 bits only with power: false\), or 32"),
    ('', 1, 'apot_param.bit is 1, not available for APoT .*2..6'),
    ('power: false', 9, 'apot_param.bit is 9, not available for uniform quantization: valid '
                        'bit widths are 2..8'),
    ('additive: false', 33, r'apot_param.bit is 33, not available for PoT .*or 32 '
                            r'\(full precision\)'),
    ('grad_scale: 0', 4, r'apot_param.grad_scale is 0; it must be > 0'),
    ('first_last: true', 4, r'apot_param.bit is 4, but first_last layers are always 8-bit'),
])
def test_bad_apot_param_is_a_clear_layer_error(extra, bit, msg):
    with pytest.raises(LayerError, match=r"Layer 'conv' \(type APoTConvolution\): " + msg):
        Net.from_param(net_param(bit, extra), phase=caffe_pb2.TRAIN)


def test_bad_variant_and_weights_compress_are_rejected(tmp_path):
    path = tmp_path / 'bad.prototxt'
    path.write_text(NET % dict(bit=4, extra='\n  variant: RESNET'))
    import qcaffe as caffe
    with pytest.raises(ProtoParseError, match=r'bad.prototxt:9:12: .*no value named RESNET'
                                              r'\. Valid choices: CIFAR, IMAGENET\.'):
        caffe.Net(str(path), caffe.TEST)
    p = net_param()
    p.layer[2].weights_compress.append('ULQ')
    with pytest.raises(LayerError, match='weights_compress cannot be combined with APoT'):
        Net.from_param(p, phase=caffe_pb2.TEST)


def test_net_spec_keywords_and_compress_report(tmp_path, capsys):
    from qcaffe import net_spec
    from qcaffe.cli import main
    from qcaffe.compress.report import apot_rows, net_report
    L = net_spec.layers
    n = net_spec.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 8, 8]))
    n.conv1 = L.APoTConvolution(n.data, convolution_param=dict(
        num_output=4, kernel_size=[3], weight_filler=dict(type='gaussian', std=0.5)),
        apot_param=dict(first_last=True))
    n.conv2 = L.APoTConvolution(n.conv1, convolution_param=dict(
        num_output=6, kernel_size=[3], weight_filler=dict(type='gaussian', std=0.5)),
        apot_param=dict(bit=4))
    n.ip = L.APoTInnerProduct(n.conv2, inner_product_param=dict(
        num_output=10, weight_filler=dict(type='gaussian', std=0.5)),
        apot_param=dict(bit=3, power=False))
    text = str(n.to_proto())
    assert 'type: "APoTConvolution"' in text and 'apot_param {\n    bit: 4\n  }' in text
    net = Net.from_param(n.to_proto(), phase=caffe_pb2.TEST)
    # conv1's weights fixed here, not drawn by the filler: first/last codes need a 9th bit
    # when the most negative weight exceeds the signed maximum in magnitude
    w1 = net.layers[list(net.layer_names).index('conv1')].blobs[0].data
    w1[...] = np.random.RandomState(3).randn(*w1.shape) * 0.5
    w1.flat[0] = np.abs(w1).max()
    net.blob_by_name('data').data[...] = np.random.RandomState(2).randn(2, 1, 8, 8)
    net.forward_prefilled()
    rows = {r['layer']: r for r in apot_rows(net.to_proto())}
    assert (rows['conv1']['rule'], rows['conv1']['bits']) == ('first/last', 8)
    assert rows['conv2']['rule'] == 'APoT' and rows['conv2']['bits'] == 4
    assert rows['conv2']['distinct'] <= 15 and rows['conv2']['alpha_w'] == 3.0
    assert rows['ip']['rule'] == 'uniform' and rows['ip']['distinct'] <= 7
    assert rows['ip']['packed_bytes'] == (10 * 6 * 4 * 4 * 3 + 7) // 8 + 8
    assert 'APoT weights' in net_report(net)
    path = str(tmp_path / 'm.caffemodel')
    net.save(path)
    assert main(['compress_report', '--weights', path]) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith('conv2')][0].split()
    assert line[1:5] == ['APoTConvolution', 'APoT', '4', '3']
    assert 'whole model' in out


# ----------------------------------------------------------------------- example nets
def _examples_module():
    sys.path.insert(0, EXAMPLES)
    try:
        import apot_netspec
    finally:
        sys.path.pop(0)
    return apot_netspec


def test_example_prototxts_match_the_netspec_script(tmp_path):
    ns = _examples_module()
    for model, finetune in (('lenet', False), ('lenet', True), ('resnet10', False)):
        net_path, solver_path = ns.write(model, 4, True, finetune, str(tmp_path))
        committed = os.path.join(EXAMPLES, os.path.basename(net_path))
        assert open(net_path).read() == open(committed).read()
        s = caffe_pb2.SolverParameter()
        parse_prototxt_text(open(solver_path).read(), s)
        committed = caffe_pb2.SolverParameter()
        parse_prototxt_text(open(os.path.join(EXAMPLES, os.path.basename(solver_path))).read(),
                            committed)
        assert s.net == net_path and committed.net == 'examples/mnist/' + os.path.basename(
            net_path)
        s.ClearField('net'), s.ClearField('snapshot_prefix')
        committed.ClearField('net'), committed.ClearField('snapshot_prefix')
        assert s == committed
        assert s.max_iter == {'lenet': 5000 if finetune else 10000, 'resnet10': 25 * 468}[model]


def _with_input(param, shape):
    """The example's train net with Input layers in place of its LMDB Data layers."""
    out = caffe_pb2.NetParameter()
    parse_prototxt_text('layer { name: "data" type: "Input" top: "data" input_param { '
                        'shape { %s } } } layer { name: "label" type: "Input" top: "label" '
                        'input_param { shape { dim: %d } } }'
                        % (' '.join('dim: %d' % d for d in shape), shape[0]), out)
    out.layer.extend(l for l in param.layer if l.type != 'Data')
    return out


def test_resnet10_example_builds_and_trains_forward_backward():
    ns = _examples_module()
    param = _with_input(ns.train_test(ns.resnet10, 'r10', 4, True), (2, 1, 28, 28))
    net = Net.from_param(param, phase=caffe_pb2.TRAIN)
    shapes = {n: net.blob_by_name(n).shape for n in ('pool1', 'layer1_sum', 'layer2_sum',
                                                     'layer3_sum', 'layer4_sum', 'fc')}
    assert shapes == {'pool1': (2, 16, 7, 7), 'layer1_sum': (2, 16, 7, 7),
                      'layer2_sum': (2, 32, 4, 4), 'layer3_sum': (2, 64, 2, 2),
                      'layer4_sum': (2, 128, 1, 1), 'fc': (2, 10)}
    apot_layers = [l for l in net.layers if l.type.startswith('APoT')]
    assert len(apot_layers) == 13                         # 1 + 4x2 + 3 downsample + 1
    quantized = [l for l in apot_layers if l.has_thresholds]
    assert len(quantized) == 11 and all(l.apot['variant'] == 'IMAGENET' for l in quantized)
    rs = np.random.RandomState(0)
    net.blob_by_name('data').data[...] = rs.randn(2, 1, 28, 28)
    net.blob_by_name('label').data[...] = [3, 7]
    _, loss = net.forward_prefilled()
    net.backward_all()
    assert np.isfinite(loss)
    for l in quantized:      # weights, α_w and α_a all get gradients
        assert l.blobs[0].diff.any() and l.blobs[1].diff.any() and l.blobs[2].diff.any()


def test_report_of_a_full_precision_model_with_an_apot_prototxt(tmp_path, capsys):
    """--model gives the APoT settings; thresholds not in the file count at their start."""
    from qcaffe.cli import main
    fp = net_param()
    for lay in fp.layer:
        if lay.type.startswith('APoT'):
            lay.type = lay.type[len('APoT'):]
            lay.ClearField('apot_param')
            del lay.param[2:]
    weights = str(tmp_path / 'fp.caffemodel')
    Net.from_param(fp, phase=caffe_pb2.TEST).save(weights)
    model = tmp_path / 'apot.prototxt'
    model.write_text(NET % dict(bit=3, extra='variant: IMAGENET'))
    assert main(['compress_report', '--weights', weights, '--model', str(model)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('conv ')][0]
    assert line.split()[1:6] == ['APoTConvolution', 'APoT', '3', '3', '6']
    assert main(['compress_report', '--weights', weights]) == 1      # nothing compressed
    assert 'nothing to report' in capsys.readouterr().err
