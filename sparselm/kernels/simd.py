"""Explicit SIMD for the CPU kernels: LLVM vector code emitted through Numba intrinsics.

Numba's auto-vectoriser leaves some loops scalar that matter here: float max-reductions (LLVM
vectorises them only under 'no NaNs', which the kernels do not assume, so that a NaN loss stays
visible), and loops whose accumulators it keeps in memory (see kernels/cpu_csr.py). These helpers
build vector code directly. Vectors are VEC_BYTES wide (one AVX-512 register: 16 float32 or
8 float64 lanes); LLVM splits them on machines without AVX-512.

The intrinsics work on flat element offsets into C-contiguous arrays and do no bounds checks:
callers pass valid offsets.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

VEC_BYTES = 64
I32 = ir.IntType(32)


@njit(cache=True, inline="always")
def lanes(a):
    """L, the SIMD lanes of a's dtype."""
    return VEC_BYTES // a.itemsize


@njit(cache=True, inline="always")
def aligned_empty(rows, cols, like):
    """Uninitialised (rows, cols) C-contiguous array of like's dtype starting on a VEC_BYTES
    boundary (NumPy and Numba align to 16 or 32 bytes). With rows of a whole number of
    vectors, every vector load then touches one cache line instead of two: 1.4-1.55x on the
    CSR row kernels (docs/PERFORMANCE.md)."""
    lanes = VEC_BYTES // like.itemsize
    buf = np.empty(rows * cols + lanes, like.dtype)
    skip = (VEC_BYTES - buf.ctypes.data % VEC_BYTES) % VEC_BYTES // like.itemsize
    return buf[skip : skip + rows * cols].reshape((rows, cols))


def vec_type(context, dtype):
    return ir.VectorType(context.get_value_type(dtype), VEC_BYTES // (dtype.bitwidth // 8))


def data_ptr(context, builder, sig, args, i):
    """Data pointer of array argument i."""
    return context.make_array(sig.args[i])(context, builder, args[i]).data


def plus(builder, value, n):
    return builder.add(value, ir.Constant(value.type, n))


def times(builder, value, n):
    return builder.mul(value, ir.Constant(value.type, n))


def _vec_ptr(builder, base, offset, vty):
    return builder.bitcast(builder.gep(base, [offset], inbounds=True), vty.as_pointer())


def _align(vty):  # only element alignment is guaranteed; unaligned vector moves are cheap
    return 4 if isinstance(vty.element, ir.FloatType) else 8


def load(builder, base, offset, vty):
    return builder.load(_vec_ptr(builder, base, offset, vty), align=_align(vty))


def store(builder, value, base, offset, vty):
    builder.store(value, _vec_ptr(builder, base, offset, vty), align=_align(vty))


def lane_mask(builder, n_valid, vty):
    """<L x i1>: lane l set when l < n_valid (an integer value; any value, negative included)."""
    ity = ir.VectorType(n_valid.type, vty.count)
    limit = builder.insert_element(ir.Constant(ity, ir.Undefined), n_valid, ir.Constant(I32, 0))
    limit = builder.shuffle_vector(
        limit, limit, ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count)
    )
    return builder.icmp_signed("<", ir.Constant(ity, list(range(vty.count))), limit)


def _masked_intrinsic(builder, vty, kind):
    elem = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
    mask = ir.VectorType(ir.IntType(1), vty.count)
    ptr = vty.as_pointer()
    fnty = (
        ir.FunctionType(vty, [ptr, I32, mask, vty])
        if kind == "load"
        else ir.FunctionType(ir.VoidType(), [vty, ptr, I32, mask])
    )
    return cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.masked.{kind}.v{vty.count}{elem}.p0"
    )


def masked_load(builder, base, offset, vty, mask):
    """The lanes of mask loaded, zero elsewhere; nothing outside them is read."""
    fn = _masked_intrinsic(builder, vty, "load")
    return builder.call(
        fn,
        [
            _vec_ptr(builder, base, offset, vty),
            ir.Constant(I32, _align(vty)),
            mask,
            ir.Constant(vty, None),
        ],
    )


def masked_store(builder, value, base, offset, vty, mask):
    """Stores the lanes of mask only; memory outside them is not touched."""
    fn = _masked_intrinsic(builder, vty, "store")
    builder.call(
        fn, [value, _vec_ptr(builder, base, offset, vty), ir.Constant(I32, _align(vty)), mask]
    )


def shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(lanes)), lanes))


