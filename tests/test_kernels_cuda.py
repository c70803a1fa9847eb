"""The CUDA kernels (sparselm.kernels.cuda) against the references in tests/naive.py, and the
backend selection (sparselm.kernels.get_backend).

Kernel tests run on Numba's CUDA simulator (conftest.py turns it on) or, with
SPARSELM_REAL_CUDA=1, on a real GPU. The simulator runs every GPU thread as a Python thread, so
shapes are tiny and launches use 8 threads per block and at most 3 blocks: every kernel still
runs several blocks, its grid-stride loop and its boundary checks.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import naive
from sparselm import kernels
from sparselm.csr import CSRMatrix, csr_random
from sparselm.device import cuda_status, is_device_array
from sparselm.errors import ConfigError

USABLE, DETAIL = cuda_status()
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture
def kc(monkeypatch):
    """The CUDA kernel module with small launches (8 threads per block, at most 3 blocks)."""
    if not USABLE:
        pytest.skip(f"CUDA unavailable: {DETAIL}")
    from sparselm.kernels import cuda as module

    monkeypatch.setattr(module, "THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(module, "MAX_BLOCKS", 3)
    return module


def close(got, want, dtype, scale=1.0):
    """got (device or host) against a float64 reference; atol relative to the data's scale."""
    tol = TOL[np.dtype(dtype).type]
    got = got if isinstance(got, np.ndarray) else got.copy_to_host()
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


# -- CSR products ---------------------------------------------------------------------------------
def from_dense(dense):
    """CSRMatrix holding exactly the non-zeros of a small dense array."""
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return CSRMatrix(dense[rows, cols].copy(), cols.astype(np.int32), indptr, dense.shape)


def _empty_rows_cols(dtype):
    dense = np.arange(1, 31, dtype=dtype).reshape(6, 5) / 7
    dense[[0, 2, 5]] = 0                # empty rows, first and last included
    dense[:, [0, 4]] = 0                # empty columns, first and last
    dense[3, 1] = 0
    return from_dense(dense)


def _single_entry(dtype):
    dense = np.zeros((9, 6), dtype)
    dense[7, 2] = 2.5
    return from_dense(dense)


CSR_CASES = {  # name: (build(dtype), M)
    # more outputs and entries (30 to 45) than the 24 launched threads: grid-stride loops run
    "random": (lambda d: csr_random(9, 6, 0.6, np.random.default_rng(1), "uniform", d, 1.0), 5),
    "empty_rows_cols": (_empty_rows_cols, 4),
    "single_entry": (_single_entry, 2),
    "1x1": (lambda d: from_dense(np.full((1, 1), -1.5, d)), 3),
    "no_entries": (lambda d: CSRMatrix(np.zeros(0, d), np.zeros(0, np.int32),
                                       np.zeros(5, np.int32), (4, 3)), 2),
    "no_batch_rows": (lambda d: csr_random(5, 4, 0.5, np.random.default_rng(2), "fanin", d), 0),
}


def _csr_refs(w, x, dy):
    args = (w.data, w.indices, w.indptr, w.shape)
    return {"matmul": naive.csr_matmul_ref(*args, x),
            "matmul_t": naive.csr_matmul_t_ref(*args, dy),
            "sddmm": naive.csr_sddmm_ref(w.indices, w.indptr, w.shape, dy, x)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CSR_CASES))
