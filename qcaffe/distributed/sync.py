"""Data-parallel training: N solvers, one per process, that train as one.

Caffe equivalent: ``NCCL<Dtype>`` of src/caffe/parallel.cpp (pycaffe ``caffe.NCCL``), a solver
callback.  Caffe's multi-GPU semantics, on any :class:`~qcaffe.distributed.comm.Communicator`:

* every rank builds the same solver (seeded ``random_seed + rank``); :meth:`DataParallel.bcast`
  copies the root's weights to all (Caffe: ``NCCL::Broadcast``);
* rank k's Data layers read the records k, k+N, k+2N, ... (:mod:`qcaffe.layers.data`), so the
  ranks see disjoint data and one iteration covers the N*B records one process would read
  at ``iter_size: N``;
* after the backward pass the gradients are summed over the ranks and divided by N
  (:meth:`on_gradients_ready`; with ``layer_wise_reduce`` each group of layers is reduced
  while the backward pass goes on, :meth:`__call__` being the net's after-backward hook),
  so every rank applies the same update to the same weights;
* what is not a gradient but must agree everywhere -- blobs the update never moves (DNS/INQ
  masks, BatchNorm statistics), each layer's ``extra_state()`` (DNS mu/sigma, INQ progress)
  unless the layer declares it ``per_rank_state`` (data read positions), and the compression
  parameters (μL2Q alpha/delta/fixedpos/maxbits) -- is broadcast from the root after every
  backward pass (:meth:`sync_state`), the point where forward passes may have changed it;
* the root alone tests, logs and snapshots, and its decisions (stop, snapshot) hold on every
  rank (``Solver.decide``, :meth:`decide`).

:meth:`check_replicas` compares checksums of everything above (and the solver history) across
the ranks and names the first difference.
"""
import logging
import time
import zlib

import numpy as np

from .. import backend
from ..layers.base import Layer
from .buckets import GROUP_BYTES, GradientBuckets
from .comm import DistributedError

log = logging.getLogger('qcaffe')
f32 = np.float32


def _compress_params(layer):
    lp = layer.layer_param
    return tuple(tuple((m.alpha, m.delta, m.fixedpos, m.maxbits) for m in field)
                 for field in (lp.weights_compress_param, lp.activations_compress_param))


def _set_compress_params(layer, values):
    lp = layer.layer_param
    for field, rows in zip((lp.weights_compress_param, lp.activations_compress_param), values):
        for m, (alpha, delta, fixedpos, maxbits) in zip(field, rows):
            m.alpha, m.delta, m.fixedpos, m.maxbits = alpha, delta, fixedpos, maxbits


def _host_state(layer):
    return {k: backend.to_host(v) if hasattr(v, 'get') else np.asarray(v)
            for k, v in (layer.extra_state() or {}).items()}


def gradient_params(solver):
    """``(layer index, blob)`` of every param the update moves: what is reduced."""
    index = {id(layer): i for i, layer in enumerate(solver.net.layers)}
    return [(index[id(p.layer)], p.blob) for p in solver.update_params if p.learnable]


def quiet_non_root(rank):
    """Caffe logs the solver's lines on the root solver only: other ranks keep warnings and
    errors."""
    if rank > 0:
        logger = logging.getLogger('qcaffe')
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


