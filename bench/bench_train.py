"""LeNet training speed on MNIST: qcaffe against PyTorch (CPU), side by side in one run.

Usage:  python bench/bench_train.py [--iters 200] [--warmup 20] [--full] [--no-torch]
                                    [--no-append] [--mnist DIR]

* ms/iteration at batch 64: the solver of examples/mnist/lenet_solver.prototxt (LMDB Data
  layer with prefetch, SGD momentum 0.9, weight decay 5e-4, ``inv`` policy) stepping
  ``--iters`` iterations after ``--warmup``, testing and display switched off, timed in
  chunks alternating with PyTorch (median chunk); PyTorch runs the identical LeNet (conv
  20x5x5, max pool 2, conv 50x5x5, max pool 2, ip 500, ReLU, ip 10, softmax loss, Xavier
  init, bias lr x2) on the same images in the same order.
* ``--full``: the whole 10,000-iteration run as ``qcaffe train`` does it (test on the 10,000
  test images every 500 iterations, snapshots at 5000 and 10000 into a temporary folder),
  wall time and final test accuracy, and the same schedule in PyTorch.  The two runs go side
  by side in alternating 500-iteration segments (each with its test), and each run's wall
  time is the sum of its own segments, so both see the same machine.

The LMDBs are the ones of examples/mnist (built from $QCAFFE_MNIST_DIR, --mnist or
../shared/data/mnist when missing).  Results are printed and appended to bench/RESULTS.md with
the machine, the date and the load average (the machine may be shared).  PyTorch is an
optional benchmark dependency (``pip install torch==2.13.0``).
"""
import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from qcaffe.io import read_solver_param  # noqa: E402
from qcaffe.solvers import create_solver  # noqa: E402
from qcaffe.tools.convert_mnist_data import convert_dataset, read_mnist  # noqa: E402

SOLVER = 'examples/mnist/lenet_solver.prototxt'
FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


# ----------------------------------------------------------------------------- data
def mnist_dir(arg):
    for d in (arg, os.environ.get('QCAFFE_MNIST_DIR'), 'examples/mnist/data',
              os.path.join(REPO, '..', 'shared', 'data', 'mnist')):
        if d and os.path.isdir(d):
            return d
    sys.exit('bench_train: no MNIST folder; give --mnist DIR or set QCAFFE_MNIST_DIR')


def idx_path(folder, name):
    for cand in (name, name + '.gz'):
        if os.path.exists(os.path.join(folder, cand)):
            return os.path.join(folder, cand)
    sys.exit('bench_train: %s(.gz) not in %s' % (name, folder))


def ensure_lmdbs(folder):
    for split, (images, labels) in FILES.items():
        db = 'examples/mnist/mnist_%s_lmdb' % split
        if not os.path.exists(db):
            convert_dataset(idx_path(folder, images), idx_path(folder, labels), db)


def load_arrays(folder, split):
    images, labels = read_mnist(*(idx_path(folder, n) for n in FILES[split]))
    return images, labels


# ---------------------------------------------------------------------------- qcaffe
def qcaffe_solver(param_changes):
    param = read_solver_param(SOLVER)
    param.solver_mode = param.CPU
    param.random_seed = 1
    for k, v in param_changes.items():
        if k == 'test_iter':
            del param.test_iter[:]
            param.test_iter.extend(v)
        else:
            setattr(param, k, v)
    return create_solver(param, source=SOLVER)


def qcaffe_timing_solver(warmup, iters):
    s = qcaffe_solver({'test_interval': 0, 'test_iter': [], 'display': 0, 'snapshot': 0,
                       'snapshot_after_train': False, 'max_iter': warmup + 2 * iters + 1000})
    s.step(warmup)
    return s


# Before each timed chunk: a short pause (PyTorch's OpenMP threads keep spinning for
# milliseconds after its last step and would take qcaffe's second core) and a few untimed
# iterations (both libraries' thread pools and caches back in their steady state, so a
# chunk measures running, not waking up).
SETTLE_S = 0.05
WARM_ITERS = 3


