"""Reference kernels: the backend contract (kernels/contract.py) written as plain loops.

The specification of every kernel, for a reader who does not know LLVM IR or CUDA: loops over
the sparse structure (rows, stored entries, time steps) and NumPy only across the batch, with
the same arguments, the same in-place writes and the same overwrite-or-accumulate rule as the
fast kernels. The kernel suites check fast == reference on every backend
(tests/test_reference_kernels.py) and scripts/bench_kernels.py checks each result against these
before it times anything; tests/naive.py stays the independent oracle in dense NumPy/SciPy, so
there are two ways to be right.

Slow by design (a Python loop per stored entry): for tests and for validating one call of a
benchmark, not for training. Computed in the arguments' dtype, as the kernels are, so float32
results agree with the kernels to rounding (a few ulp of the sums), float64 to ~1e-12.
"""

from __future__ import annotations

import numpy as np


def _write(out, value, accumulate) -> None:
    """out[...] = value, or out += value when accumulate (the contract's two write modes)."""
    if accumulate:
        out += value
    else:
        out[...] = value


# ---------------------------------------------------------------------------------------------
# products with a CSR matrix W (R, C): data (N,), indices (N,) int32, indptr (R+1,) int32


def csr_matmul(data, indices, indptr, x, out, accumulate, out_rows=False) -> None:
    """out (M, R) (+)= x @ W^T; out (R, M) holds the result transposed when out_rows.

    x: (M, C) float; W's row r has the entries k in indptr[r]:indptr[r+1], column indices[k].
    """
    y = np.zeros((x.shape[0], indptr.size - 1), x.dtype)
    for r in range(indptr.size - 1):
        for k in range(indptr[r], indptr[r + 1]):
            y[:, r] += data[k] * x[:, indices[k]]
    _write(out, y.T if out_rows else y, accumulate)


def csr_matmul_t(
    data, t_perm, t_indices, t_indptr, dy, out, accumulate, out_rows=False, pattern=None
) -> None:
    """out (M, C) (+)= dy @ W, read through W's transpose pattern; (C, M) when out_rows.

    Row c of W^T holds the entries k in t_indptr[c]:t_indptr[c+1]: row t_indices[k] of W, value
    data[t_perm[k]]. dy: (M, R). pattern (W's own indices, indptr) only lets a fast kernel pick
    another loop order; the result is the same.
    """
    del pattern
    y = np.zeros((dy.shape[0], t_indptr.size - 1), dy.dtype)
    for c in range(t_indptr.size - 1):
        for k in range(t_indptr[c], t_indptr[c + 1]):
            y[:, c] += data[t_perm[k]] * dy[:, t_indices[k]]
    _write(out, y.T if out_rows else y, accumulate)


def csr_sddmm(indices, indptr, dy, x, out, accumulate, col_sums=None, pair=None) -> None:
    """out[k] (+)= sum_m dy[m, row_k] x[m, col_k] for every stored entry k: dL/dW's values for
    y = x W^T.

    dy: (M, R), x: (M, C); out: (N,). col_sums: None or (R,), overwritten with dy's column sums
    (the bias gradient). pair: None or (indices2, indptr2, x2, out2): a second matrix of the same
    rows fed by x2 into the same y, done the same way.
    """
    grad = np.zeros(out.shape, dy.dtype)
    for r in range(indptr.size - 1):
        for k in range(indptr[r], indptr[r + 1]):
            grad[k] = np.dot(dy[:, r], x[:, indices[k]])
    _write(out, grad, accumulate)
    if col_sums is not None:
        col_sums[...] = dy.sum(axis=0)
    if pair is not None:
        indices2, indptr2, x2, out2 = pair
        csr_sddmm(indices2, indptr2, dy, x2, out2, accumulate)


