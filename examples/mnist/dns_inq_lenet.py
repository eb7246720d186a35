#!/usr/bin/env python3
"""LeNet pruned by Dynamic Network Surgery, then quantized to powers of two by INQ: the DNS/INQ
fork's lenet_compression_demo.py as one script (kai-xie/Neural-Network-Model-Compressing).

    reference LeNet (10,000 iterations; reused if --ref exists)
    -> DNS from it (lenet_solver_DNS.prototxt: gamma 1e-5, power 1, c_rate 0.4/2.5/2.5/3)
    -> qcaffe model2INQ_raw (DNS masks become "fixed at 0")
    -> INQ 30 / 60 / 80 / 90 % (lenet_solver_inq_*.prototxt, num_quantum_values 7)
    -> INQ 100 % (one iteration, as the fork) -> qcaffe inq_to_normal -> qcaffe test

Every stage is an ordinary ``qcaffe`` command on the fork's own prototxts and solvers (only
max_iter, snapshot and snapshot_prefix are changed, in a copy under --out); its log goes to
<out>/<stage>.log.  A stage whose model exists is skipped and an interrupted stage resumes
from its last snapshot, so a stopped run continues where it was (with the same result).
At the end the script prints, and writes to <out>/summary.md, the test accuracy, the kept
fraction of weights and biases, the compression rate and the wall time of each stage.

Run from anywhere after examples/mnist/create_mnist.sh:

    python examples/mnist/dns_inq_lenet.py                        # the fork's 100k + 4x30k
    python examples/mnist/dns_inq_lenet.py --dns-iters 30000 --inq-iters 5000
"""
import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from qcaffe.compress import sparsity  # noqa: E402
from qcaffe.io import read_solver_param, write_prototxt  # noqa: E402

MNIST = 'examples/mnist/'
INQ_STEPS = (30, 60, 80, 90, 100)


