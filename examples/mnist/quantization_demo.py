#!/usr/bin/env python3
"""Quantization-caffe's LeNet demo, as published (its README "Demo", demo.py and
quantization_demo.md), run by qcaffe with ``import qcaffe as caffe``.

The net, built with NetSpec exactly as the fork writes it: conv1 and conv2 with 2-bit μL2Q
(``ULQ``) weights and biases and ``Clip`` activations (maxbits 8), fc1 with 2-bit ULQ weights
and biases and ``Clip`` activations with maxbits 2, the ``score`` layer in full precision.
Quantization-caffe's Clip always quantizes to 8 bits whatever maxbits says, and so does
qcaffe (it warns once for fc1); a true 2-bit Clip there (``clip_to_maxbits: true``) does not
train.  Solver as the fork's: SGD, base_lr 0.01, ``inv`` (gamma 1e-4, power 0.75), momentum
0.9, weight decay 5e-4, random_seed 0xCAFFE, test_interval 500 / test_iter 100, snapshot
every 5000 iterations.  Then the fork's loop: 20 epochs of floor(50000/64) = 781 iterations,
each followed by the train loss of the last batch and the accuracy on the 10,000 test
images, and its "restore the weights to integer" step (ULQ codes of conv1's weights, the
"Ternary_Quantize" line, which in this net decodes conv1's ULQ bias like the fork's own
output shows, and the Clip codes of conv1's activations).

Differences from the fork's script, none in the training itself: CPU unless ``--gpu N``
(the fork hard-codes GPU 3); the MNIST LMDBs are made by this repository's
examples/mnist/get_mnist.sh and create_mnist.sh (the fork: data/mnist/get_mnist.sh,
examples/mnist/create_mnist.sh), only when missing; snapshots go to examples/mnist/ rather
than the working directory; no pylab plot; ``--epochs`` / ``--iterations-per-epoch`` shorten
a run.  The fork logs 0.9736 after epoch 1 and 0.9908 after 20.

    bash examples/mnist/get_mnist.sh [/path/to/mnist]     # or --mnist /path/to/mnist below
    python examples/mnist/quantization_demo.py [--gpu 0]

For the μL2Q bit-width table (quant_lenet_netspec.py, bench/bench_ulq_lenet.py) see the
README; that net is this one without fc1's activation Clip.
"""
import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
sys.path.insert(0, REPO)   # run from a checkout without installing

import qcaffe as caffe  # noqa: E402  (the fork: import caffe)
from qcaffe import layers as L, params as P  # noqa: E402
from qcaffe.proto import caffe_pb2  # noqa: E402


def lenet(lmdb, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'),
                            weights_compress=["ULQ", "ULQ"],  # compress methods for kernel and bias
                            weights_compress_param=[{"maxbits": 2}, {"maxbits": 2}],  # compress param for kernel and bias
                            activations_compress="Clip",  # compress method for activations
                            activations_compress_param={"maxbits": 8})  # compress param for activations
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'),
                            weights_compress=["ULQ", "ULQ"],
                            weights_compress_param=[{"maxbits": 2}, {"maxbits": 2}],
                            activations_compress="Clip",
                            activations_compress_param={"maxbits": 8})
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'),
                           weights_compress=["ULQ", "ULQ"],
                           weights_compress_param=[{"maxbits": 2}, {"maxbits": 2}],
                           activations_compress="Clip",
                           activations_compress_param={"maxbits": 2})
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def prepare_data(caffe_root, mnist):
    """The fork's ``!data/mnist/get_mnist.sh`` and ``!examples/mnist/create_mnist.sh``."""
    example = os.path.join(caffe_root, 'examples', 'mnist')
    if all(os.path.isdir(os.path.join(example, 'mnist_%s_lmdb' % s)) for s in ('train', 'test')):
        return
    env = dict(os.environ, QCAFFE='%s -m qcaffe' % sys.executable,
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH'))
                                          if p))
    subprocess.check_call(['bash', os.path.join(example, 'get_mnist.sh')]
                          + ([mnist] if mnist else []), env=env)
    subprocess.check_call(['bash', os.path.join(example, 'create_mnist.sh')], env=env)


