"""The study's sparsity rule: which gate weights are stored, and their initial values.

One module owns the pattern rule (docs/SPARSITY.md), so the density travels no further than here:

- masks: `fanin` gives every row max(1, floor(d C)) distinct columns (the study's), `uniform`
  max(1, round(d R C)) entries spread over the matrix; both drawn from the run's generator.
  `fanin-cover` and `uniform-cover` then repair the drawn mask (cover_mask) so that every gate
  row has an input and every input column feeds a gate row, where the density allows it.
- the split: the mask is drawn per layer over the joint gate matrix [W_x | W_h]: (G, I+H) and
  then split into the CSR patterns of W_x (G, I) and W_h (G, H). This is the rule that
  reproduces the study's Table 1 counts (`sparselm info`, counting.py, draws through it).
- initial values: U(-s, s) for every parameter (Zaremba), a CSR gate's stored values by the
  configured scheme ("uniform", "glorot" of the dense shape, or "fanin": each row scaled by its
  real fan-in; "auto", the default, is "fanin" for sparse gates and "uniform" for dense), and
  optionally a constant forget-gate bias.

The random streams are part of the results: a seed draws the patterns first (layer by layer, in
gate_names order), then every parameter's values in layout order, from one generator.
tests/test_sparsity.py pins their checksums.
"""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig
from .csr import CSRMatrix
from .layout import gate_shape

# floor(d * cols) must not lose an exact integer to float rounding (0.29 * 100 = 28.999...).
_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# masks


def _check_density(density) -> float:
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return density


def _distinct_columns(counts, cols, rng, chunk_elems=1 << 21):
    """Sorted distinct columns per row: counts (R,) int64 with 0 <= counts <= cols.

    Returns (indices (N,) int32, indptr (R+1,) int32). Each row's set is uniform among subsets
    of its size: the counts[r] smallest of cols iid uniform keys. Rows are processed in chunks
    so memory stays O(chunk_elems + N).
    """
    rows = counts.shape[0]
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{indptr[-1]} non-zeros do not fit int32 indices")
    indices = np.empty(indptr[-1], dtype=np.int32)
    step = max(1, chunk_elems // max(cols, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        indices[indptr[r0] : indptr[r1]] = _draw_chunk(counts[r0:r1], cols, rng)
    return indices, indptr.astype(np.int32)


def _draw_chunk(counts, cols, rng):
    """Flattened sorted column sets for a few rows; counts (r,) int64. Returns (sum counts,)."""
    kmax = int(counts.max()) if counts.size else 0
    if kmax == 0:
        return np.empty(0, dtype=np.int32)
    keys = rng.random((counts.shape[0], cols))
    if kmax < cols:
        cand = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax]
    else:
        cand = np.broadcast_to(np.arange(cols), keys.shape)
    if not np.all(counts == kmax):
        # Rows wanting fewer than kmax take their smallest keys: order candidates by key first.
        order = np.argsort(np.take_along_axis(keys, cand, axis=1), axis=1)
        cand = np.take_along_axis(cand, order, axis=1)
    chosen = cand[np.arange(kmax) < counts[:, None]]
    row_local = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    return (np.sort(row_local * cols + chosen) % cols).astype(np.int32)


def fanin_mask(rows, cols, density, rng):
    """Every row gets k = max(1, floor(density*cols)) distinct columns (the study's mask).

    rng: numpy.random.Generator. Returns (indices (R*k,) int32 sorted per row, indptr (R+1,) int32).
    """
    density = _check_density(density)
    k = min(cols, max(1, math.floor(density * cols + _EPS)))
    if k == cols:
        indices = np.tile(np.arange(cols, dtype=np.int32), rows)
        return indices, np.arange(0, rows * cols + 1, cols, dtype=np.int32)
    return _distinct_columns(np.full(rows, k, dtype=np.int64), cols, rng)


def uniform_mask(rows, cols, density, rng):
    """Exactly max(1, round(density*rows*cols)) distinct entries, uniform over the matrix.

    A uniform n-subset of the R*C cells has multivariate hypergeometric row counts and, given
    those, uniform column sets per row, which is how it is drawn (no R*C-sized array).
    rng: numpy.random.Generator. Returns (indices (N,) int32 sorted per row, indptr (R+1,) int32).
    """
    density = _check_density(density)
    n = max(1, round(density * rows * cols))
    counts = rng.multivariate_hypergeometric(np.full(rows, cols, dtype=np.int64), n)
    return _distinct_columns(counts.astype(np.int64), cols, rng)


