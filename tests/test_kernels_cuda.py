"""What only the CUDA backend has: its launchers' own checks and helpers (fill, col_sum, gemm,
device copies of CSR patterns), the backend selection (sparselm.kernels.get_backend), and a
compile check for real GPUs. The kernels shared with the CPU are tested once per backend in
tests/test_kernels_dense.py and tests/test_kernels_csr.py.

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

from sparselm import kernels
from sparselm.device import cuda_status
from sparselm.errors import ConfigError
from sparselm.sparsity import csr_random

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


# -- CSR products: one suite for both backends in tests/test_kernels_csr.py; here only the CUDA
# module's device copies of CSR patterns -----------------------------------------------------------
def test_csr_pattern_copied_once_per_pattern(kc):
    w = csr_random(9, 6, 0.6, np.random.default_rng(1), "uniform", np.float64)
    pattern = kc.csr_pattern(w)
    assert kc.csr_pattern(w.with_data(w.data * 2)) is pattern  # shared by with_data
    host = (w.indices, w.indptr, w.t_indices, w.t_indptr, w.t_perm)
    for got, want in zip(pattern, host, strict=True):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    other = csr_random(9, 6, 0.6, np.random.default_rng(2), "uniform", np.float64)
    assert kc.csr_pattern(other) is not pattern


# -- LSTM cell, softmax, embedding, optimiser: one suite for both backends in
# tests/test_kernels_dense.py; here only what the CUDA launcher adds ---------------------------
def test_softmax_without_grad_and_nan(kc):
    """Host arrays are accepted, and without grad the logits are left as they were."""
    logits = np.zeros((3, 4))
    logits[2, 1] = np.nan  # a NaN loss must stay visible
    work, dbias, nll = kc.to_device(logits), kc.zeros(4, np.float64), kc.empty(3, np.float64)
    kc.softmax_xent(work, np.zeros(4), np.array([0, 3, 2], np.int32), np.ones(3), nll, dbias, False)
    got = nll.copy_to_host()
    np.testing.assert_allclose(got[:2], np.log(4))
    assert np.isnan(got[2])
    assert not dbias.copy_to_host().any()
    np.testing.assert_array_equal(work.copy_to_host(), logits)


# -- GEMM (the contract is tested in test_kernels_dense.py) -----------------------------------
def test_gemm_larger_tile_and_edge_cases(kc, monkeypatch):
    monkeypatch.setattr(kc, "THREADS_PER_BLOCK", 16)
    assert kc.gemm_tile() == 4
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(6, 9)), rng.normal(size=(9, 5))
    out = kc.empty((6, 5), np.float64)
    kc.gemm(a, b, out)
    close(out, a @ b, np.float64)
    out = kc.to_device(np.full((2, 3), np.nan))
    kc.gemm(kc.empty((2, 0), np.float64), kc.empty((0, 3), np.float64), out)  # K = 0
    assert not out.copy_to_host().any()
    with pytest.raises(ValueError, match="shapes do not match"):
        kc.gemm(a, b, kc.empty((6, 4), np.float64))


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_routes_to_cupy_when_present(kc, monkeypatch, trans_a, trans_b):
    """With CuPy present, gemm hands the products to its matmul (cuBLAS) on the arrays' own
    memory. Checked with a stand-in module whose asarray views the simulator's host buffer, as
    CuPy's views device memory: the result must land in `out`, transposes and accumulate
    included, and the tiled kernel must not run."""
    import types

    if not hasattr(kc.empty((1,), np.float64), "_ary"):
        pytest.skip("needs the simulator's arrays")
    calls = []

    def matmul(x, y, out=None):
        calls.append((x.shape, y.shape))
        return np.matmul(x, y, out=out)

    fake = types.SimpleNamespace(asarray=lambda arr: arr._ary, matmul=matmul)
    monkeypatch.setattr(kc, "_CUPY", [fake])
    monkeypatch.setattr(kc, "_gemm_kernel", None)  # any use of the tiled path fails
    rng = np.random.default_rng(11)
    a = rng.normal(size=(3, 4) if trans_a else (4, 3))
    b = rng.normal(size=(5, 3) if trans_b else (3, 5))
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    out = kc.empty((4, 5), np.float64)
    kc.gemm(kc.to_device(a), kc.to_device(b), out, trans_a=trans_a, trans_b=trans_b)
    close(out, want, np.float64)
    kc.gemm(
        kc.to_device(a), kc.to_device(b), out, accumulate=True, trans_a=trans_a, trans_b=trans_b
    )
    close(out, 2 * want, np.float64)
    assert calls == [((4, 3), (3, 5))] * 2


def test_no_cupy_under_the_simulator(kc, monkeypatch):
    monkeypatch.setattr(kc, "_CUPY", [])
    from sparselm.device import simulator_enabled

    if not simulator_enabled():
        pytest.skip("a real GPU: CuPy may legitimately be used")
    assert kc.cupy_module() is None


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


def test_cuda_without_gpu_is_a_config_error(tmp_path):
    """In a process without the simulator (and, here, without a GPU): a one-line ConfigError,
    `sparselm train --device cuda` a one-line error, auto falls back, and neither imports the
    CUDA kernel module."""
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
        from click.testing import CliRunner
        from sparselm.cli import main
        res = CliRunner().invoke(main, ["train", "--device", "cuda", "--out", sys.argv[1]])
        out = res.output.strip()
        print("CLI", res.exit_code, len(out.splitlines()), "Traceback" in out, out)
    """)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode == 0, res.stderr
    if "HAS-GPU" in res.stdout:
        pytest.skip("a real GPU is present")
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ERROR 0 --device cuda: "), res.stdout
    assert lines[1] == "AUTO cpu 1 False"
    assert lines[2].startswith("CLI 1 1 False error: --device cuda: "), res.stdout


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
    res = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    if "NO-NVVM" in res.stdout:
        pytest.skip(res.stdout.strip())
    assert "COMPILED" in res.stdout, res.stdout
