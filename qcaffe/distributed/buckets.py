"""The gradients of a net in contiguous buffers, one per group of consecutive layers.

Caffe equivalent: ``Params`` / ``GPUParams`` and ``apply_buffers`` of src/caffe/parallel.cpp,
which point every learnable diff into one buffer so that the all-reduce is one call
(``layer_wise_reduce: false``) or one call per layer, issued as soon as that layer's backward
is done (``layer_wise_reduce: true``).  qcaffe takes the middle road: consecutive layers form
a group of at least :data:`GROUP_BYTES` (a larger layer is a group alone), each group is one
contiguous slice of one buffer, and each is reduced by one call.  Small groups would pay the
per-call latency many times (LeNet's 8 blobs fit in one); large ones would delay the first
reduction to the end of the backward pass.

The params are laid out in backward order (the last layer's first), so the groups complete one
after another in buffer order while the backward pass runs.  Masks and statistics (blobs the
update never moves, ``Layer.learnable_blob_indices``) stay outside: they have no gradient.
"""
import numpy as np

from .. import backend

# At least this much gradient per reduction call: LeNet (1.7 MB) is one group, a
# ResNet-50-sized net (~100 MB) about a dozen.
GROUP_BYTES = 8 << 20


class Group(object):
    """Consecutive layers' gradients: ``array`` (a slice of the buffer), ``first_layer`` (the
    lowest layer index among them: the group is complete once backward has passed it)."""
    __slots__ = ('array', 'first_layer', 'layers')

    def __init__(self, array, first_layer, layers):
        self.array = array
        self.first_layer = first_layer
        self.layers = layers


def _address(array):
    return array.__array_interface__['data'][0] if isinstance(array, np.ndarray) \
        else array.data.ptr


class GradientBuckets(object):
    """The diffs of ``params`` (``(layer index, blob)`` pairs) moved into one buffer.

    ``groups``: the :class:`Group` slices in backward order.  :meth:`ensure` re-points a blob
    whose diff storage was replaced since (a reshape beyond its capacity), so a reduction
    always covers every gradient.
    """

    def __init__(self, params, group_bytes=GROUP_BYTES):
        order = sorted(range(len(params)), key=lambda k: -params[k][0])  # backward order
        total = sum(params[k][1].count for k in order)
        xp = backend.xp()
        self.buffer = xp.zeros(max(total, 1), np.float32)   # Caffe: at least one element
        self.slots = []                 # (blob, flat view of the buffer)
        self.groups = []
        start, group_start, layers = 0, 0, []
        for pos, k in enumerate(order):
            layer, blob = params[k]
            view = self.buffer[start:start + blob.count]
            blob.adopt_diff(view)
            self.slots.append((blob, view))
            start += blob.count
            if layer not in layers:
                layers.append(layer)
            last_of_layer = pos + 1 == len(order) or params[order[pos + 1]][0] != layer
            if last_of_layer and ((start - group_start) * 4 >= group_bytes
                                  or pos + 1 == len(order)):
                self.groups.append(Group(self.buffer[group_start:start], min(layers),
                                         tuple(sorted(layers))))
                group_start, layers = start, []
        self.count = total

    def ensure(self):
        """Re-point any blob whose diff no longer lives in its slot (contents kept)."""
        for blob, view in self.slots:
            if _address(blob.mutable_dev_diff) != _address(view):
                blob.adopt_diff(view)
