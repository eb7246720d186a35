"""The ``qcaffe`` command line (Caffe's ``caffe`` tool): train / test / time / device_query,
gflags spellings, Caffe's log lines, one-line errors with exit status 1, signal effects.

A small learnable LMDB (8x8 images whose label is the brightest quadrant) keeps the runs fast
and independent of ../shared; the real MNIST runs are in test_mnist_training.py.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from qcaffe.cli import main as cli
from qcaffe.data.lmdb_io import encode_datums, key_for, write_lmdb
from qcaffe.io import load_weights_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = """name: "Quadrants"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(train)s" batch_size: 32 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(test)s" batch_size: 50 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
test_iter: 4
test_interval: 50
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 25
max_iter: %(max_iter)d
snapshot: 50
snapshot_prefix: "snap/quad"
random_seed: 7
"""


def quadrant_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 100, (n, 1, 8, 8)).astype(np.uint8)
    for q in range(4):
        r, c = divmod(q, 2)
        sel = labels == q
        images[sel, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 120
    return images, labels


def make_lmdb(path, n, seed):
    images, labels = quadrant_data(n, seed)
    records = encode_datums(images, labels)
    write_lmdb(path, ((key_for(i), records[i]) for i in range(n)))


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('quad_data')
    make_lmdb(str(root / 'train_lmdb'), 640, 0)
    make_lmdb(str(root / 'test_lmdb'), 200, 1)
    return str(root / 'train_lmdb'), str(root / 'test_lmdb')


@pytest.fixture
def workdir(tmp_path, monkeypatch, lmdbs):
    """A CWD with net.prototxt, solver.prototxt (100 iterations) and snap/ (Caffe resolves
    relative paths against the working directory)."""
    train, test = lmdbs
    (tmp_path / 'net.prototxt').write_text(NET % {'train': train, 'test': test})
    (tmp_path / 'solver.prototxt').write_text(SOLVER % {'max_iter': 100})
    (tmp_path / 'snap').mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def final_test_accuracy(err):
    return float(re.findall(r'Test net output #0: accuracy = ([\d.e+-]+)', err)[-1])


def assert_one_line_error(err, *needles):
    assert 'Traceback' not in err
    lines = [l for l in err.splitlines() if ': error: ' in l]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------- dispatch
def test_usage_and_unknown_action(capsys):
    assert cli([]) == 1
    assert 'usage: qcaffe <command>' in capsys.readouterr().err
    assert cli(['--help']) == 0
    out = capsys.readouterr().out
    for command in ('train', 'test', 'time', 'device_query', 'convert_mnist_data',
                    'compute_image_mean', 'parse_log'):
        assert command in out
    assert cli(['trian', '--solver', 'x']) == 1
    err = capsys.readouterr().err
    assert 'Unknown action: trian' in err and 'train' in err


def test_unknown_flag(capsys):
    assert cli(['train', '--solvr', 'x']) == 1
    assert_one_line_error(capsys.readouterr().err, 'unrecognized arguments: --solvr',
                          '--solver')


# ------------------------------------------------------------------------- train
@pytest.mark.parametrize('spelling', [['-solver', 'solver.prototxt'],
                                      ['--solver', 'solver.prototxt'],
                                      ['--solver=solver.prototxt'],
                                      ['-solver=solver.prototxt']])
def test_train_flag_spellings(workdir, capsys, spelling):
    assert cli(['train'] + spelling + ['-iterations', '50']) == 0
    err = capsys.readouterr().err
    # glog lines in Caffe's order and wording
    for line in ('Use CPU.', 'Starting Optimization', 'Solving Quadrants',
                 'Learning Rate Policy: inv', 'Iteration 0, Testing net (#0)',
                 'Iteration 25, lr = ', 'Optimization Done.'):
        assert line in err
    assert re.search(r'^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] Iteration 25 \(',
                     err, re.M)
    assert os.path.exists('snap/quad_iter_50.caffemodel')
    assert os.path.exists('snap/quad_iter_50.solverstate')
    assert not os.path.exists('snap/quad_iter_100.caffemodel')  # --iterations 50


def test_train_learns_and_test_scores(workdir, capsys):
    assert cli(['train', '--solver=solver.prototxt']) == 0
    err = capsys.readouterr().err
    assert final_test_accuracy(err) >= 0.9
    # qcaffe test: per-batch lines, then the means as caffe test prints them
    assert cli(['test', '-model', 'net.prototxt', '-weights', 'snap/quad_iter_100.caffemodel',
                '-iterations', '4']) == 0
    err = capsys.readouterr().err
    batches = [float(v) for v in re.findall(r'Batch \d, accuracy = ([\d.e+-]+)', err)]
    assert len(batches) == 4
    assert 'Running for 4 iterations.' in err
    mean = float(re.search(r'\] accuracy = ([\d.e+-]+)', err).group(1))
    assert mean == pytest.approx(np.mean(batches), abs=1e-5)
    assert mean >= 0.9
    loss = re.search(r'\] loss = ([\d.e+-]+) \(\* 1 = ([\d.e+-]+) loss\)', err)
    assert loss and loss.group(1) == loss.group(2)
    assert re.search(r'\] Loss: [\d.e+-]+', err)


def test_train_resume_and_finetune(workdir, capsys):
    assert cli(['train', '--solver', 'solver.prototxt', '--iterations', '50']) == 0
    capsys.readouterr()
    # --snapshot resumes at iteration 50 and runs to max_iter
    assert cli(['train', '--solver', 'solver.prototxt', '--snapshot',
                'snap/quad_iter_50.solverstate']) == 0
    err = capsys.readouterr().err
    assert 'Resuming from snap/quad_iter_50.solverstate' in err
    assert 'Iteration 0, Testing' not in err and 'Iteration 75 (' in err
    assert os.path.exists('snap/quad_iter_100.caffemodel')
    # --weights with a zero learning rate: the final snapshot holds exactly the given weights
    (workdir / 'ft.prototxt').write_text((SOLVER % {'max_iter': 1}).replace(
        'snap/quad', 'snap/ft').replace('base_lr: 0.05', 'base_lr: 0'))
    assert cli(['train', '--solver', 'ft.prototxt', '--weights',
                'snap/quad_iter_100.caffemodel']) == 0
    a = {name: blobs for name, _, blobs in load_weights_file('snap/quad_iter_100.caffemodel')}
    b = {name: blobs for name, _, blobs in load_weights_file('snap/ft_iter_1.caffemodel')}
    for name in ('ip1', 'ip2'):
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data))


def _solver_with(workdir, old, new, name='bad.prototxt'):
    text = (SOLVER % {'max_iter': 10}).replace(old, new)
    (workdir / name).write_text(text)
    return name


@pytest.mark.parametrize('case', ['missing_solver', 'both', 'unknown_type', 'no_lr_policy',
                                  'missing_net', 'missing_lmdb', 'unwritable_prefix',
                                  'bad_effect', 'missing_weights'])
def test_train_errors(workdir, capsys, case):
    args = ['train', '--solver', 'solver.prototxt']
    needles = []
    if case == 'missing_solver':
        args = ['train', '--solver', 'nope.prototxt']
        needles = ['nope.prototxt', 'does not exist']
    elif case == 'both':
        args += ['--weights', 'a.caffemodel', '--snapshot', 'b.solverstate']
        needles = ['Give a snapshot to resume training or weights to finetune but not both']
    elif case == 'unknown_type':
        args[2] = _solver_with(workdir, 'lr_policy', 'type: "Adamm"\nlr_policy')
        needles = ['Adamm', 'Adam']
    elif case == 'no_lr_policy':
        args[2] = _solver_with(workdir, 'lr_policy: "inv"', '')
        needles = ['lr_policy', 'inv']
    elif case == 'missing_net':
        args[2] = _solver_with(workdir, 'net.prototxt', 'nonet.prototxt')
        needles = ['nonet.prototxt']
    elif case == 'missing_lmdb':
        (workdir / 'net.prototxt').write_text(NET % {'train': 'no_such_lmdb',
                                                     'test': 'no_such_lmdb'})
        needles = ['no_such_lmdb', 'does not exist']
    elif case == 'unwritable_prefix':
        args[2] = _solver_with(workdir, 'snap/quad', 'nodir/quad')
        needles = ['nodir/quad']
    elif case == 'bad_effect':
        args += ['--sigint_effect', 'explode']
        needles = ['--sigint_effect', 'stop, snapshot, none']
    elif case == 'missing_weights':
        args += ['--weights', 'nothere.caffemodel']
        needles = ['nothere.caffemodel', 'does not exist']
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err, *needles)
    if case in ('missing_lmdb', 'unwritable_prefix'):
        assert 'Solving' not in err  # fails before training starts


def test_test_and_time_errors(workdir, capsys):
    assert cli(['test', '--model', 'net.prototxt']) == 1
    assert_one_line_error(capsys.readouterr().err, '--weights is required')
    assert cli(['test', '--model', 'net.prototxt', '--weights', 'none.caffemodel']) == 1
    assert_one_line_error(capsys.readouterr().err, 'none.caffemodel', 'does not exist')
    assert cli(['time']) == 1
    assert_one_line_error(capsys.readouterr().err, '--model is required')
    assert cli(['time', '--model', 'net.prototxt', '--phase', 'VAL']) == 1
    assert_one_line_error(capsys.readouterr().err, 'TRAIN', 'TEST')
    (workdir / 'broken.prototxt').write_text('layer { name: "x" type: "Foo" \n')
    assert cli(['time', '--model', 'broken.prototxt']) == 1
    assert_one_line_error(capsys.readouterr().err, 'broken.prototxt')


def test_time_prints_caffe_lines(workdir, capsys):
    assert cli(['time', '--model=net.prototxt', '--iterations=3']) == 0
    err = capsys.readouterr().err
    assert re.search(r'\] Initial loss: [\d.e+-]+', err)
    assert '*** Benchmark begins ***' in err and 'Testing for 3 iterations.' in err
    assert len(re.findall(r'Iteration: \d forward-backward time: [\d.e+-]+ ms\.', err)) == 3
    for layer in ('data', 'ip1', 'relu1', 'ip2', 'loss'):
        assert re.search(r'\] +%s\tforward: [\d.e+-]+ ms\.' % layer, err)
        assert re.search(r'\] +%s\tbackward: [\d.e+-]+ ms\.' % layer, err)
    for what in ('Average Forward pass', 'Average Backward pass', 'Average Forward-Backward',
                 'Total Time'):
        assert re.search(r'%s: [\d.e+-]+ ms\.' % what, err)
    # TEST phase works too (Accuracy has no backward; Caffe calls it anyway)
    assert cli(['time', '--model=net.prototxt', '--iterations=1', '--phase=TEST']) == 0


def test_device_query(capsys):
    assert cli(['device_query']) == 0
    assert 'CPU:' in capsys.readouterr().err
    try:
        import cupy  # noqa: F401
        pytest.skip('cupy installed: --gpu 99 is a different error')
    except ImportError:
        pass
    assert cli(['device_query', '--gpu', '0']) == 1
    assert_one_line_error(capsys.readouterr().err, 'cupy')


def test_gpu_flag_without_cupy(workdir, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip('cupy is installed')
    except ImportError:
        pass
    assert cli(['train', '--solver', 'solver.prototxt', '--gpu', '0']) == 1
    assert_one_line_error(capsys.readouterr().err, 'cupy')
    assert cli(['train', '--solver', 'solver.prototxt', '--gpu', 'x,y']) == 1
    assert_one_line_error(capsys.readouterr().err, '--gpu')
    # solver_mode: GPU in the file (as in BVLC's lenet_solver) falls back to the CPU
    (workdir / 'gpu.prototxt').write_text((SOLVER % {'max_iter': 1}) + 'solver_mode: GPU\n')
    assert cli(['train', '--solver', 'gpu.prototxt']) == 0
    err = capsys.readouterr().err
    assert 'training on the CPU' in err and 'Use CPU.' in err


# ------------------------------------------------------------------------- processes
def _read_until(proc, lines, marker):
    """Append ``proc``'s stderr lines to ``lines`` up to the first one containing ``marker``."""
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            break


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    return env


