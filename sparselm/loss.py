"""The output layer: logits = h W_o^T + b_o, softmax cross-entropy, and its gradient.

The (T*B, V) logits are the largest array of the step. They are computed by one GEMM into a
reused buffer; one fused kernel then turns them, in place, into the per-row NLL and (when
training) the gradient d(loss)/d(logits), so the logits are read and written once.
"""

from __future__ import annotations

import numpy as np

from .workspace import Workspace


def softmax_forward(h, weight, bias, targets, row_weights, ws: Workspace, grad: bool):
    """Per-row NLL of the targets, and the logits gradient kept for the backward.

    h: (N, H); weight: (V, H); bias: (V,); targets: (N,) int32; row_weights: (N,) float, each
    row's factor in the differentiated loss (0 for padding); all on ws's backend.
    Returns nll: (N,) float64 (on the backend), cache.
    """
    n, nv = h.shape[0], weight.shape[0]
    be = ws.be
    logits = ws.get("logits", (n, nv), h.dtype)
    be.gemm(h, weight, logits, trans_b=True)  # the bias is added inside the fused kernel
    nll = ws.get("nll", (n,), np.float64)
    dbias = ws.zeros("dbias_out", (nv,), h.dtype)
    be.softmax_xent(logits, bias, targets, row_weights, nll, dbias, grad)
    return nll, (h, logits, dbias)


def softmax_backward(cache, weight, dweight, dbias, ws: Workspace):
    """Write dweight: (V, H) and dbias: (V,); return dh: (N, H) = dlogits @ W_o."""
    h, dlogits, dbias_rows = cache
    be = ws.be
    # d(hidden) first: it reads W_o, which the forward's logits product left partly in cache;
    # the weight gradient writes V*H values, which would evict it.
    dh = be.gemm(dlogits, weight, ws.get("dh_out", h.shape, h.dtype))
    be.gemm(dlogits, h, dweight, trans_a=True)
    be.copy(dbias, dbias_rows)
    return dh
