"""Sparse gate weights: the CSRMatrix and its pattern checks (the masks: sparsity.py).

A CSRMatrix W of shape (R, C) stores N non-zeros as `data` (N,), `indices` (N,) int32 column
numbers (sorted ascending within each row) and `indptr` (R+1,) int32 row offsets. It also keeps
the CSR pattern of W^T (`t_indptr`, `t_indices`) and the permutation `t_perm` mapping that
pattern's entries back to `data`, so products with W^T are race-free without atomics and need no
transpose per step. `data` may be a view into a flat parameter buffer: it is never copied.

Dimension letters: R rows and C columns of W, N nnz, M rows of a batched product.
"""

from __future__ import annotations

import numpy as np

from .device import is_device_array

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# pattern validation


def _check_shape(shape) -> tuple[int, int]:
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"CSR shape must be a pair of integers (R, C), got {shape!r}") from None
    if rows < 0 or cols < 0:
        raise ValueError(f"CSR shape must be non-negative, got {(rows, cols)}")
    return rows, cols


def validate_csr_pattern(indices, indptr, shape) -> None:
    """Raise ValueError naming the first problem found in a CSR pattern; return None if valid.

    indices: (N,) any integer dtype, column numbers in [0, C), strictly increasing in each row.
    indptr: (R+1,) any integer dtype, starts at 0, non-decreasing, ends at N.
    shape: (R, C). O(N + R) time and memory, never O(R * C).
    """
    rows, cols = _check_shape(shape)
    indices = np.asarray(indices)
    indptr = np.asarray(indptr)
    for name, arr in (("indices", indices), ("indptr", indptr)):
        if arr.ndim != 1:
            raise ValueError(f"CSR {name} must be 1-D, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"CSR {name} must have an integer dtype, got {arr.dtype}")
    n = indices.shape[0]
    if indptr.shape[0] != rows + 1:
        raise ValueError(f"CSR indptr has length {indptr.shape[0]}, expected R+1 = {rows + 1}")
    if indptr[0] != 0:
        raise ValueError(f"CSR indptr must start at 0, starts at {indptr[0]}")
    steps = np.diff(indptr.astype(np.int64))
    if np.any(steps < 0):
        bad = int(np.flatnonzero(steps < 0)[0])
        raise ValueError(f"CSR indptr decreases at row {bad} ({indptr[bad]} -> {indptr[bad + 1]})")
    if indptr[-1] != n:
        raise ValueError(f"CSR indptr ends at {indptr[-1]} but there are {n} indices")
    if n == 0:
        return
    lo, hi = indices.min(), indices.max()
    if lo < 0 or hi >= cols:
        bad = lo if lo < 0 else hi
        raise ValueError(f"CSR column index {bad} out of range [0, {cols})")
    _check_rows_sorted(indices, indptr, steps)


def _check_rows_sorted(indices, indptr, steps) -> None:
    """indices (N,), indptr (R+1,), steps (R,) = row lengths: strictly increasing within rows."""
    rises = np.diff(indices.astype(np.int64)) > 0
    # A pair (k, k+1) that straddles a row boundary may go down; those pairs end where a
    # non-empty row (other than the first entry) starts.
    n = indices.shape[0]
    starts = indptr[:-1][steps > 0]
    starts = starts[(starts > 0) & (starts < n)]
    rises[starts - 1] = True
    if not rises.all():
        k = int(np.flatnonzero(~rises)[0])
        row = int(np.searchsorted(indptr, k, side="right") - 1)
        what = "duplicate" if indices[k] == indices[k + 1] else "unsorted"
        raise ValueError(
            f"CSR row {row} has {what} column indices ({indices[k]} then {indices[k + 1]}); "
            "indices must be strictly increasing within each row"
        )


# ---------------------------------------------------------------------------------------------
# the matrix


def _transpose_pattern(indices, indptr, cols):
    """CSR pattern of W^T from W's (indices (N,) int32, indptr (R+1,) int32).

    Returns t_indptr (C+1,), t_indices (N,) (row numbers of W), t_perm (N,) with
    data_T = data[t_perm]; all int32. A stable sort by column keeps rows ascending per column.
    """
    rows = indptr.shape[0] - 1
    t_perm = np.argsort(indices, kind="stable").astype(np.int32)
    row_of = np.repeat(np.arange(rows, dtype=np.int32), np.diff(indptr))
    t_indices = row_of[t_perm]
    t_indptr = np.zeros(cols + 1, dtype=np.int32)
    np.cumsum(np.bincount(indices, minlength=cols), out=t_indptr[1:])
    return t_indptr, t_indices, t_perm


_CPU_KERNELS = None


def _hook(kern, name):
    """The backend module's optional function `name`, or None. A plain dictionary lookup:
    getattr with a default costs an exception inside when the module lacks it (~0.4 us, on
    every product call)."""
    return vars(kern).get(name)


def _kernels_for(array):
    """The kernel module that runs on `array`'s device: the single place to add backends.

    NumPy arrays run on `sparselm.kernels.cpu_csr`, CUDA device arrays (numba.cuda, CuPy, the
    simulator's) on `sparselm.kernels.cuda`. A backend module may define `empty(shape, dtype)`
    (output allocation) and `csr_pattern(matrix)` (its own copies of the pattern arrays, e.g.
    on the device).
    """
    if isinstance(array, np.ndarray):
        global _CPU_KERNELS
        if _CPU_KERNELS is None:  # imported on first use, so pattern checks need no Numba
            from sparselm.kernels import cpu_csr

            _CPU_KERNELS = cpu_csr
        return _CPU_KERNELS
    if is_device_array(array):
        from sparselm.kernels import cuda  # only reached when a device array exists

        return cuda
    raise ValueError(f"no CSR kernel backend for arrays of type {type(array).__name__}")


class CSRMatrix:
    """W (R, C) in CSR form plus the CSR pattern of W^T; see the module docstring.

    data: (N,) float32|float64, C-contiguous, kept as given (may be a view; never copied).
    indices: (N,) int32 sorted ascending per row. indptr: (R+1,) int32. shape: (R, C).
    """

    __slots__ = ("data", "indices", "indptr", "shape", "t_indptr", "t_indices", "t_perm")

    def __init__(self, data, indices, indptr, shape, *, _transpose=None, _validate=True):
        self.shape = _check_shape(shape)
        if _validate:
            validate_csr_pattern(indices, indptr, self.shape)
            if max(self.shape[1], len(indices)) > np.iinfo(np.int32).max:
                raise ValueError(
                    f"CSR shape {self.shape} with {len(indices)} entries does not fit int32 indices"
                )
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int32)
        self.data = self._checked_data(data)
        if _transpose is None:
            _transpose = _transpose_pattern(self.indices, self.indptr, self.shape[1])
        self.t_indptr, self.t_indices, self.t_perm = _transpose

    def _checked_data(self, data):
        if not isinstance(data, np.ndarray) and not is_device_array(data):
            raise ValueError(f"CSR data must be an array, got {type(data).__name__}")
        if data.ndim != 1 or data.shape[0] != self.indices.shape[0]:
            n = self.indices.shape[0]
            raise ValueError(f"CSR data has shape {data.shape}, expected ({n},)")
        if np.dtype(data.dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"CSR data must be float32 or float64, got {data.dtype}")
        if not data.flags["C_CONTIGUOUS"]:
            raise ValueError("CSR data must be C-contiguous (a view with stride 1)")
        return data

    @property
    def nnz(self) -> int:
        return self.indices.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype  # NumPy, CuPy and Numba device arrays all hold an np.dtype

    def __repr__(self) -> str:
        return f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype})"

    def with_data(self, data) -> CSRMatrix:
        """Same pattern (shared arrays, transpose included), other values. data: (N,) float."""
        return CSRMatrix(
            data,
            self.indices,
            self.indptr,
            self.shape,
            _transpose=(self.t_indptr, self.t_indices, self.t_perm),
            _validate=False,
        )

    def to_dense(self) -> np.ndarray:
        """(R, C) dense copy, same dtype."""
        out = np.zeros(self.shape, dtype=self.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = np.asarray(self.data)
        return out

    def to_scipy(self):
        """scipy.sparse.csr_array (R, C) sharing data, indices and indptr (no copies)."""
        import scipy.sparse as sp

        return sp.csr_array((self.data, self.indices, self.indptr), shape=self.shape, copy=False)

    # --- products -----------------------------------------------------------------------------

    def _pattern(self, kern):
        custom = _hook(kern, "csr_pattern")
        if custom is not None:
            return custom(self)
        return self.indices, self.indptr, self.t_indices, self.t_indptr, self.t_perm

    def product_arrays(self, like):
        """(data, indices, indptr) of W as the kernels of the device holding array `like` take
        them (kernels beyond the three products: kernels.cpu_lstm)."""
        indices, indptr, _, _, _ = self._pattern(_kernels_for(like))
        return self.data, indices, indptr

    def transpose_arrays(self, like):
        """(data, t_perm, t_indices, t_indptr): W^T's pattern reading W's values, likewise."""
        _, _, t_indices, t_indptr, t_perm = self._pattern(_kernels_for(like))
        return self.data, t_perm, t_indices, t_indptr

    def _check_operand(self, name, a, cols):
        """Raises ValueError unless a is (M, cols), the matrix's dtype, C-contiguous."""
        try:  # every product call checks its operands: the common case in one test
            if (
                a.ndim == 2
                and a.shape[1] == cols
                and a.dtype == self.data.dtype
                and a.flags["C_CONTIGUOUS"]
            ):
                return
        except (AttributeError, TypeError, IndexError):
            pass
        if not hasattr(a, "shape") or len(a.shape) != 2:
            raise ValueError(f"{name} must be a 2-D array, got {getattr(a, 'shape', type(a))}")
        if a.dtype != self.dtype:
            raise ValueError(f"{name} has dtype {a.dtype}, the matrix has {self.dtype}")
        if not a.flags["C_CONTIGUOUS"]:
            raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        if a.shape[1] != cols:
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected (M, {cols})")

    def _prepare_out(self, kern, out, shape, accumulate, feature_major=False):
        """(out, accumulate, out_rows) for the kernel: out_rows False, or with feature_major an
        F-contiguous out (M, X) is also accepted and passed as its (X, M) C-contiguous view."""
        if out is None:
            empty = _hook(kern, "empty") or np.empty
            return empty(shape, dtype=self.dtype), False, False
        if out.shape == shape and out.dtype == self.data.dtype and out.flags["C_CONTIGUOUS"]:
            return out, bool(accumulate), False  # the common case in one test
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
        if np.dtype(out.dtype) != self.dtype:
            raise ValueError(f"out has dtype {out.dtype}, the matrix has {self.dtype}")
        if out.flags["C_CONTIGUOUS"]:
            return out, bool(accumulate), False
        if feature_major and out.flags["F_CONTIGUOUS"]:
            view = _hook(kern, "transposed_view") or (lambda a: a.T)
            return view(out), bool(accumulate), True
        raise ValueError("out must be C-contiguous" + (" or F-contiguous" if feature_major else ""))

    def matmul(self, x, out=None, accumulate=False):
        """out (M, R) = x @ W^T (or += when accumulate).

        x: (M, C) the matrix's float dtype, C-contiguous; out: None or (M, R) likewise, or
        F-contiguous (the transpose of a C-contiguous (R, M): feature-major activations),
        which the CPU kernel writes straight from its registers, with no transposes.
        """
        rows, cols = self.shape
        self._check_operand("x", x, cols)
        kern = _kernels_for(x)
        target, acc, out_rows = self._prepare_out(
            kern, out, (x.shape[0], rows), accumulate, feature_major=True
        )
        indices, indptr, _, _, _ = self._pattern(kern)
        kern.csr_matmul(self.data, indices, indptr, x, target, acc, out_rows)
        return target if out is None else out

    def matmul_t(self, dy, out=None, accumulate=False):
        """out (M, C) = dy @ W (or += when accumulate), through the transpose pattern.

        dy: (M, R) the matrix's float dtype, C-contiguous; out: None or (M, C) likewise, or
        F-contiguous (see matmul).
        """
        rows, cols = self.shape
        self._check_operand("dy", dy, rows)
        kern = _kernels_for(dy)
        target, acc, out_rows = self._prepare_out(
            kern, out, (dy.shape[0], cols), accumulate, feature_major=True
        )
        indices, indptr, t_indices, t_indptr, t_perm = self._pattern(kern)
        kern.csr_matmul_t(
            self.data, t_perm, t_indices, t_indptr, dy, target, acc, out_rows, (indices, indptr)
        )
        return target if out is None else out

    def sddmm(self, dy, x, out=None, accumulate=False, col_sums=None, pair=None):
        """out (N,)[k] = sum_m dy[m, row_k] * x[m, col_k] (or += when accumulate): dL/d data.

        dy: (M, R), x: (M, C), both the matrix's float dtype and C-contiguous. col_sums: None or
        (R,) of that dtype, overwritten with dy's column sums (the gradient of a bias added to
        x W^T), computed on the way. pair: None or (other, x2, out2), a second CSRMatrix of R
        rows multiplying x2 into the same y (W_x beside W_h): out2 (other.nnz,) gets its
        gradient from the same pass over dy (same accumulate; out2 must be given).
        """
        kern, args = self._sddmm_args(dy, x, out, accumulate)
        if col_sums is not None:
            self._check_col_sums(col_sums, self.shape[0])
        if pair is not None:
            other, x2, out2 = pair
            if other.shape[0] != self.shape[0] or other.dtype != self.dtype or out2 is None:
                raise ValueError(f"pair: {other} with an out2 array must match {self}")
            _, (indices2, indptr2, _, x2, out2, _) = other._sddmm_args(dy, x2, out2, accumulate)
            pair = (indices2, indptr2, x2, out2)
        kern.csr_sddmm(*args, col_sums, pair)
        return args[4]

    def _sddmm_args(self, dy, x, out, accumulate):
        """The kernel module and (indices, indptr, dy, x, out, accumulate) for its csr_sddmm,
        checked."""
        rows, cols = self.shape
        self._check_operand("dy", dy, rows)
        self._check_operand("x", x, cols)
        if dy.shape[0] != x.shape[0]:
            raise ValueError(f"dy has {dy.shape[0]} rows but x has {x.shape[0]}")
        kern = _kernels_for(dy)
        out, acc, _ = self._prepare_out(kern, out, self.indices.shape, accumulate)
        indices, indptr, _, _, _ = self._pattern(kern)
        return kern, (indices, indptr, dy, x, out, acc)

    def _check_col_sums(self, col_sums, rows):
        if tuple(col_sums.shape) != (rows,) or np.dtype(col_sums.dtype) != self.dtype:
            raise ValueError(
                f"col_sums must be ({rows},) {self.dtype}, got "
                f"{tuple(col_sums.shape)} {col_sums.dtype}"
            )
        if not col_sums.flags["C_CONTIGUOUS"]:
            raise ValueError("col_sums must be C-contiguous")
