"""pycaffe's Net / Layer / module surface as scripts use it (``import qcaffe as caffe``).

Mirrors upstream python/caffe/test/test_net.py, test_python_layer.py and test_solver.py where
they apply.
"""
import sys
import textwrap

import numpy as np
import pytest

import qcaffe as caffe
from qcaffe.proto import caffe_pb2

NET = '''
name: "testnet"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 11 kernel_size: 2 pad: 3
          weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 2 } }
        param { decay_mult: 1 } param { decay_mult: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip_blob"
        inner_product_param { num_output: 13
          weight_filler { type: "gaussian" std: 2.5 } bias_filler { type: "constant" value: -3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip_blob" bottom: "label" top: "loss" }
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    return str(path)


@pytest.fixture
def net(net_file):
    caffe.set_random_seed(1701)
    n = caffe.Net(net_file, caffe.TRAIN)
    n.blobs['label'].data[...] = np.random.RandomState(0).randint(13, size=5)
    n.blobs['data'].data[...] = np.random.RandomState(1).randn(5, 2, 3, 4)
    return n


# ------------------------------------------------------------------ module surface
def test_module_surface():
    for name in ('Net', 'SGDSolver', 'NesterovSolver', 'AdaGradSolver', 'RMSPropSolver',
                 'AdaDeltaSolver', 'AdamSolver', 'get_solver', 'Layer', 'Timer', 'NCCL',
                 'set_mode_cpu', 'set_mode_gpu', 'set_device', 'set_random_seed',
                 'layer_type_list', 'init_log', 'log', 'solver_count', 'set_solver_count',
                 'solver_rank', 'set_solver_rank', 'set_multiprocess', 'has_nccl',
                 'NetSpec', 'layers', 'params', 'to_proto', 'Classifier', 'io'):
        assert hasattr(caffe, name), name
    assert caffe.TRAIN == caffe_pb2.TRAIN == 0 and caffe.TEST == caffe_pb2.TEST == 1
    assert caffe.proto.caffe_pb2 is caffe_pb2
    types = caffe.layer_type_list()
    assert 'Python' in types and 'Convolution' in types and 'InnerProduct' in types
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    assert isinstance(caffe.has_nccl(), bool)   # NCCL / MPI: tests/test_distributed.py
    caffe.set_solver_count(2)
    assert caffe.solver_count() == 2
    caffe.set_solver_count(1)
    caffe.set_mode_cpu()
    t = caffe.Timer()
    t.start()
    t.stop()
    assert t.ms >= 0.0


def test_log_function(capsys):
    caffe.init_log()
    caffe.log('hello from pycaffe')
    err = capsys.readouterr().err
    assert 'hello from pycaffe' in err and err.startswith('I')
    assert callable(caffe.log) and hasattr(caffe.log, 'setup_logging')


# ---------------------------------------------------------------- constructors
def _save_weights(net_file, tmp_path):
    caffe.set_random_seed(3)
    n = caffe.Net(net_file, caffe.TRAIN)
    path = str(tmp_path / 'w.caffemodel')
    n.save(path)
    return n, path


def test_constructor_forms(net_file, tmp_path):
    ref, weights = _save_weights(net_file, tmp_path)
    w = ref.params['conv'][0].data
    forms = [
        caffe.Net(net_file, caffe.TEST, weights=weights),
        caffe.Net(net_file, weights, caffe.TEST),                 # legacy positional
        caffe.Net(net_file, phase=caffe.TEST, weights=weights),
        caffe.Net(net_file, caffe.TEST, 0, None, weights),        # all positional
        caffe.Net(net_file, caffe.TEST, level=0, stages=[], weights=weights),
        caffe.Net(network_file=net_file, phase=caffe.TEST, weights=weights),
    ]
    for n in forms:
        assert n.phase == caffe.TEST
        np.testing.assert_array_equal(n.params['conv'][0].data, w)
    n = caffe.Net(net_file, caffe.TRAIN)
    assert n.phase == caffe.TRAIN
    assert not np.array_equal(n.params['conv'][0].data, w)   # fresh fillers, no weights
    with pytest.raises(RuntimeError, match='Could not open file'):
        caffe.Net(str(tmp_path / 'missing.prototxt'), caffe.TEST)
    with pytest.raises(RuntimeError, match='Could not open file'):
        caffe.Net(net_file, caffe.TEST, weights=str(tmp_path / 'missing.caffemodel'))
    with pytest.raises(TypeError, match='phase'):
        caffe.Net(net_file)
    with pytest.raises(caffe.io.QcaffeError, match='TRAIN'):
        caffe.Net(net_file, 7)


def test_level_and_stages(tmp_path):
    path = tmp_path / 'staged.prototxt'
    path.write_text('''
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
    layer { name: "a" type: "Power" bottom: "data" top: "a" include { stage: "s1" } }
    layer { name: "b" type: "Power" bottom: "data" top: "b" include { min_level: 2 } }
    layer { name: "c" type: "Power" bottom: "data" top: "c" include { phase: TRAIN } }
    ''')
    assert caffe.Net(str(path), caffe.TEST).outputs == ['data']
    assert caffe.Net(str(path), caffe.TRAIN).outputs == ['c']
    assert caffe.Net(str(path), caffe.TEST, stages=['s1']).outputs == ['a']
    assert caffe.Net(str(path), caffe.TEST, level=2).outputs == ['b']
    assert caffe.Net(str(path), caffe.TEST, level=2, stages=['s1']).outputs == ['a', 'b']


# ------------------------------------------------------------------- members
def test_members(net):
    assert list(net.blobs) == ['data', 'label', 'conv', 'ip_blob', 'loss']
    assert list(net.params) == ['conv', 'ip']        # only layers with blobs
    assert list(net.layer_dict) == ['data', 'conv', 'ip', 'loss'] == list(net._layer_names)
    assert [l.type for l in net.layers] == ['Input', 'Convolution', 'InnerProduct',
                                            'SoftmaxWithLoss']
    assert net.layer_dict['conv'].type == 'Convolution'
    assert net.layer_dict['conv'].blobs[0] is net.params['conv'][0]
    assert net.inputs == ['data', 'label'] and net.outputs == ['loss']
    assert net._inputs == [0, 1] and net._outputs == [4]
    assert list(net._blob_names) == list(net.blobs)
    assert net.top_names['data'] == ['data', 'label']
    assert net.bottom_names['loss'] == ['ip_blob', 'label']
    assert net._bottom_ids(3) == [3, 1] and net._top_ids(3) == [4]
    assert dict(net.blob_loss_weights) == {'data': 0, 'label': 0, 'conv': 0, 'ip_blob': 0,
                                           'loss': 1}
    assert list(net._blob_loss_weights) == [0, 0, 0, 0, 1]
    assert net.blobs is net.blobs                       # cached like pycaffe
    conv_w = net.params['conv'][0]
    assert conv_w.shape == (11, 2, 2, 2) and conv_w.count == 88
    assert (conv_w.num, conv_w.channels, conv_w.height, conv_w.width) == (11, 2, 2, 2)
    data = net.blobs['data']
    assert isinstance(data.data, np.ndarray) and data.data.dtype == np.float32
    # layer blobs are list-like with add_blob
    assert len(net.layers[1].blobs) == 2


def test_blob_reshape_and_views():
    b = caffe.pycaffe.Blob(2, 3)
    d = b.data
    d[...] = 7
    b.reshape(3, 2)                    # same count: the memory is kept
    assert b.data.shape == (3, 2) and (b.data == 7).all()
    assert np.shares_memory(d, b.data)
    b.reshape(1, 2)                    # smaller: still the same memory
    assert np.shares_memory(d, b.data)
    with pytest.raises(TypeError):
        b.reshape(shape=(1, 2))        # pycaffe: "Blob.reshape takes no kwargs"
    assert b.num == 1 and b.channels == 2 and b.height == 1 and b.width == 1


def test_forward_backward(net):
    loss = net.forward()
    assert list(loss) == ['loss'] and loss['loss'].shape == ()
    assert loss['loss'] is not None and float(loss['loss']) > 0
    # the returned arrays are the live blob arrays
    assert np.shares_memory(loss['loss'], net.blobs['loss'].data)
    grads = net.backward()
    assert set(grads) == {'data', 'label'}
    assert np.abs(grads['data']).sum() > 0
    assert np.shares_memory(grads['data'], net.blobs['data'].diff)
    # kwargs inputs, blobs=, start/end by layer name
    x = np.random.RandomState(5).randn(5, 2, 3, 4).astype(np.float32)
    lab = np.arange(5, dtype=np.float32)
    out = net.forward(blobs=['conv'], data=x, label=lab)
    assert set(out) == {'loss', 'conv'}
    np.testing.assert_array_equal(net.blobs['data'].data, x)
    out = net.forward(end='ip')
    assert set(out) == {'ip_blob'}
    out2 = net.forward(start='ip', end='ip')
    np.testing.assert_allclose(out['ip_blob'], out2['ip_blob'])
    g = net.backward(start='loss', end='ip', diffs=['conv'])
    assert set(g) == {'conv'}
    with pytest.raises(Exception, match='Input blob arguments do not match net inputs'):
        net.forward(data=x)
    with pytest.raises(Exception, match='Input is not batch sized'):
        net.forward(data=x[:2], label=lab[:2])
    with pytest.raises(Exception, match='Top diff arguments do not match net outputs'):
        net.backward(conv=np.zeros((5, 11, 5, 6)))
    with pytest.raises(Exception, match='Diff is not batch sized'):
        net.backward(loss=np.zeros((2,)))
    with pytest.raises(caffe.io.QcaffeError, match='nope'):
        net.forward(start='nope')


def test_forward_all_pads_and_strips(tmp_path):
    path = tmp_path / 'ip.prototxt'
    path.write_text('''
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                                  bias_filler { type: "constant" value: 0.5 } } }
    ''')
    n = caffe.Net(str(path), caffe.TEST)
    w = n.params['ip'][0].data.astype(np.float64)
    x = np.random.RandomState(2).randn(10, 3).astype(np.float32)   # 10 = 4 + 4 + 2 (padded)
    out = n.forward_all(data=x)
    assert out['ip'].shape == (10, 2)
    np.testing.assert_allclose(out['ip'], x.dot(w.T) + 0.5, rtol=1e-5, atol=1e-5)
    outs, diffs = n.forward_backward_all(data=x, ip=np.ones((10, 2), np.float32))
    assert outs['ip'].shape == (10, 2) and diffs['data'].shape == (10, 3)
    np.testing.assert_allclose(diffs['data'], np.tile(w.sum(0), (10, 1)), rtol=1e-5, atol=1e-5)


def test_reshape_inputs(tmp_path):
    path = tmp_path / 'ip.prototxt'
    path.write_text('''
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 } }
    ''')
    n = caffe.Net(str(path), caffe.TEST)
    n.blobs['data'].reshape(7, 3)
    n.reshape()
    assert n.blobs['ip'].shape == (7, 2)
    assert n.forward(data=np.zeros((7, 3)))['ip'].shape == (7, 2)


def test_save_copy_share(net, net_file, tmp_path):
    path = str(tmp_path / 'saved.caffemodel')
    net.save(path)
    other = caffe.Net(net_file, caffe.TEST)
    other.copy_from(path)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    third = caffe.Net(net_file, caffe.TEST)
    third.share_with(net)
    net.params['ip'][0].data[...] = 0.25
    assert (third.params['ip'][0].data == 0.25).all()          # aliased data
    third.params['ip'][0].diff[...] = 3                          # diffs are not shared
    assert not (net.params['ip'][0].diff == 3).all()


def test_clear_param_diffs_and_hooks(net):
    net.forward()
    net.backward()
    diff = net.params['conv'][0].diff
    assert np.abs(diff).sum() > 0
    net.clear_param_diffs()
    assert (diff == 0).all()                      # the earlier array saw it: in place
    calls = []
    net.before_forward(lambda i: calls.append(('bf', i)))
    net.after_forward(lambda i: calls.append(('af', i)))
    net.before_backward(lambda i: calls.append(('bb', i)))
    net.after_backward(lambda i: calls.append(('ab', i)))
    net.forward()
    net.backward()
    assert calls[:8] == [('bf', 0), ('af', 0), ('bf', 1), ('af', 1), ('bf', 2), ('af', 2),
                         ('bf', 3), ('af', 3)]
    assert ('bb', 3) in calls and ('ab', 1) in calls


def test_arrays_survive_net_deletion(net_file):
    n = caffe.Net(net_file, caffe.TRAIN)
    w = n.params['ip'][0].data
    expected = w.copy()
    del n
    np.testing.assert_array_equal(w, expected)


def test_set_input_arrays(tmp_path):
    path = tmp_path / 'mem.prototxt'
    path.write_text('''
    layer { name: "data" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 1 weight_filler { type: "constant" value: 1 } } }
    ''')
    n = caffe.Net(str(path), caffe.TEST)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.arange(4, dtype=np.float32)
    n.set_input_arrays(data, labels)
    out = n.forward()
    np.testing.assert_allclose(out['ip'].ravel(), data[:2].reshape(2, -1).sum(1))
    np.testing.assert_array_equal(n.blobs['label'].data.ravel(), [0, 1])
    n.forward()
    np.testing.assert_array_equal(n.blobs['label'].data.ravel(), [2, 3])
    with pytest.raises(caffe.io.QcaffeError, match='float32'):
        n.set_input_arrays(data.astype(np.float64), labels)
    ip_only = tmp_path / 'ip.prototxt'
    ip_only.write_text('layer { name: "data" type: "Input" top: "data" '
                       'input_param { shape { dim: 1 dim: 3 } } }')
    with pytest.raises(caffe.io.QcaffeError, match='MemoryData'):
        caffe.Net(str(ip_only), caffe.TEST).set_input_arrays(data, labels)


# --------------------------------------------------------------- Python layers
PYLAYERS = '''
import numpy as np
import qcaffe as caffe


