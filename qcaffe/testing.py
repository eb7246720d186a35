"""Numeric gradient checking, Caffe's ``GradientChecker`` approach (test_gradient_check_util.hpp).

The objective is ``sum(top * R)`` over all tops with a fixed random ``R`` (so every output
element contributes with a distinct weight); analytic gradients from ``backward`` are compared
to central differences ``(f(x+h) - f(x-h)) / 2h`` for every element of the checked bottoms
and parameters.  Tolerance as Caffe: ``|a - n| <= threshold * max(|a|, |n|, 1)``.
"""
import numpy as np

from . import backend


def _objective(top, weights):
    return sum(float(np.dot(backend.to_host(t.dev_data).ravel().astype(np.float64), w))
               for t, w in zip(top, weights))


def check_gradient(layer, bottom, top, check_bottom=None, check_params=True, step=1e-2,
                   threshold=1e-3, kink=None, kink_range=-1.0, seed=1701, max_checks=None,
                   setup=True):
    """Compare ``layer``'s backward with central differences; raise AssertionError on mismatch.

    ``check_bottom``: indices of bottoms to check (default: all).  ``max_checks`` samples at
    most that many elements per blob (useful for big blobs).  ``kink``/``kink_range`` skip
    elements where the function is not differentiable (ReLU at 0...), as Caffe does.
    """
    rs = np.random.RandomState(seed)
    if setup:
        layer.setup(bottom, top)
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))
    saved_bottom = [backend.to_host(b.dev_data).copy() for b in bottom]

    def restore():
        for b, s in zip(bottom, saved_bottom):
            b.mutable_dev_data[...] = backend.to_device(s)

    def forward_loss():
        restore()
        layer.forward(bottom, top)
        return _objective(top, weights)

    restore()
    layer.forward(bottom, top)
    weights = [rs.uniform(-1, 1, size=t.count()).astype(np.float64) for t in top]
    # analytic gradients
    for t, w in zip(top, weights):
        t.mutable_dev_diff[...] = backend.to_device(w.reshape(t.shape).astype(np.float32))
    for p in layer.blobs:
        p.mutable_dev_diff[...] = 0
    for b in bottom:
        if not any(b is t for t in top):
            b.mutable_dev_diff[...] = 0
    propagate = [i in check_bottom for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    analytic = {}
    for i in check_bottom:
        analytic[('bottom', i)] = backend.to_host(bottom[i].dev_diff).astype(np.float64).copy()
    if check_params:
        for j, p in enumerate(layer.blobs):
            analytic[('param', j)] = backend.to_host(p.dev_diff).astype(np.float64).copy()

    failures = []
    for (kind, idx), grad in analytic.items():
        blob = bottom[idx] if kind == 'bottom' else layer.blobs[idx]
        n = blob.count()
        elems = np.arange(n)
        if max_checks is not None and n > max_checks:
            elems = rs.choice(n, max_checks, replace=False)
        base = saved_bottom[idx] if kind == 'bottom' else None
        for e in elems:
            if kind == 'bottom':
                x0 = float(base.ravel()[e])
                if kink is not None and abs(x0 - kink) < kink_range:
                    continue
                base.ravel()[e] = x0 + step
                plus = forward_loss()
                base.ravel()[e] = x0 - step
                minus = forward_loss()
                base.ravel()[e] = x0
            else:
                host = blob.data.ravel()
                x0 = float(host[e])
                host[e] = x0 + step
                plus = forward_loss()
                blob.data.ravel()[e] = x0 - step
                minus = forward_loss()
                blob.data.ravel()[e] = x0
            numeric = (plus - minus) / (2 * step)
            a = grad.ravel()[e]
            scale = max(abs(a), abs(numeric), 1.0)
            if abs(a - numeric) > threshold * scale:
                failures.append('%s %d elem %d: analytic %.6g numeric %.6g'
                                % (kind, idx, e, a, numeric))
    restore()
    if failures:
        raise AssertionError('%s %r: %d gradient mismatches, e.g.\n  %s'
                             % (layer.type, layer.name, len(failures),
                                '\n  '.join(failures[:10])))
    return True


def make_layer(type_name, phase='TEST', **params):
    """Build a layer from keyword arguments as NetSpec does: ``make_layer('Pooling',
    pooling_param=dict(kernel_size=2, stride=2))``."""
    from google.protobuf import json_format
    from .proto import caffe_pb2
    from .layers import create_layer
    lp = caffe_pb2.LayerParameter()
    lp.name = params.pop('name', type_name.lower())
    lp.type = type_name
    lp.phase = caffe_pb2.TRAIN if phase in ('TRAIN', caffe_pb2.TRAIN) else caffe_pb2.TEST
    json_format.ParseDict(params, lp)
    return create_layer(lp)
