"""Every kernel of the backend contract equals its plain-loop specification in
sparselm.kernels.reference, on each backend (the CPU, then CUDA on Numba's simulator or a GPU).

The kernels' own suites (test_kernels_csr.py, test_kernels_dense.py, test_lstm_recurrence.py)
compare against tests/naive.py's dense NumPy; this one compares against the readable loops that
define the contract, with the same arguments and the same in-place writes, so that the two
specifications cannot drift apart unnoticed. Shapes are small (the simulator runs every GPU
thread as a Python thread) but cover several rows per thread block and ragged batches.
"""

import numpy as np
import pytest

from sparselm.kernels import get_backend, reference
from sparselm.sparsity import csr_random

# float32 kernels use approximations of tanh and exp (|error| <= 4e-7) and FMA contraction
TOL = {np.float32: 2e-5, np.float64: 1e-11}


@pytest.fixture(params=["cpu", "cuda"])
def be(request, monkeypatch):
    """The backend; CUDA with small launches, as the kernel_backend fixture has them (several
    blocks and grid-stride loops even at these sizes, and few simulated threads)."""
    if request.param == "cuda":
        from sparselm.device import cuda_status

        usable, detail = cuda_status()
        if not usable:
            pytest.skip(f"CUDA unavailable: {detail}")
        from sparselm.kernels import cuda

        monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 8)
        monkeypatch.setattr(cuda, "MAX_BLOCKS", 3)
    return get_backend(request.param)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


def sizes(be):
    """(H, I, B, T): the CPU's span SIMD registers and row blocks; the simulator's are tiny."""
    return (3, 4, 2, 2) if be.detail == "simulator" else (24, 17, 5, 3)


def run_both(be, fast, ref, args, outputs):
    """Calls the backend's kernel on device copies of args (tuples of arrays included) and the
    reference on host copies; returns [(fast result, reference result)] for the argument
    positions in outputs (an int, or (i, j) for element j of tuple argument i)."""

    def copy(a, move):
        if isinstance(a, tuple):
            return tuple(copy(e, move) for e in a)
        return (be.to_device(a) if move else a.copy()) if isinstance(a, np.ndarray) else a

    dev, host = [copy(a, True) for a in args], [copy(a, False) for a in args]
    fast(*dev)
    ref(*host)

    def at(values, i):
        return values[i] if isinstance(i, int) else values[i[0]][i[1]]

    return [(be.to_host(at(dev, i)), at(host, i)) for i in outputs]


def close(pairs, dtype):
    tol = TOL[dtype]
    for got, want in pairs:
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def gates_and_weights(be, dtype, rng):
    nh, ni, nb, steps = sizes(be)
    w_x = csr_random(4 * nh, ni, 0.3, rng, dtype=dtype, scale=0.5)
    w_h = csr_random(4 * nh, nh, 0.3, rng, dtype=dtype, scale=0.5)
    return nh, ni, nb, steps, w_x, w_h


def product_args(w):
    return w.data, w.indices, w.indptr


def transpose_args(w):
    return w.data, w.t_perm, w.t_indices, w.t_indptr


@pytest.mark.parametrize("accumulate", [False, True])
def test_csr_products(be, dtype, accumulate):
    rng = np.random.default_rng(1)
    nh, ni, nb, _, w_x, w_h = gates_and_weights(be, dtype, rng)
    x = rng.standard_normal((nb, ni)).astype(dtype)
    dy = rng.standard_normal((nb, 4 * nh)).astype(dtype)
    h = rng.standard_normal((nb, nh)).astype(dtype)
    out = rng.standard_normal((nb, 4 * nh)).astype(dtype)
    args = (*product_args(w_x), x, out, accumulate)
    close(run_both(be, be.csr_matmul, reference.csr_matmul, args, [4]), dtype)
    out_t = rng.standard_normal((nb, ni)).astype(dtype)
    args = (*transpose_args(w_x), dy, out_t, accumulate)
    close(run_both(be, be.csr_matmul_t, reference.csr_matmul_t, args, [5]), dtype)
    # the SDDMM as training calls it: W_h's gradient, the bias gradient and W_x's, in one pass
    dw_h, dw_x = rng.standard_normal((2, max(w_h.nnz, w_x.nnz))).astype(dtype)
    pair = (w_x.indices, w_x.indptr, x, dw_x[: w_x.nnz].copy())
    sums = np.zeros(4 * nh, dtype)
    args = (w_h.indices, w_h.indptr, dy, h, dw_h[: w_h.nnz].copy(), accumulate, sums, pair)
    pairs = run_both(be, be.csr_sddmm, reference.csr_sddmm, args, [4, 6, (7, 3)])
    close(pairs, dtype)


def test_recurrence_forward_and_backward(be, dtype):
    rng = np.random.default_rng(2)
    nh, ni, nb, steps, w_x, w_h = gates_and_weights(be, dtype, rng)
    x = rng.standard_normal((steps, nb, ni)).astype(dtype)
    bias = rng.standard_normal(4 * nh).astype(dtype)
    hs = np.zeros((steps + 1, nb, nh), dtype)
    cs = np.zeros((steps + 1, nb, nh), dtype)
    hs[0], cs[0] = rng.standard_normal((2, nb, nh))
    gates, tanh_c = np.zeros((steps, nb, 4 * nh), dtype), np.zeros((steps, nb, nh), dtype)
    args = [x, product_args(w_x), product_args(w_h), bias, hs, cs, gates, tanh_c]
    fwd = run_both(be, be.csr_lstm_forward, reference.csr_lstm_forward, args, [4, 5, 6, 7])
    close(fwd, dtype)
    hs, cs, gates, tanh_c = (want for _, want in fwd)
    dout = rng.standard_normal((steps, nb, nh)).astype(dtype)
    dh_last, dc_last = rng.standard_normal((2, nb, nh)).astype(dtype)
    outs = [np.zeros((steps, nb, 4 * nh), dtype), np.zeros((steps, nb, ni), dtype)]
    outs += [np.zeros((nb, nh), dtype), np.zeros((nb, nh), dtype)]
    args = [dout, dh_last, dc_last, gates, cs, tanh_c, transpose_args(w_x), transpose_args(w_h)]
    back = run_both(
        be, be.csr_lstm_backward, reference.csr_lstm_backward, args + outs, [8, 9, 10, 11]
    )
    close(back, dtype)


