"""``debug_info: true``: Caffe's per-layer mean |value| lines during training.

Caffe: ``Net::ForwardDebugInfo`` / ``Net::BackwardDebugInfo``, switched on by the solver for
display iterations (``net_->set_debug_info(display && param_.debug_info())``).  Installed
through the Net's public hooks, so the Net itself carries no debug code.  Lines::

        [Forward] Layer conv1, top blob conv1 data: 0.0512
        [Forward] Layer conv1, param blob 0 data: 0.231
        [Backward] Layer ip1, bottom blob pool1 diff: 1.2e-05
        [Backward] Layer ip1, param blob 1 diff: 0.00341
"""
import logging

from ..log import fmt

log = logging.getLogger('qcaffe')


def _mean_abs(blob, diff=False):
    n = blob.count
    return (blob.asum_diff() if diff else blob.asum_data()) / n if n else 0.0


class DebugInfo(object):
    """Hooks that log Caffe's debug lines for ``net`` while :attr:`active` is true."""

    def __init__(self, net):
        self.net = net
        self.active = False
        self._param_names = {}
        for net_pid, (layer_id, pid) in enumerate(net.param_layer_indices):
            self._param_names[(layer_id, pid)] = net.param_display_names[net_pid]
        net.add_hook('after_forward', self.forward)
        net.add_hook('after_backward', self.backward)

    def forward(self, i):
        if not self.active:
            return
        net = self.net
        name = net.layer_names[i]
        for tid in net.top_ids[i]:
            log.info('    [Forward] Layer %s, top blob %s data: %s', name, net.blob_names[tid],
                     fmt(_mean_abs(net.blobs_list[tid])))
        for pid, blob in enumerate(net.layers[i].blobs):
            log.info('    [Forward] Layer %s, param blob %s data: %s', name,
                     self._param_names.get((i, pid), str(pid)), fmt(_mean_abs(blob)))

    def backward(self, i):
        if not self.active:
            return
        net = self.net
        name = net.layer_names[i]
        for j, bid in enumerate(net.bottom_ids[i]):
            if net.bottom_need_backward[i][j]:
                log.info('    [Backward] Layer %s, bottom blob %s diff: %s', name,
                         net.blob_names[bid], fmt(_mean_abs(net.blobs_list[bid], True)))
        layer = net.layers[i]
        for pid, blob in enumerate(layer.blobs):
            if pid < len(layer.param_propagate_down) and not layer.param_propagate_down[pid]:
                continue
            log.info('    [Backward] Layer %s, param blob %s diff: %s', name,
                     self._param_names.get((i, pid), str(pid)), fmt(_mean_abs(blob, True)))
