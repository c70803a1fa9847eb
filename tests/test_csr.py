"""CSRMatrix, pattern validation, mask builders and initial values (sparselm.csr)."""

import math
import time

import numpy as np
import pytest

from sparselm.csr import (
    CSRMatrix,
    build_mask,
    csr_random,
    fanin_mask,
    init_values,
    uniform_mask,
    validate_csr_pattern,
)


def assert_sorted_unique_rows(indices, indptr, cols):
    validate_csr_pattern(indices, indptr, (indptr.size - 1, cols))
    assert indices.dtype == np.int32 and indptr.dtype == np.int32


# --- masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows,cols,density,k",
    [
        (50, 1500, 0.0005, 1),  # floor(0.75) = 0 -> at least one input
        (40, 2500, 0.01, 25),  # 0.01 * 2500 must not round down to 24
        (30, 100, 0.29, 29),  # 0.29 * 100 = 28.999999999999996 in floating point
        (20, 650, 0.1, 65),
        (10, 7, 1.0, 7),
    ],
)
def test_fanin_exact_counts(rows, cols, density, k):
    indices, indptr = fanin_mask(rows, cols, density, np.random.default_rng(0))
    assert np.all(np.diff(indptr) == k)  # every row the same fan-in, none empty
    assert_sorted_unique_rows(indices, indptr, cols)


def test_fanin_dense_is_every_column():
    indices, indptr = fanin_mask(3, 5, 1.0, np.random.default_rng(0))
    assert indices.tolist() == list(range(5)) * 3


def test_fanin_columns_are_uniform():
    indices, _ = fanin_mask(3000, 10, 0.3, np.random.default_rng(1))
    counts = np.bincount(indices, minlength=10)  # each column chosen with probability 0.3
    assert np.all(np.abs(counts - 900) < 5 * math.sqrt(3000 * 0.3 * 0.7))


@pytest.mark.parametrize(
    "rows,cols,density",
    [(200, 300, 0.01), (50, 40, 0.5), (7, 9, 1.0), (1000, 1000, 1e-7), (30, 20, 0.999)],
)
def test_uniform_exact_count(rows, cols, density):
    indices, indptr = uniform_mask(rows, cols, density, np.random.default_rng(2))
    assert indptr[-1] == max(1, round(density * rows * cols))
    assert_sorted_unique_rows(indices, indptr, cols)


def test_uniform_spreads_over_rows_and_columns():
    indices, indptr = uniform_mask(100, 100, 0.2, np.random.default_rng(3))
    per_row = np.diff(indptr)
    assert per_row.std() > 0  # not a fan-in mask
    assert abs(per_row.mean() - 20) < 1e-9
    assert np.bincount(indices, minlength=100).min() > 0


@pytest.mark.parametrize("kind", ["fanin", "uniform"])
def test_masks_are_seeded(kind):
    a = build_mask(kind, 60, 80, 0.05, np.random.default_rng(11))
    b = build_mask(kind, 60, 80, 0.05, np.random.default_rng(11))
    c = build_mask(kind, 60, 80, 0.05, np.random.default_rng(12))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_out_of_range(density):
    for kind in ("fanin", "uniform"):
        with pytest.raises(ValueError, match="density"):
            build_mask(kind, 10, 10, density, np.random.default_rng(0))


def test_unknown_mask_kind():
    with pytest.raises(ValueError, match="mask kind"):
        build_mask("random", 10, 10, 0.5, np.random.default_rng(0))


def test_fanin_large_is_fast():
    t0 = time.perf_counter()
    indices, indptr = fanin_mask(10000, 2500, 0.01, np.random.default_rng(0))
    assert indptr[-1] == 250000
    assert time.perf_counter() - t0 < 10  # about 0.3 s on one core; generous for noisy CI


# --- initial values ------------------------------------------------------------------------


def test_init_values():
    rng = np.random.default_rng(5)
    v = init_values(10000, 40, 60, "uniform", 0.05, rng, np.float32)
    assert v.dtype == np.float32 and v.shape == (10000,)
    assert np.abs(v).max() <= 0.05 and np.abs(v).max() > 0.049
    g = init_values(10000, 40, 60, "glorot", 123.0, rng, np.float64)
    bound = math.sqrt(6 / 100)
    assert np.abs(g).max() <= bound and np.abs(g).max() > 0.99 * bound
    with pytest.raises(ValueError, match="init scheme"):
        init_values(3, 2, 2, "normal", 0.1, rng, np.float32)


# --- validation ----------------------------------------------------------------------------

GOOD = [
    ([1, 3, 0, 2], [0, 2, 2, 4], (3, 4)),  # an empty row in the middle
    ([], [0, 0, 0], (2, 5)),  # no entries at all
    ([], [0], (0, 3)),  # no rows
    ([0], [0, 0, 1], (2, 1)),  # leading empty row
    (np.array([2, 0], np.int64), np.array([0, 1, 2], np.uint8), (2, 3)),  # other int dtypes
]