def qcaffe(out, stage, *args):
    """Run ``qcaffe <args>`` with its output added to <out>/<stage>.log; returns (its log
    text, seconds)."""
    log = os.path.join(out, stage + '.log')
    size = os.path.getsize(log) if os.path.exists(log) else 0
    start = time.time()
    with open(log, 'a') as f:
        status = subprocess.call([sys.executable, '-m', 'qcaffe'] + list(args), cwd=REPO,
                                 stdout=f, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    text = open(log).read()[size:]
    if status:
        sys.exit('stage %s failed (exit status %d); see %s' % (stage, status, log))
    return text, seconds


def train(out, stage, solver, weights, iters, seed, snapshot=None):
    """The fork's ``solver`` for ``iters`` iterations from ``weights``; returns the model."""
    model = os.path.join(out, '%s_iter_%d.caffemodel' % (stage, iters))
    if os.path.exists(model):
        print('%-8s %s exists, skipped' % (stage, model))
        return model, None, 0
    param = read_solver_param(os.path.join(REPO, MNIST + solver))
    param.max_iter = iters
    param.snapshot = min(snapshot or iters, iters)
    param.snapshot_prefix = os.path.join(out, stage)
    if param.random_seed < 0:
        param.random_seed = seed            # the fork's solvers leave it unseeded
    if param.test_interval > 1 and iters % param.test_interval:
        param.test_interval = iters          # a test at the end, as the fork's runs have
    path = os.path.join(out, stage + '_solver.prototxt')
    write_prototxt(path, param)
    args = ['train', '--solver', path] + (['--weights', weights] if weights else [])
    done = [int(m.group(1)) for m in map(re.compile(re.escape(stage) + r'_iter_(\d+)\.'
                                                    r'solverstate$').match, os.listdir(out))
            if m and int(m.group(1)) < iters]
    if done:        # an interrupted stage continues from its last snapshot (bit-exact)
        args = ['train', '--solver', path, '--snapshot',
                os.path.join(out, '%s_iter_%d.solverstate' % (stage, max(done)))]
    _, seconds = qcaffe(out, stage, *args)
    return model, seconds, max(done or [0])


def last_accuracy(out, stage):
    text = open(os.path.join(out, stage + '.log')).read()
    found = re.findall(r'(?:Test net output #\d+|Batch \d+): accuracy = ([0-9.]+)', text)
    final = re.findall(r'\] accuracy = ([0-9.]+)', text)        # qcaffe test's summary line
    return float((final or found)[-1])


def kept(model, prototxt):
    """(kept, total) weights and biases of the conv / ip layers (qcaffe compress_report)."""
    layers, _ = sparsity.layers_from_files(model, os.path.join(REPO, MNIST + prototxt))
    rows = [sparsity.layer_row(layer) for layer in layers]
    return sum(r['kept'] for r in rows), sum(r['total'] for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.path.join(REPO, MNIST + 'dns_inq'))
    p.add_argument('--ref', default=os.path.join(REPO, MNIST + 'lenet_iter_10000.caffemodel'),
                   help='reference LeNet; trained (lenet_solver.prototxt) when missing')
    p.add_argument('--dns-iters', type=int, default=100000)
    p.add_argument('--inq-iters', type=int, default=30000)
    p.add_argument('--dns-snapshot', type=int, default=10000,
                   help='DNS snapshot interval (the kept fraction over time)')
    p.add_argument('--seed', type=int, default=1,
                   help='random_seed of every stage (fillers, DNS surgery draws, shuffling)')
    a = p.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    rows = []           # (stage, accuracy, kept, total, wall time)

    def record(stage, model, prototxt, seconds, since=0):
        k, t = kept(model, prototxt)
        acc = last_accuracy(out, stage)
        wall = ('-' if seconds is None else '%.0f s' % seconds +
                (' (from iteration %d)' % since if since else ''))
        rows.append((stage, acc, k, t, wall))
        print('%-8s accuracy %.4f  kept %d/%d (%.3f %%, %.1fx)  %s' % (
            stage, acc, k, t, 100.0 * k / t, t / float(k), wall))

    ref = a.ref
    if not os.path.exists(ref):
        ref, seconds, since = train(out, 'lenet', 'lenet_solver.prototxt', None, 10000, a.seed)
        record('lenet', ref, 'lenet_train_test.prototxt', seconds, since)
    else:
        print('reference LeNet: %s' % ref)
    dns, seconds, since = train(out, 'dns', 'lenet_solver_DNS.prototxt', ref, a.dns_iters,
                                a.seed, a.dns_snapshot)
    record('dns', dns, 'lenet_train_test_DNS.prototxt', seconds, since)
    weights = os.path.join(out, 'inq_raw.caffemodel')
    if not os.path.exists(weights):
        qcaffe(out, 'model2INQ_raw', 'model2INQ_raw', MNIST + 'lenet_train_test_DNS.prototxt',
               dns, MNIST + 'lenet_train_test_inq_30.prototxt', weights)
    for step in INQ_STEPS:
        stage = 'inq_%d' % step
        weights, seconds, since = train(out, stage, 'lenet_solver_inq_%d.prototxt' % step,
                                        weights, 1 if step == 100 else a.inq_iters, a.seed)
        record(stage, weights, 'lenet_train_test_inq_%d.prototxt' % step, seconds, since)
    final = os.path.join(out, 'lenet_dns_inq.caffemodel')
    qcaffe(out, 'inq_to_normal', 'inq_to_normal', MNIST + 'lenet_train_test_inq_100.prototxt',
           weights, MNIST + 'lenet_train_test.prototxt', final)
    _, seconds = qcaffe(out, 'test', 'test', '--model', MNIST + 'lenet_train_test.prototxt',
                        '--weights', final, '--iterations', '100')
    record('test', final, 'lenet_train_test.prototxt', seconds)
    report, _ = qcaffe(out, 'compress_report', 'compress_report', '--weights', final)
    print(report.strip())

    lines = ['| stage | test accuracy | kept weights+biases | compression | wall time |',
             '|---|---|---|---|---|']
    for stage, acc, k, t, wall in rows:
        lines.append('| %s | %.2f %% | %d/%d (%.3f %%) | %.1fx | %s |' % (
            stage, 100 * acc, k, t, 100.0 * k / t, t / float(k), wall))
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n\n```\n' + report.strip() + '\n```\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
