"""CPU kernels for products with a CSR matrix W (R, C): x W^T, dy W and the SDDMM dW.

Raw arrays in, no objects; float32 or float64 (Numba specialises each function per dtype);
index arrays int32. `sparselm.csr.CSRMatrix` validates and calls these.

Layout. Activations arrive batch-major, x (M, C). The fast loop is an axpy over the batch,
out[:, r] += w * x[:, col], which vectorises only if the M values of one column are contiguous.
Each call therefore first copies its dense operand transposed, xt (C, Mp) with Mp = M rounded up
to a whole SIMD register (L lanes: 16 float32, 8 float64) and zero padding; that costs M*C moves
against 2*N*M flops. Rows of the result are built L at a time in a tile (L, Mp) and written back
transposed into out (M, R).

Explicit SIMD. The inner loops are LLVM vector code emitted through Numba intrinsics rather
than loops left to the auto-vectoriser, which here (a) interleaves 4 registers, so any batch
shorter than 4L runs as a scalar remainder loop, (b) re-checks pointer aliasing every time an
inner loop starts, a fixed cost per stored entry, and (c) keeps accumulators in memory. The
intrinsics keep G accumulators in registers over all entries of a row, so each entry costs one
load and one FMA per register. Vectors are 64 bytes; LLVM splits them on machines without
AVX-512.

Parallelism: threads own disjoint ranges of rows of the product's output side (rows of W for
csr_matmul and csr_sddmm, rows of W^T for csr_matmul_t), so there are no write races and no
atomics. Ranges hold about the same number of rows plus non-zeros.

A Numba detail that matters too: an index computed at run time (a[lo + i]) may be negative as
far as Numba knows, so it emits Python's wrap-around test, which blocks vectorisation; plain
loops therefore run over `range(n)` on views.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_VEC_BYTES = 64  # one AVX-512 register
# Row ranges per call: several per thread so work-stealing absorbs uneven rows and noisy cores.
# A constant, because numba.get_num_threads() inside a kernel defeats the on-disk cache.
_MAX_TASKS = 32
_SMALL_WORK = 1 << 16  # below this many multiply-adds a call runs on one thread (no launch)

# ---------------------------------------------------------------------------------------------
# explicit SIMD: intrinsics on flat offsets into C-contiguous arrays, no bounds checks


def _vec_type(context, dtype):
    return ir.VectorType(context.get_value_type(dtype), _VEC_BYTES // (dtype.bitwidth // 8))


def _data(context, builder, arr_type, arr):
    return context.make_array(arr_type)(context, builder, arr).data


def _vec_ptr(builder, base, offset, vty):
    return builder.bitcast(builder.gep(base, [offset], inbounds=True), vty.as_pointer())


def _align(vty):  # only element alignment is guaranteed; unaligned vector moves are cheap
    return 4 if isinstance(vty.element, ir.FloatType) else 8


def _load(builder, base, offset, vty):
    return builder.load(_vec_ptr(builder, base, offset, vty), align=_align(vty))


def _store(builder, value, base, offset, vty):
    builder.store(value, _vec_ptr(builder, base, offset, vty), align=_align(vty))


def _splat(builder, value, vty):
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined), zeros)


def _fma(builder, a, b, c):
    """a * b + c, lane-wise, rounded once (llvmlite's builder.fma takes scalars only)."""
    vty = a.type
    elem = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                        f"llvm.fma.v{vty.count}{elem}")
    return builder.call(fn, [a, b, c])


def _idx(builder, value):
    return builder.sext(value, ir.IntType(64)) if value.type.width < 64 else value


def _make_rows_kernel(n_regs):
    """Intrinsic rows(dst, d_off, vals, cols, lo, hi, src, s_stride, s_off).

    For l < n_regs * L: dst.flat[d_off + l] = sum_{k=lo}^{hi-1} vals[k] * src.flat[cols[k] *
    s_stride + s_off + l]. One row of W times n_regs registers of the transposed operand, the
    accumulators held in registers across all entries of the row.
    """

    @intrinsic
    def rows(typingctx, dst, d_off, vals, cols, lo, hi, src, s_stride, s_off):
        sig = types.void(dst, types.intp, vals, cols, types.intp, types.intp, src, types.intp,
                         types.intp)

        def codegen(context, builder, sig, args):
            vty = _vec_type(context, sig.args[0].dtype)
            pd, pv, pc, ps = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 3, 6))
            d_off, lo, hi, stride, s_off = args[1], args[4], args[5], args[7], args[8]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vty, None))
                    for _ in range(n_regs)]
            with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
                k = builder.add(lo, loop.index)
                v = _splat(builder, builder.load(builder.gep(pv, [k])), vty)
                col = _idx(builder, builder.load(builder.gep(pc, [k])))
                base = builder.add(builder.mul(col, stride), s_off)
                for g, acc in enumerate(accs):
                    x = _load(builder, ps, builder.add(base, ir.Constant(base.type, g * vty.count)), vty)
                    builder.store(_fma(builder, v, x, builder.load(acc)), acc)
            for g, acc in enumerate(accs):
                off = builder.add(d_off, ir.Constant(d_off.type, g * vty.count))
                _store(builder, builder.load(acc), pd, off, vty)
            return context.get_dummy_value()

        return sig, codegen

    return rows