MASKS = ("fanin", "uniform", "fanin-cover", "uniform-cover")


def build_mask(kind, rows, cols, density, rng):
    """The mask `kind` (one of MASKS): "fanin" and "uniform" as drawn (the study's); with
    "-cover", then repaired by cover_mask. Returns (indices (N,) int32, indptr (R+1,) int32)."""
    base, _, cover = kind.partition("-")
    if kind not in MASKS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASKS)}")
    draw = fanin_mask if base == "fanin" else uniform_mask
    indices, indptr = draw(rows, cols, density, rng)
    return cover_mask(indices, indptr, cols, rng) if cover else (indices, indptr)


def cover_mask(indices, indptr, cols, rng):
    """The mask with no empty row and no unused column, where its N entries allow it.

    indices (N,) int32, indptr (R+1,) int32 sorted per row (a drawn mask). Rows first (only
    when N >= R; a fanin mask has none empty): each empty row, in random order, takes one entry
    of a random row that holds two or more, column kept. Then columns (when N >= C): each unused
    column, in random order, replaces the column of a random entry whose column is used twice or
    more, row kept. Every other entry stays where it was drawn, row counts change only for
    empty rows and their donors (a fanin mask keeps k per row), and no row gets a column twice.
    Deterministic for the generator's state. Returns (indices, indptr) like the input.
    """
    rows = len(indptr) - 1
    r = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
    c = indices.astype(np.int64)
    if len(c) >= rows:
        _fill_empty(r, rows, rng)
    if len(c) >= cols:
        _fill_empty(c, cols, rng)
    order = np.lexsort((c, r))
    new_indptr = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(r, minlength=rows), out=new_indptr[1:])
    return c[order].astype(np.int32), new_indptr


def _fill_empty(owner, n_bins, rng, tries=64):
    """Reassign entries of owner (N,) int64 (their row, or their column) in place so that every
    bin in [0, n_bins) owns one: each empty bin takes a random entry from a bin owning >= 2.
    Moving an entry between rows keeps its column and vice versa, and an empty bin holds no
    entry, so no (row, column) pair can repeat."""
    counts = np.bincount(owner, minlength=n_bins)
    empty = np.flatnonzero(counts == 0)
    for b in empty[rng.permutation(len(empty))]:
        for _ in range(tries):  # most entries' bins own >= 2 while N >= n_bins: rejection
            k = int(rng.integers(len(owner)))
            if counts[owner[k]] >= 2:
                break
        else:  # few donors left: choose among them
            donors = np.flatnonzero(counts[owner] >= 2)
            k = int(donors[rng.integers(len(donors))])
        counts[owner[k]] -= 1
        owner[k] = b
        counts[b] = 1


# ---------------------------------------------------------------------------------------------
# initial values


