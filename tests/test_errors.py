"""Issue 2 item 7: bad input gives a clear QcaffeError naming what is wrong, never a bare
traceback from deep inside (malformed prototxt, unknown layer type, unproduced bottom, weight
shape mismatch, truncated or non-Caffe binary files)."""
import logging
import os

import numpy as np
import pytest

import qcaffe
from qcaffe import backend
from qcaffe.io import (ModelFileError, ModelFileNotFoundError, ProtoParseError, QcaffeError,
                       UpgradeError)
from qcaffe.layers.base import LayerError
from qcaffe.net import NetError, WeightsMismatchError
from shared_data import require_shared


GOOD = '''name: "tiny"
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: %d weight_filler { type: "gaussian" } } }
'''


@pytest.fixture(autouse=True)
def _seed():
    backend.set_random_seed(1701)


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return str(path)


def saved_weights(tmp_path, num_output=4):
    net = qcaffe.Net(write(tmp_path, 'src.prototxt', GOOD % num_output), qcaffe.TEST)
    path = str(tmp_path / 'src.caffemodel')
    net.save(path)
    return path


# --------------------------------------------------------------------- prototxt syntax
def test_malformed_prototxt_names_file_line_column_and_expectation(tmp_path):
    path = write(tmp_path, 'bad.prototxt', 'name: "x"\nlayer {\n  name: "ip"\n  bottom "x"\n}\n')
    with pytest.raises(ProtoParseError) as e:
        qcaffe.Net(path, qcaffe.TEST)
    err = e.value
    assert (err.line, err.column) == (4, 10)
    msg = str(err)
    assert 'bad.prototxt:4:10' in msg and 'Expected ":"' in msg
    assert 'bottom "x"' in msg          # the offending line is quoted


def test_unknown_field_in_prototxt(tmp_path):
    path = write(tmp_path, 'f.prototxt', 'layer {\n  nme: "ip"\n}\n')
    with pytest.raises(ProtoParseError, match=r'f\.prototxt:2:3.*no field named "nme"'):
        qcaffe.Net(path, qcaffe.TEST)


def test_unterminated_message(tmp_path):
    path = write(tmp_path, 'u.prototxt', 'layer {\n  name: "ip"\n')
    with pytest.raises(ProtoParseError) as e:
        qcaffe.Net(path, qcaffe.TEST)
    assert e.value.line is not None and 'u.prototxt' in str(e.value)


def test_missing_prototxt_file(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match='nope.prototxt'):
        qcaffe.Net(str(tmp_path / 'nope.prototxt'), qcaffe.TEST)


# ---------------------------------------------------------------- net construction
def test_unknown_layer_type_names_layer_and_closest_types(tmp_path):
    path = write(tmp_path, 't.prototxt', (GOOD % 4).replace('"InnerProduct"', '"InnerProdct"'))
    with pytest.raises(LayerError) as e:
        qcaffe.Net(path, qcaffe.TEST)
    msg = str(e.value)
    assert "Unknown layer type 'InnerProdct'" in msg and "layer 'ip'" in msg
    assert "Did you mean 'InnerProduct'" in msg
    assert 't.prototxt' in msg          # which net definition
    assert isinstance(e.value, QcaffeError)


def test_bottom_nobody_produces_names_layer_and_blob(tmp_path):
    path = write(tmp_path, 'b.prototxt', (GOOD % 4).replace('bottom: "x"', 'bottom: "xx"'))
    with pytest.raises(NetError) as e:
        qcaffe.Net(path, qcaffe.TEST)
    msg = str(e.value)
    assert "Unknown bottom blob 'xx'" in msg and "layer 'ip'" in msg and 'known blobs: x' in msg
    assert 'b.prototxt' in msg


def test_bad_layer_parameter_is_a_layer_error(tmp_path):
    path = write(tmp_path, 'p.prototxt', GOOD % 0)
    with pytest.raises(LayerError, match="'ip'.*num_output"):
        qcaffe.Net(path, qcaffe.TEST)


def test_wrong_blob_count_names_layer(tmp_path):
    text = (GOOD % 4).replace('top: "y"', 'top: "y" top: "z"')
    with pytest.raises(LayerError, match="Layer 'ip' \\(type InnerProduct\\) produces 1 top"):
        qcaffe.Net(write(tmp_path, 'c.prototxt', text), qcaffe.TEST)


def test_bad_phase():
    with pytest.raises(QcaffeError, match='phase'):
        qcaffe.Net(require_shared('models', 'lenet', 'lenet.prototxt'), 7)


# -------------------------------------------------------------------- weights files
def test_weight_shape_mismatch_names_layer_blob_index_and_shapes(tmp_path):
    weights = saved_weights(tmp_path, num_output=4)
    path = write(tmp_path, 'dst.prototxt', GOOD % 5)
    with pytest.raises(WeightsMismatchError) as e:
        qcaffe.Net(path, qcaffe.TEST, weights=weights)
    msg = str(e.value)
    assert "Cannot copy param 0 weights from layer 'ip'" in msg
    assert 'Source param shape is 4 3 (12)' in msg and 'target param shape is 5 3 (15)' in msg
    assert 'src.caffemodel' in msg


