"""The model's two parameter-light layers, each a forward/backward pair: embedding and dropout.

The model (model.py) is their composition with the LSTM layers (lstm.LSTMLayer) and an output
head (heads/): embedding -> dropout -> [LSTM -> dropout] x L -> head. Each layer holds its
parameter and gradient arrays (views into the model's flat buffers) and takes its scratch from
the model's Workspace, so a step allocates nothing.
"""

from __future__ import annotations

import numpy as np

from .workspace import Workspace


class Embedding:
    """x = E[ids]: word ids (T*B,) int32 -> rows of weight E: (V, E), as (T, B, E).

    Backward: dE[v] = sum of dx[n] over the rows n with ids[n] = v (a scatter-add). It is the
    one gradient of the model that is a sum of writes, so backward clears it first; it is zero
    outside the batch's words (the model tells the optimiser so: optim.RowSparse).
    """

    def __init__(self, weight, dweight, ws: Workspace):
        """weight, dweight: (V, E) on ws's backend."""
        self.weight, self.dweight, self.ws = weight, dweight, ws

    def forward(self, ids, steps: int):
        """ids: (T*B,) int32 on the backend, time-major, all in [0, V) (the model checks).
        Returns x: (T, B, E), a workspace buffer."""
        nb, width = ids.shape[0] // steps, self.weight.shape[1]
        x = self.ws.get("emb_out", (steps, nb, width), self.weight.dtype)
        self.ws.be.gather(self.weight, ids, x.reshape(steps * nb, width))
        return x

    def backward(self, ids, dx) -> None:
        """Overwrite dE with the scatter-add of dx: (T, B, E) over ids: (T*B,)."""
        be = self.ws.be
        be.fill(self.dweight, 0)
        be.embedding_backward(ids, dx.reshape(ids.shape[0], self.dweight.shape[1]), self.dweight)


class Dropout:
    """Inverted dropout (Zaremba et al.: non-recurrent connections only): y = x * m with
    m = keep / (1 - rate), keep ~ Bernoulli(1 - rate), so evaluation needs no rescaling.

    The mask is drawn on the host from the run's generator and sent to the backend: a CPU and a
    GPU run draw the same masks, and --resume reproduces them. Backward: dx = dy * m.
    """

    def __init__(self, rate: float, name: str, ws: Workspace, host_ws: Workspace):
        """rate: dropout probability in [0, 1); name: the workspace prefix of its buffers;
        host_ws: a Workspace on the CPU (the mask is drawn there)."""
        self.rate, self.name, self.ws, self.host_ws = rate, name, ws, host_ws

    def forward(self, x, rng, train: bool):
        """x: (..., D) on the backend. Returns (y, mask): x itself and None when not training or
        rate = 0, else a workspace buffer and the mask (x's shape and dtype, on the backend)."""
        if not train or self.rate <= 0.0:
            return x, None
        mask = self.host_ws.get(self.name + ".mask", x.shape, x.dtype)
        np.greater_equal(rng.random(x.shape, dtype=x.dtype), self.rate, out=mask)
        mask *= 1.0 / (1.0 - self.rate)
        mask = self.ws.be.to_device(mask)
        out = self.ws.get(self.name + ".out", x.shape, x.dtype)
        self.ws.be.mul(x, mask, out)
        return out, mask

    def backward(self, d, mask) -> None:
        """d *= mask in place (d: the forward's output gradient, mask: its mask or None)."""
        if mask is not None:
            self.ws.be.mul(d, mask, d)
