"""Plain NumPy/SciPy references for every fast path.

Slow, obvious and exact: every kernel and every model piece is tested against a function here,
and every backward pass against central finite differences.
"""

import numpy as np

# --- CSR products (sparselm.kernels.cpu_csr); W (R, C) given as data, indices, indptr ---------


def _csr_dense64(data, indices, indptr, shape):
    import scipy.sparse as sp

    w = sp.csr_array((np.asarray(data, np.float64), indices, indptr), shape=shape)
    return w.toarray()


def csr_matmul_ref(data, indices, indptr, shape, x):
    """x (M, C) @ W^T -> (M, R) float64."""
    return np.asarray(x, np.float64) @ _csr_dense64(data, indices, indptr, shape).T


def csr_matmul_t_ref(data, indices, indptr, shape, dy):
    """dy (M, R) @ W -> (M, C) float64."""
    return np.asarray(dy, np.float64) @ _csr_dense64(data, indices, indptr, shape)


def csr_sddmm_ref(indices, indptr, shape, dy, x):
    """(dy^T x)[row_k, col_k] for every stored entry k -> (N,) float64; dy (M, R), x (M, C)."""
    full = np.asarray(dy, np.float64).T @ np.asarray(x, np.float64)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    return full[rows, np.asarray(indices)]


# -- dense kernels (sparselm/kernels/cpu.py) -----------------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_cell_forward_ref(gx, r, c_prev):
    """Returns gates (B, G) [i, f, g, o] activated, c, tanh_c, h (B, H)."""
    a = (gx + r).astype(np.float64)
    nh = a.shape[1] // 4
    i, f, o = sigmoid(a[:, :nh]), sigmoid(a[:, nh : 2 * nh]), sigmoid(a[:, 3 * nh :])
    g = np.tanh(a[:, 2 * nh : 3 * nh])
    c = f * c_prev + i * g
    return np.concatenate([i, f, g, o], axis=1), c, np.tanh(c), o * np.tanh(c)


def lstm_cell_backward_ref(dh, dc, gates, c_prev, tanh_c):
    nh = gates.shape[1] // 4
    i, f, g, o = (gates[:, k * nh : (k + 1) * nh] for k in range(4))
    dct = dc + dh * o * (1 - tanh_c**2)
    da = np.concatenate(
        [
            dct * g * i * (1 - i),
            dct * c_prev * f * (1 - f),
            dct * i * (1 - g**2),
            dh * tanh_c * o * (1 - o),
        ],
        axis=1,
    )
    return da, dct * f


def softmax_xent_ref(logits, targets, weights):
    """Returns nll (N,), dlogits (N, V) = weights * (softmax - onehot), dbias (V,)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(targets))
    grad = np.exp(logp)
    grad[rows, targets] -= 1
    grad *= weights[:, None]
    return -logp[rows, targets], grad, grad.sum(axis=0)


# -- embedding and optimiser updates (kernels.cpu / kernels.cuda) ---------------------------------
def embedding_backward_ref(ids, dx, n_vocab):
    """(V, E) float64 with row v = sum of dx[n] over n with ids[n] == v."""
    out = np.zeros((n_vocab, dx.shape[1]))
    np.add.at(out, ids, np.asarray(dx, np.float64))
    return out


def sgd_update_ref(p, g, velocity, lr, scale, momentum):
    """Returns (p, velocity) after one step, float64; velocity is unchanged when momentum == 0."""
    p, g, velocity = (np.asarray(a, np.float64) for a in (p, g, velocity))
    if momentum == 0:
        return p - lr * scale * g, velocity
    velocity = momentum * velocity + scale * g
    return p - lr * velocity, velocity


def adam_update_ref(p, g, m, v, lr, scale, beta1, beta2, eps, step):
    """Returns (p, m, v) after Adam step `step` (1-based) on scale * g, textbook form, float64."""
    p, g, m, v = (np.asarray(a, np.float64) for a in (p, g, m, v))
    g = scale * g
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
