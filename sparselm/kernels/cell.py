"""The LSTM cell's per-unit arithmetic, written once and compiled by each backend.

Plain Python functions: kernels/cpu.py compiles them with ``numba.njit`` (inlined into its
vectorised loops), kernels/cuda.py with ``numba.cuda.jit(device=True)``. The backends differ
only in how they loop over the (B, H) units and in their tanh/sigmoid; the cell's algebra (the
equations in sparselm/lstm.py) exists here alone. `one` is 1 in the caller's float type (a typed
constant keeps float32 arithmetic in float32).
"""


def cell_state(i, f, g, c_prev):
    """c_t = f * c_{t-1} + i * g."""
    return f * c_prev + i * g


def cell_write_unit(gates, c, tanh_c, h, b, j, nh, i, f, g, o, c_t, tc):
    """Store unit (b, j) of one forward step: its activated gates i, f, g, o in gates[b, j + k H],
    c_t, tc = tanh(c_t) and h_t = o * tc."""
    gates[b, j] = i
    gates[b, nh + j] = f
    gates[b, 2 * nh + j] = g
    gates[b, 3 * nh + j] = o
    c[b, j] = c_t
    tanh_c[b, j] = tc
    h[b, j] = o * tc


def cell_backward_unit(dh_out, dh_rec, dc, gates, c_prev, tanh_c, dgates, dc_prev, b, j, nh, one):
    """Backward of unit (b, j) of one step, on the arrays of lstm_cell_backward: writes the
    gradients of its four pre-activations, dgates[b, j + k H] (k = i, f, g, o), and dc_prev[b, j].

    dh = dh_out + dh_rec is the total gradient reaching h_t; dc the gradient reaching c_t from
    step t+1.
    """
    i, f = gates[b, j], gates[b, nh + j]
    g, o = gates[b, 2 * nh + j], gates[b, 3 * nh + j]
    tc, dh = tanh_c[b, j], dh_out[b, j] + dh_rec[b, j]
    dct = dc[b, j] + dh * o * (one - tc * tc)
    dgates[b, j] = dct * g * i * (one - i)
    dgates[b, nh + j] = dct * c_prev[b, j] * f * (one - f)
    dgates[b, 2 * nh + j] = dct * i * (one - g * g)
    dgates[b, 3 * nh + j] = dh * tc * o * (one - o)
    dc_prev[b, j] = dct * f
