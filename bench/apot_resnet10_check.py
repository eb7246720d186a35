#!/usr/bin/env python3
"""Run the APoT authors' own trained MNIST ResNet-10 in qcaffe, and optionally in their code.

The original repository (yhhhli/APoT_Quantization) ships ResNet-10 checkpoints
(MNIST/result/resnet10_<k>bit[_uniform]/model_best.pth.tar).  This script copies one into
qcaffe's ResNet-10 (examples/mnist/apot_netspec.py: APoTConvolution layers with
``variant: IMAGENET``, BatchNorm + Scale, 8-bit first/last layers) and measures its accuracy on
MNIST with qcaffe.  With ``--original DIR`` (a folder holding the original's MNIST/models/*.py)
the same checkpoint also runs in the original PyTorch code on the same input tensors, and the
two are compared image by image.  Needs torch (to read the checkpoint); qcaffe itself does not.

    python bench/apot_resnet10_check.py --checkpoint model_best.pth.tar --bit 4 \\
        --mnist ../shared/data/mnist [--split train] [--uniform] [--original DIR]
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'examples', 'mnist'))

MEAN, STD = 0.131, 0.308          # the original's transforms.Normalize


def images(mnist, split, count):
    from qcaffe.tools.convert_mnist_data import read_mnist
    prefix = 'train' if split == 'train' else 't10k'

    def path(name):
        p = os.path.join(mnist, name)
        return p if os.path.exists(p) else p + '.gz'
    x, y = read_mnist(path(prefix + '-images-idx3-ubyte'), path(prefix + '-labels-idx1-ubyte'))
    x = np.asarray(x, np.float32)[:count].reshape(-1, 1, 28, 28)
    # ToTensor then Normalize, in float32 as torchvision computes them
    return ((x / np.float32(255) - np.float32(MEAN)) / np.float32(STD)).astype(np.float32), \
        np.asarray(y)[:count]


def qcaffe_net(bit, power, batch):
    """The example's ResNet-10 TEST net with an Input layer in place of its LMDB layer."""
    import apot_netspec as ns
    from qcaffe.io import parse_prototxt_text
    from qcaffe.net import Net
    from qcaffe.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    parse_prototxt_text('layer { name: "data" type: "Input" top: "data" input_param { shape { '
                        'dim: %d dim: 1 dim: 28 dim: 28 } } }' % batch, param)
    body = ns.resnet10(caffe_pb2.TEST, bit, power)
    param.layer.extend(l for l in body.layer
                       if l.type not in ('Data', 'SoftmaxWithLoss', 'Accuracy'))
    return Net.from_param(param, phase=caffe_pb2.TEST)


def load_checkpoint(net, state):
    """Copy the original's state_dict into the qcaffe net (layer names of apot_netspec)."""
    def t(key):
        return state[key].detach().cpu().numpy().astype(np.float32)

    def conv(name, prefix, quantized=True):
        blobs = net.layers[net.layer_names.index(name)].blobs
        blobs[0].data[...] = t(prefix + '.weight')
        if quantized:
            alpha_w = 'weight_alpha' if prefix + '.weight_alpha' in state else \
                'weight_quant.wgt_alpha'
            blobs[1].data[...] = t(prefix + '.' + alpha_w)
            blobs[2].data[...] = t(prefix + '.act_alpha')

    def bn(name, prefix):
        b = net.layers[net.layer_names.index(name + '_bn')].blobs
        b[0].data[...], b[1].data[...], b[2].data[...] = (
            t(prefix + '.running_mean'), t(prefix + '.running_var'), 1.0)
        s = net.layers[net.layer_names.index(name + '_scale')].blobs
        s[0].data[...], s[1].data[...] = t(prefix + '.weight'), t(prefix + '.bias')

    conv('conv1', 'conv1', quantized=False)
    bn('conv1', 'bn1')
    for stage in range(1, 5):
        p, n = 'layer%d.0' % stage, 'layer%d' % stage
        for i in (1, 2):
            conv('%s_conv%d' % (n, i), '%s.conv%d' % (p, i))
            bn('%s_conv%d' % (n, i), '%s.bn%d' % (p, i))
        if p + '.downsample.0.weight' in state:
            conv(n + '_down', p + '.downsample.0')
            bn(n + '_down', p + '.downsample.1')
    fc = net.layers[net.layer_names.index('fc')].blobs
    fc[0].data[...], fc[1].data[...] = t('fc.weight'), t('fc.bias')


def original_model(folder, bit, power, state):
    sys.path.insert(0, os.path.join(folder, 'MNIST'))
    import models
    from models.quant_layer import QuantConv2d
    model = models.resnet10(bit=bit)
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            m.power = power            # main.py's --power 0
    model.load_state_dict(state)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--checkpoint', required=True)
    ap.add_argument('--bit', type=int, required=True)
    ap.add_argument('--uniform', action='store_true', help='a *_uniform checkpoint')
    ap.add_argument('--mnist', required=True, help='folder with the four IDX files')
    ap.add_argument('--split', choices=['test', 'train'], default='test')
    ap.add_argument('--count', type=int, default=None)
    ap.add_argument('--batch', type=int, default=500)
    ap.add_argument('--original', help='folder with the original MNIST/models/*.py')
    a = ap.parse_args()
    import torch
    ck = torch.load(a.checkpoint, map_location='cpu', weights_only=False)
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in ck['state_dict'].items()}
    x, y = images(a.mnist, a.split, a.count)
    net = qcaffe_net(a.bit, not a.uniform, a.batch)
    load_checkpoint(net, state)
    model = original_model(a.original, a.bit, not a.uniform, state) if a.original else None
    ours, theirs = [], []
    t0 = time.time()
    for s in range(0, len(x) - len(x) % a.batch, a.batch):
        net.blob_by_name('data').data[...] = x[s:s + a.batch]
        net.forward_prefilled()
        ours.append(net.blob_by_name('fc').data.copy())
        if model is not None:
            with torch.no_grad():
                theirs.append(model(torch.from_numpy(x[s:s + a.batch])).numpy())
    ours = np.concatenate(ours)
    n = len(ours)
    print('checkpoint %s (epoch %s, stored best_acc1 %.2f)' % (
        a.checkpoint, ck.get('epoch'), float(ck.get('best_acc1', float('nan')))))
    print('qcaffe: %s accuracy %.2f %% on %d images (%.0f s)'
          % (a.split, 100.0 * np.mean(ours.argmax(1) == y[:n]), n, time.time() - t0))
    if model is not None:
        theirs = np.concatenate(theirs)
        print('original (PyTorch): %s accuracy %.2f %%; same prediction on %d of %d images; '
              'max |logit difference| %.3g (max |logit| %.3g)'
              % (a.split, 100.0 * np.mean(theirs.argmax(1) == y[:n]),
                 int(np.sum(theirs.argmax(1) == ours.argmax(1))), n,
                 float(np.abs(theirs - ours).max()), float(np.abs(theirs).max())))


if __name__ == '__main__':
    main()
