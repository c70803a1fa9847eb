"""The LSTM cell's per-unit arithmetic, written once and compiled by each backend.

Plain Python functions of scalars: kernels/cpu.py compiles them with ``numba.njit`` (inlined into
its vectorised loops), kernels/cuda.py with ``numba.cuda.jit(device=True)``. The backends differ
only in how they loop over the (B, H) units and in their tanh/sigmoid; the cell's algebra (the
equations in sparselm/lstm.py) exists here alone. `one` is 1 in the caller's float type (a typed
constant keeps float32 arithmetic in float32).
"""


def cell_state(i, f, g, c_prev):
    """c_t = f * c_{t-1} + i * g."""
    return f * c_prev + i * g


def cell_gradients(i, f, g, o, tanh_c, c_prev, dh, dc, one):
    """Gradients of one unit's pre-activations and of c_{t-1}.

    dh: total gradient reaching h_t; dc: gradient reaching c_t from step t+1.
    Returns (da_i, da_f, da_g, da_o, dc_prev).
    """
    dct = dc + dh * o * (one - tanh_c * tanh_c)
    return (dct * g * i * (one - i), dct * c_prev * f * (one - f), dct * i * (one - g * g),
            dh * tanh_c * o * (one - o), dct * f)
