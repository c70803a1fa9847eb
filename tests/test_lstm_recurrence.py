"""The fused recurrence of a CSR layer (csr_lstm_forward/backward: kernels.cpu_lstm on the CPU,
a kernel per step on CUDA) against a float64 NumPy loop over the steps, once per backend.

The CPU kernel splits the batch into chunks of at most one SIMD register of rows (16 float32,
8 float64), each padded to a whole register: batch sizes below, at and just above those widths,
and several chunks, are the cases that matter.
"""

import naive
import numpy as np
import pytest

from sparselm.kernels import get_backend
from sparselm.sparsity import csr_random

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def reference(x, w_x, bias, w, h0, c0, dout, dh_last, dc_last):
    """Forward (hs, cs, gates, tanh_c) and backward (dgates, dh0, dc0) in float64, step by step."""
    steps, nb, _ = x.shape
    ng = bias.shape[0]
    nh = ng // 4
    gx = naive.csr_matmul_ref(
        w_x.data, w_x.indices, w_x.indptr, w_x.shape, x.reshape(steps * nb, -1)
    ).reshape(steps, nb, ng)
    hs, cs = np.zeros((steps + 1, nb, nh)), np.zeros((steps + 1, nb, nh))
    gates, tanh_c = np.zeros((steps, nb, ng)), np.zeros((steps, nb, nh))
    hs[0], cs[0] = h0, c0
    for t in range(steps):
        r = naive.csr_matmul_ref(w.data, w.indices, w.indptr, w.shape, hs[t])
        gates[t], cs[t + 1], tanh_c[t], hs[t + 1] = naive.lstm_cell_forward_ref(
            gx[t] + bias, r, cs[t]
        )
    dgates = np.zeros_like(gates)
    dh, dc = dh_last.astype(np.float64), dc_last.astype(np.float64)
    for t in range(steps - 1, -1, -1):
        dgates[t], dc = naive.lstm_cell_backward_ref(dout[t] + dh, dc, gates[t], cs[t], tanh_c[t])
        dh = naive.csr_matmul_t_ref(w.data, w.indices, w.indptr, w.shape, dgates[t])
    return (hs, cs, gates, tanh_c), (dgates, dh, dc)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nb", [1, 7, 8, 9, 16, 17, 20, 33])
def test_fused_recurrence_matches_step_loop(kernel_backend, dtype, nb):
    be = kernel_backend
    kern = get_backend(be.name)  # the backend's functions (CPU: kernels.cpu_lstm)
    if be.simulated and nb not in (1, 9):
        pytest.skip("the CUDA simulator runs tiny shapes only")
    rng = np.random.default_rng(nb)
    steps, nh = (3, 5) if be.simulated else (6, 37)
    w = csr_random(4 * nh, nh, 0.2, rng, mask="fanin", dtype=dtype, scale=0.5)
    w_x = csr_random(4 * nh, nh + 3, 0.2, rng, mask="uniform", dtype=dtype, scale=0.5)
    x = rng.normal(0, 1, (steps, nb, nh + 3)).astype(dtype)
    bias = rng.normal(0, 0.5, 4 * nh).astype(dtype)
    h0, c0, dh_last, dc_last = (rng.normal(0, 0.5, (nb, nh)).astype(dtype) for _ in range(4))
    dout = rng.normal(0, 1, (steps, nb, nh)).astype(dtype)
    (want_fwd, (want_dg, want_dh, want_dc)) = reference(
        x, w_x, bias, w, h0, c0, dout, dh_last, dc_last
    )

    hs, cs = be.empty((steps + 1, nb, nh), dtype), be.empty((steps + 1, nb, nh), dtype)
    gates, tanh_c = be.empty((steps, nb, 4 * nh), dtype), be.empty((steps, nb, nh), dtype)
    be.arrays.copy(hs[0], be.dev(h0))
    be.arrays.copy(cs[0], be.dev(c0))
    on_device = lambda *arrays: tuple(be.dev(a) for a in arrays)  # noqa: E731
    kern.csr_lstm_forward(
        be.dev(x),
        on_device(w_x.data, w_x.indices, w_x.indptr),
        on_device(w.data, w.indices, w.indptr),
        be.dev(bias),
        hs,
        cs,
        gates,
        tanh_c,
    )
    for got, want in zip((hs, cs, gates, tanh_c), want_fwd):
        np.testing.assert_allclose(be.host(got), want, **TOL[dtype])

    shapes = [(steps, nb, 4 * nh), (steps, nb, nh + 3), (nb, nh), (nb, nh)]
    dgates, dx, dh0, dc0 = (be.empty(s, dtype) for s in shapes)
    transposed = lambda m: on_device(m.data, m.t_perm, m.t_indices, m.t_indptr)  # noqa: E731
    kern.csr_lstm_backward(
        be.dev(dout),
        be.dev(dh_last),
        be.dev(dc_last),
        gates,
        cs,
        tanh_c,
        transposed(w_x),
        transposed(w),
        dgates,
        dx,
        dh0,
        dc0,
    )
    want_dx = naive.csr_matmul_t_ref(
        w_x.data, w_x.indices, w_x.indptr, w_x.shape, want_dg.reshape(steps * nb, -1)
    ).reshape(dx.shape)
    for got, want in zip((dgates, dx, dh0, dc0), (want_dg, want_dx, want_dh, want_dc)):
        np.testing.assert_allclose(be.host(got), want, **TOL[dtype])