def splat(builder, value, vty):
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(I32, 0))
    return shuffle(builder, one, one, [0] * vty.count)


def fma(builder, a, b, c):
    """a * b + c, lane-wise, rounded once (llvmlite's builder.fma takes scalars only)."""
    vty = a.type
    elem = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{vty.count}{elem}"
    )
    return builder.call(fn, [a, b, c])


def vmax(builder, a, b):
    """Lane-wise a if a > b else b: a NaN in a is skipped, one in b is kept."""
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _reduce(builder, v, combine):
    """combine over the lanes of v by halving (a fixed order, so results are reproducible)."""
    n = v.type.count
    while n > 1:
        n //= 2
        v = combine(
            builder,
            shuffle(builder, v, v, list(range(n))),
            shuffle(builder, v, v, list(range(n, 2 * n))),
        )
    return builder.extract_element(v, ir.Constant(I32, 0))


def hsum(builder, v):
    """Sum of the lanes of v."""
    return _reduce(builder, v, lambda b, x, y: b.fadd(x, y))


def hsum4(builder, vs):
    """The lane sums of four vectors (a list of 4 scalars), sharing the shuffles: after the
    first two levels the four partial sums sit side by side in one vector, which the last
    levels fold together. For L = 16: 8 shuffles and 5 adds, against 16 and 16 for four
    separate reductions."""
    n = vs[0].type.count
    halves = (
        list(range(n // 2)) + [n + i for i in range(n // 2)],
        list(range(n // 2, n)) + [n + i for i in range(n // 2, n)],
    )
    # [a|b] and [c|d]: a's lanes folded to n/2 beside b's, likewise c and d
    ab, cd = (
        builder.fadd(shuffle(builder, x, y, halves[0]), shuffle(builder, x, y, halves[1]))
        for x, y in ((vs[0], vs[1]), (vs[2], vs[3]))
    )
    q = n // 4  # then four groups of n/4: [a|b|c|d]
    lo = [g * 2 * q + i for g in range(2) for i in range(q)]
    lo = lo + [n + j for j in lo]
    v = builder.fadd(shuffle(builder, ab, cd, lo), shuffle(builder, ab, cd, [j + q for j in lo]))
    g = q
    while g > 1:  # fold each group onto its first lane
        g //= 2
        v = builder.fadd(
            v, shuffle(builder, v, v, [i + g if i % (2 * g) < g else i for i in range(n)])
        )
    return [builder.extract_element(v, ir.Constant(I32, k * q)) for k in range(4)]


_MAX_REGS = 4  # independent accumulators: enough to hide the compare-select latency


@intrinsic
def max_of_sum(typingctx, a, b, n_vecs):
    """max over l < n_vecs*L of a[l] + b[l] (a, b: C-contiguous, one float dtype).

    An element whose sum is NaN is skipped; -inf when there is none.
    """

    def codegen(context, builder, sig, args):
        vty = vec_type(context, sig.args[0].dtype)
        pa, pb = data_ptr(context, builder, sig, args, 0), data_ptr(context, builder, sig, args, 1)
        n_vecs = args[2]

        def summed(vec):  # a[vec*L:(vec+1)*L] + b[...]
            off = times(builder, vec, vty.count)
            return builder.fadd(load(builder, pa, off, vty), load(builder, pb, off, vty))

        # start from -inf, not from the first vector: a NaN lane would stick (NaN > x is false)
        lowest = splat(builder, ir.Constant(vty.element, float("-inf")), vty)
        accs = [cgutils.alloca_once_value(builder, lowest) for _ in range(_MAX_REGS)]
        n_blocks = builder.udiv(n_vecs, ir.Constant(n_vecs.type, _MAX_REGS))
        with cgutils.for_range(builder, n_blocks) as loop:
            for g, acc in enumerate(accs):
                x = summed(plus(builder, times(builder, loop.index, _MAX_REGS), g))
                builder.store(vmax(builder, x, builder.load(acc)), acc)
        done = times(builder, n_blocks, _MAX_REGS)
        with cgutils.for_range(builder, builder.sub(n_vecs, done)) as loop:
            x = summed(builder.add(done, loop.index))
            builder.store(vmax(builder, x, builder.load(accs[0])), accs[0])
        v = builder.load(accs[0])
        for acc in accs[1:]:
            v = vmax(builder, v, builder.load(acc))
        return _reduce(builder, v, vmax)

    return a.dtype(a, b, types.intp), codegen
