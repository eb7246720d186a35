"""Common layers: fully connected, embedding, blob plumbing (split, concat, slice, reshape...),
element-wise combination, reductions and softmax.

Caffe equivalents: src/caffe/layers/{inner_product,embed,flatten,reshape,batch_reindex,split,
concat,slice,eltwise,filter,parameter,reduction,silence,argmax,tile,softmax}_layer.cpp.

All code is written once for numpy and cupy (``xp = get_array_module(...)``).  Layers whose
top is only a view of the bottom (Flatten, Reshape, Split, one-input Concat/Slice) share the
bottom's buffers as Caffe does (``Blob.share_data`` / ``share_diff``) instead of copying.

A few helpers used by the other layer modules (neuron, normalization) live here too:
``canonical_axis``, ``param_needs_grad`` and ``scatter_add``.
"""
import numpy as np

from ..backend import get_array_module
from ..blob import Blob
from ..fillers import fill
from ..ops.gemm import gemm
from ..proto import caffe_pb2
from .base import Layer, LayerError, register_layer


# --------------------------------------------------------------------------- helpers
def canonical_axis(layer, blob, axis, field):
    """Caffe: ``CanonicalAxisIndex`` with an error that names the layer and the field."""
    try:
        return blob.canonical_axis_index(int(axis))
    except ValueError:
        raise LayerError('Layer %r (type %s): %s = %d is out of range for a bottom of shape '
                         '%s (valid: %d .. %d)'
                         % (layer.name, layer.type, field, axis, blob.shape_string(),
                            -blob.num_axes, blob.num_axes - 1))


def param_needs_grad(layer, i):
    """Caffe: ``param_propagate_down(i)``; True until the Net says otherwise."""
    ppd = layer.param_propagate_down
    return i >= len(ppd) or bool(ppd[i])


def scatter_add(target, indices, values):
    """``target[indices] += values`` with repeated indices accumulating (numpy ``add.at``)."""
    xp = get_array_module(target)
    if xp is np:
        np.add.at(target, indices, values)
    else:  # cupy: no ufunc.at in older releases; cupyx.scatter_add is the long-standing API
        import cupyx
        cupyx.scatter_add(target, indices, values)


def _check(layer, cond, message, *args):
    if not cond:
        raise LayerError('Layer %r (type %s): %s' % (layer.name, layer.type, message % args))


def _no_in_place(layer, bottom, top):
    _check(layer, all(t is not bottom[0] for t in top),
           '%s Layer does not allow in-place computation.', layer.type)


def _new_filled_blob(layer, shape, filler_param):
    blob = layer.new_blob(tuple(shape))
    fill(blob, filler_param)
    return blob


