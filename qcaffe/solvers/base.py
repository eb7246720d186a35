"""Solver: Caffe's training loop, tests, snapshots and restore (Caffe: ``Solver`` +
``SGDSolver``'s shared ``ApplyUpdate`` skeleton, src/caffe/solver.cpp and sgd_solver.cpp).

A concrete solver (sgd.py, adam.py, ...) only supplies ``compute_update_value`` (Caffe's
``ComputeUpdateValue``) and how many history sets it keeps; everything else follows
caffe.md section 4:

* construction (4.1): one train net from ``train_net_param`` / ``train_net`` / ``net_param``
  / ``net`` with the TRAIN state merged from the file and ``train_state``; test nets from
  ``test_net_param`` / ``test_net`` / the generic net, one per ``test_iter``; the snapshot
  prefix probed for writability; ``random_seed`` applied before any net is built;
* ``step(n)`` (4.2) with ``iter_size`` accumulation, ``average_loss`` smoothing, display
  lines in Caffe's glog format (parse_log.py reads them), callbacks, action requests;
* ``apply_update()`` (4.3): learning rate (+ warm-up), global-norm gradient clipping,
  ``iter_size`` normalization, L2/L1 regularization, the update rule, ``Net::Update``;
* snapshot / restore (4.6) in BINARYPROTO or HDF5, each file written atomically;
* beyond Caffe: a non-finite loss stops training with the iteration and the layer where the
  first non-finite value appeared (:class:`TrainingDivergedError`; ``solver.check_nan =
  False`` turns it off), leaving the last good snapshot untouched; layer state that is not a
  blob (data read positions...) and the host RNG travel in ``<state>.layers.npz`` beside
  the solverstate, so a resumed run equals an uninterrupted one bit for bit; the state file
  is written last and records its companion, so a missing one is reported.
"""
import io
import logging
import math
import os
import secrets
import time
import zipfile

import numpy as np

from .. import backend
from ..blob import Blob
from ..io.binary import read_net_param, read_solver_param
from ..io.errors import QcaffeError
from ..io.files import atomic_write_bytes, clean_orphaned_temporaries, display_path
from ..io.solverstate import read_solver_state, write_solver_state
from ..io.upgrade import upgrade_solver_as_needed
from ..log import fmt
from ..net import Net
from ..ops import parallel
from ..proto import caffe_pb2
from . import action as solver_action
from .debug_info import DebugInfo
from .lr_policy import learning_rate, policy_function

log = logging.getLogger('qcaffe')
f32 = np.float32


class SolverError(QcaffeError):
    """A solver definition or state Caffe would refuse (names the file, field and choices)."""


class TrainingDivergedError(SolverError):
    """The loss became NaN/inf; ``iteration`` and ``layer`` say where."""

    def __init__(self, message, iteration, layer=None, blob=None):
        super().__init__(message)
        self.iteration = iteration
        self.layer = layer
        self.blob = blob


class _Callback(object):
    """pycaffe's ``add_callback(on_start, on_gradients_ready)`` as one object."""

    def __init__(self, on_start, on_gradients_ready):
        self.on_start = on_start
        self.on_gradients_ready = on_gradients_ready


class _Param(object):
    """What the update loop needs for one learnable param (built once; cheap to iterate)."""
    __slots__ = ('blob', 'lr_mult', 'decay_mult', 'layer', 'index', 'name', 'learnable')

    def __init__(self, blob, lr_mult, decay_mult, layer, index, name, learnable):
        self.blob = blob
        self.lr_mult = f32(lr_mult)
        self.decay_mult = f32(decay_mult)
        self.layer = layer
        self.index = index
        self.name = name
        self.learnable = learnable


