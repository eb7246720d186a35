"""caffe.draw, caffe.coord_map (upstream test_coord_map.py) and caffe.Classifier."""

import numpy as np
import pytest

import qcaffe as caffe
from qcaffe import coord_map, draw
from qcaffe import layers as L, params as P
from qcaffe.coord_map import coord_map_from_to, crop
from shared_data import require_shared


# -------------------------------------------------------------------------- draw
def _lenet_param():
    from qcaffe.io.binary import read_net_param
    return read_net_param(require_shared('models', 'lenet', 'lenet_train_test.prototxt'))


def test_draw_dot_source_and_labels():
    param = _lenet_param()
    dot = draw.draw_net(param, 'LR', ext='dot').decode()
    assert dot.startswith('digraph "LeNet" {') and dot.rstrip().endswith('}')
    assert '"conv1_Convolution" [fillcolor="#FF5050", label="conv1 (Convolution) kernel ' \
           'size: 5 stride: 1 pad: 0"' in dot
    assert 'label="pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0"' in dot
    assert '"relu1_ReLU" [fillcolor="#90EE90"' in dot              # in-place: neuron style
    assert '"conv1_Convolution" -> "conv1_blob" [label="20"];' in dot
    assert '"data_blob" -> "conv1_Convolution";' in dot
    # phase filtering: only the TEST Data layer's batch size shows
    test_dot = draw.get_dot_source(param, 'TB', phase=caffe.TEST)
    assert 'label="Batch 100"' in test_dot and 'label="Batch 64"' not in test_dot
    assert r'conv1\n(Convolution)' in test_dot                     # TB uses newlines
    lrm = draw.get_layer_label(param.layer[2], 'LR', display_lrm=True)
    assert lrm.endswith('lr mult: 1.0, 2.0"')
    assert draw.get_layer_lr_mult(param.layer[2]) == (1.0, 2.0)
    with pytest.raises(ValueError):
        draw.get_layer_lr_mult(param.layer[0])
    assert draw.get_pooling_types_dict()[P.Pooling.MAX] == 'MAX'
    assert draw.get_edge_label(param.layer[0]) == 'Batch 64'


def test_draw_net_to_file(tmp_path):
    param = _lenet_param()
    out = str(tmp_path / 'lenet.dot')
    draw.draw_net_to_file(param, out, phase=caffe.TRAIN)
    assert 'digraph' in open(out).read()
    png = str(tmp_path / 'lenet.png')
    try:
        draw.draw_net_to_file(param, png)
    except ImportError as e:                  # neither pydot nor Graphviz installed
        assert 'Graphviz' in str(e) and 'dot' in str(e)
    else:
        assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_get_pydot_graph_needs_pydot():
    try:
        import pydot  # noqa: F401
    except ImportError:
        try:
            import pydotplus  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match='pip install pydot'):
                draw.get_pydot_graph(_lenet_param(), 'LR')
            return
    graph = draw.get_pydot_graph(_lenet_param(), 'LR')
    assert graph.get_nodes()


