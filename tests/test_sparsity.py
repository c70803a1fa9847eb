"""The study's sparsity rule (sparselm.sparsity): the masks, the initial values, and the same
seed drawing the same patterns and initial values.

The checksums below were computed with the code as it stood before the pattern rule moved into
sparselm/sparsity.py (commit 3ffd0c0: masks drawn in csr.py, split in model.py); a change of the
random streams (the order of draws, a different split) changes them, and with them every seeded
run's results.
"""

import hashlib
import math
import time

import numpy as np
import pytest

from sparselm.config import make_config
from sparselm.csr import validate_csr_pattern
from sparselm.model import LanguageModel
from sparselm.sparsity import MASKS, build_mask, cover_mask, fanin_mask, init_values, uniform_mask

# (config overrides, first 16 hex digits of the sha256 of patterns, names, shapes and values)
PINNED = [
    (dict(sparsity=0.3, mask="fanin", init="uniform", dtype="float64"), "1b5bf1e89849a523"),
    (
        dict(sparsity=0.2, mask="uniform", init="glorot", dtype="float32", layers=3),
        "54625b3e97787501",
    ),
    (dict(sparsity=1.0, dtype="float64"), "aac5020e830cfba0"),
    (
        dict(
            sparsity=0.25,
            mask="fanin",
            init="glorot",
            dtype="float32",
            output="factorized",
            hidden=9,
        ),
        "0c92cef8956c4c2e",
    ),
]


