"""CPU kernels for products with a CSR matrix W (R, C): x W^T, dy W and the SDDMM dW.

Raw arrays in, no objects; float32 or float64 (Numba specialises each function per dtype);
index arrays int32. `sparselm.csr.CSRMatrix` validates and calls these.

Layout. Activations arrive batch-major, x (M, C). The fast loop is an axpy over the batch,
out[:, r] += w * x[:, col], which vectorises only if the M values of one column are contiguous.
Each call therefore first copies its dense operand transposed, xt (C, Mp) with Mp = M rounded up
to a whole SIMD register (L lanes: 16 float32, 8 float64); that costs M*C moves against 2*N*M
flops; scratch arrays start on 64-byte boundaries so that a vector load touches one cache
line. The result goes to a batch-major out (M, R), built L rows at a time in a tile (L, Mp)
and written back through register transposes, or to a feature-major out (R, M), stored
straight from the registers with masked stores. dy W reads W's values through the transpose
permutation, except for very large W, where a scatter from W's own rows into private
accumulators reads them in storage order (_spmm_t_scatter).

Explicit SIMD. The inner loops are LLVM vector code emitted through Numba intrinsics (generated
in kernels/cpu_csr_ir.py) rather than loops left to the auto-vectoriser, which here (a)
interleaves 4 registers, so any batch shorter than 4L runs as a scalar remainder loop, (b)
re-checks pointer aliasing every time an inner loop starts, a fixed cost per stored entry, and
(c) keeps accumulators in memory. The intrinsics keep G accumulators in registers over all
entries of a row, so each entry costs one load and one FMA per register. Vectors are 64 bytes;
LLVM splits them on machines without AVX-512.

Parallelism: threads own disjoint ranges of rows of the product's output side (rows of W for
csr_matmul and csr_sddmm, rows of W^T for csr_matmul_t), so there are no write races and no
atomics. Ranges hold about the same number of rows plus non-zeros. A call too small to repay
waking the pool runs on the calling thread, transpose included (_small); a mid-sized one
whose transposed operand fits in half of L2 runs one range per thread, each thread with its
own copy (_own_xt_pays); larger ones share one copy, transposed in parallel, among up to
_MAX_TASKS ranges.

A Numba detail that matters too: an index computed at run time (a[lo + i]) may be negative as
far as Numba knows, so it emits Python's wrap-around test, which blocks vectorisation; plain
loops therefore run over `range(n)` on views.
"""

import warnings

import numpy as np
from numba import config, njit, prange
from numba.core.errors import NumbaPerformanceWarning

from .cpu_csr_ir import (
    grads1,
    grads2,
    grads_loop,
    rows1,
    rows2,
    rows4,
    scatter1,
    scatter2,
    scatter4,
    transpose_block,
    transpose_block_add,
    transpose_into,
    transpose_into4,
    transpose_into8,
)
from .simd import (
    VEC_BYTES,
    aligned_empty,
)
from .simd import lanes as _lanes

# Row ranges per call: several per thread so work-stealing absorbs uneven rows and noisy cores.
# A constant, because numba.get_num_threads() inside a kernel defeats the on-disk cache.
_MAX_TASKS = 32
_SMALL_WORK = 1 << 19  # below this many multiply-adds and moves a call runs on one thread
_SERIAL_TRANSPOSE = 1 << 16  # operands of fewer elements are transposed on one thread
# An SDDMM entry costs a dot product and its horizontal sum, more than the multiply-adds it is
# counted as: at H=650, d=0.005, M=20 (221k units) one thread took 18.4 us, two 15.5 us.
_SDDMM_WEIGHT = 4

# Nested parallel calls: every cached function that calls a parallel=True function is
# parallel=True itself, even with no loop of its own to split. A cached serial caller of a
# parallel function can crash when it is loaded back from Numba's on-disk cache in another
# process (numba issues #4807, #8578; seen here once as a segfault in csr_matmul_t); a
# parallel caller avoids it.
# Those callers have no loop of their own, so Numba's warning that it found nothing to split
# is expected there (and only there: the message names this file).
#
# Entry points in Python: csr_matmul, csr_matmul_t and csr_sddmm are plain Python functions that
# choose a call's form and call one compiled kernel, not compiled dispatchers themselves. Numba
# links every callee's code into its caller and optimises the whole module again at each level
# of calls, so a compiled entry point above the kernels re-optimises all of their code once
# more (csr_sddmm's own level took 16 of its 50 s, cold, for one signature: timed once with a
# throwaway script while other jobs ran). The Python call costs about a microsecond, against a
# CSRMatrix method's validation of several.
warnings.filterwarnings(
    "ignore",
    message=r"(?s).*'parallel=True' was specified.*cpu_csr\.py",
    category=NumbaPerformanceWarning,
)

