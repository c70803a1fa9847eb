"""The study's factorised output head: logits from the row and column sums of an S x S grid.

The dense softmax maps h: (N, H) to the logits with a (V, H) matrix, the largest parameter of the
model (V H = 25M at H = 2500). The 2018 study replaced it by a layer that sees h through 2S
numbers only. With H = S*S, h_n is read as an S x S grid, g_n[i, j] = h_n[i*S + j], and

    r_n[i] = sum_j g_n[i, j]       (row sums,    (N, S))
    c_n[j] = sum_i g_n[i, j]       (column sums, (N, S))
    logits = r A^T + c B^T + b     A, B: (V, S), b: (V,)   ->  (N, V)

so the layer has 2 V S + V parameters (1.01M at S = 50) instead of V H + V (25M). The same fused
kernel as the dense softmax (`softmax_xent`) turns the logits into the NLL and d(logits) in place.
Backward, with D = d(loss)/d(logits): (N, V) (each gradient overwritten):

    dA = D^T r,   dB = D^T c,   db = sum_n D[n]
    dr = D A,  dc = D B     (N, S)
    dh[n, i*S + j] = dr[n, i] + dc[n, j]   (h[n, i*S+j] is in one row sum and one column sum)

Parameters: softmax.row_weight (V, S) = A, softmax.col_weight (V, S) = B, softmax.bias (V,).
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import cpu_arrays
from .base import OutputHead


def grid_side(hidden: int) -> int:
    """S with S*S = hidden; ValueError when hidden is not a perfect square."""
    side = math.isqrt(hidden)
    if side * side != hidden:
        raise ValueError(f"the factorised output needs a square hidden size, got {hidden}")
    return side


class FactorizedHead(OutputHead):
    name = "factorized"

    def __init__(self, params, grads, ws):
        super().__init__(params, grads, ws)
        self.row_weight, self.col_weight = (
            params["softmax.row_weight"],
            params["softmax.col_weight"],
        )
        self.bias = params["softmax.bias"]
        self.drow_weight, self.dcol_weight = (
            grads["softmax.row_weight"],
            grads["softmax.col_weight"],
        )
        self.dbias = grads["softmax.bias"]

    @staticmethod
    def shapes(hidden: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
        side = grid_side(hidden)
        return {
            "softmax.row_weight": (vocab_size, side),
            "softmax.col_weight": (vocab_size, side),
            "softmax.bias": (vocab_size,),
        }

    def forward(self, h, targets, row_weights, grad: bool):
        """See OutputHead.forward; cache = (h, r, c, dlogits (N, V), dbias rows (V,))."""
        n, nv, side = h.shape[0], self.row_weight.shape[0], self.row_weight.shape[1]
        ws = self.ws
        be = ws.be
        rows = ws.get("fact_rows", (n, side), h.dtype)
        cols = ws.get("fact_cols", (n, side), h.dtype)
        be.grid_sums(h, rows, cols)
        logits = ws.get("logits", (n, nv), h.dtype)
        be.gemm(rows, self.row_weight, logits, trans_b=True)
        be.gemm(cols, self.col_weight, logits, accumulate=True, trans_b=True)
        nll = ws.get("nll", (n,), np.float64)
        dbias = ws.zeros("dbias_out", (nv,), h.dtype)
        be.softmax_xent(logits, self.bias, targets, row_weights, nll, dbias, grad)  # adds b
        return nll, (h, rows, cols, logits, dbias)

    def backward(self, cache):
        """Write dA, dB: (V, S) and db: (V,); return dh: (N, H) (the backend's grid_outer_add)."""
        h, rows, cols, dlogits, dbias_rows = cache
        ws = self.ws
        be = ws.be
        be.gemm(dlogits, rows, self.drow_weight, trans_a=True)
        be.gemm(dlogits, cols, self.dcol_weight, trans_a=True)
        be.copy(self.dbias, dbias_rows)
        n, side = rows.shape
        drows = be.gemm(dlogits, self.row_weight, ws.get("fact_drows", (n, side), h.dtype))
        dcols = be.gemm(dlogits, self.col_weight, ws.get("fact_dcols", (n, side), h.dtype))
        dh = ws.get("dh_out", h.shape, h.dtype)
        be.grid_outer_add(drows, dcols, dh)
        return dh

    def logits(self, h):
        """r A^T + c B^T + b with the CPU kernels (h: (N, H) host array)."""
        n, side = h.shape[0], self.row_weight.shape[1]
        rows = np.empty((n, side), h.dtype)
        cols = np.empty((n, side), h.dtype)
        cpu_arrays.grid_sums(np.ascontiguousarray(h), rows, cols)
        out = np.empty((n, self.row_weight.shape[0]), h.dtype)
        cpu_arrays.gemm(rows, self.row_weight, out, trans_b=True)
        cpu_arrays.gemm(cols, self.col_weight, out, accumulate=True, trans_b=True)
        out += self.bias
        return out
