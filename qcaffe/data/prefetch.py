"""Background batch prefetching, like Caffe's ``BasePrefetchingDataLayer``.

Caffe equivalent: ``BasePrefetchingDataLayer`` + ``InternalThread`` (src/caffe/layers/
base_data_layer.cpp): ``PREFETCH_COUNT`` (``data_param.prefetch``, default 4) batch buffers
circulate between a *free* and a *full* queue; a thread fills free batches in order, the
layer's Forward takes the next full one, copies it into the tops and gives it back.

* Order: one producer, FIFO queues: batches arrive in the order they were made.
* Randomness: the producer gets its own ``RandomState`` seeded from ``backend.rng()`` when it
  starts (Caffe seeds each InternalThread from ``caffe_rng_rand()``), so a ``random_seed``
  makes the batch sequence repeatable whatever the thread timing.
* Errors: an exception in the producer is handed to the consumer, which raises
  :class:`PrefetchError` naming the layer, with the original exception chained: a
  QcaffeError (bad data) keeps its one-line message, anything else (a bug) carries the
  producer's traceback in the message.
* Shutdown: ``stop()`` (also run when the owner is garbage collected or the interpreter exits)
  sets a flag and joins the thread; the thread never blocks for long on a queue.  A Ctrl-C
  during the exit-time joins ends them quietly.
"""
import atexit
import queue
import threading
import traceback
import weakref

import numpy as np

from .. import backend
from ..io.errors import QcaffeError

_POLL_S = 0.05
_live = weakref.WeakSet()


class PrefetchError(QcaffeError):
    """The prefetch thread of a data layer failed; the cause is chained."""


class _Failure(object):
    def __init__(self, exc):
        self.exc = exc
        self.text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _worker(fill_ref, free, full, stop, rng):
    try:
        while not stop.is_set():
            try:
                batch = free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            fill = fill_ref()
            if fill is None:  # the layer is gone
                return
            fill(batch, rng)
            del fill
            full.put(batch)
    except BaseException as e:  # handed to the main thread, never lost
        full.put(_Failure(e))


class Prefetcher(object):
    """Run ``fill(batch, rng)`` on a background thread over ``count`` reusable batches.

    ``rng``: the thread's generator (default: a new one seeded with ``seed``, itself drawn
    from ``backend.rng()`` when not given).  ``make_batch()`` builds one batch buffer (any
    object, typically a dict of numpy arrays);
    ``fill(batch, rng)`` fills it in place (it may also replace entries, e.g. when shapes
    change).  ``next()`` returns the next full batch; give it back with ``release(batch)``
    once its contents are copied (Caffe: ``prefetch_free_.push``).
    """

    def __init__(self, fill, make_batch, count=4, name='data', seed=None, rng=None):
        if count < 1:
            raise PrefetchError('Layer %r: prefetch must be >= 1, got %d' % (name, count))
        self.name = name
        self._free = queue.Queue()
        self._full = queue.Queue()
        for _ in range(int(count)):
            self._free.put(make_batch())
        if rng is None:
            if seed is None:
                seed = int(backend.rng().randint(0, 2 ** 31 - 1))
            rng = np.random.RandomState(seed)
        self.rng = rng
        self._stop = threading.Event()
        self._failed = None
        # The thread holds neither this object nor the layer (a bound ``fill`` is held weakly),
        # so dropping the layer stops its thread (``__del__``), as deleting a Caffe Net does.
        ref = weakref.WeakMethod(fill) if hasattr(fill, '__self__') else (lambda: fill)
        self._thread = threading.Thread(
            target=_worker, args=(ref, self._free, self._full, self._stop, self.rng),
            name='qcaffe-prefetch-%s' % name, daemon=True)
        self._thread.start()
        _live.add(self)

    def next(self):
        """The next full batch (Caffe: ``prefetch_full_.pop("Waiting for data")``)."""
        if self._failed is not None:
            self._raise(self._failed)
        while True:
            try:
                item = self._full.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._full.empty():
                    raise PrefetchError('Layer %r: the prefetch thread is not running (was the '
                                        'layer stopped?)' % self.name)
        if isinstance(item, _Failure):
            self._failed = item
            self._raise(item)
        return item

    def _raise(self, failure):
        exc = failure.exc
        if isinstance(exc, QcaffeError):
            # Bad data, reported by the reader with its database, record and key: the
            # message is the whole story (the cause stays chained for debuggers).
            message = str(exc)
            if repr(self.name) not in message:
                message = 'Layer %r: %s' % (self.name, message)
            raise PrefetchError(message) from exc
        raise PrefetchError('Layer %r: loading data in the prefetch thread failed: %s: %s\n'
                            'Prefetch thread traceback:\n%s'
                            % (self.name, type(exc).__name__, exc, failure.text)) from exc

    def release(self, batch):
        """Give a batch buffer back for refilling (Caffe: ``prefetch_free_.push``)."""
        self._free.put(batch)

    @property
    def running(self):
        return self._thread.is_alive()

    def stop(self, timeout=None):
        """Stop the thread and wait for it (Caffe: ``StopInternalThread``); the batch being
        filled is finished first, so nothing touches the data source after this returns."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __del__(self):
        try:
            self._stop.set()
        except Exception:
            pass


@atexit.register
def _stop_all():
    """At interpreter exit: stop every prefetch thread (all flags first, then the joins)."""
    live = list(_live)
    for p in live:
        p._stop.set()
    try:
        for p in live:
            p.stop(timeout=1.0)
    except KeyboardInterrupt:
        # A second Ctrl-C while the process exits: the threads are daemons and die with it;
        # a traceback from this hook would only bury the run's last messages.
        pass