def test_v1_weights_legacy_shape_mismatch(tmp_path):
    # lenet_v1 stores ip2 as legacy 1x1x10x500; a net expecting 10x400 must be refused
    weights = require_shared('models', 'lenet_v1', 'lenet_iter_10000.caffemodel')
    text = ('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 dim: 400 } } }'
            '\nlayer { name: "ip2" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 10 } }\n')
    with pytest.raises(WeightsMismatchError, match=r"param 0 weights from layer 'ip2'.*"
                                                   r"1 1 10 500 \(5000\).*10 400 \(4000\)"):
        qcaffe.Net(write(tmp_path, 'v.prototxt', text), qcaffe.TEST, weights=weights)


@pytest.mark.parametrize('kind,content,expect', [
    ('png', b'\x89PNG\r\n\x1a\n' + bytes(range(200)), 'is a PNG image, not a binary '
                                                        'caffe.NetParameter'),
    ('empty', b'', r'is empty \(0 bytes\); expected a binary caffe.NetParameter'),
    ('text', 'name: "x"\nlayer { name: "a" }\n', 'is a text file'),
    ('garbage', bytes([0x08, 0x00, 0x00, 0xff, 0x7f]) * 20, 'corrupt or not a binary '
                                                             'caffe.NetParameter'),
    ('zip', b'PK\x03\x04' + bytes(100), 'ZIP archive'),
])
def test_non_caffe_weights_file(tmp_path, kind, content, expect):
    bad = write(tmp_path, 'w_%s.caffemodel' % kind, content)
    net = qcaffe.Net(write(tmp_path, 'n.prototxt', GOOD % 4), qcaffe.TEST)
    with pytest.raises(ModelFileError, match=expect) as e:
        net.copy_from(bad)
    assert 'w_%s.caffemodel' % kind in str(e.value)


