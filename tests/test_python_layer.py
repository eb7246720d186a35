"""Python layers (type "Python"), following pycaffe's test_python_layer.py and §6.4 of caffe.md."""
import sys
import textwrap

import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.layers.base import LayerError
from qcaffe.testing import check_gradient, make_layer

MODULE = textwrap.dedent('''
    import numpy as np
    from qcaffe.pycaffe import Layer


    class SimpleLayer(Layer):
        """Multiplies by param_str (default 10), as pycaffe's test layer does."""
        def setup(self, bottom, top):
            self.value = float(self.param_str) if self.param_str else 10.0

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.value * bottom[0].data

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = self.value * top[0].diff


    class SquareLayer(Layer):
        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data ** 2

        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = 2 * bottom[0].data * top[0].diff


    class ParameterLayer(Layer):
        def setup(self, bottom, top):
            self.blobs.add_blob(1)
            self.blobs[0].data[0] = 0

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data + self.blobs[0].data[0]

        def backward(self, top, propagate_down, bottom):
            self.blobs[0].diff[0] += top[0].diff.sum()
            bottom[0].diff[...] = top[0].diff


    class PhaseLayer(Layer):
        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape()

        def forward(self, bottom, top):
            top[0].data[()] = self.phase


    class ExceptionLayer(Layer):
        def setup(self, bottom, top):
            raise RuntimeError('setup exploded')
''')


@pytest.fixture(scope='module')
def pymodule(tmp_path_factory):
    folder = tmp_path_factory.mktemp('pylayers')
    (folder / 'qc_test_pylayers.py').write_text(MODULE)
    sys.path.insert(0, str(folder))
    yield 'qc_test_pylayers'
    sys.path.remove(str(folder))
    sys.modules.pop('qc_test_pylayers', None)


def python_layer(module, cls, param_str=None, phase='TEST', name='py'):
    pp = dict(module=module, layer=cls)
    if param_str is not None:
        pp['param_str'] = param_str
    return make_layer('Python', phase=phase, name=name, python_param=pp)


def net_text(module):
    return textwrap.dedent('''
        name: "pythonnet" force_backward: true
        layer { name: "input" type: "Input" top: "data"
                input_param { shape { dim: 10 dim: 9 dim: 8 } } }
        layer { type: "Python" name: "one" bottom: "data" top: "one"
                python_param { module: "%(m)s" layer: "SimpleLayer" } }
        layer { type: "Python" name: "two" bottom: "one" top: "two"
                python_param { module: "%(m)s" layer: "SimpleLayer" param_str: "2" } }
        layer { type: "Python" name: "three" bottom: "two" top: "three"
                python_param { module: "%(m)s" layer: "ParameterLayer" } }
        layer { type: "Python" name: "phase" bottom: "three" top: "phase"
                python_param { module: "%(m)s" layer: "PhaseLayer" } }
    ''' % {'m': module})


def build_net(module, phase):
    from qcaffe.io import parse_prototxt_text
    from qcaffe.net import Net
    from qcaffe.proto import caffe_pb2
    param = parse_prototxt_text(net_text(module), caffe_pb2.NetParameter())
    return Net(param, phase)


def test_forward_backward_param_str_and_phase_in_a_net(pymodule):
    from qcaffe.proto import caffe_pb2
    net = build_net(pymodule, caffe_pb2.TRAIN)
    x = np.random.RandomState(0).randn(10, 9, 8).astype(np.float32)
    net.blob_by_name('data').data[...] = x
    net.forward_prefilled()
    np.testing.assert_allclose(net.blob_by_name('three').data, 20 * x, rtol=1e-6)
    assert float(net.blob_by_name('phase').data) == caffe_pb2.TRAIN
    net.blob_by_name('three').diff[...] = 1
    net.backward_from_to(net.layer_index('three'))
    np.testing.assert_allclose(net.blob_by_name('data').diff, 20.0)
    # The user's blobs are the layer's learnable params: the solver sees and updates them.
    layer = net.layers[net.layer_index('three')]
    assert layer.blobs[0].diff[0] == 10 * 9 * 8
    assert any(p is layer.blobs[0] for p in net.learnable_params)
    layer.blobs[0].data[0] = 1
    net.forward_prefilled()
    np.testing.assert_allclose(net.blob_by_name('three').data, 20 * x + 1, rtol=1e-6)
    # pycaffe scripts read user attributes through net.layers
    assert net.layers[net.layer_index('two')].value == 2.0
    assert float(build_net(pymodule, caffe_pb2.TEST).forward_prefilled()[0][0].data) == 1


