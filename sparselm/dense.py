"""Dense matrix products on BLAS, with accumulation, and the dense gate-weight operator.

``DenseMatrix`` has the same three operations as ``csr.CSRMatrix`` (forward product, transpose
product, weight gradient), so the LSTM code is written once for dense and sparse gates.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas


def _fortran_operand(x: np.ndarray):
    """(array, trans) such that BLAS's op(array) is x transposed, without copying.

    BLAS is column-major: a C-contiguous x read as column-major *is* x.T (trans 0); an
    F-contiguous x (a transposed view) read as column-major is x, so BLAS must transpose it.
    """
    if x.flags.c_contiguous:
        return x.T, 0
    if x.flags.f_contiguous:
        return x, 1
    raise ValueError("gemm operands must be C- or F-contiguous")


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> np.ndarray:
    """out = a @ b (+ out when accumulate), in place on out.

    a: (M, K), b: (K, N), out: (M, N) C-contiguous; all float32 or all float64. a and b may be
    C-contiguous or transposed views of C-contiguous arrays (no copy is made either way).
    Computed as out.T = b.T @ a.T in column-major BLAS, which sees out.T where we store out.
    """
    if not out.flags.c_contiguous:
        raise ValueError("gemm output must be C-contiguous")
    if out.shape[0] == 0 or out.shape[1] == 0:
        return out
    if a.shape[1] == 0:
        if not accumulate:
            out[...] = 0
        return out
    fn = blas.sgemm if out.dtype == np.float32 else blas.dgemm
    bt, trans_b = _fortran_operand(b)
    at, trans_a = _fortran_operand(a)
    res = fn(
        1.0,
        bt,
        at,
        beta=1.0 if accumulate else 0.0,
        c=out.T,
        trans_a=trans_b,
        trans_b=trans_a,
        overwrite_c=1,
    )
    if not np.shares_memory(res, out):  # BLAS wrappers copy when they cannot write in place
        out[...] = res.T
    return out


def gemm_op(a, b, out, accumulate=False, trans_a=False, trans_b=False):
    """gemm with the backends' signature: op(a) @ op(b), transposes as flags."""
    return gemm(a.T if trans_a else a, b.T if trans_b else b, out, accumulate)


class DenseMatrix:
    """A dense gate weight W: (R, C) with the CSRMatrix operations.

    matmul:   out (M, R) = x (M, C) @ W.T
    matmul_t: out (M, C) = dy (M, R) @ W
    sddmm:    out (R, C) = dy.T @ x, the weight gradient (on the dense "pattern": every entry)

    `backend` (kernels.Backend, default the CPU) runs the products; its gemm takes transposes
    as flags, so the same calls work on device arrays, which have no free transposed views.
    """

    def __init__(self, data, backend=None):
        if backend is None:
            from .kernels import get_backend  # here: kernels.cpu_arrays imports this module

            backend = get_backend("cpu")
        self.data, self.shape, self.backend = data, tuple(data.shape), backend

    def _empty(self, shape):
        return self.backend.empty(shape, self.data.dtype)

    def matmul(self, x, out=None, accumulate=False):
        out = self._empty((x.shape[0], self.shape[0])) if out is None else out
        return self.backend.gemm(x, self.data, out, accumulate, trans_b=True)

    def matmul_t(self, dy, out=None, accumulate=False):
        out = self._empty((dy.shape[0], self.shape[1])) if out is None else out
        return self.backend.gemm(dy, self.data, out, accumulate)

    def sddmm(self, dy, x, out=None, accumulate=False, col_sums=None, pair=None):
        """The weight gradient dy^T x; col_sums: None or (R,), overwritten with dy's column
        sums (the bias gradient); pair: None or (other, x2, out2), other's gradient too; as
        CSRMatrix.sddmm."""
        out = self._empty(self.shape) if out is None else out
        if col_sums is not None:
            self.backend.col_sum(dy, col_sums)
        if pair is not None:
            other, x2, out2 = pair
            other.sddmm(dy, x2, out=out2, accumulate=accumulate)
        return self.backend.gemm(dy, x, out, accumulate, trans_a=True)
