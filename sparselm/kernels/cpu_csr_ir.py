"""The LLVM IR generators of the CPU CSR kernels (kernels/cpu_csr.py): Numba intrinsics that
emit explicit SIMD loops over the stored entries of a run of CSR rows.

Each factory takes the number of vector registers a batch row spans (fixed and fully unrolled,
or 0 for a loop) and returns an intrinsic; cpu_csr's loops call one intrinsic per loop, chosen
before the loop (see 'One intrinsic per loop' there). The intrinsics work on flat element
offsets into C-contiguous arrays and do no bounds checks: callers pass valid patterns
(CSRMatrix validates them once). Vector helpers (loads, FMAs, shuffles, horizontal sums) are
kernels/simd.py's. Numba's on-disk cache watches only the file of each compiled function: after
editing this file, clear sparselm/kernels/__pycache__ so that cpu_csr's kernels are rebuilt.

  rows1, rows2, rows4         spmm_rows' tile: sum_k v_k * src[cols[k]] per row, 1/2/4 registers
  scatter1, scatter2, scatter4  the scatter product of dy @ W into private accumulators
  grads1, grads2, grads_loop  the SDDMM of a run of entries per row (dot products + hsum4)
  transpose_block(_add)       an L x L register transpose (and add) between two arrays
  transpose_into4/8/(any)     the batch edge's transpose of 4, 8 or up to L rows, zero padded
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import (
    data_ptr,
    fma,
    hsum,
    hsum4,
    lane_mask,
    load,
    masked_load,
    masked_store,
    plus,
    shuffle,
    splat,
    store,
    times,
    vec_type,
)


def _stride0(context, builder, sig, args, i):
    """Elements between rows of the 2-D C-contiguous array argument i."""
    arr = context.make_array(sig.args[i])(context, builder, args[i])
    return cgutils.unpack_tuple(builder, arr.shape, 2)[1]


def _load_index(builder, base, k):
    """int32 base[k] widened to the 64-bit offsets used everywhere else."""
    return builder.sext(builder.load(builder.gep(base, [k])), ir.IntType(64))


def _member_arrays(context, builder, tuple_type, value):
    """(data pointer, elements between rows) of each array in a tuple argument."""
    out = []
    for idx, ty in enumerate(tuple_type.types):
        arr = context.make_array(ty)(context, builder, value=builder.extract_value(value, idx))
        shape = cgutils.unpack_tuple(builder, arr.shape, ty.ndim)
        out.append((arr.data, shape[1] if ty.ndim == 2 else None))
    return out


def _make_rows_kernel(n_regs):
    """Intrinsic rows(dst, d_off, vals, perm, cols, ptr, r0, n_rows, src, s_off, second, n_valid,
    accumulate).

    For each row r = r0 + i of a CSR matrix (vals, cols, ptr), i < n_rows, and l < n_regs * L:
    dst.flat[d_off + i * D + l] = sum_{k=ptr[r]}^{ptr[r+1]-1} v_k * src[cols[k], s_off + l],
    with v_k = vals[k], or vals[perm[k]] when perm is an array (W^T's values read in place from
    W's, no permuted copy); dst (.., D) and src (S, Mp) are C-contiguous. The n_regs
    accumulators stay in registers across all entries of a row. second: None, or
    (vals2, cols2, ptr2, src2), a second CSR matrix of the same rows whose row r adds
    sum_k vals2[k] * src2[cols2[k], s_off + l] to the same accumulators (src2 (S2, Mp)).
    n_valid, accumulate: None (whole registers are stored: dst is a padded tile), or an
    integer and a bool: only lanes with s_off + l < n_valid are written (masked stores, so
    dst may be an unpadded output), added to what they hold when accumulate.
    """

    @intrinsic
    def rows(
        typingctx,
        dst,
        d_off,
        vals,
        perm,
        cols,
        ptr,
        r0,
        n_rows,
        src,
        s_off,
        second,
        n_valid,
        accumulate,
    ):
        i = types.intp
        direct = isinstance(perm, types.NoneType)
        paired = not isinstance(second, types.NoneType)
        masked = not isinstance(n_valid, types.NoneType)

        def codegen(context, builder, sig, args):
            vty = vec_type(context, sig.args[0].dtype)
            pd, pv, pc, pr, ps = (data_ptr(context, builder, sig, args, j) for j in (0, 2, 4, 5, 8))
            pp = None if direct else data_ptr(context, builder, sig, args, 3)
            d_off, r0, n_rows, s_off = (args[j] for j in (1, 6, 7, 9))
            d_stride = _stride0(context, builder, sig, args, 0)
            sets = [(pv, pp, pc, pr, ps, _stride0(context, builder, sig, args, 8))]
            if paired:
                (pv2, _), (pc2, _), (pr2, _), (ps2, s2_stride) = _member_arrays(
                    context, builder, sig.args[10], args[10]
                )
                sets.append((pv2, None, pc2, pr2, ps2, s2_stride))
            if masked:
                n_valid = context.cast(builder, args[11], sig.args[11], i)
                left = builder.sub(n_valid, s_off)  # valid lanes from s_off on
                masks = [
                    lane_mask(builder, plus(builder, left, -g * vty.count), vty)
                    for g in range(n_regs)
                ]
            zero = ir.Constant(vty, None)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_regs)]
            with cgutils.for_range(builder, n_rows) as row:
                r = builder.add(r0, row.index)
                for acc in accs:
                    builder.store(zero, acc)
                for qv, qp, qc, qr, qs, q_stride in sets:
                    lo = _load_index(builder, qr, r)
                    hi = _load_index(builder, qr, plus(builder, r, 1))
                    with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
                        k = builder.add(lo, loop.index)
                        kv = k if qp is None else _load_index(builder, qp, k)
                        v = splat(builder, builder.load(builder.gep(qv, [kv])), vty)
                        base = builder.add(
                            builder.mul(_load_index(builder, qc, k), q_stride), s_off
                        )
                        for g, acc in enumerate(accs):
                            x = load(builder, qs, plus(builder, base, g * vty.count), vty)
                            builder.store(fma(builder, v, x, builder.load(acc)), acc)
                out = builder.add(builder.mul(row.index, d_stride), d_off)
                for g, acc in enumerate(accs):
                    at = plus(builder, out, g * vty.count)
                    if not masked:
                        store(builder, builder.load(acc), pd, at, vty)
                        continue
                    with builder.if_then(args[12]):
                        old = masked_load(builder, pd, at, vty, masks[g])
                        builder.store(builder.fadd(builder.load(acc), old), acc)
                    masked_store(builder, builder.load(acc), pd, at, vty, masks[g])
            return context.get_dummy_value()

        return (
            types.void(dst, i, vals, perm, cols, ptr, i, i, src, i, second, n_valid, accumulate),
            codegen,
        )

    return rows


rows1, rows2, rows4 = (_make_rows_kernel(g) for g in (1, 2, 4))


def _make_scatter_kernel(n_regs):
    """Intrinsic scatter(acc, vals, cols, ptr, r0, n_rows, src, off): for each row r = r0 + i
    (i < n_rows) of a CSR matrix (vals, cols, ptr), each entry k of it and l < n_regs * L:
    acc[cols[k], off + l] += vals[k] * src[r, off + l].

    acc (C, Mp) and src (R, Mp) C-contiguous. The row's slice of src stays in registers across
    its entries, and vals and cols are read in storage order: dy @ W from W's own rows
    (src = dy^T), so no value is read through t_perm, a random access per entry.
    """

    @intrinsic
    def scatter(typingctx, acc, vals, cols, ptr, r0, n_rows, src, off):
        i = types.intp

        def codegen(context, builder, sig, args):
            vty = vec_type(context, sig.args[0].dtype)
            pa, pv, pc, pr, ps = (data_ptr(context, builder, sig, args, j) for j in (0, 1, 2, 3, 6))
            r0, n_rows, off = args[4], args[5], args[7]
            stride = _stride0(context, builder, sig, args, 6)
            with cgutils.for_range(builder, n_rows) as row:
                r = builder.add(r0, row.index)
                lo = _load_index(builder, pr, r)
                hi = _load_index(builder, pr, plus(builder, r, 1))
                base = builder.add(builder.mul(r, stride), off)
                xs = [
                    load(builder, ps, plus(builder, base, g * vty.count), vty)
                    for g in range(n_regs)
                ]
                with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
                    k = builder.add(lo, loop.index)
                    v = splat(builder, builder.load(builder.gep(pv, [k])), vty)
                    at = builder.add(builder.mul(_load_index(builder, pc, k), stride), off)
                    for g, x in enumerate(xs):
                        at_g = plus(builder, at, g * vty.count)
                        store(
                            builder, fma(builder, v, x, load(builder, pa, at_g, vty)), pa, at_g, vty
                        )
            return context.get_dummy_value()

        return types.void(acc, vals, cols, ptr, i, i, src, i), codegen

    return scatter


scatter1, scatter2, scatter4 = (_make_scatter_kernel(g) for g in (1, 2, 4))


def _make_grads_kernel(n_regs):
    """Intrinsic grads(blk, xt, indices, starts, s0, ends, e0, n_rows, out, accumulate,
    col_sums, c0): the SDDMM of a run of entries in each of n_rows rows of W from their
    transposed block of dy. For i < n_rows, with lo = starts[s0 + i], hi = ends[e0 + i]:

        out[k] (+)= sum_l blk[i, l] * xt[indices[k], l]   for lo <= k < hi

    blk: (>= n_rows, Mp), xt: (C, Mp), both C-contiguous with zero padding past M; indices:
    (N,) int32; starts, ends: int32 (indptr, r0 and indptr, r0 + 1 for whole rows r0 + i);
    out: (N,). col_sums: None, or (R,): col_sums[c0 + i] = sum_l blk[i, l] (dy of the row
    summed over the batch). Offsets, not array views per block: a view costs reference
    counting. Each row's registers of blk are loaded once for all its entries; entries go
    four at a time with their horizontal sums sharing shuffles
    (simd.hsum4). n_regs: the registers per row when fixed (1 or 2: batches up to 2L, fully
    unrolled; a row's last 2-3 entries share one hsum4 too), 0 for a loop over Mp / L of
    them. The whole row loop is one piece of IR: in Numba code the per-entry indexing,
    wrap-around checks and tuple returns cost as much as the dot products (rows hold 1-12
    entries at the study's densities).
    """

    @intrinsic
    def grads(
        typingctx, blk, xt, indices, starts, s0, ends, e0, n_rows, out, accumulate, col_sums, c0
    ):
        i = types.intp
        with_sums = not isinstance(col_sums, types.NoneType)

        def codegen(context, builder, sig, args):
            vty = vec_type(context, sig.args[0].dtype)
            n = vty.count
            pb, px, pi, p_lo, p_hi, po = (
                data_ptr(context, builder, sig, args, j) for j in (0, 1, 2, 3, 5, 8)
            )
            s0, e0, n_rows, acc_flag, c0 = (args[j] for j in (4, 6, 7, 9, 11))
            mp = _stride0(context, builder, sig, args, 1)
            zero = ir.Constant(vty, None)
            one_i = ir.Constant(mp.type, 1)

            def vectors(a_off, b_offs):
                """[sum over registers g of blk(a_off + gL) * xt(b + gL)] per b in b_offs;
                b = None stands for a vector of ones (the row's own sum)."""

                def term(g_off, b, total):
                    av = load(builder, pb, builder.add(a_off, g_off), vty)
                    if b is None:
                        return av if total is None else builder.fadd(total, av)
                    bv = load(builder, px, builder.add(b, g_off), vty)
                    return builder.fmul(av, bv) if total is None else fma(builder, av, bv, total)

                if n_regs:
                    totals = [None] * len(b_offs)
                    for g in range(n_regs):
                        g_off = ir.Constant(mp.type, g * n)
                        totals = [term(g_off, b, t) for b, t in zip(b_offs, totals)]
                    return totals
                accs = [cgutils.alloca_once_value(builder, zero) for _ in b_offs]
                for acc in accs:
                    builder.store(zero, acc)
                n_vecs = builder.udiv(mp, ir.Constant(mp.type, n))
                with cgutils.for_range(builder, n_vecs) as loop:
                    g_off = times(builder, loop.index, n)
                    for acc, b in zip(accs, b_offs):
                        builder.store(term(g_off, b, builder.load(acc)), acc)
                return [builder.load(acc) for acc in accs]

            def put(k, total, adding):
                at = builder.gep(po, [k])
                builder.store(builder.fadd(builder.load(at), total) if adding else total, at)

            def row_start(row):
                a_off = builder.mul(row.index, mp)
                if with_sums:
                    (total,) = vectors(a_off, [None])
                    sums = data_ptr(context, builder, sig, args, 10)
                    builder.store(
                        hsum(builder, total), builder.gep(sums, [builder.add(c0, row.index)])
                    )
                return (
                    a_off,
                    _load_index(builder, p_lo, builder.add(s0, row.index)),
                    _load_index(builder, p_hi, builder.add(e0, row.index)),
                )

            def b_off(k):
                return builder.mul(_load_index(builder, pi, k), mp)

            def row_loop(adding):  # rows whole or in runs; four entries of a row share
                # each load of the row's dy
                with cgutils.for_range(builder, n_rows) as row:
                    a_off, lo, hi = row_start(row)
                    n4 = builder.ashr(builder.sub(hi, lo), ir.Constant(lo.type, 2))
                    with cgutils.for_range(builder, n4) as quad:
                        ks = [
                            plus(builder, builder.add(lo, times(builder, quad.index, 4)), e)
                            for e in range(4)
                        ]
                        totals = vectors(a_off, [b_off(k) for k in ks])
                        for k, total in zip(ks, hsum4(builder, totals)):
                            put(k, total, adding)
                    done = builder.add(lo, times(builder, n4, 4))
                    left = builder.sub(hi, done)
                    if n_regs:  # the last 2-3 entries in one hsum4, the last one repeated
                        with builder.if_then(builder.icmp_signed("==", left, one_i)):
                            (total,) = vectors(a_off, [b_off(done)])
                            put(done, hsum(builder, total), adding)
                        with builder.if_then(builder.icmp_signed(">", left, one_i)):
                            third = plus(builder, done, 2)  # or the second again
                            three = builder.icmp_signed("<", third, hi)
                            ks = [
                                done,
                                plus(builder, done, 1),
                                builder.select(three, third, plus(builder, done, 1)),
                            ]
                            totals = vectors(a_off, [b_off(k) for k in ks]) + [zero]
                            sums = hsum4(builder, totals)
                            put(ks[0], sums[0], adding)
                            put(ks[1], sums[1], adding)
                            with builder.if_then(three):
                                put(third, sums[2], adding)
                    else:
                        with cgutils.for_range(builder, left) as rest:
                            k = builder.add(done, rest.index)
                            (total,) = vectors(a_off, [b_off(k)])
                            put(k, hsum(builder, total), adding)

            with builder.if_else(acc_flag) as (adding, overwriting):  # the loop twice: no
                with adding:  # test per entry
                    row_loop(True)
                with overwriting:
                    row_loop(False)

            return context.get_dummy_value()

        return (
            types.void(blk, xt, indices, starts, i, ends, i, i, out, accumulate, col_sums, i),
            codegen,
        )

    return grads


grads_loop, grads1, grads2 = (_make_grads_kernel(g) for g in (0, 1, 2))


def _perfect_shuffles(builder, rows):
    """Transposes R vectors of L lanes (R a power of 2, R <= L) by log2(R) perfect shuffles:
    after each, vector 2i holds the interleaved first halves of vectors i and i + R/2, vector
    2i+1 their second halves. At the end vector q holds columns q*L/R .. (q+1)*L/R - 1, each
    as R consecutive lanes (for R = L: vector j is column j)."""
    n, r = rows[0].type.count, len(rows)
    lo = [k for j in range(n // 2) for k in (j, n + j)]
    hi = [k for j in range(n // 2, n) for k in (j, n + j)]
    for _ in range(r.bit_length() - 1):
        pairs = [(rows[i], rows[i + r // 2]) for i in range(r // 2)]
        rows = [shuffle(builder, a, b, m) for a, b in pairs for m in (lo, hi)]
    return rows


def _make_transpose_kernel(add):
    """Intrinsic block(src, s_off, s_stride, dst, d_off, d_stride): one L x L block.

    dst.flat[d_off + j*d_stride + i] (+)= src.flat[s_off + i*s_stride + j] for i, j < L.
    """

    @intrinsic
    def block(typingctx, src, s_off, s_stride, dst, d_off, d_stride):
        i = types.intp

        def codegen(context, builder, sig, args):
            vty = vec_type(context, sig.args[0].dtype)
            ps = data_ptr(context, builder, sig, args, 0)
            pd = data_ptr(context, builder, sig, args, 3)
            s_off, s_stride, d_off, d_stride = args[1], args[2], args[4], args[5]
            rows = _perfect_shuffles(
                builder,
                [
                    load(builder, ps, builder.add(s_off, times(builder, s_stride, r)), vty)
                    for r in range(vty.count)
                ],
            )
            for j, row in enumerate(rows):
                off = builder.add(d_off, times(builder, d_stride, j))
                if add:
                    row = builder.fadd(row, load(builder, pd, off, vty))
                store(builder, row, pd, off, vty)
            return context.get_dummy_value()

        return types.void(src, i, i, dst, i, i), codegen

    return block


def _make_transpose_into_kernel(n_take):
    """Intrinsic into(src, s_off, s_stride, n_src, n_cols, dst, d_off, d_stride): the block of
    n_src <= n_take rows and n_cols <= L columns at src.flat[s_off], transposed into whole
    vectors of dst, zero beyond n_src:

        dst.flat[d_off + j*d_stride + i] = src.flat[s_off + i*s_stride + j] if i < n_src else 0

    for j < n_cols, i < L; nothing is read outside the block (masked loads) and no dst row
    j >= n_cols is written. n_take (4, 8, or None for L; fixed per intrinsic) rows are
    shuffled: a batch edge of 4 rows (M = 20) costs 8 shuffles and 16 extracts instead of a
    full block's 64 shuffles, and the zero lanes are the padding a transposed operand needs.
    """

    @intrinsic
    def into(typingctx, src, s_off, s_stride, n_src, n_cols, dst, d_off, d_stride):
        i = types.intp

        def codegen(context, builder, sig, args):
            vty = vec_type(context, sig.args[0].dtype)
            n = vty.count
            take = n if n_take is None else n_take
            ps, pd = (data_ptr(context, builder, sig, args, k) for k in (0, 5))
            s_off, s_stride, n_src, n_cols, d_off, d_stride = (args[k] for k in (1, 2, 3, 4, 6, 7))
            cols = lane_mask(builder, n_cols, vty)
            zero = ir.Constant(vty, None)
            last = builder.sub(n_src, ir.Constant(n_src.type, 1))
            rows = []
            for r in range(take):  # row r if r < n_src, else zeros (row r not read)
                rc = ir.Constant(n_src.type, r)
                inside = builder.icmp_signed("<", rc, n_src)
                at = builder.add(s_off, builder.mul(s_stride, builder.select(inside, rc, last)))
                rows.append(builder.select(inside, masked_load(builder, ps, at, vty, cols), zero))
            rows = _perfect_shuffles(builder, rows)
            per = n // take  # columns per shuffled vector
            for j in range(n):
                v = rows[j // per]
                if take < n:  # column j's `take` lanes, then zeros
                    first = take * (j % per)
                    v = shuffle(
                        builder, v, zero, [first + t for t in range(take)] + [n] * (n - take)
                    )
                with builder.if_then(builder.icmp_signed("<", ir.Constant(n_cols.type, j), n_cols)):
                    store(builder, v, pd, builder.add(d_off, times(builder, d_stride, j)), vty)
            return context.get_dummy_value()

        return types.void(src, i, i, i, i, dst, i, i), codegen

    return into


transpose_block, transpose_block_add = _make_transpose_kernel(False), _make_transpose_kernel(True)
transpose_into4, transpose_into8, transpose_into = (
    _make_transpose_into_kernel(r) for r in (4, 8, None)
)
