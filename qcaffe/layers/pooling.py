"""Pooling and spatial pyramid pooling.

Caffe equivalents: src/caffe/layers/pooling_layer.{cpp,cu}, spp_layer.cpp.

Geometry is Caffe's exactly (caffe.md 3.10, trap 2): CEIL rounding by default (FLOOR with
``round_mode``), and, only when there is padding, the "last window must start inside the image
or the left/top padding" clip.  Every window is a slice of one padded buffer (qcaffe.ops.im2col
``ConvGeometry`` / ``tap_slices``) whose border is -inf for MAX (padding never wins) and 0 for
AVE/STOCHASTIC, so no Python loop runs over pixels or images -- only over the kernel rows and
columns.

* MAX: the output takes the FIRST maximum in row-major scan order (Caffe compares with a strict
  ``>``), and the backward sends the gradient to that element only -- ties are common on
  MNIST's black background.  The max is separable: a horizontal pass (first max within each
  window row, remembering its column) and a vertical pass (first row whose row-max is the max),
  which is exactly the row-major first maximum.  In TEST phase without a mask top only the max
  is computed; the argmax is recomputed from the bottom if a backward is asked for.
* AVE: the divisor counts padded cells but not the cells beyond the padded extent created by
  CEIL rounding (``min(start + k, in + pad) - start``); padded cells contribute 0.
* STOCHASTIC: TRAIN samples one element per window with probability proportional to its value
  (Caffe's cumulative-sum rule with a uniform threshold; the gradient goes to the sample); TEST
  outputs ``sum(x^2) / sum(x)`` (0 where the sum is not positive).  Caffe only has this on
  the GPU; here it runs on both.

The window arithmetic (the max with its first-max argmax, the average, the backward routing,
the fast path for disjoint windows) lives in ``qcaffe.ops.pooling``; this module holds the
geometry, the method dispatch and STOCHASTIC pooling, as Caffe's layer does.
"""
import numpy as np

from .. import backend
from ..backend import get_array_module
from ..ops import pooling as pool_ops
from ..ops.im2col import ConvGeometry, kernel_taps, padded, tap_slices
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer

MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
_METHOD_NAMES = {MAX: 'MAX', AVE: 'AVE', STOCHASTIC: 'STOCHASTIC'}


def _err(layer, message, *args):
    return LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


def pooled_size(size, kernel, stride, pad, ceil_mode, any_pad):
    """Caffe's pooled output length for one spatial axis (CEIL/FLOOR + the padding clip)."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if any_pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _hw(p, name, default):
    """PoolingParameter's ``name`` / ``name_h``+``name_w`` pair, as Caffe checks it."""
    sized = 'kernel_size' if name == 'kernel' else name
    h, w = name + '_h', name + '_w'
    if p.HasField(h) or p.HasField(w):
        return int(getattr(p, h)), int(getattr(p, w))
    if p.HasField(sized) or default is None:
        v = int(getattr(p, sized))
        return v, v
    return default, default


