"""The fused dense kernels and the optimiser kernels against the NumPy references in
tests/naive.py, once per backend (the `kernel_backend` fixture: CPU, then CUDA on Numba's
simulator or a real GPU), and the error bounds of the CPU's float32 approximations (float64 runs
libm: exact)."""

import naive
import numpy as np
import pytest
from numba import njit

from sparselm.kernels import cpu

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = [np.float32, np.float64]


def close(be, got, want, dtype):
    """A backend array against a float64 reference, with the dtype's tolerance."""
    np.testing.assert_allclose(be.host(got), want, **TOL[dtype])


@njit
def _tanh_approx_all(x, out):
    for k in range(x.shape[0]):
        out[k] = cpu.tanh_approx(x[k])


def test_tanh_approx_error_bound():
    x = np.linspace(-20, 20, 400001).astype(np.float32)
    out = np.empty_like(x)
    _tanh_approx_all(x, out)
    err = np.abs(out.astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7
    assert out[0] == -1.0 and out[-1] == 1.0 and out[len(x) // 2] == 0.0


def test_exp_approx_error_bound():
    # the softmax kernel's float32 exp on a row spanning its whole range, checked through the sum
    rng = np.random.default_rng(0)
    logits = rng.uniform(-80, 0, (4, 5000)).astype(np.float32)
    logits[:, 0] = 0.0
    nll = np.empty(4)
    cpu.softmax_xent(
        logits.copy(),
        np.zeros(5000, np.float32),
        np.zeros(4, np.int32),
        np.ones(4, np.float32),
        nll,
        np.zeros(5000, np.float32),
        False,
    )
    ref = np.log(np.exp(logits.astype(np.float64)).sum(axis=1))
    assert np.abs(nll - ref).max() < 3e-7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nv", [1, 7, 8, 15, 16, 17, 63, 64, 65, 129, 10000])
def test_row_max_simd(dtype, nv):
    """The softmax's vectorised max of row + bias, at every length around the vector width and
    the four-register block (CPU only: the simd intrinsics are the CPU's)."""
    rng = np.random.default_rng(nv)
    row, bias = rng.normal(0, 3, nv).astype(dtype), rng.normal(0, 1, nv).astype(dtype)
    for where in {0, nv // 2, nv - 1}:
        spiked = row.copy()
        spiked[where] = 50.0  # the maximum at every position
        assert cpu._row_max(spiked, bias) == np.max(spiked + bias)
    assert cpu._row_max(row, bias) == np.max(row + bias)
    if nv > 1:
        row[nv // 3] = np.nan  # skipped (the NLL shows the NaN)
        assert cpu._row_max(row, bias) == np.nanmax(row + bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nb,nh", [(1, 1), (3, 5), (4, 7), (20, 200)])
def test_lstm_cell_forward(kernel_backend, dtype, nb, nh):
    be = kernel_backend
    if be.simulated and nb * nh > 100:
        pytest.skip("the CUDA simulator runs tiny shapes only")
    rng = np.random.default_rng(nh)
    gx, r = (rng.normal(0, 2, (nb, 4 * nh)).astype(dtype) for _ in range(2))
    bias = rng.normal(0, 1, 4 * nh).astype(dtype)
    c_prev = rng.normal(0, 1, (nb, nh)).astype(dtype)
    outs = [be.empty((nb, 4 * nh), dtype)] + [be.empty((nb, nh), dtype) for _ in range(3)]
    be.k.lstm_cell_forward(be.dev(gx), be.dev(r), be.dev(bias), be.dev(c_prev), *outs)
    for got, want in zip(outs, naive.lstm_cell_forward_ref(gx, r + bias, c_prev)):
        close(be, got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_backward(kernel_backend, dtype):
    be = kernel_backend
    rng = np.random.default_rng(1)
    nb, nh = 4, 7
    gates, c, tanh_c, _ = naive.lstm_cell_forward_ref(
        rng.normal(size=(nb, 4 * nh)), rng.normal(size=(nb, 4 * nh)), rng.normal(size=(nb, nh))
    )
    c_prev = rng.normal(size=(nb, nh))
    dh_out, dh_rec, dc = (rng.normal(size=(nb, nh)) for _ in range(3))
    args = [a.astype(dtype) for a in (dh_out, dh_rec, dc, gates, c_prev, tanh_c)]
    dgates, dc_prev = be.empty((nb, 4 * nh), dtype), be.empty((nb, nh), dtype)
    be.k.lstm_cell_backward(*(be.dev(a) for a in args), dgates, dc_prev)
    a64 = [a.astype(np.float64) for a in args]
    want_da, want_dc = naive.lstm_cell_backward_ref(a64[0] + a64[1], *a64[2:])
    close(be, dgates, want_da, dtype)
    close(be, dc_prev, want_dc, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,nv", [(1, 1), (3, 7), (5, 19), (50, 1000)])
def test_softmax_xent(kernel_backend, dtype, n, nv):
    be = kernel_backend
    if be.simulated and n * nv > 100:
        pytest.skip("the CUDA simulator runs tiny shapes only")
    rng = np.random.default_rng(n)
    logits = rng.normal(0, 4, (n, nv)).astype(dtype)
    bias = rng.normal(0, 1, nv).astype(dtype)
    targets = rng.integers(0, nv, n).astype(np.int32)
    weights = rng.uniform(0, 1, n).astype(dtype)
    weights[0] = 0.0  # a masked row
    want_nll, want_grad, want_db = naive.softmax_xent_ref(logits + bias, targets, weights)
    work, dbias, nll = be.dev(logits), be.dev(np.ones(nv, dtype)), be.empty(n, np.float64)
    be.k.softmax_xent(work, be.dev(bias), be.dev(targets), be.dev(weights), nll, dbias, True)
    np.testing.assert_allclose(
        be.host(nll),
        want_nll,
        **(dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)),
    )
    close(be, work, want_grad, dtype)
    close(be, dbias, 1.0 + want_db, dtype)  # accumulates
    np.testing.assert_array_equal(be.host(work)[0], 0.0)


def test_softmax_without_grad_leaves_bias_grad(kernel_backend):
    be = kernel_backend
    logits = np.zeros((3, 4))
    logits[2, 1] = np.nan  # a NaN loss must stay visible
    dbias, nll = be.dev(np.zeros(4)), be.empty(3, np.float64)
    be.k.softmax_xent(
        be.dev(logits),
        be.dev(np.zeros(4)),
        be.dev(np.array([0, 3, 2], np.int32)),
        be.dev(np.ones(3)),
        nll,
        dbias,
        False,
    )
    got = be.host(nll)
    np.testing.assert_allclose(got[:2], np.log(4))
    assert np.isnan(got[2])
    assert not be.host(dbias).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_repeated_ids(kernel_backend, dtype):
    be = kernel_backend
    rng = np.random.default_rng(2)
    ids = np.array([3, 1, 3, 3, 0, 5, 3], np.int32)
    dx = rng.normal(size=(7, 4)).astype(dtype)
    start = rng.normal(size=(6, 4)).astype(dtype)
    dweight = be.dev(start)
    be.k.embedding_backward(be.dev(ids), be.dev(dx), dweight)
    close(be, dweight, start + naive.embedding_backward_ref(ids, dx, 6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares(kernel_backend, dtype):
    be = kernel_backend
    x = np.random.default_rng(3).normal(size=1001).astype(dtype)
    # the CPU's float32 chunks sum in float32; the GPU and float64 sum in float64
    rel = 1e-6 if dtype == np.float32 and be.name == "cpu" else 1e-12
    assert be.k.sum_squares(be.dev(x)) == pytest.approx(
        float((x.astype(np.float64) ** 2).sum()), rel=rel
    )
    assert be.k.sum_squares(be.empty(0, dtype)) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update(kernel_backend, dtype, momentum):
    be = kernel_backend
    rng = np.random.default_rng(4)
    p, g, vel = (rng.normal(size=37).astype(dtype) for _ in range(3))
    d_p, d_v = be.dev(p), be.dev(vel)
    be.k.sgd_update(d_p, be.dev(g), d_v, 0.5, 0.8, momentum)
    want_p, want_v = naive.sgd_update_ref(p, g, vel, 0.5, 0.8, momentum)
    close(be, d_p, want_p, dtype)
    close(be, d_v, want_v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update(kernel_backend, dtype):
    be = kernel_backend
    rng = np.random.default_rng(5)
    p, g, m = (rng.normal(size=29).astype(dtype) for _ in range(3))
    v = rng.uniform(0, 1, 29).astype(dtype)
    d_p, d_m, d_v = be.dev(p), be.dev(m), be.dev(v)
    args = (1e-2, 0.7, 0.9, 0.999, 1e-8, 3)
    be.k.adam_update(d_p, be.dev(g), d_m, d_v, *args)
    for got, want in zip((d_p, d_m, d_v), naive.adam_update_ref(p, g, m, v, *args)):
        close(be, got, want, dtype)


# -- array operations of the step (kernels/cpu_arrays.py and their CUDA namesakes) ----------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)]
)
def test_gemm(kernel_backend, dtype, trans_a, trans_b):
    kb, ops = kernel_backend, kernel_backend.arrays
    rng = np.random.default_rng(6)
    m, k, n = 5, 3, 7  # CUDA tile 2 (8 threads): edges in every dimension
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    out = kb.empty((m, n), dtype)
    ops.gemm(kb.dev(a), kb.dev(b), out, trans_a=trans_a, trans_b=trans_b)
    close(kb, out, want, dtype)
    start = rng.normal(size=(m, n)).astype(dtype)
    out = kb.dev(start)
    ops.gemm(kb.dev(a), kb.dev(b), out, accumulate=True, trans_a=trans_a, trans_b=trans_b)
    close(kb, out, start + want, dtype)


def test_fill_and_col_sum(kernel_backend):
    kb, ops = kernel_backend, kernel_backend.arrays
    a = kb.dev(np.arange(30.0).reshape(5, 6))
    out = kb.dev(np.ones(6))
    ops.col_sum(a, out, accumulate=True)
    close(kb, out, 1 + np.arange(30.0).reshape(5, 6).sum(axis=0), np.float64)
    ops.col_sum(a, out)
    close(kb, out, np.arange(30.0).reshape(5, 6).sum(axis=0), np.float64)
    ops.fill(a, 2.5)
    assert (kb.host(a) == 2.5).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_mul(kernel_backend, dtype):
    kb, ops = kernel_backend, kernel_backend.arrays
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(2, 5, 7)).astype(dtype), rng.normal(size=(2, 5, 7)).astype(dtype)
    dst = kb.empty((2, 5, 7), dtype)
    ops.copy(dst, kb.dev(x))
    np.testing.assert_array_equal(kb.host(dst), x)
    ops.mul(dst, kb.dev(y), dst)  # in place, as the dropout backward does
    close(kb, dst, x.astype(np.float64) * y, dtype)


def test_gather_repeated_ids(kernel_backend):
    kb, ops = kernel_backend, kernel_backend.arrays
    table = np.arange(24.0).reshape(6, 4)
    ids = np.array([5, 0, 5, 2, 2, 1, 0], dtype=np.int32)
    out = kb.empty((7, 4), np.float64)
    ops.gather(kb.dev(table), kb.dev(ids), out)
    np.testing.assert_array_equal(kb.host(out), table[ids])


@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_sums_and_their_gradient(kernel_backend, dtype):
    """rows/cols of h read as an S x S grid, and grid_outer_add: the adjoint of grid_sums
    (<grid_sums(h), (dr, dc)> = <h, grid_outer_add(dr, dc)>)."""
    kb, ops = kernel_backend, kernel_backend.arrays
    rng = np.random.default_rng(9)
    n, side = 5, 3
    h = rng.normal(size=(n, side * side)).astype(dtype)
    rows, cols = kb.empty((n, side), dtype), kb.empty((n, side), dtype)
    ops.grid_sums(kb.dev(h), rows, cols)
    grid = h.astype(np.float64).reshape(n, side, side)
    close(kb, rows, grid.sum(axis=2), dtype)
    close(kb, cols, grid.sum(axis=1), dtype)
    dr, dc = rng.normal(size=(2, n, side)).astype(dtype)
    dh = kb.empty((n, side * side), dtype)
    ops.grid_outer_add(kb.dev(dr), kb.dev(dc), dh)
    lhs = (kb.host(rows) * dr).sum() + (kb.host(cols) * dc).sum()
    assert float((h * kb.host(dh)).sum()) == pytest.approx(float(lhs), rel=1e-5)
    close(kb, dh, (dr[:, :, None] + dc[:, None, :]).reshape(n, -1).astype(np.float64), dtype)
