import logging
import os
import sys

# Tests import their helpers (shared_data) by plain name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

# QCAFFE_TEST_MODE=gpu runs every test with qcaffe in GPU mode (cupy), so the same tests that
# pin the numpy path to Caffe's numbers check the cupy path too (the brief's "same code on
# CPU and GPU").  Tests that only make sense on the host simply run on host arrays as before.
_GPU = os.environ.get('QCAFFE_TEST_MODE', 'cpu').lower() == 'gpu'


@pytest.fixture(autouse=True)
def _qcaffe_mode():
    if not _GPU:
        yield
        return
    from qcaffe import backend
    backend.set_mode_gpu()
    try:
        yield
    finally:
        backend.set_mode_cpu()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def warnings(self):
        """The messages of the WARNING (and worse) records."""
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def qlog():
    """The qcaffe logger's records (setup_logging elsewhere may stop propagation, so
    pytest's caplog cannot be relied on)."""
    logger = logging.getLogger('qcaffe')
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