class EuclideanLossLayer(caffe.Layer):
    """BVLC examples/pycaffe/layers/pyloss.py."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            # BVLC's example assumes loss weight 1; scaling by the top diff (which holds the
            # loss weight) makes it a correct layer for any weight and the gradient check
            bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class SimpleLayer(caffe.Layer):
    """upstream test_python_layer.py: y = 10 x."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError('this layer always fails')


class ParameterLayer(caffe.Layer):
    """upstream: a learnable scalar added to the input."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.seen = (self.param_str, self.phase)

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase
'''


@pytest.fixture
def pylayers(tmp_path, monkeypatch):
    mod = tmp_path / 'qcaffe_test_pylayers.py'
    mod.write_text(PYLAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop('qcaffe_test_pylayers', None)
    yield tmp_path
    sys.modules.pop('qcaffe_test_pylayers', None)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_python_simple_layer(pylayers):
    path = _write(pylayers, 'simple.prototxt', '''
        name: "pythonnet" force_backward: true
        input: "data" input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: "Python" name: "one" bottom: "data" top: "one"
          python_param { module: "qcaffe_test_pylayers" layer: "SimpleLayer" } }
        layer { type: "Python" name: "two" bottom: "one" top: "two"
          python_param { module: "qcaffe_test_pylayers" layer: "SimpleLayer" } }
        layer { type: "Python" name: "three" bottom: "two" top: "three"
          python_param { module: "qcaffe_test_pylayers" layer: "SimpleLayer" } }''')
    net = caffe.Net(path, caffe.TRAIN)
    x = 8
    net.blobs['data'].data[...] = x
    net.forward()
    assert (net.blobs['three'].data == 10 ** 3 * x).all()
    net.blobs['three'].diff[...] = x
    net.backward()
    assert (net.blobs['data'].diff == 10 ** 3 * x).all()
    # reshape is called on every forward (upstream test_reshape)
    s = 4
    net.blobs['data'].reshape(s, s, s, s)
    net.forward()
    assert net.blobs['three'].data.shape == (s, s, s, s)


def test_python_layer_exception(pylayers):
    path = _write(pylayers, 'exc.prototxt', '''
        name: "exc" force_backward: true
        input: "data" input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: "Python" name: "layer" bottom: "data" top: "top"
          python_param { module: "qcaffe_test_pylayers" layer: "ExceptionLayer" } }''')
    with pytest.raises(RuntimeError, match='always fails'):
        caffe.Net(path, caffe.TEST)


def test_python_layer_param_str_and_phase(pylayers):
    path = _write(pylayers, 'phase.prototxt', '''
        layer { type: "Python" name: "layer" top: "phase"
          python_param { module: "qcaffe_test_pylayers" layer: "PhaseLayer"
                         param_str: "{'a': 1}" } }''')
    for phase in (caffe.TRAIN, caffe.TEST):
        net = caffe.Net(path, phase)
        net.forward()
        assert net.blobs['phase'].data == phase
        assert net.layers[0].seen == ("{'a': 1}", phase)   # user attributes reachable


def test_python_parameter_layer_is_trained_and_saved(pylayers):
    net_path = _write(pylayers, 'param.prototxt', '''
        name: "pythonnet" force_backward: true
        input: "data" input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: "Python" name: "layer" bottom: "data" top: "top"
          python_param { module: "qcaffe_test_pylayers" layer: "ParameterLayer" } }''')
    solver_path = _write(pylayers, 'solver.prototxt', '''
        net: "%s"
        test_iter: 0 test_interval: 1000 base_lr: 1 momentum: 0 weight_decay: 0
        lr_policy: "fixed" display: 0 max_iter: 100 snapshot_after_train: false
        snapshot_prefix: "%s"''' % (net_path, pylayers / 'model'))
    solver = caffe.SGDSolver(solver_path)
    assert list(solver.net.params) == ['layer']
    w = solver.net.params['layer'][0].data
    assert w[0] == 0
    solver.step(1)
    assert w[0] == -1          # data -= lr * diff, in the array kept from before the step
    h5 = str(pylayers / 'param.caffemodel')
    solver.net.save(h5)
    other = caffe.Net(net_path, caffe.TRAIN, weights=h5)
    assert other.params['layer'][0].data[0] == -1


def test_python_euclidean_loss_matches_builtin_and_gradient(pylayers):
    from qcaffe.testing import check_gradient
    path = _write(pylayers, 'pyloss.prototxt', '''
        name: "pyloss" force_backward: true
        layer { name: "data" type: "Input" top: "pred" top: "target"
                input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
        layer { type: "Python" name: "pyloss" bottom: "pred" bottom: "target" top: "pyloss"
          python_param { module: "qcaffe_test_pylayers" layer: "EuclideanLossLayer" }
          loss_weight: 1 }
        layer { type: "EuclideanLoss" name: "loss" bottom: "pred" bottom: "target"
                top: "loss" }''')
    net = caffe.Net(path, caffe.TRAIN)
    rs = np.random.RandomState(7)
    pred, target = rs.randn(4, 3), rs.randn(4, 3)
    out = net.forward(pred=pred, target=target)
    assert set(out) == {'pyloss', 'loss'}
    np.testing.assert_allclose(out['pyloss'].ravel()[0], out['loss'], rtol=1e-6)
    np.testing.assert_allclose(out['loss'], ((pred - target) ** 2).sum() / 4 / 2, rtol=1e-5)
    # both losses have weight 1: the gradient is twice the Euclidean one
    g = net.backward()
    np.testing.assert_allclose(g['pred'], 2 * (pred - target) / 4, rtol=1e-5, atol=1e-6)
    # numeric gradient check of the Python layer alone
    layer = net.layer_dict['pyloss']
    bottom = [caffe.pycaffe.Blob(4, 3), caffe.pycaffe.Blob(4, 3)]
    bottom[0].data[...] = rs.randn(4, 3)
    bottom[1].data[...] = rs.randn(4, 3)
    check_gradient(layer, bottom, [caffe.pycaffe.Blob()], setup=False, step=1e-2,
                   threshold=1e-2)


def test_python_layer_refuses_missing_module(tmp_path):
    path = _write(tmp_path, 'bad.prototxt', '''
        layer { type: "Python" name: "x" top: "x"
          python_param { module: "no_such_module_qcaffe" layer: "L" } }''')
    with pytest.raises(caffe.io.QcaffeError, match='no_such_module_qcaffe'):
        caffe.Net(path, caffe.TEST)


def test_save_hdf5_load_hdf5(net, net_file, tmp_path):
    pytest.importorskip('h5py')
    path = str(tmp_path / 'w.caffemodel.h5')
    net.save_hdf5(path)
    other = caffe.Net(net_file, caffe.TEST)
    other.load_hdf5(path)
    np.testing.assert_array_equal(other.params['conv'][0].data, net.params['conv'][0].data)
    third = caffe.Net(net_file, caffe.TEST, weights=path)      # copy_from sniffs HDF5
    np.testing.assert_array_equal(third.params['ip'][1].data, net.params['ip'][1].data)