# ---------------------------------------------------------------------- InnerProduct
@register_layer('InnerProduct')
class InnerProductLayer(Layer):
    """Caffe: InnerProductLayer.  ``y = x_flat W^T + b`` (``x_flat W`` when ``transpose``).

    x is viewed as (M, K) with M = count(0, axis), K = count(axis); W is (N, K), or (K, N)
    with ``transpose``.  One GEMM forward, two backward.  Weights are read only through
    ``self.weight(i)`` so compression can wrap them.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.num_output = int(p.num_output)
        _check(self, self.num_output > 0, 'inner_product_param.num_output must be set and > 0')
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        axis = canonical_axis(self, bottom[0], p.axis, 'inner_product_param.axis')
        self.K = bottom[0].count_range(axis)
        if not self.blobs:
            wshape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
            _new_filled_blob(self, wshape, p.weight_filler)
            if self.bias_term:
                _new_filled_blob(self, (self.num_output,), p.bias_filler)
        self._dw_tmp = None   # reused product buffer of the weight gradient

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis,
                              'inner_product_param.axis')
        _check(self, bottom[0].count_range(axis) == self.K,
               'Input size incompatible with inner product parameters: bottom %s gives '
               'K = %d from axis %d, the weights expect K = %d',
               bottom[0].shape_string(), bottom[0].count_range(axis), axis, self.K)
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    # The GEMMs run on qcaffe's threads in fixed chunks of the output (qcaffe.ops.gemm).
    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data.reshape(self.M, self.K)
        y = top[0].mutable_dev_data.reshape(self.M, self.num_output)
        xp = get_array_module(x)
        w = self.weight(0)
        if self.transpose:
            gemm(x, w, y, xp)
        else:
            # y^T = W x^T: OpenBLAS runs it with the weights as the row-major left operand,
            # ~25 % faster than x W^T with them as a transposed right one (LeNet ip1)
            yt = getattr(self, '_yt', None)
            if yt is None or yt.shape != y.shape[::-1] or get_array_module(yt) is not xp:
                yt = self._yt = xp.empty(y.shape[::-1], dtype=y.dtype)
            gemm(w, x.T, yt, xp)
            xp.copyto(y, yt.T)
        if self.bias_term:
            y += self.weight(1)

    def backward_impl(self, top, propagate_down, bottom):
        dy = top[0].dev_diff.reshape(self.M, self.num_output)
        xp = get_array_module(dy)
        if param_needs_grad(self, 0):
            x = bottom[0].dev_data.reshape(self.M, self.K)
            dw = self.blobs[0].mutable_dev_diff
            tmp = getattr(self, '_dw_tmp', None)
            if tmp is None or tmp.shape != dw.shape or get_array_module(tmp) is not xp:
                tmp = self._dw_tmp = xp.empty(dw.shape, dtype=dw.dtype)
            # dw (N, K) += dy^T x, or transposed (K, N) += x^T dy
            a, c = (x, dy) if self.transpose else (dy, x)
            gemm(a.T, c, dw, xp, acc=tmp)
        if self.bias_term and param_needs_grad(self, 1):
            db = self.blobs[1].mutable_dev_diff
            db += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.weight(0)
            gemm(dy, w.T if self.transpose else w,
                          bottom[0].mutable_dev_diff.reshape(self.M, self.K), xp)


# ----------------------------------------------------------------------------- Embed
@register_layer('Embed')
class EmbedLayer(Layer):
    """Caffe: EmbedLayer.  Integer indices (any shape) -> rows of W (input_dim, num_output)
    plus bias; the top has one more axis of size num_output.  No gradient to the indices."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        _check(self, self.num_output > 0, 'EmbedLayer num_output must be positive.')
        _check(self, self.input_dim > 0, 'EmbedLayer input_dim must be positive.')
        self.bias_term = p.bias_term
        if not self.blobs:
            _new_filled_blob(self, (self.input_dim, self.num_output), p.weight_filler)
            if self.bias_term:
                _new_filled_blob(self, (self.num_output,), p.bias_filler)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        x = bottom[0].dev_data.ravel()
        xp = get_array_module(x)
        idx = x.astype(np.int64)  # Caffe: static_cast<int> (truncation)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.input_dim):
            raise LayerError('Layer %r (type Embed): indices must lie in [0, input_dim = %d), '
                             'got values in [%d, %d]' % (self.name, self.input_dim,
                                                         int(idx.min()), int(idx.max())))
        return xp, idx

    def forward_impl(self, bottom, top):
        xp, idx = self._indices(bottom)
        y = top[0].mutable_dev_data.reshape(idx.size, self.num_output)
        xp.take(self.weight(0), idx, axis=0, out=y)
        if self.bias_term:
            y += self.weight(1)

    def backward_impl(self, top, propagate_down, bottom):
        _check(self, not propagate_down[0], "Can't backpropagate to EmbedLayer input.")
        dy = top[0].dev_diff.reshape(-1, self.num_output)
        if param_needs_grad(self, 0):
            _, idx = self._indices(bottom)
            scatter_add(self.blobs[0].mutable_dev_diff, idx, dy)
        if self.bias_term and param_needs_grad(self, 1):
            db = self.blobs[1].mutable_dev_diff
            db += dy.sum(axis=0)