def test_python_m_qcaffe_and_tools_scripts(workdir):
    r = subprocess.run([sys.executable, '-m', 'qcaffe', 'train', '-solver', 'nope.prototxt'],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 1 and 'Traceback' not in r.stderr and 'nope.prototxt' in r.stderr
    r = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'parse_log.py'),
                        'nolog.log', '.'], capture_output=True, text=True)
    assert r.returncode == 1 and 'nolog.log' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.skipif(not hasattr(signal, 'SIGHUP'), reason='POSIX signals')
def test_signals_snapshot_then_stop(workdir):
    """SIGHUP (default effect snapshot) writes a snapshot and training goes on; SIGINT
    (default stop) ends training with a final snapshot and "Optimization stopped early."."""
    (workdir / 'long.prototxt').write_text((SOLVER % {'max_iter': 1000000}).replace(
        'snapshot: 50', 'snapshot: 0').replace('display: 25', 'display: 100'))
    proc = subprocess.Popen([sys.executable, '-m', 'qcaffe', 'train', '--solver',
                             'long.prototxt'], stderr=subprocess.PIPE, text=True, env=_env())
    lines = []
    try:
        _read_until(proc, lines, 'Iteration 100 (')
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, lines, 'Snapshotting solver state')
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = ''.join(lines)
    assert proc.returncode == 0, err
    assert 'Optimization stopped early.' in err
    snaps = sorted(f for f in os.listdir('snap') if f.endswith('.caffemodel'))
    assert len(snaps) == 2, snaps  # one from SIGHUP, one final after SIGINT