# ---------------------------------------------------------------------------------------------
# the LSTM cell (equations in sparselm/lstm.py), gate order i, f, g, o


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def lstm_cell_forward(gx, r, bias, c_prev, gates, c, tanh_c, h) -> None:
    """One step: a = gx + r + bias (gx may be None); i, f, o = sigmoid, g = tanh of a's four
    blocks; c = f c_prev + i g; h = o tanh(c).

    gx, r: (B, G); bias: (G,); c_prev: (B, H). Writes gates (B, G) = [i, f, g, o], c, tanh_c,
    h: (B, H).
    """
    a = r + bias if gx is None else gx + r + bias
    nh = c_prev.shape[1]
    for b in range(a.shape[0]):
        i, f = _sigmoid(a[b, :nh]), _sigmoid(a[b, nh : 2 * nh])
        g, o = np.tanh(a[b, 2 * nh : 3 * nh]), _sigmoid(a[b, 3 * nh :])
        gates[b] = np.concatenate([i, f, g, o])
        c[b] = f * c_prev[b] + i * g
        tanh_c[b] = np.tanh(c[b])
        h[b] = o * tanh_c[b]


def lstm_cell_backward(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev) -> None:
    """Backward of one step, overwriting dgates (B, G) and dc_prev (B, H):

    dh = dh_out + dh_rec;  dc_t = dc + dh o (1 - tanh_c^2)
    da_i = dc_t g i (1 - i);  da_f = dc_t c_prev f (1 - f);  da_g = dc_t i (1 - g^2)
    da_o = dh tanh_c o (1 - o);  dc_prev = dc_t f
    """
    nh = c_prev.shape[1]
    for b in range(dh_out.shape[0]):
        i, f = gates[b, :nh], gates[b, nh : 2 * nh]
        g, o = gates[b, 2 * nh : 3 * nh], gates[b, 3 * nh :]
        dh = dh_out[b] + dh_rec[b]
        dct = dc[b] + dh * o * (1 - tanh_c[b] ** 2)
        dgates[b, :nh] = dct * g * i * (1 - i)
        dgates[b, nh : 2 * nh] = dct * c_prev[b] * f * (1 - f)
        dgates[b, 2 * nh : 3 * nh] = dct * i * (1 - g * g)
        dgates[b, 3 * nh :] = dh * tanh_c[b] * o * (1 - o)
        dc_prev[b] = dct * f


# ---------------------------------------------------------------------------------------------
# a CSR layer's whole recurrence over a window


def csr_lstm_forward(x, w_x, w_h, bias, hs, cs, gates, tanh_c) -> None:
    """For t = 0 .. T-1: a_t = x[t] W_x^T + hs[t] W_h^T + bias, then the cell.

    x: (T, B, I); w_x, w_h: (data, indices, indptr) of W_x (G, I), W_h (G, H); bias: (G,);
    hs, cs: (T+1, B, H) holding the initial state at 0; writes hs[1:], cs[1:], gates (T, B, G),
    tanh_c (T, B, H).
    """
    steps, nb = x.shape[:2]
    for t in range(steps):
        r = np.empty((nb, bias.size), x.dtype)
        csr_matmul(w_x[0], w_x[1], w_x[2], x[t], r, False)
        csr_matmul(w_h[0], w_h[1], w_h[2], hs[t], r, True)
        lstm_cell_forward(None, r, bias, cs[t], gates[t], cs[t + 1], tanh_c[t], hs[t + 1])


def csr_lstm_backward(
    dout, dh_last, dc_last, gates, cs, tanh_c, w_x_t, w_h_t, dgates, dx, dh0, dc0
) -> None:
    """For t = T-1 .. 0: the cell backward, then dh_rec = dgates[t] W_h, dx[t] = dgates[t] W_x.

    dout: (T, B, H); dh_last, dc_last: (B, H) from beyond the window; gates: (T, B, G); cs:
    (T+1, B, H); tanh_c: (T, B, H); w_x_t, w_h_t: (data, t_perm, t_indices, t_indptr) of W_x,
    W_h. Writes dgates (T, B, G), dx (T, B, I), and dh0, dc0 (B, H): the gradients reaching
    h_0 and c_0.
    """
    dh_rec, dc = dh_last.copy(), dc_last.copy()
    for t in range(dout.shape[0] - 1, -1, -1):
        dc_prev = np.empty_like(dc)
        lstm_cell_backward(dout[t], dh_rec, dc, gates[t], cs[t], tanh_c[t], dgates[t], dc_prev)
        csr_matmul_t(w_h_t[0], w_h_t[1], w_h_t[2], w_h_t[3], dgates[t], dh_rec, False)
        csr_matmul_t(w_x_t[0], w_x_t[1], w_x_t[2], w_x_t[3], dgates[t], dx[t], False)
        dc = dc_prev
    dh0[...], dc0[...] = dh_rec, dc


