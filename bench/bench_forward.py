"""LeNet forward (deploy net) at batch 100: median wall time of many forwards, in ms.

Usage:  python bench/bench_forward.py [--batch 100] [--runs 200] [--threads N] [--profile]
                                      [--no-torch]

Builds the LeNet deploy net (``../shared/data/models/lenet/lenet.prototxt`` when present, the
same definition inline otherwise), loads the trained weights when available, fills the input
with MNIST-like data and times ``net.forward()`` (median and min over ``--runs`` after a
warm-up).  ``--profile`` also prints the per-layer median (like ``caffe time``).  When PyTorch
is importable the same network (conv-pool-conv-pool-ip-relu-ip-softmax) is timed with
``torch.no_grad()`` for comparison, with its default threads; the two are timed in
alternating chunks of ``--chunk`` calls so the load of a shared machine falls on both alike
(the load average is printed).
"""
import argparse
import os
import sys
import time


def _early_threads(argv):
    # BLAS thread pools are sized when numpy/torch load: --threads must act before the imports
    for i, a in enumerate(argv):
        if a.startswith('--threads'):
            n = a.split('=', 1)[1] if '=' in a else (argv[i + 1] if i + 1 < len(argv) else '')
            for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
                os.environ[var] = n
            return int(n)
    return None


THREADS = _early_threads(sys.argv[1:])

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from qcaffe.io import read_net_param  # noqa: E402
from qcaffe.net import Net  # noqa: E402
from qcaffe.proto import caffe_pb2  # noqa: E402

LENET_DIR = os.path.join(os.path.dirname(HERE), '..', 'shared', 'data', 'models', 'lenet')

LENET_DEPLOY = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data"
        input_param { shape: { dim: 64 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
                            weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 stride: 1
                            weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def build_lenet(batch):
    proto = os.path.join(LENET_DIR, 'lenet.prototxt')
    weights = os.path.join(LENET_DIR, 'lenet_iter_10000.caffemodel')
    if os.path.exists(proto):
        param = read_net_param(proto)
        source = proto
    else:
        from google.protobuf import text_format
        param = text_format.Parse(LENET_DEPLOY, caffe_pb2.NetParameter())
        source = 'inline LeNet deploy prototxt'
    param.layer[0].input_param.shape[0].dim[0] = batch
    net = Net.from_param(param, phase=caffe_pb2.TEST, source=source)
    if os.path.exists(weights):
        net.copy_from(weights)
        source += ' + lenet_iter_10000.caffemodel'
    return net, source


def mnist_like(batch, seed=0):
    """Sparse bright strokes on black, scaled like LeNet's 1/256 input (ties in pooling)."""
    rs = np.random.RandomState(seed)
    x = np.zeros((batch, 1, 28, 28), np.float32)
    x[:, :, 6:22, 6:22] = (rs.rand(batch, 1, 16, 16) > 0.6) * rs.rand(batch, 1, 16, 16)
    return x


def torch_lenet(batch):
    """The same network in PyTorch (eval, no_grad), or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                          nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                          nn.Linear(500, 10), nn.Softmax(dim=1)).eval()
    x = torch.from_numpy(mnist_like(batch))
    if THREADS:
        torch.set_num_threads(THREADS)

    def run():
        with torch.no_grad():
            model(x)
    return run, 'PyTorch %s (%d threads)' % (torch.__version__, torch.get_num_threads())


# untimed pause before each chunk: a spinning thread pool of the library timed before goes
# to sleep first, so no chunk starts with the other library's threads on its cores
SETTLE_S = 0.05


def interleaved_ms(fns, runs, warmup=10, chunk=20):
    """Median and min ms per call of each function, timed in alternating chunks of ``chunk``
    calls, so that a shared machine's load falls on all of them alike.

    Chunks, not single calls: after a parallel region PyTorch's OpenMP threads keep spinning
    for milliseconds, and with single-call alternation that spin lands on the next qcaffe
    forward and takes its second core (qcaffe's workers sleep when idle, so the reverse
    does not happen); a short untimed pause precedes each chunk.  Timed call by call.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    chunk = max(1, min(chunk, runs))
    for _ in range(max(1, runs // chunk)):
        for fn, ts in zip(fns, times):
            time.sleep(SETTLE_S)
            for _ in range(chunk):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [(1e3 * float(np.median(ts)), 1e3 * float(np.min(ts))) for ts in times]


def profile_layers(net, runs):
    per = {i: [] for i in range(len(net.layers))}
    for _ in range(runs):
        for i, layer in enumerate(net.layers):
            t0 = time.perf_counter()
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
            per[i].append(time.perf_counter() - t0)
    for i, layer in enumerate(net.layers):
        print('  %-8s %-12s %.3f ms' % (layer.name, layer.type, 1e3 * np.median(per[i])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=100)
    ap.add_argument('--runs', type=int, default=200)
    ap.add_argument('--profile', action='store_true', help='per-layer forward times')
    ap.add_argument('--no-torch', action='store_true')
    ap.add_argument('--chunk', type=int, default=20,
                    help='calls per alternating chunk (1: strict alternation)')
    ap.add_argument('--threads', type=int, default=None,
                    help='BLAS/torch threads for both (default: the libraries\' own)')
    args = ap.parse_args(argv)
    net, source = build_lenet(args.batch)
    net.blob_by_name('data').data[...] = mnist_like(args.batch)
    fns, names = [net.forward_prefilled], ['qcaffe']
    tl = None if args.no_torch else torch_lenet(args.batch)
    if tl is not None:
        fns.append(tl[0])
        names.append(tl[1])
    elif not args.no_torch:
        print('torch not importable: no PyTorch comparison')
    print('LeNet forward, batch %d, %d runs, threads %s (%s), load average %s'
          % (args.batch, args.runs, args.threads or 'default', source,
             ' '.join('%.2f' % v for v in os.getloadavg())))
    for name, (med, best) in zip(names, interleaved_ms(fns, args.runs, chunk=args.chunk)):
        print('  %-28s median %7.3f ms   min %7.3f ms' % (name, med, best))
    if args.profile:
        profile_layers(net, max(20, args.runs // 4))


if __name__ == '__main__':
    main()