def test_csr_products(kc, dtype, case):
    """CSRMatrix products on device operands dispatch to the CUDA kernels (host and device data,
    fresh and accumulated outputs)."""
    build, m = CSR_CASES[case]
    w = build(dtype)
    rng = np.random.default_rng(3)
    rows, cols = w.shape
    x = rng.standard_normal((m, cols)).astype(dtype)
    dy = rng.standard_normal((m, rows)).astype(dtype)
    refs = _csr_refs(w, x, dy)
    inputs = {"matmul": (x,), "matmul_t": (dy,), "sddmm": (dy, x)}
    w_dev = w.with_data(kc.to_device(w.data))           # values on the device, pattern cached
    for matrix in (w, w_dev):
        for name, ref in refs.items():
            args = [kc.to_device(a) for a in inputs[name]]
            got = getattr(matrix, name)(*args)
            assert is_device_array(got)
            close(got, ref, dtype)
            start = rng.standard_normal(ref.shape).astype(dtype)
            out = kc.to_device(start)
            assert getattr(matrix, name)(*args, out=out, accumulate=True) is out
            close(out, ref + start, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_empty_products_overwrite_out(kc, dtype):
    w = CSR_CASES["no_entries"][0](dtype)
    out = kc.to_device(np.full((2, 4), np.nan, dtype))
    w.matmul(kc.to_device(np.ones((2, 3), dtype)), out=out)
    assert not out.copy_to_host().any()
    w5 = csr_random(5, 4, 0.5, np.random.default_rng(2), "fanin", dtype)
    grad = kc.to_device(np.full(w5.nnz, 3.0, dtype))
    w5.sddmm(kc.empty((0, 5), dtype), kc.empty((0, 4), dtype), out=grad)
    assert not grad.copy_to_host().any()


def test_csr_kernels_directly_and_pattern_cache(kc):
    """The raw launchers with device arrays, as CSRMatrix calls them; one pattern copy."""
    w = CSR_CASES["random"][0](np.float64)
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((5, w.shape[1])), rng.standard_normal((5, w.shape[0]))
    pattern = kc.csr_pattern(w)
    assert kc.csr_pattern(w.with_data(w.data * 2)) is pattern     # shared by with_data
    indices, indptr, t_indices, t_indptr, t_perm = pattern
    data = kc.to_device(w.data)
    out = kc.empty(x.shape, np.float64)
    kc.csr_matmul_t(data, t_perm, t_indices, t_indptr, kc.to_device(dy), out, False)
    close(out, _csr_refs(w, x, dy)["matmul_t"], np.float64)
    grad = kc.zeros(w.nnz, np.float64)
    kc.csr_sddmm(indices, indptr, kc.to_device(dy), kc.to_device(x), grad, True)
    close(grad, _csr_refs(w, x, dy)["sddmm"], np.float64)


# -- LSTM cell, softmax, embedding, optimiser: one suite for both backends in
# tests/test_kernels_dense.py; here only what the CUDA launcher adds --------------------------------
def test_softmax_without_grad_and_nan(kc):
    """Host arrays are accepted, and without grad the logits are left as they were."""
    logits = np.zeros((3, 4))
    logits[2, 1] = np.nan                               # a NaN loss must stay visible
    work, dbias, nll = kc.to_device(logits), kc.zeros(4, np.float64), kc.empty(3, np.float64)
    kc.softmax_xent(work, np.zeros(4), np.array([0, 3, 2], np.int32), np.ones(3), nll, dbias,
                    False)
    got = nll.copy_to_host()
    np.testing.assert_allclose(got[:2], np.log(4))
    assert np.isnan(got[2])
    assert not dbias.copy_to_host().any()
    np.testing.assert_array_equal(work.copy_to_host(), logits)


# -- CUDA-only helpers -----------------------------------------------------------------------------
def test_fill_and_col_sum(kc):
    a = kc.to_device(np.arange(30.0).reshape(5, 6))
    out = kc.to_device(np.ones(6))
    kc.col_sum(a, out, accumulate=True)
    close(out, 1 + np.arange(30.0).reshape(5, 6).sum(axis=0), np.float64)
    kc.fill(a, 2.5)
    assert (a.copy_to_host() == 2.5).all()


# -- GEMM -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_gemm(kc, dtype, trans_a, trans_b):
    rng = np.random.default_rng(6)
    m, k, n = 5, 3, 7                       # tile 2 (8 threads): edges in every dimension
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    out = kc.empty((m, n), dtype)
    kc.gemm(kc.to_device(a), kc.to_device(b), out, trans_a=trans_a, trans_b=trans_b)
    close(out, want, dtype)
    start = rng.normal(size=(m, n)).astype(dtype)
    out = kc.to_device(start)
    kc.gemm(a, b, out, accumulate=True, trans_a=trans_a, trans_b=trans_b)   # host inputs too
    close(out, start + want, dtype)


def test_gemm_larger_tile_and_edge_cases(kc, monkeypatch):
    monkeypatch.setattr(kc, "THREADS_PER_BLOCK", 16)
    assert kc.gemm_tile() == 4
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(6, 9)), rng.normal(size=(9, 5))
    out = kc.empty((6, 5), np.float64)
    kc.gemm(a, b, out)
    close(out, a @ b, np.float64)
    out = kc.to_device(np.full((2, 3), np.nan))
    kc.gemm(kc.empty((2, 0), np.float64), kc.empty((0, 3), np.float64), out)    # K = 0
    assert not out.copy_to_host().any()
    with pytest.raises(ValueError, match="shapes do not match"):
        kc.gemm(a, b, kc.empty((6, 4), np.float64))


