#!/usr/bin/env python3
"""Reproduce the μL2Q LeNet/MNIST table at 1, 2, 4, 8 bits (paper Table IV: 99.06 / 99.12 /
99.12 / 99.16 %; Quantization-caffe demo 2-bit: 99.08 %).

Net and solver: examples/mnist/quant_lenet_netspec.py (conv1, conv2, ip1 with ULQ on weights
and biases, Clip 8-bit activations after conv1/conv2, ip2 full precision; SGD 0.01 inv,
momentum 0.9, wd 5e-4, batch 64, 781 iterations per epoch).  That is Quantization-caffe's
demo net without fc1's activation Clip (the demo itself, with it: quantization_demo.py;
the differences are listed in quant_lenet_netspec.py).  The test accuracy on the
10 000 MNIST test images is taken after every epoch; the figures written are the final one
and the best one.  --epochs shortens the run (20 = the published schedule).

    python bench/bench_ulq_lenet.py --mnist ../shared/data/mnist --bits 1,2,4,8 --epochs 20

Prints a Markdown table and appends it (with machine and date) to --results.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'examples', 'mnist'))

PAPER = {1: 99.06, 2: 99.12, 4: 99.12, 8: 99.16}


def make_lmdbs(mnist_dir, work):
    """The MNIST LMDBs (converted once into ``work``) from a folder of the IDX files."""
    out = []
    for split, img, lab in (('train', 'train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
                            ('test', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')):
        db = os.path.join(work, 'mnist_%s_lmdb' % split)
        if not os.path.isdir(db):
            def pick(name):
                for cand in (name, name + '.gz'):
                    if os.path.exists(os.path.join(mnist_dir, cand)):
                        return os.path.join(mnist_dir, cand)
                raise SystemExit('bench_ulq_lenet: %s(.gz) not found in %s' % (name, mnist_dir))
            subprocess.check_call([sys.executable, '-m', 'qcaffe', 'convert_mnist_data',
                                   pick(img), pick(lab), db, '--backend=lmdb'], cwd=ROOT)
        out.append(db)
    return out


def run_one(method, bits, epochs, train_db, test_db, work, seed, iters_per_epoch):
    import quant_lenet_netspec as qs
    from qcaffe.compress.report import net_report
    from qcaffe.solvers import create_solver
    net_path, solver_path = qs.write(method, bits, work, train_db, test_db, epochs)
    from qcaffe.io import read_solver_param
    param = read_solver_param(solver_path)
    param.random_seed = seed
    param.snapshot = 0
    param.snapshot_after_train = False
    param.test_interval = iters_per_epoch
    param.display = 0
    solver = create_solver(param, source=solver_path)
    accs = []
    t0 = time.time()
    for _ in range(epochs):
        solver.step(iters_per_epoch)
        res = dict(solver.test(0))
        accs.append(100.0 * res['accuracy'])
        print('  %s-%d epoch %d: test accuracy %.2f%% (%.0f s)'
              % (method, bits, len(accs), accs[-1], time.time() - t0), flush=True)
    snap = os.path.join(work, 'lenet_quant_%s.caffemodel' % qs.tag(method, bits))
    solver.net.save(snap)
    return accs, time.time() - t0, net_report(solver.net), snap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mnist', default=os.path.join(ROOT, '..', 'shared', 'data', 'mnist'),
                    help='folder with the four MNIST IDX files (.gz or raw)')
    ap.add_argument('--bits', default='1,2,4,8')
    ap.add_argument('--method', default='ULQ')
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--seed', type=int, default=0xCAFFE)
    ap.add_argument('--iters-per-epoch', type=int, default=781, help='781 = 50000/64 (QC)')
    ap.add_argument('--work', default=None, help='scratch folder (LMDBs, nets, weights)')
    ap.add_argument('--results', default=os.path.join(ROOT, 'bench', 'results_ulq_lenet.md'))
    a = ap.parse_args()
    import logging
    logging.getLogger('qcaffe').setLevel(logging.WARNING)
    work = a.work or tempfile.mkdtemp(prefix='bench_ulq_')
    os.makedirs(work, exist_ok=True)
    train_db, test_db = make_lmdbs(a.mnist, work)
    rows = []
    for k in [int(b) for b in a.bits.split(',')]:
        accs, secs, report, snap = run_one(a.method, k, a.epochs, train_db, test_db, work,
                                           a.seed, a.iters_per_epoch)
        rows.append((k, accs[-1], max(accs), secs, report, snap))
    head = ('| bits | final acc % | best acc % | paper % | epochs | wall s |\n'
            '|---|---|---|---|---|---|')
    lines = [head] + ['| %d | %.2f | %.2f | %s | %d | %.0f |'
                      % (k, fin, best, PAPER.get(k, '–'), a.epochs, secs)
                      for k, fin, best, secs, _, _ in rows]
    text = ('\n## %s LeNet/MNIST, %s, %s, %s (%d CPUs)\n\n%s\n'
            % (a.method, time.strftime('%Y-%m-%d'), platform.node(), platform.processor() or
               platform.machine(), os.cpu_count(), '\n'.join(lines)))
    for k, _, _, _, report, snap in rows:
        text += '\ncompress report, %d-bit (%s):\n```\n%s\n```\n' % (k, os.path.basename(snap),
                                                                     report)
    print(text)
    with open(a.results, 'a') as f:
        f.write(text)


if __name__ == '__main__':
    main()