# ------------------------------------------------------------------ shape-only views
class _ViewLayer(Layer):
    """A top that is the bottom with another shape: data and diff are shared, nothing to do
    in forward/backward (Caffe: Flatten, Reshape)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        _no_in_place(self, bottom, top)

    def top_shape(self, bottom):
        raise NotImplementedError

    def reshape(self, bottom, top):
        top[0].reshape(self.top_shape(bottom[0]))
        _check(self, top[0].count == bottom[0].count,
               'output count must match input count (%s vs %s)',
               top[0].shape_string(), bottom[0].shape_string())
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        pass


@register_layer('Flatten')
class FlattenLayer(_ViewLayer):
    """Caffe: FlattenLayer.  Axes [axis, end_axis] become one axis."""

    def top_shape(self, bottom):
        p = self.layer_param.flatten_param
        start = canonical_axis(self, bottom, p.axis, 'flatten_param.axis')
        end = canonical_axis(self, bottom, p.end_axis, 'flatten_param.end_axis')
        shape = bottom.shape
        return shape[:start] + (bottom.count_range(start, end + 1),) + shape[end + 1:]


@register_layer('Reshape')
class ReshapeLayer(_ViewLayer):
    """Caffe: ReshapeLayer.  reshape_param.shape replaces axes [axis, axis + num_axes); a 0
    copies the bottom's dim at that position, a single -1 is inferred from the count."""

    def layer_setup(self, bottom, top):
        _ViewLayer.layer_setup(self, bottom, top)
        dims = list(self.layer_param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        _check(self, len(inferred) <= 1, 'new shape contains multiple -1 dims; at most a '
               'single (1) value of -1 may be specified')
        _check(self, all(d >= -1 for d in dims), 'reshape_param.shape dims must be >= -1 '
               '(0 = copy, -1 = infer), got %s', dims)
        self.inferred_axis = inferred[0] if inferred else -1
        self.constant_count = int(np.prod([d for d in dims if d > 0], dtype=np.int64))
        self.new_dims = dims

    def top_shape(self, bottom):
        p = self.layer_param.reshape_param
        n = bottom.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        _check(self, 0 <= start <= n, 'reshape_param.axis %d out of range for %d-D input '
               'blob', p.axis, n)
        _check(self, p.num_axes >= -1, 'reshape_param.num_axes must be >= 0, or -1 for all')
        end = n if p.num_axes == -1 else start + p.num_axes
        _check(self, end <= n, 'end_axis = axis + num_axes (%d) is out of range for %d-D '
               'input blob', end, n)
        shape = list(bottom.shape[:start]) + list(self.new_dims) + list(bottom.shape[end:])
        for i in self.copy_axes:
            _check(self, start + i < n, 'new shape contains a 0, but there was no '
                   'corresponding bottom axis to copy')
            shape[start + i] = bottom.shape[start + i]
        if self.inferred_axis >= 0:
            explicit = (self.constant_count * bottom.count_range(0, start) *
                        bottom.count_range(end))
            for i in self.copy_axes:
                explicit *= shape[start + i]
            _check(self, explicit > 0 and bottom.count % explicit == 0,
                   'bottom count (%d) must be divisible by the product of the specified '
                   'dimensions (%d)', bottom.count, explicit)
            shape[start + self.inferred_axis] = bottom.count // explicit
        return tuple(shape)


# ---------------------------------------------------------------------- BatchReindex
@register_layer('BatchReindex')
class BatchReindexLayer(Layer):
    """Caffe: BatchReindexLayer.  top[k] = bottom0[int(bottom1[k])] along the first axis;
    backward scatters (and sums) the top diff back.  No gradient to the indices."""
    exact_num_bottom = 2
    exact_num_top = 1

    def reshape(self, bottom, top):
        _check(self, bottom[1].num_axes == 1, 'the index bottom must be 1-D, got %s',
               bottom[1].shape_string())
        top[0].reshape(bottom[1].shape[:1] + bottom[0].shape[1:])

    def _indices(self, bottom):
        idx = bottom[1].dev_data.astype(np.int64)
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            _check(self, lo >= 0, 'Index specified for reindex layer was negative.')
            _check(self, hi < bottom[0].shape[0], 'Index specified for reindex layer was '
                   'greater than batch size.')
        return idx

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data
        xp = get_array_module(x)
        xp.take(x, self._indices(bottom), axis=0, out=top[0].mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        _check(self, not propagate_down[1], 'Cannot backprop to index.')
        if propagate_down[0]:
            dx = bottom[0].mutable_dev_diff
            dx.fill(0)
            scatter_add(dx, self._indices(bottom), top[0].dev_diff)


# ------------------------------------------------------------------------------ Split
@register_layer('Split')
class SplitLayer(Layer):
    """Caffe: SplitLayer.  Every top shares the bottom's data (no copy); each keeps its own
    diff, and backward sums the top diffs into the bottom diff."""
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        for t in top:
            t.reshape_like(bottom[0])
            t.share_data(bottom[0])

    def forward_impl(self, bottom, top):
        for t in top:  # Caffe re-shares in Forward (the bottom may have been reallocated)
            t.share_data(bottom[0])

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].mutable_dev_diff
        xp = get_array_module(dx)
        if len(top) == 1:
            dx[...] = top[0].dev_diff
            return
        xp.add(top[0].dev_diff, top[1].dev_diff, out=dx)
        for t in top[2:]:
            dx += t.dev_diff


# ----------------------------------------------------------------------- Concat/Slice
def _legacy_axis(layer, blob, param, legacy_field, what):
    """axis, or the deprecated uint32 ``concat_dim`` / ``slice_dim`` when that one is set."""
    if param.HasField(legacy_field):
        axis = int(getattr(param, legacy_field))
        _check(layer, 0 <= axis < blob.num_axes, '%s_param.%s = %d out of range for a %d-axis '
               'bottom', what, legacy_field, axis, blob.num_axes)
        return axis
    return canonical_axis(layer, blob, param.axis, '%s_param.axis' % what)


def _check_axis_fields(layer, param, legacy_field, what):
    _check(layer, not (param.HasField('axis') and param.HasField(legacy_field)),
           'Either axis or %s should be specified; not both.', legacy_field)


@register_layer('Concat')
class ConcatLayer(Layer):
    """Caffe: ConcatLayer.  Bottoms joined along ``axis`` (legacy ``concat_dim``)."""
    min_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        _check_axis_fields(self, self.layer_param.concat_param, 'concat_dim', 'concat')

    def reshape(self, bottom, top):
        b0 = bottom[0]
        self.axis = _legacy_axis(self, b0, self.layer_param.concat_param, 'concat_dim',
                                 'concat')
        shape = list(b0.shape)
        for i, b in enumerate(bottom[1:], 1):
            _check(self, b.num_axes == b0.num_axes, 'All inputs must have the same #axes '
                   '(bottom[0] %s, bottom[%d] %s)', b0.shape_string(), i, b.shape_string())
            for j in range(b0.num_axes):
                _check(self, j == self.axis or b.shape[j] == b0.shape[j],
                       'All inputs must have the same shape, except at concat_axis '
                       '(bottom[0] %s, bottom[%d] %s, axis %d)', b0.shape_string(), i,
                       b.shape_string(), self.axis)
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)
        self.outer = b0.count_range(0, self.axis)
        self.inner = b0.count_range(self.axis + 1)
        if len(bottom) == 1:
            top[0].share_data(b0)
            top[0].share_diff(b0)

    def _slices(self, blobs):
        off = 0
        for b in blobs:
            n = b.shape[self.axis]
            yield b, slice(off, off + n)
            off += n

    def forward_impl(self, bottom, top):
        if len(bottom) == 1:
            return
        y = top[0].mutable_dev_data.reshape(self.outer, -1, self.inner)
        for b, s in self._slices(bottom):
            y[:, s, :] = b.dev_data.reshape(self.outer, -1, self.inner)

    def backward_impl(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].dev_diff.reshape(self.outer, -1, self.inner)
        for (b, s), pd in zip(self._slices(bottom), propagate_down):
            if pd:
                b.mutable_dev_diff.reshape(self.outer, -1, self.inner)[...] = dy[:, s, :]