_rows1, _rows2, _rows4 = (_make_rows_kernel(g) for g in (1, 2, 4))


def _hsum(builder, v):
    """Sum of the lanes of v by halving (a fixed order, so results are reproducible)."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), n),
                                                      list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _dots_codegen(n_dots):
    def codegen(context, builder, sig, args):
        vty = _vec_type(context, sig.args[0].dtype)
        pa, pb = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2))
        a_off, b_offs, n_vecs = args[1], args[3:3 + n_dots], args[3 + n_dots]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vty, None)) for _ in b_offs]
        with cgutils.for_range(builder, n_vecs) as loop:
            step = builder.mul(loop.index, ir.Constant(n_vecs.type, vty.count))
            av = _load(builder, pa, builder.add(a_off, step), vty)
            for acc, b_off in zip(accs, b_offs):
                bv = _load(builder, pb, builder.add(b_off, step), vty)
                builder.store(_fma(builder, av, bv, builder.load(acc)), acc)
        sums = [_hsum(builder, builder.load(acc)) for acc in accs]
        return context.make_tuple(builder, sig.return_type, sums)

    return codegen


@intrinsic
def _dot1(typingctx, a, a_off, b, b_off, n_vecs):
    """(sum_{l < n_vecs*L} a.flat[a_off + l] * b.flat[b_off + l],) as a 1-tuple."""
    i = types.intp
    return types.UniTuple(a.dtype, 1)(a, i, b, i, i), _dots_codegen(1)


@intrinsic
def _dot4(typingctx, a, a_off, b, b_off0, b_off1, b_off2, b_off3, n_vecs):
    """Four such dots sharing the loads of a: one row of dy^T against four rows of x^T."""
    i = types.intp
    return types.UniTuple(a.dtype, 4)(a, i, b, i, i, i, i, i), _dots_codegen(4)




def _make_transpose_kernel(add):
    """Intrinsic block(src, s_off, s_stride, dst, d_off, d_stride): one L x L block.

    dst.flat[d_off + j*d_stride + i] (+)= src.flat[s_off + i*s_stride + j] for i, j < L. The
    block is transposed in registers by log2(L) perfect shuffles: after each, row 2i is the
    interleaved first halves of rows i and i + L/2, row 2i+1 their second halves.
    """

    @intrinsic
    def block(typingctx, src, s_off, s_stride, dst, d_off, d_stride):
        sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

        def codegen(context, builder, sig, args):
            vty = _vec_type(context, sig.args[0].dtype)
            n = vty.count
            ps, pd = _data(context, builder, sig.args[0], args[0]), _data(context, builder, sig.args[3], args[3])
            s_off, s_stride, d_off, d_stride = args[1], args[2], args[4], args[5]
            rows = [_load(builder, ps, builder.add(s_off, builder.mul(s_stride, ir.Constant(s_stride.type, i))), vty)
                    for i in range(n)]
            mask_ty = ir.VectorType(ir.IntType(32), n)
            lo = ir.Constant(mask_ty, [k for j in range(n // 2) for k in (j, n + j)])
            hi = ir.Constant(mask_ty, [k for j in range(n // 2, n) for k in (j, n + j)])
            for _ in range(n.bit_length() - 1):
                new = []
                for i in range(n // 2):
                    new += [builder.shuffle_vector(rows[i], rows[i + n // 2], lo),
                            builder.shuffle_vector(rows[i], rows[i + n // 2], hi)]
                rows = new
            for j, row in enumerate(rows):
                off = builder.add(d_off, builder.mul(d_stride, ir.Constant(d_stride.type, j)))
                if add:
                    row = builder.fadd(row, _load(builder, pd, off, vty))
                _store(builder, row, pd, off, vty)
            return context.get_dummy_value()

        return sig, codegen

    return block


_transpose_block, _transpose_block_add = _make_transpose_kernel(False), _make_transpose_kernel(True)


# ---------------------------------------------------------------------------------------------
# building blocks (serial; the public kernels run them over row ranges in parallel)

_TR_COLS = 64  # columns per transpose task (a multiple of L for both dtypes)


@njit(cache=True)
def _lanes(a):
    """L, the SIMD lanes of a's dtype."""
    return _VEC_BYTES // a.itemsize


