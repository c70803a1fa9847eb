"""CSR products (forward, transpose, SDDMM) against the references in tests/naive.py, once per
backend (the `kernel_backend` fixture: the CPU kernels of sparselm.kernels.cpu_csr, then the CUDA
kernels of sparselm.kernels.cuda on Numba's simulator or a real GPU).

Operands live on the backend, so the CSRMatrix tests also check that CSRMatrix dispatches on
where its operands are. Shapes come in pairs: the CPU's (and a real GPU's) exercise the CPU
kernels' SIMD chunks and row blocks; the simulator's are tiny (every GPU thread is a Python
thread) but still hold more outputs and entries than the 24 threads launched, so grid-stride
loops and boundary checks run. The last test is CPU-only and says so.
"""

import naive
import numpy as np
import pytest

from sparselm.csr import CSRMatrix
from sparselm.device import is_device_array
from sparselm.sparsity import csr_random

DTYPES = [np.float32, np.float64]
# float32 on a GPU runs with fast math (FMA contraction): a few ulp, hence 2e-5
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def pick(be, cpu, simulated):
    """The simulator's value on the simulator, the CPU's value elsewhere (CPU and real GPU)."""
    return simulated if be.simulated else cpu


def assert_close(got, ref, dtype):
    """Relative to the largest reference value: sums may cancel to near zero element-wise."""
    rtol = RTOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def references(w, x, dy):
    """The three products of the host CSRMatrix w in float64: {name: (operands, reference)}."""
    args = (w.data, w.indices, w.indptr, w.shape)
    return {
        "matmul": ((x,), naive.csr_matmul_ref(*args, x)),
        "matmul_t": ((dy,), naive.csr_matmul_t_ref(*args, dy)),
        "sddmm": ((dy, x), naive.csr_sddmm_ref(w.indices, w.indptr, w.shape, dy, x)),
    }


def fortran(be, a):
    """a as an F-contiguous array on the backend (the backend's `dev` makes C-contiguous ones)."""
    if be.name == "cpu":
        return np.array(a, order="F")  # a copy, even when a is F-contiguous already
    from numba import cuda

    return cuda.to_device(np.array(a, order="F"))


def check_products(be, w, m, rng, accumulate=None, values_on_backend=False, feature_major=False):
    """w's three CSRMatrix products with M = m random rows on the backend, against the references.

    accumulate None: no `out` given; False / True: a random `out` is given and must be
    overwritten / added to; feature_major: that `out` is F-contiguous for the two products
    (matmul, matmul_t) that take one. values_on_backend: w's values are moved to the backend
    first.
    """
    rows, cols = w.shape
    x = rng.standard_normal((m, cols)).astype(w.dtype)
    dy = rng.standard_normal((m, rows)).astype(w.dtype)
    matrix = w.with_data(be.dev(w.data)) if values_on_backend else w
    for name, (inputs, ref) in references(w, x, dy).items():
        args = [be.dev(a) for a in inputs]
        if accumulate is None:
            res = getattr(matrix, name)(*args)
        else:
            start = rng.standard_normal(ref.shape).astype(w.dtype)
            out = fortran(be, start) if feature_major and name != "sddmm" else be.dev(start)
            res = getattr(matrix, name)(*args, out=out, accumulate=accumulate)
            assert res is out, name
            ref = ref + start if accumulate else ref
        assert is_device_array(res) == (be.name == "cuda"), name  # ran on the operands' side
        got = be.host(res)
        assert got.shape == ref.shape and got.dtype == w.dtype, name
        assert_close(got, ref, w.dtype)


def from_dense(dense):
    """CSRMatrix holding exactly the non-zeros of a small dense array."""
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return CSRMatrix(dense[rows, cols].copy(), cols.astype(np.int32), indptr, dense.shape)


def no_entries(rows, cols, dtype):
    return CSRMatrix(
        np.zeros(0, dtype), np.zeros(0, np.int32), np.zeros(rows + 1, np.int32), (rows, cols)
    )


