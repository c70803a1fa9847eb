"""The dense softmax head: logits = h W_o^T + b_o, softmax cross-entropy, and its gradient.

The (T*B, V) logits are the largest array of the step. They are computed by one GEMM into a
reused buffer; one fused kernel then turns them, in place, into the per-row NLL and (when
training) the gradient D = d(loss)/d(logits), so the logits are read and written once. Backward:

    dW_o = D^T h,   db_o = sum_n D[n],   dh = D W_o

Parameters: softmax.weight (V, H) = W_o, softmax.bias (V,) = b_o.
"""

from __future__ import annotations

import numpy as np

from .base import OutputHead


class SoftmaxHead(OutputHead):
    name = "softmax"

    def __init__(self, params, grads, ws):
        super().__init__(params, grads, ws)
        self.weight, self.bias = params["softmax.weight"], params["softmax.bias"]
        self.dweight, self.dbias = grads["softmax.weight"], grads["softmax.bias"]

    @staticmethod
    def shapes(hidden: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
        return {"softmax.weight": (vocab_size, hidden), "softmax.bias": (vocab_size,)}

    def forward(self, h, targets, row_weights, grad: bool):
        """See OutputHead.forward; cache = (h, dlogits (N, V), dbias rows (V,))."""
        n, nv = h.shape[0], self.weight.shape[0]
        ws = self.ws
        logits = ws.get("logits", (n, nv), h.dtype)
        ws.be.gemm(h, self.weight, logits, trans_b=True)  # the fused kernel adds the bias
        nll = ws.get("nll", (n,), np.float64)
        dbias = ws.zeros("dbias_out", (nv,), h.dtype)
        ws.be.softmax_xent(logits, self.bias, targets, row_weights, nll, dbias, grad)
        return nll, (h, logits, dbias)

    def backward(self, cache):
        """Write dW_o: (V, H) and db_o: (V,); return dh: (N, H) = D W_o."""
        h, dlogits, dbias_rows = cache
        be = self.ws.be
        # d(hidden) first: it reads W_o, which the forward's logits product left partly in cache;
        # the weight gradient writes V*H values, which would evict it.
        dh = be.gemm(dlogits, self.weight, self.ws.get("dh_out", h.shape, h.dtype))
        be.gemm(dlogits, h, self.dweight, trans_a=True)
        be.copy(self.dbias, dbias_rows)
        return dh

    def logits(self, h):
        return h @ self.weight.T + self.bias
