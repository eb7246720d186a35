"""Data-parallel training: LeNet step time at N ranks on this machine, and gradient sizes.

Usage:
  python bench/bench_distributed.py [--ranks 1 2] [--repeats 3] [--iters 200] [--warmup 30]
                                    [--mnist DIR]
  python bench/bench_distributed.py --sizes

* default: for each repeat, for each N, ``mpiexec -n N`` runs this script as workers (N = 1 runs
  plainly): the LeNet solver of examples/mnist/lenet_solver.prototxt (batch 64 per rank,
  testing, display and snapshots off) wired exactly as ``qcaffe train`` does
  (``DataParallel``: broadcast, callback, layer-wise hook), ``--warmup`` iterations, then
  ``--iters`` timed in chunks of 20 (median chunk).  Reported by rank 0: ms/iteration, images
  per second (N x 64 per iteration), the time per iteration spent in the reduction calls
  (``DataParallel.comm_seconds``: transfer plus waiting for the slower rank) and, separately,
  a bare ``Allreduce`` of the same buffer (transfer alone, after a barrier).
* ``--sizes``: the bytes one iteration reduces (the gradient buffer of ``DataParallel``) for
  LeNet, ResNet-20 (CIFAR, ../shared/data/models/resnet20_cifar10) and ResNet-50 (ImageNet
  bottleneck net built with NetSpec), and the groups they are reduced in.

The LMDBs are examples/mnist's (built from $QCAFFE_MNIST_DIR, --mnist or ../shared/data/mnist).
Run with ``nice`` on a shared machine; numbers go to bench/RESULTS.md by hand.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_train import ensure_lmdbs, mnist_dir, qcaffe_solver  # noqa: E402
from qcaffe import backend  # noqa: E402
from qcaffe.distributed import (DataParallel, GradientBuckets, gradient_params,  # noqa: E402
                                launch)

CHUNK = 20
BATCH = 64


def worker(args):
    comm = launch.world()
    size, rank = (comm.size, comm.rank) if comm else (1, 0)
    backend.set_solver_count(size)
    backend.set_solver_rank(rank)
    if comm:
        launch.share_cores(comm.local()[1])
    solver = qcaffe_solver({'test_interval': 0, 'test_iter': [], 'display': 0, 'snapshot': 0,
                            'snapshot_after_train': False, 'max_iter': 10 ** 7})
    dp = None
    if size > 1:
        dp = DataParallel(solver, comm)
        dp.bcast()
        dp.attach()
    solver.step(args.warmup)
    steps, comms = [], []
    for _ in range(max(1, args.iters // CHUNK)):
        if comm:
            comm.barrier()
        c0 = dp.comm_seconds if dp else 0.0
        t = time.perf_counter()
        solver.step(CHUNK)
        steps.append((time.perf_counter() - t) / CHUNK * 1e3)
        comms.append(((dp.comm_seconds if dp else 0.0) - c0) / CHUNK * 1e3)
    bare = None
    if dp:
        buf = dp.buckets.buffer.copy()
        times = []
        for _ in range(50):
            comm.barrier()
            t = time.perf_counter()
            comm.allreduce(buf)
            times.append((time.perf_counter() - t) * 1e3)
        bare = float(np.median(times))
    if rank == 0:
        ms = float(np.median(steps))
        print(json.dumps({'ranks': size, 'ms_per_iter': ms, 'images_per_s': size * BATCH / ms
                          * 1e3, 'comm_ms_per_iter': float(np.median(comms)),
                          'bare_allreduce_ms': bare, 'threads': _threads(),
                          'grad_bytes': 4 * (dp.buckets.count if dp else 0)}), flush=True)


def _threads():
    from qcaffe.ops import parallel
    return parallel.num_threads()


def driver(args):
    os.chdir(REPO)
    ensure_lmdbs(mnist_dir(args.mnist))
    rows = []
    for repeat in range(args.repeats):
        for n in args.ranks:
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--iters',
                   str(args.iters), '--warmup', str(args.warmup)]
            if n > 1:
                cmd = [launch.find_mpiexec(), '-n', str(n)] + cmd
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row['repeat'] = repeat
            rows.append(row)
            print(json.dumps(row), flush=True)
    print('\n| ranks | threads/rank | ms/iteration | images/s | reduction ms/iter (share) '
          '| bare Allreduce ms |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        share = r['comm_ms_per_iter'] / r['ms_per_iter'] * 100
        print('| %d | %d | %.2f | %.0f | %.2f (%.0f %%) | %s |' % (
            r['ranks'], r['threads'], r['ms_per_iter'], r['images_per_s'],
            r['comm_ms_per_iter'], share,
            '-' if r['bare_allreduce_ms'] is None else '%.3f' % r['bare_allreduce_ms']))
    print('\nload average after: %.2f %.2f %.2f' % os.getloadavg())


# ------------------------------------------------------------------------ sizes
def resnet50_spec():
    """ResNet-50 (He et al. 2016, ImageNet bottleneck: 3-4-6-3 blocks) as a NetSpec."""
    import qcaffe as caffe
    L, P = caffe.layers, caffe.params
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 224, 224]))

    def conv_bn(bottom, out, k, stride=1, relu=True):
        c = L.Convolution(bottom, num_output=out, kernel_size=k, stride=stride, pad=k // 2,
                          bias_term=False, weight_filler=dict(type='msra'))
        b = L.BatchNorm(c)
        s = L.Scale(b, bias_term=True)
        return L.ReLU(s, in_place=True) if relu else s

    x = L.Pooling(conv_bn(n.data, 64, 7, 2), pool=P.Pooling.MAX, kernel_size=3, stride=2)
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            y = conv_bn(conv_bn(conv_bn(x, width, 1, stride), width, 3), 4 * width, 1,
                        relu=False)
            short = x if (b > 0) else conv_bn(x, 4 * width, 1, stride, relu=False)
            x = L.ReLU(L.Eltwise(short, y), in_place=True)
    x = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    n.fc = L.InnerProduct(x, num_output=1000, weight_filler=dict(type='msra'))
    proto = n.to_proto()
    proto.name = 'ResNet-50'
    return proto


def gradient_layout(net_param):
    """(learnable floats, reduction groups) of a net, laid out as DataParallel does."""
    from qcaffe.proto import caffe_pb2
    from qcaffe.solvers import create_solver
    sp = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy='fixed', max_iter=1)
    sp.net_param.CopyFrom(net_param)
    buckets = GradientBuckets(gradient_params(create_solver(sp)))
    return buckets.count, len(buckets.groups)


def sizes():
    from qcaffe.io import read_net_param
    shared = os.path.join(REPO, '..', 'shared', 'data', 'models')
    nets = [('LeNet', read_net_param(os.path.join(REPO, 'examples', 'mnist', 'lenet.prototxt'))),
            ('ResNet-20 (CIFAR-10)', read_net_param(os.path.join(shared, 'resnet20_cifar10',
                                                                 'deploy.prototxt'))),
            ('ResNet-50 (ImageNet)', resnet50_spec())]
    print('| net | learnable floats | bytes reduced per iteration | reduction groups |')
    print('|---|---|---|---|')
    for name, net_param in nets:
        count, groups = gradient_layout(net_param)
        print('| %s | %d | %.2f MB | %d |' % (name, count, count * 4 / 1e6, groups))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ranks', type=int, nargs='+', default=[1, 2])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--warmup', type=int, default=30)
    p.add_argument('--mnist', default=None)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--sizes', action='store_true')
    args = p.parse_args()
    if args.sizes:
        sizes()
    elif args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == '__main__':
    main()