@register_layer('Pooling')
class PoolingLayer(Layer):
    """Caffe: PoolingLayer (MAX, AVE, STOCHASTIC; global_pooling; optional MAX "mask" top with
    the argmax as ``h * W + w`` per channel plane)."""
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def check_blob_counts(self, bottom, top):
        Layer.check_blob_counts(self, bottom, top)
        if len(top) > 1 and self.layer_param.pooling_param.pool != MAX:
            raise _err(self, 'only MAX pooling has a second (mask) top; pooling_param.pool '
                       'is %s', _METHOD_NAMES.get(self.layer_param.pooling_param.pool))

    def layer_setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = p.pool
        if self.method not in _METHOD_NAMES:
            raise _err(self, 'unknown pooling_param.pool %d (valid: MAX, AVE, STOCHASTIC)',
                       self.method)
        self.global_pooling = p.global_pooling
        has_k = p.HasField('kernel_size')
        has_kh, has_kw = p.HasField('kernel_h'), p.HasField('kernel_w')
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise _err(self, 'With global_pooling: true Filter size cannot specified '
                           '(remove pooling_param.kernel_size/kernel_h/kernel_w)')
        else:
            if has_k == (has_kh or has_kw):
                raise _err(self, 'Filter size is pooling_param.kernel_size OR kernel_h and '
                           'kernel_w; not both' if has_k else
                           'pooling_param.kernel_size (or kernel_h and kernel_w) is required')
            if not has_k and not (has_kh and has_kw):
                raise _err(self, 'For non-square filters both pooling_param.kernel_h and '
                           'kernel_w are required.')
        for name in ('pad', 'stride'):
            if p.HasField(name) and (p.HasField(name + '_h') or p.HasField(name + '_w')):
                raise _err(self, 'pooling_param.%s is %s OR %s_h and %s_w; not both',
                           name, name, name, name)
            if p.HasField(name + '_h') != p.HasField(name + '_w'):
                raise _err(self, 'pooling_param.%s_h and %s_w are required together',
                           name, name)
        self.pad = _hw(p, 'pad', 0)
        self.stride = _hw(p, 'stride', 1)
        if not self.global_pooling:
            self.kernel = _hw(p, 'kernel', None)
            if min(self.kernel) <= 0:
                raise _err(self, 'pooling_param kernel size must be > 0, got %s',
                           list(self.kernel))
        else:
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise _err(self, 'With global_pooling: true; only pad = 0 and stride = 1 '
                           '(got pad %s, stride %s)', list(self.pad), list(self.stride))
        if min(self.stride) <= 0:
            raise _err(self, 'pooling_param stride must be > 0, got %s', list(self.stride))
        if self.pad != (0, 0):
            if self.method not in (MAX, AVE):
                raise _err(self, 'Padding implemented only for average and max pooling '
                           '(pool is %s)', _METHOD_NAMES[self.method])
            if not self.global_pooling and (self.pad[0] >= self.kernel[0]
                                            or self.pad[1] >= self.kernel[1]):
                raise _err(self, 'pooling_param pad %s must be smaller than the kernel %s',
                           list(self.pad), list(self.kernel))
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._geom = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise _err(self, 'Input must have 4 axes, corresponding to (num, channels, height, '
                       'width); got %s', bottom[0].shape_string())
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kernel = (h, w)
        any_pad = self.pad != (0, 0)
        out = tuple(pooled_size(s, k, st, pd, self.ceil_mode, any_pad) for s, k, st, pd in
                    zip((h, w), self.kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise _err(self, 'pooled output size %s is not positive for bottom %s (kernel %s, '
                       'stride %s, pad %s)', list(out), bottom[0].shape_string(),
                       list(self.kernel), list(self.stride), list(self.pad))
        geom = ConvGeometry((h, w), self.kernel, self.stride, self.pad, out_shape=out)
        if self._geom != geom:
            self._geom = geom
            self._divisor = None
        # stride >= kernel with the padded extent tiled exactly: windows are disjoint blocks
        self.tiled = (self.stride == self.kernel
                      and geom.padded_shape == (out[0] * self.kernel[0], out[1] * self.kernel[1]))
        self.is_global = out == (1, 1) and self.kernel == (h, w) and not any_pad
        for t in top:
            t.reshape((n, c) + out)
        self._arg = None

    # ------------------------------------------------------------------ forward
    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        y = top[0].mutable_dev_data
        self._arg = None
        if self.method == MAX:
            want_arg = len(top) > 1 or self.phase == caffe_pb2.TRAIN
            if want_arg:
                self._arg = self._max_argmax(x, y)
                if len(top) > 1:
                    self._write_mask(top[1].mutable_dev_data)
            else:
                self._max_only(x, y)
        elif self.method == AVE:
            self._average(x, y)
        elif self.phase == caffe_pb2.TRAIN:
            self._arg = self._stochastic_train(x, y)
        else:
            self._stochastic_test(x, y)

    def _windows(self, x, fill):
        """[(tap index, window view (N, C, PH, PW))] in row-major order, over x padded with
        ``fill``."""
        geom = self._geom
        xpad = padded(x, geom, fill, name=('pad', fill))
        return [(t, xpad[(slice(None), slice(None)) + tap_slices(geom, tap)])
                for t, tap in enumerate(kernel_taps(geom.kernel))]

    def _max_only(self, x, y):
        xp = get_array_module(x)
        if self.is_global:
            xp.max(x.reshape(x.shape[:2] + (-1,)), axis=-1, out=y.reshape(y.shape[:2]))
            return
        pool_ops.max_pool(padded(x, self._geom, -np.inf, name=('pad', -np.inf)), y,
                          self._geom)

    def _max_argmax(self, x, y):
        """Max with Caffe's first-max argmax; returns the tap index (i*kw + j) per output."""
        xp = get_array_module(x)
        if self.is_global:
            flat = x.reshape(x.shape[:2] + (-1,))
            arg = xp.argmax(flat, axis=-1)  # first occurrence == Caffe's strict '>' scan
            xp.copyto(y.reshape(y.shape[:2]),
                      xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0])
            return arg.reshape(y.shape).astype(np.int32)
        return pool_ops.max_pool_argmax(
            padded(x, self._geom, -np.inf, name=('pad', -np.inf)), y, self._geom, self.tiled)

    def _write_mask(self, mask):
        """Caffe's mask top: argmax as h*W + w within the channel plane (float)."""
        xp = get_array_module(mask)
        geom = self._geom
        kw = self.kernel[1]
        ph, pw = geom.out_shape
        w_in = geom.in_shape[1]
        i, j = self._arg // kw, self._arg % kw
        hs = (xp.arange(ph, dtype=np.int32) * self.stride[0] - self.pad[0]).reshape(ph, 1)
        ws = (xp.arange(pw, dtype=np.int32) * self.stride[1] - self.pad[1]).reshape(1, pw)
        mask[...] = (hs + i) * w_in + (ws + j)

    def _avg_divisor(self, xp):
        """Caffe's per-window pool size: window clipped to the padded extent (in + pad)."""
        if self._divisor is None or get_array_module(self._divisor) is not xp:
            geom = self._geom
            sizes = []
            for ax in range(2):
                start = np.arange(geom.out_shape[ax]) * self.stride[ax] - self.pad[ax]
                end = np.minimum(start + self.kernel[ax], geom.in_shape[ax] + self.pad[ax])
                sizes.append(end - start)
            div = np.outer(sizes[0], sizes[1]).astype(np.float32)
            self._divisor = xp.asarray(div)
        return self._divisor

    def _average(self, x, y):
        xp = get_array_module(x)
        if self.is_global:
            xp.sum(x.reshape(x.shape[:2] + (-1,)), axis=-1, out=y.reshape(y.shape[:2]))
            y /= float(x.shape[2] * x.shape[3])
            return
        pool_ops.ave_pool(padded(x, self._geom, 0.0, name=('pad', 0.0)), y, self._geom,
                          self._avg_divisor(xp))

    def _stochastic_train(self, x, y):
        xp = get_array_module(x)
        taps = self._windows(x, 0.0)
        total = taps[0][1].copy()
        for _, win in taps[1:]:
            total += win
        thres = backend.random_uniform(y.shape)  # on the current device
        thres *= total
        cum = xp.zeros(y.shape, dtype=np.float32)
        found = xp.zeros(y.shape, dtype=np.bool_)
        arg = xp.zeros(y.shape, dtype=np.int32)
        y[...] = 0
        for t, win in taps:
            cum += win
            sel = (cum >= thres) & ~found
            xp.copyto(y, win, where=sel)
            xp.copyto(arg, t, where=sel)
            found |= sel
        return arg

    def _stochastic_test(self, x, y):
        xp = get_array_module(x)
        taps = self._windows(x, 0.0)
        s = xp.zeros(y.shape, dtype=np.float32)
        sq = xp.zeros(y.shape, dtype=np.float32)
        for _, win in taps:
            s += win
            sq += win * win
        # Caffe (StoPoolForwardTest): cumsum > 0 ? cumvalues / cumsum : 0
        pos = s > 0
        xp.divide(sq, xp.where(pos, s, 1), out=y)
        y *= pos

    # ----------------------------------------------------------------- backward
    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff
        dx = bottom[0].mutable_dev_diff
        xp = get_array_module(dy)
        if self.method == AVE:
            self._scatter(xp, dy / self._avg_divisor(xp) if not self.is_global else
                          dy / float(dx.shape[2] * dx.shape[3]), dx, None)
            return
        if self._arg is None:
            if self.method != MAX:
                raise _err(self, 'STOCHASTIC pooling has a backward only after a TRAIN-phase '
                           'forward (Caffe keeps the sampled indices of that forward)')
            tmp = xp.empty(dy.shape, dtype=np.float32)
            self._arg = self._max_argmax(bottom[0].dev_data, tmp)
        self._scatter(xp, dy, dx, self._arg)

    def _scatter(self, xp, g, dx, arg):
        """dx = sum over taps of g routed to the tap's input position (all taps if arg is None,
        else only where arg == tap)."""
        if self.is_global:
            flat = dx.reshape(dx.shape[:2] + (-1,))
            if arg is None:
                flat[...] = g.reshape(g.shape[:2] + (1,))
            else:
                pos = xp.arange(flat.shape[-1], dtype=np.int32)
                xp.multiply(pos == arg.reshape(arg.shape[:2] + (1,)),
                            g.reshape(g.shape[:2] + (1,)), out=flat)
            return
        pool_ops.route_back(g, dx, self._geom, arg, self.tiled)


@register_layer('SPP')
class SPPLayer(Layer):
    """Caffe: SPPLayer.  For pyramid level l (0 .. pyramid_height-1) the plane is pooled into
    2^l x 2^l bins (kernel = ceil(size / bins), pad = (kernel*bins - size + 1) // 2, stride =
    kernel), each level is flattened to (N, C*bins^2) and the levels are concatenated along
    axis 1.  With pyramid_height 1 the top is the single pooling's (N, C, 1, 1) output, as in
    Caffe."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.spp_param
        if not p.HasField('pyramid_height') or p.pyramid_height < 1:
            raise _err(self, 'spp_param.pyramid_height must be set and >= 1')
        self.height = int(p.pyramid_height)
        self._shape = None

    def _level_param(self, level, h, w):
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        lp = caffe_pb2.LayerParameter()
        lp.name = '%s_level%d' % (self.name, level)
        lp.type = 'Pooling'
        lp.phase = self.phase
        pp = lp.pooling_param
        pp.pool = self.layer_param.spp_param.pool
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        return lp

    def reshape(self, bottom, top):
        from ..blob import Blob
        if bottom[0].num_axes != 4:
            raise _err(self, 'Input must have 4 axes, corresponding to (num, channels, height, '
                       'width); got %s', bottom[0].shape_string())
        n, c, h, w = bottom[0].shape
        if self._shape != (h, w):
            self._shape = (h, w)
            self.pools = []
            for level in range(self.height):
                layer = PoolingLayer(self._level_param(level, h, w))
                out = Blob()
                try:
                    layer.setup([bottom[0]], [out])
                except LayerError as e:
                    raise _err(self, 'spp_param.pyramid_height %d does not fit a %dx%d input: '
                               'level %d (%d bins) fails as in Caffe: %s', self.height, h, w,
                               level, 2 ** level, e)
                self.pools.append((layer, out))
        for layer, out in self.pools:
            layer.reshape([bottom[0]], [out])
        if self.height == 1:
            top[0].reshape(self.pools[0][1].shape)
        else:
            top[0].reshape(n, sum(out.count_range(1) for _, out in self.pools))

    def forward_impl(self, bottom, top):
        y = top[0].mutable_dev_data.reshape(bottom[0].shape[0], -1)
        off = 0
        for layer, out in self.pools:
            layer.forward_impl(bottom, [out])
            k = out.count_range(1)
            y[:, off:off + k] = out.dev_data.reshape(out.shape[0], k)
            off += k

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].dev_diff.reshape(bottom[0].shape[0], -1)
        xp = get_array_module(dy)
        total = None
        off = 0
        for layer, out in self.pools:
            k = out.count_range(1)
            out.mutable_dev_diff[...] = dy[:, off:off + k].reshape(out.shape)
            off += k
            layer.backward_impl([out], [True], bottom)
            if len(self.pools) > 1:
                if total is None:
                    total = bottom[0].dev_diff.copy()
                else:
                    total += bottom[0].dev_diff
        if total is not None:
            xp.copyto(bottom[0].mutable_dev_diff, total)