@njit(cache=True)
def _alloc_transposed(a):
    """Uninitialised (S, Mp) for a (M, S): Mp = M rounded up to a multiple of L."""
    lanes = _lanes(a)
    return np.empty((a.shape[1], (a.shape[0] + lanes - 1) // lanes * lanes), dtype=a.dtype)


@njit(cache=True)
def _transpose_cols(a, at, s0, s1):
    """at[s, j] = a[j, s] for s0 <= s < s1, zero for M <= j < Mp. s0: a multiple of L.

    a: (M, S) float, C-contiguous; at: (S, Mp) same dtype.
    """
    m, n_cols = a.shape
    mp = at.shape[1]
    lanes = _lanes(a)
    s_full = s0 + (s1 - s0) // lanes * lanes
    m_full = m // lanes * lanes
    for sb in range(s0, s_full, lanes):
        for mb in range(0, m_full, lanes):
            _transpose_block(a, mb * n_cols + sb, n_cols, at, sb * mp + mb, mp)
    for j in range(m_full, m):  # rows of a left over from whole blocks
        row = a[j, s0:s_full]
        for t in range(row.size):
            at[s0 + t, j] = row[t]
    for s in range(s_full, s1):  # columns of a left over
        dst = at[s]
        for j in range(m):
            dst[j] = a[j, s]
    for s in range(s0, s1):
        pad = at[s, m:]
        for j in range(pad.size):
            pad[j] = 0


@njit(cache=True)
def _n_col_tasks(n_cols):
    return (n_cols + _TR_COLS - 1) // _TR_COLS


@njit(cache=True)
def _task_bounds(indptr, step):
    """Row boundaries (n_tasks+1,) int64, multiples of step, each range ~equal rows + nnz.

    indptr: (R+1,) int32.
    """
    rows = indptr.size - 1
    n_blocks = (rows + step - 1) // step
    n_tasks = max(1, min(n_blocks, _MAX_TASKS))
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


@njit(cache=True)
def _row_product(dst, d_off, vals, cols, lo, hi, src):
    """dst.flat[d_off:d_off+Mp] = sum_{k=lo}^{hi-1} vals[k] * src[cols[k], :].

    dst: float array, C-contiguous; vals: (N,) float; cols: (N,) int32; src: (S, Mp) float.
    At most 4 accumulator registers per pass over the row's entries.
    """
    lanes = _lanes(src)
    stride = src.shape[1]
    n_regs = stride // lanes
    g = 0
    while g + 4 <= n_regs:
        _rows4(dst, d_off + g * lanes, vals, cols, lo, hi, src, stride, g * lanes)
        g += 4
    if g + 2 <= n_regs:
        _rows2(dst, d_off + g * lanes, vals, cols, lo, hi, src, stride, g * lanes)
        g += 2
    if g < n_regs:
        _rows1(dst, d_off + g * lanes, vals, cols, lo, hi, src, stride, g * lanes)


@njit(cache=True)
def _store_tile(tile, n_rows, out, r0, accumulate):
    """out[j, r0 + i] (+)= tile[i, j] for i < n_rows, j < M.

    tile: (L, Mp) float; out: (M, R) float, C-contiguous. Whole L x L blocks go through
    register transposes; a partial block of rows, and batch rows past the last whole block,
    element by element.
    """
    m, n_out = out.shape
    lanes, mp = tile.shape
    start = 0
    if n_rows == lanes:
        start = m // lanes * lanes
        for mb in range(0, start, lanes):
            if accumulate:
                _transpose_block_add(tile, mb, mp, out, mb * n_out + r0, n_out)
            else:
                _transpose_block(tile, mb, mp, out, mb * n_out + r0, n_out)
    for j in range(start, m):
        seg = out[j, r0:r0 + n_rows]
        for i in range(seg.size):
            seg[i] = seg[i] + tile[i, j] if accumulate else tile[i, j]


@njit(cache=True)
def _spmm_rows(vals, cols, ptr, xt, row_lo, row_hi, out, accumulate):
    """out[:, row_lo:row_hi] (+)= x @ A[row_lo:row_hi]^T for CSR A = (vals, cols, ptr).

    vals: (N,) float; cols: (N,) int32; ptr: (R+1,) int32; xt: (S, Mp) x transposed, padded;
    out: (M, R) float, C-contiguous. row_lo: a multiple of L.
    """
    lanes = _lanes(xt)
    tile = np.empty((lanes, xt.shape[1]), dtype=xt.dtype)
    for r0 in range(row_lo, row_hi, lanes):
        n_rows = min(lanes, row_hi - r0)
        for i in range(n_rows):
            _row_product(tile, i * xt.shape[1], vals, cols, ptr[r0 + i], ptr[r0 + i + 1], xt)
        _store_tile(tile, n_rows, out, r0, accumulate)


@njit(cache=True)
def _sddmm_rows(indices, indptr, dyt, xt, row_lo, row_hi, out, accumulate):
    """out[k] (+)= dot(dyt[row_k], xt[indices[k]]) for the entries of rows row_lo:row_hi.

    indices: (N,) int32; indptr: (R+1,) int32; dyt: (R, Mp) and xt: (C, Mp) transposed and
    zero padded; out: (N,) float.
    """
    mp = xt.shape[1]
    n_vecs = mp // _lanes(xt)
    for r in range(row_lo, row_hi):
        lo, hi = indptr[r], indptr[r + 1]
        cols = indices[lo:hi]
        seg = out[lo:hi]
        k = 0
        while k + 4 <= cols.size:
            sums = _dot4(dyt, r * mp, xt, cols[k] * mp, cols[k + 1] * mp, cols[k + 2] * mp,
                         cols[k + 3] * mp, n_vecs)
            for e in range(4):
                seg[k + e] = seg[k + e] + sums[e] if accumulate else sums[e]
            k += 4
        while k < cols.size:
            (s,) = _dot1(dyt, r * mp, xt, cols[k] * mp, n_vecs)
            seg[k] = seg[k] + s if accumulate else s
            k += 1


# ---------------------------------------------------------------------------------------------
# the kernels


@njit(parallel=True, cache=True)
def csr_matmul(data, indices, indptr, x, out, accumulate):
    """out (M, R) = x @ W^T, or out += x @ W^T when accumulate.

    W (R, C) in CSR: data (N,) float32|float64, indices (N,) int32, indptr (R+1,) int32.
    x: (M, C) same dtype, C-contiguous; out: (M, R) same dtype, C-contiguous.
    """
    xt = _alloc_transposed(x)
    for t in prange(_n_col_tasks(x.shape[1])):
        _transpose_cols(x, xt, t * _TR_COLS, min(x.shape[1], (t + 1) * _TR_COLS))
    bounds = _task_bounds(indptr, _lanes(x))
    for t in prange(bounds.size - 1):
        _spmm_rows(data, indices, indptr, xt, bounds[t], bounds[t + 1], out, accumulate)


@njit(parallel=True, cache=True)
def csr_matmul_t(data, t_perm, t_indices, t_indptr, dy, out, accumulate):
    """out (M, C) = dy @ W, or out += dy @ W when accumulate, without atomics.

    Row c of W^T holds entries k in t_indptr[c]:t_indptr[c+1] with row index t_indices[k] of W
    and value data[t_perm[k]]. data: (N,) float32|float64; t_perm, t_indices: (N,) int32;
    t_indptr: (C+1,) int32; dy: (M, R) same dtype, C-contiguous; out: (M, C) likewise.
    """
    t_data = np.empty(t_perm.size, dtype=data.dtype)
    for k in prange(t_perm.size):
        t_data[k] = data[t_perm[k]]
    dyt = _alloc_transposed(dy)
    for t in prange(_n_col_tasks(dy.shape[1])):
        _transpose_cols(dy, dyt, t * _TR_COLS, min(dy.shape[1], (t + 1) * _TR_COLS))
    bounds = _task_bounds(t_indptr, _lanes(dy))
    for t in prange(bounds.size - 1):
        _spmm_rows(t_data, t_indices, t_indptr, dyt, bounds[t], bounds[t + 1], out, accumulate)


@njit(parallel=True, cache=True)
def csr_sddmm(indices, indptr, dy, x, out, accumulate):
    """out[k] = sum_m dy[m, row_k] * x[m, col_k] for every stored entry k (or += when accumulate).

    The gradient of a loss through y = x @ W^T with respect to W's stored values.
    indices: (N,) int32; indptr: (R+1,) int32; dy: (M, R) float32|float64, C-contiguous;
    x: (M, C) same dtype, C-contiguous; out: (N,) same dtype.
    """
    xt = _alloc_transposed(x)
    dyt = _alloc_transposed(dy)
    n_x = _n_col_tasks(x.shape[1])
    for t in prange(n_x + _n_col_tasks(dy.shape[1])):
        if t < n_x:
            _transpose_cols(x, xt, t * _TR_COLS, min(x.shape[1], (t + 1) * _TR_COLS))
        else:
            s0 = (t - n_x) * _TR_COLS
            _transpose_cols(dy, dyt, s0, min(dy.shape[1], s0 + _TR_COLS))
    bounds = _task_bounds(indptr, 1)
    for t in prange(bounds.size - 1):
        _sddmm_rows(indices, indptr, dyt, xt, bounds[t], bounds[t + 1], out, accumulate)