class Solver(object):
    """Caffe: ``Solver<float>`` / ``SGDSolver<float>``.

    ``Solver(param_or_path)`` takes a ``caffe_pb2.SolverParameter`` or a solver prototxt path.
    The class decides the update rule (as pycaffe's ``SGDSolver(file)`` does); use
    :func:`qcaffe.solvers.create_solver` to choose the class from the file's ``type``.
    """
    type = None                 # the registered type string
    num_history_sets = 1        # AdaDelta / Adam keep 2 (history_ is 2N blobs in Caffe)
    net_class = Net             # pycaffe substitutes its Net subclass here

    def __init__(self, param, source=None, rank=None):
        if isinstance(param, caffe_pb2.SolverParameter):
            p = caffe_pb2.SolverParameter()
            p.CopyFrom(param)
            if p.HasField('solver_type'):
                upgrade_solver_as_needed(p, source or '<SolverParameter>')
            self.source = source or '<SolverParameter>'
        else:
            self.source = os.fsdecode(os.fspath(param))
            p = read_solver_param(self.source)
        self.param = p
        self.rank = backend.solver_rank() if rank is None else int(rank)
        self.collective = None          # qcaffe.distributed.DataParallel when data-parallel
        self.callbacks = []
        self.action_function = None
        self.requested_early_exit = False
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = 0.0
        self._losses = []
        self.test_results = []          # per test net: [(output name, mean), ...]
        self.last_snapshot = None       # (model file, state file) of the latest snapshot
        self.check_nan = True
        self._init()

    # -------------------------------------------------------------- construction
    def _where(self):
        if self.source.startswith('<'):
            return 'solver %s' % self.source
        return 'solver file %s' % display_path(self.source)

    def _fail(self, field, message):
        raise SolverError('%s, field %s: %s' % (self._where(), field, message))

    def _init(self):
        p = self.param
        log.info('Initializing solver from parameters: \n%s', p)
        if p.average_loss < 1:
            self._fail('average_loss', 'must be >= 1 (got %d)' % p.average_loss)
        if p.iter_size < 1:
            self._fail('iter_size', 'must be >= 1 (got %d)' % p.iter_size)
        if not p.HasField('lr_policy'):
            self._fail('lr_policy', 'is not set; Caffe has no default. Set lr_policy to one '
                       'of: fixed, step, exp, inv, multistep, poly, sigmoid')
        try:
            policy_function(p.lr_policy)
        except QcaffeError as e:
            self._fail('lr_policy', str(e))
        if p.regularization_type not in ('L1', 'L2'):
            self._fail('regularization_type', 'Unknown regularization type: %r; valid: L1, L2'
                       % p.regularization_type)
        self.check_param()
        self.check_snapshot_write_permissions()
        if self.is_root and p.HasField('snapshot_prefix'):     # only the root snapshots
            self._clean_snapshot_temporaries()
        if p.random_seed >= 0:
            backend.set_random_seed(p.random_seed + self.rank)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self._debug = None
        if p.debug_info:
            self._debug = DebugInfo(self.net)
            for net in self.test_nets:
                DebugInfo(net).active = True
        self._pre_solve()
        self._rng_at_start = self._rng_position()

    def check_param(self):
        """Update-rule specific checks (Caffe: the solver constructors' CHECKs)."""

    def _read_net(self, path, field):
        try:
            return read_net_param(path)
        except QcaffeError as e:
            raise SolverError('%s, field %s: cannot read net %r: %s'
                              % (self._where(), field, path, e)) from None

    def _init_train_net(self):
        """Caffe: ``Solver::InitTrainNet``."""
        p = self.param
        given = [f for f in ('train_net_param', 'train_net', 'net_param', 'net') if p.HasField(f)]
        if len(given) != 1:
            self._fail('train net', 'exactly one of train_net_param, train_net, net_param, net '
                       'must be given (found %s)' % (', '.join(given) or 'none'))
        field = given[0]
        if field == 'train_net_param':
            log.info('Creating training net specified in train_net_param.')
            net_param, src = p.train_net_param, '%s (train_net_param)' % self.source
        elif field == 'train_net':
            log.info('Creating training net from train_net file: %s', p.train_net)
            net_param, src = self._read_net(p.train_net, 'train_net'), p.train_net
        elif field == 'net_param':
            log.info('Creating training net specified in net_param.')
            net_param, src = p.net_param, '%s (net_param)' % self.source
        else:
            log.info('Creating training net from net file: %s', p.net)
            net_param, src = self._read_net(p.net, 'net'), p.net
        param = caffe_pb2.NetParameter()
        param.CopyFrom(net_param)
        state = caffe_pb2.NetState()
        state.phase = caffe_pb2.TRAIN
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        param.state.CopyFrom(state)
        net = self.net_class.from_param(param, source=src)
        for w in p.weights:
            self._load_weights(net, w)
        return net

    def _init_test_nets(self):
        """Caffe: ``Solver::InitTestNets``."""
        p = self.param
        generic = int(p.HasField('net')) + int(p.HasField('net_param'))
        n_params, n_files = len(p.test_net_param), len(p.test_net)
        num_test_nets = n_params + n_files
        if generic:
            if len(p.test_iter) < num_test_nets:
                self._fail('test_iter', 'must be specified for each test network (%d test nets, '
                           '%d test_iter)' % (num_test_nets, len(p.test_iter)))
        elif len(p.test_iter) != num_test_nets:
            self._fail('test_iter', 'must be specified for each test network (%d test nets, %d '
                       'test_iter)' % (num_test_nets, len(p.test_iter)))
        instances = num_test_nets + (len(p.test_iter) - num_test_nets)
        if len(p.test_state) and len(p.test_state) != instances:
            self._fail('test_state', 'must be unspecified or specified once per test net (%d '
                       'test nets, %d test_state)' % (instances, len(p.test_state)))
        if instances and p.test_interval <= 0:
            self._fail('test_interval', 'must be > 0 when there are test nets (got %d)'
                       % p.test_interval)
        sources = []
        for np_ in p.test_net_param:
            sources.append(('test_net_param', np_, '%s (test_net_param)' % self.source))
        for f in p.test_net:
            sources.append(('test_net file: ' + f, self._read_net(f, 'test_net'), f))
        for _ in range(instances - num_test_nets):
            if p.HasField('net_param'):
                sources.append(('net_param', p.net_param, '%s (net_param)' % self.source))
            else:
                sources.append(('net file: ' + p.net, self._read_net(p.net, 'net'), p.net))
        nets = []
        for i, (what, net_param, src) in enumerate(sources):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(net_param)
            state = caffe_pb2.NetState()
            state.phase = caffe_pb2.TEST
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            param.state.CopyFrom(state)
            log.info('Creating test net (#%d) specified by %s', i, what)
            net = self.net_class.from_param(param, source=src)
            for w in p.weights:
                self._load_weights(net, w)
            nets.append(net)
        return nets

    @staticmethod
    def _load_weights(net, weights):
        """Caffe: ``LoadNetWeights``: a comma-separated list of weight files.

        Beyond Caffe: weights holding NaN/inf are refused here, naming the file and layer,
        instead of stopping the run at iteration 0 as a divergence.
        """
        for path in weights.split(','):
            if path:
                log.info('Finetuning from %s', path)
                net.copy_from(path)
                found = net.first_non_finite(tops=False)
                if found is not None:
                    i, blobs, _ = found
                    raise SolverError(
                        'weights file %s: layer %r (type %s) parameter blob(s) %s hold NaN or '
                        'infinite values; training cannot start from them (was the file saved '
                        'from a diverged run?)' % (display_path(path), net.layer_names[i],
                                                   net.layers[i].type, blobs))

    def _pre_solve(self):
        """Caffe: ``SGDSolver::PreSolve`` (+ the AdaDelta/Adam second set): zero histories."""
        net = self.net
        owner_ids = [i for i, o in enumerate(net.param_owners) if o < 0]
        self._params = []
        for lid, blob in enumerate(net.learnable_params):
            layer_id, index = net.param_layer_indices[owner_ids[lid]]
            layer = net.layers[layer_id]
            learnable = index in layer.learnable_blob_indices()
            self._params.append(_Param(blob, net.params_lr[lid], net.params_weight_decay[lid],
                                       layer, index, '%s/%d' % (net.layer_names[layer_id], index),
                                       learnable))
        self.history = [Blob(*p.blob.shape) for _ in range(self.num_history_sets)
                        for p in self._params]
        self._temp = {}

    def temp(self, i, k=0):
        """A work array shaped like param ``i`` (Caffe's update_/temp_ blobs), reused."""
        diff = self._params[i].blob.mutable_dev_diff
        key = (i, k)
        buf = self._temp.get(key)
        if buf is None or buf.shape != diff.shape or type(buf) is not type(diff):
            buf = backend.get_array_module(diff).empty_like(diff)
            self._temp[key] = buf
        return buf

    def history_array(self, i, k=0):
        """History set ``k`` of learnable param ``i`` (Caffe: ``history_[i + k*N]``)."""
        return self.history[i + k * len(self._params)].mutable_dev_data

    # ---------------------------------------------------------- public helpers
    @property
    def learnable_params(self):
        return [p.blob for p in self._params]

    @property
    def update_params(self):
        """Per learnable param: ``blob``, ``layer``, ``index`` (in the layer) and ``learnable``
        (False: a mask or statistic the update never moves)."""
        return list(self._params)

    # Collective seam (architecture.md): with data parallelism (qcaffe.distributed) only the
    # root solver tests and snapshots, and what the root decides (stop, snapshot) holds on
    # every rank; the gradient all-reduce runs in the callbacks, between backward and update.
    @property
    def is_root(self):
        """Caffe: ``Caffe::root_solver()``."""
        return self.rank == 0

    def decide(self, value):
        """The root solver's ``value`` on every rank (identity without data parallelism)."""
        return value if self.collective is None else self.collective.decide(value)

    def add_callback(self, on_start, on_gradients_ready=None):
        """Caffe: ``add_callback``: an object with ``on_start()`` / ``on_gradients_ready()``,
        or pycaffe's two zero-argument callables."""
        if on_gradients_ready is None and hasattr(on_start, 'on_gradients_ready'):
            self.callbacks.append(on_start)
        else:
            self.callbacks.append(_Callback(on_start or (lambda: None),
                                            on_gradients_ready or (lambda: None)))

    def set_action_function(self, fn):
        """Caffe: ``SetActionFunction``: ``fn()`` returns 'none', 'stop' or 'snapshot'."""
        self.action_function = fn

    def get_requested_action(self):
        if self.action_function is None:
            return solver_action.NONE
        return solver_action.normalize(self.action_function())

    def share_weights(self, net):
        """pycaffe ``share_weights``: ``net`` aliases the train net's weights."""
        net.share_trained_layers_with(self.net)

    def get_learning_rate(self):
        """Caffe: ``GetLearningRate`` (+ warm-up); advances ``current_step`` as Caffe does."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    @property
    def lr(self):
        return float(self.get_learning_rate())

    # ------------------------------------------------------------------- training
    def solve(self, resume_file=None):
        """Caffe: ``Solver::Solve``."""
        p = self.param
        log.info('Solving %s', self.net.name)
        log.info('Learning Rate Policy: %s', p.lr_policy)
        self.requested_early_exit = False
        if p.snapshot_after_train:
            # Caffe probes only when snapshot > 0; failing after hours of training because
            # the final snapshot cannot be written helps nobody, so probe here too.
            self.check_snapshot_write_permissions(force=True)
        if resume_file:
            log.info('Restoring previous solver status from %s', resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if self.is_root and p.snapshot_after_train and (not p.snapshot
                                                        or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info('Optimization stopped early.')
            return
        if p.display and self.iter % p.display == 0:
            _, loss = self.net.forward_prefilled()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info('Iteration %d, loss = %s', self.iter, fmt(self.smoothed_loss))
        if self.is_root and p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info('Optimization Done.')

    def step(self, iters):
        """Caffe: ``Solver::Step``: run ``iters`` iterations."""
        p = self.param
        net = self.net
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        iter_size = p.iter_size
        self._losses = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                if self.is_root:
                    self.test_all()
                if self.decide(self.requested_early_exit):
                    self.requested_early_exit = True
                    break
            for cb in self.callbacks:
                cb.on_start()
            display = p.display and self.iter % p.display == 0
            if self._debug is not None:
                self._debug.active = bool(display)
            net.set_current_iter(self.iter)     # the DNS/INQ fork's set_current_iter_num
            loss = 0.0
            for _ in range(iter_size):
                loss += net.forward_backward()
            loss /= iter_size
            if self.check_nan and not math.isfinite(loss):
                self._diverged(loss)
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1.0)
                log.info('Iteration %d (%s iter/s, %ss/%d iters), loss = %s', self.iter,
                         fmt(per_s), fmt(lapse), p.display, fmt(self.smoothed_loss))
                timer = time.perf_counter()
                iterations_last = self.iter
                self._log_outputs(net, 'Train', net.output_blobs, None)
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update()
            request = self.decide(self.get_requested_action())
            if self.is_root and ((p.snapshot and self.iter % p.snapshot == 0)
                                 or request == solver_action.SNAPSHOT):
                self.snapshot()
            if request == solver_action.STOP:
                self.requested_early_exit = True
                break

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        """Caffe: ``UpdateSmoothedLoss``: running mean, then a sliding window."""
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self._losses[idx]) / average_loss
            self._losses[idx] = loss

    @staticmethod
    def _log_outputs(net, kind, blobs, values):
        """``    Train/Test net output #k: name = v (* w = w*v loss)``, one line per element."""
        k = 0
        results = []
        for j, bid in enumerate(net.output_blob_ids):
            name = net.blob_names[bid]
            weight = net.blob_loss_weights_list[bid]
            vals = blobs[j].cpu_data().ravel() if values is None else values[j]
            for v in vals:
                extra = (' (* %s = %s loss)' % (fmt(weight), fmt(f32(weight) * f32(v)))
                         if weight else '')
                log.info('    %s net output #%d: %s = %s%s', kind, k, name, fmt(v), extra)
                results.append((name, float(v)))
                k += 1
        return results

    def _diverged(self, loss):
        """Stop on a non-finite loss, naming the first layer that produced one."""
        net = self.net
        layer_name = blob_name = None
        found = net.first_non_finite()
        if found is None:
            where = 'no layer output is non-finite; the loss sum overflowed'
        else:
            i, bad_params, blob_name = found
            layer_name = net.layer_names[i]
            if bad_params:
                where = ('layer %r (type %s): its learnable blob(s) %s hold non-finite values '
                         '(the previous update diverged)'
                         % (layer_name, net.layers[i].type, bad_params))
            else:
                where = ('layer %r (type %s): first non-finite output in top %r'
                         % (layer_name, net.layers[i].type, blob_name))
        kept = (' The last snapshot (%s) is kept.' % self.last_snapshot[0]
                if self.last_snapshot else ' No snapshot is written for the diverged state.')
        message = ('Iteration %d: the training loss is %s; %s. Training stopped before the '
                   'update, so the weights are those after iteration %d.%s Lower base_lr, set '
                   'clip_gradients, or check the input data.'
                   % (self.iter, fmt(loss), where, self.iter, kept))
        log.error(message)
        raise TrainingDivergedError(message, self.iter, layer_name, blob_name)

    # ----------------------------------------------------------------- updating
    # On the CPU a large param is updated in slices of this many elements, so the diff,
    # data, history and work slices (4-6 x 512 KiB) stay in cache across the 6-10 passes of
    # normalize, regularize, the rule and data -= diff; the slices are shared out over
    # qcaffe's threads.  Element-wise math: the floats are the same for any slicing.
    CHUNK = 131072
    whole_blob = False          # a rule needing whole-blob statistics (LARS norms) sets it
    num_temps = 1               # work arrays the rule uses (temp 0 is also regularize's)

    def apply_update(self):
        """Caffe: ``SGDSolver::ApplyUpdate`` (+ ``Net::Update``); then ``iter += 1``.

        Per learnable param: normalize by ``iter_size``, regularize (L2/L1 with
        weight_decay * decay_mult), the rule's ``compute_update_value``, the optional update
        mask, and ``data -= diff``; the diff holds the applied step afterwards, as in Caffe.
        BLAS (gradient norms of clip_gradients and LarsSGD) runs single-threaded, so the
        update does not depend on the BLAS's thread count either.
        """
        with parallel.blas_single_threaded():
            self._apply_update()

    def _apply_update(self):
        p = self.param
        rate = self.get_learning_rate()
        if p.display and self.iter % p.display == 0:
            log.info('Iteration %d, lr = %s', self.iter, fmt(rate))
        self.clip_gradients()
        weight_decay = f32(p.weight_decay)
        l1 = p.regularization_type == 'L1'
        norm = f32(1.0 / p.iter_size) if p.iter_size > 1 else None
        sets = range(self.num_history_sets)
        for i, prm in enumerate(self._params):
            diff = prm.blob.mutable_dev_diff.reshape(-1)
            if not prm.learnable:
                diff.fill(0)            # masks / statistics never move
                continue
            data = prm.blob.mutable_dev_data.reshape(-1)
            hist = [self.history_array(i, k).reshape(-1) for k in sets]
            temps = [self.temp(i, k).reshape(-1) for k in range(self.num_temps)]
            xp = backend.get_array_module(diff)
            local_decay = weight_decay * prm.decay_mult
            mask = prm.layer.param_update_mask(prm.index)
            if mask is not None:
                mask = xp.asarray(mask).reshape(-1)     # a host mask moves to the device
            n = diff.size

            def update(k, s, e, i=i, diff=diff, data=data, hist=hist, temps=temps,
                       local_decay=local_decay, mask=mask, xp=xp):
                g, w, tmp = diff[s:e], data[s:e], temps[0][s:e]
                if norm is not None:
                    g *= norm
                if local_decay:
                    if l1:
                        xp.sign(w, out=tmp)
                        tmp *= local_decay
                    else:
                        xp.multiply(w, local_decay, out=tmp)
                    g += tmp
                h = [a[s:e] for a in hist]
                self.compute_update_value(i, rate, g, w, h, [t[s:e] for t in temps])
                if mask is not None:
                    m = mask[s:e]
                    g *= m
                    for a in h:     # frozen entries also lose their history (NK INQ)
                        a *= m
                w -= g              # Net::Update
            if self.whole_blob or xp is not np or n <= self.CHUNK:
                update(0, 0, n)
            else:
                parallel.run([(s, min(n, s + self.CHUNK)) for s in range(0, n, self.CHUNK)],
                             update)
        self.iter += 1

    def clip_gradients(self):
        """Caffe: ``ClipGradients``: scale all diffs if their global L2 norm > clip_gradients."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(p.blob.sumsq_diff() for p in self._params)
        l2norm = f32(math.sqrt(sumsq))
        if l2norm > clip:
            scale = f32(clip) / l2norm
            log.info('Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale '
                     'factor %s', fmt(l2norm), fmt(clip), fmt(scale))
            for p in self._params:
                p.blob.scale_diff(scale)

    def compute_update_value(self, i, rate, g, w, hist, tmp):
        """Caffe: ``ComputeUpdateValue`` for (a slice of) learnable param ``i``.

        ``g``: the normalized, regularized diff, to be turned in place into the step that is
        subtracted from the data ``w``; ``hist``: the history slices (``num_history_sets``);
        ``tmp``: work slices (``num_temps``).  All are flat views of the same elements.
        """
        raise NotImplementedError

    def local_rate(self, i, rate):
        return f32(rate) * self._params[i].lr_mult

    # ---------------------------------------------------------------- testing
    def test_all(self):
        """Caffe: ``TestAll``."""
        self.test_results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test_results.append(self.test(i))
        return self.test_results

    def test(self, i=0):
        """Caffe: ``Solver::Test``: mean of every output element over ``test_iter[i]`` batches."""
        p = self.param
        log.info('Iteration %d, Testing net (#%d)', self.iter, i)
        net = self.test_nets[i]
        net.share_trained_layers_with(self.net)
        scores = None
        loss = 0.0
        n = p.test_iter[i]
        for _ in range(n):
            request = self.get_requested_action()
            while request != solver_action.NONE:
                if request == solver_action.SNAPSHOT:
                    self.snapshot()
                elif request == solver_action.STOP:
                    self.requested_early_exit = True
                request = self.get_requested_action()
            if self.requested_early_exit:
                break
            outputs, iter_loss = net.forward_prefilled()
            if p.test_compute_loss:
                loss += iter_loss
            vals = [np.array(b.cpu_data(), dtype=np.float32).ravel() for b in outputs]
            if scores is None:
                scores = vals
            else:
                for s, v in zip(scores, vals):
                    s += v
        if self.requested_early_exit:
            log.info('Test interrupted.')
            return []
        if scores is None:  # test_iter 0: Caffe's Test loops zero times and prints nothing
            return []
        if p.test_compute_loss:
            log.info('Test loss: %s', fmt(loss / n))
        means = [s / f32(n) for s in (scores or [])]
        return self._log_outputs(net, 'Test', None, means)

    # ------------------------------------------------------------ snapshots
    def snapshot_filename(self, extension):
        """Caffe: ``SnapshotFilename``: ``<prefix>_iter_<N><ext>``."""
        return '%s_iter_%d%s' % (self.param.snapshot_prefix, self.iter, extension)

    def check_snapshot_write_permissions(self, force=False):
        """Caffe: ``CheckSnapshotWritePermissions``: create and delete a probe file."""
        p = self.param
        if not (p.snapshot or force) or not self.is_root:   # Caffe: the root solver's files
            return
        if p.snapshot and not p.HasField('snapshot_prefix'):
            self._fail('snapshot_prefix', 'snapshot is specified but snapshot_prefix is not')
        probe = self.snapshot_filename('.tempfile')
        try:
            with open(probe, 'w'):
                pass
            os.remove(probe)
        except OSError as e:
            self._fail('snapshot_prefix', "Cannot write to snapshot prefix '%s' (%s).  Make "
                       "sure that the directory exists and is writable."
                       % (p.snapshot_prefix, e.strerror or e))

    def snapshot(self):
        """Caffe: ``Solver::Snapshot``: weights, then the solver state naming them.

        One commit: the weights and the layer-state companion are written first and the
        solver state last, each atomically (temporary file + rename), so a solver state
        exists only when everything it refers to does; a run killed in between leaves the
        previous snapshot as the latest complete one.
        """
        p = self.param
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        kind = 'HDF5' if hdf5 else 'binary proto'
        model = self.snapshot_filename('.caffemodel.h5' if hdf5 else '.caffemodel')
        state_file = self.snapshot_filename('.solverstate.h5' if hdf5 else '.solverstate')
        log.info('Snapshotting to %s file %s', kind, model)
        if hdf5:
            self.net.save_hdf5(model, p.snapshot_diff)
        else:
            self.net.save(model, p.snapshot_diff)
        state = self.solver_state(model)
        self._write_layer_state(state_file, state)
        log.info('Snapshotting solver state to %s file %s', kind, state_file)
        write_solver_state(state_file, state)
        self.last_snapshot = (model, state_file)
        return state_file

    def _clean_snapshot_temporaries(self):
        """Remove the temporary files of snapshots a killed run left half written."""
        prefix = self.param.snapshot_prefix
        removed, kept = clean_orphaned_temporaries(os.path.dirname(prefix),
                                                   os.path.basename(prefix) + '_iter_')
        if removed:
            log.warning('Removed %d incomplete snapshot file(s) left by an interrupted run: %s',
                        len(removed), ', '.join(removed))
        for path in kept:
            log.warning('%s is a snapshot being written by another running process (or one '
                        'that could not be removed); is another training using snapshot_prefix '
                        '%r?', path, prefix)

    # Layer state that is not a blob (Layer.extra_state: data read positions, DNS mu/sigma,
    # INQ flags...) has no place in Caffe's SolverState, so it goes beside it as
    # <state>.layers.npz with keys "<layer name>/<key>", plus "@rng/..." (the host RNG, e.g.
    # Dropout's) when training drew random numbers, and "@snapshot/id", the id the state
    # records in layer_state_id (with the file's name in layer_state_file).  Written only
    # when there is such state; Caffe ignores both the file and the two fields, and a state
    # without them (every real Caffe state) restores as Caffe restores.
    LAYER_STATE_SUFFIX = '.layers.npz'
    _RNG = '@rng/'
    _ID = '@snapshot/id'

    @staticmethod
    def _rng_position():
        _, keys, pos, has_gauss, gauss = backend.rng().get_state()
        return keys.tobytes(), pos, has_gauss, gauss

    def _write_layer_state(self, state_file, state):
        """Write the companion of ``state_file`` and record it in ``state`` (see above)."""
        path = state_file + self.LAYER_STATE_SUFFIX
        arrays = {}
        for name, layer in zip(self.net.layer_names, self.net.layers):
            for key, value in (layer.extra_state() or {}).items():
                arrays['%s/%s' % (name, key)] = (backend.to_host(value) if hasattr(value, 'get')
                                                 else np.asarray(value))
        if self._rng_position() != self._rng_at_start:
            _, keys, pos, has_gauss, gauss = backend.rng().get_state()
            arrays[self._RNG + 'keys'] = keys
            arrays[self._RNG + 'pos'] = np.array([pos, has_gauss])
            arrays[self._RNG + 'gauss'] = np.array(gauss)
        if not arrays:
            if os.path.exists(path):    # an earlier snapshot's of the same name: superseded
                os.remove(path)
            return
        state.layer_state_id = secrets.token_hex(8)
        state.layer_state_file = os.path.basename(path)
        arrays[self._ID] = np.array(state.layer_state_id)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue(), 'layer state')

    def _layer_state_path(self, state_file, recorded):
        path = state_file + self.LAYER_STATE_SUFFIX
        if os.path.exists(path):
            return path
        # a state renamed without its companion: the name the state recorded, beside it
        beside = os.path.join(os.path.dirname(state_file), recorded)
        if recorded and os.path.exists(beside):
            return beside
        return None

    def _read_layer_state(self, state_file, state):
        """Restore the companion of ``state_file``, or say why the resume is not exact."""
        recorded = state.layer_state_file
        path = self._layer_state_path(state_file, recorded)
        if path is None:
            if recorded:
                self._warn_not_exact(state_file, '%r, which is missing' % recorded)
            return
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise SolverError('Cannot read the layer state %s of solver state %s (%s). Delete '
                              'it to resume as Caffe does, from the weights, history and '
                              'iteration only.' % (display_path(path), display_path(state_file),
                                                   e)) from None
        saved_id = arrays.pop(self._ID, None)
        if recorded and (saved_id is None or str(saved_id) != state.layer_state_id):
            self._warn_not_exact(state_file, '%s, which belongs to another snapshot (its id '
                                 'differs), so it is ignored' % display_path(path))
            return
        try:
            self._apply_layer_state(arrays, path)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise SolverError('Layer state %s of solver state %s is damaged: %s: %s'
                              % (display_path(path), display_path(state_file),
                                 type(e).__name__, e)) from None

    def _apply_layer_state(self, arrays, path):
        per_layer = {}
        if self._RNG + 'keys' in arrays:
            pos, has_gauss = (int(x) for x in arrays[self._RNG + 'pos'])
            backend.rng().set_state(('MT19937', arrays[self._RNG + 'keys'], pos, has_gauss,
                                     float(arrays[self._RNG + 'gauss'])))
        for k, value in arrays.items():
            if not k.startswith(self._RNG):
                name, key = k.split('/', 1)
                per_layer.setdefault(name, {})[key] = value
        for name, state in per_layer.items():
            if name in self.net.layer_names:
                self.net.layers[self.net.layer_names.index(name)].load_extra_state(state)
            else:
                log.warning('Layer state for unknown layer %s in %s ignored', name, path)

    def _warn_not_exact(self, state_file, what):
        stateful = [n for n, layer in zip(self.net.layer_names, self.net.layers)
                    if layer.extra_state()]
        log.warning('Solver state %s was written with the layer state %s: resuming as Caffe '
                    'does, from the weights, history and iteration only; %sthe random '
                    'generator is not restored, so training continues but will not match an '
                    'uninterrupted run.', display_path(state_file), what,
                    'layer(s) %s restart from their first record and a new random state, and '
                    % ', '.join(repr(n) for n in stateful) if stateful else '')

    def solver_state(self, learned_net=''):
        """The SolverState proto of the current state (history blobs with shapes)."""
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = learned_net
        state.current_step = self.current_step
        for h in self.history:
            h.to_proto(state.history.add())
        return state

    def restore(self, state_file):
        """Caffe: ``Solver::Restore``: ``.h5`` suffix = HDF5, else binary SolverState."""
        state_file = os.fsdecode(os.fspath(state_file))
        state = read_solver_state(state_file)
        for field in ('iter', 'current_step'):
            if getattr(state, field) < 0:
                raise SolverError('Solver state %s: %s is %d; it must be >= 0 (the file is '
                                  'damaged or not a solver state)'
                                  % (display_path(state_file), field, getattr(state, field)))
        if len(state.history) != len(self.history):
            raise SolverError(
                'Incorrect length of history blobs in %s: it has %d, this %s solver on net %r '
                'needs %d (%d learnable params x %d). Was it written by a different solver type '
                'or net?' % (display_path(state_file), len(state.history), self.type,
                             self.net.name, len(self.history), len(self._params),
                             self.num_history_sets))
        if state.learned_net:
            self._load_weights(self.net, self._resolve_learned_net(state.learned_net,
                                                                   state_file))
        n = len(self._params)
        for i, (h, bp) in enumerate(zip(self.history, state.history)):
            try:
                h.from_proto(bp, reshape=False)
            except ValueError as e:
                raise SolverError('%s: history blob %d (param %s) does not fit: %s'
                                  % (display_path(state_file), i, self._params[i % n].name,
                                     e)) from None
        self._read_layer_state(state_file, state)
        self.iter = state.iter
        self.current_step = state.current_step
        log.info('SGDSolver: restoring history')

    @staticmethod
    def _resolve_learned_net(path, state_file):
        # Caffe resolves learned_net against the CWD only; a state moved together with its
        # .caffemodel (or restored from another directory) is found next to the state file.
        if os.path.exists(path):
            return path
        beside = os.path.join(os.path.dirname(state_file), os.path.basename(path))
        if os.path.exists(beside):
            log.info('learned_net %s not found from the working directory; using %s', path,
                     beside)
            return beside
        raise SolverError('Solver state %s names the weights file %r (learned_net), which '
                          'exists neither relative to the working directory nor next to the '
                          'state file' % (display_path(state_file), path))