def model_digest(model: LanguageModel) -> str:
    """sha256 (16 hex digits) of every CSR pattern, every parameter's name and shape, and the
    flat parameter buffer."""
    h = hashlib.sha256()
    for name, p in model.patterns.items():
        h.update(name.encode())
        h.update(np.asarray(p.indices, np.int32).tobytes())
        h.update(np.asarray(p.indptr, np.int32).tobytes())
    for name, a in model.params.items():
        h.update(name.encode())
        h.update(str(a.shape).encode())
    h.update(model.params.flat.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("overrides,digest", PINNED)
def test_seeded_patterns_and_values_unchanged(overrides, digest):
    cfg = make_config("small", **(dict(emb=5, hidden=6, layers=2, seed=7) | overrides))
    assert model_digest(LanguageModel(cfg, 11)) == digest


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


# ---------------------------------------------------------------------------------------------
# covering masks: no gate row without inputs, no input column feeding nothing


def empty_rows_and_unused_columns(indices, indptr, cols):
    return int((np.diff(indptr) == 0).sum()), cols - len(np.unique(indices))


@pytest.mark.parametrize(
    "rows, cols, density",
    [(6000, 1700, 0.0005), (800, 400, 0.003), (100, 100, 0.01), (300, 40, 0.2)],
)
def test_fanin_cover_uses_every_column_and_keeps_k_per_row(rows, cols, density):
    raw = build_mask("fanin", rows, cols, density, np.random.default_rng(1))
    indices, indptr = build_mask("fanin-cover", rows, cols, density, np.random.default_rng(1))
    validate_csr_pattern(indices, indptr, (rows, cols))
    assert empty_rows_and_unused_columns(indices, indptr, cols) == (0, 0)
    assert np.array_equal(indptr, raw[1])  # the study's k inputs per row, unchanged
    # the repair moves only what it must: one entry per column the raw draw left unused
    unused = empty_rows_and_unused_columns(*raw, cols)[1]
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    pairs, raw_pairs = row_of * cols + indices, row_of * cols + raw[0]
    assert len(np.setdiff1d(pairs, raw_pairs)) == unused
    if density == 0.0005:
        assert unused > 0  # the study's headline shape leaves inputs unused without the repair


def test_uniform_cover_fills_rows_when_there_are_enough_entries():
    rows, cols = 500, 60
    raw = build_mask("uniform", rows, cols, 0.02, np.random.default_rng(2))  # 600 entries
    assert empty_rows_and_unused_columns(*raw, cols)[0] > 0
    indices, indptr = build_mask("uniform-cover", rows, cols, 0.02, np.random.default_rng(2))
    validate_csr_pattern(indices, indptr, (rows, cols))
    assert len(indices) == len(raw[0])
    assert empty_rows_and_unused_columns(indices, indptr, cols) == (0, 0)


def test_cover_leaves_too_few_entries_as_they_are_covered_as_far_as_possible():
    """5 entries cannot cover 8 rows: the columns still get covered when 5 >= C."""
    indices, indptr = build_mask("uniform-cover", 8, 4, 5 / 32, np.random.default_rng(3))
    assert len(indices) == 5 and empty_rows_and_unused_columns(indices, indptr, 4)[1] == 0


def test_cover_of_a_covered_mask_is_the_same_mask_and_draws_nothing():
    rng = np.random.default_rng(4)
    indices, indptr = build_mask("fanin", 50, 10, 0.5, rng)
    state = rng.bit_generator.state
    again = cover_mask(indices, indptr, 10, rng)
    assert np.array_equal(again[0], indices) and np.array_equal(again[1], indptr)
    assert rng.bit_generator.state == state


def test_config_offers_exactly_the_masks():
    import dataclasses

    from sparselm.config import TrainConfig

    (field,) = [f for f in dataclasses.fields(TrainConfig) if f.name == "mask"]
    assert sorted(field.metadata["choices"]) == sorted(MASKS)
    assert make_config("small", sparsity=0.01).mask == "fanin-cover"
    study = make_config("study", sparsity=0.001)
    assert (study.mask, study.init) == ("fanin", "uniform")  # the study's own rule


# ---------------------------------------------------------------------------------------------
# pattern-aware initialisation


def gate_values(model, layer):
    return model.params[f"lstm.{layer}.w_x"], model.params[f"lstm.{layer}.w_h"]


def test_fanin_init_scales_each_row_by_its_real_inputs():
    cfg = make_config("small", emb=30, hidden=40, sparsity=0.3, init="fanin", dtype="float64")
    model = LanguageModel(cfg, 50)
    for layer in range(cfg.layers):
        w_x, w_h = (model.patterns[f"lstm.{layer}.{n}"] for n in ("w_x", "w_h"))
        fan_in = np.diff(w_x.indptr) + np.diff(w_h.indptr)
        for w, values in zip((w_x, w_h), gate_values(model, layer)):
            bound = np.repeat(np.sqrt(3.0 / fan_in), np.diff(w.indptr))
            assert np.all(np.abs(values) <= bound) and np.abs(values).max() > 0.5 * bound.max()
        # variance-preserving: the pre-activation of unit-variance inputs has variance ~1
        row_var = np.concatenate(gate_values(model, layer)) ** 2
        assert 0.8 < row_var.sum() / (4 * cfg.hidden) < 1.2


def test_auto_init_is_fanin_when_sparse_and_zaremba_when_dense():
    sparse = dict(emb=10, hidden=12, sparsity=0.25, dtype="float64")
    auto = LanguageModel(make_config("small", **sparse), 30)
    fanin = LanguageModel(make_config("small", init="fanin", **sparse), 30)
    assert np.array_equal(auto.params.flat, fanin.params.flat)
    dense = dict(emb=10, hidden=12, dtype="float64")
    auto = LanguageModel(make_config("small", **dense), 30)
    uniform = LanguageModel(make_config("small", init="uniform", **dense), 30)
    assert np.array_equal(auto.params.flat, uniform.params.flat)


def test_forget_bias_sets_only_the_forget_block():
    base = dict(emb=10, hidden=12, sparsity=0.25, dtype="float64")
    plain = LanguageModel(make_config("small", **base), 30)
    biased = LanguageModel(make_config("small", forget_bias=1.0, **base), 30)
    for name, arr in biased.params.items():
        if name.startswith("lstm.") and name.endswith(".bias"):
            assert np.all(arr[12:24] == 1.0)
            arr = arr.copy()
            arr[12:24] = plain.params[name][12:24]
        assert np.array_equal(arr, plain.params[name]), name