class DataParallel(object):
    """``solver`` trained together with the same solver on the other ranks of ``comm``.

    Wire it as Caffe does: ``bcast()`` once (after any restore), then ``attach()`` (or, as
    python/train.py does, ``solver.add_callback(dp)`` and, with ``layer_wise_reduce``,
    ``solver.net.after_backward(dp)``).
    """

    def __init__(self, solver, comm, group_bytes=GROUP_BYTES):
        if comm.size != backend.solver_count() or comm.rank != solver.rank:
            raise DistributedError(
                'rank %d of %d: the solver was built as rank %d of %d (solver_rank / '
                'solver_count); set them before building the solver (pycaffe: '
                'caffe.set_solver_count(%d), caffe.set_solver_rank(%d)) so its Data layers '
                'read their own share of the data' % (comm.rank, comm.size, solver.rank,
                                                      backend.solver_count(), comm.size,
                                                      comm.rank))
        self.solver, self.comm = solver, comm
        self.net = net = solver.net
        roles = solver.update_params
        self.buckets = GradientBuckets(gradient_params(solver), group_bytes)
        self.all_blobs = [p.blob for p in roles]
        self.state_blobs = [p.blob for p in roles if not p.learnable]
        self.state_layers = [(name, layer) for name, layer in zip(net.layer_names, net.layers)
                             if not layer.per_rank_state
                             and type(layer).extra_state is not Layer.extra_state]
        self.compressed = [(name, layer) for name, layer in zip(net.layer_names, net.layers)
                           if _compress_params(layer) != ((), ())]
        self.scale = f32(1.0 / comm.size)       # Caffe: Dtype(1.0 / solver_count)
        backward = [i for i, need in enumerate(net.layer_need_backward) if need]
        self._lowest = min(backward) if backward else None
        self._next = 0          # first group whose reduction has not started this iteration
        self._pending = []
        self._pass = 0
        self.comm_seconds = 0.0     # time spent in reductions and state broadcasts
        solver.collective = self
        quiet_non_root(comm.rank)

    # ------------------------------------------------------------------ wiring
    def attach(self):
        """Caffe: ``NCCL::Run``'s wiring: a solver callback, plus the net's after-backward
        hook with ``layer_wise_reduce``."""
        self.solver.add_callback(self)
        if self.solver.param.layer_wise_reduce:
            self.net.add_hook('after_backward', self)
        return self

    def bcast(self):
        """Caffe: ``NCCL::Broadcast``: the root's weights, masks, statistics and layer state
        on every rank; first checks that all ranks built the same solver."""
        self._check_same_setup()
        xp = backend.get_array_module(self.buckets.buffer)
        self._bcast_blobs(self.all_blobs, xp)
        self._bcast_objects()
        if self.solver.iter > 0 and self.comm.rank > 0:
            # restored from a snapshot: the host random stream is the root's; give this rank
            # its own again (Dropout masks must differ across ranks)
            rng = backend.rng()
            rng.seed(backend.rank_seed(rng.get_state()[1], self.comm.rank))

    def _check_same_setup(self):
        s = self.solver
        mine = (s.type, s.iter, s.param.iter_size,
                tuple((name, tuple(tuple(b.shape) for b in layer.blobs))
                      for name, layer in zip(self.net.layer_names, self.net.layers)))
        for rank, theirs in enumerate(self.comm.allgather_object(mine)):
            if theirs != mine:
                what = ('solver type %s / %s' % (theirs[0], mine[0]) if theirs[0] != mine[0]
                        else 'iteration %d / %d' % (theirs[1], mine[1]) if theirs[1] != mine[1]
                        else 'iter_size %d / %d' % (theirs[2], mine[2]) if theirs[2] != mine[2]
                        else 'net layers or blob shapes')
                raise DistributedError('rank %d and rank %d built different solvers (%s): '
                                       'every rank must read the same solver, net and '
                                       'snapshot files' % (rank, self.comm.rank, what))

    def _bcast_blobs(self, blobs, xp):
        if not blobs:
            return
        buf = xp.empty(sum(b.count for b in blobs), np.float32)
        views, start = [], 0
        for b in blobs:
            views.append(buf[start:start + b.count])
            start += b.count
        if self.comm.rank == 0:
            for v, b in zip(views, blobs):
                v[...] = b.dev_data.reshape(-1)
        self.comm.bcast(buf)
        if self.comm.rank != 0:
            for v, b in zip(views, blobs):
                b.mutable_dev_data.reshape(-1)[...] = v

    def _bcast_objects(self):
        if not (self.state_layers or self.compressed):
            return
        state = None
        if self.comm.rank == 0:
            state = ({name: _host_state(layer) for name, layer in self.state_layers},
                     {name: _compress_params(layer) for name, layer in self.compressed})
        extra, compress = self.comm.bcast_object(state)
        if self.comm.rank != 0:
            for name, layer in self.state_layers:
                layer.load_extra_state(extra[name])
            for name, layer in self.compressed:
                _set_compress_params(layer, compress[name])

    # --------------------------------------------------------- solver callbacks
    def on_start(self):
        """Caffe: ``Solver::Callback::on_start``: a new iteration, nothing reduced yet."""
        self.buckets.ensure()
        self._next, self._pending, self._pass = 0, [], 0

    def __call__(self, layer_index):
        """Caffe: ``NCCL::run(layer)``, the after-backward hook of ``layer_wise_reduce``:
        start reducing every group the backward pass has completed (in the last of the
        ``iter_size`` passes, when the gradients are whole)."""
        if self._pass == self.solver.param.iter_size - 1:
            t = time.perf_counter()
            groups = self.buckets.groups
            while self._next < len(groups) and groups[self._next].first_layer >= layer_index:
                g = groups[self._next]
                self._pending.append((g, self.comm.start_allreduce(g.array)))
                self._next += 1
            self.comm_seconds += time.perf_counter() - t
        if layer_index == self._lowest:
            self._pass += 1

    def on_gradients_ready(self):
        """Caffe: ``NCCL::on_gradients_ready``: gradients summed over the ranks and divided
        by their number; then the root's non-gradient state on every rank."""
        t = time.perf_counter()
        for g in self.buckets.groups[self._next:]:
            self.comm.allreduce(g.array)
            g.array *= self.scale
        for g, handle in self._pending:
            handle.wait()
            g.array *= self.scale
        self._next, self._pending = len(self.buckets.groups), []
        self.sync_state()
        self.comm_seconds += time.perf_counter() - t

    def sync_state(self):
        """The root's masks, statistics, layer state and compression parameters everywhere
        (nothing to do for nets without them, e.g. LeNet)."""
        if self.state_blobs:
            self._bcast_blobs(self.state_blobs, backend.get_array_module(self.buckets.buffer))
        self._bcast_objects()

    def decide(self, value):
        """The root's ``value`` on every rank (``Solver.decide``: stop / snapshot requests)."""
        return self.comm.bcast_object(value)

    # ----------------------------------------------------------------- checks
    def checksums(self):
        """``[(what, crc32)]`` of every replicated value of this rank's solver."""
        s = self.solver
        out = [('iteration', s.iter)]
        for p in s.update_params:
            out.append(('%s data' % p.name, zlib.crc32(backend.to_host(p.blob.dev_data)
                                                       .tobytes())))
        for i, h in enumerate(s.history):
            out.append(('history %d' % i, zlib.crc32(backend.to_host(h.dev_data).tobytes())))
        for name, layer in self.state_layers:
            for key, value in sorted(_host_state(layer).items()):
                out.append(('%s state %s' % (name, key), zlib.crc32(value.tobytes())))
        for name, layer in self.compressed:
            out.append(('%s compression parameters' % name,
                        zlib.crc32(repr(_compress_params(layer)).encode())))
        return out

    def check_replicas(self):
        """Raise :class:`DistributedError` (on every rank) unless all ranks hold the same
        weights, history, masks, statistics, layer state and compression parameters."""
        everyone = self.comm.allgather_object(self.checksums())
        root = everyone[0]
        for rank, theirs in enumerate(everyone[1:], 1):
            diff = [what for (what, a), (_, b) in zip(root, theirs) if a != b]
            if diff or len(theirs) != len(root):
                raise DistributedError('rank %d differs from rank 0 in %s%s' % (
                    rank, ', '.join(diff[:5]) or 'the number of values',
                    ' and %d more' % (len(diff) - 5) if len(diff) > 5 else ''))
