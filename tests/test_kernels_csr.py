"""CSR products (forward, transpose, SDDMM) against the references in tests/naive.py.

Every test runs once per backend in BACKENDS. A CUDA backend is added by appending "cuda" and
teaching `to_backend` / `to_host` to move arrays (numba.cuda.to_device / copy_to_host).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparselm.csr import CSRMatrix, csr_random
import naive

BACKENDS = ["cpu"]
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def to_backend(a, backend):
    """A host array as the backend holds it."""
    if backend == "cpu":
        return a
    raise NotImplementedError(backend)


def to_host(a, backend):
    """A backend array as a NumPy array."""
    if backend == "cpu":
        return np.asarray(a)
    raise NotImplementedError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def assert_close(got, ref, dtype):
    """Relative to the largest reference value: sums may cancel to near zero element-wise."""
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=RTOL[np.dtype(dtype).type],
                               atol=RTOL[np.dtype(dtype).type] * scale)


def check_all(w, m, backend, rng, accumulate=False):
    """Run the three products of w with M = m rows and compare with the references."""
    rows, cols = w.shape
    x = rng.standard_normal((m, cols)).astype(w.dtype)
    dy = rng.standard_normal((m, rows)).astype(w.dtype)
    args = (w.data, w.indices, w.indptr, w.shape)
    cases = [
        ("matmul", (x,), (m, rows), naive.csr_matmul_ref(*args, x)),
        ("matmul_t", (dy,), (m, cols), naive.csr_matmul_t_ref(*args, dy)),
        ("sddmm", (dy, x), (w.nnz,), naive.csr_sddmm_ref(w.indices, w.indptr, w.shape, dy, x)),
    ]
    for name, inputs, out_shape, ref in cases:
        dev_inputs = [to_backend(a, backend) for a in inputs]
        if accumulate:
            start = rng.standard_normal(out_shape).astype(w.dtype)
            out = to_backend(start.copy(), backend)
            res = getattr(w, name)(*dev_inputs, out=out, accumulate=True)
            assert res is out
            ref = ref + start
        else:
            res = getattr(w, name)(*dev_inputs)
        got = to_host(res, backend)
        assert got.shape == out_shape and got.dtype == w.dtype, name
        assert_close(got, ref, w.dtype)


def from_dense(dense):
    """CSRMatrix holding exactly the non-zeros of a small dense array."""
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return CSRMatrix(dense[rows, cols].copy(), cols.astype(np.int32), indptr, dense.shape)


# (R, C, density, M, mask): chunk edges of the batch (MW = 64 f32 / 32 f64 columns), row
# blocks of 64, uneven row lengths, empty rows and columns, M = 1, dense.
SHAPES = [
    (40, 13, 0.3, 5, "uniform"),
    (130, 70, 0.05, 1, "fanin"),
    (200, 50, 0.02, 33, "uniform"),
    (260, 65, 0.1, 65, "fanin"),
    (97, 31, 0.2, 130, "uniform"),
    (64, 16, 1.0, 17, "fanin"),
    (300, 1, 1.0, 3, "fanin"),
    (1, 300, 0.5, 7, "uniform"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_shapes(backend, dtype, shape):
    rows, cols, density, m, mask = shape
    rng = np.random.default_rng(rows * 1000 + cols)
    w = csr_random(rows, cols, density, rng, mask=mask, dtype=dtype, scale=1.0)
    check_all(w, m, backend, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate(backend, dtype):
    rng = np.random.default_rng(7)
    w = csr_random(150, 40, 0.1, rng, mask="uniform", dtype=dtype)
    for m in (1, 20, 70, 300):
        check_all(w, m, backend, rng, accumulate=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_rows_and_columns(backend, dtype):
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((70, 30)).astype(dtype)
    dense[rng.random(dense.shape) < 0.8] = 0
    dense[[0, 5, 6, 69]] = 0  # empty rows, first and last included
    dense[:, [0, 11, 29]] = 0  # empty columns
    check_all(from_dense(dense), 9, backend, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_entry_and_1x1(backend, dtype):
    rng = np.random.default_rng(4)
    dense = np.zeros((90, 45), dtype)
    dense[77, 3] = 2.5
    check_all(from_dense(dense), 4, backend, rng)
    check_all(from_dense(np.full((1, 1), -1.5, dtype)), 1, backend, rng)
    check_all(from_dense(np.full((1, 1), 0.5, dtype)), 100, backend, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_entries_overwrites_out(backend, dtype):
    w = CSRMatrix(np.zeros(0, dtype), np.zeros(0, np.int32), np.zeros(6, np.int32), (5, 4))
    out = np.full((3, 5), np.nan, dtype)
    w.matmul(np.ones((3, 4), dtype), out=out)
    assert not out.any()
    out_t = np.full((3, 4), np.nan, dtype)
    w.matmul_t(np.ones((3, 5), dtype), out=out_t)
    assert not out_t.any()
    assert w.sddmm(np.ones((3, 5), dtype), np.ones((3, 4), dtype)).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_batch_rows(backend, dtype):
    rng = np.random.default_rng(5)
    w = csr_random(20, 10, 0.3, rng, dtype=dtype)
    assert w.matmul(np.zeros((0, 10), dtype)).shape == (0, 20)
    grad = np.full(w.nnz, 3.0, dtype)
    w.sddmm(np.zeros((0, 20), dtype), np.zeros((0, 10), dtype), out=grad)
    assert not grad.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_batch_many_chunks(backend, dtype):
    rng = np.random.default_rng(8)
    w = csr_random(400, 100, 0.05, rng, mask="uniform", dtype=dtype)
    check_all(w, 403, backend, rng)


def test_rejects_bad_operands(backend):
    rng = np.random.default_rng(9)
    w = csr_random(30, 12, 0.2, rng, dtype=np.float32)
    x = rng.standard_normal((8, 12)).astype(np.float32)
    wide = rng.standard_normal((8, 24)).astype(np.float32)
    dy = rng.standard_normal((8, 30)).astype(np.float32)
    bad = {
        "C-contiguous": [lambda: w.matmul(wide[:, ::2]), lambda: w.matmul_t(np.asfortranarray(dy)),
                         lambda: w.sddmm(dy, wide[:, ::2]),
                         lambda: w.matmul(x, out=np.empty((30, 8), np.float32).T)],
        "dtype": [lambda: w.matmul(x.astype(np.float64)),
                  lambda: w.sddmm(dy, x, out=np.empty(w.nnz, np.float64))],
        "shape|rows|2-D": [lambda: w.matmul(wide), lambda: w.matmul_t(dy[:, :29].copy()),
                           lambda: w.matmul(x, out=np.empty((8, 29), np.float32)),
                           lambda: w.sddmm(dy[:7].copy(), x),
                           lambda: w.matmul(np.ones(12, np.float32))],
    }
    for pattern, calls in bad.items():
        for call in calls:
            with pytest.raises(ValueError, match=pattern):
                call()


def test_kernels_directly():
    """The raw-array kernels, as the CUDA module must mirror them."""
    from sparselm.kernels import cpu_csr

    rng = np.random.default_rng(10)
    w = csr_random(120, 33, 0.1, rng, mask="uniform", dtype=np.float64)
    x = rng.standard_normal((21, 33))
    dy = rng.standard_normal((21, 120))
    out = np.empty((21, 120))
    cpu_csr.csr_matmul(w.data, w.indices, w.indptr, x, out, False)
    assert_close(out, naive.csr_matmul_ref(w.data, w.indices, w.indptr, w.shape, x), np.float64)
    out_t = np.ones((21, 33))
    cpu_csr.csr_matmul_t(w.data, w.t_perm, w.t_indices, w.t_indptr, dy, out_t, True)
    ref_t = 1.0 + naive.csr_matmul_t_ref(w.data, w.indices, w.indptr, w.shape, dy)
    assert_close(out_t, ref_t, np.float64)
    grad = np.empty(w.nnz)
    cpu_csr.csr_sddmm(w.indices, w.indptr, dy, x, grad, False)
    assert_close(grad, naive.csr_sddmm_ref(w.indices, w.indptr, w.shape, dy, x), np.float64)


def test_bench_quick_smoke():
    """scripts/bench_kernels.py --quick runs end to end (a few seconds once kernels are cached)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_kernels.py"
    res = subprocess.run([sys.executable, str(script), "--quick", "--reps", "1", "--target-ms",
                          "0.2", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "csr_kernels" and summary["points"] == 2
    assert set(summary["worst_point_per_op"]) == {"matmul", "matmul_t", "sddmm"}