def init_values(nnz, rows, cols, scheme, scale, rng, dtype):
    """Initial values (nnz,) of `dtype` for a CSR weight of dense shape (rows, cols).

    "uniform": U(-scale, scale). "glorot": U(-a, a), a = sqrt(6 / (fan_in + fan_out)) with
    fan_in = cols and fan_out = rows of the *dense* shape (scale is ignored), so a sparse matrix
    starts with the same value range as its dense counterpart. Drawn in float64, then cast.
    """
    if scheme == "uniform":
        bound = float(scale)
    elif scheme == "glorot":
        bound = math.sqrt(6.0 / (rows + cols))
    else:
        raise ValueError(f"unknown init scheme {scheme!r}; expected 'uniform' or 'glorot'")
    return rng.uniform(-bound, bound, size=int(nnz)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# the study's rule over the model's gates


def build_patterns(cfg: TrainConfig, rng) -> dict:
    """The fixed CSR patterns of every gate weight ({} when dense), drawn from rng.

    As in the study, the mask is drawn per layer over the joint gate matrix [W_x | W_h]: (G, I+H),
    so with "fanin" every gate row has max(1, floor(d (I + H))) inputs in total, and is then
    split into the CSR matrices of W_x and W_h. This is the rule that reproduces the study's
    Table 1 counts (see docs/SPARSITY.md).
    """
    if cfg.sparsity >= 1.0:
        return {}
    patterns = {}
    dtype = np.dtype(cfg.dtype)
    for layer in range(cfg.layers):
        rows, n_in = gate_shape(cfg, f"lstm.{layer}.w_x")
        indices, indptr = build_mask(cfg.mask, rows, n_in + cfg.hidden, cfg.sparsity, rng)
        for name, part in zip(("w_x", "w_h"), split_columns(indices, indptr, n_in)):
            shape = gate_shape(cfg, f"lstm.{layer}.{name}")
            part_indices, part_indptr = part
            patterns[f"lstm.{layer}.{name}"] = CSRMatrix(
                np.zeros(len(part_indices), dtype), part_indices, part_indptr, shape
            )
    return patterns


def split_columns(indices, indptr, at: int):
    """Split a CSR pattern into columns [0, at) and [at, C) (re-based): two (indices, indptr)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    parts = []
    for keep, offset in ((indices < at, 0), (indices >= at, at)):
        counts = np.bincount(rows[keep], minlength=len(indptr) - 1)
        part_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        parts.append(((indices[keep] - offset).astype(np.int32), part_indptr))
    return parts


def init_parameters(params, patterns: dict, cfg: TrainConfig, rng) -> None:
    """Fill params (name -> host array, layout order) from rng: every parameter U(-s, s)
    (Zaremba), a CSR gate's stored values (N,) by the init scheme (init_scheme(cfg)); then,
    when cfg.forget_bias is not 0, the forget-gate block of every gate bias set to it.

    "fanin" scales each gate row by its actual fan-in over [W_x | W_h] (the row's real inputs):
    U(-a, a) with a = sqrt(3 / fan_in), so the pre-activation has the variance of one input
    whatever the density (dense-shape schemes leave a fan-in-1 row's sum ~100x smaller).
    """
    scheme = init_scheme(cfg)
    for name, arr in params.items():
        if name in patterns and scheme == "fanin":
            arr[...] = _fanin_values(name, patterns, rng, arr.dtype)
        elif name in patterns:
            rows, cols = gate_shape(cfg, name)
            arr[...] = init_values(arr.size, rows, cols, scheme, cfg.init_scale, rng, arr.dtype)
        else:
            arr[...] = rng.uniform(-cfg.init_scale, cfg.init_scale, arr.shape)
        if name.endswith(".bias") and name.startswith("lstm.") and cfg.forget_bias != 0:
            arr[cfg.hidden : 2 * cfg.hidden] = cfg.forget_bias  # gate order i, f, g, o


def init_scheme(cfg: TrainConfig) -> str:
    """The gate weights' init scheme: cfg.init, with "auto" meaning "fanin" for sparse gates and
    "uniform" (Zaremba's U(-s, s), the published dense numbers) for dense ones."""
    if cfg.init != "auto":
        return cfg.init
    return "fanin" if cfg.sparsity < 1.0 else "uniform"


def row_fan_in(patterns: dict, layer: str):
    """(G,) int: the stored inputs of each gate row of `layer` ("lstm.0", ...) in W_x and W_h
    together, the row's real fan-in."""
    return np.diff(patterns[layer + ".w_x"].indptr) + np.diff(patterns[layer + ".w_h"].indptr)


def _fanin_values(name: str, patterns: dict, rng, dtype):
    """U(-a_r, a_r) per stored entry of gate matrix `name`, a_r = sqrt(3 / fan_in_r), fan_in_r
    the entries of row r in W_x and W_h of its layer together. Returns (N,) of dtype."""
    w = patterns[name]
    bound = np.sqrt(3.0 / np.maximum(row_fan_in(patterns, name.rsplit(".", 1)[0]), 1))
    per_entry = np.repeat(bound, np.diff(w.indptr))
    return (rng.uniform(-1.0, 1.0, size=len(w.indices)) * per_entry).astype(dtype)


def csr_random(rows, cols, density, rng, mask="fanin", dtype=np.float64, scale=0.1):
    """A CSRMatrix (rows, cols) with a `mask` pattern and U(-scale, scale) values of `dtype`."""
    indices, indptr = build_mask(mask, rows, cols, density, rng)
    data = init_values(indices.shape[0], rows, cols, "uniform", scale, rng, dtype)
    return CSRMatrix(data, indices, indptr, (rows, cols))
