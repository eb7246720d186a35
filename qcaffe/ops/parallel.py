"""Memory-bound numpy work on every core: split the batch axis across threads.

BLAS already runs GEMMs on all cores, but numpy's element-wise loops, copies and reductions
use one.  They do release the GIL inside their C loops, so handing each thread a contiguous
slice of the minibatch (``work(start, stop)``) runs them in parallel -- it is not a Python loop
over images: there is one slice per core.  Workers must write disjoint slices of preallocated
arrays only.  cupy arrays (and small jobs, where the hand-off costs more than it saves) run
in the calling thread.

``QCAFFE_NUM_THREADS`` sets the number of threads.  By default it is the core count while other
processes leave the cores idle (their share of the machine's CPU time since the last check,
re-read at most every 2 s, is below half; this process's own threads never count) and 1
otherwise: when the cores are already taken by other processes the hand-off only adds
latency.

The same check sizes numpy's OpenBLAS thread pool (when numpy uses OpenBLAS, the user set no
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``QCAFFE_NUM_THREADS`` and
``QCAFFE_ADAPT_BLAS`` is not 0): on a machine whose cores are taken by other processes,
OpenBLAS threads spin against them and a GEMM gets 10-80x slower (LeNet ip1 at batch 8:
31 ms instead of 0.4 ms with 2 threads on a loaded 2-core machine), so qcaffe drops OpenBLAS to
one thread while other processes keep the machine busy and restores its default when they stop.
``QCAFFE_NUM_THREADS=n`` caps OpenBLAS at n threads as well.

GEMM-heavy layers (Convolution, InnerProduct) use :func:`blas_split`: each thread takes a slice
of the output rows (a slice of the batch through the whole transpose/im2col/GEMM chain) while
OpenBLAS is held at one thread, so there is one hand-off per layer pass and never more busy
threads than cores (OpenBLAS's own pool keeps spinning for a while after each GEMM, against the
threads doing the memory-bound work).  :func:`gemm` slices one 2-D product so that each
thread repacks only the smaller operand.

Results agree across thread counts to float rounding, not bit for bit: OpenBLAS may pick a
different kernel for a smaller slice, and a weight gradient is summed per thread's slice of
the batch.  Set ``QCAFFE_NUM_THREADS`` for bit-repeatable runs (the default follows the load).

Workers are plain threads handed jobs through two gates (:class:`_Worker`), a few microseconds
per hand-off instead of the 60-80 us of a ``concurrent.futures`` pool on the 2-core VM.  The
gates are pthread spinlocks where libc has them: idle workers and a caller waiting at a join
busy-wait in C with the GIL released, for at most ``QCAFFE_SPIN_MS`` (default 50) after the
last split, then park on a lock -- a thread that sleeps lets its (virtual) CPU halt, and
waking it cost ~0.3 ms per hand-off on the VM.
"""
import contextlib
import os
import threading
import time

import numpy as np

MIN_ELEMENTS = 1 << 16   # per call: smaller jobs are not worth a thread hand-off

_pool_busy = threading.Lock()   # one splitting caller at a time; others run unsplit
_local = threading.local()


_idle = {'checked': -1e9, 'threads': 1}


def _find_openblas():
    """(get, set) ctypes functions of the OpenBLAS numpy loaded, or None."""
    import ctypes
    import re
    try:
        maps = open('/proc/self/maps').read()
    except OSError:
        return None
    paths = sorted(set(re.findall(r'(/\S*openblas\S*\.so[.\d]*)', maps)),
                   key=lambda p: ('numpy' not in p and 'scipy_openblas' not in p, p))
    for path in paths:   # numpy's own copy first (torch & co may bundle another)
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ('scipy_openblas_', 'openblas_'):
            for suffix in ('64_', ''):
                get = getattr(lib, prefix + 'get_num_threads' + suffix, None)
                put = getattr(lib, prefix + 'set_num_threads' + suffix, None)
                if get is not None and put is not None:
                    put.argtypes = [ctypes.c_int]
                    return get, put
    return None


