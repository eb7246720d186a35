"""The LeNet of upstream's pycaffe examples, built with caffe.NetSpec, shared by the tests
that mirror test_net_spec.py (DummyData input) and the 01-learning-lenet notebook (LMDB)."""
from qcaffe import layers as L, params as P


def lenet_layers(n, fc1='ip1', fc2='ip2'):
    """Add conv1 .. loss on ``n.data`` / ``n.label`` (the notebook names the inner products
    fc1 / score, test_net_spec ip1 / ip2) and return ``n.to_proto()``."""
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    setattr(n, fc1, L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier')))
    n.relu1 = L.ReLU(getattr(n, fc1), in_place=True)
    setattr(n, fc2, L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier')))
    n.loss = L.SoftmaxWithLoss(getattr(n, fc2), n.label)
    return n.to_proto()
