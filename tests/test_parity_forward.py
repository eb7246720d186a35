"""Forward parity with real BVLC Caffe on every model of ../shared/data/caffe_ref/forward/.

Each ``<model>.npz`` holds the inputs (``input/<name>``) real Caffe was given and every blob
after its TEST-phase forward (``blob/<top>``; in-place layers leave only their final value).
We load the same deploy prototxt and trained weights, set the same inputs, run forward and
compare EVERY blob Caffe has, by name (so the automatic Split names must match Caffe's too).

Error measure, per blob: ``max|ours - caffe| / max(max|caffe|, 1e-12)`` — the largest
absolute difference relative to the blob's dynamic range.  An element-wise relative error
would blow up on values that are float32 round-off around zero (post-ReLU or a 1e-9
probability), which says nothing about the implementation; the range-relative form is what
"within 1e-4 relative" means for a whole tensor.  Tolerance: 1e-4.  (Real Caffe against the
OpenCV oracle: <= 6.2e-6 by the same measure, see caffe_ref/SOURCE.txt.)

When a blob fails, ``../shared/data/oracle/<model>.npz`` (per-layer OpenCV outputs) helps find
the first layer that goes wrong: the failure message lists every mismatching blob in net order.
"""
import numpy as np
import pytest

from qcaffe import backend
from qcaffe.io import read_net_param
from qcaffe.net import Net
from qcaffe.proto import caffe_pb2
from shared_data import require_shared

TOLERANCE = 1e-4

# npz name -> (model folder, deploy prototxt, weights)
MODELS = {
    'lenet': ('lenet', 'lenet.prototxt', 'lenet_iter_10000.caffemodel'),
    'lenet_v1': ('lenet_v1', 'lenet.prototxt', 'lenet_iter_10000.caffemodel'),
    'cifar10_full_v1': ('cifar10_full_v1', 'cifar10_full.prototxt',
                        'cifar10_full_iter_70000.caffemodel'),
    'cifar10_quick_v1': ('cifar10_quick_v1', 'cifar10_quick.prototxt',
                         'cifar10_quick_iter_5000.caffemodel'),
    'cifar10_quick_hdf5': ('cifar10_quick_hdf5', 'cifar10_quick.prototxt',
                           'cifar10_quick_iter_5000.caffemodel.h5'),
    'mtcnn_det1': ('mtcnn', 'det1.prototxt', 'det1.caffemodel'),
    'mtcnn_det2': ('mtcnn', 'det2.prototxt', 'det2.caffemodel'),
    'mtcnn_det3': ('mtcnn', 'det3.prototxt', 'det3.caffemodel'),
    'mtcnn_det4': ('mtcnn', 'det4.prototxt', 'det4.caffemodel'),
    'resnet20_cifar10': ('resnet20_cifar10', 'deploy.prototxt',
                         'cifar10_ResNet_20_iter_64000.caffemodel'),
}


def relative_error(ours, ref):
    """max|ours - ref| / max(max|ref|, 1e-12), in float64."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)) if ref.size else 0.0


def run_model(name):
    """Build model ``name``, forward the reference inputs; return (net, reference npz)."""
    folder, proto, weights = MODELS[name]
    ref = np.load(require_shared('caffe_ref', 'forward', name + '.npz'))
    if weights.endswith('.h5'):
        pytest.importorskip('h5py')
    proto_path = require_shared('models', folder, proto)
    net = Net.from_param(read_net_param(proto_path), phase=caffe_pb2.TEST, source=proto_path)
    net.copy_from(require_shared('models', folder, weights))
    inputs = {k[len('input/'):]: ref[k] for k in ref.files if k.startswith('input/')}
    assert inputs, 'no input/<name> arrays in %s.npz' % name
    for blob_name, value in inputs.items():
        blob = net.blob_by_name(blob_name)
        blob.reshape(value.shape)
        blob.data[...] = value
    net.forward_prefilled()
    return net, ref


def model_errors(name):
    """{blob name: relative error} for every blob of the reference, in net blob order."""
    net, ref = run_model(name)
    refs = {k[len('blob/'):]: ref[k] for k in ref.files if k.startswith('blob/')}
    missing = sorted(set(refs) - set(net.blob_names))
    assert not missing, 'blobs of real Caffe missing from our net: %s' % missing
    errors = {}
    for bname in net.blob_names:
        if bname in refs:
            ours = net.blob_by_name(bname).data
            assert ours.shape == refs[bname].shape, (bname, ours.shape, refs[bname].shape)
            errors[bname] = relative_error(ours, refs[bname])
    return errors


@pytest.fixture(autouse=True)
def _cpu():
    backend.set_mode_cpu()


@pytest.mark.parametrize('name', sorted(MODELS))
def test_forward_matches_caffe(name):
    errors = model_errors(name)
    worst = max(errors.values())
    print('\nparity %-20s %3d blobs, max relative error %.2e (%s)'
          % (name, len(errors), worst, max(errors, key=errors.get)))
    bad = ['%s: %.3g' % (k, v) for k, v in errors.items() if not v <= TOLERANCE]
    assert not bad, '%s: blobs beyond %g (net order, first is the likely culprit):\n  %s' % (
        name, TOLERANCE, '\n  '.join(bad))


def test_every_reference_file_is_covered():
    import glob
    import os
    folder = require_shared('caffe_ref', 'forward')
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(folder, '*.npz'))}
    assert names == set(MODELS), 'reference models without a mapping: %s' % (names - set(MODELS))


def test_relative_error_measure():
    ref = np.array([0.0, 1e-9, 2.0, -4.0])
    assert relative_error(ref, ref) == 0
    assert relative_error(ref + [0, 0, 0, 4e-4], ref) == pytest.approx(1e-4)
    assert relative_error(np.zeros(2), np.zeros(2)) == 0


def test_pycaffe_flow_matches_caffe():
    """The README flow: ``qcaffe.Net(prototxt, TEST, weights=...)``, reshape, ``forward(data=)``."""
    import qcaffe
    ref = np.load(require_shared('caffe_ref', 'forward', 'mtcnn_det2.npz'))
    net = qcaffe.Net(require_shared('models', 'mtcnn', 'det2.prototxt'), qcaffe.TEST,
                     weights=require_shared('models', 'mtcnn', 'det2.caffemodel'))
    x = ref['input/data']
    net.blobs['data'].reshape(*x.shape)
    out = net.forward(data=x)
    assert sorted(out) == ['conv5-2', 'prob1']     # outputs, sorted by name as Caffe does
    for name in out:
        assert relative_error(out[name], ref['blob/' + name]) <= TOLERANCE