# One intrinsic per loop: a hot loop should call one intrinsic, chosen before the loop, not
# one of several chosen inside it. The SDDMM's block loop, choosing among grads1, grads2 and
# grads_loop per block, took 22.9 us where the same loop calling grads2 alone took 13.6
# (H=650, d=0.005, M=20, serial), executing the same instructions; a second layout tested in
# the loop cost as much. spmm_rows's tile loop likewise: 52 against 28 us (16 rows, H=1500,
# d=0.0005, with a paired matrix: the fused recurrence's step). Not reference counting
# (Numba's refprune pass switched off changed neither figure); LLVM compiles the larger loop
# body worse (more stack traffic), which was not pinned down further. Loops are therefore
# written once as inline functions taking the intrinsic as an argument, called per choice.

# ---------------------------------------------------------------------------------------------
# building blocks (serial; the public kernels run them over row ranges in parallel)
# Helpers called once per row are inlined: a Numba call with array arguments costs ~50 ns
# (reference counting), more than a short row's arithmetic.

_TR_COLS = 64  # columns per transpose task (a multiple of L for both dtypes)


@njit(cache=True)
def _alloc_transposed(a):
    """Uninitialised (S, Mp), 64-byte aligned, for a (M, S): Mp = M rounded up to whole L."""
    lanes = _lanes(a)
    return aligned_empty(a.shape[1], (a.shape[0] + lanes - 1) // lanes * lanes, a)


@njit(cache=True, inline="always")  # called per row block: a call costs ~40 ns
def transpose_cols(a, at, s0, s1, row0):
    """at[s - row0, j] = a[j, s] for j < M and 0 for M <= j < Mp, for s0 <= s < s1.

    a: (M, S) float, C-contiguous; at: (>= s1 - row0, Mp) same dtype, C-contiguous, Mp = M
    rounded up to whole L. Blocks of up to L columns by L rows go through register
    transposes; the batch edge (M mod L rows) takes a cheaper one of 4 or 8 rows and writes
    the zero padding with it, which the SDDMM's sums over whole registers rely on.
    """
    m, n_cols = a.shape
    mp = at.shape[1]
    lanes = _lanes(a)
    for sb in range(s0, s1, lanes):
        width = min(lanes, s1 - sb)
        d_off = (sb - row0) * mp
        for mb in range(0, m, lanes):
            n_src = min(lanes, m - mb)
            s_off = mb * n_cols + sb
            if n_src == lanes and width == lanes:  # no edge: no masks, no zeros
                transpose_block(a, s_off, n_cols, at, d_off + mb, mp)
            elif n_src <= 4:
                transpose_into4(a, s_off, n_cols, n_src, width, at, d_off + mb, mp)
            elif n_src <= 8:
                transpose_into8(a, s_off, n_cols, n_src, width, at, d_off + mb, mp)
            else:
                transpose_into(a, s_off, n_cols, n_src, width, at, d_off + mb, mp)


@njit(parallel=True, cache=True)
def _transpose_all(a, at):
    """transpose_cols over all of a's columns, in parallel ranges of _TR_COLS columns."""
    n_cols = a.shape[1]
    for t in prange((n_cols + _TR_COLS - 1) // _TR_COLS):
        transpose_cols(a, at, t * _TR_COLS, min(n_cols, (t + 1) * _TR_COLS), 0)


@njit(cache=True)
def _task_bounds(indptr, step, max_tasks=_MAX_TASKS):
    """Row boundaries (n_tasks+1,) int64, multiples of step, each range ~equal rows + nnz;
    n_tasks <= max_tasks.

    indptr: (R+1,) int32.
    """
    rows = indptr.size - 1
    n_blocks = (rows + step - 1) // step
    n_tasks = max(1, min(n_blocks, max_tasks))
    bounds = np.empty(n_tasks + 1, dtype=np.int64)
    total = rows + indptr[rows]
    b = 0
    for t in range(n_tasks):
        # first block boundary where the cost (rows + nnz) before it reaches t / n_tasks
        target = total * t // n_tasks
        while b < n_blocks and b * step + indptr[b * step] < target:
            b += 1
        bounds[t] = min(b * step, rows)
    bounds[n_tasks] = rows
    return bounds


@njit(cache=True, inline="always")
def _row_passes(dst, d_off, vals, perm, cols, ptr, r0, n_rows, src, second, n_valid, accumulate):
    """dst.flat[d_off + i*D + l] for i < n_rows, l < Mp (D: dst's row length), in passes of 4,
    2 and 1 registers: see _tile_product, and the rows intrinsic for n_valid, accumulate."""
    lanes = _lanes(src)
    n_regs = src.shape[1] // lanes
    g = 0
    while g + 4 <= n_regs:
        rows4(
            dst,
            d_off + g * lanes,
            vals,
            perm,
            cols,
            ptr,
            r0,
            n_rows,
            src,
            g * lanes,
            second,
            n_valid,
            accumulate,
        )
        g += 4
    if g + 2 <= n_regs:
        rows2(
            dst,
            d_off + g * lanes,
            vals,
            perm,
            cols,
            ptr,
            r0,
            n_rows,
            src,
            g * lanes,
            second,
            n_valid,
            accumulate,
        )
        g += 2
    if g < n_regs:
        rows1(
            dst,
            d_off + g * lanes,
            vals,
            perm,
            cols,
            ptr,
            r0,
            n_rows,
            src,
            g * lanes,
            second,
            n_valid,
            accumulate,
        )


@njit(cache=True, inline="always")
def _tile_product(tile, vals, perm, cols, ptr, r0, n_rows, src, second):
    """tile[i, :] = sum_k v_k * src[cols[k], :] over the entries k of row r0 + i, i < n_rows.

    v_k = vals[k], or vals[perm[k]] when perm is not None. tile: (L, Mp) float; vals: (N,)
    float; perm: None or (N,) int32; cols: (N,) int32; ptr: (R+1,) int32; src: (S, Mp) float;
    second: None or a second matrix and source (vals2, cols2, ptr2, src2) adding to each row.
    A batch of up to 4 registers takes one pass over the tile's rows. A wider one needs
    several passes (4 registers each), made row by row so that the rows of src a row reads
    are still in L1 for its next pass.
    """
    if src.shape[1] <= 4 * _lanes(src):
        _row_passes(tile, 0, vals, perm, cols, ptr, r0, n_rows, src, second, None, None)
    else:
        for i in range(n_rows):
            _row_passes(
                tile, i * src.shape[1], vals, perm, cols, ptr, r0 + i, 1, src, second, None, None
            )


@njit(cache=True, inline="always")
def _store_tile(tile, n_rows, out, r0, accumulate):
    """out[j, r0 + i] (+)= tile[i, j] for i < n_rows, j < M.

    tile: (L, Mp) float; out: (M, R) float, C-contiguous. Whole L x L blocks go through
    register transposes (when overwriting, a ragged batch edge takes one overlapping block);
    a partial block of rows, and ragged batch rows when accumulating, go element by element.
    """
    m, n_out = out.shape
    lanes, mp = tile.shape
    start = 0
    if n_rows == lanes and m >= lanes:
        if accumulate:
            start = m // lanes * lanes
            for mb in range(0, start, lanes):
                transpose_block_add(tile, mb, mp, out, mb * n_out + r0, n_out)
        else:
            start = m
            for bm in range((m + lanes - 1) // lanes):
                mb = min(bm * lanes, m - lanes)
                transpose_block(tile, mb, mp, out, mb * n_out + r0, n_out)
    for j in range(start, m):
        seg = out[j, r0 : r0 + n_rows]
        for i in range(seg.size):
            seg[i] = seg[i] + tile[i, j] if accumulate else tile[i, j]


@njit(cache=True)
def spmm_rows(vals, perm, cols, ptr, xt, row_lo, row_hi, out, accumulate, second=None):
    """out[:, row_lo:row_hi] (+)= x @ A[row_lo:row_hi]^T for CSR A = (vals[perm], cols, ptr).

    vals: (N,) float; perm: None (identity) or (N,) int32; cols: (N,) int32; ptr: (R+1,)
    int32; xt: (S, Mp) x transposed, padded; out: (M, R) float, C-contiguous. second: None,
    or (vals2, cols2, ptr2, x2t) adding x2 @ A2[row_lo:row_hi]^T (A2 of the same rows).
    The rows intrinsic for a batch of 1, 2 or 4 registers is chosen here, once per call, with
    a loop of its own (see 'One intrinsic per loop').
    """
    n_regs = xt.shape[1] // _lanes(xt)
    if n_regs == 1:
        _spmm_tiles(rows1, vals, perm, cols, ptr, xt, row_lo, row_hi, out, accumulate, second)
    elif n_regs == 2:
        _spmm_tiles(rows2, vals, perm, cols, ptr, xt, row_lo, row_hi, out, accumulate, second)
    elif n_regs == 4:
        _spmm_tiles(rows4, vals, perm, cols, ptr, xt, row_lo, row_hi, out, accumulate, second)
    else:
        lanes = _lanes(xt)
        tile = aligned_empty(lanes, xt.shape[1], xt)
        for r0 in range(row_lo, row_hi, lanes):
            n_rows = min(lanes, row_hi - r0)
            _tile_product(tile, vals, perm, cols, ptr, r0, n_rows, xt, second)
            _store_tile(tile, n_rows, out, r0, accumulate)


@njit(cache=True, inline="always")
def _spmm_tiles(rows, vals, perm, cols, ptr, xt, row_lo, row_hi, out, accumulate, second):
    """spmm_rows for a batch of exactly the registers of the rows intrinsic given: one pass
    over each tile's rows."""
    lanes = _lanes(xt)
    tile = aligned_empty(lanes, xt.shape[1], xt)
    for r0 in range(row_lo, row_hi, lanes):
        n_rows = min(lanes, row_hi - r0)
        rows(tile, 0, vals, perm, cols, ptr, r0, n_rows, xt, 0, second, None, None)
        _store_tile(tile, n_rows, out, r0, accumulate)


@njit(cache=True)
def spmm_rows_out(vals, perm, cols, ptr, xt, row_lo, row_hi, out_rows, accumulate):
    """out_rows[row_lo:row_hi] (+)= (x @ A[row_lo:row_hi]^T)^T: spmm_rows with the result in
    feature-major layout, written straight from the registers (no tile, no transposes).

    out_rows: (R, M) float, C-contiguous; the other arguments as for spmm_rows. A batch wider
    than 4 registers is done 4 registers at a time over all the rows (not row by row as in the
    tile): one such slice of xt, (S, 4L), stays in L2 for all the rows, where the whole of xt
    may not (1.0-1.4x at M = 400).
    """
    m = out_rows.shape[1]
    _row_passes(
        out_rows,
        row_lo * m,
        vals,
        perm,
        cols,
        ptr,
        row_lo,
        row_hi - row_lo,
        xt,
        None,
        m,
        accumulate,
    )


_TILE_ROWS = 64  # rows of W per block when x^T is read in column slices
_TILE_COLS = 256  # columns of x^T per slice: (256, Mp) stays in L2 beside the dy block
_TILE_MIN_BYTES = 1 << 19  # x^T larger than this is read in slices (a core's L2: 1 MiB)
_TILE_REUSE = 2  # ... when a block's entries hit each column this often on average


@njit(cache=True, inline="always")
def _tiles_pay(xt, indptr):
    """True when the SDDMM should read x^T in column slices (see _sddmm_rows): x^T outgrows
    L2, and a block's rows hit each column _TILE_REUSE times or more on average."""
    rows, nnz = indptr.size - 1, indptr[-1]
    return (
        xt.shape[1] > 2 * _lanes(xt)
        and xt.size * xt.itemsize > _TILE_MIN_BYTES
        and nnz * _TILE_ROWS >= _TILE_REUSE * rows * xt.shape[0]
    )


@njit(cache=True)
def _sddmm_rows(indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, pair):
    """out[k] (+)= sum_m dy[m, row_k] * xt[indices[k], m] for the entries of rows row_lo:row_hi.

    indices: (N,) int32; indptr: (R+1,) int32; dy: (M, R) float, C-contiguous; xt: (C, Mp)
    x transposed and zero padded; out: (N,) float; col_sums: None or (R,) float, then also
    col_sums[r] = sum_m dy[m, r] for those rows; pair: None or (indices2, indptr2, xt2, out2),
    a second matrix with the same rows and dy, done likewise from the same blocks. The grads
    intrinsic for the batch's registers per row is chosen here, once, with a loop of its own
    per choice (see 'One intrinsic per loop').
    """
    n_regs = xt.shape[1] // _lanes(xt)
    if n_regs == 1:
        _sddmm_blocks(
            grads1, indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, pair
        )
    elif n_regs == 2:
        _sddmm_blocks(
            grads2, indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, pair
        )
    else:
        _sddmm_blocks(
            grads_loop, indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, pair
        )


@njit(cache=True, inline="always")
def _sddmm_blocks(grads, indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, pair):
    """_sddmm_rows with the grads intrinsic for xt's registers per row (_make_grads_kernel).

    Columns of dy are transposed a block of rows at a time (L rows, a block that stays in L1)
    instead of into a full transposed copy. When x^T outgrows L2 (wide batches, large C),
    every entry would read its row of x^T from L3; blocks of _TILE_ROWS rows then go over x^T
    in slices of _TILE_COLS columns (_sliced_grads). Each layout has a loop of its own.
    """
    if _tiles_pay(xt, indptr) or (pair is not None and _tiles_pay(pair[2], pair[1])):
        blk = aligned_empty(_TILE_ROWS, xt.shape[1], xt)
        cuts = np.empty((2, _TILE_ROWS), np.int32)
        for r0 in range(row_lo, row_hi, _TILE_ROWS):
            r1 = min(r0 + _TILE_ROWS, row_hi)
            transpose_cols(dy, blk, r0, r1, r0)
            _sliced_grads(grads, blk, xt, indices, indptr, r0, r1, out, accumulate, col_sums, cuts)
            if pair is not None:
                _sliced_grads(
                    grads, blk, pair[2], pair[0], pair[1], r0, r1, pair[3], accumulate, None, cuts
                )
    else:
        blk = aligned_empty(_lanes(xt), xt.shape[1], xt)
        for r0 in range(row_lo, row_hi, _lanes(xt)):
            n = min(_lanes(xt), row_hi - r0)
            transpose_cols(dy, blk, r0, r0 + n, r0)
            grads(blk, xt, indices, indptr, r0, indptr, r0 + 1, n, out, accumulate, col_sums, r0)
            if pair is not None:
                grads(
                    blk,
                    pair[2],
                    pair[0],
                    pair[1],
                    r0,
                    pair[1],
                    r0 + 1,
                    n,
                    pair[3],
                    accumulate,
                    None,
                    0,
                )


@njit(cache=True, inline="always")
def _sliced_grads(grads, blk, xt, indices, indptr, r0, r1, out, accumulate, col_sums, cuts):
    """The SDDMM of rows r0:r1 from their transposed block of dy, blk (>= r1 - r0, Mp), over
    x^T in slices of _TILE_COLS columns: rows within a CSR row are sorted, so each row's
    entries in a slice are a run. col_sums: None or (R,); cuts: (2, >= r1 - r0) int32 scratch
    for the runs."""
    n = r1 - r0
    lo, hi = cuts[0], cuts[1]
    for i in range(n):
        hi[i] = indptr[r0 + i]
    if col_sums is not None:  # empty runs: the column sums only
        grads(blk, xt, indices, hi, 0, hi, 0, n, out, accumulate, col_sums, r0)
    for c1 in range(_TILE_COLS, xt.shape[0] + _TILE_COLS, _TILE_COLS):
        for i in range(n):
            k = hi[i]
            lo[i] = k
            end = indptr[r0 + i + 1]
            while k < end and indices[k] < c1:
                k += 1
            hi[i] = k
        grads(blk, xt, indices, lo, 0, hi, 0, n, out, accumulate, None, 0)


# ---------------------------------------------------------------------------------------------
# the kernels


@njit(cache=True, inline="always")
def _small(nnz, m, rows, cols):
    """True when a call is too small to repay waking the thread pool (a few microseconds)."""
    return nnz * m + m * (rows + cols) < _SMALL_WORK


@njit(cache=True, inline="always")
def _rows_into(vals, perm, cols, ptr, at, lo, hi, out, accumulate, out_rows):
    """Rows lo:hi of the product into either output layout (see _spmm)."""
    if out_rows:
        spmm_rows_out(vals, perm, cols, ptr, at, lo, hi, out, accumulate)
    else:
        spmm_rows(vals, perm, cols, ptr, at, lo, hi, out, accumulate)


_OWN_XT_BYTES = 1 << 19  # a call whose transposed operand is at most this large (half
_OWN_XT_WORK = 1 << 25  # of L2) and whose work is under this many multiply-adds runs one
# task per thread, each thread with its own copy (_own_xt_pays)
# The threads available to this process, frozen into the compiled code: get_num_threads() in
# a kernel would keep it out of Numba's cache. Fewer threads at run time (set_num_threads)
# only means that a thread transposes x more than once.
_OWN_XT_TASKS = config.NUMBA_NUM_THREADS


@njit(cache=True, inline="always")
def _own_xt_pays(work, a):
    """True when each thread of a call of `work` multiply-adds should transpose the dense
    operand a (M, S) for itself: one shared copy is built on the calling thread before the
    others can start, and then crosses to their caches (see _sddmm_own_xt)."""
    mp = (a.shape[0] + _lanes(a) - 1) // _lanes(a) * _lanes(a)
    return work < _OWN_XT_WORK and a.shape[1] * mp * a.itemsize <= _OWN_XT_BYTES


@njit(parallel=True, cache=True)
def _spmm(vals, perm, cols, ptr, a, out, accumulate, out_rows):
    """out (+)= a @ A^T for A (R', S) = (vals[perm], cols, ptr) in CSR, a: (M, S); out: (M, R'),
    or (R', M) holding the result transposed when out_rows. Threads own ranges of A's rows;
    in a small call (_own_xt_pays) each thread transposes a for itself (see _sddmm_own_xt)."""
    m, width = a.shape
    n_rows = ptr.size - 1
    if _small(vals.size, m, n_rows, width):  # all on this thread, the transpose too
        at = _alloc_transposed(a)
        transpose_cols(a, at, 0, width, 0)
        _rows_into(vals, perm, cols, ptr, at, 0, n_rows, out, accumulate, out_rows)
    elif _own_xt_pays(vals.size * m, a):
        bounds = _task_bounds(ptr, _lanes(a), _OWN_XT_TASKS)
        for t in prange(bounds.size - 1):
            at = _alloc_transposed(a)
            transpose_cols(a, at, 0, width, 0)
            _rows_into(
                vals, perm, cols, ptr, at, bounds[t], bounds[t + 1], out, accumulate, out_rows
            )
    else:
        at = _transposed(a)
        bounds = _task_bounds(ptr, _lanes(a))
        for t in prange(bounds.size - 1):
            _rows_into(
                vals, perm, cols, ptr, at, bounds[t], bounds[t + 1], out, accumulate, out_rows
            )


def csr_matmul(data, indices, indptr, x, out, accumulate, out_rows=False) -> None:
    """out (M, R) = x @ W^T, or out += x @ W^T when accumulate.

    W (R, C) in CSR: data (N,) float32|float64, indices (N,) int32, indptr (R+1,) int32.
    x: (M, C) same dtype, C-contiguous; out: (M, R) same dtype, C-contiguous, or when
    out_rows (R, M) C-contiguous receiving the result transposed (feature-major), which is
    written straight from registers. (A Python entry point: see 'Entry points in Python'.)
    """
    _spmm(data, None, indices, indptr, x, out, bool(accumulate), bool(out_rows))


def csr_matmul_t(
    data, t_perm, t_indices, t_indptr, dy, out, accumulate, out_rows=False, pattern=None
) -> None:
    """out (M, C) = dy @ W, or out += dy @ W when accumulate, without atomics.

    Row c of W^T holds entries k in t_indptr[c]:t_indptr[c+1] with row index t_indices[k] of W
    and value data[t_perm[k]]. data: (N,) float32|float64; t_perm, t_indices: (N,) int32;
    t_indptr: (C+1,) int32; dy: (M, R) same dtype, C-contiguous; out: (M, C) likewise, or
    when out_rows (C, M) receiving the result transposed. pattern: None or (indices, indptr)
    of W itself; with it a large W and a batch of at most 4 registers take the scatter
    product (_spmm_t_scatter), which reads the values in storage order.
    """
    accumulate, out_rows = bool(accumulate), bool(out_rows)
    lanes = VEC_BYTES // dy.itemsize
    if pattern is not None and _scatter_pays(data.size, dy.shape[0], t_indptr.size - 1, lanes):
        _spmm_t_scatter(data, pattern[0], pattern[1], dy, out, accumulate, out_rows)
    else:
        _spmm(data, t_perm, t_indices, t_indptr, dy, out, accumulate, out_rows)


# The scatter product: private accumulators, summed at the end (no atomics, no write races).
_SCATTER_PARTS = 4  # row ranges of W, each with its own (C, Mp) accumulator
# Below this many entries the gather through t_perm is as fast (measured equal at N = 0.9M,
# M = 20); at N = 2.5M its random reads of W's values (a cache line per entry) make it 1.65x
# slower than the scatter, whose stores then cost less.
_SCATTER_MIN_NNZ = 1 << 21
_SCATTER_MAX_ACC = 1 << 17  # elements of one accumulator (C * Mp): it should stay in L2


@njit(cache=True, inline="always")
def _scatter_pays(nnz, m, cols, lanes):
    mp = (m + lanes - 1) // lanes * lanes
    return nnz >= _SCATTER_MIN_NNZ and mp <= 4 * lanes and cols * mp <= _SCATTER_MAX_ACC


@njit(cache=True)
def _scatter_range(data, indices, indptr, dyt, lo, hi, acc):
    """acc (C', Mp) = sum over rows r in lo:hi of W (R, C) and their entries (c, v) of
    v * dyt[r] into acc[c]: zeroed first, then 4, 2 or 1 registers of lanes at a time."""
    flat = acc.reshape(acc.size)
    for j in range(flat.size):
        flat[j] = 0
    lanes = _lanes(dyt)
    n_regs = dyt.shape[1] // lanes
    g = 0
    while g + 4 <= n_regs:
        scatter4(acc, data, indices, indptr, lo, hi - lo, dyt, g * lanes)
        g += 4
    if g + 2 <= n_regs:
        scatter2(acc, data, indices, indptr, lo, hi - lo, dyt, g * lanes)
        g += 2
    if g < n_regs:
        scatter1(acc, data, indices, indptr, lo, hi - lo, dyt, g * lanes)


@njit(parallel=True, cache=True)
def _spmm_t_scatter(data, indices, indptr, dy, out, accumulate, out_rows):
    """out (+)= dy @ W as csr_matmul_t, from W's rows (data, indices (N,), indptr (R+1,)).

    Each of _SCATTER_PARTS ranges of W's rows (equal rows + nnz) scatters into its own
    accumulator (C', Mp), C' = C rounded up to L; then blocks of L columns sum the
    accumulators and are written out as spmm_rows writes its tiles (transposed into out
    (M, C)), or row by row into out (C, M) when out_rows.
    """
    m = dy.shape[0]
    cols = out.shape[0] if out_rows else out.shape[1]
    lanes = _lanes(dy)
    dyt = _transposed(dy)
    mp = dyt.shape[1]
    n_blocks = (cols + lanes - 1) // lanes
    parts = aligned_empty(_SCATTER_PARTS * n_blocks * lanes, mp, dy)
    acc = parts.reshape((_SCATTER_PARTS, n_blocks * lanes, mp))
    bounds = _task_bounds(indptr, lanes, _SCATTER_PARTS)
    for p in prange(_SCATTER_PARTS):
        if p < bounds.size - 1:
            _scatter_range(data, indices, indptr, dyt, bounds[p], bounds[p + 1], acc[p])
        else:  # fewer ranges than parts: an empty sum
            _scatter_range(data, indices, indptr, dyt, 0, 0, acc[p])
    for b in prange(n_blocks):
        c0 = b * lanes
        n = min(lanes, cols - c0)
        tile = acc[0, c0 : c0 + lanes]
        for p in range(1, _SCATTER_PARTS):
            _add_rows(tile, acc[p, c0 : c0 + lanes])
        if not out_rows:
            _store_tile(tile, n, out, c0, accumulate)
            continue
        for i in range(n):
            dst, src = out[c0 + i], tile[i]
            for j in range(m):
                dst[j] = dst[j] + src[j] if accumulate else src[j]


@njit(cache=True, inline="always")
def _add_rows(a, b):
    """a += b, both (L, Mp) C-contiguous."""
    fa, fb = a.reshape(a.size), b.reshape(b.size)
    for j in range(fa.size):
        fa[j] += fb[j]


@njit(parallel=True, cache=True)  # calls parallel kernels: see 'Nested parallel calls'
def _transposed(a):
    """a (M, S) transposed to (S, Mp), zero padded (see transpose_cols). A small
    operand is transposed on the calling thread: a parallel region costs more than the copy
    (2-20 us to wake the pool, depending on the host's load)."""
    at = _alloc_transposed(a)
    if a.size < _SERIAL_TRANSPOSE:
        transpose_cols(a, at, 0, a.shape[1], 0)
    else:
        _transpose_all(a, at)
    return at


_SERIAL, _OWN_XT, _SHARED_XT = 0, 1, 2  # the forms of an SDDMM call (_sddmm_form)


@njit(cache=True)
def _sddmm_form(nnz, m, rows, x):
    """How csr_sddmm runs a call of nnz entries (pair included) over a batch of m for R = rows
    rows, x: (m, C) its widest dense operand: _SERIAL on the calling thread, too small to
    repay waking the pool; _OWN_XT in one task per thread, each with its own x^T
    (_sddmm_own_xt); _SHARED_XT in many tasks over one x^T transposed in parallel."""
    work = _SDDMM_WEIGHT * nnz * m
    if _small(work, m, rows, 0):
        return _SERIAL
    return _OWN_XT if _own_xt_pays(work, x) else _SHARED_XT


@njit(parallel=True, cache=True)
def _sddmm_tasks(indices, indptr, dy, xt, out, accumulate, col_sums, pair, cost):
    """_sddmm_rows over all rows, in row ranges of near-equal cost (cost: an indptr-like (R+1,)
    of the entries to compute, pair included), x^T shared by the threads."""
    bounds = _task_bounds(cost, _lanes(xt))
    for t in prange(bounds.size - 1):
        _sddmm_rows(
            indices, indptr, dy, xt, bounds[t], bounds[t + 1], out, accumulate, col_sums, pair
        )


@njit(cache=True)
def _sddmm_from_x(indices, indptr, dy, x, row_lo, row_hi, out, accumulate, col_sums, pair):
    """_sddmm_rows of rows row_lo:row_hi from x (M, C) itself (and pair's x2): transposes them
    on this thread first; pair: None or (indices2, indptr2, x2, out2)."""
    xt = _alloc_transposed(x)
    transpose_cols(x, xt, 0, x.shape[1], 0)
    if pair is None:
        _sddmm_rows(indices, indptr, dy, xt, row_lo, row_hi, out, accumulate, col_sums, None)
    else:
        x2 = pair[2]
        xt2 = _alloc_transposed(x2)
        transpose_cols(x2, xt2, 0, x2.shape[1], 0)
        _sddmm_rows(
            indices,
            indptr,
            dy,
            xt,
            row_lo,
            row_hi,
            out,
            accumulate,
            col_sums,
            (pair[0], pair[1], xt2, pair[3]),
        )


@njit(parallel=True, cache=True)
def _sddmm_own_xt(indices, indptr, dy, x, out, accumulate, col_sums, pair, cost):
    """_sddmm_from_x in one row range per thread: each thread transposes x for itself. For a
    small call this beats one shared x^T: that is built on the calling thread before the
    others can start, and then crosses to their caches (H=650, d=0.005, M=20, 2 threads:
    11.7 against 14.2 us; H=1500: 33 against 38 us)."""
    bounds = _task_bounds(cost, _lanes(x), _OWN_XT_TASKS)
    for t in prange(bounds.size - 1):
        _sddmm_from_x(
            indices, indptr, dy, x, bounds[t], bounds[t + 1], out, accumulate, col_sums, pair
        )


def csr_sddmm(indices, indptr, dy, x, out, accumulate, col_sums=None, pair=None) -> None:
    """out[k] = sum_m dy[m, row_k] * x[m, col_k] for every stored entry k (or += when accumulate).

    The gradient of a loss through y = x @ W^T with respect to W's stored values.
    indices: (N,) int32; indptr: (R+1,) int32; dy: (M, R) float32|float64, C-contiguous;
    x: (M, C) same dtype, C-contiguous; out: (N,) same dtype. col_sums: None, or (R,) same
    dtype to receive dy's column sums (the bias gradient of y = x W^T + b), computed from the
    transposed blocks of dy the product reads anyway instead of another pass over dy.
    pair: None, or (indices2, indptr2, x2, out2) of a second matrix W2 (R, C2) of the same rows
    and the same dy (W_x next to W_h of one gate layer): out2 likewise, from the same blocks.
    (A Python entry point choosing the call's form: see 'Entry points in Python'.)
    """
    m, rows = dy.shape
    accumulate = bool(accumulate)
    if pair is None:
        form, cost = _sddmm_form(out.size, m, rows, x), indptr
    else:
        widest = x if x.shape[1] >= pair[2].shape[1] else pair[2]
        form, cost = _sddmm_form(out.size + pair[3].size, m, rows, widest), indptr + pair[1]
    if form == _SERIAL:
        _sddmm_from_x(indices, indptr, dy, x, 0, rows, out, accumulate, col_sums, pair)
    elif form == _OWN_XT:
        _sddmm_own_xt(indices, indptr, dy, x, out, accumulate, col_sums, pair, cost)
    else:
        if pair is not None:
            pair = (pair[0], pair[1], _transposed(pair[2]), pair[3])
        _sddmm_tasks(indices, indptr, dy, _transposed(x), out, accumulate, col_sums, pair, cost)
