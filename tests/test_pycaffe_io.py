"""caffe.io (qcaffe.pycaffe_io, re-exported by qcaffe.io): protos, datums, images, Transformer.

Includes the cases of upstream python/caffe/test/test_io.py.
"""
import numpy as np
import pytest

import qcaffe as caffe
from qcaffe.proto import caffe_pb2


# ------------------------------------------------------------ upstream test_io.py
def test_blobproto_old_format():
    data = np.zeros((10, 10))
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(data.flatten()))
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 10
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)


def test_blobproto_new_format():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros((10, 10)).flatten()))
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)


def test_blobproto_no_shape():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros((10, 10)).flatten()))
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)


def test_blobproto_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([123])
    arr = caffe.io.blobproto_to_array(blob)
    assert arr.shape == () and arr == 123


def test_datum_label_none_size():
    arr = np.zeros((1, 10, 10))
    d1 = caffe.io.array_to_datum(arr)
    d2 = caffe.io.array_to_datum(arr, 1)
    assert len(d1.SerializeToString()) < len(d2.SerializeToString())


# -------------------------------------------------------------------- round trips
def test_datum_roundtrip_uint8_and_float():
    u = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    d = caffe.io.array_to_datum(u, label=7)
    assert d.label == 7 and d.data == u.tobytes() and len(d.float_data) == 0
    back = caffe.io.datum_to_array(d)
    assert back.dtype == np.uint8 and np.array_equal(back, u)
    back[0, 0, 0] = 9  # writable, like upstream's fromstring copy
    f = np.random.RandomState(0).rand(2, 3, 4).astype(np.float32)
    d = caffe.io.array_to_datum(f)
    assert not d.HasField('label') and len(d.data) == 0
    np.testing.assert_allclose(caffe.io.datum_to_array(d), f, rtol=1e-7)
    with pytest.raises(ValueError, match='Incorrect array shape'):
        caffe.io.array_to_datum(np.zeros((2, 2)))


def test_blobproto_roundtrip_and_vector():
    rs = np.random.RandomState(1)
    a, g = rs.rand(2, 3, 4).astype(np.float32), rs.rand(2, 3, 4).astype(np.float32)
    p = caffe.io.array_to_blobproto(a, g)
    assert list(p.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(p), a)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(p, return_diff=True), g)
    s = caffe.io.arraylist_to_blobprotovector_str([a, np.ones(5)])
    assert isinstance(s, bytes)
    out = caffe.io.blobprotovector_str_to_arraylist(s)
    assert [x.shape for x in out] == [(2, 3, 4), (5,)]
    np.testing.assert_array_equal(out[0], a)


# ---------------------------------------------------------------------- images
def _transformer():
    t = caffe.io.Transformer({'data': (1, 3, 6, 8)})
    t.set_transpose('data', (2, 0, 1))
    t.set_channel_swap('data', (2, 1, 0))
    t.set_raw_scale('data', 255)
    t.set_mean('data', np.array([104.0, 117.0, 123.0]))
    t.set_input_scale('data', 0.5)
    return t


def test_transformer_preprocess_matches_formula_and_deprocess_inverts():
    t = _transformer()
    img = np.random.RandomState(2).rand(6, 8, 3).astype(np.float32)
    keep = img.copy()
    x = t.preprocess('data', img)
    assert x.shape == (3, 6, 8) and x.dtype == np.float32
    expect = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255
              - np.array([104, 117, 123.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, expect, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(img, keep)  # the caller's image is untouched
    np.testing.assert_allclose(t.deprocess('data', x[None]), img, atol=1e-5)


def test_transformer_resizes_and_checks():
    t = _transformer()
    x = t.preprocess('data', np.random.RandomState(3).rand(12, 16, 3))
    assert x.shape == (3, 6, 8)
    with pytest.raises(Exception, match='not one of the net inputs'):
        t.preprocess('nope', np.zeros((6, 8, 3)))
    with pytest.raises(Exception, match='Transpose order'):
        t.set_transpose('data', (1, 0))
    with pytest.raises(Exception, match='Channel swap'):
        t.set_channel_swap('data', (1, 0))
    with pytest.raises(ValueError, match='Mean channels'):
        t.set_mean('data', np.zeros(4))
    t.set_mean('data', np.full((3, 3, 4), 2.0))  # elementwise mean, resized to 6 x 8
    assert t.mean['data'].shape == (3, 6, 8)
    np.testing.assert_allclose(t.mean['data'], 2.0)


def test_resize_and_oversample():
    rs = np.random.RandomState(4)
    r = caffe.io.resize_image(rs.rand(4, 5, 3), (8, 10))
    assert r.shape == (8, 10, 3) and r.dtype == np.float32
    const = caffe.io.resize_image(np.full((4, 4, 2), 0.25), (3, 2))
    assert const.shape == (3, 2, 2) and np.all(const == 0.25)
    assert caffe.io.resize_image(rs.rand(4, 4, 5), (2, 3)).shape == (2, 3, 5)
    im = rs.rand(6, 6, 3).astype(np.float32)
    crops = caffe.io.oversample([im, im], (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], im[:4, :4])
    np.testing.assert_array_equal(crops[3], im[2:, 2:])
    np.testing.assert_array_equal(crops[4], im[1:5, 1:5])
    np.testing.assert_array_equal(crops[5], im[:4, :4][:, ::-1])


def test_load_image(tmp_path):
    Image = pytest.importorskip('PIL.Image')
    rgb = (np.random.RandomState(5).rand(5, 7, 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(str(tmp_path / 'c.png'))
    im = caffe.io.load_image(str(tmp_path / 'c.png'))
    assert im.shape == (5, 7, 3) and im.dtype == np.float32
    np.testing.assert_allclose(im, rgb / 255.0, atol=1e-6)
    grey = caffe.io.load_image(str(tmp_path / 'c.png'), color=False)
    assert grey.shape == (5, 7, 1)
    np.testing.assert_allclose(grey[:, :, 0], (rgb / 255.0).dot([0.2125, 0.7154, 0.0721]),
                               atol=1e-5)
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    Image.fromarray(rgba).save(str(tmp_path / 'a.png'))
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / 'a.png')), im)
    Image.fromarray(rgb[:, :, 0]).save(str(tmp_path / 'g.png'))
    g = caffe.io.load_image(str(tmp_path / 'g.png'))
    assert g.shape == (5, 7, 3) and np.array_equal(g[:, :, 0], g[:, :, 2])
