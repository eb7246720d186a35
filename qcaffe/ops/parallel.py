"""The CPU engine's threads: fixed chunks of work, run by a small pool, same result for any
thread count.

Determinism by construction.  Work over a minibatch is cut into chunks by :func:`chunks`,
whose boundaries depend on the work's size only -- never on the number of threads, the machine
load or which thread runs what.  Each chunk's arithmetic is the same wherever it runs (BLAS is
held at one thread while qcaffe computes, so a GEMM's kernel depends on its shape only), and a
sum over chunks (a weight gradient) is formed from per-chunk partial sums added in chunk order.
So ``QCAFFE_NUM_THREADS`` / :func:`set_num_threads` change the speed, not one bit of the result.

The pool: ``num_threads() - 1`` worker threads and the caller take chunk indices from a shared
counter until none is left (a thread that starts late, or a core busy with another process,
simply takes fewer chunks), then the caller waits for the workers.  numpy releases the GIL in
its C loops and BLAS calls, so the chunks run in parallel.  Work called from inside a chunk, or
while another thread is using the pool, runs its chunks in the calling thread (same result).
cupy arrays are never chunked: the GPU runs the whole batch per kernel.

BLAS: qcaffe's own threads own the cores, so numpy's BLAS runs single-threaded inside
:func:`blas_single_threaded` (held for a whole Net forward/backward and for every
:func:`run`), through threadpoolctl; the user's BLAS setting is back in force outside.
"""
import itertools
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import config

# a chunk touches at least about this many elements: enough work per chunk that the Python
# around it (and the smaller GEMMs of a smaller chunk) costs a few per cent at most
MIN_CHUNK_ELEMENTS = 1 << 18
# chunks per job at most: 12 shares evenly between 1, 2, 3, 4 and 6 threads
MAX_CHUNKS = 12

_state = {'threads': config.NUM_THREADS}
_local = threading.local()


def num_threads():
    """Threads of qcaffe's CPU engine (``QCAFFE_NUM_THREADS``, default: the usable cores)."""
    return _state['threads']


def set_num_threads(n):
    """Use ``n`` threads from now on (pycaffe-style module call: ``qcaffe.set_num_threads``).
    Changes speed only: results are identical for every thread count."""
    n = int(n)
    if n < 1:
        raise ValueError('set_num_threads: the number of threads must be >= 1, got %d' % n)
    _state['threads'] = n


def chunks(n, elements, xp=np):
    """Fixed ``(start, stop)`` chunks of ``[0, n)`` for work touching ``elements`` elements.

    A function of ``n`` and ``elements`` alone: at most :data:`MAX_CHUNKS`, each touching at
    least :data:`MIN_CHUNK_ELEMENTS` (one chunk for small work and for cupy arrays)."""
    k = min(n, MAX_CHUNKS, max(1, int(elements) // MIN_CHUNK_ELEMENTS))
    if k <= 1 or xp is not np:
        return [(0, n)]
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


# ---------------------------------------------------------------------------- BLAS threads
_blas = {'libs': None, 'depth': 0, 'saved': []}
_blas_lock = threading.RLock()   # re-entrant: a finalizer run by the GC inside may enter too


def _blas_libs():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (found once)."""
    if _blas['libs'] is None:
        _blas['libs'] = ThreadpoolController().select(user_api='blas').lib_controllers
    return _blas['libs']


class blas_single_threaded(object):
    """Context: numpy's BLAS at one thread inside (re-entrant; the outermost exit restores
    the previous setting).  Caffe equivalent: none -- Caffe's CPU GEMMs follow the BLAS's own
    threading; qcaffe threads itself, so that results do not depend on the thread count."""

    def __enter__(self):
        with _blas_lock:
            if _blas['depth'] == 0:
                libs = _blas_libs()
                _blas['saved'] = [lib.get_num_threads() for lib in libs]
                for lib, n in zip(libs, _blas['saved']):
                    if n != 1:
                        lib.set_num_threads(1)
            _blas['depth'] += 1
        return self

    def __exit__(self, *exc):
        with _blas_lock:
            _blas['depth'] -= 1
            if _blas['depth'] == 0:
                for lib, n in zip(_blas_libs(), _blas['saved']):
                    if n != 1:
                        lib.set_num_threads(n)


# ---------------------------------------------------------------------------- the pool
class _Worker(object):
    """A pool thread: ``start(job)`` hands it a job, ``wait()`` returns when it is done (and
    re-raises what the job raised)."""

    def __init__(self):
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._job = None
        self._error = None
        threading.Thread(target=self._loop, name='qcaffe-worker', daemon=True).start()

    def _loop(self):
        _local.inside = True       # work started from a chunk runs in that chunk's thread
        while True:
            self._go.acquire()
            try:
                self._job()
            except BaseException as exc:   # re-raised in the caller by wait()
                self._error = exc
            self._job = None
            self._done.release()

    def start(self, job):
        self._job = job
        self._go.release()

    def wait(self):
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error


_pool = {'workers': [], 'busy': threading.Lock()}


def _forget_pool():
    """A forked child inherits the pool's objects but not its threads: start afresh."""
    _pool.update(workers=[], busy=threading.Lock())


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_pool)