def solver_param(caffe_root, train_net_path, test_net_path, gpu=None):
    """The fork's solver (snapshots under examples/mnist; CPU unless a GPU is given)."""
    s = caffe_pb2.SolverParameter()
    s.random_seed = 0xCAFFE
    s.train_net = train_net_path
    s.test_net.append(test_net_path)
    s.test_interval = 500  # Test after every 500 training iterations.
    s.test_iter.append(100)  # Test on 100 batches each time we test.
    s.max_iter = 10000  # no. of times to update the net (training iterations)
    s.type = "SGD"
    s.base_lr = 0.01
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.lr_policy = 'inv'
    s.gamma = 0.0001
    s.power = 0.75
    s.display = 1000
    s.snapshot = 5000
    s.snapshot_prefix = caffe_root + 'examples/mnist/lenet_auto_quantization'
    s.solver_mode = caffe_pb2.SolverParameter.CPU if gpu is None else caffe_pb2.SolverParameter.GPU
    return s


def parse_data(data, compress_method, compress_param):
    """The fork's recipe: the integers behind the dequantized values."""
    if compress_method == "ULQ":
        alpha = compress_param.alpha
        beta = compress_param.delta
        return (data - beta) / alpha + 0.5
    if compress_method == "Ternary_Quantize":
        alpha = compress_param.alpha
        fixedpos = compress_param.fixedpos
        print("restore alpha to integer: alpha=%f" % (alpha / 2 ** fixedpos))
        return data / alpha
    if compress_method == "Clip":
        alpha = compress_param.alpha
        return data / alpha


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--gpu', type=int, default=None, metavar='ID',
                    help='train on this GPU (default: CPU)')
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--iterations-per-epoch', type=int, default=None,
                    help='default floor(50000/64) = 781, as the fork')
    ap.add_argument('--root', default=REPO,
                    help='caffe_root: the folder holding examples/mnist (default: this checkout)')
    ap.add_argument('--mnist', default=None,
                    help='folder with the MNIST files for get_mnist.sh (default: download)')
    args = ap.parse_args(argv)
    caffe_root = os.path.join(args.root, '')
    prepare_data(caffe_root, args.mnist)

    # Creating the net with quantization config
    train_net_path = caffe_root + 'examples/mnist/lenet_auto_quantization_train.prototxt'
    test_net_path = caffe_root + 'examples/mnist/lenet_auto_quantization_test.prototxt'
    train_batchsize = 64
    train_epoch = args.iterations_per_epoch or math.floor(50000 / train_batchsize)
    test_batchsize = 100
    with open(train_net_path, 'w') as f:
        f.write(str(lenet(caffe_root + 'examples/mnist/mnist_train_lmdb', train_batchsize)))
    with open(test_net_path, 'w') as f:
        f.write(str(lenet(caffe_root + 'examples/mnist/mnist_test_lmdb', test_batchsize)))

    # Define solver
    solver_config_path = caffe_root + 'examples/mnist/lenet_auto_quantization_solver.prototxt'
    with open(solver_config_path, 'w') as f:
        f.write(str(solver_param(caffe_root, train_net_path, test_net_path, args.gpu)))
    # load the solver and create train and test nets
    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    solver = caffe.get_solver(solver_config_path)

    # Training
    epoches = args.epochs
    train_loss = np.zeros(epoches)
    test_acc = np.zeros(epoches)
    start = time.time()
    for ep in range(epoches):
        solver.step(int(train_epoch))  # run one epoch
        train_loss[ep] = solver.net.blobs['loss'].data
        correct = 0
        for test_it in range(100):
            solver.test_nets[0].forward()
            correct += np.sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                              == solver.test_nets[0].blobs['label'].data)
        test_acc[ep] = correct / 1e4
        print("epoch %d: train loss=%.4f, test accuracy=%.4f" % (ep, train_loss[ep], test_acc[ep]),
              flush=True)
    print('wall time: %.0f s' % (time.time() - start))

    # Get and restore weights and activations for further processing
    # restore the weights to integer
    layer = solver.net.layers[1]
    # for ULQ
    data1 = parse_data(layer.blobs[0].quantize, layer.weights_compress[0],
                       layer.weights_compress_param[0])
    # for Ternary_Quantization (this net's bias is ULQ too, so the ULQ branch decodes it)
    data2 = parse_data(layer.blobs[1].quantize, layer.weights_compress[1],
                       layer.weights_compress_param[1])
    # for Clip
    data3 = parse_data(solver.net.blobs['conv1'].data, layer.activations_compress[0],
                       layer.activations_compress_param[0])
    print(data1.reshape(-1)[:5])
    print(data2.reshape(-1)[:5])
    print(data3.reshape(-1)[:5])
    return train_loss, test_acc, (data1, data2, data3)


if __name__ == '__main__':
    main()