@pytest.mark.skipif(not hasattr(signal, 'SIGHUP'), reason='POSIX signals')
def test_sigint_effect_none_keeps_training(workdir):
    (workdir / 'mid.prototxt').write_text((SOLVER % {'max_iter': 400}).replace(
        'snapshot: 50', 'snapshot: 0').replace('display: 25', 'display: 50'))
    proc = subprocess.Popen([sys.executable, '-m', 'qcaffe', 'train', '--solver',
                             'mid.prototxt', '--sigint_effect=none', '--sighup_effect', 'stop'],
                            stderr=subprocess.PIPE, text=True, env=_env())
    lines = []
    try:
        _read_until(proc, lines, 'Iteration 50 (')
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        _, rest = proc.communicate(timeout=60)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = ''.join(lines)
    assert proc.returncode == 0, err
    assert 'Optimization stopped early.' not in err and 'Iteration 400, loss' in err


def test_train_stage_and_level(workdir, capsys):
    """--stage and --level go into train_state (caffe.md 5.1) and select layers by rule."""
    text = (workdir / 'net.prototxt').read_text()
    text += ('layer { name: "train_acc" type: "Accuracy" bottom: "ip2" bottom: "label" '
             'top: "train_acc" include { phase: TRAIN stage: "acc" min_level: 2 } }\n')
    (workdir / 'net.prototxt').write_text(text)
    for extra, present in (([], False), (['--stage', 'acc'], False),
                           (['--stage=acc', '--level=2'], True), (['--level', '2'], False)):
        assert cli(['train', '--solver', 'solver.prototxt', '--iterations', '1'] + extra) == 0
        err = capsys.readouterr().err
        assert ('Train net output #1: train_acc = ' in err) == present, extra


