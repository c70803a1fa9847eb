"""SGD (optional momentum) and Adam over the flat parameter buffer, global-norm clipping, and the
learning-rate schedule as a pure function of (step, epoch, validation history).

The whole optimiser step is two passes over the gradient buffer: one for its norm, one fused
update that also applies the clip factor. A block that is zero outside a few rows (the embedding's
gradient: only the batch's words have one, a few hundred of V rows) can be described by RowSparse;
the norm then reads only those rows, and so does plain SGD, for which a zero row changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import TrainConfig
from .kernels import get_backend
from .plateau import cfg_plateau
from .workspace import Workspace


def learning_rate(cfg: TrainConfig, step: int, epoch: int, history: Sequence[float] = ()) -> float:
    """lr of optimiser step `step` (0-based, counted over the run) in epoch `epoch` (0-based),
    after the validation losses `history` (the run's evaluations so far, in order).

    warmup: "linear" ramps lr * (step + 1) / warmup_steps; "t2t" is tensor2tensor's exponential
    warmup, lr * 0.01 ** ((warmup_steps - step) / warmup_steps), both up to warmup_steps.
    decay: "step" is Zaremba's lr * decay_rate ** max(epoch + 1 - decay_start, 0) (decay_start
    epochs at full lr); "halving" halves once after each epoch listed in halving_epochs;
    "plateau" divides by decay_factor once per anneal that `history` calls for (plateau.py).
    """
    factor = 1.0
    if cfg.warmup != "none" and step < cfg.warmup_steps:
        if cfg.warmup == "linear":
            factor = (step + 1) / cfg.warmup_steps
        else:
            factor = 0.01 ** ((cfg.warmup_steps - step) / cfg.warmup_steps)
    if cfg.decay == "step":
        factor *= cfg.decay_rate ** max(epoch + 1 - cfg.decay_start, 0)
    elif cfg.decay == "halving":
        factor *= 0.5 ** sum(1 for e in cfg.halving_epochs if e <= epoch)
    elif cfg.decay == "plateau":
        factor *= cfg_plateau(cfg, history).lr_scale
    return cfg.lr * factor


def clip_scale(norm: float, clip: float) -> float:
    """The factor that brings a gradient of this global norm down to at most `clip` (0: off)."""
    if clip <= 0 or norm <= clip:
        return 1.0
    return clip / norm


@dataclass(frozen=True)
class RowSparse:
    """flat[start:stop] of the gradient, read as (rows_total, width), is zero outside `rows`:
    (U,) int32 distinct row numbers, on the optimiser's backend."""

    start: int
    stop: int
    width: int
    rows: Any  # np.ndarray or a device array


class Optimizer:
    """SGD or Adam on a flat (P,) buffer. State buffers are (P,) arrays on the backend (default
    the CPU), saved in checkpoints through host_state()."""

    def __init__(self, cfg: TrainConfig, size: int, dtype, backend=None):
        self.cfg = cfg
        self.be = backend if backend is not None else get_backend("cpu")
        self.steps = 0
        names = {"sgd": ["momentum"] if cfg.momentum > 0 else [], "adam": ["adam_m", "adam_v"]}
        self.state = {name: self.be.zeros(size, np.dtype(dtype)) for name in names[cfg.optimizer]}
        self.ws = Workspace(self.be)  # the row-sparse path's small buffers

    def step(
        self, params: np.ndarray, grads: np.ndarray, lr: float, sparse: RowSparse | None = None
    ) -> tuple[float, bool]:
        """Clip and apply one update. params, grads: (P,). Returns (gradient norm, applied).

        sparse: a block of grads known to be zero outside some rows (same result, less reading).
        A non-finite norm leaves params and state untouched (applied = False): one bad batch
        must not corrupt the model; the trainer decides whether to stop or skip.
        """
        be = self.be
        rows = None if sparse is None else self._gather_rows(grads, sparse)
        norm = math.sqrt(self._sum_squares(grads, sparse, rows))
        if not math.isfinite(norm):
            return norm, False
        scale = clip_scale(norm, self.cfg.clip)
        self.steps += 1
        if self.cfg.optimizer == "sgd" and self.cfg.momentum == 0 and sparse is not None:
            self._sgd_sparse(params, grads, lr, scale, sparse, rows)
        elif self.cfg.optimizer == "sgd":
            velocity = self.state.get("momentum", grads)
            be.sgd_update(params, grads, velocity, lr, scale, self.cfg.momentum)
        else:
            c = self.cfg
            be.adam_update(
                params,
                grads,
                self.state["adam_m"],
                self.state["adam_v"],
                lr,
                scale,
                c.beta1,
                c.beta2,
                c.eps,
                self.steps,
            )
        return norm, True

    def _gather_rows(self, grads, sparse: RowSparse):
        """The block's non-zero rows: (U, width) on the backend (a reused buffer)."""
        block = grads[sparse.start : sparse.stop].reshape(-1, sparse.width)
        rows = self.ws.rows("grad_rows", sparse.rows.shape[0], sparse.width, grads.dtype)
        self.be.gather(block, sparse.rows, rows)
        return rows

    def _sum_squares(self, grads, sparse: RowSparse | None, rows) -> float:
        if sparse is None:
            return self.be.sum_squares(grads)
        parts = (grads[: sparse.start], grads[sparse.stop :], rows.reshape(-1))
        return sum(self.be.sum_squares(part) for part in parts)

    def _sgd_sparse(self, params, grads, lr, scale, sparse: RowSparse, rows) -> None:
        """Plain SGD outside the block, and on the block's non-zero rows only: their update
        -lr * scale * g is built in a small buffer and added to the parameter rows."""
        be = self.be
        for lo, hi in ((0, sparse.start), (sparse.stop, params.shape[0])):
            be.sgd_update(params[lo:hi], grads[lo:hi], grads[lo:hi], lr, scale, 0.0)
        delta = self.ws.rows("delta_rows", rows.shape[0], rows.shape[1], rows.dtype)
        be.fill(delta, 0)
        flat_rows = rows.reshape(-1)
        be.sgd_update(delta.reshape(-1), flat_rows, flat_rows, lr, scale, 0.0)
        block = params[sparse.start : sparse.stop].reshape(-1, sparse.width)
        be.embedding_backward(sparse.rows, delta, block)  # block[rows[u]] += delta[u]

    def host_state(self) -> dict[str, np.ndarray]:
        """name -> (P,) NumPy array (copies when the state lives on a device)."""
        return {name: self.be.to_host(buf) for name, buf in self.state.items()}

    def load_state(self, state: dict[str, np.ndarray], steps: int) -> None:
        """Restore from host arrays (a checkpoint's), cast to the buffers' dtype."""
        for name, buf in self.state.items():
            if name not in state or tuple(state[name].shape) != tuple(buf.shape):
                raise ValueError(f"optimizer state {name!r} missing or of the wrong size")
            self.be.copy(buf, np.asarray(state[name], buf.dtype))
        self.steps = steps