@register_layer('Slice')
class SliceLayer(Layer):
    """Caffe: SliceLayer.  The bottom cut along ``axis`` (legacy ``slice_dim``) at the
    ``slice_point``s, or into equal parts when none is given."""
    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.slice_param
        _check_axis_fields(self, p, 'slice_dim', 'slice')
        self.slice_points = [int(v) for v in p.slice_point]

    def reshape(self, bottom, top):
        b = bottom[0]
        self.axis = _legacy_axis(self, b, self.layer_param.slice_param, 'slice_dim', 'slice')
        dim = b.shape[self.axis]
        if self.slice_points:
            _check(self, len(self.slice_points) == len(top) - 1,
                   'slice_point must be given once per top but one (%d tops, %d points)',
                   len(top), len(self.slice_points))
            _check(self, len(top) <= dim, 'slice axis: %d, bottom[0] shape: %s has fewer '
                   'entries than the %d tops', self.axis, b.shape_string(), len(top))
            sizes, prev = [], 0
            for pt in self.slice_points + [dim]:
                _check(self, pt > prev, 'slice points must be strictly increasing and lie '
                       'inside the slice axis (size %d), got %s', dim, self.slice_points)
                sizes.append(pt - prev)
                prev = pt
        else:
            _check(self, dim % len(top) == 0, 'Number of top blobs (%d) should evenly divide '
                   'input slice axis (%d)', len(top), dim)
            sizes = [dim // len(top)] * len(top)
        shape = list(b.shape)
        for t, n in zip(top, sizes):
            shape[self.axis] = n
            t.reshape(shape)
        self.sizes = sizes
        self.outer = b.count_range(0, self.axis)
        self.inner = b.count_range(self.axis + 1)
        if len(top) == 1:
            top[0].share_data(b)
            top[0].share_diff(b)

    def _slices(self):
        off = 0
        for n in self.sizes:
            yield slice(off, off + n)
            off += n

    def forward_impl(self, bottom, top):
        if len(top) == 1:
            return
        x = bottom[0].dev_data.reshape(self.outer, -1, self.inner)
        for t, s in zip(top, self._slices()):
            t.mutable_dev_data.reshape(self.outer, -1, self.inner)[...] = x[:, s, :]

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        dx = bottom[0].mutable_dev_diff.reshape(self.outer, -1, self.inner)
        for t, s in zip(top, self._slices()):
            dx[:, s, :] = t.dev_diff.reshape(self.outer, -1, self.inner)


# ---------------------------------------------------------------------------- Eltwise
_ELTWISE = caffe_pb2.EltwiseParameter


@register_layer('Eltwise')
class EltwiseLayer(Layer):
    """Caffe: EltwiseLayer.  PROD, SUM (with one coeff per bottom) or MAX of same-shaped
    bottoms.  MAX keeps the argmax (ties between bottoms 0 and 1 go to 1, later bottoms must be
    strictly greater), and backward routes the gradient there."""
    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        _check(self, len(p.coeff) in (0, len(bottom)),
               'Eltwise Layer takes one coefficient per bottom blob (%d bottoms, %d coeff).',
               len(bottom), len(p.coeff))
        _check(self, not (p.operation == _ELTWISE.PROD and len(p.coeff)),
               'Eltwise layer only takes coefficients for summation.')
        _check(self, p.operation in (_ELTWISE.PROD, _ELTWISE.SUM, _ELTWISE.MAX),
               'unknown eltwise_param.operation %d (valid: PROD, SUM, MAX)', p.operation)
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self._argmax = Blob()  # float32 indices of the winning bottom (MAX)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            _check(self, b.shape == bottom[0].shape, 'bottom[0]: %s, bottom[%d]: %s',
                   bottom[0].shape_string(), i, b.shape_string())
        top[0].reshape_like(bottom[0])
        if self.op == _ELTWISE.MAX:
            self._argmax.reshape_like(bottom[0])

    def forward_impl(self, bottom, top):
        xs = [b.dev_data for b in bottom]
        y = top[0].mutable_dev_data
        xp = get_array_module(y)
        if self.op == _ELTWISE.PROD:
            xp.multiply(xs[0], xs[1], out=y)
            for x in xs[2:]:
                y *= x
        elif self.op == _ELTWISE.SUM:
            xp.multiply(xs[0], self.coeffs[0], out=y)
            for x, c in zip(xs[1:], self.coeffs[1:]):
                y += x if c == 1 else x * c
        else:
            first = xs[0] > xs[1]
            mask = self._argmax.mutable_dev_data
            mask[...] = ~first  # 0 where bottom 0 wins, 1 otherwise (ties -> bottom 1)
            y[...] = xp.where(first, xs[0], xs[1])
            for i, x in enumerate(xs[2:], 2):
                better = x > y
                xp.copyto(y, x, where=better)
                xp.copyto(mask, np.float32(i), where=better)

    def backward_impl(self, top, propagate_down, bottom):
        dy = top[0].dev_diff
        xp = get_array_module(dy)
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.mutable_dev_diff
            if self.op == _ELTWISE.PROD:
                if self.stable_prod_grad:
                    others = [o.dev_data for j, o in enumerate(bottom) if j != i]
                    g = others[0].copy()
                    for o in others[1:]:
                        g *= o
                else:
                    g = top[0].dev_data / b.dev_data
                xp.multiply(g, dy, out=dx)
            elif self.op == _ELTWISE.SUM:
                xp.multiply(dy, self.coeffs[i], out=dx)
            else:
                xp.multiply(dy, self._argmax.dev_data == i, out=dx)


