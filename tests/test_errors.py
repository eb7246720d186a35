"""Issue 2 item 7: bad input gives a clear QcaffeError naming what is wrong, never a bare
traceback from deep inside (malformed prototxt, unknown layer type, unproduced bottom, weight
shape mismatch, truncated or non-Caffe binary files)."""
import os

import numpy as np
import pytest

import qcaffe
from qcaffe import backend
from qcaffe.io import ModelFileError, ModelFileNotFoundError, ProtoParseError, QcaffeError
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