# --------------------------------------------------------------------- coord_map
def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """upstream test_coord_map.coord_net_spec: conv, pool, deconv and a crop target."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    n.deconv = L.Deconvolution(
        n.pool, convolution_param=dict(num_output=10, kernel_size=4, stride=dstride, pad=dpad))
    return n


def test_coord_map_conv_pool_deconv():
    # identity for 2x pool, 2x deconv (kernel 4): conv -1, pool -0.25*2, deconv +1.5
    n = coord_net_spec()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)
    # shifted by one for 4x pool, 4x deconv
    n = coord_net_spec(pool=4, dstride=4)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 1)
    # the pooled top is at half resolution, shifted
    m = coord_net_spec()
    ax, a, b = coord_map_from_to(m.pool, m.data)
    assert ax == 1 and a == 2 and b == 1.5
    # conv padding shifts by -pad (FCN's pad 100 needs a crop)
    n = coord_net_spec(pad=2)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -2)


def test_coord_map_pass_through_and_errors():
    n = coord_net_spec()
    n.relu = L.ReLU(n.deconv, in_place=False)
    assert coord_map_from_to(n.relu, n.data) == coord_map_from_to(n.deconv, n.data)
    with pytest.raises(RuntimeError, match='Could not compute map'):
        coord_map_from_to(n.deconv, n.aux)
    n.ip = L.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(coord_map.UndefinedMapException):
        coord_map.coord_map(n.ip.fn)
    legacy = caffe.NetSpec()
    legacy.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    legacy.conv = L.Convolution(legacy.data, num_output=1, kernel_h=3, kernel_w=3,
                                kernel_size=3)
    with pytest.raises(AssertionError, match='legacy'):
        coord_map.coord_map(legacy.conv.fn)


def test_crop_builds_the_fcn_crop():
    n = coord_net_spec(pad=2)
    n.crop = crop(n.deconv, n.data)
    p = n.to_proto()
    layer = [l for l in p.layer if l.type == 'Crop'][0]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [2]
    assert list(layer.bottom) == ['deconv', 'data']
    with pytest.raises(AssertionError, match='scale mismatch'):
        crop(n.pool, n.data)
    with pytest.raises(AssertionError, match='negative offset'):
        m = coord_net_spec(pool=4, dstride=4)
        crop(m.deconv, m.data)


def test_compose_and_inverse():
    m = (1, 2.0, 3.0)
    assert coord_map.compose(m, coord_map.inverse(m)) == (1, 1.0, 0.0)
    with pytest.raises(coord_map.AxisMismatchException):
        coord_map.compose((1, 1, 0), (2, 1, 0))
    assert coord_map.compose((None, 1, 0), (2, 3, 1)) == (2, 3, 1)


# -------------------------------------------------------------------- Classifier
def test_classifier_predict(tmp_path):
    proto = tmp_path / 'deploy.prototxt'
    proto.write_text('''
    name: "tiny"
    input: "data" input_shape { dim: 3 dim: 3 dim: 8 dim: 8 }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
    ''')
    caffe.set_random_seed(5)
    caffe.Net(str(proto), caffe.TEST).save(str(tmp_path / 'w.caffemodel'))
    mean = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    clf = caffe.Classifier(str(proto), str(tmp_path / 'w.caffemodel'), image_dims=(10, 10),
                           mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    assert isinstance(clf, caffe.Net) and clf.phase == caffe.TEST
    rs = np.random.RandomState(0)
    images = [rs.rand(12, 14, 3).astype(np.float32) for _ in range(5)]
    pred = clf.predict(images, oversample=False)
    assert pred.shape == (5, 4)
    np.testing.assert_allclose(pred.sum(1), 1, rtol=1e-5)
    # the same as preprocessing by hand: resize to 10x10, centre crop 8x8, BGR, *255, -mean
    x = np.stack([caffe.io.resize_image(im, (10, 10))[1:9, 1:9] for im in images])
    x = x[:, :, :, ::-1].transpose(0, 3, 1, 2) * 255 - mean[:, None, None]
    w = clf.params['ip'][0].data.astype(np.float64)
    logits = x.reshape(5, -1).dot(w.T) + clf.params['ip'][1].data
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(pred, e / e.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    over = clf.predict(images, oversample=True)           # 10 crops each, averaged
    assert over.shape == (5, 4)
    np.testing.assert_allclose(over.sum(1), 1, rtol=1e-5)


# ---------------------------------------------------------------------- Detector
def test_detector_windows(tmp_path):
    proto = tmp_path / 'det.prototxt'
    proto.write_text('''
    input: "data" input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.0005 } } }
    layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
    ''')
    caffe.set_random_seed(9)
    caffe.Net(str(proto), caffe.TEST).save(str(tmp_path / 'w.caffemodel'))
    image = require_shared('images', 'astronaut.png')
    windows = [(0, 0, 64, 64), (100, 120, 180, 200), (10, 20, 40, 90)]
    det = caffe.Detector(str(proto), str(tmp_path / 'w.caffemodel'), raw_scale=255,
                         mean=np.array([100., 110., 120.]), channel_swap=(2, 1, 0))
    out = det.detect_windows([(image, windows)])
    assert [d['window'] for d in out] == windows and out[0]['filename'] == image
    assert all(d['prediction'].shape == (3,) for d in out)
    # window 1 by hand: crop, warp to 16x16, BGR, *255, -mean
    im = caffe.io.load_image(image)
    x = caffe.io.resize_image(im[100:180, 120:200], (16, 16))[:, :, ::-1] * 255
    x = (x - np.array([100., 110., 120.])).transpose(2, 0, 1)  # mean applies after the swap
    logits = det.params['ip'][0].data.astype(np.float64).dot(x.ravel())
    e = np.exp(logits - logits.max())
    assert 0.05 < (e / e.sum()).min()                       # not saturated: a real check
    np.testing.assert_allclose(out[1]['prediction'], e / e.sum(), rtol=1e-4)
    # context padding: same output size, mean-filled outside the image
    det_ctx = caffe.Detector(str(proto), str(tmp_path / 'w.caffemodel'), raw_scale=255,
                             mean=np.array([100., 110., 120.]), context_pad=2)
    crop = det_ctx.crop(im, (0, 0, 64, 64))
    assert crop.shape == (16, 16, 3)
    np.testing.assert_allclose(crop[0, 0], np.array([100., 110., 120.]) / 255, rtol=1e-5)
    assert len(det_ctx.detect_windows([(image, windows)])) == 3
