"""numba.cuda kernels under the CPU contract (kernels/cpu.py, kernels/cpu_csr.py, dense.gemm).

Every launcher has the CPU kernel's name, argument order and meaning, takes device arrays (numba
DeviceNDArray, or anything with ``__cuda_array_interface__`` such as a CuPy array) and runs in
float32 and float64. Read-only inputs may also be NumPy arrays: they are then copied to the
device on every call (convenient in tests, wasteful in a training loop). Outputs must be device
arrays. Launches are asynchronous on the default stream; ``sum_squares`` returns a host float
and therefore synchronises.

Use
---
Import through the backend selection, which imports this module only when a GPU is present or
the simulator is on::

    from sparselm.kernels import get_backend
    be = get_backend("cuda")                 # ConfigError when there is no GPU
    x = be.to_device(x_host)                 # (M, C) float32, C-contiguous
    out = be.empty((M, R), np.float32)
    be.csr_matmul(data, indices, indptr, x, out, False)   # or CSRMatrix.matmul(x): it
    y = be.to_host(out)                      # dispatches here for device arrays

On a real GPU nothing else is needed (numba finds the driver; NVVM comes from the CUDA toolkit
or the ``nvidia-cuda-nvcc-cu12`` wheel via CUDA_HOME). Kernels compile on first use per dtype
and launch shape (a few seconds each). ``compile_all(cc)`` compiles every kernel to PTX without
a GPU (needs NVVM, not a device): a check that the code types and compiles for real hardware,
which the simulator cannot give. Tests run this module under Numba's simulator
(NUMBA_ENABLE_CUDASIM=1, set in tests/conftest.py), which runs every GPU thread as a Python
thread: correct semantics (barriers, shared memory, atomics), no speed, no fast math.

Launch shape
------------
THREADS_PER_BLOCK (a power of two, <= 1024) and MAX_BLOCKS are read at every launch, so tests
set them small (8 threads, 3 blocks) to run the multi-block, grid-stride and boundary paths on
tiny arrays. Element-wise kernels use grid-stride loops over at most MAX_BLOCKS blocks; the
softmax gives each row a block; the GEMM uses square tiles of the largest power of two t with
t * t <= THREADS_PER_BLOCK (16 by default).

Precision
---------
float64 kernels are compiled without fast math (exact to ~1e-15 relative, what the gradient
checks need). float32 kernels of the products, optimiser updates and scatter-add are compiled
with fast math (FMA contraction, flush-to-zero, approximate division and square root: a few
ulp). The LSTM cell and softmax stay accurate in float32 too: CUDA's fast math swaps tanhf for
tanh.approx.f32 (relative error 2^-11, a thousand times the CPU kernels' bound) and expf for an
approximation whose error grows with |x|, and its 'nnan' flag would let a NaN loss vanish. The
accurate expf / tanhf cost little next to the memory traffic of these kernels.
Sums that use atomics (embedding_backward) are not bitwise reproducible from run to run; all
other kernels are deterministic (the softmax's bias gradient is a separate column-sum pass, the
global norm sums fixed per-block partials on the host).

The training step on the device
-------------------------------
model.py, lstm.py, the heads and optim.py call every array operation through a Backend
(kernels/__init__.py): the fused kernels above plus the array operations of the step (copy, mul,
gather, grid_sums, grid_outer_add, col_sum, fill, gemm with transpose flags), whose
CPU versions are in kernels/cpu_arrays.py. With ``--device cuda`` parameters, gradients and
optimiser state are (P,) device buffers with named views, the Workspace allocates here, and a
step sends only the batch's ids and targets, its row weights and the dropout masks (drawn on the
host from the run's generator, so CPU and GPU runs use the same masks and resume exactly) and
brings back the (T*B,) NLL and the gradient norm. Checkpoints are written from host copies.
Dense products run on cuBLAS through CuPy when it is installed (extra "cuda"), otherwise on
the tiled GEMM below.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref

import numpy as np
from numba import cuda

from . import cell

# -- launch configuration ------------------------------------------------------------------------
THREADS_PER_BLOCK = 256  # threads of a 1-D block; a power of two (block reductions halve it)
MAX_BLOCKS = 1024  # grid-stride kernels never launch more blocks than this

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
# float32 constants: they keep float32 arithmetic in float32 (a Python float literal would
# promote it to float64) and are exact in float64, where float32 op float64 gives float64.
# One exception: under the simulator math.exp & co. return Python floats, and
# NumPy 2 rounds float32 + Python float to float32, so a float64 kernel would lose precision
# there. Kernels that combine a constant with such a result take one of their own dtype.
ZERO, ONE = np.float32(0.0), np.float32(1.0)


def threads_per_block() -> int:
    """THREADS_PER_BLOCK, checked: a power of two in [1, 1024]."""
    tpb = int(THREADS_PER_BLOCK)
    if not 1 <= tpb <= 1024 or tpb & (tpb - 1):
        raise ValueError(f"THREADS_PER_BLOCK must be a power of two in [1, 1024], got {tpb}")
    return tpb


def _grid(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n items: at least one block."""
    tpb = threads_per_block()
    return max(1, min(-(-n // tpb), int(MAX_BLOCKS))), tpb


def gemm_tile() -> int:
    """Side of the GEMM's square tile: largest power of two t, t*t <= THREADS_PER_BLOCK, <= 32."""
    return min(32, 1 << (threads_per_block().bit_length() - 1) // 2)


def _pair(pyfunc, fast: bool) -> dict:
    """{float32: kernel, float64: kernel} of one Python function (compiled lazily).

    Fast math only ever applies to the float32 kernel (module docstring, Precision).
    """
    return {_F32: cuda.jit(fastmath=fast)(pyfunc), _F64: cuda.jit(fastmath=False)(pyfunc)}


# -- arrays ---------------------------------------------------------------------------------------
def empty(shape, dtype):
    """Uninitialised C-contiguous device array (the allocation hook CSRMatrix looks for)."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def zeros(shape, dtype):
    out = empty(shape, dtype)
    fill(out, 0.0)
    return out


def to_device(a):
    """A device copy of a host array (C-contiguous); a device array is returned as is."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    return a


def to_host(a) -> np.ndarray:
    """A NumPy copy of a device array (synchronises); a NumPy array is returned as is."""
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _out(a, name: str):
    """An output must live on the device: a host array would be written to a temporary copy."""
    if isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a device array (use to_device / empty), got numpy array")
    return a


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (_F32, _F64):
        raise ValueError(f"CUDA kernels run in float32 or float64, got {dtype}")
    return dtype


def _kernel(table: dict, dtype):
    return table[_check_dtype(dtype)]


def _flat(a):
    """1-D view of a C-contiguous device array."""
    return a.reshape(a.size) if len(a.shape) != 1 else a


# -- fill and column sums -------------------------------------------------------------------------
@cuda.jit
def _fill(a, value):
    for k in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[k] = value


def fill(a, value) -> None:
    """a[...] = value. a: C-contiguous device array, any shape."""
    if a.size:
        flat = _flat(_out(a, "a"))
        _fill[_grid(flat.shape[0])](flat, np.dtype(a.dtype).type(value))


def _col_sum_py(a, out, accumulate):
    n_rows, n_cols = a.shape
    for v in range(cuda.grid(1), n_cols, cuda.gridsize(1)):
        acc = ZERO
        for n in range(n_rows):  # adjacent threads read adjacent columns: coalesced
            acc += a[n, v]
        out[v] = out[v] + acc if accumulate else acc


_COL_SUM = _pair(_col_sum_py, fast=True)


def col_sum(a, out, accumulate=False) -> None:
    """out (V,) = a.sum(axis=0) (or += when accumulate); a: (N, V) device, same dtype.

    Deterministic (one thread per column, rows in order): the bias gradients use it.
    """
    if out.shape[0]:
        _kernel(_COL_SUM, a.dtype)[_grid(out.shape[0])](to_device(a), _out(out, "out"), accumulate)


# -- element-wise array operations of the step (contracts: kernels/cpu_arrays.py) --------------
def _copy_py(dst, src):
    for k in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[k] = src[k]


def _mul_py(a, b, out):
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[k] = a[k] * b[k]


def _gather_py(table, ids, out):
    n, ne = out.shape
    for idx in range(cuda.grid(1), n * ne, cuda.gridsize(1)):
        k = idx // ne
        e = idx - k * ne
        out[k, e] = table[ids[k], e]


def _grid_sums_py(h, rows, cols):
    n, side = rows.shape
    for idx in range(cuda.grid(1), n * side, cuda.gridsize(1)):
        k = idx // side
        i = idx - k * side
        r = ZERO
        c = ZERO
        for j in range(side):
            r += h[k, i * side + j]
            c += h[k, j * side + i]
        rows[k, i] = r
        cols[k, i] = c


def _grid_outer_add_py(drows, dcols, dh):
    n, side = drows.shape
    for idx in range(cuda.grid(1), n * side * side, cuda.gridsize(1)):
        k = idx // (side * side)
        ij = idx - k * side * side
        i = ij // side
        dh[k, ij] = drows[k, i] + dcols[k, ij - i * side]


_COPY = _pair(_copy_py, fast=True)
_MUL = _pair(_mul_py, fast=True)
_GATHER = _pair(_gather_py, fast=True)
_GRID_SUMS = _pair(_grid_sums_py, fast=True)
_GRID_OUTER_ADD = _pair(_grid_outer_add_py, fast=True)


def _same_shape(*arrays) -> None:
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays must have one shape, got {sorted(shapes)}")


def copy(dst, src) -> None:
    """dst[...] = src: device dst, src on device (or host, copied first); C-contiguous."""
    _same_shape(dst, src)
    if dst.size:
        _kernel(_COPY, dst.dtype)[_grid(dst.size)](_flat(_out(dst, "dst")), _flat(to_device(src)))


def mul(a, b, out) -> None:
    """out = a * b element-wise; one shape, C-contiguous; out may be a or b."""
    _same_shape(a, b, out)
    if out.size:
        ins = [_flat(to_device(x)) for x in (a, b)]
        _kernel(_MUL, out.dtype)[_grid(out.size)](*ins, _flat(_out(out, "out")))


def gather(table, ids, out) -> None:
    """out (N, E) = table (V, E)[ids (N,) int32]; ids must be valid rows."""
    if out.size:
        kern = _kernel(_GATHER, out.dtype)
        kern[_grid(out.size)](to_device(table), to_device(ids), _out(out, "out"))


def grid_sums(h, rows, cols) -> None:
    """rows[n, i] = sum_j h[n, i*S+j], cols[n, j] = sum_i h[n, i*S+j]; h (N, S*S), rows and
    cols (N, S). One thread per (n, i) computes both sums of index i."""
    if rows.size:
        kern = _kernel(_GRID_SUMS, rows.dtype)
        kern[_grid(rows.size)](to_device(h), _out(rows, "rows"), _out(cols, "cols"))


def grid_outer_add(drows, dcols, dh) -> None:
    """dh[n, i*S + j] = drows[n, i] + dcols[n, j]; drows, dcols (N, S), dh (N, S*S)."""
    if dh.size:
        ins = [to_device(a) for a in (drows, dcols)]
        _kernel(_GRID_OUTER_ADD, dh.dtype)[_grid(dh.size)](*ins, _out(dh, "dh"))


# -- block reductions (blockDim.x must be a power of two) -----------------------------------------
@cuda.jit(device=True)
def _block_sum(buf, val):
    """Sum of val over the block; every thread gets it. buf: shared (blockDim.x,)."""
    t = cuda.threadIdx.x
    buf[t] = val
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # nobody overwrites buf (next reduction) before all have read buf[0]
    return total


@cuda.jit(device=True)
def _block_max(buf, val):
    """Max of val over the block; every thread gets it. buf: shared (blockDim.x,)."""
    t = cuda.threadIdx.x
    buf[t] = val
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s and buf[t + s] > buf[t]:
            buf[t] = buf[t + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


# -- LSTM cell ------------------------------------------------------------------------------------
# The cell's algebra is shared with the CPU backend (kernels/cell.py); only the loop differs.
_cell_state = cuda.jit(device=True)(cell.cell_state)
_cell_write_unit = cuda.jit(device=True)(cell.cell_write_unit)
_cell_backward_unit = cuda.jit(device=True)(cell.cell_backward_unit)


@functools.cache
def _lstm_forward_kernel(dtype: np.dtype):
    """The forward kernel of one dtype: its constant 1 has that dtype (see ZERO, ONE)."""
    one = dtype.type(1.0)

    @cuda.jit(device=True)
    def sigmoid(x):
        # 1 / (1 + e^-x): accurate in both tails (0.5 + 0.5 tanh(x/2) cancels for x << 0)
        return one / (one + math.exp(-x))

    @cuda.jit(fastmath=False)  # accurate tanhf / expf in float32 too (Precision)
    def lstm_forward(gx, r, bias, c_prev, gates, c, tanh_c, h):
        nb, ng = gx.shape
        nh = ng // 4
        for idx in range(cuda.grid(1), nb * nh, cuda.gridsize(1)):
            b = idx // nh
            j = idx - b * nh
            i = sigmoid(gx[b, j] + r[b, j] + bias[j])
            f = sigmoid(gx[b, nh + j] + r[b, nh + j] + bias[nh + j])
            g = math.tanh(gx[b, 2 * nh + j] + r[b, 2 * nh + j] + bias[2 * nh + j])
            o = sigmoid(gx[b, 3 * nh + j] + r[b, 3 * nh + j] + bias[3 * nh + j])
            cc = _cell_state(i, f, g, c_prev[b, j])
            _cell_write_unit(gates, c, tanh_c, h, b, j, nh, i, f, g, o, cc, math.tanh(cc))

    return lstm_forward


def _lstm_backward_py(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev):
    nb, ng = gates.shape
    nh = ng // 4
    for idx in range(cuda.grid(1), nb * nh, cuda.gridsize(1)):
        b = idx // nh
        j = idx - b * nh
        _cell_backward_unit(
            dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev, b, j, nh, ONE
        )


_LSTM_BACKWARD = _pair(_lstm_backward_py, fast=True)  # no transcendental functions


def lstm_cell_forward(gx, r, bias, c_prev, gates, c, tanh_c, h) -> None:
    """One LSTM step, gate order i, f, g, o (as kernels.cpu.lstm_cell_forward).

    gx, r: (B, G) pre-activations and bias: (G,) (summed here); c_prev: (B, H). Writes gates
    (B, G) activated, c, tanh_c, h: (B, H). All device arrays of one dtype; one thread per (b, j).
    """
    nb, ng = gx.shape
    if nb * ng:
        ins = [to_device(a) for a in (gx, r, bias, c_prev)]
        outs = [_out(a, "output") for a in (gates, c, tanh_c, h)]
        _lstm_forward_kernel(_check_dtype(gx.dtype))[_grid(nb * ng // 4)](*ins, *outs)


def lstm_cell_backward(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev) -> None:
    """Backward of one LSTM step (as kernels.cpu.lstm_cell_backward).

    dh_out, dh_rec, dc: (B, H); gates (B, G), c_prev, tanh_c (B, H) from the forward.
    Writes dgates: (B, G) gradient of the pre-activations, dc_prev: (B, H).
    """
    nb, ng = gates.shape
    if nb * ng:
        ins = [to_device(a) for a in (dh_out, dh_rec, dc, gates, c_prev, tanh_c)]
        kern = _kernel(_LSTM_BACKWARD, gates.dtype)
        kern[_grid(nb * ng // 4)](*ins, _out(dgates, "dgates"), _out(dc_prev, "dc_prev"))


# -- softmax cross-entropy ------------------------------------------------------------------------
@functools.cache
def _softmax_kernel(dtype: np.dtype, tpb: int):
    """Kernel for one dtype and block size (the shared buffer's size is a compile-time constant)."""
    scalar = dtype.type
    zero = scalar(0.0)  # typed (see ZERO, ONE): math.exp's results are added to it

    @cuda.jit(fastmath=False)
    def softmax_rows(logits, bias, targets, weights, nll, grad):
        buf = cuda.shared.array(tpb, scalar)
        n_rows, n_vocab = logits.shape
        t = cuda.threadIdx.x
        for n in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):  # a block per row
            row = logits[n]
            m = row[0] + bias[0]
            for v in range(t, n_vocab, tpb):
                z = row[v] + bias[v]
                if z > m:  # (not max(): numba.cuda mistypes it in device code)
                    m = z
            shift = _block_max(buf, m)
            s = zero
            for v in range(t, n_vocab, tpb):
                s += math.exp(row[v] + bias[v] - shift)
            total = _block_sum(buf, s)
            target = targets[n]
            if t == 0:
                z_target = row[target] + bias[target]  # rounded as the shift was
                nll[n] = math.log(float(total)) + float(shift) - float(z_target)
            if grad:
                cuda.syncthreads()  # row[target] is read above before anyone rewrites it
                w = weights[n]
                scale = w / total
                for v in range(t, n_vocab, tpb):
                    d = math.exp(row[v] + bias[v] - shift) * scale
                    row[v] = d - w if v == target else d

    return softmax_rows


def softmax_xent(logits, bias, targets, weights, nll, dbias, grad) -> None:
    """Fused log-softmax, NLL and d(logits) in place (as kernels.cpu.softmax_xent).

    logits: (N, V) float device array, h W^T without the bias; bias: (V,), added on the fly;
    targets: (N,) int32; weights: (N,) float, each row's factor in the differentiated loss.
    Writes nll: (N,) float64, -log softmax(logits + bias)[target]. If grad: logits <-
    weights[n] * (softmax(logits[n] + bias) - onehot) and dbias: (V,) += its column sums (a
    second, deterministic pass). Unlike the CPU kernel, logits are left unchanged when not grad.
    A block per row: max and sum are block reductions in shared memory.
    """
    n_rows, n_vocab = logits.shape
    if n_rows == 0:
        return
    dtype = _check_dtype(logits.dtype)
    tpb = threads_per_block()
    blocks = max(1, min(n_rows, int(MAX_BLOCKS)))
    kern = _softmax_kernel(dtype, tpb)
    kern[blocks, tpb](
        _out(logits, "logits"),
        to_device(bias),
        to_device(targets),
        to_device(weights),
        _out(nll, "nll"),
        bool(grad),
    )
    if grad:
        col_sum(logits, dbias, accumulate=True)


# -- embedding ------------------------------------------------------------------------------------
def _embedding_backward_py(ids, dx, dweight):
    n, ne = dx.shape
    for idx in range(cuda.grid(1), n * ne, cuda.gridsize(1)):
        k = idx // ne
        e = idx - k * ne
        # rows repeat (a word occurs many times in a batch): concurrent adds need atomics
        cuda.atomic.add(dweight, (int(ids[k]), e), dx[k, e])


_EMBEDDING_BACKWARD = _pair(_embedding_backward_py, fast=True)


def embedding_backward(ids, dx, dweight) -> None:
    """dweight[ids[n]] += dx[n]. ids: (N,) int32; dx: (N, E); dweight: (V, E) device.

    One thread per element with atomic adds (float64 atomics need compute capability >= 6.0).
    """
    if dx.shape[0] * dx.shape[1]:
        kern = _kernel(_EMBEDDING_BACKWARD, dx.dtype)
        ins = [to_device(a) for a in (ids, dx)]
        kern[_grid(dx.shape[0] * dx.shape[1])](*ins, _out(dweight, "dweight"))


# -- optimiser ------------------------------------------------------------------------------------
@functools.cache
def _sum_squares_kernel(tpb: int):
    @cuda.jit(fastmath=False)  # the NaN detector of the step: no fast-math freedoms
    def sum_squares_partial(x, partial):
        buf = cuda.shared.array(tpb, np.float64)
        acc = 0.0
        for k in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = float(x[k])
            acc += v * v
        total = _block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            partial[cuda.blockIdx.x] = total

    return sum_squares_partial


def sum_squares(x) -> float:
    """sum(x**2) in float64 (x: (P,) float32|float64 device array); synchronises.

    Each block writes its partial sum; the few partials are summed on the host, so the result
    is the same on every run (no atomics).
    """
    n = x.shape[0]
    _check_dtype(x.dtype)
    if n == 0:
        return 0.0
    blocks, tpb = _grid(n)
    partial = cuda.device_array(blocks, dtype=np.float64)
    _sum_squares_kernel(tpb)[blocks, tpb](to_device(x), partial)
    return float(partial.copy_to_host().sum())


def _sgd_py(p, g, velocity, lr, scale, momentum, use_momentum):
    for k in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        if use_momentum:
            v = momentum * velocity[k] + scale * g[k]
            velocity[k] = v
            p[k] -= lr * v
        else:
            p[k] -= lr * scale * g[k]


def _adam_py(p, g, m, v, step_size, eps_hat, beta1, beta2, scale):
    for k in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gk = scale * g[k]
        mk = beta1 * m[k] + (ONE - beta1) * gk
        vk = beta2 * v[k] + (ONE - beta2) * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= step_size * mk / (math.sqrt(vk) + eps_hat)


_SGD = _pair(_sgd_py, fast=True)
_ADAM = _pair(_adam_py, fast=True)


def sgd_update(p, g, velocity, lr, scale, momentum) -> None:
    """p -= lr * u, u = scale * g or the velocity v = momentum v + scale g (as the CPU kernel).

    p, g, velocity: (P,) device arrays of one dtype (velocity unused when momentum == 0).
    """
    n = p.shape[0]
    if n:
        t = np.dtype(p.dtype).type  # scalars in the array dtype keep float32 in float32
        _kernel(_SGD, p.dtype)[_grid(n)](
            _out(p, "p"),
            to_device(g),
            _out(velocity, "velocity"),
            t(lr),
            t(scale),
            t(momentum),
            momentum != 0.0,
        )


def adam_update(p, g, m, v, lr, scale, beta1, beta2, eps, step) -> None:
    """Adam with bias correction on scale * g (as kernels.cpu.adam_update); step is 1-based.

    p, g, m, v: (P,) device arrays of one dtype. Bias corrections are folded into the step size
    and epsilon on the host, in float64, exactly as the CPU kernel does.
    """
    n = p.shape[0]
    if n:
        t = np.dtype(p.dtype).type
        step_size = t(lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step))
        eps_hat = t(eps * math.sqrt(1.0 - beta2**step))
        _kernel(_ADAM, p.dtype)[_grid(n)](
            _out(p, "p"),
            to_device(g),
            _out(m, "m"),
            _out(v, "v"),
            step_size,
            eps_hat,
            t(beta1),
            t(beta2),
            t(scale),
        )


# -- CSR products ---------------------------------------------------------------------------------
def _out_index(idx, m_rows, n_out, out_rows):
    """(m, j) of flat output index idx: adjacent threads take adjacent entries of out's rows, so
    stores coalesce in both layouts (out (M, n_out), or (n_out, M) when out_rows)."""
    if out_rows:
        j = idx // m_rows
        return idx - j * m_rows, j
    m = idx // n_out
    return m, idx - m * n_out


_out_index_dev = cuda.jit(device=True)(_out_index)


def _csr_matmul_py(data, indices, indptr, x, out, accumulate, out_rows):
    m_rows = x.shape[0]
    n_out = indptr.shape[0] - 1
    for idx in range(cuda.grid(1), m_rows * n_out, cuda.gridsize(1)):
        m, r = _out_index_dev(idx, m_rows, n_out, out_rows)
        acc = ZERO
        for k in range(indptr[r], indptr[r + 1]):
            acc += data[k] * x[m, indices[k]]
        if out_rows:
            out[r, m] = out[r, m] + acc if accumulate else acc
        else:
            out[m, r] = out[m, r] + acc if accumulate else acc


def _csr_matmul_t_py(data, t_perm, t_indices, t_indptr, dy, out, accumulate, out_rows):
    m_rows = dy.shape[0]
    n_out = t_indptr.shape[0] - 1
    for idx in range(cuda.grid(1), m_rows * n_out, cuda.gridsize(1)):
        m, c = _out_index_dev(idx, m_rows, n_out, out_rows)
        acc = ZERO
        for k in range(t_indptr[c], t_indptr[c + 1]):  # row c of W^T: no atomics needed
            acc += data[t_perm[k]] * dy[m, t_indices[k]]
        if out_rows:
            out[c, m] = out[c, m] + acc if accumulate else acc
        else:
            out[m, c] = out[m, c] + acc if accumulate else acc


@cuda.jit(device=True)
def _row_of(indptr, k):
    """The row holding entry k: the largest r with indptr[r] <= k (empty rows skipped)."""
    lo = 0
    hi = indptr.shape[0] - 1  # invariant: indptr[lo] <= k < indptr[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if indptr[mid] <= k:
            lo = mid
        else:
            hi = mid
    return lo


def _csr_sddmm_py(indices, indptr, dy, x, out, accumulate):
    m_rows = dy.shape[0]
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        r = _row_of(indptr, k)  # log R steps against M multiply-adds below
        col = indices[k]
        acc = ZERO
        for m in range(m_rows):
            acc += dy[m, r] * x[m, col]
        out[k] = out[k] + acc if accumulate else acc


_CSR_MATMUL = _pair(_csr_matmul_py, fast=True)
_CSR_MATMUL_T = _pair(_csr_matmul_t_py, fast=True)
_CSR_SDDMM = _pair(_csr_sddmm_py, fast=True)


def _zero_unless(out, accumulate) -> None:
    """An empty sum: out = 0, or unchanged when accumulating."""
    if not accumulate:
        fill(out, 0.0)


def csr_matmul(data, indices, indptr, x, out, accumulate, out_rows=False) -> None:
    """out (M, R) = x @ W^T (or +=). W (R, C) CSR: data (N,) float, indices (N,), indptr (R+1,)
    int32; x: (M, C), out: (M, R), or (R, M) holding the result transposed when out_rows;
    device arrays of data's dtype. One thread per output entry."""
    n = out.shape[0] * out.shape[1]
    if n == 0 or x.shape[0] == 0:
        _zero_unless(out, accumulate)
        return
    ins = [to_device(a) for a in (data, indices, indptr, x)]
    _kernel(_CSR_MATMUL, x.dtype)[_grid(n)](
        *ins, _out(out, "out"), bool(accumulate), bool(out_rows)
    )


def csr_matmul_t(
    data, t_perm, t_indices, t_indptr, dy, out, accumulate, out_rows=False, pattern=None
) -> None:
    """out (M, C) = dy @ W (or +=) through W^T's pattern: row c of W^T holds entries
    t_indptr[c]:t_indptr[c+1] with row index t_indices[k] of W and value data[t_perm[k]].
    data: (N,) float; t_perm, t_indices: (N,), t_indptr: (C+1,) int32; dy (M, R), out (M, C),
    or (C, M) holding the result transposed when out_rows. pattern (W's own indices, indptr)
    is not needed here: one thread per output entry reads W^T's row."""
    n = out.shape[0] * out.shape[1]
    if n == 0 or dy.shape[0] == 0:
        _zero_unless(out, accumulate)
        return
    ins = [to_device(a) for a in (data, t_perm, t_indices, t_indptr, dy)]
    _kernel(_CSR_MATMUL_T, dy.dtype)[_grid(n)](
        *ins, _out(out, "out"), bool(accumulate), bool(out_rows)
    )


def transposed_view(a):
    """The (R, M) C-contiguous view of an F-contiguous (M, R) device array, for out_rows (the
    hook CSRMatrix looks for). CuPy's and the simulator's .T are views; a Numba device array's
    .T is a copy, so its memory is described anew."""
    gpu_data = getattr(a, "gpu_data", None)
    if gpu_data is None:
        return a.T
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    m, r = a.shape
    item = np.dtype(a.dtype).itemsize
    return DeviceNDArray((r, m), (item * m, item), a.dtype, stream=a.stream, gpu_data=gpu_data)


def csr_sddmm(indices, indptr, dy, x, out, accumulate, col_sums=None, pair=None) -> None:
    """out[k] = sum_m dy[m, row_k] * x[m, col_k] (or +=): the gradient of W's values.

    indices: (N,), indptr: (R+1,) int32; dy: (M, R), x: (M, C), out: (N,) device, one dtype.
    One thread per stored entry; its row is found by binary search in indptr. col_sums: None,
    or (R,) device, overwritten with dy's column sums; pair: None or (indices2, indptr2, x2,
    out2), a second matrix's gradient from the same dy (as kernels.cpu_csr.csr_sddmm).
    """
    if col_sums is not None:
        col_sum(dy, col_sums)
    if pair is not None:
        indices2, indptr2, x2, out2 = pair
        csr_sddmm(indices2, indptr2, dy, x2, out2, accumulate)
    if out.shape[0] == 0:
        return
    if dy.shape[0] == 0:
        _zero_unless(out, accumulate)
        return
    ins = [to_device(a) for a in (indices, indptr, dy, x)]
    kern = _kernel(_CSR_SDDMM, dy.dtype)
    kern[_grid(out.shape[0])](*ins, _out(out, "out"), bool(accumulate))


def csr_lstm_forward(x, w_x, w_h, bias, hs, cs, gates, tanh_c) -> None:
    """The forward recurrence of one CSR layer (as kernels.cpu_lstm.csr_lstm_forward): the
    input projection over all steps at once, then per step one product and one cell kernel
    (the GPU runs each on the whole batch)."""
    steps, nb, ni = x.shape
    ng = bias.shape[0]
    gx = empty((steps, nb, ng), x.dtype)
    (x_data, x_indices, x_indptr), (h_data, h_indices, h_indptr) = w_x, w_h
    csr_matmul(
        x_data, x_indices, x_indptr, x.reshape(steps * nb, ni), gx.reshape(steps * nb, ng), False
    )
    rec = empty((nb, ng), x.dtype)
    for t in range(steps):
        csr_matmul(h_data, h_indices, h_indptr, hs[t], rec, False)
        lstm_cell_forward(gx[t], rec, bias, cs[t], gates[t], cs[t + 1], tanh_c[t], hs[t + 1])


def csr_lstm_backward(
    dout, dh_last, dc_last, gates, cs, tanh_c, w_x_t, w_h_t, dgates, dx, dh0, dc0
) -> None:
    """The backward recurrence (as kernels.cpu_lstm.csr_lstm_backward): a step at a time, then
    dx for all steps at once."""
    steps, nb, nh = dout.shape
    dc = empty((2, nb, nh), dout.dtype)  # ping-pong: dc_t in, dc_{t-1} out
    (hd, hp, hi, hr), (xd, xp, xi, xr) = w_h_t, w_x_t  # W^T: data, t_perm, t_indices, t_indptr
    copy(dh0, dh_last)  # dh0 carries dh^rec from step to step
    copy(dc[steps % 2], dc_last)
    for t in range(steps - 1, -1, -1):
        lstm_cell_backward(
            dout[t], dh0, dc[(t + 1) % 2], gates[t], cs[t], tanh_c[t], dgates[t], dc[t % 2]
        )
        csr_matmul_t(hd, hp, hi, hr, dgates[t], dh0, False)
    copy(dc0, dc[0])
    ni = dx.shape[2]
    csr_matmul_t(
        xd, xp, xi, xr, dgates.reshape(steps * nb, 4 * nh), dx.reshape(steps * nb, ni), False
    )


# Device copies of CSR patterns, keyed by the host `indices` array they were made from (shared
# by every CSRMatrix.with_data of one pattern) and dropped when that array is freed.
_PATTERNS: dict[int, tuple] = {}


def csr_pattern(matrix):
    """Device copies (indices, indptr, t_indices, t_indptr, t_perm) of a CSRMatrix's pattern,
    made once per pattern (the hook CSRMatrix calls so that no pattern is copied per product)."""
    key = id(matrix.indices)
    hit = _PATTERNS.get(key)
    if hit is None or hit[0]() is not matrix.indices:
        arrays = tuple(
            to_device(a)
            for a in (
                matrix.indices,
                matrix.indptr,
                matrix.t_indices,
                matrix.t_indptr,
                matrix.t_perm,
            )
        )
        hit = (weakref.ref(matrix.indices), arrays)
        _PATTERNS[key] = hit
        weakref.finalize(matrix.indices, _PATTERNS.pop, key, None)
    return hit[1]


# -- dense GEMM -----------------------------------------------------------------------------------
@functools.cache
def _gemm_kernel(dtype: np.dtype, tile: int):
    """Tiled GEMM for one dtype and tile side (shared tiles are compile-time sized)."""
    scalar = dtype.type
    padded = tile + 1  # a closure constant: shared shapes must be literal at compile time

    @cuda.jit(fastmath=dtype == _F32)
    def gemm_tiles(a, b, out, accumulate, trans_a, trans_b):
        # tiles padded by one column so transposed stores hit distinct shared-memory banks
        sa = cuda.shared.array((tile, padded), scalar)  # sa[i, kk] = op(a)[row0+i, k0+kk]
        sb = cuda.shared.array((tile, padded), scalar)  # sb[kk, j] = op(b)[k0+kk, col0+j]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row0 = cuda.blockIdx.y * tile
        col0 = cuda.blockIdx.x * tile
        m, n = out.shape
        kdim = a.shape[0] if trans_a else a.shape[1]
        acc = ZERO
        for k0 in range(0, kdim, tile):
            # every global read runs along tx (the fastest-varying index of the stored array)
            if trans_a:  # a stored (K, M)
                ok = k0 + ty < kdim and row0 + tx < m
                sa[tx, ty] = a[k0 + ty, row0 + tx] if ok else ZERO
            else:
                ok = row0 + ty < m and k0 + tx < kdim
                sa[ty, tx] = a[row0 + ty, k0 + tx] if ok else ZERO
            if trans_b:  # b stored (N, K)
                ok = col0 + ty < n and k0 + tx < kdim
                sb[tx, ty] = b[col0 + ty, k0 + tx] if ok else ZERO
            else:
                ok = k0 + ty < kdim and col0 + tx < n
                sb[ty, tx] = b[k0 + ty, col0 + tx] if ok else ZERO
            cuda.syncthreads()
            for kk in range(tile):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        row = row0 + ty
        col = col0 + tx
        if row < m and col < n:
            out[row, col] = out[row, col] + acc if accumulate else acc

    return gemm_tiles


def gemm(a, b, out, accumulate=False, trans_a=False, trans_b=False):
    """out (M, N) = op(a) @ op(b) (+ out when accumulate); op(a) = a.T if trans_a, else a.

    a: (M, K), or (K, M) when trans_a; b: (K, N), or (N, K) when trans_b; out: (M, N)
    C-contiguous; device arrays of one dtype. The flags replace ``.T`` views, which a
    DeviceNDArray cannot give without a copy. Runs on cuBLAS through CuPy when it is installed
    (cupy_module), and on the tiled kernel below otherwise. Returns out.
    """
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    a_rows = a.shape[1] if trans_a else a.shape[0]
    b_k, b_n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if a_rows != m or b_n != n or b_k != k:
        raise ValueError(
            f"gemm shapes do not match: op(a) ({a_rows}, {k}) @ op(b) "
            f"({b_k}, {b_n}) -> out {tuple(out.shape)}"
        )
    if m == 0 or n == 0:
        return out
    if k == 0:
        _zero_unless(out, accumulate)
        return out
    blas = cupy_module()
    if blas is not None:
        return _cublas_gemm(blas, a, b, out, accumulate, trans_a, trans_b)
    tile = gemm_tile()
    grid = (-(-n // tile), -(-m // tile))
    kern = _gemm_kernel(_check_dtype(out.dtype), tile)
    kern[grid, (tile, tile)](
        to_device(a), to_device(b), _out(out, "out"), bool(accumulate), bool(trans_a), bool(trans_b)
    )
    return out


_CUPY: list = []  # [module or None], filled on first use


def cupy_module():
    """CuPy (cuBLAS) when it is installed (extra "cuda") and a real GPU is in use; else None.

    Under the simulator there is no device memory for cuBLAS to work on, so the tiled kernel
    runs. Tests may set _CUPY[:] = [module] to route products through a stand-in.
    """
    if not _CUPY:
        module = None
        from ..device import simulator_enabled

        if not simulator_enabled():
            try:
                import cupy as module
            except Exception:  # not installed, or no usable CUDA runtime for it
                module = None
        _CUPY.append(module)
    return _CUPY[0]


def _cublas_gemm(cp, a, b, out, accumulate, trans_a, trans_b):
    """gemm through CuPy's matmul (cuBLAS) on the arrays' own memory: cp.asarray wraps a
    numba device array through __cuda_array_interface__ without copying, and a transposed
    CuPy view is passed to cuBLAS as a transpose flag. Numba and CuPy both launch on the legacy
    default stream, so the product is ordered with the kernels around it."""
    op_a = cp.asarray(to_device(a))
    op_b = cp.asarray(to_device(b))
    op_a, op_b = (op_a.T if trans_a else op_a), (op_b.T if trans_b else op_b)
    target = cp.asarray(out)
    if accumulate:
        target += cp.matmul(op_a, op_b)
    else:
        cp.matmul(op_a, op_b, out=target)
    return out


# -- ahead-of-time compile check ------------------------------------------------------------------
def compile_all(cc=(9, 0)) -> dict:
    """Compile every kernel to PTX for compute capability cc, in float32 and float64.

    Needs NVVM (CUDA toolkit, or the nvidia-cuda-nvcc-cu12 wheel with CUDA_HOME pointing at it)
    but no GPU; not available under the simulator. Returns {name: PTX length}; raises on the
    first kernel that does not type or compile. Run it in a process of its own: the device
    functions stay cached compiled for cc.
    """
    from numba import types as nt

    sizes = {}
    with _pretend_device(cc):
        for dtype in (_F32, _F64):
            for name, (func, sig, fast) in _signatures(dtype, nt).items():
                ptx, _ = cuda.compile_ptx(func, sig, cc=cc, fastmath=fast)
                sizes[f"{name}[{dtype.name}]"] = len(ptx)
    return sizes


def _signatures(dtype, nt) -> dict:
    """{name: (python function, argument types, fast math)} of every kernel for one dtype."""
    f = nt.float32 if dtype == _F32 else nt.float64
    v, mat, i32, b = f[::1], f[:, ::1], nt.int32[::1], nt.boolean
    fast = dtype == _F32
    return {
        "fill": (_fill.py_func, (v, f), False),
        "col_sum": (_col_sum_py, (mat, v, b), fast),
        "copy": (_copy_py, (v, v), fast),
        "mul": (_mul_py, (v, v, v), fast),
        "gather": (_gather_py, (mat, i32, mat), fast),
        "grid_sums": (_grid_sums_py, (mat, mat, mat), fast),
        "grid_outer_add": (_grid_outer_add_py, (mat, mat, mat), fast),
        "lstm_cell_forward": (
            _lstm_forward_kernel(dtype).py_func,
            (mat, mat, v) + (mat,) * 5,
            False,
        ),
        "lstm_cell_backward": (_lstm_backward_py, (mat,) * 8, fast),
        "softmax_xent": (
            _softmax_kernel(dtype, 256).py_func,
            (mat, v, i32, v, nt.float64[::1], b),
            False,
        ),
        "embedding_backward": (_embedding_backward_py, (i32, mat, mat), fast),
        "sum_squares": (_sum_squares_kernel(256).py_func, (v, nt.float64[::1]), False),
        "sgd_update": (_sgd_py, (v, v, v, f, f, f, b), fast),
        "adam_update": (_adam_py, (v, v, v, v) + (f,) * 5, fast),
        "csr_matmul": (_csr_matmul_py, (v, i32, i32, mat, mat, b, b), fast),
        "csr_matmul_t": (_csr_matmul_t_py, (v, i32, i32, i32, mat, mat, b, b), fast),
        "csr_sddmm": (_csr_sddmm_py, (i32, i32, mat, mat, v, b), fast),
        "gemm": (_gemm_kernel(dtype, 16).py_func, (mat, mat, mat, b, b, b), fast),
        "gemm[strided]": (_gemm_kernel(dtype, 16).py_func, (f[:, :], f[:, :], mat, b, b, b), fast),
    }


@contextlib.contextmanager
def _pretend_device(cc):
    """Let device functions compile without a driver: numba asks the current device for its
    compute capability when a kernel calls a cuda.jit(device=True) function."""
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = tuple(cc)

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device
    try:
        yield
    finally:
        dispatcher.get_current_device = saved
