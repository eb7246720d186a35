"""One 2-D matrix product shared out over qcaffe's threads (InnerProduct's GEMMs).

Caffe equivalent: ``caffe_cpu_gemm`` (one BLAS call, threaded by the BLAS).  Here the output
is cut into fixed chunks of rows or of columns (:func:`qcaffe.ops.parallel.chunks`), each chunk
one single-threaded BLAS call over the *whole* inner dimension: no partial sums, and the chunk
shapes -- hence every float -- depend on the matrix shapes only, not on the thread count.

Which output axis is cut decides which operand every chunk packs again: cutting the rows of
``a`` makes each chunk read all of ``b``, cutting the columns of ``b`` makes each read all of
``a``.  So the cut goes across the output axis whose operand is the larger one (LeNet ip1
forward, W (500, 800) @ x^T (800, 64): chunks of W's rows, never 12 re-reads of W).
"""
import numpy as np

from . import parallel


def gemm(a, b, out, xp=np, acc=None):
    """``out = a @ b`` (2-D), or ``out += a @ b`` with ``acc`` a scratch array of out's shape.

    Rows are cut unless ``b`` is much the larger operand (each chunk then reads all of the
    smaller ``a`` instead); row chunks also write contiguous rows of ``out``."""
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
    # a chunk of at least ~8M multiply-adds (smaller GEMMs lose more to their set-up than
    # the threads win: LeNet ip1's 25.6M in 3 chunks)
    parallel.for_chunks(m if by_rows else n, work=work, elements=m * n * a.shape[1] // 32,
                        xp=xp)
    return out
