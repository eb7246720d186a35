"""BVLC's "Learning LeNet" notebook (examples/01-learning-lenet.ipynb), run as written with
``import qcaffe as caffe`` on real MNIST (a 2,000-image train LMDB and a 500-image test LMDB
made with caffe.io.array_to_datum, the way pycaffe users build them)."""
import gzip
import os

import numpy as np
import pytest

import qcaffe as caffe
from qcaffe import layers as L, params as P
from netspec_helpers import lenet_layers
from shared_data import require_shared

N_TRAIN, N_TEST = 2000, 500


def _idx(path, count, header):
    with gzip.open(path, 'rb') as f:
        f.read(header)
        return f.read(count * (784 if header == 16 else 1))


def _make_lmdb(path, images_gz, labels_gz, count):
    import lmdb
    images = np.frombuffer(_idx(images_gz, count, 16), np.uint8).reshape(count, 1, 28, 28)
    labels = np.frombuffer(_idx(labels_gz, count, 8), np.uint8)
    env = lmdb.open(path, map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i in range(count):
            datum = caffe.io.array_to_datum(images[i], int(labels[i]))
            txn.put(b'%08d' % i, datum.SerializeToString())
    env.close()
    return labels


@pytest.fixture(scope='module')
def mnist_lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('mnist')
    d = require_shared('mnist')
    train = str(root / 'mnist_train_lmdb')
    test = str(root / 'mnist_test_lmdb')
    _make_lmdb(train, os.path.join(d, 'train-images-idx3-ubyte.gz'),
               os.path.join(d, 'train-labels-idx1-ubyte.gz'), N_TRAIN)
    test_labels = _make_lmdb(test, os.path.join(d, 't10k-images-idx3-ubyte.gz'),
                             os.path.join(d, 't10k-labels-idx1-ubyte.gz'), N_TEST)
    return root, train, test, test_labels


def lenet(lmdb, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    return lenet_layers(n, 'fc1', 'score')


def test_learning_lenet_notebook(mnist_lmdbs):
    root, train_lmdb, test_lmdb, test_labels = mnist_lmdbs
    train_net = str(root / 'lenet_auto_train.prototxt')
    test_net = str(root / 'lenet_auto_test.prototxt')
    with open(train_net, 'w') as f:
        f.write(str(lenet(train_lmdb, 64)))
    with open(test_net, 'w') as f:
        f.write(str(lenet(test_lmdb, 100)))
    solver_file = str(root / 'lenet_auto_solver.prototxt')
    with open(solver_file, 'w') as f:
        f.write('''# The train/test net protocol buffer definition
train_net: "%s"
test_net: "%s"
test_iter: 5
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "%s"
''' % (train_net, test_net, root / 'lenet'))

    caffe.set_mode_cpu()
    caffe.set_random_seed(0)
    solver = caffe.SGDSolver(solver_file)
    assert isinstance(solver, caffe.SGDSolver) and isinstance(solver.net, caffe.Net)

    # each output is (batch size, feature dim, spatial dim)
    shapes = [(k, v.data.shape) for k, v in solver.net.blobs.items()]
    assert shapes == [('data', (64, 1, 28, 28)), ('label', (64,)),
                      ('conv1', (64, 20, 24, 24)), ('pool1', (64, 20, 12, 12)),
                      ('conv2', (64, 50, 8, 8)), ('pool2', (64, 50, 4, 4)),
                      ('fc1', (64, 500)), ('score', (64, 10)), ('loss', ())]
    # just print the weight sizes (we'll omit the biases)
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()] == [
        ('conv1', (20, 1, 5, 5)), ('conv2', (50, 20, 5, 5)), ('fc1', (500, 800)),
        ('score', (10, 500))]

    solver.net.forward()  # train net
    solver.test_nets[0].forward()  # test net (there can be more than one)
    train_data = solver.net.blobs['data'].data
    assert train_data.min() >= 0 and train_data.max() <= 1 and train_data.max() > 0.9
    first = np.frombuffer(gzip.open(os.path.join(require_shared('mnist'),
                                                 't10k-labels-idx1-ubyte.gz')).read()[8:108],
                          np.uint8)
    np.testing.assert_array_equal(solver.test_nets[0].blobs['label'].data, first)
    np.testing.assert_array_equal(solver.test_nets[0].blobs['label'].data[:8],
                                  [7, 2, 1, 0, 4, 1, 4, 9])

    # arrays kept across step() stay the live buffers
    data_arr = solver.net.blobs['data'].data
    conv1_w = solver.net.params['conv1'][0].data
    before = conv1_w.copy()
    solver.step(1)
    assert solver.iter == 1
    assert np.shares_memory(data_arr, solver.net.blobs['data'].data)
    assert not np.array_equal(conv1_w, before)          # updated in place
    np.testing.assert_array_equal(conv1_w, solver.net.params['conv1'][0].data)
    grad = solver.net.params['conv1'][0].diff[:, 0]     # the notebook's filter-gradient image
    assert grad.shape == (20, 5, 5) and np.abs(grad).sum() > 0

    niter = 100
    test_interval = 50
    train_loss = np.zeros(niter)
    test_acc = []
    output = np.zeros((niter, 8, 10))
    for it in range(niter):
        solver.step(1)  # SGD by Caffe
        train_loss[it] = solver.net.blobs['loss'].data
        # store the output on the first test batch (start the forward pass at conv1 to avoid
        # loading new data)
        solver.test_nets[0].forward(start='conv1')
        output[it] = solver.test_nets[0].blobs['score'].data[:8]
        if it % test_interval == 0 or it == niter - 1:
            correct = 0
            for test_it in range(N_TEST // 100):
                solver.test_nets[0].forward()
                correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                               == solver.test_nets[0].blobs['label'].data)
            test_acc.append(correct / float(N_TEST))
    assert solver.iter == niter + 1
    assert np.isfinite(train_loss).all()
    assert train_loss[-10:].mean() < 0.5 < train_loss[:3].mean()
    print("test accuracy", test_acc)
    assert test_acc[-1] >= 0.85, test_acc
    # the test net shares the trained weights (share_weights / the solver's test sharing)
    solver.share_weights(solver.test_nets[0])
    np.testing.assert_array_equal(solver.test_nets[0].params['conv1'][0].data, conv1_w)
    # the first-batch scores get confident over training, as in the notebook's plots
    probs = np.exp(output[-1]) / np.exp(output[-1]).sum(1, keepdims=True)
    assert (probs.argmax(1) == test_labels[:8]).mean() >= 0.75
    # look at the learned filters (notebook: conv1 weights as 4x5 images)
    filters = solver.net.params['conv1'][0].data[:, 0]
    assert filters.shape == (20, 5, 5) and np.isfinite(filters).all()

    # snapshot / restore through the pycaffe solver surface
    solver.snapshot()
    model = str(root / ('lenet_iter_%d.caffemodel' % solver.iter))
    state = str(root / ('lenet_iter_%d.solverstate' % solver.iter))
    assert os.path.exists(model) and os.path.exists(state)
    solver2 = caffe.get_solver(solver_file)
    assert type(solver2) is caffe.SGDSolver
    solver2.restore(state)
    assert solver2.iter == solver.iter
    np.testing.assert_array_equal(solver2.net.params['fc1'][0].data,
                                  solver.net.params['fc1'][0].data)
    deploy = caffe.Net(test_net, caffe.TEST, weights=model)
    out = deploy.forward()
    assert out['loss'] < 1.0