def alternate(steppers, iters, chunk):
    """ms/iteration of each ``step(n)`` callable, timed in alternating chunks.

    On a shared machine the load changes over seconds; alternating chunks exposes both sides
    to the same load, and the median chunk discards load spikes.  Each timed chunk follows
    ``SETTLE_S`` of pause and ``WARM_ITERS`` untimed iterations of the same library.
    """
    times = [[] for _ in steppers]
    for _ in range(max(1, iters // chunk)):
        for k, step in enumerate(steppers):
            time.sleep(SETTLE_S)
            step(WARM_ITERS)
            t = time.perf_counter()
            step(chunk)
            times[k].append((time.perf_counter() - t) / chunk * 1000.0)
    return [float(np.median(t)) for t in times]


def qcaffe_full(prefix, segment=500):
    """The 10,000-iteration run of ``qcaffe train`` in segments: a generator that runs the next
    ``segment`` iterations (with the test and snapshots ``Solver.step`` does on the way) per
    ``next()``, and finally the end of ``Solver.solve`` (display forward and the last test);
    it returns the final test accuracy."""
    s = qcaffe_solver({'snapshot_prefix': prefix})
    p = s.param
    while s.iter < p.max_iter:
        s.step(min(segment, p.max_iter - s.iter))
        yield
    if p.display and s.iter % p.display == 0:     # the tail of Solver.solve
        s.net.forward_prefilled()
    s.test_all()
    yield
    return qcaffe_test_accuracy(s)


def qcaffe_test_accuracy(solver):
    """Mean 'accuracy' of the test net over test_iter batches (the whole test set)."""
    net = solver.test_nets[0]
    solver.share_weights(net)
    n = solver.param.test_iter[0]
    total = 0.0
    for _ in range(n):
        net.forward_prefilled()
        total += float(np.asarray(net.blob_by_name('accuracy').data).ravel()[0])
    return total / n


# ---------------------------------------------------------------------------- torch
def torch_lenet(torch):
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5)
            self.conv2 = nn.Conv2d(20, 50, 5)
            self.ip1 = nn.Linear(800, 500)
            self.ip2 = nn.Linear(500, 10)
            for m in (self.conv1, self.conv2, self.ip1, self.ip2):
                fan_in = m.weight[0].numel()  # Caffe's xavier: U(-sqrt(3/fan_in), +)
                nn.init.uniform_(m.weight, -np.sqrt(3.0 / fan_in), np.sqrt(3.0 / fan_in))
                nn.init.zeros_(m.bias)

        def forward(self, x):
            f = nn.functional
            x = f.max_pool2d(self.conv1(x), 2, 2)
            x = f.max_pool2d(self.conv2(x), 2, 2)
            return self.ip2(f.relu(self.ip1(x.flatten(1))))
    return LeNet()


class TorchRun(object):
    """Caffe's LeNet schedule in PyTorch: SGD momentum 0.9, wd 5e-4, inv lr, bias lr x2."""

    def __init__(self, torch, train, test):
        torch.manual_seed(1)
        self.torch = torch
        self.model = torch_lenet(torch)
        weights = [p for n, p in self.model.named_parameters() if n.endswith('weight')]
        biases = [p for n, p in self.model.named_parameters() if n.endswith('bias')]
        self.opt = torch.optim.SGD([{'params': weights, 'lr_mult': 1.0},
                                    {'params': biases, 'lr_mult': 2.0}],
                                   lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.train_x = torch.from_numpy(train[0].astype(np.float32)[:, None] * 0.00390625)
        self.train_y = torch.from_numpy(train[1].astype(np.int64))
        self.test_x = torch.from_numpy(test[0].astype(np.float32)[:, None] * 0.00390625)
        self.test_y = torch.from_numpy(test[1].astype(np.int64))
        self.it = 0
        self.pos = 0

    def batch(self, n=64):
        idx = (np.arange(self.pos, self.pos + n) % len(self.train_y))
        self.pos = (self.pos + n) % len(self.train_y)
        return self.train_x[idx], self.train_y[idx]

    def step(self, iters):
        torch = self.torch
        f = torch.nn.functional
        for _ in range(iters):
            rate = 0.01 * (1 + 0.0001 * self.it) ** -0.75
            for g in self.opt.param_groups:
                g['lr'] = rate * g['lr_mult']
            x, y = self.batch()
            self.opt.zero_grad(set_to_none=False)
            loss = f.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.it += 1

    def accuracy(self):
        with self.torch.no_grad():
            correct = 0
            for i in range(0, len(self.test_y), 100):
                out = self.model(self.test_x[i:i + 100])
                correct += int((out.argmax(1) == self.test_y[i:i + 100]).sum())
        return correct / len(self.test_y)

    def full(self, max_iter=10000, test_interval=500, segment=500):
        """The same schedule as qcaffe's run, as a generator of segments (see qcaffe_full)."""
        while self.it < max_iter:
            if self.it % test_interval == 0:
                self.accuracy()
            self.step(1)
            if self.it % segment == 0:
                yield
        acc = self.accuracy()
        yield
        return acc


def interleave(runs):
    """Advance the generators ``runs`` one segment each in turn, each segment after an
    untimed ``SETTLE_S`` pause, until all are done; returns [(seconds, result)] with each
    run's seconds summed over its own segments.  Side by side like this, both runs see the
    same machine: its speed drifts by 10-20 % over minutes, which decided the ratio when the
    runs went one after the other."""
    seconds = [0.0] * len(runs)
    results = [None] * len(runs)
    live = set(range(len(runs)))
    while live:
        for k in sorted(live):
            time.sleep(SETTLE_S)
            t = time.perf_counter()
            try:
                next(runs[k])
            except StopIteration as stop:
                results[k] = stop.value
                live.discard(k)
            seconds[k] += time.perf_counter() - t
    return list(zip(seconds, results))


# ---------------------------------------------------------------------------- report
def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return '%s, %d cores, Python %s, numpy %s' % (cpu, cores, platform.python_version(),
                                                np.__version__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--iters', type=int, default=200, help='timed iterations')
    ap.add_argument('--warmup', type=int, default=20)
    ap.add_argument('--chunk', type=int, default=50, help='iterations per alternating chunk')
    ap.add_argument('--full', action='store_true', help='also the full 10,000-iteration runs')
    ap.add_argument('--no-torch', action='store_true')
    ap.add_argument('--no-append', action='store_true', help='do not write bench/RESULTS.md')
    ap.add_argument('--mnist', default=None, help='folder of the four MNIST IDX files')
    args = ap.parse_args()
    logging.getLogger('qcaffe').setLevel(logging.WARNING)  # no per-layer setup lines
    os.chdir(REPO)  # the solver's paths are relative to the Caffe root, as in Caffe
    folder = mnist_dir(args.mnist)
    ensure_lmdbs(folder)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print('PyTorch not installed (pip install torch==2.13.0): qcaffe only')
    rows = []
    steppers = [qcaffe_timing_solver(args.warmup, args.iters).step]
    if torch is not None:
        run = TorchRun(torch, load_arrays(folder, 'train'), load_arrays(folder, 'test'))
        run.step(args.warmup)
        steppers.append(run.step)
    rows.append(('ms/iteration, batch 64 (median of %d-iteration chunks, alternating)'
                 % args.chunk,) + tuple(alternate(steppers, args.iters, args.chunk)))
    print('partial:', rows[-1], flush=True)  # long --full runs: keep what was measured
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            runs = [qcaffe_full(os.path.join(tmp, 'lenet'))]
            if torch is not None:
                runs.append(TorchRun(torch, load_arrays(folder, 'train'),
                                     load_arrays(folder, 'test')).full())
            done = interleave(runs)
        rows.append(('10,000-iteration run, wall s (tests every 500; run side by side in '
                     '500-iteration segments)',) + tuple(sec for sec, _ in done))
        rows.append(('final test accuracy',) + tuple(acc for _, acc in done))

    header = '| measure | qcaffe | PyTorch %s | qcaffe / PyTorch |' % (
        torch.__version__ if torch is not None else '(not installed)')
    lines = [header, '|---|---|---|---|']
    for row in rows:
        name, q = row[0], row[1]
        t = row[2] if len(row) > 2 else None
        fmt = (lambda v: '%.4f' % v) if 'accuracy' in name else (lambda v: '%.2f' % v)
        ratio = '%.2f' % (q / t) if t and 'accuracy' not in name else ''
        lines.append('| %s | %s | %s | %s |' % (name, fmt(q), fmt(t) if t else '-', ratio))
    stamp = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    text = '\n'.join(['', '### bench_train.py, %s' % stamp, '',
                      'Machine: %s; load average at start %.2f%s.' % (
                          machine(), load, ' (shared machine: other jobs were running)'
                          if load > 1.5 else ''), ''] + lines) + '\n'
    print(text)
    if not args.no_append:
        with open(os.path.join(HERE, 'RESULTS.md'), 'a') as f:
            f.write(text)


if __name__ == '__main__':
    main()
