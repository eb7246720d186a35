"""Helpers the layer test files share: blobs from arrays, seeded random inputs, a
setup+forward runner and the autouse seed fixture (import it by name into a test module to
enable it there)."""
import numpy as np
import pytest

from qcaffe import backend
from qcaffe.blob import Blob

SHAPE = (2, 3, 4, 5)


def blob(values):
    """A float32 Blob holding ``values`` (an array or nested list)."""
    values = np.asarray(values, dtype=np.float32)
    b = Blob(values.shape)
    b.data[...] = values
    return b


def rand(*shape, seed=0):
    """Uniform in [-1, 1), float32, reproducible."""
    return np.random.RandomState(seed).uniform(-1, 1, size=shape).astype(np.float32)


def randn(seed=0, shape=SHAPE):
    """Standard normal, float32, reproducible."""
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def run(layer, bottoms, ntop=1):
    """setup + forward of ``layer`` on the Blobs ``bottoms``; returns the ``ntop`` top Blobs."""
    tops = [Blob() for _ in range(ntop)]
    layer.setup(bottoms, tops)
    layer.forward(bottoms, tops)
    return tops


def run_arrays(layer, *arrays, ntop=1):
    """setup + forward of ``layer`` on Blobs made from ``arrays``; returns (bottoms, tops)."""
    bottoms = [blob(a) for a in arrays]
    return bottoms, run(layer, bottoms, ntop)


@pytest.fixture(autouse=True)
def _seed():
    backend.set_random_seed(1701)
