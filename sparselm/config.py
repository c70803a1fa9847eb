"""Training configuration: one dataclass, the named presets, and validation with clear messages.

Each TrainConfig field is declared with `setting(default, help, group, choices=, minimum=)`: the
command line's flags (cli.py), their --help sections and validate's choice and minimum checks are
all made from that one declaration.

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
from typing import Any

from .errors import ConfigError

# U(-s, s) with s beyond this saturates every gate and overflows float32 logits in the first
# forward pass (s = 1e300 did, and the error then blamed --lr); the usual values are 0.04-0.1.
MAX_INIT_SCALE = 10.0

# The groups of `sparselm train --help`, in the order shown.
GROUPS = ("model", "data", "optimisation", "run")


def setting(
    default,
    help: str,
    group: str,
    *,
    choices: tuple = (),
    minimum: int | None = None,
    cli: bool = True,
    factory=None,
) -> Any:
    """A TrainConfig field with what the rest of the package needs to know about it.

    help: the flag's help text; group: one of GROUPS (the --help section); choices: the allowed
    values (click.Choice, validate); minimum: the smallest value validate accepts; cli: whether
    `sparselm train` has a flag for it (--name-with-dashes, see flag_name). factory: a
    default_factory instead of `default` (mutable defaults).
    """
    assert group in GROUPS, group
    meta = {"help": help, "group": group, "choices": choices, "minimum": minimum, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run; the presets below fill it, flags override single fields.

    Each field carries its flag's help text, group, choices and minimum (`setting`): the command
    line's options (cli.train_options), their --help sections and validate's checks are made from
    them, so a new hyper-parameter is this one line (and its use).
    """

    preset: str = setting(
        "small", "Named configuration; flags override single fields.", "run", cli=False
    )
    # model
    emb: int = setting(200, "Embedding size E.", "model", minimum=1)
    hidden: int = setting(200, "LSTM units per layer H.", "model", minimum=1)
    layers: int = setting(2, "Number of LSTM layers L.", "model", minimum=1)
    sparsity: float = setting(
        1.0,
        "Density of every gate weight matrix: fraction of non-zeros in (0, 1]; 1.0 = dense.",
        "model",
    )
    mask: str = setting(
        "fanin-cover",
        "Sparsity pattern: 'fanin' (the same number of inputs per gate row) or 'uniform' "
        "(entries anywhere), as the study drew them; with '-cover', repaired so that every gate "
        "row has an input and every input column feeds a gate row where the density allows.",
        "model",
        choices=("fanin-cover", "uniform-cover", "fanin", "uniform"),  # sparsity.MASKS
    )
    init: str = setting(
        "auto",
        "Sparse gate weights' initialisation: 'uniform' U(-s, s) (Zaremba), 'glorot' of the "
        "dense shape, 'fanin' U(-a, a) with a = sqrt(3 / the row's real fan-in); 'auto' is "
        "fanin. Dense gates always take U(-s, s).",
        "model",
        choices=("auto", "uniform", "glorot", "fanin"),
    )
    forget_bias: float = setting(
        0.0, "Initial forget-gate bias (0: drawn like every bias, U(-s, s)).", "model"
    )
    init_scale: float = setting(0.1, "Uniform init range: U(-s, s).", "model")  # every parameter
    # inverted dropout: the kept units are scaled by 1 / (1 - rate) while training
    dropout: float = setting(0.0, "Dropout rate on non-recurrent connections, in [0, 1).", "model")
    # the dense softmax or the study's factorised layer (heads/factorized.py)
    output: str = setting("softmax", "Output layer.", "model", choices=("softmax", "factorized"))
    # data
    batching: str = setting(
        "stream",
        "'stream' (truncated BPTT, state carried) or 'sentence' (padded lines, state reset).",
        "data",
        choices=("stream", "sentence"),
    )
    batch_size: int = setting(20, "Batch size B.", "data", minimum=1)
    bptt: int = setting(20, "Steps per window T (stream batching).", "data", minimum=1)
    # optimisation
    optimizer: str = setting("sgd", "Optimiser.", "optimisation", choices=("sgd", "adam"))
    lr: float = setting(1.0, "Learning rate (see --loss-reduction for its scale).", "optimisation")
    momentum: float = setting(0.0, "SGD momentum (0: plain SGD).", "optimisation")
    beta1: float = setting(0.9, "Adam's beta1.", "optimisation", cli=False)
    beta2: float = setting(0.999, "Adam's beta2.", "optimisation", cli=False)
    eps: float = setting(1e-8, "Adam's epsilon.", "optimisation", cli=False)
    clip: float = setting(
        5.0, "Clip the global gradient norm to this value (0: off).", "optimisation"
    )
    loss_reduction: str = setting(
        "batch",
        "Differentiated loss: 'batch' = summed over T, mean over B (Zaremba/TF); 'token' = mean.",
        "optimisation",
        choices=("batch", "token"),
    )
    warmup: str = setting(
        "none", "Learning-rate warmup.", "optimisation", choices=("none", "linear", "t2t")
    )
    warmup_steps: int = setting(0, "Warmup length in steps.", "optimisation")
    decay: str = setting(
        "step",
        "Decay: 'step' (x decay-rate per epoch after decay-start), 'halving', 'constant' or "
        "'plateau' (lr / decay-factor when validation stops improving, see --patience).",
        "optimisation",
        choices=("constant", "step", "halving", "plateau"),
    )
    # --decay plateau (plateau.py): the defaults are PyTorch's word_language_model's
    decay_factor: float = setting(
        4.0,
        "--decay plateau: each anneal divides the lr by this (> 1; default 4, as PyTorch's "
        "word_language_model).",
        "optimisation",
    )
    patience: int = setting(
        1,
        "--decay plateau: anneal after this many evaluations in a row without a lower "
        "validation perplexity (default 1: at each one).",
        "optimisation",
        minimum=1,
    )
    max_anneals: int = setting(
        0,
        "--decay plateau: stop the run when it needs one anneal more than this (0: no limit).",
        "optimisation",
        minimum=0,
    )
    decay_rate: float = setting(0.5, "lr factor per epoch once decay has started.", "optimisation")
    # Zaremba's max_epoch
    decay_start: int = setting(4, "Epochs at full lr before step decay starts.", "optimisation")
    halving_epochs: tuple = setting(
        (), "Epochs (1-based) after which the lr halves (the study).", "optimisation", cli=False
    )
    epochs: int = setting(13, "Number of epochs.", "optimisation", minimum=1)
    max_steps: int = setting(
        0, "Stop after this many optimiser steps (0: no limit).", "optimisation"
    )
    early_stop: int = setting(
        0,
        "Stop after this many evaluations in a row without a lower validation perplexity "
        "(0: never); best.h5 holds the best model.",
        "optimisation",
        minimum=0,
    )
    # run
    seed: int = setting(1234, "Random seed (patterns, init, dropout).", "run")
    dtype: str = setting("float32", "Floating-point type.", "run", choices=("float32", "float64"))
    device: str = setting("auto", "Where to train.", "run", choices=("auto", "cpu", "cuda"))
    threads: int = setting(0, "Threads for Numba and BLAS (default: all cores).", "run")
    log_every: int = setting(50, "Steps between metric lines.", "run", minimum=1)
    # last.h5 is also saved at the end of every epoch
    save_every: int = setting(1000, "Steps between saves of last.h5.", "run", minimum=1)
    eval_batch_size: int = setting(10, "Evaluation batch size.", "run", minimum=1, cli=False)
    on_nonfinite: str = setting(
        "stop",
        "What to do after a NaN/inf loss or gradient (the step is never applied).",
        "run",
        choices=("stop", "skip"),
    )
    # the training loss stays far above ln V: train.DIVERGED_*
    on_divergence: str = setting(
        "warn",
        "What to do when the training loss stays far above the uniform model's (ln V) for "
        "many steps: say so once (warn), or end the run without saving (stop).",
        "run",
        choices=("warn", "stop"),
    )
    data: str = setting(
        "",
        "The corpus trained on: 'builtin' or a folder's absolute path ('': unknown).",
        "run",
        cli=False,
    )
    extra: dict = setting(
        None, "Free-form notes a user wants kept with the run.", "run", cli=False, factory=dict
    )

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
        mask="fanin",  # the study's mask as drawn: some input columns feed no gate row
        init="uniform",  # and its U(-0.1, 0.1) for every weight, sparse or dense
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


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a TrainConfig field: --name-with-dashes."""
    return "--" + f.name.replace("_", "-")


def cli_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that `sparselm train` has a flag for, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]


def make_config(preset: str = "small", **overrides) -> TrainConfig:
    """The preset's config with the given fields replaced (None values are ignored), validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict({"preset": preset, **values})


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError with a one-line message for any out-of-range or inconsistent field."""
    _check_types(cfg)
    fields = dataclasses.fields(cfg)
    for f in fields:  # every choice first, then every minimum: the order of the messages
        allowed = f.metadata["choices"]
        if allowed and getattr(cfg, f.name) not in allowed:
            raise ConfigError(
                f"{flag_name(f)} must be one of {', '.join(allowed)}, got {getattr(cfg, f.name)!r}"
            )
    for f in fields:
        minimum = f.metadata["minimum"]
        if minimum is not None and int(getattr(cfg, f.name)) < minimum:
            raise ConfigError(f"{flag_name(f)} must be >= {minimum}, got {getattr(cfg, f.name)}")
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
        (
            abs(cfg.forget_bias) <= MAX_INIT_SCALE,
            f"--forget-bias must be a number in [-{MAX_INIT_SCALE:g}, {MAX_INIT_SCALE:g}], "
            f"got {cfg.forget_bias}",
        ),
        (0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}"),
        (0 < cfg.decay_rate <= 1, f"--decay-rate must be in (0, 1], got {cfg.decay_rate}"),
        (cfg.decay_start >= 0, f"--decay-start must be >= 0, got {cfg.decay_start}"),
        (
            1 < cfg.decay_factor < math.inf,
            f"--decay-factor must be a number > 1, got {cfg.decay_factor}",
        ),
        (cfg.decay == "plateau" or _plateau_defaults(cfg), _PLATEAU_ONLY),
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


_PLATEAU_ONLY = "--decay-factor, --patience and --max-anneals need --decay plateau"


def _plateau_defaults(cfg: TrainConfig) -> bool:
    """The plateau settings are their defaults (they would be ignored by another --decay)."""
    return all(
        getattr(cfg, name) == TrainConfig.__dataclass_fields__[name].default
        for name in ("decay_factor", "patience", "max_anneals")
    )


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
