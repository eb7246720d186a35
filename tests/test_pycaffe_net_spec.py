"""caffe.net_spec (qcaffe.net_spec): routing and assignment rules, naming, upstream's cases.

The cases that build a Net from the generated proto live in test_pycaffe_net.py.
"""
import re

import numpy as np
import pytest

import qcaffe as caffe
from qcaffe import layers as L, params as P
from qcaffe.proto import caffe_pb2

from netspec_helpers import lenet_layers


def lenet(batch_size):
    """Upstream test_net_spec.lenet (DummyData instead of a database)."""
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    return lenet_layers(n)


def anon_lenet(batch_size):
    """Upstream test_net_spec.anon_lenet: the same net through caffe.to_proto, auto-named."""
    data, label = L.DummyData(shape=dict(dim=[batch_size, 1, 28, 28]), ntop=2,
                              transform_param=dict(scale=1. / 255))
    conv1 = L.Convolution(data, kernel_size=5, num_output=20,
                          weight_filler=dict(type='xavier'))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50,
                          weight_filler=dict(type='xavier'))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type='xavier'))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type='xavier'))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def test_lenet_proto_structure():
    net_proto = lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top  # in-place ReLU
    assert [l.name for l in net_proto.layer] == ['data', 'conv1', 'pool1', 'conv2', 'pool2',
                                                 'ip1', 'relu1', 'ip2', 'loss']
    assert list(net_proto.layer[0].top) == ['data', 'label']
    assert net_proto.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert net_proto.layer[0].transform_param.scale == pytest.approx(1. / 255)
    # str(proto) is text format that parses back
    back = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge(str(net_proto), back)
    assert back == net_proto


def test_anon_lenet_names():
    p = anon_lenet(50)
    assert p.layer[6].bottom == p.layer[6].top
    assert [l.name for l in p.layer][:3] == ['DummyData1', 'Convolution1', 'Pooling1']
    assert list(p.layer[0].top) == ['DummyData1', 'DummyData2']
    assert p.layer[5].name == 'InnerProduct1' and p.layer[7].name == 'InnerProduct2'
    assert p.layer[8].name == 'SoftmaxWithLoss1'


def test_type_error():
    data = L.DummyData(ntop=2)
    r = ("^Silence input 0 is not a Top \\(type is <(type|class) 'tuple'>\\)$")
    with pytest.raises(TypeError, match=r):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)  # unpacked works


def test_zero_tops_and_silence_names():
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_label = L.Silence(n.label, ntop=0)
    p = n.to_proto()
    assert [l.name for l in p.layer] == ['data', 'silence_data', 'silence_label']
    assert len(p.layer[1].top) == 0
    assert list(p.layer[0].dummy_data_param.shape[0].dim) == [3]


def test_compression_keywords_of_the_seed_scripts():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4,
                            weights_compress=["ULQ", "ULQ"],
                            weights_compress_param=[{"maxbits": 2}, {"maxbits": 2}],
                            activations_compress="Clip",
                            activations_compress_param={"maxbits": 8})
    layer = n.to_proto().layer[1]
    assert list(layer.weights_compress) == ['ULQ', 'ULQ']
    assert [c.maxbits for c in layer.weights_compress_param] == [2, 2]
    assert list(layer.activations_compress) == ['Clip']
    assert len(layer.activations_compress_param) == 1
    assert layer.activations_compress_param[0].maxbits == 8
    assert layer.convolution_param.num_output == 4
    assert list(layer.convolution_param.kernel_size) == [3]  # bare scalar -> one entry


def test_layer_level_fields_and_repeated_messages():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=2, param=[dict(lr_mult=1), dict(lr_mult=2)],
                          include=dict(phase=caffe.TRAIN), loss_weight=0.5,
                          propagate_down=[True], bias_filler=dict(type='constant', value=1))
    n.pool = L.Pooling(n.data, kernel_size=np.int64(2), pool='AVE', stride=np.int64(1))
    n.deconv = L.Deconvolution(n.data, convolution_param=dict(num_output=3, kernel_size=[2]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=(2, 2), stride=np.array([1, 2]))
    p = n.to_proto()
    ip = p.layer[1]
    assert [s.lr_mult for s in ip.param] == [1, 2]
    assert len(ip.include) == 1 and ip.include[0].phase == caffe.TRAIN
    assert list(ip.loss_weight) == [0.5] and list(ip.propagate_down) == [True]
    assert ip.inner_product_param.bias_filler.value == 1
    pool = p.layer[2]
    assert pool.pooling_param.kernel_size == 2 and pool.pooling_param.stride == 1
    assert pool.pooling_param.pool == P.Pooling.AVE
    assert p.layer[3].convolution_param.num_output == 3
    conv = p.layer[4].convolution_param                    # tuples and arrays extend
    assert list(conv.kernel_size) == [2, 2] and list(conv.stride) == [1, 2]


def test_unknown_keyword_is_attribute_error():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.deconv = L.Deconvolution(n.data, num_output=3)  # upstream fails too: no Deconv message
    with pytest.raises(AttributeError, match="num_output"):
        n.to_proto()
    n2 = caffe.NetSpec()
    n2.data = L.Input(shape=dict(dim=[1]))
    n2.c = L.Convolution(n2.data, no_such_field=1)
    with pytest.raises(AttributeError, match=re.escape('ConvolutionParameter nor LayerParam')):
        n2.to_proto()


def test_params_constants_and_netspec_access():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Loss.VALID == caffe_pb2.LossParameter.VALID
    n = caffe.NetSpec()
    n['data'] = L.Input(shape=dict(dim=[1]))
    assert n['data'] is n.data and list(n.tops) == ['data'] and n.keys() == ['data']
    with pytest.raises(AttributeError):
        n.missing


def test_compressed_netspec_builds_a_working_net(tmp_path):
    """The seed scripts' keywords go NetSpec -> prototxt -> caffe.Net -> forward, and the
    fork's Python attributes are reachable through the pycaffe objects."""
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[4, 1, 8, 8]), dict(dim=[4])],
                                  data_filler=[dict(type='gaussian', std=1),
                                               dict(type='constant')], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4,
                            weight_filler=dict(type='xavier'), bias_filler=dict(type='xavier'),
                            weights_compress=['ULQ', 'ULQ'],
                            weights_compress_param=[{'maxbits': 2}, {'maxbits': 2}],
                            activations_compress='Clip',
                            activations_compress_param={'maxbits': 8})
    n.ip = L.InnerProduct(n.conv1, num_output=3, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip, n.label)
    path = tmp_path / 'q.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN)
    out = net.forward()
    assert np.isfinite(out['loss'])
    conv = net.layer_dict['conv1']
    assert list(conv.weights_compress) == ['ULQ', 'ULQ']
    assert conv.weights_compress_param[0].maxbits == 2
    assert list(conv.activations_compress) == ['Clip']
    # 2-bit ULQ: the quantized weights take at most 4 distinct values
    q = net.params['conv1'][0].quantize
    assert q is not None and len(np.unique(q)) <= 4
    assert not np.array_equal(q, net.params['conv1'][0].data)   # data stays full precision