def test_cell_forward_and_backward(be, dtype):
    rng = np.random.default_rng(3)
    nh, _, nb, _ = sizes(be)
    gx, r = rng.standard_normal((2, nb, 4 * nh)).astype(dtype)
    bias = rng.standard_normal(4 * nh).astype(dtype)
    c_prev = rng.standard_normal((nb, nh)).astype(dtype)
    outs = [np.zeros((nb, 4 * nh), dtype)] + [np.zeros((nb, nh), dtype) for _ in range(3)]
    args = [gx, r, bias, c_prev, *outs]
    fwd = run_both(be, be.lstm_cell_forward, reference.lstm_cell_forward, args, [4, 5, 6, 7])
    close(fwd, dtype)
    gates, _, tanh_c, _ = (want for _, want in fwd)
    dh_out, dh_rec, dc = rng.standard_normal((3, nb, nh)).astype(dtype)
    outs = [np.zeros((nb, 4 * nh), dtype), np.zeros((nb, nh), dtype)]
    args = [dh_out, dh_rec, dc, gates, c_prev, tanh_c, *outs]
    close(run_both(be, be.lstm_cell_backward, reference.lstm_cell_backward, args, [6, 7]), dtype)


@pytest.mark.parametrize("grad", [False, True])
def test_softmax_xent(be, dtype, grad):
    rng = np.random.default_rng(4)
    n, vocab = (3, 7) if be.detail == "simulator" else (37, 301)
    logits = (3 * rng.standard_normal((n, vocab))).astype(dtype)
    bias = rng.standard_normal(vocab).astype(dtype)
    targets = rng.integers(0, vocab, n).astype(np.int32)
    weights = rng.uniform(0, 1, n).astype(dtype)
    weights[0] = 0  # a padding row
    nll, dbias = np.zeros(n, np.float64), rng.standard_normal(vocab).astype(dtype)
    args = [logits, bias, targets, weights, nll, dbias, grad]
    pairs = run_both(be, be.softmax_xent, reference.softmax_xent, args, [4, 0, 5] if grad else [4])
    close(pairs, dtype)


def test_embedding_backward_and_optimisers(be, dtype):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 6, 20).astype(np.int32)  # words repeat: the scatter must add
    dx, dweight = rng.standard_normal((20, 5)).astype(dtype), rng.standard_normal((6, 5))
    args = [ids, dx, dweight.astype(dtype)]
    close(run_both(be, be.embedding_backward, reference.embedding_backward, args, [2]), dtype)
    p, g, v, m = rng.standard_normal((4, 41)).astype(dtype)
    got = be.sum_squares(be.to_device(g))
    np.testing.assert_allclose(got, reference.sum_squares(g), rtol=TOL[dtype])
    for momentum in (0.0, 0.9):
        args = [p, g, v, 0.5, 0.7, momentum]
        close(run_both(be, be.sgd_update, reference.sgd_update, args, [0, 2]), dtype)
    args = [p, g, m, np.abs(v), 1e-2, 0.7, 0.9, 0.999, 1e-8, 3]
    close(run_both(be, be.adam_update, reference.adam_update, args, [0, 2, 3]), dtype)


@pytest.mark.parametrize("accumulate", [False, True])
def test_array_operations(be, dtype, accumulate):
    rng = np.random.default_rng(6)
    n, side = 7, 3
    a, b = rng.standard_normal((2, n, 9)).astype(dtype)
    for trans_a, trans_b, size in ((True, False, 9), (False, True, n)):
        out = rng.standard_normal((size, size)).astype(dtype)
        args = [a, b, out, accumulate, trans_a, trans_b]
        close(run_both(be, be.gemm, reference.gemm, args, [2]), dtype)
    sums = rng.standard_normal(9).astype(dtype)
    close(run_both(be, be.col_sum, reference.col_sum, [a, sums, accumulate], [1]), dtype)
    close(run_both(be, be.mul, reference.mul, [a, b, np.zeros_like(a)], [2]), dtype)
    close(run_both(be, be.copy, reference.copy, [np.zeros_like(a), b], [0]), dtype)
    close(run_both(be, be.fill, reference.fill, [np.zeros_like(a), 2.5], [0]), dtype)
    ids = rng.integers(0, n, 11).astype(np.int32)
    out = np.zeros((11, 9), dtype)
    close(run_both(be, be.gather, reference.gather, [a, ids, out], [2]), dtype)
    h = rng.standard_normal((n, side * side)).astype(dtype)
    grids = [np.zeros((n, side), dtype), np.zeros((n, side), dtype)]
    close(run_both(be, be.grid_sums, reference.grid_sums, [h, *grids], [1, 2]), dtype)
    args = [grids[0] + 1, grids[1] - 2, np.zeros_like(h)]
    close(run_both(be, be.grid_outer_add, reference.grid_outer_add, args, [2]), dtype)