def _workers(n):
    """``n`` pool threads, started on first use."""
    workers = _pool['workers']
    while len(workers) < n:
        workers.append(_Worker())
    return workers[:n]


def run(bounds, work):
    """``work(k, start, stop)`` for every chunk ``k`` of ``bounds``; returns when all are done.

    Chunks may run in any thread and order, so ``work`` must write disjoint parts of
    preallocated arrays only (or chunk ``k``'s own partial result).  The first error raised by
    any chunk is re-raised here once every thread has stopped."""
    with blas_single_threaded():
        threads = min(num_threads(), len(bounds))
        inside = getattr(_local, 'inside', False)
        if threads > 1 and not inside and _pool['busy'].acquire(False):
            try:
                _run_pooled(bounds, work, threads)
            finally:
                _pool['busy'].release()
            return
        _local.inside = True         # (work these chunks start runs inside them)
        try:
            for k, (s, e) in enumerate(bounds):
                work(k, s, e)
        finally:
            _local.inside = inside


def _run_pooled(bounds, work, threads):
    counter = itertools.count()     # next() on it is atomic under the GIL
    failed = []

    def take_chunks():
        while not failed:
            k = next(counter)
            if k >= len(bounds):
                return
            try:
                work(k, *bounds[k])
            except BaseException:
                failed.append(k)
                raise

    workers = _workers(threads - 1)
    for worker in workers:
        worker.start(take_chunks)
    errors = []
    _local.inside = True
    try:
        take_chunks()
    except BaseException as exc:
        errors.append(exc)
    finally:
        _local.inside = False
        for worker in workers:
            try:
                worker.wait()
            except BaseException as exc:
                errors.append(exc)
    if errors:
        raise errors[0]


def for_chunks(n, elements, work, xp=np):
    """``work(start, stop)`` over the fixed :func:`chunks` of ``[0, n)``, for element-wise work
    (disjoint writes, nothing summed across rows: the floats do not depend on the cut).  Called
    from inside a chunk, it runs ``[0, n)`` whole: that chunk is already one thread's share."""
    if getattr(_local, 'inside', False):
        work(0, n)
        return
    run(chunks(n, elements, xp), lambda k, s, e: work(s, e))


def copyto(dst, src, xp=np):
    """``xp.copyto(dst, src)`` in chunks of the first axis (both arrays share it)."""
    def work(s, e):
        xp.copyto(dst[s:e], src[s:e])
    for_chunks(dst.shape[0], dst.size, work, xp)


def sum_partials(partials, out):
    """``out += partials[0] + partials[1] + ...``, added in chunk order (a fixed order, so
    the float result does not depend on which thread computed which partial)."""
    total = partials[0]
    for p in partials[1:]:
        total += p
    out += total
    return out
