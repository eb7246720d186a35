"""examples/mnist/quantization_demo.py: Quantization-caffe's demo as published.

Its NetSpec net and solver are the fork's (compared with the prototxts the real fork wrote,
qc_ref/seed_demo), and one short epoch on real MNIST trains (the 2-bit Clip of the fork's
text would leave the loss near 2, compression.md 0.9).  The full 20 epochs are a README
measurement, not a test.
"""
import os
import shutil
import sys

import numpy as np
import pytest

from qcaffe.io import read_net_param, read_solver_param
from shared_data import REPO, mnist_dir, require_shared

EXAMPLE = os.path.join(REPO, 'examples', 'mnist')


@pytest.fixture(scope='module')
def demo():
    sys.path.insert(0, EXAMPLE)
    try:
        import quantization_demo
    finally:
        sys.path.remove(EXAMPLE)
    return quantization_demo


def test_demo_net_and_solver_are_the_forks(demo):
    seed = require_shared('qc_ref', 'seed_demo')
    for phase, batch in (('train', 64), ('test', 100)):
        theirs = read_net_param(os.path.join(seed, 'lenet_auto_quantization_%s.prototxt' % phase))
        source = theirs.layer[0].data_param.source
        assert demo.lenet(source, batch) == theirs, phase
    fc1 = [l for l in theirs.layer if l.name == 'fc1'][0]
    assert fc1.activations_compress_param[0].maxbits == 2       # the published text
    theirs = read_solver_param(os.path.join(seed, 'lenet_auto_quantization_solver.prototxt'))
    ours = demo.solver_param('/root/', theirs.train_net, theirs.test_net[0])
    assert ours.snapshot_prefix == '/root/examples/mnist/lenet_auto_quantization'
    ours.snapshot_prefix = theirs.snapshot_prefix      # theirs: relative to the working folder
    assert ours == theirs
    assert demo.solver_param('/r/', 'a', 'b', gpu=0).solver_mode == theirs.GPU


def test_demo_trains_one_short_epoch_on_mnist(demo, tmp_path, capsys):
    root = tmp_path / 'root'
    (root / 'examples' / 'mnist').mkdir(parents=True)
    for name in ('get_mnist.sh', 'create_mnist.sh'):
        shutil.copy(os.path.join(EXAMPLE, name), str(root / 'examples' / 'mnist' / name))
    loss, acc, (ulq, bias, clip) = demo.main([
        '--root', str(root), '--mnist', mnist_dir(), '--epochs', '1',
        '--iterations-per-epoch', '60'])
    out = capsys.readouterr().out
    assert 'epoch 0: train loss=%.4f, test accuracy=%.4f' % (loss[0], acc[0]) in out
    print(out)
    assert loss[0] < 1.0 and acc[0] > 0.8           # 2-bit weights, 8-bit Clip: it learns
    assert set(np.round(ulq).ravel()) <= {-1, 0, 1, 2} and np.abs(ulq - np.round(ulq)).max() < 1e-4
    assert set(np.round(bias).ravel()) <= {-1, 0, 1, 2}
    assert np.abs(clip - np.round(clip)).max() < 1e-3 and np.abs(np.round(clip)).max() == 127
    written = read_net_param(str(root / 'examples/mnist/lenet_auto_quantization_train.prototxt'))
    fc1 = [l for l in written.layer if l.name == 'fc1'][0]
    assert fc1.activations_compress_param[0].maxbits == 2
    assert not fc1.activations_compress_param[0].clip_to_maxbits
