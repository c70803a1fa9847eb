"""The CPU backend's array operations: what a training step does between the fused kernels.

Each function has the contract of its namesake in kernels.cuda (same arguments, same meaning,
results written into `out` arguments), so model.py, lstm.py, the heads and optim.py
call them through a Backend and run unchanged on either device. On the CPU they are NumPy or
BLAS one-liners; on the GPU each is a small kernel.
"""

from __future__ import annotations

import numpy as np

from ..dense import gemm_op as gemm  # noqa: F401  (transposes are free views on the CPU)

empty = np.empty
zeros = np.zeros


def to_device(a) -> np.ndarray:
    """The array itself when C-contiguous (the CPU's "device" is host memory), else a copy."""
    return np.ascontiguousarray(a)


def to_host(a) -> np.ndarray:
    return np.asarray(a)


def col_sum(a, out, accumulate=False) -> None:
    """out (V,) = a (N, V).sum(axis=0), or += when accumulate."""
    if accumulate:
        out += a.sum(axis=0)
    else:
        np.sum(a, axis=0, out=out)


def fill(a, value) -> None:
    """a[...] = value, any shape."""
    a.fill(value)


def copy(dst, src) -> None:
    """dst[...] = src; same shape and dtype."""
    np.copyto(dst, src)


def mul(a, b, out) -> None:
    """out = a * b element-wise (same shapes; out may be a or b): applying a dropout mask."""
    np.multiply(a, b, out=out)


def gather(table, ids, out) -> None:
    """out (N, E) = table (V, E)[ids (N,) int32]: the embedding lookup (ids are valid)."""
    np.take(table, ids, axis=0, out=out, mode="clip")


def grid_sums(h, rows, cols) -> None:
    """rows[n, i] = sum_j h[n, i*S+j] and cols[n, j] = sum_i h[n, i*S+j].

    h: (N, S*S) C-contiguous; rows, cols: (N, S) written in place (heads/factorized.py's row
    and column sums of the hidden vector read as an S x S grid).
    """
    n, side = rows.shape
    grid = h.reshape(n, side, side)  # a view: (N, S, S), g[n, i, j] = h[n, i*S + j]
    np.sum(grid, axis=2, out=rows)
    np.sum(grid, axis=1, out=cols)


def grid_outer_add(drows, dcols, dh) -> None:
    """dh[n, i*S + j] = drows[n, i] + dcols[n, j]: the gradient of grid_sums.

    drows, dcols: (N, S); dh: (N, S*S) C-contiguous, overwritten.
    """
    n, side = drows.shape
    np.add(drows[:, :, None], dcols[:, None, :], out=dh.reshape(n, side, side))