# name: ((R, C, density, M, mask) on the CPU, its tiny counterpart on the simulator). The CPU's
# hit chunk edges of the batch (64 float32 / 32 float64 columns) and row blocks of 64; the
# simulator's mostly hold more outputs or entries than the 24 threads launched.
SHAPES = {
    "small": ((40, 13, 0.3, 5, "uniform"), (9, 6, 0.6, 5, "uniform")),
    "one_batch_row": ((130, 70, 0.05, 1, "fanin"), (13, 7, 0.3, 1, "fanin")),
    "mostly_empty_rows": ((200, 50, 0.02, 33, "uniform"), (20, 8, 0.05, 3, "uniform")),
    "batch_past_chunk": ((260, 65, 0.1, 65, "fanin"), (6, 5, 0.4, 9, "fanin")),
    "uneven_rows": ((97, 31, 0.2, 130, "uniform"), (11, 7, 0.3, 4, "uniform")),
    "fully_dense": ((64, 16, 1.0, 17, "fanin"), (5, 4, 1.0, 6, "fanin")),
    "one_column": ((300, 1, 1.0, 3, "fanin"), (30, 1, 1.0, 2, "fanin")),
    "one_row": ((1, 300, 0.5, 7, "uniform"), (1, 30, 0.5, 3, "uniform")),
    "many_batch_chunks": ((400, 100, 0.05, 403, "uniform"), (7, 5, 0.4, 40, "uniform")),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SHAPES))