# ----------------------------------------------------------------------------- Filter
@register_layer('Filter')
class FilterLayer(Layer):
    """Caffe: FilterLayer.  The last bottom is a selector (N, 1, ...); each top gets the items
    of the matching bottom whose selector is non-zero.  Output shapes depend on the selector's
    values, so reshape runs every forward; the very first reshape keeps all N items."""
    min_bottom = 2
    min_top = 1
    reshape_every_forward = True

    def layer_setup(self, bottom, top):
        _check(self, len(top) == len(bottom) - 1, 'Top blobs must be as many as bottoms '
               'minus the selector (%d bottoms, %d tops)', len(bottom), len(top))
        self._first_reshape = True
        self.indices = None
        self._selector_index = len(bottom) - 1

    def reshape(self, bottom, top):
        sel = bottom[-1]
        _check(self, all(d == 1 for d in sel.shape[1:]), 'Selector blob dimensions must be '
               'singletons (1), except the first; got %s', sel.shape_string())
        for b in bottom[:-1]:
            _check(self, b.shape[0] == sel.shape[0], 'Each bottom should have the same 0th '
                   'dimension as the selector blob (%s vs %s)', b.shape_string(),
                   sel.shape_string())
        s = sel.dev_data.ravel()
        xp = get_array_module(s)
        self.indices = xp.nonzero(s)[0]
        n = int(self.indices.size)
        if self._first_reshape:
            n = sel.shape[0]
            self._first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward_impl(self, bottom, top):
        for t, b in zip(top, bottom):
            x = b.dev_data
            xp = get_array_module(x)
            xp.take(x, self.indices, axis=0, out=t.mutable_dev_data)

    def backward_impl(self, top, propagate_down, bottom):
        _check(self, not propagate_down[-1], 'Layer cannot backpropagate to filter index '
               'inputs')
        for t, b, pd in zip(top, bottom, propagate_down):
            if pd:
                dx = b.mutable_dev_diff
                dx.fill(0)
                dx[self.indices] = t.dev_diff

    def allow_force_backward(self, bottom_index):
        # force_backward must not reach the selector, whose backward is an error
        return bottom_index != getattr(self, '_selector_index', len(self.layer_param.bottom) - 1)