def test_launch_checks(kc, monkeypatch):
    with pytest.raises(TypeError, match="device array"):
        kc.sgd_update(np.ones(3), np.ones(3), np.ones(3), 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        kc.sum_squares(kc.to_device(np.ones(3, np.float16)))
    monkeypatch.setattr(kc, "THREADS_PER_BLOCK", 12)
    with pytest.raises(ValueError, match="power of two"):
        kc.fill(kc.empty(3, np.float32), 0.0)


# -- backend selection ----------------------------------------------------------------------------
def test_cpu_backend():
    be = kernels.get_backend("cpu")
    assert be.name == "cpu" and be.fallback is None
    assert all(callable(getattr(be, key)) for key in kernels.KERNELS + kernels.ARRAYS)
    a, b = np.arange(6.0).reshape(3, 2), np.arange(8.0).reshape(4, 2)
    out = be.empty((3, 4), np.float64)
    be.gemm(a, b, out, trans_b=True)
    np.testing.assert_allclose(out, a @ b.T)
    total = np.ones(4)
    be.col_sum(out, total, accumulate=True)
    np.testing.assert_allclose(total, 1 + (a @ b.T).sum(axis=0))
    with pytest.raises(ConfigError, match="unknown device"):
        kernels.get_backend("gpu")


def test_auto_falls_back_once(monkeypatch):
    """Without a real GPU (the simulator does not count) auto runs on the CPU, warning once."""
    if USABLE and "simulator" not in DETAIL:
        pytest.skip("a real GPU is present: auto picks it")
    monkeypatch.setattr(kernels, "_fallback_noted", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = kernels.get_backend("auto"), kernels.get_backend("auto")
    assert first.name == second.name == "cpu"
    assert first.fallback and second.fallback
    notes = [w for w in caught if issubclass(w.category, kernels.FallbackWarning)]
    assert len(notes) == 1 and "running on the CPU" in str(notes[0].message)


def test_cuda_backend_on_simulator_or_gpu(kc):
    be = kernels.get_backend("cuda")
    assert be.name == "cuda" and be.detail == DETAIL
    x = be.to_device(np.arange(4.0))
    assert be.sum_squares(x) == 14.0
    np.testing.assert_array_equal(be.to_host(be.zeros(3, np.float32)), 0)


def test_cuda_without_gpu_is_a_config_error():
    """In a process without the simulator (and, here, without a GPU): a one-line ConfigError,
    auto falls back, and neither imports the CUDA kernel module."""
    script = textwrap.dedent("""
        import sys, warnings
        from sparselm.device import cuda_status
        from sparselm.errors import ConfigError
        from sparselm.kernels import get_backend
        if cuda_status()[0]:
            print("HAS-GPU"); sys.exit(0)
        try:
            get_backend("cuda")
        except ConfigError as exc:
            print("ERROR", str(exc).count(chr(10)), exc)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            be = get_backend("auto")
        print("AUTO", be.name, len(caught), "sparselm.kernels.cuda" in sys.modules)
    """)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    if "HAS-GPU" in res.stdout:
        pytest.skip("a real GPU is present")
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ERROR 0 --device cuda: "), res.stdout
    assert lines[1] == "AUTO cpu 1 False"


@pytest.mark.slow
def test_every_kernel_compiles_for_a_real_gpu():
    """PTX for sm_90 of every kernel in both dtypes, without a GPU: the typing and compilation
    the simulator skips (it runs the Python source). Needs NVVM (CUDA toolkit or CUDA_HOME)."""
    script = textwrap.dedent("""
        from numba.cuda.cudadrv import nvvm
        try:
            nvvm.NVVM()
        except Exception as exc:
            print("NO-NVVM", exc); raise SystemExit(0)
        from sparselm.kernels import cuda
        print("COMPILED", len(cuda.compile_all((9, 0))))
    """)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr[-3000:]
    if "NO-NVVM" in res.stdout:
        pytest.skip(res.stdout.strip())
    assert "COMPILED" in res.stdout, res.stdout
