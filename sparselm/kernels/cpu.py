"""Fused CPU kernels of the dense part of the step: LSTM cell, softmax cross-entropy, embedding.

Every kernel takes raw, C-contiguous arrays and runs in float32 and float64. The dtype picks the
transcendental functions at compile time: float64 uses libm (``np.tanh``, ``np.exp``: exact, what
the gradient tests run on), float32 uses the branch-free approximations below, which LLVM
vectorises (this Numba build has no SVML, so libm calls inside a loop stay scalar and dominate).
The approximations' error bounds are stated here and asserted in tests/test_kernels_dense.py.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import cell, simd

# Floating-point freedoms that let LLVM vectorise reductions and fuse multiply-adds. No 'nnan' or
# 'ninf': a NaN loss must stay NaN so the trainer can see it.
FAST = {"nsz", "arcp", "contract", "reassoc"}

# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 7.9 (tanh rounds to +-1 in float32 beyond): a rational
# minimax form (the one Eigen uses for float). Max abs error 4e-7 on float32 inputs.
# Constants are float32 so that float32 inputs stay float32 (a Python float literal would promote
# the whole expression to float64 and halve the vector width); 0.5 and 1 are exact in both dtypes.
_f = np.float32
ONE, HALF = _f(1.0), _f(0.5)
_TANH_CLAMP = _f(7.90531110763549805)
_A1, _A3, _A5 = _f(4.89352455891786e-03), _f(6.37261928875436e-04), _f(1.48572235717979e-05)
_A7, _A9, _A11 = _f(5.12229709037114e-08), _f(-8.60467152213735e-11), _f(2.00018790482477e-13)
_A13 = _f(-2.76076847742355e-16)
_B0, _B2 = _f(4.89352518554385e-03), _f(2.26843463243900e-03)
_B4, _B6 = _f(1.18534705686654e-04), _f(1.19825839466702e-06)


@njit(inline="always", fastmath=FAST)
def tanh_approx(x):
    """tanh(x), |error| <= 4e-7 in float32, branch-free (vectorisable)."""
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = _A13
    p = p * x2 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    return x * p / q


def act_tanh(x):
    """tanh chosen at compile time by dtype: float32 -> tanh_approx, float64 -> libm (exact)."""
    return np.tanh(x)


@overload(act_tanh, inline="always", fastmath=FAST)
def _act_tanh_typed(x):
    # Chosen while typing, not by a runtime flag: LLVM speculates a pure libm call out of a branch
    # and then computes both sides, which makes the "fast" path as slow as the exact one.
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: tanh_approx(x)
    return lambda x: np.tanh(x)


cell_state = njit(inline="always", fastmath=FAST)(cell.cell_state)
cell_write_unit = njit(inline="always", fastmath=FAST)(cell.cell_write_unit)
cell_backward_unit = njit(inline="always", fastmath=FAST)(cell.cell_backward_unit)


@njit(inline="always", fastmath=FAST)
def act_sigmoid(x):
    # sigma(x) = (1 + tanh(x/2)) / 2 exactly; the approximation inherits tanh's bound / 2.
    return HALF + HALF * act_tanh(HALF * x)


def _pre_activation(gx, r, bias, b, rb, col):
    """gx[b, col] + r[rb, col] + bias[col]; gx None: r holds the input part too."""
    return gx[b, col] + r[rb, col] + bias[col]


@overload(_pre_activation, inline="always", fastmath=FAST)
def _pre_activation_typed(gx, r, bias, b, rb, col):
    # chosen while typing (a run-time `is None` test in the loop blocks vectorisation)
    if isinstance(gx, types.NoneType):
        return lambda gx, r, bias, b, rb, col: r[rb, col] + bias[col]
    return lambda gx, r, bias, b, rb, col: gx[b, col] + r[rb, col] + bias[col]


@njit(inline="always", fastmath=FAST)
def cell_forward_row(gx, r, bias, c_prev, gates, c, tanh_c, h, b, rb):
    """Batch row b of lstm_cell_forward, reading its recurrent pre-activations from r[rb]
    (gx None: r[rb] is the whole x W_x^T + h W_h^T)."""
    nh = c.shape[1]
    for j in range(nh):
        i = act_sigmoid(_pre_activation(gx, r, bias, b, rb, j))
        f = act_sigmoid(_pre_activation(gx, r, bias, b, rb, nh + j))
        g = act_tanh(_pre_activation(gx, r, bias, b, rb, 2 * nh + j))
        o = act_sigmoid(_pre_activation(gx, r, bias, b, rb, 3 * nh + j))
        cc = cell_state(i, f, g, c_prev[b, j])
        cell_write_unit(gates, c, tanh_c, h, b, j, nh, i, f, g, o, cc, act_tanh(cc))


@njit(inline="always", fastmath=FAST)
def cell_backward_row(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev, b):
    """Batch row b of lstm_cell_backward."""
    nh = dc.shape[1]
    for j in range(nh):
        cell_backward_unit(
            dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev, b, j, nh, ONE
        )


@njit(parallel=True, cache=True, fastmath=FAST)
def lstm_cell_forward(gx, r, bias, c_prev, gates, c, tanh_c, h):
    """One LSTM step for the whole batch, gate order i, f, g, o.

    gx, r: (B, G) pre-activations from the input and from the recurrence; bias: (G,) (all three
    summed here, so the input projection needs no pass of its own for the bias);
    c_prev: (B, H). Writes gates (B, G) = activated [i, f, g, o], c, tanh_c, h: (B, H).
        i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
        c = f * c_prev + i * g,  h = o * tanh(c)
    """
    for b in prange(gx.shape[0]):
        cell_forward_row(gx, r, bias, c_prev, gates, c, tanh_c, h, b, b)


@njit(parallel=True, cache=True, fastmath=FAST)
def lstm_cell_backward(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev):
    """Backward of one LSTM step (see lstm.lstm_layer_backward for the equations).

    dh_out: (B, H) gradient reaching h_t from above; dh_rec: (B, H) from step t+1;
    dc: (B, H) gradient reaching c_t from step t+1; gates (B, G), c_prev, tanh_c (B, H) from the
    forward. Writes dgates: (B, G) gradient of the pre-activations, dc_prev: (B, H).
    """
    for b in prange(gates.shape[0]):
        cell_backward_row(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev, b)


# exp(x) for x <= 0: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
# (relative error <= 2.2e-8 on that interval) and 2^n built from the float32 exponent bits.
# Relative error <= 3e-7 in float32 (asserted in tests); results below exp(-87) flush to 0.
_LOG2E = _f(1.4426950408889634)
_LN2_HI = _f(0.693359375)  # ln 2 split so that n * _LN2_HI is exact for |n| < 128
_LN2_LO = _f(-2.12194440e-4)
_EXP_FLOOR = _f(-87.0)
_C2, _C3, _C4, _C5, _C6 = _f(1 / 2), _f(1 / 6), _f(1 / 24), _f(1 / 120), _f(1 / 720)
_BIAS, _SHIFT = np.int32(127), np.int32(23)


@njit(inline="always", fastmath=FAST)
def _exp_mantissa(x):
    """Returns (exp(r), n) with x = n ln2 + r; the caller scales by 2^n."""
    x = max(x, _EXP_FLOOR)
    n = np.floor(x * _LOG2E + HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = ONE + r * (ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
    return p, n


@njit(inline="always", fastmath=FAST)
def _row_exp_libm(row, bias, shift, bits):
    total = row[0] * 0  # a zero of the row's dtype
    for v in range(row.shape[0]):
        e = np.exp(row[v] + bias[v] - shift)
        row[v] = e
        total += e
    return total


@njit(inline="always", fastmath=FAST)
def _row_exp_approx(row, bias, shift, bits):
    # Two vectorisable passes: the polynomial and the exponent bits, then their product.
    for v in range(row.shape[0]):
        p, n = _exp_mantissa(row[v] + bias[v] - shift)
        row[v] = p
        bits[v] = (np.int32(n) + _BIAS) << _SHIFT  # the float32 2^n
    scale = bits.view(np.float32)
    total = row[0] * 0
    for v in range(row.shape[0]):
        e = row[v] * scale[v]
        row[v] = e
        total += e
    return total


def row_exp(row, bias, shift, bits):
    """row[v] <- exp(row[v] + bias[v] - shift) in place; returns the sum.

    row, bias: (V,); bits: (V,) int32 scratch. float32 rows use the approximation (relative
    error <= 3e-7), float64 rows libm.
    """
    return _row_exp_libm(row, bias, shift, bits)


@overload(row_exp, inline="always", fastmath=FAST)
def _row_exp_typed(row, bias, shift, bits):
    if row.dtype == types.float32:
        return lambda row, bias, shift, bits: _row_exp_approx(row, bias, shift, bits)
    return lambda row, bias, shift, bits: _row_exp_libm(row, bias, shift, bits)


@njit(inline="always")
def _row_max(row, bias):
    """max_v row[v] + bias[v] (row, bias: (V,) float, V >= 1), NaN sums skipped (a NaN still
    reaches the row's NLL through its exp). Explicit vector code: LLVM leaves a float
    max-reduction scalar unless it may assume there are no NaNs."""
    n_vecs = row.shape[0] // simd.lanes(row)
    shift = simd.max_of_sum(row, bias, n_vecs)
    for v in range(n_vecs * simd.lanes(row), row.shape[0]):
        shift = max(shift, row[v] + bias[v])
    return shift


# Rows are split in at most this many chunks, each with its own bias-gradient partial sum
# (race-free; a constant because get_num_threads() inside a kernel defeats Numba's cache).
_MAX_CHUNKS = 32


@njit(parallel=True, cache=True, fastmath=FAST)
def softmax_xent(logits, bias, targets, weights, nll, dbias, grad):
    """Fused log-softmax, negative log-likelihood and d(loss)/d(logits), in place.

    logits: (N, V) float, h W^T without the bias; bias: (V,), added here on the fly (saves a
    pass over the largest array of the step); targets: (N,) int32; weights: (N,) float, the
    factor of each row in the differentiated loss (0 for padding). Writes nll: (N,) float64,
    -log softmax(logits + bias)[target]. If grad: logits <- weights[n] * (softmax(logits[n] +
    bias) - onehot(target[n])) and dbias: (V,) += the column sums of that gradient. Without grad
    the logits are left holding unnormalised probabilities.
    """
    n_rows, n_vocab = logits.shape
    n_chunks = min(n_rows, _MAX_CHUNKS)
    partial = np.zeros((n_chunks, n_vocab), dtype=logits.dtype)
    for chunk in prange(n_chunks):
        bits = np.empty(n_vocab, dtype=np.int32)
        for n in range(chunk * n_rows // n_chunks, (chunk + 1) * n_rows // n_chunks):
            row = logits[n]
            shift = _row_max(row, bias)
            target_logit = row[targets[n]] + bias[targets[n]]
            total = row_exp(row, bias, shift, bits)
            nll[n] = np.log(total) + shift - target_logit
            if grad:
                scale = weights[n] / total
                acc = partial[chunk]
                for v in range(n_vocab):
                    d = row[v] * scale
                    row[v] = d
                    acc[v] += d
                row[targets[n]] -= weights[n]
                acc[targets[n]] -= weights[n]
    if grad:
        for chunk in range(n_chunks):
            dbias += partial[chunk]


@njit(cache=True)
def embedding_backward(ids, dx, dweight):
    """Scatter-add dx into the embedding gradient: dweight[ids[n]] += dx[n].

    ids: (N,) int32; dx: (N, E); dweight: (V, E). Serial: rows repeat (a word occurs many times in
    a batch), so a parallel loop would race; the work is tiny next to the GEMMs.
    """
    for n in range(ids.shape[0]):
        row = dweight[ids[n]]
        src = dx[n]
        for e in range(src.shape[0]):
            row[e] += src[e]


# -- optimiser over the flat parameter buffer ----------------------------------------------------
_NORM_CHUNKS = 64


@njit(parallel=True, cache=True, fastmath=FAST)
def sum_squares(x):
    """sum(x**2) (x: (P,) float32|float64) for the global gradient norm.

    Each chunk sums in x's dtype (vectorised, many partial sums, so float32 loses only ~1e-7
    relative on a chunk); the chunk totals are added in float64.
    """
    n = x.shape[0]
    partial = np.zeros(_NORM_CHUNKS)
    for chunk in prange(_NORM_CHUNKS):
        # a slice indexed from 0: LLVM can prove the index non-negative and vectorise
        seg = x[chunk * n // _NORM_CHUNKS : (chunk + 1) * n // _NORM_CHUNKS]
        acc = seg.dtype.type(0)
        for k in range(seg.shape[0]):
            acc += seg[k] * seg[k]
        partial[chunk] = acc
    # The chunk totals in a plain loop, in a fixed order: in a parallel function Numba turns
    # partial.sum() into a parallel reduction whose grouping follows the thread schedule, and
    # the norm then varied in its last bit between runs with the same seed.
    total = 0.0
    for chunk in range(_NORM_CHUNKS):
        total += partial[chunk]
    return total


@njit(parallel=True, cache=True, fastmath=FAST)
def sgd_update(p, g, velocity, lr, scale, momentum):
    """p -= lr * u with u = scale * g (plain) or the velocity v = momentum v + scale g.

    p, g, velocity: (P,) same dtype (velocity unused when momentum == 0); scale folds the
    global-norm clip into the update, so the gradient is read once.
    """
    n = p.shape[0]
    lr_t, scale_t, mom_t = p.dtype.type(lr), p.dtype.type(scale), p.dtype.type(momentum)
    if momentum == 0.0:
        for k in prange(n):
            p[k] -= lr_t * scale_t * g[k]
    else:
        for k in prange(n):
            v = mom_t * velocity[k] + scale_t * g[k]
            velocity[k] = v
            p[k] -= lr_t * v


@njit(parallel=True, cache=True, fastmath=FAST)
def adam_update(p, g, m, v, lr, scale, beta1, beta2, eps, step):
    """Adam (Kingma & Ba) with bias correction, on the clipped gradient scale * g.

    p, g, m, v: (P,) same dtype; step: the 1-based number of this update.
    """
    n = p.shape[0]
    t = p.dtype.type
    b1, b2, sc = t(beta1), t(beta2), t(scale)
    step_size = t(lr * np.sqrt(1.0 - beta2**step) / (1.0 - beta1**step))
    eps_hat = t(eps * np.sqrt(1.0 - beta2**step))
    for k in prange(n):
        gk = sc * g[k]
        mk = b1 * m[k] + (ONE - b1) * gk
        vk = b2 * v[k] + (ONE - b2) * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= step_size * mk / (np.sqrt(vk) + eps_hat)