# -------------------------------------------------------------------------- Parameter
@register_layer('Parameter')
class ParameterLayer(Layer):
    """Caffe: ParameterLayer.  A learnable blob of parameter_param.shape exposed as the top
    (data and diff shared with the blob, so consumers write its gradient directly)."""
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        shape = tuple(self.layer_param.parameter_param.shape.dim)
        if not self.blobs:
            self.new_blob(shape)
        top[0].reshape(shape)

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        top[0].share_data(self.blobs[0])
        top[0].share_diff(self.blobs[0])

    def backward_impl(self, top, propagate_down, bottom):
        pass


# -------------------------------------------------------------------------- Reduction
_REDUCTION = caffe_pb2.ReductionParameter


@register_layer('Reduction')
class ReductionLayer(Layer):
    """Caffe: ReductionLayer.  Reduces all axes from ``axis`` on with SUM, ASUM, SUMSQ or MEAN,
    times ``coeff``; the top keeps the axes before ``axis`` (0 axes when axis = 0)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.reduction_param
        _check(self, p.operation in (_REDUCTION.SUM, _REDUCTION.ASUM, _REDUCTION.SUMSQ,
                                     _REDUCTION.MEAN),
               'unknown reduction_param.operation %d (valid: SUM, ASUM, SUMSQ, MEAN)',
               p.operation)
        self.op = p.operation

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        axis = canonical_axis(self, bottom[0], p.axis, 'reduction_param.axis')
        top[0].reshape(bottom[0].shape[:axis])
        self.num = bottom[0].count_range(0, axis)
        self.dim = bottom[0].count_range(axis)
        self.coeff = p.coeff / self.dim if self.op == _REDUCTION.MEAN else p.coeff

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data.reshape(self.num, self.dim)
        y = top[0].mutable_dev_data.reshape(self.num)
        xp = get_array_module(x)
        if self.op == _REDUCTION.ASUM:
            xp.abs(x).sum(axis=1, out=y)
        elif self.op == _REDUCTION.SUMSQ:
            xp.square(x).sum(axis=1, out=y)
        else:
            x.sum(axis=1, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = (top[0].dev_diff.reshape(self.num, 1) * self.coeff)
        dx = bottom[0].mutable_dev_diff.reshape(self.num, self.dim)
        xp = get_array_module(dx)
        if self.op == _REDUCTION.ASUM:
            xp.multiply(xp.sign(bottom[0].dev_data.reshape(self.num, self.dim)), g, out=dx)
        elif self.op == _REDUCTION.SUMSQ:
            xp.multiply(bottom[0].dev_data.reshape(self.num, self.dim), 2 * g, out=dx)
        else:
            dx[...] = g


# ---------------------------------------------------------------------------- Silence
@register_layer('Silence')
class SilenceLayer(Layer):
    """Caffe: SilenceLayer.  Consumes its bottoms; backward writes zero gradients."""
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward_impl(self, bottom, top):
        pass

    def backward_impl(self, top, propagate_down, bottom):
        for b, pd in zip(bottom, propagate_down):
            if pd:
                b.mutable_dev_diff.fill(0)


# ----------------------------------------------------------------------------- ArgMax
@register_layer('ArgMax')
class ArgMaxLayer(Layer):
    """Caffe: ArgMaxLayer.  Indices (and with out_max_val the values) of the top_k largest
    entries, per item over count(1) or along ``axis``.  Order as Caffe's partial_sort of
    (value, index) pairs with std::greater: by value, ties to the higher index.  No backward.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = p.out_max_val
        self.top_k = int(p.top_k)
        _check(self, self.top_k >= 1, 'top k must not be less than 1.')
        self.has_axis = p.HasField('axis')
        if self.has_axis:
            axis = canonical_axis(self, bottom[0], p.axis, 'argmax_param.axis')
            _check(self, self.top_k <= bottom[0].shape[axis], 'top_k must be less than or '
                   'equal to the dimension of the axis.')
        else:
            _check(self, self.top_k <= bottom[0].count_range(1), 'top_k must be less than or '
                   'equal to the dimension of the flattened bottom blob per instance.')

    def reshape(self, bottom, top):
        b = bottom[0]
        if self.has_axis:
            self.axis = canonical_axis(self, b, self.layer_param.argmax_param.axis,
                                       'argmax_param.axis')
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def forward_impl(self, bottom, top):
        b = bottom[0]
        x = b.dev_data
        xp = get_array_module(x)
        if self.has_axis:
            outer, dim = b.count_range(0, self.axis), b.shape[self.axis]
            x3 = x.reshape(outer, dim, -1)
        else:
            x3 = x.reshape(b.shape[0], -1, 1)
            dim = x3.shape[1]
        # Reverse the axis so a stable ascending sort of -x puts equal values in
        # descending index order, as std::greater on (value, index) pairs does.
        rev = x3[:, ::-1, :]
        if self.top_k == 1:
            order = xp.argmax(rev, axis=1)[:, None, :]
        else:
            order = xp.argsort(-rev, axis=1, kind='stable')[:, :self.top_k, :]
        idx = (dim - 1) - order
        y = top[0].mutable_dev_data
        if self.has_axis:
            y3 = y.reshape(x3.shape[0], self.top_k, -1)
            if self.out_max_val:
                y3[...] = xp.take_along_axis(x3, idx, axis=1)
            else:
                y3[...] = idx
        else:
            y2 = y.reshape(b.shape[0], -1)
            k = self.top_k
            y2[:, :k] = idx[:, :, 0]
            if self.out_max_val:
                y2[:, k:2 * k] = xp.take_along_axis(x3, idx, axis=1)[:, :, 0]