_blas = {'init': False, 'funcs': None, 'default': None, 'current': None}


def _adapt_blas(busy):
    """One OpenBLAS thread while other processes keep the cores busy, the default otherwise."""
    if not _blas['init']:
        _blas['init'] = True
        user_set = any(os.environ.get(v) for v in
                       ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'QCAFFE_NUM_THREADS'))
        if not user_set and os.environ.get('QCAFFE_ADAPT_BLAS', '1') != '0':
            _blas['funcs'] = _openblas_funcs()
            if _blas['funcs'] is not None:
                _blas['default'] = _blas['current'] = _blas_default()
    funcs = _blas['funcs']
    # only the main thread calls BLAS in qcaffe; never resize the pool from elsewhere
    if funcs is None or threading.current_thread() is not threading.main_thread():
        return
    want = 1 if busy else _blas['default']
    if want != _blas['current']:
        funcs[1](int(want))
        _blas['current'] = want


def blas_threads():
    """The OpenBLAS thread count qcaffe set (None when it does not manage OpenBLAS)."""
    return _blas['current'] if _blas['funcs'] is not None else None


def _cpu_sample():
    """(wall s, busy CPU s of the whole machine, CPU s of this process) or None."""
    try:
        with open('/proc/stat') as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    busy = (sum(fields[:8]) - idle) / float(os.sysconf('SC_CLK_TCK'))
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def _others_busy(cores):
    """True when OTHER processes keep at least half of the cores busy.

    Measured from /proc/stat between two calls minus this process's own CPU time, so qcaffe's
    own threads never count; without /proc, the 1-minute load average >= cores + 1 decides.
    """
    sample = _cpu_sample()
    prev, _idle['sample'] = _idle.get('sample'), sample
    if sample is not None and prev is not None and sample[0] > prev[0]:
        others = (sample[1] - prev[1]) - (sample[2] - prev[2])
        return others / ((sample[0] - prev[0]) * cores) >= 0.5
    try:
        return os.getloadavg()[0] >= cores + 1
    except (AttributeError, OSError):   # no load average (Windows)
        return False


