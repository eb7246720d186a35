#!/usr/bin/env python3
"""Build the APoT nets of the MNIST examples with NetSpec and write their prototxts and solvers.

* ``lenet``: Caffe's LeNet with APoT layers -- conv1 and ip2 are the original's 8-bit
  first/last layers (``first_last``), conv2 and ip1 are quantized at ``--bit`` (weights and
  inputs), each followed by BatchNorm + Scale: APoT normalises the weights and does not undo
  it (the original relies on the next BatchNorm to absorb the scale, compression.md 3(b)).
  ``--bit 32`` is the same net in full precision (first/last still 8-bit, as the original's
  "full precision" models).  Solver: Caffe's LeNet schedule (SGD lr 0.01 ``inv``, momentum
  0.9, weight decay 5e-4, batch 64, 10,000 iterations); ``--finetune`` halves it (5,000
  iterations) for a start from a trained full-precision LeNet (``--weights``).
* ``resnet10``: the original's MNIST ResNet-10 (APoT_Quantization MNIST/models/resnet.py):
  7x7 stride-2 first conv 1->16 (8-bit), BatchNorm, ReLU, 3x3 stride-2 max pool (pad 1,
  ``round_mode: FLOOR``), four basic blocks 16/32/64/128 (strides 1/2/2/2, 1x1 APoT
  downsample shortcuts), global average pool, 128->10 last layer (8-bit); input
  (x/255 - 0.131)/0.308 with random horizontal flips as its main.py.  Solver: 25 epochs of
  batch 128, lr 0.01, momentum 0.9, weight decay 1e-4 (its MultiStepLR milestones 30/60/90
  never trigger in 25 epochs).

Both use the original MNIST code's rules (``variant: IMAGENET``).

    python examples/mnist/apot_netspec.py lenet --bit 4 [--uniform] [--finetune]
    qcaffe train --solver examples/mnist/lenet_apot4_solver.prototxt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))

from google.protobuf import text_format  # noqa: E402

from qcaffe import net_spec  # noqa: E402
from qcaffe.proto import caffe_pb2  # noqa: E402

L, P = net_spec.layers, net_spec.params
HERE = 'examples/mnist'
TRAIN_LMDB, TEST_LMDB = HERE + '/mnist_train_lmdb', HERE + '/mnist_test_lmdb'
MNIST_TRAIN_IMAGES = 60000


def apot(bit, power=True, first_last=False):
    """``apot_param`` plus the param specs of an APoT layer (weight, [bias,] α_w, α_a)."""
    if first_last:
        return dict(apot_param=dict(first_last=True))
    return dict(apot_param=dict(bit=bit, power=power, variant='IMAGENET'))


def bn_scale(n, name, bottom, in_place=True):
    """Caffe's BatchNorm (eps 1e-5, PyTorch's momentum 0.1 as moving average 0.9) + Scale."""
    bn = L.BatchNorm(bottom, in_place=in_place, batch_norm_param=dict(
        eps=1e-5, moving_average_fraction=0.9), param=[dict(lr_mult=0)] * 3)
    n[name + '_bn'] = bn
    n[name + '_scale'] = L.Scale(bn, in_place=True, scale_param=dict(bias_term=True))
    return n[name + '_scale']


# ---------------------------------------------------------------------------------- LeNet
def lenet(phase, bit, power=True, batch=None):
    n = net_spec.NetSpec()
    train = phase == caffe_pb2.TRAIN
    n.data, n.label = L.Data(batch_size=batch or (64 if train else 100), backend=P.Data.LMDB,
                             source=TRAIN_LMDB if train else TEST_LMDB,
                             transform_param=dict(scale=0.00390625), ntop=2,
                             include=dict(phase=phase))
    xavier = dict(type='xavier')
    n.conv1 = L.APoTConvolution(n.data, convolution_param=dict(
        num_output=20, kernel_size=[5], weight_filler=xavier), **apot(bit, first_last=True))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.APoTConvolution(n.pool1, convolution_param=dict(
        num_output=50, kernel_size=[5], weight_filler=xavier), **apot(bit, power))
    top = bn_scale(n, 'conv2', n.conv2)
    n.pool2 = L.Pooling(top, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.APoTInnerProduct(n.pool2, inner_product_param=dict(
        num_output=500, weight_filler=xavier), **apot(bit, power))
    top = bn_scale(n, 'ip1', n.ip1)
    n.relu1 = L.ReLU(top, in_place=True)
    n.ip2 = L.APoTInnerProduct(n.relu1, inner_product_param=dict(
        num_output=10, weight_filler=xavier), **apot(bit, first_last=True))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    if not train:
        n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=phase))
    return n.to_proto()


# ------------------------------------------------------------------------------ ResNet-10
def resnet10(phase, bit, power=True, batch=None):
    n = net_spec.NetSpec()
    train = phase == caffe_pb2.TRAIN
    n.data, n.label = L.Data(batch_size=batch or (128 if train else 100), backend=P.Data.LMDB,
                             source=TRAIN_LMDB if train else TEST_LMDB,
                             transform_param=dict(mean_value=[0.131 * 255],
                                                  scale=1 / (0.308 * 255), mirror=train),
                             ntop=2, include=dict(phase=phase))
    msra = dict(type='msra', variance_norm=P.Filler.FAN_OUT)  # kaiming_normal_, fan_out

    def conv(bottom, out, k, stride, pad, first=False):
        return L.APoTConvolution(bottom, convolution_param=dict(
            num_output=out, kernel_size=[k], stride=[stride], pad=[pad], bias_term=False,
            weight_filler=msra), **apot(bit, power, first_last=first))

    n.conv1 = conv(n.data, 16, 7, 2, 3, first=True)
    top = L.ReLU(bn_scale(n, 'conv1', n.conv1), in_place=True)
    n.conv1_relu = top
    n.pool1 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1,
                        round_mode=P.Pooling.FLOOR)
    top, planes = n.pool1, 16
    for stage, (out, stride) in enumerate(((16, 1), (32, 2), (64, 2), (128, 2)), 1):
        name = 'layer%d' % stage
        n[name + '_conv1'] = conv(top, out, 3, stride, 1)
        b = L.ReLU(bn_scale(n, name + '_conv1', n[name + '_conv1']), in_place=True)
        n[name + '_relu1'] = b
        n[name + '_conv2'] = conv(b, out, 3, 1, 1)
        b = bn_scale(n, name + '_conv2', n[name + '_conv2'])
        if stride != 1 or planes != out:
            n[name + '_down'] = conv(top, out, 1, stride, 0)
            short = bn_scale(n, name + '_down', n[name + '_down'])
        else:
            short = top
        n[name + '_sum'] = L.Eltwise(b, short)
        top = n[name + '_relu2'] = L.ReLU(n[name + '_sum'], in_place=True)
        planes = out
    n.pool = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.fc = L.APoTInnerProduct(n.pool, inner_product_param=dict(
        num_output=10, weight_filler=dict(type='xavier')), **apot(bit, first_last=True))
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    if not train:
        n.accuracy = L.Accuracy(n.fc, n.label, include=dict(phase=phase))
    return n.to_proto()


# ------------------------------------------------------------------------------- writing
def train_test(build, name, bit, power):
    """One train_test NetParameter: TRAIN data layer, TEST data layer, the shared layers."""
    tr = build(caffe_pb2.TRAIN, bit, power)
    te = build(caffe_pb2.TEST, bit, power)
    net = caffe_pb2.NetParameter()
    net.name = name
    net.layer.extend([tr.layer[0], te.layer[0]])
    net.layer.extend(te.layer[1:])
    return net


# Caffe's LeNet schedule (examples/mnist/lenet_solver.prototxt) and the original's MNIST one
LENET_SOLVER = """test_iter: 100 test_interval: 500 base_lr: 0.01 momentum: 0.9
    weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 100
    random_seed: 43271 solver_mode: CPU"""
RESNET10_SOLVER = """test_iter: 100 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0001
    lr_policy: "fixed" display: 50 random_seed: 43271 solver_mode: GPU"""


def solver(template, net_path, prefix, max_iter, **fields):
    s = text_format.Parse(template, caffe_pb2.SolverParameter())
    s.net, s.snapshot_prefix = net_path, prefix
    s.max_iter = s.snapshot = max_iter
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def lenet_solver(net_path, prefix, finetune=False):
    return solver(LENET_SOLVER, net_path, prefix, 5000 if finetune else 10000)


def resnet10_solver(net_path, prefix, epochs=25, batch=128):
    # an epoch is 60000 / 128 = 468 full batches (the original's loader adds a 469th of 96);
    # MultiStepLR's milestones 30/60/90 never trigger in 25 epochs: a fixed rate
    per_epoch = MNIST_TRAIN_IMAGES // batch
    return solver(RESNET10_SOLVER, net_path, prefix, epochs * per_epoch,
                  test_interval=per_epoch)


def tag(model, bit, power):
    return '%s_apot%d%s' % (model, bit, '' if power else '_uniform') if bit != 32 \
        else '%s_apot_fp' % model


def write(model, bit, power=True, finetune=False, out_dir=HERE):
    """Write <tag>_train_test.prototxt and <tag>[_finetune]_solver.prototxt; return paths."""
    t = tag(model, bit, power)
    build = {'lenet': lenet, 'resnet10': resnet10}[model]
    net_path = os.path.join(out_dir, t + '_train_test.prototxt')
    with open(net_path, 'w') as f:
        f.write(str(train_test(build, t, bit, power)))
    if model == 'lenet':
        run = t + ('_finetune' if finetune else '')
        s = lenet_solver(net_path, os.path.join(out_dir, run), finetune)
    else:
        run = t
        s = resnet10_solver(net_path, os.path.join(out_dir, run))
    solver_path = os.path.join(out_dir, run + '_solver.prototxt')
    with open(solver_path, 'w') as f:
        f.write(str(s))
    return net_path, solver_path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model', choices=['lenet', 'resnet10'])
    ap.add_argument('--bit', type=int, default=4, help='2..6 (APoT), 2..8 (--uniform), 32')
    ap.add_argument('--uniform', action='store_true', help='uniform levels (power: false)')
    ap.add_argument('--finetune', action='store_true',
                    help='LeNet: the shorter solver for a start from a trained model')
    ap.add_argument('--out-dir', default=HERE)
    a = ap.parse_args()
    for p in write(a.model, a.bit, not a.uniform, a.finetune, a.out_dir):
        print(p)


if __name__ == '__main__':
    main()
