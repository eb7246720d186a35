"""qcaffe's configuration, in one place: the environment variables (read once, at import)
and the Python calls that change the same settings at run time.

=============================  ===============  ============================================
variable                       default          meaning (Python call)
=============================  ===============  ============================================
``QCAFFE_NUM_THREADS``         usable cores     threads of the CPU engine
                                                (``qcaffe.set_num_threads(n)``,
                                                ``qcaffe.num_threads()``).  Results are
                                                bit-identical for every value.
``QCAFFE_DATA_IN_MEMORY_MB``   512              raw-pixel LMDBs up to this size are held in
                                                memory and shared by the nets reading them;
                                                0 always streams from disk.
=============================  ===============  ============================================

The test suite reads four more, never the library: ``QCAFFE_SHARED_DATA`` (where the
reference data lives, default ``../shared/data``), ``QCAFFE_REQUIRE_SHARED=1`` (missing
reference data fails instead of skipping; set by ``.ci/run``), ``QCAFFE_TEST_MODE=gpu`` (run
the suite in GPU mode) and ``QCAFFE_MNIST_DIR`` (the MNIST IDX files for the training tests).

A value that cannot be used stops ``import qcaffe`` with an error naming the variable, the
value and what is expected.
"""
import os


class ConfigError(ValueError):
    """An environment variable of the table above holds a value qcaffe cannot use."""


def usable_cores():
    """Cores this process may run on (``taskset`` / cgroup affinity), not the machine's count:
    pinned to 2 of 16 cores, 16 threads would fight over 2."""
    n = os.cpu_count() or 1
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # no affinity API (macOS, Windows)
        pass
    return max(1, n)


def _read_int(name, default, minimum):
    raw = os.environ.get(name, '').strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError('%s=%r: expected a whole number >= %d (unset it for the default, %s)'
                          % (name, raw, minimum, default))
    return value


NUM_THREADS = _read_int('QCAFFE_NUM_THREADS', usable_cores(), 1)
DATA_IN_MEMORY_BYTES = _read_int('QCAFFE_DATA_IN_MEMORY_MB', 512, 0) << 20