BAD = {
    "length": ([0, 1], [0, 2], (2, 3)),
    "start at 0": ([0, 1], [1, 2, 2], (2, 3)),
    "decreases": ([0, 1, 2], [0, 2, 1, 3], (3, 3)),
    "ends at": ([0, 1, 2], [0, 1, 2], (2, 3)),
    "out of range": ([0, 3], [0, 1, 2], (2, 3)),
    "out of range ": ([-1, 0], [0, 1, 2], (2, 3)),
    "duplicate": ([0, 1, 1], [0, 3, 3], (2, 3)),
    "unsorted": ([2, 0], [0, 2, 2], (2, 3)),
    "integer": ([0.0, 1.0], [0, 1, 2], (2, 3)),
    "integer ": ([0, 1], [0.0, 1.0, 2.0], (2, 3)),
    "1-D": ([[0, 1]], [0, 1, 2], (2, 3)),
    "shape": ([0], [0, 1], (1,)),
    "non-negative": ([0], [0, 1], (1, -2)),
}


@pytest.mark.parametrize("indices,indptr,shape", GOOD)
def test_validate_accepts(indices, indptr, shape):
    validate_csr_pattern(
        np.asarray(indices, dtype=getattr(indices, "dtype", np.int32)), np.asarray(indptr), shape
    )


@pytest.mark.parametrize("problem", list(BAD))
def test_validate_rejects(problem):
    indices, indptr, shape = BAD[problem]
    with pytest.raises(ValueError, match=problem.strip()):
        validate_csr_pattern(np.asarray(indices), np.asarray(indptr), shape)


def test_validate_sorted_across_row_boundary():
    # 2 then 0 across a row boundary is fine; within a row it is not
    validate_csr_pattern(np.array([1, 2, 0]), np.array([0, 2, 3]), (2, 3))
    with pytest.raises(ValueError, match="row 1"):
        validate_csr_pattern(np.array([1, 2, 0]), np.array([0, 1, 3]), (2, 3))


def test_validate_huge_shape_costs_nothing():
    validate_csr_pattern(np.array([5, 10**9 - 1], np.int64), np.array([0, 0, 2]), (2, 10**9))


# --- CSRMatrix -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["fanin", "uniform"])
def test_transpose_pattern(mask):
    w = csr_random(37, 23, 0.15, np.random.default_rng(6), mask=mask)
    t = CSRMatrix(w.data[w.t_perm], w.t_indices, w.t_indptr, (23, 37))
    np.testing.assert_array_equal(t.to_dense(), w.to_dense().T)
    assert sorted(w.t_perm.tolist()) == list(range(w.nnz))
    for arr in (w.t_indptr, w.t_indices, w.t_perm):
        assert arr.dtype == np.int32


def test_dense_scipy_and_properties():
    w = csr_random(12, 9, 0.3, np.random.default_rng(7), mask="uniform", dtype=np.float32)
    assert w.nnz == w.indices.size and w.dtype == np.float32 and w.shape == (12, 9)
    np.testing.assert_array_equal(w.to_scipy().toarray(), w.to_dense())
    assert np.count_nonzero(w.to_dense()) == w.nnz
    assert "nnz" in repr(w)


def test_with_data_shares_pattern():
    w = csr_random(20, 10, 0.2, np.random.default_rng(8))
    v = w.with_data(np.ones(w.nnz))
    for name in ("indices", "indptr", "t_indptr", "t_indices", "t_perm"):
        assert getattr(v, name) is getattr(w, name)
    np.testing.assert_array_equal(v.to_dense() != 0, w.to_dense() != 0)
    with pytest.raises(ValueError, match="shape"):
        w.with_data(np.ones(w.nnz + 1))


def test_data_view_into_flat_buffer_stays_a_view():
    rng = np.random.default_rng(9)
    indices, indptr = fanin_mask(30, 20, 0.2, rng)
    flat = np.zeros(5 + indices.size + 7, np.float32)
    view = flat[5 : 5 + indices.size]
    w = CSRMatrix(view, indices, indptr, (30, 20))
    assert w.data is view and np.shares_memory(w.data, flat)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    assert not w.matmul(x).any()
    flat[5 : 5 + indices.size] = 1.0  # the optimizer's in-place update
    w.with_data(w.data).data[0] = 2.0
    assert flat[5] == 2.0
    np.testing.assert_allclose(w.matmul(x), x @ w.to_dense().T, rtol=1e-6)


def test_constructor_rejects_bad_data():
    indices, indptr = fanin_mask(4, 6, 0.5, np.random.default_rng(0))
    for data, word in [
        (np.zeros(indices.size + 1), "shape"),
        (np.zeros(indices.size, np.int32), "float32 or float64"),
        (np.zeros(2 * indices.size)[::2], "C-contiguous"),
        ([0.0] * indices.size, "array"),
    ]:
        with pytest.raises(ValueError, match=word):
            CSRMatrix(data, indices, indptr, (4, 6))
    with pytest.raises(ValueError, match="unsorted"):
        CSRMatrix(np.zeros(2), [1, 0], [0, 2, 2, 2, 2], (4, 6))
