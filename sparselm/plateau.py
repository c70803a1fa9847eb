"""Decisions taken from the validation history alone: annealing on a plateau (--decay plateau) and
early stopping (--early-stop).

The history is the validation loss per token of every evaluation of the run, in order (RunState.
valid_losses, saved in every checkpoint). Everything here is a pure function of it, so a resumed
run, which restores the history, takes exactly the decisions of the uninterrupted one and keeps
no schedule state of its own.

An evaluation *improves* when its loss is strictly below every earlier one: a tie does not, and
neither does a NaN. Loss and perplexity (exp of the loss) rank evaluations alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from .config import TrainConfig


class Plateau(NamedTuple):
    """Where the plateau schedule stands after a history: lr_scale = 1 / factor ** anneals; stop
    when a plateau called for one anneal more than max_anneals allows."""

    lr_scale: float
    anneals: int
    stop: bool


def improved(history: Sequence[float]) -> list[bool]:
    """For each evaluation of `history` (losses, in order): whether it improved on all before."""
    best = math.inf
    flags = []
    for loss in history:
        flags.append(loss < best)  # False for a tie and for NaN
        if loss < best:
            best = loss
    return flags


def anneal_scale(factor: float, anneals: int) -> float:
    """The lr multiplier after `anneals` anneals, each dividing the lr by `factor`."""
    return 1.0 / factor**anneals


def plateau_schedule(
    history: Sequence[float], patience: int, factor: float, max_anneals: int
) -> Plateau:
    """The plateau schedule after the evaluations in `history` (validation losses, in order).

    Every `patience` evaluations in a row without improvement (counted since the last
    improvement or the last anneal, whichever is later) call for an anneal: the lr is divided by
    `factor`. patience 1 anneals at every evaluation that does not improve, as PyTorch's
    word_language_model does (with factor 4). Once `max_anneals` anneals are done, the next call
    for one stops the run instead (max_anneals 0: no limit); nothing after a stop counts.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    anneals, waited = 0, 0
    for better in improved(history):
        waited = 0 if better else waited + 1
        if waited < patience:
            continue
        if max_anneals and anneals == max_anneals:
            return Plateau(anneal_scale(factor, anneals), anneals, True)
        anneals, waited = anneals + 1, 0
    return Plateau(anneal_scale(factor, anneals), anneals, False)


def since_best(history: Sequence[float]) -> int:
    """Evaluations after the last one that improved (all of them when none did)."""
    flags = improved(history)
    last = max((i for i, better in enumerate(flags) if better), default=-1)
    return len(flags) - 1 - last


def cfg_plateau(cfg: TrainConfig, history: Sequence[float]) -> Plateau:
    """plateau_schedule with the run's --patience, --decay-factor and --max-anneals; no anneal and
    no stop for any other --decay."""
    if cfg.decay != "plateau":
        return Plateau(1.0, 0, False)
    return plateau_schedule(history, cfg.patience, cfg.decay_factor, cfg.max_anneals)


def stop_reason(cfg: TrainConfig, history: Sequence[float]) -> str:
    """Why the run must stop after `history` (--early-stop, --max-anneals), in one line, or ""
    to go on."""
    waited = since_best(history)
    if cfg.early_stop and waited >= cfg.early_stop:
        return (
            f"validation perplexity has not improved for {_count(waited, 'evaluation')} "
            f"(--early-stop {cfg.early_stop})"
        )
    plateau = cfg_plateau(cfg, history)
    if plateau.stop:
        return (
            f"validation perplexity stopped improving after {_count(plateau.anneals, 'anneal')} "
            f"(--max-anneals {cfg.max_anneals})"
        )
    return ""


def _count(n: int, noun: str) -> str:
    """'1 anneal', '2 anneals': the stop message is read by people."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
