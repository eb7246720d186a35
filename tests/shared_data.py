"""Access to the reference data in ``../shared/data`` (real Caffe outputs, models, MNIST).

A user's clone has no ``../shared``: tests that need it skip with the reason.  CI sets
``QCAFFE_REQUIRE_SHARED=1`` (see ``.ci/run``), which turns every such skip into a failure so
the parity tests can never silently stop running.
"""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('QCAFFE_SHARED_DATA',
                        os.path.join(os.path.dirname(REPO), 'shared', 'data'))
REQUIRED = os.environ.get('QCAFFE_REQUIRE_SHARED', '') not in ('', '0')


def shared_path(*relpath):
    return os.path.join(SHARED, *relpath)


def require_shared(*relpath):
    """Return the path of ``../shared/data/<relpath>``; skip (or fail in CI) if it is absent."""
    path = shared_path(*relpath)
    if not os.path.exists(path):
        reason = ('reference data %s not found (it lives in ../shared/data beside the '
                  'repository; set QCAFFE_SHARED_DATA to its location)' % path)
        if REQUIRED:
            pytest.fail(reason + ' and QCAFFE_REQUIRE_SHARED=1 makes it mandatory')
        pytest.skip(reason)
    return path


def mnist_dir():
    """The four MNIST IDX files: $QCAFFE_MNIST_DIR, else ../shared/data/mnist."""
    env = os.environ.get('QCAFFE_MNIST_DIR')
    if env and os.path.isdir(env):
        return env
    return require_shared('mnist')
