"""The layer types label-free compression brings: Quant (act_quantize.cu of
CAS-CLab/Label-free-Network-Compression, GPU semantics, compression.md 4(g)#1) and
DepthwiseConvolution (the MobileNet forks' type, which the original quantizes)."""
import numpy as np
import pytest

from qcaffe.blob import Blob
from qcaffe.layers.base import LayerError
from qcaffe.testing import check_gradient, make_layer
from layer_helpers import _seed, blob, run  # noqa: F401  (_seed: autouse fixture)


def quant(step, bits=None):
    relu = {'negative_slope': step}
    if bits is not None:
        relu['quant_bits'] = bits
    return make_layer('Quant', relu_param=relu)


def test_quant_forward_by_hand():
    # step 0.5: codes floor(x/0.5 + 0.5) in 0..127, times the step (the GPU kernel; the CPU
    # one returns the codes)
    x = [-1, 0, 0.2, 0.25, 0.74, 0.75, 10.1, 63.4, 64, 1000]
    want = [0, 0, 0, 0.5, 0.5, 1.0, 10.0, 63.5, 63.5, 63.5]
    y = run(quant(0.5), [blob(x)])[0].data
    np.testing.assert_array_equal(y, want)
    assert y.dtype == np.float32


def test_quant_adds_the_half_exactly():
    # the kernel adds a double 0.5: x/s = 0.49999997 gives code 0 (float32 + 0.5 rounds to 1)
    x = np.float32(0.49999997)
    assert np.floor(x + np.float32(0.5)) == 1
    assert run(quant(1.0), [blob([x, 1.5, 2.5])])[0].data.tolist() == [0, 2, 3]


def test_quant_bits():
    y = run(quant(1.0, bits=4), [blob([3.2, 6.6, 7.4, 50])])[0].data
    np.testing.assert_array_equal(y, [3, 7, 7, 7])   # codes 0 ... 2^3 - 1


def _away_from_boundaries(step, max_code, seed=0):
    """Inputs k + 1/4 steps (far from the rounding boundaries k + 1/2) on both sides of the
    range and inside it, none within two steps of the kinks at 0 and max_code * step."""
    k = np.random.RandomState(seed).randint(-20, max_code + 20, size=60)
    k = k[(np.abs(k) > 2) & (np.abs(k - max_code) > 2)]
    return ((k + 0.25) * step).astype(np.float32)


@pytest.mark.parametrize('bits', [8, 4])
def test_quant_gradient(bits):
    # straight through inside (0, M*s]: with finite differences of exactly one step, each
    # inner element's numeric derivative is 2s/2s = 1 (one code each way), 0 outside
    step = 0.25
    max_code = 2 ** (bits - 1) - 1
    x = _away_from_boundaries(step, max_code)
    layer = quant(step, bits)
    check_gradient(layer, [blob(x)], [Blob()], step=step, threshold=1e-3)
    # and the analytic gradient is what it claims: 1 inside, 0 outside
    top = [Blob()]
    bottom = [blob(x)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, ((x > 0) & (x <= max_code * step)))


def test_quant_in_place_equals_out_of_place():
    x = _away_from_boundaries(0.25, 127, seed=3)
    dy = np.random.RandomState(4).randn(x.size).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = quant(0.25)
        bottom = [blob(x)]
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize('step', [0, -0.1, 'NaN', 'Infinity'])   # JSON spellings
def test_quant_rejects_a_bad_step(step):
    with pytest.raises(LayerError, match=r"'quant'.*negative_slope is the quantization step"):
        run(quant(step), [blob([1.0])])


@pytest.mark.parametrize('bits', [1, 17])
def test_quant_rejects_bits_out_of_range(bits):
    with pytest.raises(LayerError, match=r'quant_bits must be in 2\.\.16'):
        run(quant(0.1, bits), [blob([1.0])])


# ------------------------------------------------------------------- DepthwiseConvolution
def _conv_param(group):
    return dict(num_output=6, kernel_size=[3], pad=[1], group=group,
                weight_filler={'type': 'gaussian', 'std': 0.5},
                bias_filler={'type': 'gaussian', 'std': 0.5})


def test_depthwise_equals_grouped_convolution():
    x = np.random.RandomState(0).randn(2, 6, 5, 5).astype(np.float32)
    dw = make_layer('DepthwiseConvolution', convolution_param=_conv_param(6))
    conv = make_layer('Convolution', convolution_param=_conv_param(6))
    y_dw = run(dw, [blob(x)])[0]
    bottom, top = [blob(x)], [Blob()]
    conv.setup(bottom, top)
    for b_dw, b in zip(dw.blobs, conv.blobs):
        assert b_dw.shape == b.shape
        b.data[...] = b_dw.data
    conv.forward(bottom, top)
    assert dw.blobs[0].shape == (6, 1, 3, 3)
    np.testing.assert_array_equal(y_dw.data, top[0].data)


def test_depthwise_gradient():
    x = np.random.RandomState(1).randn(2, 6, 4, 4).astype(np.float32)
    check_gradient(make_layer('DepthwiseConvolution', convolution_param=_conv_param(6)),
                   [blob(x)], [Blob()], step=1e-2, threshold=1e-2, max_checks=40)


def test_depthwise_needs_one_group_per_channel():
    with pytest.raises(LayerError, match='group equal to the input channels'):
        run(make_layer('DepthwiseConvolution', convolution_param=_conv_param(3)),
            [blob(np.zeros((1, 6, 4, 4)))])
