"""pycaffe's solver surface (upstream python/caffe/test/test_solver.py and more)."""

import numpy as np
import pytest

import qcaffe as caffe

NET = '''
name: "testnet" force_backward: true
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {
    num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 13
    weight_filler { type: "gaussian" std: 2.5 } bias_filler { type: "constant" value: -3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


@pytest.fixture
def files(tmp_path):
    net = tmp_path / 'net.prototxt'
    net.write_text(NET)

    def solver(type_='SGD', extra='', momentum=0.9, base_lr=0.01, lr_policy='inv',
               weight_decay=0.0005):
        path = tmp_path / ('solver_%s.prototxt' % type_)
        path.write_text('''net: "%s"
test_iter: 10 test_interval: 10 base_lr: %g momentum: %g
weight_decay: %g lr_policy: "%s" gamma: 0.0001 power: 0.75
display: 100 max_iter: 100 snapshot_after_train: false
snapshot_prefix: "%s"
type: "%s"
%s''' % (net, base_lr, momentum, weight_decay, lr_policy, tmp_path / 'model', type_, extra))
        return str(path)
    return solver, tmp_path


def test_solve(files):
    make, _ = files
    caffe.set_random_seed(1)
    solver = caffe.SGDSolver(make())
    assert solver.iter == 0
    solver.net.forward()
    solver.solve()
    assert solver.iter == 100
    assert isinstance(solver.net, caffe.Net) and len(solver.test_nets) == 1
    assert isinstance(solver.test_nets[0], caffe.Net)
    assert solver.param.max_iter == 100 and solver.param.display == 100
    assert solver.param.base_lr == pytest.approx(0.01)


def test_apply_update(files):
    make, _ = files
    solver = caffe.SGDSolver(make(momentum=0, weight_decay=0, lr_policy='fixed'))
    net = solver.net
    data = net.layers[1].blobs[0].data[...]            # a view (upstream's test)
    data[...] = 0                                      # reset that layer's weights
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()                              # initial lr 0.01
    assert solver.iter == 1
    np.testing.assert_allclose(data, -0.01, rtol=1e-6)  # updated in place
    assert solver.lr == pytest.approx(0.01)


def test_net_memory(files):
    """Arrays taken from every net stay valid after the solver is gone (upstream)."""
    make, _ = files
    solver = caffe.SGDSolver(make())
    nets = [solver.net] + list(solver.test_nets)
    del solver
    total = 0
    for net in nets:
        for ps in net.params.values():
            for p in ps:
                total += p.data.sum() + p.diff.sum()
        for bl in net.blobs.values():
            total += bl.data.sum() + bl.diff.sum()
    assert np.isfinite(total)


def test_snapshot_and_restore(files):
    make, tmp = files
    solver = caffe.SGDSolver(make())
    solver.step(3)
    solver.snapshot()
    model = tmp / 'model_iter_3.caffemodel'
    state = tmp / 'model_iter_3.solverstate'
    assert model.exists() and state.exists()
    w = solver.net.params['ip'][0].data.copy()
    other = caffe.SGDSolver(make())
    other.restore(str(state))
    assert other.iter == 3
    np.testing.assert_array_equal(other.net.params['ip'][0].data, w)


def test_callbacks_and_step(files):
    make, _ = files
    solver = caffe.SGDSolver(make())
    events = []
    solver.add_callback(lambda: events.append(('start', solver.iter)),
                        lambda: events.append(('grads', solver.iter)))
    solver.step(2)
    assert events == [('start', 0), ('grads', 0), ('start', 1), ('grads', 1)]


def test_share_weights(files):
    make, tmp = files
    solver = caffe.SGDSolver(make())
    net = caffe.Net(str(tmp / 'net.prototxt'), caffe.TEST)
    solver.share_weights(net)
    solver.step(1)
    np.testing.assert_array_equal(net.params['conv'][0].data, solver.net.params['conv'][0].data)
    assert np.shares_memory(net.params['conv'][0].data, solver.net.params['conv'][0].data)


@pytest.mark.parametrize('type_,cls', [('SGD', 'SGDSolver'), ('Nesterov', 'NesterovSolver'),
                                       ('AdaGrad', 'AdaGradSolver'),
                                       ('RMSProp', 'RMSPropSolver'),
                                       ('AdaDelta', 'AdaDeltaSolver'), ('Adam', 'AdamSolver')])
def test_get_solver_picks_the_class(files, type_, cls):
    make, _ = files
    kwargs = {'AdaGrad': dict(momentum=0), 'RMSProp': dict(momentum=0),
              'AdaDelta': dict(base_lr=1, momentum=0.95, extra='delta: 1e-6'),
              'Adam': dict(extra='momentum2: 0.999')}.get(type_, {})
    path = make(type_, **kwargs)
    solver = caffe.get_solver(path)
    assert type(solver) is getattr(caffe, cls)
    assert isinstance(solver.net, caffe.Net)
    solver.step(2)
    assert solver.iter == 2 and np.isfinite(float(solver.net.blobs['loss'].data))
    # the class, not the file's type, decides the rule (pycaffe: SGDSolver(adam file) is SGD)
    if type_ == 'Adam':
        assert type(caffe.SGDSolver(path)) is caffe.SGDSolver


def test_get_solver_legacy_solver_type(files):
    make, tmp = files
    path = tmp / 'legacy.prototxt'
    text = open(make()).read().replace('type: "SGD"', 'solver_type: NESTEROV')
    path.write_text(text)
    assert type(caffe.get_solver(str(path))) is caffe.NesterovSolver
    with pytest.raises(RuntimeError, match='Could not open file'):
        caffe.get_solver(str(tmp / 'missing.prototxt'))
