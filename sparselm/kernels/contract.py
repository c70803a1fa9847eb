"""The backend contract: every operation a backend provides, with its arguments and what it writes.

A backend (the CPU's kernels.cpu*, the GPU's kernels.cuda) is a `Backend` holding one function
per name in KERNELS + ARRAYS, with exactly the parameters listed here. The model, the LSTM, the
output layer and the optimiser call only these, so one step runs on either device. What each
operation computes is specified as plain loops in kernels/reference.py (same names, same
arguments); tests/test_reference_kernels.py holds every backend to it and
tests/test_contract.py checks the parameter lists.

Conventions: arrays are C-contiguous unless said otherwise, one float dtype per call (float32
for training, float64 for the gradient checks), index arrays int32. `accumulate` chooses
between the two write modes, overwrite (out = ...) and accumulate (out += ...); an operation
without it overwrites what it writes. Dimension letters as in the package docstring: T steps,
B batch, I input width, H hidden, G = 4H gate rows, V vocabulary, E embedding, N stored entries
(or rows of a batched product, where said), M rows of a product, P parameters, S grid side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Op(NamedTuple):
    """One operation: its parameters in order, and what it writes (the rest it only reads)."""

    params: tuple[str, ...]
    writes: str


# The compiled kernels: CSR products and recurrence, the cell, the output layer, the optimiser.
KERNEL_OPS = {
    "csr_matmul": Op(
        ("data", "indices", "indptr", "x", "out", "accumulate", "out_rows"),
        "out (M, G) (+)= x (M, C) @ W^T; out (G, M) transposed when out_rows",
    ),
    "csr_matmul_t": Op(
        ("data", "t_perm", "t_indices", "t_indptr", "dy", "out", "accumulate", "out_rows")
        + ("pattern",),
        "out (M, C) (+)= dy (M, G) @ W through W^T's pattern; (C, M) when out_rows",
    ),
    "csr_sddmm": Op(
        ("indices", "indptr", "dy", "x", "out", "accumulate", "col_sums", "pair"),
        "out (N,) (+)= dy^T x on W's pattern; col_sums (G,) = dy's column sums (overwritten);"
        " pair's out2 likewise",
    ),
    "csr_lstm_forward": Op(
        ("x", "w_x", "w_h", "bias", "hs", "cs", "gates", "tanh_c"),
        "hs[1:], cs[1:] (T, B, H), gates (T, B, G), tanh_c (T, B, H): overwritten",
    ),
    "csr_lstm_backward": Op(
        (
            "dout",
            "dh_last",
            "dc_last",
            "gates",
            "cs",
            "tanh_c",
            "w_x_t",
            "w_h_t",
            "dgates",
            "dx",
            "dh0",
            "dc0",
        ),
        "dgates (T, B, G), dx (T, B, I), dh0, dc0 (B, H): overwritten",
    ),
    "lstm_cell_forward": Op(
        ("gx", "r", "bias", "c_prev", "gates", "c", "tanh_c", "h"),
        "gates (B, G), c, tanh_c, h (B, H): overwritten",
    ),
    "lstm_cell_backward": Op(
        ("dh_out", "dh_rec", "dc", "gates", "c_prev", "tanh_c", "dgates", "dc_prev"),
        "dgates (B, G), dc_prev (B, H): overwritten",
    ),
    "softmax_xent": Op(
        ("logits", "bias", "targets", "weights", "nll", "dbias", "grad"),
        "nll (N,) float64 overwritten; when grad: logits (N, V) <- their gradient, dbias (V,) +=",
    ),
    "embedding_backward": Op(("ids", "dx", "dweight"), "dweight (V, E) += dx rows scattered by id"),
    "sum_squares": Op(("x",), "nothing: returns sum(x^2) as a Python float"),
    "sgd_update": Op(
        ("p", "g", "velocity", "lr", "scale", "momentum"), "p (P,) and velocity (P,) in place"
    ),
    "adam_update": Op(
        ("p", "g", "m", "v", "lr", "scale", "beta1", "beta2", "eps", "step"),
        "p, m, v (P,) in place",
    ),
}

# The array operations a step needs around the kernels (NumPy/BLAS on the CPU).
ARRAY_OPS = {
    "gemm": Op(
        ("a", "b", "out", "accumulate", "trans_a", "trans_b"), "out (M, N) (+)= op(a) @ op(b)"
    ),
    "col_sum": Op(("a", "out", "accumulate"), "out (V,) (+)= column sums of a (N, V)"),
    "fill": Op(("a", "value"), "a: every element"),
    "copy": Op(("dst", "src"), "dst: overwritten"),
    "mul": Op(("a", "b", "out"), "out = a * b (out may be a or b)"),
    "gather": Op(("table", "ids", "out"), "out (N, E) = table[ids]: overwritten"),
    "grid_sums": Op(("h", "rows", "cols"), "rows, cols (N, S): overwritten"),
    "grid_outer_add": Op(("drows", "dcols", "dh"), "dh (N, S*S): overwritten"),
}

# Allocation and transfer: arrays on the backend's device.
ALLOC_OPS = {
    "empty": Op(("shape", "dtype"), "a new uninitialised array"),
    "zeros": Op(("shape", "dtype"), "a new zeroed array"),
    "to_device": Op(("a",), "a C-contiguous array on the device (a itself when it is one)"),
    "to_host": Op(("a",), "a NumPy array"),
}

KERNELS = tuple(KERNEL_OPS) + tuple(ARRAY_OPS)
ARRAYS = tuple(ALLOC_OPS)


class Backend:
    """The operations of one device (attributes named in KERNELS and ARRAYS).

    name: "cpu" | "cuda"; detail: what runs them (GPU name, "simulator", "NumPy + Numba");
    fallback: why "auto" did not get a GPU, or None.
    """

    # The contract's functions, for the type checker (set from `functions` below).
    csr_matmul: Callable[..., Any]
    csr_matmul_t: Callable[..., Any]
    csr_sddmm: Callable[..., Any]
    csr_lstm_forward: Callable[..., Any]
    csr_lstm_backward: Callable[..., Any]
    lstm_cell_forward: Callable[..., Any]
    lstm_cell_backward: Callable[..., Any]
    softmax_xent: Callable[..., Any]
    embedding_backward: Callable[..., Any]
    sum_squares: Callable[..., Any]
    sgd_update: Callable[..., Any]
    adam_update: Callable[..., Any]
    gemm: Callable[..., Any]
    col_sum: Callable[..., Any]
    fill: Callable[..., Any]
    copy: Callable[..., Any]
    mul: Callable[..., Any]
    gather: Callable[..., Any]
    grid_sums: Callable[..., Any]
    grid_outer_add: Callable[..., Any]
    empty: Callable[..., Any]
    zeros: Callable[..., Any]
    to_device: Callable[..., Any]
    to_host: Callable[..., Any]

    def __init__(self, name: str, functions: dict, detail: str, fallback: str | None = None):
        self.name, self.detail, self.fallback = name, detail, fallback
        for key in KERNELS + ARRAYS:
            setattr(self, key, functions[key])

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.detail!r})"
