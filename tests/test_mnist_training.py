"""A short REAL MNIST training through the example scripts, as a user runs them.

examples/mnist/{get_mnist.sh, create_mnist.sh, train_lenet.sh} and the BVLC LeNet prototxts are
copied into a temporary CAFFE_ROOT-like folder (the scripts work relative to it), MNIST comes
from $QCAFFE_MNIST_DIR or ../shared/data/mnist (offline), LeNet trains for 1,000
iterations with the unchanged lenet_solver.prototxt (plus a fixed random_seed) and must reach
>= 97 % on the full 10,000-image test set.  The log it writes is then read by parse_log.
"""
import csv
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from qcaffe.cli import main as cli
from shared_data import mnist_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, 'examples', 'mnist')
ITERATIONS = 1000  # a multiple of test_interval (500), so the final test runs at the end


@pytest.fixture(scope='module')
def caffe_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('caffe_root')
    dest = root / 'examples' / 'mnist'
    dest.mkdir(parents=True)
    for name in ('get_mnist.sh', 'create_mnist.sh', 'train_lenet.sh', 'lenet_solver.prototxt',
                 'lenet_train_test.prototxt', 'lenet.prototxt'):
        shutil.copy(os.path.join(EXAMPLE, name), str(dest / name))
    return root


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    env['QCAFFE'] = '%s -m qcaffe' % sys.executable
    env.pop('MNIST_DATA_DIR', None)
    return env


def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, env=_env(), **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope='module')
def lmdbs(caffe_root):
    example = caffe_root / 'examples' / 'mnist'
    _run(['bash', str(example / 'get_mnist.sh'), mnist_dir()])
    r = _run(['bash', str(example / 'create_mnist.sh')])
    assert 'Processed 60000 files.' in r.stderr and 'Processed 10000 files.' in r.stderr
    return example


def test_get_mnist_errors(tmp_path):
    r = subprocess.run(['bash', os.path.join(EXAMPLE, 'get_mnist.sh'), str(tmp_path / 'none')],
                       capture_output=True, text=True,
                       env=dict(_env(), MNIST_DATA_DIR=str(tmp_path / 'out')))
    assert r.returncode == 1 and 'does not exist' in r.stderr
    (tmp_path / 'partial').mkdir()
    (tmp_path / 'partial' / 'train-images-idx3-ubyte').write_bytes(b'x')
    r = subprocess.run(['bash', os.path.join(EXAMPLE, 'get_mnist.sh'), str(tmp_path / 'partial')],
                       capture_output=True, text=True,
                       env=dict(_env(), MNIST_DATA_DIR=str(tmp_path / 'out')))
    assert r.returncode == 1 and 'train-labels-idx1-ubyte(.gz) not found' in r.stderr


def test_lenet_short_training_reaches_97(lmdbs, caffe_root):
    solver = lmdbs / 'lenet_solver.prototxt'
    solver.write_text(solver.read_text() + 'random_seed: 1\n')
    log = caffe_root / 'lenet_train.log'
    start = time.time()
    with open(str(log), 'w') as f:
        r = subprocess.run(['bash', str(lmdbs / 'train_lenet.sh'), '--iterations',
                            str(ITERATIONS)], stderr=f, stdout=f, env=_env())
    seconds = time.time() - start
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    accuracy = [float(a) for a in re.findall(r'Test net output #0: accuracy = ([\d.]+)', text)]
    # tests at iterations 0, 500 and at the end (1000)
    assert len(accuracy) == 3, text[-3000:]
    print('LeNet %d iterations: test accuracy %.4f in %.1f s' % (ITERATIONS, accuracy[-1],
                                                                   seconds))
    assert accuracy[0] < 0.3
    assert accuracy[-1] >= 0.97
    assert (lmdbs / ('lenet_iter_%d.caffemodel' % ITERATIONS)).exists()

    # qcaffe test scores the snapshot the same way on the test set
    os.chdir(str(caffe_root))
    try:
        assert cli(['test', '--model', 'examples/mnist/lenet_train_test.prototxt', '--weights',
                    'examples/mnist/lenet_iter_%d.caffemodel' % ITERATIONS,
                    '--iterations', '100']) == 0
    finally:
        os.chdir(REPO)

    # parse_log reads the log our training wrote
    assert cli(['parse_log', str(log), str(caffe_root)]) == 0
    with open(str(caffe_root / 'lenet_train.log.test')) as f:
        rows = list(csv.DictReader(f))
    assert [float(r['NumIters']) for r in rows] == [0.0, 500.0, float(ITERATIONS)]
    assert float(rows[-1]['accuracy']) == pytest.approx(accuracy[-1])
    assert float(rows[1]['LearningRate']) > 0
    with open(str(caffe_root / 'lenet_train.log.train')) as f:
        rows = list(csv.DictReader(f))
    assert [float(r['NumIters']) for r in rows] == [100.0 * i for i in range(10)]
    assert float(rows[-1]['loss']) < 0.5
    assert float(rows[1]['LearningRate']) == pytest.approx(0.01)  # lr logged before #100's
