"""Memory-bound numpy work on every core: split the batch axis across threads.

BLAS already runs GEMMs on all cores, but numpy's element-wise loops, copies and reductions
use one.  They do release the GIL inside their C loops, so handing each thread a contiguous
slice of the minibatch (``work(start, stop)``) runs them in parallel -- it is not a Python loop
over images: there is one slice per core.  Workers must write disjoint slices of preallocated
arrays only.  cupy arrays (and small jobs, where the hand-off costs more than it saves) run
in the calling thread.

``QCAFFE_NUM_THREADS`` sets the number of threads.  By default it is the core count while the
machine has idle cores (1-minute load average below cores + 1, i.e. only this process is
busy; re-read every 2 s) and 1 otherwise: when every core is already taken by other
processes the hand-off only adds latency.
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_ELEMENTS = 1 << 16   # per call: smaller jobs are not worth a thread hand-off

_pool = None
_pool_size = 0
_pool_pid = None
_lock = threading.Lock()
_local = threading.local()


_idle = {'checked': -1e9, 'threads': 1}


def num_threads():
    env = os.environ.get('QCAFFE_NUM_THREADS')
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    now = time.monotonic()
    if now - _idle['checked'] > 2.0:
        cores = max(1, min(4, os.cpu_count() or 1))
        try:
            busy = os.getloadavg()[0] >= cores + 1
        except (AttributeError, OSError):   # no load average (Windows)
            busy = False
        _idle['threads'] = 1 if busy else cores
        _idle['checked'] = now
    return _idle['threads']


def _executor(n):
    global _pool, _pool_size, _pool_pid
    with _lock:
        # a forked child inherits the pool object but not its threads: make a new one
        if _pool is None or _pool_size < n or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix='qcaffe-batch')
            _pool_size = n
            _pool_pid = os.getpid()
        return _pool


def batch_split(n, work, elements, xp=np):
    """Run ``work(start, stop)`` over ``[0, n)`` in one contiguous slice per thread."""
    t = min(num_threads(), n)
    if (t <= 1 or xp is not np or elements < MIN_ELEMENTS
            or getattr(_local, 'inside', False)):
        work(0, n)
        return
    bounds = [(n * i // t, n * (i + 1) // t) for i in range(t)]
    pool = _executor(t - 1)

    def run(s, e):
        _local.inside = True   # no nested splitting from inside a worker
        try:
            work(s, e)
        finally:
            _local.inside = False
    futures = [pool.submit(run, s, e) for s, e in bounds[1:]]
    try:
        run(*bounds[0])
    finally:
        for f in futures:
            f.result()


def copyto(dst, src, xp=np):
    """``xp.copyto(dst, src)`` split over the first axis (both arrays share it)."""
    def work(s, e):
        xp.copyto(dst[s:e], src[s:e])
    batch_split(dst.shape[0], work, dst.size, xp)
