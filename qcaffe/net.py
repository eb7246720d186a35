"""Net: a DAG of layers built from a NetParameter, with Caffe's exact construction rules.

Caffe equivalent: ``caffe::Net<float>`` (src/caffe/net.cpp) and ``InsertSplits``
(src/caffe/util/insert_splits.cpp).  Construction order (caffe.md 3.1): filter layers by
phase/level/stage, insert Split layers, create and set up layers in order, collect params
(with sharing by name), decide which layers run backward, collect outputs (sorted by name).
"""
import collections
import logging

import numpy as np

from . import backend
from .blob import Blob, BlobShapeError
from .compress.state import load_weight_blob_extras
from .io.errors import QcaffeError
from .layers import create_layer
from .ops.parallel import blas_single_threaded
from .proto import caffe_pb2

log = logging.getLogger('qcaffe')


class NetError(QcaffeError):
    """A net definition that cannot be built (names the net, layer and blob)."""


class WeightsMismatchError(NetError):
    """Trained weights that do not fit the net (names layer, blob index, both shapes, file)."""


class NetOutOfMemoryError(NetError, MemoryError):
    """A layer ran out of memory; the message names the layer, the blob, its shape and the
    bytes asked for."""


# --------------------------------------------------------------------------- filtering
def state_meets_rule(state, rule, layer_name=''):
    """Caffe: ``Net::StateMeetsRule``."""
    if rule.HasField('phase') and rule.phase != state.phase:
        return False
    if rule.HasField('min_level') and state.level < rule.min_level:
        return False
    if rule.HasField('max_level') and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            return False
    for s in rule.not_stage:
        if s in stages:
            return False
    return True


def filter_net(net_param):
    """Caffe: ``Net::FilterNet``: keep the layers whose include/exclude rules the state meets."""
    state = net_param.state
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for lp in net_param.layer:
        if len(lp.include) and len(lp.exclude):
            raise NetError('Layer %r specifies both include and exclude rules; specify one or '
                           'the other' % lp.name)
        if len(lp.include):
            keep = any(state_meets_rule(state, r, lp.name) for r in lp.include)
        else:
            keep = not any(state_meets_rule(state, r, lp.name) for r in lp.exclude)
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


# ------------------------------------------------------------------------------ splits
def split_layer_name(layer_name, blob_name, blob_idx):
    return '%s_%s_%d_split' % (blob_name, layer_name, blob_idx)


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return '%s_%s_%d_split_%d' % (blob_name, layer_name, blob_idx, split_idx)