def test_reshape_runs_before_every_forward(pymodule):
    layer = python_layer(pymodule, 'SimpleLayer', '3')
    bottom, top = [Blob(2, 3)], [Blob()]
    layer.setup(bottom, top)
    bottom[0].reshape(4, 5)
    bottom[0].data[...] = 1
    layer.forward(bottom, top)
    assert top[0].shape == (4, 5) and (top[0].data == 3).all()


def test_gradient_of_a_python_layer(pymodule):
    layer = python_layer(pymodule, 'SquareLayer')
    bottom = [Blob(2, 3, 4)]
    bottom[0].data[...] = np.random.RandomState(1).randn(2, 3, 4)
    check_gradient(layer, bottom, [Blob()], step=1e-2, threshold=1e-2)


def test_setup_exception_keeps_its_type_out_of_the_net(pymodule):
    # pycaffe's test_exception: caffe.Net(...) raises the layer's RuntimeError.
    from qcaffe.io import parse_prototxt_text
    from qcaffe.net import Net
    from qcaffe.proto import caffe_pb2
    text = ('name: "x" layer { name: "in" type: "Input" top: "d" input_param { shape { dim: 1 '
            '} } } layer { type: "Python" name: "boom" bottom: "d" top: "t" python_param { '
            'module: "%s" layer: "ExceptionLayer" } }' % pymodule)
    param = parse_prototxt_text(text, caffe_pb2.NetParameter())
    with pytest.raises(Exception) as e:
        Net(param, caffe_pb2.TEST)
    chain = e.value.__cause__ or e.value
    assert isinstance(chain, RuntimeError) and 'setup exploded' in str(e.value)
    notes = getattr(chain, '__notes__', [])
    assert any("'boom'" in n and 'ExceptionLayer' in n for n in notes)


def test_pycaffe_net_raises_runtime_error(pymodule, tmp_path):
    caffe = pytest.importorskip('qcaffe.pycaffe')
    path = tmp_path / 'exc.prototxt'
    path.write_text('name: "x" layer { name: "in" type: "Input" top: "d" input_param { shape '
                    '{ dim: 1 } } } layer { type: "Python" name: "boom" bottom: "d" top: "t" '
                    'python_param { module: "%s" layer: "ExceptionLayer" } }' % pymodule)
    with pytest.raises(RuntimeError):
        caffe.Net(str(path), caffe.TEST)


def test_module_found_in_working_directory(tmp_path, monkeypatch):
    (tmp_path / 'qc_cwd_layer.py').write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', str(tmp_path))])
    try:
        layer = python_layer('qc_cwd_layer', 'SimpleLayer')
        assert layer.py.__class__.__name__ == 'SimpleLayer'
    finally:
        sys.modules.pop('qc_cwd_layer', None)


def test_clear_errors_for_bad_python_param(pymodule):
    with pytest.raises(LayerError, match=r"'py'.*cannot import module 'no_such_mod_xyz'"):
        python_layer('no_such_mod_xyz', 'X')
    with pytest.raises(LayerError, match=r"has no class 'Nope'.*SimpleLayer"):
        python_layer(pymodule, 'Nope')
    with pytest.raises(LayerError, match='module and python_param.layer are both required'):
        make_layer('Python', python_param=dict(module=pymodule))