# ------------------------------------------------------------------------------- Tile
@register_layer('Tile')
class TileLayer(Layer):
    """Caffe: TileLayer.  Repeats the block from ``axis`` on ``tiles`` times along ``axis``."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.tile_param
        self.axis = canonical_axis(self, bottom[0], p.axis, 'tile_param.axis')
        _check(self, p.HasField('tiles'), 'Number of tiles must be specified')
        _check(self, p.tiles > 0, 'Number of tiles must be positive.')
        self.tiles = int(p.tiles)
        shape = list(bottom[0].shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(shape)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)

    def forward_impl(self, bottom, top):
        y = top[0].mutable_dev_data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].dev_data.reshape(self.outer, 1, self.inner)

    def backward_impl(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].dev_diff.reshape(self.outer, self.tiles, self.inner)
            dy.sum(axis=1, out=bottom[0].mutable_dev_diff.reshape(self.outer, self.inner))


# ---------------------------------------------------------------------------- Softmax
@register_layer('Softmax')
class SoftmaxLayer(Layer):
    """Caffe: SoftmaxLayer.  Softmax along ``axis`` (max subtracted first); in place allowed.
    Backward: dx = (dy - sum(dy * y, axis)) * y."""
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.layer_param.softmax_param.axis,
                                   'softmax_param.axis')
        top[0].reshape_like(bottom[0])
        b = bottom[0]
        self.view = (b.count_range(0, self.axis), b.shape[self.axis],
                     b.count_range(self.axis + 1))

    def forward_impl(self, bottom, top):
        x = bottom[0].dev_data.reshape(self.view)
        y = top[0].mutable_dev_data.reshape(self.view)
        xp = get_array_module(x)
        m = x.max(axis=1, keepdims=True)
        xp.subtract(x, m, out=y)
        xp.exp(y, out=y)
        y /= y.sum(axis=1, keepdims=True)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].dev_data.reshape(self.view)
        dy = top[0].dev_diff.reshape(self.view)
        dx = bottom[0].mutable_dev_diff.reshape(self.view)
        xp = get_array_module(y)
        dot = (dy * y).sum(axis=1, keepdims=True)
        xp.subtract(dy, dot, out=dx)
        dx *= y
