"""DataTransformer against Caffe's per-datum formulas (data_transformer.cpp)."""
import numpy as np
import pytest

from qcaffe import backend
from qcaffe.data.transformer import DataTransformer, TransformError
from qcaffe.io import array_to_blobproto
from qcaffe.proto import caffe_pb2


def tp(**kw):
    return caffe_pb2.TransformationParameter(**kw)


def caffe_reference(item, h_off, w_off, crop, mirror, mean_image=None, mean_values=None,
                    scale=1.0):
    """Caffe's loop for one datum, written literally (the test oracle)."""
    c, h, w = item.shape
    oh, ow = (crop, crop) if crop else (h, w)
    out = np.zeros((c, oh, ow), np.float32)
    for ci in range(c):
        for hi in range(oh):
            for wi in range(ow):
                top_w = ow - 1 - wi if mirror else wi
                v = np.float32(item[ci, h_off + hi, w_off + wi])
                if mean_image is not None:
                    v = (v - np.float32(mean_image[ci, h_off + hi, w_off + wi])) * np.float32(scale)
                elif mean_values is not None:
                    mv = mean_values[ci] if len(mean_values) > 1 else mean_values[0]
                    v = (v - np.float32(mv)) * np.float32(scale)
                else:
                    v = v * np.float32(scale)
                out[ci, hi, top_w] = v
    return out


@pytest.fixture
def batch():
    rs = np.random.RandomState(0)
    return rs.randint(0, 256, size=(5, 3, 7, 9)).astype(np.uint8)


def test_scale_only_is_exact_float32(batch):
    t = DataTransformer(tp(scale=0.00390625), caffe_pb2.TRAIN)
    out = t.transform(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_array_equal(out, batch.astype(np.float32) * np.float32(0.00390625))


def test_identity_keeps_values_and_float_input():
    x = np.random.RandomState(1).randn(2, 1, 3, 3).astype(np.float32)
    np.testing.assert_array_equal(DataTransformer(tp(), caffe_pb2.TEST).transform(x), x)


def test_mean_value_before_scale_one_and_per_channel(batch):
    one = DataTransformer(tp(scale=0.5, mean_value=[100]), caffe_pb2.TEST).transform(batch)
    np.testing.assert_array_equal(one, (batch.astype(np.float32) - 100) * np.float32(0.5))
    per = DataTransformer(tp(mean_value=[1, 2, 3]), caffe_pb2.TEST).transform(batch)
    np.testing.assert_array_equal(
        per, batch.astype(np.float32) - np.array([1, 2, 3], np.float32)[None, :, None, None])


def test_center_crop_in_test_uses_uncropped_mean_positions(batch, tmp_path):
    mean = np.random.RandomState(2).uniform(0, 255, size=(1, 3, 7, 9)).astype(np.float32)
    path = tmp_path / 'mean.binaryproto'
    path.write_bytes(array_to_blobproto(mean).SerializeToString())
    t = DataTransformer(tp(crop_size=5, mean_file=str(path), scale=0.25), caffe_pb2.TEST)
    out = t.transform(batch)
    assert out.shape == (5, 3, 5, 5)
    for i in range(5):
        ref = caffe_reference(batch[i], 1, 2, 5, False, mean_image=mean[0], scale=0.25)
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-6)


def test_random_crop_and_mirror_match_caffe_loop(batch):
    t = DataTransformer(tp(crop_size=4, mirror=True, mean_value=[10, 20, 30], scale=2.0),
                        caffe_pb2.TRAIN)
    rng = np.random.RandomState(5)
    h_off, w_off, mirror = t.draw(5, 7, 9, rng=rng)
    assert h_off.max() <= 3 and w_off.max() <= 5 and h_off.min() >= 0
    out = t.transform(batch, choices=(h_off, w_off, mirror))
    for i in range(5):
        ref = caffe_reference(batch[i], h_off[i], w_off[i], 4, mirror[i],
                              mean_values=[10, 20, 30], scale=2.0)
        np.testing.assert_array_equal(out[i], ref)


def test_mirror_only_flips_about_half_even_in_test():
    x = np.arange(2000 * 4, dtype=np.uint8).reshape(2000, 1, 1, 4) % 4
    t = DataTransformer(tp(mirror=True), caffe_pb2.TEST, rng=np.random.RandomState(3))
    out = t.transform(x)
    flipped = (out[:, 0, 0, 0] == 3)
    assert ((out[:, 0, 0] == [0, 1, 2, 3]).all(1) | flipped).all()
    assert 0.45 < flipped.mean() < 0.55


def test_train_crop_offsets_cover_range_and_seed_repeats():
    x = np.zeros((400, 1, 6, 6), np.uint8)
    t = DataTransformer(tp(crop_size=3), caffe_pb2.TRAIN)
    backend.set_random_seed(7)
    a = t.draw(400, 6, 6)
    backend.set_random_seed(7)
    b = t.draw(400, 6, 6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert set(a[0]) == {0, 1, 2, 3} and set(a[1]) == {0, 1, 2, 3}
    assert t.transform(x).shape == (400, 1, 3, 3)


def test_errors_name_layer_and_field(batch, tmp_path):
    with pytest.raises(TransformError, match=r"'data'.*crop_size 8 is larger than the 7x9"):
        DataTransformer(tp(crop_size=8), caffe_pb2.TEST, 'data').transform(batch)
    with pytest.raises(TransformError, match='2 mean_value entries for 3 channels'):
        DataTransformer(tp(mean_value=[1, 2]), caffe_pb2.TEST, 'data').transform(batch)
    with pytest.raises(TransformError, match='mean_file and mean_value'):
        DataTransformer(tp(mean_value=[1], mean_file='x'), caffe_pb2.TEST, 'data')
    path = tmp_path / 'm.binaryproto'
    path.write_bytes(array_to_blobproto(np.zeros((1, 3, 5, 5), np.float32))
                     .SerializeToString())
    with pytest.raises(TransformError, match='shape of the uncropped data'):
        DataTransformer(tp(mean_file=str(path)), caffe_pb2.TEST, 'data').transform(batch)
    assert DataTransformer(tp(crop_size=5), caffe_pb2.TEST).infer_shape((3, 7, 9)) == (3, 5, 5)