def test_products_match_reference(kernel_backend, dtype, case):
    rows, cols, density, m, mask = pick(kernel_backend, *SHAPES[case])
    rng = np.random.default_rng(rows * 1000 + cols)
    w = csr_random(rows, cols, density, rng, mask=mask, dtype=dtype, scale=1.0)
    check_products(kernel_backend, w, m, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_products_into_given_out(kernel_backend, dtype, accumulate):
    rng = np.random.default_rng(7)
    rows, cols, batches = pick(kernel_backend, (150, 40, (1, 20, 70, 300)), (9, 6, (1, 7)))
    w = csr_random(rows, cols, 0.2, rng, mask="uniform", dtype=dtype)
    for m in batches:
        check_products(kernel_backend, w, m, rng, accumulate=accumulate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_products_into_feature_major_out(kernel_backend, dtype, accumulate):
    """An F-contiguous out (the transpose of an (R, M) array) is written in place, on both sides
    of the SIMD width and past several row blocks; a 1-row batch is both C- and F-contiguous."""
    rng = np.random.default_rng(8)
    rows, cols, batches = pick(kernel_backend, (150, 40, (1, 15, 16, 20, 70, 300)), (9, 6, (1, 7)))
    for mask, density in (("uniform", 0.2), ("fanin", 0.01)):
        w = csr_random(rows, cols, density, rng, mask=mask, dtype=dtype)
        for m in batches:
            check_products(kernel_backend, w, m, rng, accumulate=accumulate, feature_major=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_with_values_on_backend(kernel_backend, dtype):
    """w.with_data(values on the backend), as training holds them; the pattern stays NumPy."""
    rng = np.random.default_rng(11)
    rows, cols, m = pick(kernel_backend, (90, 35, 12), (8, 6, 4))
    w = csr_random(rows, cols, 0.3, rng, mask="uniform", dtype=dtype, scale=1.0)
    check_products(kernel_backend, w, m, rng, values_on_backend=True)
    check_products(kernel_backend, w, m, rng, accumulate=True, values_on_backend=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_rows_and_columns(kernel_backend, dtype):
    rng = np.random.default_rng(3)
    rows, cols, m = pick(kernel_backend, (70, 30, 9), (9, 7, 4))
    dense = rng.standard_normal((rows, cols)).astype(dtype)
    dense[rng.random(dense.shape) < 0.5] = 0
    dense[[0, rows // 2, rows // 2 + 1, rows - 1]] = 0  # empty rows: first, adjacent, last
    dense[:, [0, cols // 2, cols - 1]] = 0  # empty columns: first, middle, last
    check_products(kernel_backend, from_dense(dense), m, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_entry(kernel_backend, dtype):
    rows, cols, m = pick(kernel_backend, (90, 45, 4), (9, 6, 2))
    dense = np.zeros((rows, cols), dtype)
    dense[rows - 3, 3] = 2.5
    check_products(kernel_backend, from_dense(dense), m, np.random.default_rng(4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 100])
def test_one_by_one(kernel_backend, dtype, m):
    w, rng = from_dense(np.full((1, 1), -1.5, dtype)), np.random.default_rng(5)
    check_products(kernel_backend, w, m, rng)
    check_products(kernel_backend, w, m, rng, accumulate=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_entries_zeroes_or_keeps_out(kernel_backend, dtype):
    be = kernel_backend
    w = no_entries(5, 4, dtype)
    x, dy = be.dev(np.ones((3, 4), dtype)), be.dev(np.ones((3, 5), dtype))
    for name, args, shape in [("matmul", (x,), (3, 5)), ("matmul_t", (dy,), (3, 4))]:
        out = be.dev(np.full(shape, np.nan, dtype))
        getattr(w, name)(*args, out=out)
        assert not be.host(out).any(), name  # overwritten with zeros
        kept = be.dev(np.full(shape, 2.0, dtype))
        getattr(w, name)(*args, out=kept, accumulate=True)
        assert (be.host(kept) == 2.0).all(), name
    assert be.host(w.sddmm(dy, x)).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_batch_rows(kernel_backend, dtype):
    be = kernel_backend
    w = csr_random(5, 4, 0.5, np.random.default_rng(2), "fanin", dtype)
    x, dy = be.dev(np.zeros((0, 4), dtype)), be.dev(np.zeros((0, 5), dtype))
    assert be.host(w.matmul(x)).shape == (0, 5)
    assert be.host(w.matmul_t(dy)).shape == (0, 4)
    grad = be.dev(np.full(w.nnz, 3.0, dtype))
    w.sddmm(dy, x, out=grad)
    assert not be.host(grad).any()  # an empty sum is zero
    kept = be.dev(np.full(w.nnz, 3.0, dtype))
    w.sddmm(dy, x, out=kept, accumulate=True)
    assert (be.host(kept) == 3.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_raw_kernels(kernel_backend, dtype, accumulate):
    """The raw-array kernels as CSRMatrix calls them, with every array on the backend: the CUDA
    module's launchers take the CPU kernels' arguments in the same order."""
    be = kernel_backend
    rng = np.random.default_rng(10)
    rows, cols, m = pick(be, (120, 33, 21), (9, 6, 5))
    w = csr_random(rows, cols, 0.3, rng, mask="uniform", dtype=dtype, scale=1.0)
    x = rng.standard_normal((m, cols)).astype(dtype)
    dy = rng.standard_normal((m, rows)).astype(dtype)
    refs = references(w, x, dy)
    starts = {name: rng.standard_normal(ref.shape).astype(dtype) for name, (_, ref) in refs.items()}
    outs = {name: be.dev(start) for name, start in starts.items()}
    data, indices, indptr, t_perm, t_indices, t_indptr = (
        be.dev(a) for a in (w.data, w.indices, w.indptr, w.t_perm, w.t_indices, w.t_indptr)
    )
    be.csr.csr_matmul(data, indices, indptr, be.dev(x), outs["matmul"], accumulate)
    be.csr.csr_matmul_t(data, t_perm, t_indices, t_indptr, be.dev(dy), outs["matmul_t"], accumulate)
    sums = be.dev(np.zeros(rows, dtype))
    be.csr.csr_sddmm(indices, indptr, be.dev(dy), be.dev(x), outs["sddmm"], accumulate, sums)
    assert_close(be.host(sums), dy.astype(np.float64).sum(axis=0), dtype)
    for name, (_, ref) in refs.items():
        assert_close(be.host(outs[name]), ref + starts[name] if accumulate else ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [0, 1, 21, 40])
def test_sddmm_column_sums(kernel_backend, dtype, m):
    """sddmm(..., col_sums=) also writes dy's column sums (the bias gradient), empty rows of W
    included, and pair= a second matrix's gradient from the same dy, without changing the
    product; the dense matrix honours the same arguments."""
    from sparselm.dense import DenseMatrix
    from sparselm.kernels import get_backend

    be = kernel_backend
    rng = np.random.default_rng(11 + m)
    rows, cols = pick(be, (70, 33), (9, 6))
    m = min(m, pick(be, m, 5))
    w = csr_random(rows, cols, 0.05, rng, mask="uniform", dtype=dtype, scale=1.0)
    assert (np.diff(w.indptr) == 0).any()  # some rows have no entries
    x = rng.standard_normal((m, cols)).astype(dtype)
    dy = rng.standard_normal((m, rows)).astype(dtype)
    sums = be.dev(np.full(rows, np.nan, dtype))
    w2 = csr_random(rows, cols + 3, 0.1, rng, mask="fanin", dtype=dtype, scale=1.0)
    x2 = rng.standard_normal((m, cols + 3)).astype(dtype)
    start2 = rng.standard_normal(w2.nnz).astype(dtype)
    out2 = be.dev(start2)
    grad = w.sddmm(be.dev(dy), be.dev(x), col_sums=sums, pair=(w2, be.dev(x2), out2))
    assert_close(be.host(sums), dy.astype(np.float64).sum(axis=0), dtype)
    assert_close(be.host(grad), references(w, x, dy)["sddmm"][1], dtype)
    assert_close(be.host(out2), references(w2, x2, dy)["sddmm"][1], dtype)  # overwritten
    w.sddmm(be.dev(dy), be.dev(x), out=grad, accumulate=True, pair=(w2, be.dev(x2), out2))
    assert_close(be.host(out2), 2 * references(w2, x2, dy)["sddmm"][1], dtype)
    dense_sums = be.dev(np.full(rows, np.nan, dtype))
    dense2 = be.dev(np.zeros((rows, cols + 3), dtype))
    dense_of = lambda a: DenseMatrix(be.dev(a.to_dense()), get_backend(be.name))  # noqa: E731
    dense_of(w).sddmm(
        be.dev(dy), be.dev(x), col_sums=dense_sums, pair=(dense_of(w2), be.dev(x2), dense2)
    )
    assert_close(be.host(dense_sums), dy.astype(np.float64).sum(axis=0), dtype)
    assert_close(be.host(dense2), dy.astype(np.float64).T @ x2, dtype)
    with pytest.raises(ValueError, match="col_sums"):
        w.sddmm(be.dev(dy), be.dev(x), col_sums=be.dev(np.zeros(rows + 1, dtype)))


def test_rejects_bad_operands(kernel_backend):
    """CSRMatrix checks operands on the backend as it checks NumPy ones, before any kernel runs."""
    be = kernel_backend
    rng = np.random.default_rng(9)
    w = csr_random(10, 6, 0.3, rng, dtype=np.float32)
    x, wide, dy = (rng.standard_normal(s).astype(np.float32) for s in [(4, 6), (4, 12), (4, 10)])
    d = be.dev

    def strided(a):  # a's values in a non-contiguous view on the backend (a device .T copies)
        return d(np.repeat(a, 2, axis=1))[:, ::2]

    bad = {
        "C-contiguous": [
            lambda: w.matmul(strided(x)),
            lambda: w.sddmm(d(dy), strided(x)),
            lambda: w.matmul_t(strided(dy)),
            lambda: w.matmul(d(x), out=strided(np.empty((4, 10), np.float32))),
        ],
        "dtype": [
            lambda: w.matmul(d(x.astype(np.float64))),
            lambda: w.sddmm(d(dy), d(x), out=be.empty(w.nnz, np.float64)),
        ],
        "shape|rows|2-D": [
            lambda: w.matmul(d(wide)),
            lambda: w.matmul_t(d(dy[:, :9].copy())),
            lambda: w.matmul(d(x), out=be.empty((4, 9), np.float32)),
            lambda: w.sddmm(d(dy[:3].copy()), d(x)),
            lambda: w.matmul(d(np.ones(6, np.float32))),
        ],
    }
    for pattern, calls in bad.items():
        for call in calls:
            with pytest.raises(ValueError, match=pattern):
                call()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_rows", [False, True], ids=["batch_major", "feature_major"])
def test_cpu_scatter_transpose_product(dtype, out_rows):
    """CPU only: the scatter form of dy @ W (kernels.cpu_csr._spmm_t_scatter, taken for large
    W and small batches), on shapes that the size rule alone would never send there: empty
    rows and columns, a row count that is not a multiple of the parts, batches below, at and
    above one register, overwrite and accumulate."""
    from sparselm.kernels import cpu_csr

    rng = np.random.default_rng(12)
    for rows, cols, density, m in (
        (70, 37, 0.2, 20),
        (9, 50, 0.3, 1),
        (130, 16, 0.5, 16),
        (33, 41, 0.1, 40),
        (5, 3, 0.0, 3),
    ):
        dense = rng.standard_normal((rows, cols)).astype(dtype)
        dense[rng.random(dense.shape) >= density] = 0
        w = from_dense(dense)
        dy = rng.standard_normal((m, rows)).astype(dtype)
        ref = dy.astype(np.float64) @ dense.astype(np.float64)
        for accumulate in (False, True):
            start = rng.standard_normal((m, cols)).astype(dtype)
            out = np.array(start.T) if out_rows else start.copy()
            cpu_csr._spmm_t_scatter(w.data, w.indices, w.indptr, dy, out, accumulate, out_rows)
            got = out.T if out_rows else out
            assert_close(got, ref + start if accumulate else ref, dtype)


def test_cpu_large_transpose_product_takes_the_scatter_form():
    """CPU only: through CSRMatrix.matmul_t, a W large enough for the scatter form (N >= 2^21
    entries, a batch of one register) gives the reference result in both output layouts."""
    from sparselm.kernels import cpu_csr

    rng = np.random.default_rng(13)
    w = csr_random(3000, 1400, 0.5, rng, mask="fanin", dtype=np.float32, scale=1.0)
    assert cpu_csr._scatter_pays(w.nnz, 5, w.shape[1], 16)
    dy = rng.standard_normal((5, 3000)).astype(np.float32)
    ref = dy.astype(np.float64) @ w.to_dense().astype(np.float64)
    assert_close(w.matmul_t(dy), ref, np.float32)
    assert_close(w.matmul_t(dy, out=np.empty((1400, 5), np.float32).T), ref, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_transpose_cols_pads_every_batch_edge(dtype):
    """CPU only: kernels.cpu_csr.transpose_cols, which every CPU product reads its operand
    through, for batches of 1-35 rows (whole registers, and edges of 1-4, 5-8 and 9-15 rows,
    each with its own register transpose) and column ranges that start mid-array or end
    short of a register: the values transposed, lanes past M zero, rows outside the range
    untouched."""
    from sparselm.kernels import cpu_csr

    rng = np.random.default_rng(14)
    lanes = 64 // np.dtype(dtype).itemsize
    for m in range(0, 36):
        a = rng.standard_normal((m, 45)).astype(dtype)
        mp = -(-m // lanes) * lanes
        for s0, s1 in ((0, 45), (3, 40), (7, 9)):
            at = np.full((s1 - s0 + 2, mp), np.nan, dtype)
            cpu_csr.transpose_cols(a, at, s0, s1, s0)
            want = np.zeros((s1 - s0, mp), dtype)
            want[:, :m] = a[:, s0:s1].T
            np.testing.assert_array_equal(at[: s1 - s0], want, err_msg=f"m={m} cols {s0}:{s1}")
            assert np.isnan(at[s1 - s0 :]).all(), f"m={m}: wrote past the range"


def check_paired_sddmm(w, w2, x, x2, dy):
    """w.sddmm with column sums and w2 paired (x2 its operand), overwriting NaN-filled outputs
    then accumulating, against the float64 references."""
    dtype = w.dtype
    ref, ref2 = (
        naive.csr_sddmm_ref(a.indices, a.indptr, a.shape, dy, b) for a, b in ((w, x), (w2, x2))
    )
    sums = np.full(w.shape[0], np.nan, dtype)
    out2 = np.full(w2.nnz, np.nan, dtype)
    grad = w.sddmm(dy, x, col_sums=sums, pair=(w2, x2, out2))
    assert_close(grad, ref, dtype)
    assert_close(out2, ref2, dtype)
    assert_close(sums, dy.astype(np.float64).sum(axis=0), dtype)
    w.sddmm(dy, x, out=grad, accumulate=True, pair=(w2, x2, out2))
    assert_close(grad, 2 * ref, dtype)
    assert_close(out2, 2 * ref2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["serial", "own x^T", "shared x^T"])
def test_cpu_products_every_form(dtype, form):
    """CPU only: matmul and matmul_t in each way _spmm runs a call (on the calling thread; one
    task per thread, each transposing the operand itself; many tasks over one shared copy),
    on shapes asserted to take it, both output layouts, overwrite and accumulate."""
    from conftest import KernelBackend

    from sparselm.kernels import cpu_csr

    cpu = KernelBackend("cpu", None, cpu_csr, None, np.array, np.empty, np.asarray)
    rows, cols, density, m = {
        "serial": (40, 30, 0.3, 5),
        "own x^T": (800, 300, 0.2, 20),
        "shared x^T": (400, 300, 0.2, 450),
    }[form]
    rng = np.random.default_rng(17)
    w = csr_random(rows, cols, density, rng, mask="uniform", dtype=dtype)
    for operand, _width in ((np.empty((m, cols), dtype), rows), (np.empty((m, rows), dtype), cols)):
        small = cpu_csr._small(w.nnz, m, rows, cols)
        assert (small, cpu_csr._own_xt_pays(w.nnz * m, operand)) == {
            "serial": (True, True),
            "own x^T": (False, True),
            "shared x^T": (False, False),
        }[form]
    for accumulate in (None, False, True):
        for feature_major in (False, True):
            check_products(cpu, w, m, rng, accumulate, feature_major=feature_major)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["serial", "own x^T", "shared x^T"])
def test_cpu_sddmm_every_form(dtype, form):
    """CPU only: each way csr_sddmm runs a call (on the calling thread; one task per thread,
    each transposing x itself; many tasks over one x^T), on a shape asserted to take it, with
    column sums, a paired second matrix (narrower x2), empty rows, overwrite and accumulate."""
    from sparselm.kernels import cpu_csr

    rows, cols, density, m = {
        "serial": (40, 30, 0.3, 5),
        "own x^T": (800, 300, 0.1, 20),
        "shared x^T": (200, 300, 0.1, 450),
    }[form]
    rng = np.random.default_rng(16)
    dense = rng.standard_normal((rows, cols)).astype(dtype)
    dense[rng.random(dense.shape) >= density] = 0
    dense[[0, rows // 2, rows - 1]] = 0
    w, w2 = from_dense(dense), from_dense(dense[:, :20].copy())
    x, x2 = (rng.standard_normal((m, c)).astype(dtype) for c in (cols, 20))
    dy = rng.standard_normal((m, rows)).astype(dtype)
    expected = ("serial", "own x^T", "shared x^T").index(form)
    assert cpu_csr._sddmm_form(w.nnz + w2.nnz, m, rows, x) == expected
    check_paired_sddmm(w, w2, x, x2, dy)
    assert_close(
        w.sddmm(dy, x), naive.csr_sddmm_ref(w.indices, w.indptr, w.shape, dy, x), dtype
    )  # alone, no pair, no sums


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_sddmm_in_column_slices(dtype):
    """CPU only: the SDDMM's sliced form (x^T larger than L2 read _TILE_COLS columns at a
    time by blocks of _TILE_ROWS rows of W), on a shape that takes it: rows not a multiple
    of the block, columns not a multiple of the slice, empty rows, column sums, a paired
    second matrix, overwrite and accumulate."""
    from sparselm.kernels import cpu_csr

    rng = np.random.default_rng(15)
    rows, cols, m = 150, 300, 450
    dense = rng.standard_normal((rows, cols)).astype(dtype)
    dense[rng.random(dense.shape) >= 0.1] = 0
    dense[[0, 70, 149]] = 0  # empty rows, one at each end
    w, w2 = from_dense(dense), from_dense(dense[:, :100].copy())
    x, x2 = (rng.standard_normal((m, c)).astype(dtype) for c in (cols, 100))
    dy = rng.standard_normal((m, rows)).astype(dtype)
    xt = cpu_csr._transposed(x)
    assert cpu_csr._tiles_pay(xt, w.indptr) and not cpu_csr._tiles_pay(
        cpu_csr._transposed(x2), w2.indptr
    )
    assert rows % cpu_csr._TILE_ROWS and cols % cpu_csr._TILE_COLS
    check_paired_sddmm(w, w2, x, x2, dy)
