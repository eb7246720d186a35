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
