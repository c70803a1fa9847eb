"""CSRMatrix and pattern validation (sparselm.csr)."""

import numpy as np
import pytest

from sparselm.csr import CSRMatrix, validate_csr_pattern
from sparselm.sparsity import csr_random, fanin_mask

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