@pytest.mark.filterwarnings('error::RuntimeWarning')
def test_train_nan_loss_stops_with_message(workdir, capsys):
    """A diverging run stops at the first non-finite loss: exit status 1, the iteration and
    the layer named, the last good snapshot kept (issue 3, item 7)."""
    name = _solver_with(workdir, 'base_lr: 0.05', 'base_lr: 1e6', name='nan.prototxt')
    text = (workdir / name).read_text().replace('max_iter: 10', 'max_iter: 200').replace(
        'snapshot: 50', 'snapshot: 1')
    (workdir / name).write_text(text)
    assert cli(['train', '--solver', name]) == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'RuntimeWarning' not in err
    line = [l for l in err.splitlines() if ': error: ' in l][0]
    assert re.search(r'Iteration \d+: the training loss is', line), line
    assert 'last snapshot' in line and 'snap/quad_iter_' in line


def _nan_weights(workdir):
    """A .caffemodel of net.prototxt whose ip2 weights are NaN (a diverged run's)."""
    import qcaffe
    net = qcaffe.Net('net.prototxt', qcaffe.TEST)
    net.params['ip2'][0].data[...] = np.nan
    net.save('nan.caffemodel')
    del net
    return 'nan.caffemodel'


def test_train_from_nan_weights_names_the_file_and_layer_before_training(workdir, capsys):
    weights = _nan_weights(workdir)
    assert cli(['train', '--solver', 'solver.prototxt', '--weights', weights]) == 1
    err = capsys.readouterr().err
    assert_one_line_error(err, "weights file '%s' (relative to the current directory" % weights,
                          "layer 'ip2' (type InnerProduct) parameter blob(s) [0] hold NaN or "
                          "infinite values; training cannot start from them")
    assert 'diverged' not in err.split(': error: ')[1].split('(was')[0]
    assert 'Iteration 0' not in err


def test_test_on_a_model_that_outputs_nan_warns_where(workdir, capsys):
    """Caffe's Accuracy counts a NaN score as correct (x >= NaN is false for every class, so
    no class beats the true one): accuracy reads 1, as here; a warning says why."""
    weights = _nan_weights(workdir)
    assert cli(['test', '-model', 'net.prototxt', '-weights', weights, '-iterations', '2']) == 0
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if l.startswith('W')]
    assert len(warnings) == 2, err
    assert ("Weights file nan.caffemodel: layer 'ip2' (type InnerProduct) parameter blob(s) "
            "[0] hold NaN or infinite values") in warnings[0]
    assert ("Batch 0: layer 'ip2' (type InnerProduct) outputs NaN or infinite values in top "
            "'ip2'; the scores of this run are not meaningful (Caffe's Accuracy counts a NaN "
            "score as a correct prediction, so accuracy can read 1)") in warnings[1]
    assert re.search(r'\] accuracy = 1$', err, re.M)   # Caffe's number, kept
