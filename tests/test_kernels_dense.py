"""The fused dense kernels against the NumPy references in tests/naive.py, and the error bounds
of the float32 approximations (float64 runs libm: exact)."""

import numpy as np
import pytest
from numba import njit

from sparselm.kernels import cpu
from naive import lstm_cell_backward_ref, lstm_cell_forward_ref, softmax_xent_ref

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = [np.float32, np.float64]


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
    cpu.softmax_xent(logits.copy(), np.zeros(5000, np.float32), np.zeros(4, np.int32),
                     np.ones(4, np.float32), nll, np.zeros(5000, np.float32), False)
    ref = np.log(np.exp(logits.astype(np.float64)).sum(axis=1))
    assert np.abs(nll - ref).max() < 3e-7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nb,nh", [(1, 1), (3, 5), (20, 200)])
def test_lstm_cell_forward(dtype, nb, nh):
    rng = np.random.default_rng(nh)
    gx, r = (rng.normal(0, 2, (nb, 4 * nh)).astype(dtype) for _ in range(2))
    c_prev = rng.normal(0, 1, (nb, nh)).astype(dtype)
    outs = [np.empty((nb, 4 * nh), dtype)] + [np.empty((nb, nh), dtype) for _ in range(3)]
    cpu.lstm_cell_forward(gx, r, c_prev, *outs)
    for got, want in zip(outs, lstm_cell_forward_ref(gx, r, c_prev)):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_backward(dtype):
    rng = np.random.default_rng(1)
    nb, nh = 4, 7
    gates, c, tanh_c, _ = lstm_cell_forward_ref(rng.normal(size=(nb, 4 * nh)),
                                                rng.normal(size=(nb, 4 * nh)),
                                                rng.normal(size=(nb, nh)))
    c_prev = rng.normal(size=(nb, nh))
    dh_out, dh_rec, dc = (rng.normal(size=(nb, nh)) for _ in range(3))
    args = [a.astype(dtype) for a in (dh_out, dh_rec, dc, gates, c_prev, tanh_c)]
    dgates, dc_prev = np.empty((nb, 4 * nh), dtype), np.empty((nb, nh), dtype)
    cpu.lstm_cell_backward(*args, dgates, dc_prev)
    want_da, want_dc = lstm_cell_backward_ref(*(a.astype(np.float64) for a in
                                                (args[0] + args[1], args[2], args[3], args[4],
                                                 args[5])))
    np.testing.assert_allclose(dgates, want_da, **TOL[dtype])
    np.testing.assert_allclose(dc_prev, want_dc, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,nv", [(1, 1), (3, 7), (50, 1000)])
def test_softmax_xent(dtype, n, nv):
    rng = np.random.default_rng(n)
    logits = rng.normal(0, 4, (n, nv)).astype(dtype)
    bias = rng.normal(0, 1, nv).astype(dtype)
    targets = rng.integers(0, nv, n).astype(np.int32)
    weights = rng.uniform(0, 1, n).astype(dtype)
    weights[0] = 0.0                                    # a masked row
    want_nll, want_grad, want_db = softmax_xent_ref(logits + bias, targets, weights)
    nll, dbias = np.empty(n), np.ones(nv, dtype)
    work = logits.copy()
    cpu.softmax_xent(work, bias, targets, weights, nll, dbias, True)
    np.testing.assert_allclose(nll, want_nll, **(dict(rtol=1e-6, atol=1e-6) if dtype == np.float32
                                                else dict(rtol=1e-12)))
    np.testing.assert_allclose(work, want_grad, **TOL[dtype])
    np.testing.assert_allclose(dbias, 1.0 + want_db, **TOL[dtype])   # accumulates
    np.testing.assert_array_equal(work[0], 0.0)


def test_softmax_without_grad_leaves_bias_grad():
    logits = np.zeros((2, 3))
    dbias = np.zeros(3)
    nll = np.empty(2)
    cpu.softmax_xent(logits, np.zeros(3), np.array([0, 2], np.int32), np.ones(2), nll, dbias,
                     False)
    np.testing.assert_allclose(nll, np.log(3))
    assert not dbias.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_repeated_ids(dtype):
    rng = np.random.default_rng(2)
    ids = np.array([3, 1, 3, 3, 0], np.int32)
    dx = rng.normal(size=(5, 4)).astype(dtype)
    dweight = np.zeros((6, 4), dtype)
    cpu.embedding_backward(ids, dx, dweight)
    want = np.zeros((6, 4))
    np.add.at(want, ids, dx.astype(np.float64))
    np.testing.assert_allclose(dweight, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares(dtype):
    x = np.random.default_rng(3).normal(size=1001).astype(dtype)
    rel = 1e-6 if dtype == np.float32 else 1e-12     # float32 chunks sum in float32
    assert cpu.sum_squares(x) == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=rel)
