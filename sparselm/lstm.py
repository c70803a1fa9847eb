"""One LSTM layer over a window of T steps: forward and backward-through-time, dense or CSR gates.

Gate order i, f, g, o. With x_t: (B, I), h_{t-1}, c_{t-1}: (B, H), weights W_x: (G, I),
W_h: (G, H), b: (G,), G = 4H:

    a_t = x_t W_x^T + h_{t-1} W_h^T + b              (B, G) = [a_i, a_f, a_g, a_o]
    i = s(a_i), f = s(a_f), g = tanh(a_g), o = s(a_o)  (s = logistic sigmoid)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Backward, given dh_t (from the layer above or the softmax, plus dh_t^rec from step t+1) and
dc_t (from step t+1), for t = T-1 .. 0:

    dh     = dh_t + dh_t^rec
    do     = dh * tanh(c_t)
    dc     = dc_t + dh * o * (1 - tanh(c_t)^2)
    da_i   = dc * g * i (1 - i)
    da_f   = dc * c_{t-1} * f (1 - f)
    da_g   = dc * i * (1 - g^2)
    da_o   = do * o (1 - o)
    dc_{t-1}      = dc * f
    dh_{t-1}^rec  = da_t W_h

and once after the loop, over all T*B rows at once (one GEMM dense, one SDDMM sparse):

    dW_x = da^T x,   dW_h = da^T h_{<T},   db = sum_t,b da,   dx = da W_x
    (one pass over da gives dW_h, dW_x and db: sparse gates read its columns once). The sums over
    t are in these products, so each gradient is written once: overwritten, never accumulated.

With dense gates the input projection x W_x^T is likewise one product over all T*B rows before
the loop, so the per-step work is only the recurrent product and the fused cell kernel, which
also adds the bias (no pass over the (T, B, G) projection of its own). CSR layers run the whole
recurrence in one backend call (kernels.cpu_lstm), whose product of each gate row goes through
the row's W_x and W_h entries at once.

LSTMLayer binds one layer's weights, gradients and buffers to these two functions (model.py
composes it with the other layers). Every array operation goes through the workspace's backend
(`ws.be`), so the same code runs on NumPy arrays with the CPU kernels and on device arrays with
the CUDA kernels.
"""

from __future__ import annotations

from .csr import CSRMatrix
from .workspace import Workspace


def lstm_layer_forward(x, h0, c0, w_x, w_h, bias, ws: Workspace, tag: str):
    """Run one layer over the window.

    x: (T, B, I) C-contiguous; h0, c0: (B, H); w_x: (G, I), w_h: (G, H) DenseMatrix or CSRMatrix;
    bias: (G,); all on ws's backend, one float dtype. Returns out: (T, B, H) (the h_t, a view of
    the cache), (h_T, c_T) views, cache.
    Buffers come from ws under names prefixed by tag, so two layers never share one.
    """
    steps, nb, ni = x.shape
    ng = bias.shape[0]
    nh = ng // 4
    dtype, be = x.dtype, ws.be
    hs = ws.get(tag + "hs", (steps + 1, nb, nh), dtype)
    cs = ws.get(tag + "cs", (steps + 1, nb, nh), dtype)
    gates = ws.get(tag + "gates", (steps, nb, ng), dtype)
    tanh_c = ws.get(tag + "tanh_c", (steps, nb, nh), dtype)
    be.copy(hs[0], h0)
    be.copy(cs[0], c0)
    if isinstance(w_h, CSRMatrix):  # the whole recurrence in one call (kernels.cpu_lstm)
        be.csr_lstm_forward(
            x, w_x.product_arrays(x), w_h.product_arrays(x), bias, hs, cs, gates, tanh_c
        )
    else:
        gx = ws.get(tag + "gx", (steps, nb, ng), dtype)
        w_x.matmul(x.reshape(steps * nb, ni), out=gx.reshape(steps * nb, ng))
        rec = ws.get(tag + "rec", (nb, ng), dtype)
        for t in range(steps):
            w_h.matmul(hs[t], out=rec)
            be.lstm_cell_forward(gx[t], rec, bias, cs[t], gates[t], cs[t + 1], tanh_c[t], hs[t + 1])
    cache = (x, hs, cs, gates, tanh_c)
    return hs[1:], (hs[steps], cs[steps]), cache


