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

from .dense import gemm
from .kernels.cpu import softmax_xent
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
        return {"softmax.row_weight": (vocab_size, side), "softmax.col_weight": (vocab_size, side),
                "softmax.bias": (vocab_size,)}
    return {"softmax.weight": (vocab_size, hidden), "softmax.bias": (vocab_size,)}


def grid_sums(h: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """rows[n, i] = sum_j h[n, i*S+j] and cols[n, j] = sum_i h[n, i*S+j].

    h: (N, S*S) C-contiguous; rows, cols: (N, S) written in place.
    """
    n, side = rows.shape
    grid = h.reshape(n, side, side)       # a view: (N, S, S), g[n, i, j] = h[n, i*S + j]
    np.sum(grid, axis=2, out=rows)
    np.sum(grid, axis=1, out=cols)


def factorized_logits(h, row_weight, col_weight, bias, out=None) -> np.ndarray:
    """logits: (N, V) = r A^T + c B^T + b of h: (N, H); A, B: (V, S); bias: (V,)."""
    n, side = h.shape[0], row_weight.shape[1]
    rows = np.empty((n, side), h.dtype)
    cols = np.empty((n, side), h.dtype)
    grid_sums(np.ascontiguousarray(h), rows, cols)
    out = np.empty((n, row_weight.shape[0]), h.dtype) if out is None else out
    gemm(rows, row_weight.T, out)
    gemm(cols, col_weight.T, out, accumulate=True)
    out += bias
    return out


def factorized_forward(h, row_weight, col_weight, bias, targets, row_weights, ws: Workspace,
                       grad: bool):
    """Per-row NLL of the targets, and what the backward needs.

    h: (N, H) with H = S*S; row_weight, col_weight: (V, S); bias: (V,); targets: (N,) int32;
    row_weights: (N,) float, each row's factor in the differentiated loss (0 for padding).
    Returns nll: (N,) float64 and cache = (h, r, c, dlogits (N, V), dbias (V,)), the
    convention of loss.softmax_forward: with grad=True the logits buffer holds d(loss)/d(logits).
    """
    n, nv, side = h.shape[0], row_weight.shape[0], row_weight.shape[1]
    rows = ws.get("fact_rows", (n, side), h.dtype)
    cols = ws.get("fact_cols", (n, side), h.dtype)
    grid_sums(h, rows, cols)
    logits = ws.get("logits", (n, nv), h.dtype)
    gemm(rows, row_weight.T, logits)
    gemm(cols, col_weight.T, logits, accumulate=True)
    nll = ws.get("nll", (n,), np.float64)
    dbias = ws.zeros("dbias_out", (nv,), h.dtype)
    softmax_xent(logits, bias, targets, row_weights, nll, dbias, grad)   # adds the bias
    return nll, (h, rows, cols, logits, dbias)


def factorized_backward(cache, row_weight, col_weight, drow_weight, dcol_weight, dbias,
                        ws: Workspace) -> np.ndarray:
    """Write dA, dB: (V, S) and dbias: (V,); return dh: (N, H).

    dh[n, i*S + j] = (D A)[n, i] + (D B)[n, j]: a broadcast sum written as an (N, S, S) view.
    """
    h, rows, cols, dlogits, dbias_rows = cache
    gemm(dlogits.T, rows, drow_weight)
    gemm(dlogits.T, cols, dcol_weight)
    dbias[...] = dbias_rows
    n, side = rows.shape
    drows = gemm(dlogits, row_weight, ws.get("fact_drows", (n, side), h.dtype))
    dcols = gemm(dlogits, col_weight, ws.get("fact_dcols", (n, side), h.dtype))
    dh = ws.get("dh_out", h.shape, h.dtype)
    np.add(drows[:, :, None], dcols[:, None, :], out=dh.reshape(n, side, side))
    return dh
