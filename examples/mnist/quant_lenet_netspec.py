#!/usr/bin/env python3
"""Build a quantized LeNet with NetSpec and write its train/test prototxt and solver for
``qcaffe train`` (the μL2Q bit-width table, bench/bench_ulq_lenet.py).

conv1, conv2 and ip1 get μL2Q (or another method) on weights *and* biases at --bits; conv1
and conv2 outputs get 8-bit Clip activations; the last layer (ip2) stays full precision.
Solver: SGD lr 0.01 ``inv`` (γ 1e-4, power 0.75), momentum 0.9, weight decay 5e-4,
batch 64, 20 epochs of 781 iterations (15620), test on 10 000 images every epoch.

Not Quantization-caffe's demo itself (that is examples/mnist/quantization_demo.py, run as
published).  Where this net and run differ from the fork's demo:
* ip1 has no activation compression; the fork's fc1 has ``activations_compress: "Clip"``
  with maxbits 2 (which Quantization-caffe, and qcaffe, run as an 8-bit Clip);
* BVLC LeNet names (ip1/ip2 for the fork's fc1/score), one train_test prototxt with an
  Accuracy layer instead of separate train and test nets;
* ``qcaffe train`` with test_interval 781 (once per epoch) and max_iter 15620, instead of
  the fork's pycaffe loop of solver.step(781) with its solver's test_interval 500 and
  max_iter 10000;
* --method / --bits choose the compression (the demo: ULQ, 2 bits).

    python examples/mnist/quant_lenet_netspec.py --method ULQ --bits 2
    qcaffe train --solver examples/mnist/lenet_quant_ulq2_solver.prototxt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

from qcaffe import net_spec  # noqa: E402
from qcaffe.proto import caffe_pb2  # noqa: E402

L, P = net_spec.layers, net_spec.params
HERE = 'examples/mnist'
ITERS_PER_EPOCH = 781          # floor(50000 / 64), as the QC demo


def compressed(method, bits, act_bits=None):
    """Keyword arguments exactly as QC's demo writes them."""
    kw = dict(weights_compress=[method, method],
              weights_compress_param=[{"maxbits": bits}, {"maxbits": bits}])
    if act_bits:
        kw.update(activations_compress="Clip", activations_compress_param={"maxbits": act_bits})
    return kw


def lenet(lmdb, batch_size, method, bits, phase):
    n = net_spec.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2,
                             include=dict(phase=phase))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'), **compressed(method, bits, 8))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type='xavier'), **compressed(method, bits, 8))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'),
                           **compressed(method, bits))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    if phase == caffe_pb2.TEST:
        n.accuracy = L.Accuracy(n.ip2, n.label)
    return n.to_proto()


def train_test(method, bits, train_lmdb, test_lmdb):
    """One train_test NetParameter (TRAIN data layer + TEST data layer)."""
    tr = lenet(train_lmdb, 64, method, bits, caffe_pb2.TRAIN)
    te = lenet(test_lmdb, 100, method, bits, caffe_pb2.TEST)
    net = caffe_pb2.NetParameter()
    net.name = 'LeNet_%s%d' % (method, bits)
    net.layer.extend([tr.layer[0], te.layer[0]])
    net.layer.extend([l for l in te.layer[1:]])
    return net


def solver(net_path, prefix, epochs=20):
    s = caffe_pb2.SolverParameter()
    s.net = net_path
    s.test_iter.append(100)
    s.test_interval = ITERS_PER_EPOCH
    s.base_lr = 0.01
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.lr_policy = 'inv'
    s.gamma = 1e-4
    s.power = 0.75
    s.display = 100
    s.max_iter = epochs * ITERS_PER_EPOCH
    s.snapshot = s.max_iter
    s.snapshot_prefix = prefix
    s.random_seed = 0xCAFFE
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    return s


def tag(method, bits):
    return '%s%d' % ({'ULQ': 'ulq', 'Ternary_Quantize': 'tq', 'Ternary': 'ternary',
                      'Quantize': 'fixed', 'Clip': 'clip'}[method], bits)


def write(method, bits, out_dir=HERE, train_lmdb=HERE + '/mnist_train_lmdb',
          test_lmdb=HERE + '/mnist_test_lmdb', epochs=20):
    """Write lenet_quant_<tag>_train_test.prototxt and _solver.prototxt; return their paths."""
    t = tag(method, bits)
    net_path = os.path.join(out_dir, 'lenet_quant_%s_train_test.prototxt' % t)
    solver_path = os.path.join(out_dir, 'lenet_quant_%s_solver.prototxt' % t)
    with open(net_path, 'w') as f:
        f.write(str(train_test(method, bits, train_lmdb, test_lmdb)))
    with open(solver_path, 'w') as f:
        f.write(str(solver(net_path, os.path.join(out_dir, 'lenet_quant_%s' % t), epochs)))
    return net_path, solver_path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--method', default='ULQ',
                    choices=['ULQ', 'Ternary_Quantize', 'Ternary', 'Quantize', 'Clip'])
    ap.add_argument('--bits', type=int, default=2)
    ap.add_argument('--out-dir', default=HERE)
    ap.add_argument('--epochs', type=int, default=20)
    a = ap.parse_args()
    for p in write(a.method, a.bits, a.out_dir, epochs=a.epochs):
        print(p)


if __name__ == '__main__':
    main()