# ---------------------------------------------------------------------------------------------
# the output layer, the embedding and the optimiser


def softmax_xent(logits, bias, targets, weights, nll, dbias, grad) -> None:
    """nll[n] = -log softmax(logits[n] + bias)[targets[n]] (float64); when grad, logits[n] <-
    weights[n] (softmax(logits[n] + bias) - onehot(targets[n])) and dbias += their column sums.

    logits: (N, V) float; bias: (V,); targets: (N,) int32; weights: (N,). Without grad the
    fast kernels leave the logits holding unnormalised probabilities: not part of the contract.
    """
    for n in range(logits.shape[0]):
        z = logits[n] + bias
        shift = z.max()
        p = np.exp(z - shift)
        total = p.sum()
        nll[n] = np.log(total) + shift - z[targets[n]]
        if grad:
            d = weights[n] * p / total
            d[targets[n]] -= weights[n]
            logits[n] = d
            dbias += d


def embedding_backward(ids, dx, dweight) -> None:
    """dweight[ids[n]] += dx[n] for each n (ids: (N,) int32; dx: (N, E); dweight: (V, E))."""
    for n in range(ids.size):
        dweight[ids[n]] += dx[n]


def sum_squares(x) -> float:
    """sum(x^2) over x (P,), accumulated in float64."""
    return float(np.sum(x.astype(np.float64) ** 2))


def sgd_update(p, g, velocity, lr, scale, momentum) -> None:
    """p -= lr u with u = scale g, or with momentum the velocity v = momentum v + scale g."""
    if momentum == 0.0:
        p -= lr * scale * g
    else:
        velocity[...] = momentum * velocity + scale * g
        p -= lr * velocity


def adam_update(p, g, m, v, lr, scale, beta1, beta2, eps, step) -> None:
    """Adam with bias correction on the clipped gradient scale g; step is 1-based:

    m = b1 m + (1-b1) sg; v = b2 v + (1-b2) sg^2;
    p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t)).
    """
    sg = scale * g
    m[...] = beta1 * m + (1 - beta1) * sg
    v[...] = beta2 * v + (1 - beta2) * sg * sg
    correction = np.sqrt(1.0 - beta2**step)
    p -= lr * correction / (1.0 - beta1**step) * m / (np.sqrt(v) + eps * correction)


# ---------------------------------------------------------------------------------------------
# the array operations of a step


def gemm(a, b, out, accumulate=False, trans_a=False, trans_b=False) -> None:
    """out (M, N) (+)= op(a) @ op(b), op transposing when its flag is set: (M, K) @ (K, N)."""
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    y = np.zeros(out.shape, out.dtype)
    for i in range(out.shape[0]):
        for k in range(a.shape[1]):
            y[i] += a[i, k] * b[k]
    _write(out, y, accumulate)


def col_sum(a, out, accumulate) -> None:
    """out (V,) (+)= the column sums of a (N, V)."""
    y = np.zeros(out.shape, out.dtype)
    for n in range(a.shape[0]):
        y += a[n]
    _write(out, y, accumulate)


def fill(a, value) -> None:
    """a[...] = value."""
    a[...] = value


def copy(dst, src) -> None:
    """dst[...] = src (same shape and dtype)."""
    dst[...] = src


def mul(a, b, out) -> None:
    """out = a * b element-wise (out may be a or b)."""
    out[...] = a * b


def gather(table, ids, out) -> None:
    """out[n] = table[ids[n]]: the embedding lookup. table: (V, E); ids: (N,) int32."""
    for n in range(ids.size):
        out[n] = table[ids[n]]


def grid_sums(h, rows, cols) -> None:
    """h (N, S*S) read as S x S grids: rows[n, i] = sum_j h[n, iS+j], cols[n, j] = sum_i."""
    side = rows.shape[1]
    for n in range(h.shape[0]):
        grid = h[n].reshape(side, side)
        rows[n], cols[n] = grid.sum(axis=1), grid.sum(axis=0)


def grid_outer_add(drows, dcols, dh) -> None:
    """dh[n, iS + j] = drows[n, i] + dcols[n, j] (overwritten): the gradient of grid_sums."""
    side = drows.shape[1]
    for n in range(dh.shape[0]):
        dh[n] = (drows[n][:, None] + dcols[n][None, :]).reshape(side * side)
