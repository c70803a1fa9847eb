"""The recurrence of one LSTM layer with CSR gates (W_x and W_h), the whole window in one CPU
kernel call, forward and backward.

The per-step alternative, one recurrent product and one cell kernel per time step (what lstm.py
does for dense gates and on the GPU), costs two wake-ups of the thread pool per step and a
barrier after each kernel, for a few tens of microseconds of work at the study's densities.
Here the batch is split into chunks of at most L rows (L SIMD lanes) instead. Rows of the batch
never interact, so each thread runs its chunk through all T steps alone: one parallel region
per layer and direction, no barrier in between.

Each chunk keeps a private window of L rows (its m <= L rows, zeros after them): the CSR
building blocks of kernels.cpu_csr then work on whole SIMD registers and whole L x L
transposes, and no thread reads rows another thread writes. The math is that of lstm.py and
kernels.cpu (the cell rows are the same inline functions as lstm_cell_forward/backward).
"""

import numpy as np
from numba import njit, prange

from .cpu import FAST, cell_backward_row, cell_forward_row
from .cpu_csr import spmm_rows, transpose_cols
from .simd import aligned_empty, lanes


@njit(cache=True, inline="always")
def _copy_row(dst, src):
    """dst[:] = src (1-D, same length): an explicit loop, which LLVM vectorises; Numba's slice
    assignment here costs three times as much."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@njit(cache=True, inline="always")
def _chunk(nb, chunk, n_chunks):
    """Rows [b0, b1) of batch chunk `chunk` of n_chunks (near-equal sizes)."""
    return chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks


@njit(cache=True, inline="always")
def _n_chunks(nb, lane_count):
    """Chunks of at most one SIMD register of rows each."""
    return max(1, (nb + lane_count - 1) // lane_count)


@njit(parallel=True, cache=True, fastmath=FAST)
def csr_lstm_forward(x, w_x, w_h, bias, hs, cs, gates, tanh_c):
    """For t = 0 .. T-1: a_t = x[t] W_x^T + hs[t] W_h^T + bias; the cell (kernels.cpu) writes
    gates[t], cs[t+1], tanh_c[t], hs[t+1].

    x: (T, B, I) the layer's input; w_x, w_h: (data (N,), indices (N,) int32, indptr (G+1,)
    int32) of W_x (G, I) and W_h (G, H) in CSR; bias: (G,); hs, cs: (T+1, B, H) with hs[0],
    cs[0] the initial state; gates: (T, B, G), tanh_c: (T, B, H). One float dtype,
    C-contiguous. Both products of a gate row run in one pass over its entries (the input
    projection never exists as a (T, B, G) array).
    """
    data, indices, indptr = w_h
    steps, nb, ni = x.shape
    ng = bias.shape[0]
    nh = ng // 4
    width = lanes(x)
    n_chunks = _n_chunks(nb, width)
    for chunk in prange(n_chunks):
        b0, b1 = _chunk(nb, chunk, n_chunks)
        x_win = np.zeros((width, ni), x.dtype)  # x_t of the chunk, zero-padded
        h_win = np.zeros((width, nh), x.dtype)  # h_{t-1} likewise
        x_t = aligned_empty(ni, width, x)  # ... transposed: batch in SIMD lanes
        h_t = aligned_empty(nh, width, x)
        rec = aligned_empty(width, ng, x)  # x_t W_x^T + h_{t-1} W_h^T of the window
        for t in range(steps):
            for i in range(b1 - b0):
                _copy_row(x_win[i], x[t, b0 + i])
                _copy_row(h_win[i], hs[t, b0 + i])
            transpose_cols(x_win, x_t, 0, ni, 0)
            transpose_cols(h_win, h_t, 0, nh, 0)
            spmm_rows(
                data, None, indices, indptr, h_t, 0, ng, rec, False, (w_x[0], w_x[1], w_x[2], x_t)
            )
            for i in range(b1 - b0):
                cell_forward_row(
                    None, rec, bias, cs[t], gates[t], cs[t + 1], tanh_c[t], hs[t + 1], b0 + i, i
                )


@njit(parallel=True, cache=True)
def _permuted(data, perm):
    """data[perm], (N,) like data; perm: (N,) int32."""
    out = np.empty(perm.size, data.dtype)
    for k in prange(perm.size):
        out[k] = data[perm[k]]
    return out


@njit(parallel=True, cache=True, fastmath=FAST)
def csr_lstm_backward(
    dout, dh_last, dc_last, gates, cs, tanh_c, w_x_t, w_h_t, dgates, dx, dh0, dc0
):
    """Backward through the window (equations in lstm.py), for t = T-1 .. 0: the cell backward
    (kernels.cpu) writes dgates[t], then dh^rec_{t-1} = dgates[t] W_h and dx[t] = dgates[t] W_x
    through the matrices' transpose patterns (see kernels.cpu_csr.csr_matmul_t), from one
    transposed copy of dgates[t].

    dout: (T, B, H) gradient reaching each h_t from above; dh_last, dc_last: (B, H) reaching
    h_T, c_T from beyond the window; gates: (T, B, G); cs: (T+1, B, H); tanh_c: (T, B, H);
    w_x_t, w_h_t: (data (N,), t_perm, t_indices (N,) int32, t_indptr (C+1,) int32) of W_x
    (G, I) and W_h (G, H). Writes dgates: (T, B, G), dx: (T, B, I) and dh0, dc0: (B, H), the
    gradients reaching h_0 and c_0.
    """
    steps, nb, nh = dout.shape
    ng = 4 * nh
    ni = dx.shape[2]
    data, t_perm, t_indices, t_indptr = w_h_t
    x_data, x_perm, x_indices, x_indptr = w_x_t
    # W^T's values in its own entry order, gathered once: every step of every chunk reads all
    # of them, and through t_perm each read would be a random access
    vals, x_vals = _permuted(data, t_perm), _permuted(x_data, x_perm)
    width = lanes(dout)
    n_chunks = _n_chunks(nb, width)
    for chunk in prange(n_chunks):
        b0, b1 = _chunk(nb, chunk, n_chunks)
        m = b1 - b0
        dh_rec = np.empty((nb, nh), dout.dtype)  # rows b0:b1 used (batch row numbers)
        dc = np.empty((2, nb, nh), dout.dtype)  # ping-pong: dc_t in, dc_{t-1} out
        dg_win = np.zeros((width, ng), dout.dtype)  # dgates[t] of the chunk, zero-padded
        dg_t = aligned_empty(ng, width, dout)  # ... transposed
        dh_win = aligned_empty(width, nh, dout)  # dgates[t] W_h of the window
        dx_win = aligned_empty(width, ni, dout)  # dgates[t] W_x of the window
        for i in range(m):
            _copy_row(dh_rec[b0 + i], dh_last[b0 + i])
            _copy_row(dc[steps % 2, b0 + i], dc_last[b0 + i])
        for t in range(steps - 1, -1, -1):
            for i in range(m):
                cell_backward_row(
                    dout[t],
                    dh_rec,
                    dc[(t + 1) % 2],
                    gates[t],
                    cs[t],
                    tanh_c[t],
                    dgates[t],
                    dc[t % 2],
                    b0 + i,
                )
                _copy_row(dg_win[i], dgates[t, b0 + i])
            transpose_cols(dg_win, dg_t, 0, ng, 0)
            spmm_rows(vals, None, t_indices, t_indptr, dg_t, 0, nh, dh_win, False)
            spmm_rows(x_vals, None, x_indices, x_indptr, dg_t, 0, ni, dx_win, False)
            for i in range(m):
                _copy_row(dh_rec[b0 + i], dh_win[i])
                _copy_row(dx[t, b0 + i], dx_win[i])
        for i in range(m):
            _copy_row(dh0[b0 + i], dh_rec[b0 + i])
            _copy_row(dc0[b0 + i], dc[0, b0 + i])