def _cap_blas(n):
    """``QCAFFE_NUM_THREADS=n`` caps numpy's OpenBLAS at n threads too (unless OpenBLAS's own
    variables are set): ``QCAFFE_NUM_THREADS=1`` then really runs on one core, instead of
    leaving OpenBLAS's default pool spinning (on a loaded 2-core machine a LeNet step took
    550 ms instead of 40 ms that way)."""
    if _hold.get('capped') == n or threading.current_thread() is not threading.main_thread():
        return
    _hold['capped'] = n
    if any(os.environ.get(v) for v in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS')):
        return
    funcs = _openblas_funcs()
    if funcs is None:
        return
    funcs[1](int(min(n, _blas_default())))


def _usable_cores():
    """Cores this process may run on (``taskset``/cgroup affinity), not the machine's count:
    pinned to 2 of 16 cores, 4 threads would fight over 2."""
    n = os.cpu_count() or 1
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # no affinity API (macOS, Windows)
        pass
    return n


def _env_reader(name):
    """A fast ``os.environ.get(name)``: num_threads() asks ~25 times a LeNet step, and the
    mapping's key encoding made that ~2 us a call.  Reads os.environ's own dict, so
    ``os.environ[name] = ...`` (and pytest's monkeypatch) take effect at once."""
    data = getattr(os.environ, '_data', None)
    try:
        key, decode = os.environ.encodekey(name), os.environ.decodevalue
    except AttributeError:
        data = None
    if not isinstance(data, dict):
        return lambda: os.environ.get(name)

    def read():
        value = data.get(key)
        return None if value is None else decode(value)
    return read


_num_threads_env = _env_reader('QCAFFE_NUM_THREADS')


def num_threads():
    env = _num_threads_env()
    if env:
        try:
            n = max(1, int(env))
        except ValueError:
            n = None
        if n is not None:
            _cap_blas(n)
            return n
    now = time.monotonic()
    if now - _idle['checked'] > 2.0:
        cores = max(1, min(4, _usable_cores()))
        busy = _others_busy(cores)
        _idle['threads'] = 1 if busy else cores
        _idle['checked'] = now
        _adapt_blas(busy)
    return _idle['threads']


# How long idle workers keep spinning after a split before they park (block on a lock):
# ``QCAFFE_SPIN_MS`` (0 = never spin).  OpenMP runtimes do the same (GOMP/KMP block time).
def _spin_seconds(value):
    """``QCAFFE_SPIN_MS`` in seconds; a value that is not a number is refused with a warning
    naming the variable (and the default used), not by failing ``import qcaffe``."""
    try:
        return max(0.0, float(value or 0) / 1000.0)
    except ValueError:
        import warnings
        warnings.warn('QCAFFE_SPIN_MS=%r is not a number of milliseconds (e.g. 50, or 0 to never '
                      'spin); using the default 50' % value)
        return 0.05


SPIN_S = _spin_seconds(os.environ.get('QCAFFE_SPIN_MS', '50'))


def _find_spinlocks():
    """(lock, unlock, init) of libc's pthread spinlocks through ctypes, or None (macOS,
    Windows).  A ctypes call releases the GIL, so a thread spinning in ``pthread_spin_lock``
    keeps its core awake without holding up the Python threads."""
    import ctypes
    import ctypes.util
    for name in (None, 'libc.so.6', ctypes.util.find_library('pthread')):
        try:
            lib = ctypes.CDLL(name)
            funcs = (lib.pthread_spin_lock, lib.pthread_spin_unlock, lib.pthread_spin_init)
        except (OSError, AttributeError, TypeError):
            continue
        for f in funcs:
            f.argtypes = [ctypes.c_void_p] + ([ctypes.c_int] if f is funcs[2] else [])
            f.restype = ctypes.c_int
        return funcs
    return None


_spin = {'funcs': False}


def _spinlocks():
    if _spin['funcs'] is False:
        try:
            _spin['funcs'] = _find_spinlocks() if SPIN_S > 0 else None
        except Exception:   # any platform oddity: plain locks
            _spin['funcs'] = None
    return _spin['funcs']


class _SpinGate(object):
    """A pthread spinlock with ``threading.Lock``'s acquire/release: ``acquire()`` busy-waits
    in C (GIL released) until another thread calls ``release()``.  Glibc's spinlock has no
    owner, so one thread may close the gate and another open it, as with a bare Lock."""

    def __init__(self, funcs):
        import ctypes
        self._lock, self._unlock, init = funcs
        self._word = ctypes.c_int(0)
        self._ptr = ctypes.addressof(self._word)
        init(self._ptr, 0)

    def acquire(self):
        self._lock(self._ptr)

    def release(self):
        self._unlock(self._ptr)


class _Worker(object):
    """One pool thread, handed jobs through two gates (``go``, ``done``), both closed at rest.

    A hand-off through bare ``threading.Lock`` s costs a few microseconds of Python, but on a
    VM a sleeping thread's virtual CPU halts, and waking it again took ~0.3 ms -- at the start
    of a split (the worker) and at its join (the caller), 12 splits per LeNet step.  So where
    libc has pthread spinlocks the gates are spinlocks: the idle worker and the joining caller
    busy-wait in C with the GIL released and their cores stay awake (2-core VM: conv2's
    backward split 6.7 -> 5.2 ms; a LeNet step 0.90-0.99x in A/B runs).  The pool's parker thread parks workers
    idle for ``SPIN_S`` on an ordinary lock, so an idle process does not burn its cores.
    """

    def __init__(self):
        funcs = _spinlocks()
        self.spinning = funcs is not None
        gate = (lambda: _SpinGate(funcs)) if self.spinning else threading.Lock
        self._go = gate()
        self._go.acquire()
        self._done = gate()
        self._done.acquire()
        self._park = threading.Lock()
        self._park.acquire()
        self.parked = False
        self._job = None
        self._error = None
        thread = threading.Thread(target=self._loop, name='qcaffe-worker', daemon=True)
        thread.start()

    def _loop(self):
        _local.inside = True   # no nested splitting from inside a worker
        while True:
            self._go.acquire()
            job, self._job = self._job, None
            try:
                job()
            except BaseException as exc:   # re-raised in the caller by wait()
                self._error = exc
            self._done.release()

    def start(self, job):
        if self.parked:
            self.unpark()
        self._job = job
        self._go.release()

    def wait(self):
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def park(self):
        """Stop spinning: the worker blocks on a lock until the next :meth:`start`."""
        if self.spinning and not self.parked:
            self.parked = True
            self._job = self._park.acquire
            self._go.release()

    def unpark(self):
        self._park.release()
        self.wait()
        self.parked = False
        _pool_state['unparked'].set()


# the pool: its workers, the pid that made them (a forked child makes its own), the time of
# the last split, and the parker's wake-up event (set while some worker spins)
_pool_state = {'workers': [], 'pid': None, 'last_split': 0.0, 'unparked': threading.Event()}


def _parker():
    """Park the workers once no split has run for ``SPIN_S`` (daemon thread)."""
    state = _pool_state
    while True:
        state['unparked'].wait()
        idle = time.monotonic() - state['last_split']
        if idle < SPIN_S:
            time.sleep(SPIN_S - idle)
            continue
        if not _pool_busy.acquire(False):     # a split is running: not idle after all
            time.sleep(SPIN_S)
            continue
        try:
            if time.monotonic() - state['last_split'] >= SPIN_S:
                for worker in state['workers']:
                    worker.park()
                state['unparked'].clear()
        finally:
            _pool_busy.release()


def _pool(n):
    """``n`` workers (a forked child inherits the objects but not the threads: new ones)."""
    state = _pool_state
    if state['pid'] != os.getpid():
        state.update(workers=[], pid=os.getpid(), unparked=threading.Event())
    workers = state['workers']
    while len(workers) < n:
        workers.append(_Worker())
        if len(workers) == 1 and workers[0].spinning:
            state['unparked'].set()
            threading.Thread(target=_parker, name='qcaffe-parker', daemon=True).start()
    return workers[:n]


def split_bounds(n, elements, xp=np):
    """The contiguous ``(start, stop)`` slices of ``[0, n)``, one per thread (a single slice
    when threads are off, the job is small, the arrays are cupy's, or inside a worker)."""
    t = min(num_threads(), n)
    if (t <= 1 or xp is not np or elements < MIN_ELEMENTS
            or getattr(_local, 'inside', False)):
        return [(0, n)]
    return [(n * i // t, n * (i + 1) // t) for i in range(t)]


_hold = {'funcs': False}


def _openblas_funcs():
    if _hold['funcs'] is False:
        try:
            _hold['funcs'] = _find_openblas()
        except Exception:   # any platform oddity: no holding
            _hold['funcs'] = None
    return _hold['funcs']


def _blas_default():
    """OpenBLAS's thread count before qcaffe first changed it."""
    if 'blas_default' not in _hold:
        _hold['blas_default'] = int(_openblas_funcs()[0]())
    return _hold['blas_default']


def run_parts(bounds, work, blas=False):
    """``work(k, start, stop)`` for every slice ``k`` of ``bounds``, slice 0 in the calling
    thread and the others in the pool; returns when all are done.

    ``blas=True``: the work calls BLAS.  OpenBLAS is then held at one thread until the parts
    finish, so each part's GEMMs run on the part's own core instead of every part waking the
    BLAS pool (which would put twice as many busy threads as cores).
    """
    if len(bounds) > 1 and not _pool_busy.acquire(False):
        bounds = [(bounds[0][0], bounds[-1][1])]   # another thread is splitting: run whole
    elif len(bounds) > 1:
        try:
            _run_split(bounds, work, blas)
        finally:
            _pool_busy.release()
        return
    work(0, *bounds[0])


class _blas_held(object):
    """Context: numpy's OpenBLAS at one thread inside, its previous count restored after."""

    def __enter__(self):
        funcs = _openblas_funcs()
        self.prev = int(funcs[0]()) if funcs is not None else 1
        if self.prev > 1:
            funcs[1](1)

    def __exit__(self, *exc):
        if self.prev > 1:
            _openblas_funcs()[1](self.prev)


def _run_split(bounds, work, blas):
    with _blas_held() if blas else contextlib.nullcontext():
        workers = _pool(len(bounds) - 1)
        for k, (worker, (s, e)) in enumerate(zip(workers, bounds[1:]), 1):
            worker.start(lambda k=k, s=s, e=e: work(k, s, e))
        errors = []
        try:
            _local.inside = True
            work(0, *bounds[0])
        finally:
            _local.inside = False
            for worker in workers:
                try:
                    worker.wait()
                except BaseException as exc:
                    errors.append(exc)
            _pool_state['last_split'] = time.monotonic()
        if errors:
            raise errors[0]


def blas_split(n, work, elements, xp=np):
    """Like :func:`batch_split` for work that calls BLAS (``work(start, stop)``): threads split
    ``[0, n)`` and OpenBLAS stays at one thread meanwhile.  Only the main thread splits (it
    alone may resize OpenBLAS's pool); elsewhere the work runs whole."""
    if (threading.current_thread() is not threading.main_thread()
            or (xp is np and _openblas_funcs() is None)):
        # a BLAS qcaffe cannot hold at one thread (MKL, Accelerate): let it thread itself
        work(0, n)
        return
    bounds = split_bounds(n, elements, xp)
    if len(bounds) == 1 and xp is np and num_threads() > 1:
        # too small to split, but qcaffe's threads own the cores: keep OpenBLAS at one
        # thread all the same.  A GEMM big enough for OpenBLAS to thread (LeNet ip2, 320k
        # multiply-adds) wakes its pool, which then spins ~0.1 s -- through the whole next
        # iteration -- against qcaffe's worker on the other core.
        with _blas_held():
            work(0, n)
        return
    run_parts(bounds, lambda k, s, e: work(s, e), blas=True)


def batch_split(n, work, elements, xp=np):
    """Run ``work(start, stop)`` over ``[0, n)`` in one contiguous slice per thread."""
    run_parts(split_bounds(n, elements, xp), lambda k, s, e: work(s, e))


def copyto(dst, src, xp=np):
    """``xp.copyto(dst, src)`` split over the first axis (both arrays share it)."""
    def work(s, e):
        xp.copyto(dst[s:e], src[s:e])
    batch_split(dst.shape[0], work, dst.size, xp)


def gemm(a, b, out, xp=np, acc=None):
    """``out = a @ b`` (2-D), or ``out += a @ b`` with ``acc`` a scratch array of out's shape,
    split over qcaffe's threads with OpenBLAS held at one thread.

    The split goes along the output axis that keeps the larger operand undivided-per-thread:
    slicing the rows of ``a`` makes every thread pack all of ``b`` again, slicing the columns
    of ``b`` repacks ``a`` and writes strided output rows; so columns are split only when ``b``
    is much the larger operand (LeNet ip1 forward,
    x (64, 800) @ W.T (800, 500): column slices 0.6 ms, row slices 0.85 ms on 2 cores).
    """
    m, n = out.shape
    by_rows = b.size <= 2 * a.size

    def work(s, e):
        if by_rows:
            prod, dst = (a[s:e], b), out[s:e]
            tmp = None if acc is None else acc[s:e]
        else:
            prod, dst = (a, b[:, s:e]), out[:, s:e]
            tmp = None if acc is None else acc[:, s:e]
        if tmp is None:
            xp.matmul(*prod, out=dst)
        else:
            xp.matmul(*prod, out=tmp)
            dst += tmp
    blas_split(m if by_rows else n, work, m * n * a.shape[1] // 16, xp)
    return out