def insert_splits(net_param):
    """Caffe: ``InsertSplits``: a top read by several consumers gets a Split layer."""
    last_top = {}                 # blob name -> (layer idx, top idx) of its latest writer
    source_of_bottom = {}         # (layer idx, bottom idx) -> (layer idx, top idx)
    consumers = collections.Counter()
    loss_weight_of = {}
    for i, lp in enumerate(net_param.layer):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise NetError('Unknown bottom blob %r (layer %r, bottom index %d). No earlier '
                               'layer produces it; known blobs: %s'
                               % (name, lp.name, j, ', '.join(sorted(last_top)) or '(none)'))
            src = last_top[name]
            source_of_bottom[(i, j)] = src
            consumers[src] += 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j, w in enumerate(lp.loss_weight):
            loss_weight_of[(i, j)] = w
            if w != 0:
                consumers[(i, j)] += 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split = collections.Counter()
    for i, lp in enumerate(net_param.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j, name in enumerate(lp.bottom):
            src = source_of_bottom[(i, j)]
            if consumers[src] > 1:
                producer = net_param.layer[src[0]].name
                new.bottom[j] = split_blob_name(producer, name, src[1], next_split[src])
                next_split[src] += 1
        for j, name in enumerate(lp.top):
            n = consumers[(i, j)]
            if n > 1:
                w = loss_weight_of.get((i, j), 0.0)
                split = out.layer.add()
                split.name = split_layer_name(lp.name, name, j)
                split.type = 'Split'
                split.bottom.append(name)
                for k in range(n):
                    split.top.append(split_blob_name(lp.name, name, j, k))
                    if w != 0:
                        split.loss_weight.append(w if k == 0 else 0.0)
                if w != 0:
                    new.ClearField('loss_weight')
                    next_split[(i, j)] += 1
    return out


def _shape_str(shape):
    return ' '.join(str(d) for d in shape) + ' (%d)' % int(np.prod(shape, dtype=np.int64))


# --------------------------------------------------------------------------------- Net
class Net(object):
    """Caffe: ``Net<float>``.  Build with ``Net.from_param(net_param)`` or the pycaffe
    constructors (``qcaffe.Net(file, phase, ...)``, defined in qcaffe.pycaffe)."""

    def __init__(self, net_param, phase=None, level=None, stages=None, source='<NetParameter>'):
        self._init(net_param, phase, level, stages, source)

    @classmethod
    def from_param(cls, net_param, phase=None, level=None, stages=None, source='<NetParameter>'):
        self = cls.__new__(cls)
        Net._init(self, net_param, phase, level, stages, source)
        return self

    # ------------------------------------------------------------------ build
    def _init(self, in_param, phase, level, stages, source):
        try:
            self._build(in_param, phase, level, stages, source)
        except QcaffeError as e:
            # Say which net definition the problem is in (the layer/blob is already named).
            where = 'net %r (%s)' % (in_param.name, source)
            if e.args and isinstance(e.args[0], str) and source not in e.args[0]:
                e.args = ('%s: %s' % (where, e.args[0]),) + e.args[1:]
            raise

    def _build(self, in_param, phase, level, stages, source):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(in_param)
        if phase is not None:
            param.state.phase = phase
        if level is not None:
            param.state.level = level
        if stages:
            param.state.stage.extend(stages)
        self.source = source
        self.name = param.name
        self.phase = param.state.phase
        self.param = insert_splits(filter_net(param))
        self.layers = []
        self.layer_names = []
        self.blobs_list = []
        self.blob_names = []
        self.blob_loss_weights_list = []
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_ids, self.top_ids = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.input_blob_ids = []
        self.params_list = []               # every param blob, in layer order
        self.param_owners = []         # -1 for owners, else index of the owner param
        self.param_layer_indices = []  # (layer idx, blob idx)
        self.param_display_names = []
        self.learnable_params = []
        self.learnable_param_ids = []  # per param: index into learnable_params
        self.params_lr, self.params_weight_decay = [], []
        self._has_params_lr, self._has_params_decay = [], []
        self._param_names_index = {}
        self._hooks = {'before_forward': [], 'after_forward': [],
                       'before_backward': [], 'after_backward': []}
        blob_index = {}
        blob_need_backward = []
        available = set()

        for layer_id, lp in enumerate(self.param.layer):
            if not lp.HasField('phase'):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetError('Layer %r: propagate_down must be given once per bottom (%d '
                               'bottoms, %d values)' % (lp.name, len(lp.bottom),
                                                         len(lp.propagate_down)))
            layer = create_layer(lp)
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            bottoms, bids, bneed = [], [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise NetError('Unknown bottom blob %r (layer %r, bottom index %d)'
                                   % (name, lp.name, j))
                bid = blob_index[name]
                bottoms.append(self.blobs_list[bid])
                bids.append(bid)
                nb = blob_need_backward[bid]
                need_backward = need_backward or nb
                if len(lp.propagate_down):
                    nb = bool(lp.propagate_down[j])
                bneed.append(nb)
                available.discard(name)
            tops, tids = [], []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    bid = blob_index[name]          # in place: reuse the bottom blob
                    tops.append(self.blobs_list[bid])
                    tids.append(bid)
                elif name in blob_index:
                    raise NetError('Top blob %r produced by multiple sources (layer %r)'
                                   % (name, lp.name))
                else:
                    tid = self._new_blob(name, blob_need_backward)
                    blob_index[name] = tid
                    tops.append(self.blobs_list[tid])
                    tids.append(tid)
                    if lp.type == 'Input':
                        self.input_blob_ids.append(tid)
                available.add(name)
            if layer.auto_top_blobs:
                needed = max(layer.exact_num_top or 0, layer.min_top or 0)
                while len(tops) < needed:
                    tid = self._new_blob('(automatic)', blob_need_backward)
                    tops.append(self.blobs_list[tid])
                    tids.append(tid)
            self.bottom_vecs.append(bottoms)
            self.bottom_ids.append(bids)
            self.bottom_need_backward.append(bneed)
            self.top_vecs.append(tops)
            self.top_ids.append(tids)
            try:
                layer.setup(bottoms, tops)
            except (BlobShapeError, MemoryError) as e:
                raise self._layer_failure(layer_id, 'setup', e) from None
            except QcaffeError:
                raise
            except Exception as e:
                raise NetError('Setting up layer %r (type %s) of net %r failed: %s: %s'
                               % (lp.name, lp.type, self.name, type(e).__name__, e)) from e
            log.info('Setting up %s', lp.name)
            for j, t in enumerate(tops):
                while len(self.blob_loss_weights_list) <= tids[j]:
                    self.blob_loss_weights_list.append(0.0)
                self.blob_loss_weights_list[tids[j]] = layer.loss(j)
                log.info('Top shape: %s', _shape_str(t.shape))
                if layer.loss(j):
                    log.info('    with loss weight %g', layer.loss(j))
            if len(lp.param) > len(layer.blobs):
                raise NetError('Too many params specified for layer %r: %d ParamSpecs for %d '
                               'blobs' % (lp.name, len(lp.param), len(layer.blobs)))
            default_spec = caffe_pb2.ParamSpec()
            for pid in range(len(layer.blobs)):
                spec = lp.param[pid] if pid < len(lp.param) else default_spec
                pneed = spec.lr_mult != 0
                need_backward = need_backward or pneed
                layer.set_param_propagate_down(pid, pneed)
            for pid in range(len(layer.blobs)):
                self._append_param(layer_id, pid)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for tid in tids:
                    blob_need_backward[tid] = True

        self._decide_backward(blob_need_backward)
        if self.param.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                for j in range(len(self.bottom_need_backward[i])):
                    self.bottom_need_backward[i][j] = (self.bottom_need_backward[i][j] or
                                                       layer.allow_force_backward(j))
                    blob_need_backward[self.bottom_ids[i][j]] = (
                        blob_need_backward[self.bottom_ids[i][j]] or
                        self.bottom_need_backward[i][j])
                for pid in range(len(layer.blobs)):
                    layer.set_param_propagate_down(pid, True)
        self.blob_need_backward = blob_need_backward
        self.output_blob_ids = [blob_index[n] for n in sorted(available)]
        self._blob_index = blob_index
        self._layer_index = {}
        for i, n in enumerate(self.layer_names):
            self._layer_index.setdefault(n, i)
        self._share_weights()
        log.info('Network initialization done.')

    def _new_blob(self, name, need_list):
        self.blobs_list.append(Blob())
        self.blob_names.append(name)
        need_list.append(False)
        return len(self.blobs_list) - 1

    def _append_param(self, layer_id, pid):
        """Caffe: ``Net::AppendParam``: owner or sharer, lr/decay multipliers."""
        lp = self.param.layer[layer_id]
        layer = self.layers[layer_id]
        spec = lp.param[pid] if pid < len(lp.param) else caffe_pb2.ParamSpec()
        pname = spec.name
        self.param_display_names.append(pname if pname else str(pid))
        net_pid = len(self.params_list)
        self.params_list.append(layer.blobs[pid])
        self.param_layer_indices.append((layer_id, pid))
        if not pname or pname not in self._param_names_index:
            self.param_owners.append(-1)
            if pname:
                self._param_names_index[pname] = net_pid
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[pid])
            self._has_params_lr.append(spec.HasField('lr_mult'))
            self._has_params_decay.append(spec.HasField('decay_mult'))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner = self._param_names_index[pname]
        self.param_owners.append(owner)
        olayer, opid = self.param_layer_indices[owner]
        owner_blob = self.layers[olayer].blobs[opid]
        this = layer.blobs[pid]
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                 pname, self.layer_names[olayer], opid)
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if this.count() != owner_blob.count():
                raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'; "
                               "count mismatch.  Owner layer param shape is %s; sharing layer "
                               "shape is %s" % (pname, self.layer_names[olayer], lp.name,
                                                owner_blob.shape_string(), this.shape_string()))
        elif this.shape != owner_blob.shape:
            raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'; shape "
                           "mismatch.  Owner layer param shape is %s; sharing layer expects "
                           "shape %s" % (pname, self.layer_names[olayer], lp.name,
                                         owner_blob.shape_string(), this.shape_string()))
        lid = self.learnable_param_ids[owner]
        self.learnable_param_ids.append(lid)
        if spec.HasField('lr_mult'):
            if self._has_params_lr[lid]:
                if self.params_lr[lid] != spec.lr_mult:
                    raise NetError("Shared param '%s' has mismatched lr_mult." % pname)
            else:
                self._has_params_lr[lid] = True
                self.params_lr[lid] = spec.lr_mult
        if spec.HasField('decay_mult'):
            if self._has_params_decay[lid]:
                if self.params_weight_decay[lid] != spec.decay_mult:
                    raise NetError("Shared param '%s' has mismatched decay_mult." % pname)
            else:
                self._has_params_decay[lid] = True
                self.params_weight_decay[lid] = spec.decay_mult

    def _decide_backward(self, blob_need_backward):
        """Caffe's reverse pass: only layers that contribute to a loss run backward."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            contributes, skip_prop = False, True
            for j, tid in enumerate(self.top_ids[i]):
                name = self.blob_names[tid]
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_prop = False
                if contributes and not skip_prop:
                    break
            if self.layer_need_backward[i] and skip_prop:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            log.info('%s %s backward computation.', self.layer_names[i],
                     'needs' if self.layer_need_backward[i] else 'does not need')
            for j, bid in enumerate(self.bottom_ids[i]):
                name = self.blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(name)

    def _share_weights(self):
        """Caffe: ``Net::ShareWeights``: sharers alias the owner's data and diff."""
        for i, owner in enumerate(self.param_owners):
            if owner >= 0:
                self.params_list[i].share_data(self.params_list[owner])
                self.params_list[i].share_diff(self.params_list[owner])

    # ---------------------------------------------------------------- running
    def layer_index(self, name):
        try:
            return self._layer_index[name]
        except KeyError:
            raise NetError('Unknown layer name %r in net %r' % (name, self.name))

    def blob_by_name(self, name):
        try:
            return self.blobs_list[self._blob_index[name]]
        except KeyError:
            raise NetError('Unknown blob name %r in net %r' % (name, self.name))

    def has_blob(self, name):
        return name in self._blob_index

    def forward_from_to(self, start=0, end=None):
        """Caffe: ``ForwardFromTo`` (end inclusive); returns the summed loss."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        hooks = self._hooks
        i = start
        try:
            with blas_single_threaded():     # qcaffe's threads, not the BLAS's (ops.parallel)
                for i in range(start, end + 1):
                    for fn in hooks['before_forward']:
                        fn(i)
                    loss += self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])
                    for fn in hooks['after_forward']:
                        fn(i)
        except (BlobShapeError, MemoryError) as e:
            raise self._layer_failure(i, 'forward', e) from None
        return loss

    def backward_from_to(self, start=None, end=0):
        """Caffe: ``BackwardFromTo`` (from ``start`` down to ``end``, inclusive)."""
        start = len(self.layers) - 1 if start is None else start
        hooks = self._hooks
        i = start
        try:
            with blas_single_threaded():
                for i in range(start, end - 1, -1):
                    if not self.layer_need_backward[i]:
                        continue
                    for fn in hooks['before_backward']:
                        fn(i)
                    self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i],
                                            self.bottom_vecs[i])
                    for fn in hooks['after_backward']:
                        fn(i)
        except (BlobShapeError, MemoryError) as e:
            raise self._layer_failure(i, 'backward', e) from None

    def _layer_failure(self, i, stage, error):
        """A refused blob shape or an allocation failure in layer ``i`` as a NetError naming
        the net, the layer, the blob (top, bottom or parameter) and its shape."""
        blob = getattr(error, 'blob', None)
        buffer = getattr(error, 'buffer', None)
        shape = getattr(error, 'shape', None)      # numpy's: the array it could not make
        named = ([('top blob %r' % self.blob_names[t], self.blobs_list[t])
                  for t in self.top_ids[i]] +
                 [('bottom blob %r' % self.blob_names[b], self.blobs_list[b])
                  for b in self.bottom_ids[i]] +
                 [('parameter blob %d' % j, b) for j, b in enumerate(self.layers[i].blobs)])
        what = next((label for label, b in named if b is blob), None)   # refused reshape
        if what is None:
            what = next(('%s (shape %s)' % (label, b.shape_string()) for label, b in named
                         if (buffer is not None and b.owns_buffer(buffer))
                         or (shape is not None and b.shape == tuple(shape) and b.count_all)),
                        'a work array of the layer')
        # (setup errors get the net and its file from _init)
        where = "%slayer %r (type %s), %s, %s" % (
            '' if stage == 'setup' else 'net %r: ' % self.name, self.layer_names[i],
            self.layers[i].type, stage, what)
        if isinstance(error, MemoryError):
            return NetOutOfMemoryError('%s: out of memory: %s' % (where, str(error) or
                                                                  'no details'))
        return NetError('%s: %s' % (where, error))

    def forward_prefilled(self):
        """Caffe: ``Net::Forward``: run every layer, return (output blobs, loss)."""
        loss = self.forward_from_to()
        return [self.blobs_list[i] for i in self.output_blob_ids], loss

    def backward_all(self):
        self.backward_from_to()

    def forward_backward(self):
        """Caffe: ``Net::ForwardBackward``: returns the loss."""
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def reshape_all(self):
        """Caffe: ``Net::Reshape``."""
        for i, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[i], self.top_vecs[i])
            layer._last_bottom_shapes = tuple(b.shape for b in self.bottom_vecs[i])

    def first_non_finite(self, params=True, tops=True):
        """The first layer, in net order, holding NaN/inf: ``(layer index, [parameter blob
        indices], top name or None)``, or None when every value checked is finite."""
        xp = backend.xp()

        def finite(blob):
            # one summing pass without a temporary; only a non-finite sum (NaN/inf inside, or
            # an overflow of huge finite values) needs the element-wise check
            data = blob.dev_data
            return bool(xp.isfinite(data.sum())) or bool(xp.isfinite(data).all())
        for i, layer in enumerate(self.layers):
            bad_params = [j for j, b in enumerate(layer.blobs) if not finite(b)] if params else []
            if bad_params:
                return i, bad_params, None
            if tops:
                for t in self.top_ids[i]:
                    if not finite(self.blobs_list[t]):
                        return i, [], self.blob_names[t]
        return None

    def set_current_iter(self, it):
        """The DNS/INQ fork's ``Net::set_current_iter_num``: every layer learns the solver's
        iteration (DNS surgery probability, INQ's first step)."""
        for layer in self.layers:
            layer.current_iter = it

    def clear_param_diffs(self):
        """Caffe: ``ClearParamDiffs``: zero the diffs of the learnable params."""
        for p in self.learnable_params:
            p.mutable_dev_diff.fill(0)

    def update(self):
        """Caffe: ``Net::Update``: data -= diff for every learnable param."""
        for p in self.learnable_params:
            p.update()

    def add_hook(self, kind, fn):
        self._hooks[kind].append(fn)

    # ----------------------------------------------------------- weights I/O
    def copy_trained_layers_from_param(self, param, source='<NetParameter>'):
        """Caffe: ``CopyTrainedLayersFrom(const NetParameter&)`` (names matched, shapes checked).

        ``param`` should already be upgraded (``qcaffe.io.upgrade_net_as_needed``).
        """
        from .compress.state import layer_compress_params
        from .io.weights import weights_from_net_param
        self._copy_weights(weights_from_net_param(param, source), source, hdf5=False,
                           compress=layer_compress_params(param))

    def copy_from(self, path):
        """Caffe: ``CopyTrainedLayersFrom(file)``: HDF5 (detected by its signature, like
        ``H5Fis_hdf5``) or binary NetParameter of any version (upgraded)."""
        from .io.files import display_path, file_is_hdf5
        from .io.weights import read_weights_file
        entries, compress = read_weights_file(path)
        self._copy_weights(entries, display_path(path), hdf5=file_is_hdf5(path),
                           compress=compress)

    def copy_trained_layers_from_hdf5(self, path):
        """Caffe: ``CopyTrainedLayersFromHDF5`` (caffe.md 3.8)."""
        from .io.files import display_path
        from .io.weights import load_weights_file
        self._copy_weights(load_weights_file(path), display_path(path), hdf5=True)

    def _copy_weights(self, entries, source, hdf5, compress=None):
        """Copy ``[(layer name, type, [WeightBlob or None])]`` into same-named layers.

        ``compress``: the compression settings the file's layers were saved with (uL2Q),
        handed to each layer's compression to compare with the prototxt's.

        Binary files must give exactly the layer's blob count (Caffe's CopyTrainedLayersFrom);
        HDF5 files may omit a blob that is shared from another layer, as Caffe's
        CopyTrainedLayersFromHDF5 writes only owners.  Shapes follow Blob::ShapeEquals (legacy
        4-D dims right-aligned).  Errors name the layer, blob index, both shapes and the file.
        """
        param_id_of = {id(b): k for k, b in enumerate(self.params_list)}
        for name, _type, blobs in entries:
            if name not in self._layer_index:
                log.info('Ignoring source layer %s', name)
                continue
            layer = self.layers[self._layer_index[name]]
            log.info('Copying source layer %s', name)
            n_src = sum(b is not None for b in blobs) if hdf5 else len(blobs)
            n_min = layer.required_blob_count()
            if len(blobs) > len(layer.blobs) or (not hdf5 and len(blobs) < n_min):
                raise WeightsMismatchError(
                    'Incompatible number of blobs for layer %r: the weights file %s has %d, '
                    'the net has %d (%s)' % (name, source, n_src, len(layer.blobs),
                                             ', '.join(b.shape_string() for b in layer.blobs)
                                             or 'no blobs'))
            for j, target in enumerate(layer.blobs):
                wb = blobs[j] if j < len(blobs) else None
                if j >= len(blobs) and j >= n_min:
                    log.info('Layer %s: blob %d is not in %s; it keeps its initial value',
                             name, j, source)
                    continue
                if wb is None:
                    pid = param_id_of.get(id(target), -1)
                    if pid >= 0 and self.param_owners[pid] >= 0:
                        continue          # a shared param: its owner was loaded
                    raise WeightsMismatchError(
                        'Incompatible number of blobs for layer %r: blob %d (shape %s) is '
                        'missing from the weights file %s' % (name, j, target.shape_string(),
                                                              source))
                if not wb.shape_matches(target.shape):
                    raise WeightsMismatchError(
                        "Cannot copy param %d weights from layer '%s'; shape mismatch.  Source "
                        "param shape is %s; target param shape is %s (weights file %s). To "
                        "learn this layer's parameters from scratch rather than copying from a "
                        "saved net, rename the layer." % (j, name, wb.shape_string(),
                                                          target.shape_string(), source))
                target.data[...] = wb.data.reshape(target.shape)
                if wb.diff is not None:
                    target.diff[...] = wb.diff.reshape(target.shape)
                load_weight_blob_extras(target, wb)   # uL2Q quantize/alpha/... (BlobProto 10-17)
            layer.compression.take_file_params((compress or {}).get(name), source)
            layer.after_weights_loaded()

    def share_trained_layers_with(self, other):
        """Caffe: ``ShareTrainedLayersWith``: alias the data of same-named layers' blobs."""
        for i, src_layer in enumerate(other.layers):
            name = other.layer_names[i]
            if name not in self._layer_index:
                continue
            layer = self.layers[self._layer_index[name]]
            if len(src_layer.blobs) != len(layer.blobs):
                raise NetError('Incompatible number of blobs for layer %r' % name)
            for j, (s, t) in enumerate(zip(src_layer.blobs, layer.blobs)):
                if s.shape != t.shape:
                    raise NetError("Cannot share param %d weights from layer '%s'; shape "
                                   "mismatch.  Source param shape is %s; target param shape is %s"
                                   % (j, name, s.shape_string(), t.shape_string()))
                t.share_data(s)

    def to_proto(self, write_diff=False):
        """Caffe: ``Net::ToProto``: the net's layers (Splits included) with their blobs."""
        param = caffe_pb2.NetParameter()
        param.name = self.name
        for layer in self.layers:
            layer.to_proto(param.layer.add(), write_diff)
        return param

    def save(self, path, write_diff=False):
        """Write a binary .caffemodel atomically (Caffe: ``WriteProtoToBinaryFile``)."""
        from .io.binary import write_binary_proto
        write_binary_proto(path, self.to_proto(write_diff))

    def save_hdf5(self, path, write_diff=False):
        """Caffe: ``Net::ToHDF5``."""
        from .io.hdf5 import write_hdf5_weights
        # Caffe writes the data of owner params only, diffs regardless of sharing.
        shared = {self.param_layer_indices[i] for i, o in enumerate(self.param_owners) if o >= 0}
        data = [(n, [None if (li, j) in shared else b.cpu_data() for j, b in enumerate(l.blobs)])
                for li, (n, l) in enumerate(zip(self.layer_names, self.layers))]
        diffs = ([(n, [b.cpu_diff() for b in l.blobs])
                  for n, l in zip(self.layer_names, self.layers)] if write_diff else None)
        write_hdf5_weights(path, data, diffs)

    # ------------------------------------------------------------ accessors
    @property
    def input_blobs(self):
        return [self.blobs_list[i] for i in self.input_blob_ids]

    @property
    def output_blobs(self):
        return [self.blobs_list[i] for i in self.output_blob_ids]

    def __repr__(self):
        return '<Net %r: %d layers, phase %s>' % (self.name, len(self.layers),
                                                   caffe_pb2.Phase.Name(self.phase))
