"""The study's factorised output layer: logits from the row and column sums of an S x S grid.

The dense softmax maps h: (N, H) to the logits with a (V, H) matrix, the largest parameter of the
model (V H = 25M at H = 2500). The 2018 study replaced it by a layer that sees h through 2S
numbers only. With H = S*S, h_n is read as an S x S grid, g_n[i, j] = h_n[i*S + j], and

    r_n[i] = sum_j g_n[i, j]       (row sums,    (N, S))
    c_n[j] = sum_i g_n[i, j]       (column sums, (N, S))
    logits = r A^T + c B^T + b     A, B: (V, S), b: (V,)   ->  (N, V)

so the layer has 2 V S + V parameters (1.01M at S = 50) instead of V H + V (25M). The same fused
kernel as the dense softmax (`softmax_xent`) turns the logits into the NLL and d(logits) in place.
Backward, with D = d(loss)/d(logits): (N, V):

    dA += D^T r,   dB += D^T c,   db += sum_n D[n]
    dr = D A,  dc = D B     (N, S)
    dh[n, i*S + j] = dr[n, i] + dc[n, j]   (h[n, i*S+j] is in one row sum and one column sum)

Parameters: softmax.row_weight (V, S) = A, softmax.col_weight (V, S) = B, softmax.bias (V,).
"""

from __future__ import annotations

import math

import numpy as np

from .kernels import cpu_arrays
from .workspace import Workspace


def grid_side(hidden: int) -> int:
    """S with S*S = hidden; ValueError when hidden is not a perfect square."""
    side = math.isqrt(hidden)
    if side * side != hidden:
        raise ValueError(f"the factorised output needs a square hidden size, got {hidden}")
    return side


def output_shapes(output: str, hidden: int, vocab_size: int) -> dict:
    """name -> shape of the output layer's parameters, in model order.

    output: "softmax" (softmax.weight (V, H), softmax.bias (V,)) or "factorized"
    (softmax.row_weight (V, S), softmax.col_weight (V, S), softmax.bias (V,)).
    """
    if output == "factorized":
        side = grid_side(hidden)
        return {
            "softmax.row_weight": (vocab_size, side),
            "softmax.col_weight": (vocab_size, side),
            "softmax.bias": (vocab_size,),
        }
    return {"softmax.weight": (vocab_size, hidden), "softmax.bias": (vocab_size,)}


def factorized_logits(h, row_weight, col_weight, bias, out=None) -> np.ndarray:
    """logits: (N, V) = r A^T + c B^T + b of host arrays h: (N, H); A, B: (V, S); bias: (V,)."""
    n, side = h.shape[0], row_weight.shape[1]
    rows = np.empty((n, side), h.dtype)
    cols = np.empty((n, side), h.dtype)
    cpu_arrays.grid_sums(np.ascontiguousarray(h), rows, cols)
    out = np.empty((n, row_weight.shape[0]), h.dtype) if out is None else out
    cpu_arrays.gemm(rows, row_weight, out, trans_b=True)
    cpu_arrays.gemm(cols, col_weight, out, accumulate=True, trans_b=True)
    out += bias
    return out


def factorized_forward(
    h, row_weight, col_weight, bias, targets, row_weights, ws: Workspace, grad: bool
):
    """Per-row NLL of the targets, and what the backward needs.

    h: (N, H) with H = S*S; row_weight, col_weight: (V, S); bias: (V,); targets: (N,) int32;
    row_weights: (N,) float, each row's factor in the differentiated loss (0 for padding); all
    on ws's backend. Returns nll: (N,) float64 and cache = (h, r, c, dlogits (N, V), dbias (V,)),
    the convention of loss.softmax_forward: with grad=True the logits buffer holds
    d(loss)/d(logits).
    """
    n, nv, side = h.shape[0], row_weight.shape[0], row_weight.shape[1]
    be = ws.be
    rows = ws.get("fact_rows", (n, side), h.dtype)
    cols = ws.get("fact_cols", (n, side), h.dtype)
    be.grid_sums(h, rows, cols)
    logits = ws.get("logits", (n, nv), h.dtype)
    be.gemm(rows, row_weight, logits, trans_b=True)
    be.gemm(cols, col_weight, logits, accumulate=True, trans_b=True)
    nll = ws.get("nll", (n,), np.float64)
    dbias = ws.zeros("dbias_out", (nv,), h.dtype)
    be.softmax_xent(logits, bias, targets, row_weights, nll, dbias, grad)  # adds the bias
    return nll, (h, rows, cols, logits, dbias)


def factorized_backward(
    cache, row_weight, col_weight, drow_weight, dcol_weight, dbias, ws: Workspace
):
    """Write dA, dB: (V, S) and dbias: (V,); return dh: (N, H).

    dh[n, i*S + j] = (D A)[n, i] + (D B)[n, j] (the backend's grid_outer_add).
    """
    h, rows, cols, dlogits, dbias_rows = cache
    be = ws.be
    be.gemm(dlogits, rows, drow_weight, trans_a=True)
    be.gemm(dlogits, cols, dcol_weight, trans_a=True)
    be.copy(dbias, dbias_rows)
    n, side = rows.shape
    drows = be.gemm(dlogits, row_weight, ws.get("fact_drows", (n, side), h.dtype))
    dcols = be.gemm(dlogits, col_weight, ws.get("fact_dcols", (n, side), h.dtype))
    dh = ws.get("dh_out", h.shape, h.dtype)
    be.grid_outer_add(drows, dcols, dh)
    return dh
