"""SGD (optional momentum) and Adam over the flat parameter buffer, global-norm clipping, and the
learning-rate schedule as a pure function of (step, epoch).

The whole optimiser step is two passes over the gradient buffer: one for its norm, one fused
update that also applies the clip factor.
"""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig
from .kernels import get_backend


def learning_rate(cfg: TrainConfig, step: int, epoch: int) -> float:
    """lr of optimiser step `step` (0-based, counted over the run) in epoch `epoch` (0-based).

    warmup: "linear" ramps lr * (step + 1) / warmup_steps; "t2t" is tensor2tensor's exponential
    warmup, lr * 0.01 ** ((warmup_steps - step) / warmup_steps), both up to warmup_steps.
    decay: "step" is Zaremba's lr * decay_rate ** max(epoch + 1 - decay_start, 0) (decay_start
    epochs at full lr); "halving" halves once after each epoch listed in halving_epochs.
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
    return cfg.lr * factor


def clip_scale(norm: float, clip: float) -> float:
    """The factor that brings a gradient of this global norm down to at most `clip` (0: off)."""
    if clip <= 0 or norm <= clip:
        return 1.0
    return clip / norm


class Optimizer:
    """SGD or Adam on a flat (P,) buffer. State buffers are (P,) arrays on the backend (default
    the CPU), saved in checkpoints through host_state()."""

    def __init__(self, cfg: TrainConfig, size: int, dtype, backend=None):
        self.cfg = cfg
        self.be = backend if backend is not None else get_backend("cpu")
        self.steps = 0
        names = {"sgd": ["momentum"] if cfg.momentum > 0 else [], "adam": ["adam_m", "adam_v"]}
        self.state = {name: self.be.zeros(size, np.dtype(dtype)) for name in names[cfg.optimizer]}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> tuple[float, bool]:
        """Clip and apply one update. params, grads: (P,). Returns (gradient norm, applied).

        A non-finite norm leaves params and state untouched (applied = False): one bad batch
        must not corrupt the model; the trainer decides whether to stop or skip.
        """
        be = self.be
        norm = math.sqrt(be.sum_squares(grads))
        if not math.isfinite(norm):
            return norm, False
        scale = clip_scale(norm, self.cfg.clip)
        self.steps += 1
        if self.cfg.optimizer == "sgd":
            velocity = self.state.get("momentum", grads)
            be.sgd_update(params, grads, velocity, lr, scale, self.cfg.momentum)
        else:
            c = self.cfg
            be.adam_update(params, grads, self.state["adam_m"], self.state["adam_v"], lr, scale,
                        c.beta1, c.beta2, c.eps, self.steps)
        return norm, True

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