def lstm_layer_backward(
    dout, dh_last, dc_last, cache, w_x, w_h, dw_x, dw_h, dbias, ws: Workspace, tag: str
):
    """Backward through the window (equations in the module docstring).

    dout: (T, B, H) gradient reaching each h_t from above; dh_last, dc_last: (B, H) gradient
    reaching (h_T, c_T) from beyond the window, or None for zero (truncated BPTT).
    Writes dw_x ((G, I) dense, or (N,) CSR values), dw_h, dbias: (G,) (each gradient is
    computed once per step, so it overwrites: no zeroing pass over the parameters is needed).
    Returns dx: (T, B, I), dh0, dc0: (B, H).
    """
    x, hs, cs, gates, tanh_c = cache
    steps, nb, ni = x.shape
    nh = hs.shape[2]
    dtype, be = x.dtype, ws.be
    dgates = ws.get(tag + "dgates", (steps, nb, 4 * nh), dtype)
    dx = ws.get(tag + "dx", (steps, nb, ni), dtype)
    dh_rec = ws.get(tag + "dh_rec", (nb, nh), dtype)
    dc = ws.get(tag + "dc", (2, nb, nh), dtype)  # ping-pong: dc_t in, dc_{t-1} out
    _copy_or_zero(be, dh_rec, dh_last)
    _copy_or_zero(be, dc[steps % 2], dc_last)
    da = dgates.reshape(steps * nb, 4 * nh)
    if isinstance(w_h, CSRMatrix):  # the recurrence and dx in one call (kernels.cpu_lstm)
        dh0, dc0 = ws.get(tag + "dh0", (nb, nh), dtype), ws.get(tag + "dc0", (nb, nh), dtype)
        be.csr_lstm_backward(
            dout,
            dh_rec,
            dc[steps % 2],
            gates,
            cs,
            tanh_c,
            w_x.transpose_arrays(dout),
            w_h.transpose_arrays(dout),
            dgates,
            dx,
            dh0,
            dc0,
        )
    else:
        for t in range(steps - 1, -1, -1):
            be.lstm_cell_backward(
                dout[t], dh_rec, dc[(t + 1) % 2], gates[t], cs[t], tanh_c[t], dgates[t], dc[t % 2]
            )
            w_h.matmul_t(dgates[t], out=dh_rec)
        dh0, dc0 = dh_rec, dc[0]
        w_x.matmul_t(da, out=dx.reshape(steps * nb, ni))
    w_h.sddmm(
        da,
        hs[:-1].reshape(steps * nb, nh),
        out=dw_h,
        col_sums=dbias,
        pair=(w_x, x.reshape(steps * nb, ni), dw_x),
    )
    return dx, dh0, dc0


class LSTMLayer:
    """One layer bound to its weights, gradients and buffers: forward and backward over a window
    (lstm_layer_forward/backward with this layer's arguments; equations in the module docstring).

    w_x: (G, I), w_h: (G, H) DenseMatrix or CSRMatrix over the parameter views; bias: (G,);
    dw_x, dw_h (dense shapes, or (N,) CSR values), dbias: the gradient views, overwritten by
    backward; tag: the prefix of its workspace buffers (distinct per layer).
    """

    def __init__(self, w_x, w_h, bias, dw_x, dw_h, dbias, ws: Workspace, tag: str):
        self.w_x, self.w_h, self.bias = w_x, w_h, bias
        self.dw_x, self.dw_h, self.dbias = dw_x, dw_h, dbias
        self.ws, self.tag = ws, tag

    def forward(self, x, h0, c0):
        """x: (T, B, I); h0, c0: (B, H). Returns out (T, B, H), (h_T, c_T), cache."""
        return lstm_layer_forward(x, h0, c0, self.w_x, self.w_h, self.bias, self.ws, self.tag)

    def backward(self, dout, cache):
        """dout: (T, B, H); no gradient from beyond the window (truncated BPTT).
        Returns dx: (T, B, I), dh0, dc0: (B, H)."""
        return lstm_layer_backward(
            dout,
            None,
            None,
            cache,
            self.w_x,
            self.w_h,
            self.dw_x,
            self.dw_h,
            self.dbias,
            self.ws,
            self.tag,
        )


def _copy_or_zero(be, dst, src) -> None:
    if src is None:
        be.fill(dst, 0)
    else:
        be.copy(dst, src)