def test_truncated_caffemodel(tmp_path):
    data = open(require_shared('models', 'lenet', 'lenet_iter_10000.caffemodel'), 'rb').read()
    bad = write(tmp_path, 'cut.caffemodel', data[:len(data) // 2])
    net = qcaffe.Net(write(tmp_path, 'n.prototxt', GOOD % 4), qcaffe.TEST)
    with pytest.raises(ModelFileError) as e:
        net.copy_from(bad)
    msg = str(e.value)
    assert 'cut.caffemodel' in msg and 'truncated' in msg and 'Expected a complete binary' in msg


def test_truncated_own_caffemodel(tmp_path):
    weights = saved_weights(tmp_path)
    data = open(weights, 'rb').read()
    bad = write(tmp_path, 'cut2.caffemodel', data[:-7])
    net = qcaffe.Net(write(tmp_path, 'n.prototxt', GOOD % 4), qcaffe.TEST)
    with pytest.raises(ModelFileError, match='cut2.caffemodel.*truncated'):
        net.copy_from(bad)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match='none.caffemodel'):
        qcaffe.Net(write(tmp_path, 'n.prototxt', GOOD % 4), qcaffe.TEST,
                   weights=str(tmp_path / 'none.caffemodel'))


def test_hdf5_that_is_not_caffe_weights(tmp_path):
    h5py = pytest.importorskip('h5py')
    path = str(tmp_path / 'other.caffemodel.h5')
    with h5py.File(path, 'w') as f:
        f['images'] = np.zeros((2, 2), np.float32)
    net = qcaffe.Net(write(tmp_path, 'n.prototxt', GOOD % 4), qcaffe.TEST)
    with pytest.raises(ModelFileError, match='other.caffemodel.h5.*no "data" group'):
        net.copy_from(path)


def test_net_file_given_weights_instead_of_prototxt(tmp_path):
    h5py = pytest.importorskip('h5py')
    path = str(tmp_path / 'w.h5')
    with h5py.File(path, 'w') as f:
        f.create_group('data')
    with pytest.raises(ModelFileError, match='HDF5 weights file'):
        qcaffe.Net(path, qcaffe.TEST)


def test_every_error_class_is_a_qcaffe_error():
    for cls in (NetError, WeightsMismatchError, LayerError, ModelFileError, ProtoParseError,
                ModelFileNotFoundError):
        assert issubclass(cls, QcaffeError)
    assert os.path.exists(require_shared('models', 'lenet', 'lenet.prototxt'))


# ------------------------------------------------- damaged names, huge shapes, no memory
def _damaged_name(data, name):
    """``data`` with the first layer name field ``name`` (field 1 of LayerParameter, field 4 of
    V1LayerParameter) turned into invalid UTF-8."""
    for tag in (b'\x0a', b'\x22'):
        field = tag + bytes([len(name)]) + name
        at = data.find(field)
        if at >= 0:
            return data[:at + 2] + b'\xff' + data[at + 3:]
    raise AssertionError('no name field %r' % name)


def test_v1_caffemodel_with_a_non_utf8_layer_name_is_a_clear_error(tmp_path):
    src = require_shared('models', 'lenet_v1', 'lenet_iter_10000.caffemodel')
    with open(src, 'rb') as f:
        data = f.read()
    path = write(tmp_path, 'v1.caffemodel', _damaged_name(data, b'conv1'))
    with pytest.raises(UpgradeError) as e:
        qcaffe.Net(require_shared('models', 'lenet_v1', 'lenet.prototxt'), qcaffe.TEST,
                   weights=path)
    msg = str(e.value)
    assert msg == ("%s: cannot upgrade V1 layer #1: its name b'\\xffonv1' is not valid UTF-8 "
                   "text (the file is damaged)" % path)


def test_v2_caffemodel_with_a_non_utf8_layer_name_warns_that_it_is_not_loaded(tmp_path, caplog):
    src = require_shared('models', 'lenet', 'lenet_iter_10000.caffemodel')
    with open(src, 'rb') as f:
        data = f.read()
    path = write(tmp_path, 'v2.caffemodel', _damaged_name(data, b'conv1'))
    logger = logging.getLogger('qcaffe')
    old = logger.propagate
    logger.propagate = True     # setup_logging elsewhere may have turned it off
    try:
        with caplog.at_level(logging.WARNING, logger='qcaffe'):
            # Caffe matches layers by name: the damaged one matches nothing and is ignored
            qcaffe.Net(require_shared('models', 'lenet', 'lenet.prototxt'), qcaffe.TEST,
                       weights=path)
    finally:
        logger.propagate = old
    assert ("the name b'\\xffonv1' of layer #1 is not valid UTF-8 (a damaged file?); no layer "
            "can match it, so its weights are not loaded") in caplog.text


def test_blob_reshape_refuses_what_caffe_refuses():
    from qcaffe.blob import Blob, BlobShapeError
    with pytest.raises(BlobShapeError, match=r"^blob shape 64 1 4294967296 28 has 7696581394432 "
                       r"elements; Caffe's Blob::Reshape allows at most INT_MAX = 2147483647 "
                       r"\(blob size exceeds INT_MAX\)$"):
        Blob(64, 1, 4294967296, 28)
    with pytest.raises(BlobShapeError, match='exceeds INT_MAX'):
        Blob(2 ** 16, 2 ** 15)      # 2**31: one past INT_MAX
    assert Blob(2 ** 16, 2 ** 15 - 1).count == 2 ** 31 - 2 ** 16    # lazily allocated
    assert Blob(0, 2 ** 40).count == 0      # Caffe skips the check once the count is 0
    with pytest.raises(BlobShapeError, match='at most 32 axes'):
        Blob(*[1] * 33)
    with pytest.raises(ValueError, match='>= 0'):  # still a ValueError, as before
        Blob(2, -1)


def test_a_shape_over_int_max_is_refused_at_setup_naming_layer_and_blob(tmp_path):
    path = write(tmp_path, 'big.prototxt', (GOOD % 4).replace('dim: 2 dim: 3',
                                                               'dim: 4294967296 dim: 3'))
    with pytest.raises(NetError) as e:
        qcaffe.Net(path, qcaffe.TEST)
    assert str(e.value) == (
        "net 'tiny' (%s): layer 'data' (type Input), setup, top blob 'x': blob shape "
        "4294967296 3 has 12884901888 elements; Caffe's Blob::Reshape allows at most INT_MAX = "
        "2147483647 (blob size exceeds INT_MAX)" % path)


OOM_NET = '''name: "oom"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1000 } } }
layer { name: "tile" type: "Tile" bottom: "x" top: "big" tile_param { axis: 1 tiles: 400000 } }
'''

OOM_SCRIPT = '''
import resource, sys
import qcaffe
from qcaffe.io.errors import QcaffeError
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20),) * 2)   # 1.6 GB will not fit
net = qcaffe.Net(sys.argv[1], qcaffe.TEST)
try:
    net.forward()
except MemoryError as e:
    print('%s|%s|%s' % (type(e).__name__, isinstance(e, QcaffeError), e))
'''


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='needs Linux /proc')
def test_an_allocation_failure_names_layer_blob_shape_and_bytes(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, 'oom.prototxt', OOM_NET)
    script = write(tmp_path, 'oom.py', OOM_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), QCAFFE_NUM_THREADS='1')
    done = subprocess.run([sys.executable, script, path], capture_output=True, text=True,
                          timeout=120, env=env)
    kind, is_qcaffe, msg = done.stdout.strip().split('|', 2)
    assert (kind, is_qcaffe) == ('NetOutOfMemoryError', 'True'), done.stdout + done.stderr
    assert msg.startswith(
        "net 'oom': layer 'tile' (type Tile), forward, top blob 'big' (shape 1 400000000 "
        "(400000000)): out of memory: cannot allocate 1.49 GiB (1600000000 bytes) of host "
        "memory for a blob of shape 1 400000000 (400000000 float32 elements)"), msg
    assert '\n' not in msg
