"""Training configuration: one dataclass, the named presets, and validation with clear messages.

Loss-scale convention (read this before changing a learning rate). Zaremba et al. (2014) and the
TensorFlow PTB tutorial differentiate the cross-entropy *summed over the T steps and averaged over
the batch*; their lr = 1.0 and clip = 5 refer to that loss. Our presets use the same convention
(``loss_reduction="batch"``: sum over steps of the mean over the batch, with padding masked out), so
their numbers are exactly the papers'. With ``loss_reduction="token"`` (mean NLL per token) the same
run needs lr x T and clip x T. The *reported* loss and perplexity are always per predicted token.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

from .errors import ConfigError

# U(-s, s) with s beyond this saturates every gate and overflows float32 logits in the first
# forward pass (s = 1e300 did, and the error then blamed --lr); the usual values are 0.04-0.1.
MAX_INIT_SCALE = 10.0
CHOICES = {
    "batching": ("stream", "sentence"),
    "optimizer": ("sgd", "adam"),
    "warmup": ("none", "linear", "t2t"),
    "decay": ("constant", "step", "halving"),
    "mask": ("fanin", "uniform"),
    "init": ("uniform", "glorot"),
    "loss_reduction": ("batch", "token"),
    "dtype": ("float32", "float64"),
    "device": ("auto", "cpu", "cuda"),
    "output": ("softmax", "factorized"),
    "on_nonfinite": ("stop", "skip"),
    "on_divergence": ("warn", "stop"),
}


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run; the presets below fill it, flags override single fields."""

    preset: str = "small"
    # model
    emb: int = 200  # E, embedding size
    hidden: int = 200  # H, LSTM units per layer
    layers: int = 2  # L
    sparsity: float = 1.0  # density of every gate weight matrix; 1.0 = dense
    mask: str = "fanin"  # sparsity pattern builder
    init: str = "uniform"  # gate weight initialisation
    init_scale: float = 0.1  # U(-s, s) for every parameter (Zaremba)
    dropout: float = 0.0  # inverted dropout on non-recurrent connections
    output: str = "softmax"  # output layer: dense softmax or the study's factorised layer
    # data
    batching: str = "stream"
    batch_size: int = 20  # B
    bptt: int = 20  # T
    # optimisation
    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip: float = 5.0  # global gradient-norm clip; 0 disables
    loss_reduction: str = "batch"
    warmup: str = "none"
    warmup_steps: int = 0
    decay: str = "step"
    decay_rate: float = 0.5  # lr multiplier per epoch after decay_start (step decay)
    decay_start: int = 4  # last epoch at full lr (Zaremba's max_epoch)
    halving_epochs: tuple = ()  # epochs (1-based) after which the lr halves (the study)
    epochs: int = 13
    max_steps: int = 0  # stop after this many optimiser steps; 0 = no limit
    # run
    seed: int = 1234
    dtype: str = "float32"
    device: str = "auto"
    threads: int = 0  # 0 = all cores
    log_every: int = 50  # steps between progress/metrics lines
    save_every: int = 1000  # steps between last.h5 saves (also saved every epoch)
    eval_batch_size: int = 10
    on_nonfinite: str = "stop"
    on_divergence: str = "warn"  # the training loss stays far above ln V (train.DIVERGED_*)
    data: str = ""  # the corpus trained on: "builtin" or a folder's absolute path ("": unknown)
    extra: dict = field(default_factory=dict)  # free-form notes a user wants kept with the run

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["halving_epochs"] = list(self.halving_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        d = dict(d)
        if "halving_epochs" in d:
            try:
                d["halving_epochs"] = tuple(int(e) for e in d["halving_epochs"])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"halving_epochs must be a list of integers, got {d['halving_epochs']!r:.60}"
                ) from None
        return validate(cls(**d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Zaremba et al. (2014), "Recurrent Neural Network Regularization", as in the TensorFlow tutorial:
# init_scale, T, B, lr, max_epoch (decay_start), lr_decay, max_grad_norm, keep_prob, epochs.
PRESETS: dict[str, dict] = {
    "teach": dict(
        emb=128,
        hidden=128,
        layers=2,
        init_scale=0.1,
        bptt=20,
        batch_size=20,
        lr=1.0,
        clip=5.0,
        dropout=0.0,
        epochs=1,
        decay="constant",
        log_every=25,
    ),
    "small": dict(
        emb=200,
        hidden=200,
        layers=2,
        init_scale=0.1,
        bptt=20,
        batch_size=20,
        lr=1.0,
        decay="step",
        decay_start=4,
        decay_rate=0.5,
        clip=5.0,
        dropout=0.0,
        epochs=13,
    ),
    "medium": dict(
        emb=650,
        hidden=650,
        layers=2,
        init_scale=0.05,
        bptt=35,
        batch_size=20,
        lr=1.0,
        decay="step",
        decay_start=6,
        decay_rate=0.8,
        clip=5.0,
        dropout=0.5,
        epochs=39,
    ),
    "large": dict(
        emb=1500,
        hidden=1500,
        layers=2,
        init_scale=0.04,
        bptt=35,
        batch_size=20,
        lr=1.0,
        decay="step",
        decay_start=14,
        decay_rate=1 / 1.15,
        clip=10.0,
        dropout=0.65,
        epochs=55,
    ),
    # The 2018 study: hidden 2500, embedding 600, T=B=20, Adam 5e-4, clip 5, x0.5 after epoch 4.
    "study": dict(
        emb=600,
        hidden=2500,
        layers=2,
        init_scale=0.1,
        bptt=20,
        batch_size=20,
        optimizer="adam",
        lr=5e-4,
        clip=5.0,
        loss_reduction="token",
        decay="step",
        decay_start=4,
        decay_rate=0.5,
        dropout=0.0,
        epochs=13,
    ),
}


def make_config(preset: str = "small", **overrides) -> TrainConfig:
    """The preset's config with the given fields replaced (None values are ignored), validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict({"preset": preset, **values})


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError with a one-line message for any out-of-range or inconsistent field."""
    _check_types(cfg)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                f"got {getattr(cfg, name)!r}"
            )
    for name in (
        "emb",
        "hidden",
        "layers",
        "batch_size",
        "bptt",
        "epochs",
        "eval_batch_size",
        "log_every",
        "save_every",
    ):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not (0.0 < cfg.sparsity <= 1.0) or math.isnan(cfg.sparsity):
        raise ConfigError(f"--sparsity is a density and must be in (0, 1], got {cfg.sparsity}")
    if not (0.0 <= cfg.dropout < 1.0):
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    checks = [
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive number, got {cfg.lr}"),
        (
            0 < cfg.init_scale <= MAX_INIT_SCALE,
            f"--init-scale must be a positive number <= {MAX_INIT_SCALE:g}, got {cfg.init_scale}",
        ),
        (0 <= cfg.clip < math.inf, f"--clip must be a number >= 0 (0 disables), got {cfg.clip}"),
        (0 < cfg.eps < math.inf, f"Adam eps must be a positive number, got {cfg.eps}"),
        (cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}"),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (0 < cfg.decay_rate <= 1, f"--decay-rate must be in (0, 1], got {cfg.decay_rate}"),
        (cfg.decay_start >= 0, f"--decay-start must be >= 0, got {cfg.decay_start}"),
        (cfg.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {cfg.warmup_steps}"),
        (cfg.max_steps >= 0, f"--max-steps must be >= 0, got {cfg.max_steps}"),
        (cfg.threads >= 0, f"--threads must be >= 0, got {cfg.threads}"),
        (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "Adam betas must be in [0, 1)"),
        (
            cfg.warmup == "none" or cfg.warmup_steps > 0,
            f"--warmup {cfg.warmup} needs --warmup-steps > 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.output == "factorized":
        side = math.isqrt(cfg.hidden)
        if side * side != cfg.hidden:
            raise ConfigError(f"--output factorized needs a square --hidden, got {cfg.hidden}")
    return cfg


# Field kinds by annotation: a config read back from a (possibly damaged) checkpoint must fail
# here with a message, not later with a TypeError deep in the model.
_KINDS = {
    "int": (numbers.Integral, "an integer"),
    "float": (numbers.Real, "a number"),
    "str": (str, "a string"),
    "dict": (dict, "a JSON object"),
    "tuple": (tuple, "a list of integers"),
}


def _check_types(cfg: TrainConfig) -> None:
    for f in dataclasses.fields(cfg):
        kind, what = _KINDS[str(f.type)]  # annotations are strings (postponed evaluation)
        value = getattr(cfg, f.name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{f.name} must be {what}, got {value!r:.60}")
    if not all(isinstance(e, numbers.Integral) for e in cfg.halving_epochs):
        raise ConfigError(
            f"halving_epochs must be a list of integers, got {cfg.halving_epochs!r:.60}"
        )
