"""Between models and checkpoints: a LanguageModel (with its run state) to a Checkpoint and back,
and the backend a model is loaded onto.

Used by the training loop (save, resume) and by `sparselm evaluate` / `generate`, which load a
model without the trainer. checkpoint.py knows nothing of models; model.py nothing of files.
"""

from __future__ import annotations

import math

import numpy as np

from .checkpoint import Checkpoint, CSRPattern, load_checkpoint
from .config import TrainConfig
from .data import Vocabulary
from .errors import CheckpointError, ConfigError
from .layout import parameter_shapes
from .model import LanguageModel


def model_checkpoint(
    model: LanguageModel, vocab: Vocabulary, optimizer=None, run=None, carried=None
) -> Checkpoint:
    """The Checkpoint of a model (and optimiser, run state, carried [(h, c)] (B, H) per layer)."""
    patterns = {
        name: CSRPattern(p.indices, p.indptr, tuple(p.shape)) for name, p in model.patterns.items()
    }
    state = {}
    if carried is not None:
        carried = model.state_to_host(carried)
        state["hidden"] = np.stack([np.stack(hc) for hc in carried])  # (L, 2, B, H)
    progress = {} if run is None else {k: v for k, v in run.__dict__.items()}
    if run is not None and not math.isfinite(run.best_valid):
        progress["best_valid"] = None
    return Checkpoint(
        config=model.cfg.to_dict(),
        vocab=list(vocab.words),
        params=model.params.to_host(),
        patterns=patterns,
        optimizer={} if optimizer is None else optimizer.host_state(),
        progress=progress,
        state=state,
    )


def expected_shapes(cfg: TrainConfig, vocab_size: int) -> dict:
    """name -> shape of every parameter (dense shape for CSR gates) for this config."""
    return parameter_shapes(cfg, vocab_size)


def load_model(path, overrides: dict | None = None, backend=None):
    """(model, vocab, checkpoint) from a checkpoint file; raises CheckpointError.

    overrides: config fields to change (e.g. dtype, threads); never the architecture.
    backend: kernels.Backend to load onto (default the CPU); a checkpoint loads on either.
    """
    ckpt = load_model_checkpoint(path)
    return model_from(ckpt, path, overrides, backend) + (ckpt,)


def load_model_checkpoint(path) -> Checkpoint:
    """The checkpoint at `path`, its parameters checked against the shapes its own config and
    vocabulary imply (load_checkpoint's expected_shapes); raises CheckpointError."""

    def shapes(ckpt: Checkpoint) -> dict:
        return expected_shapes(_config(ckpt, path, None), len(ckpt.vocab))

    return load_checkpoint(path, expected_shapes=shapes)


def model_from(ckpt: Checkpoint, path, overrides: dict | None, backend=None):
    """(model, vocab) of a checkpoint from load_model_checkpoint, its config updated by
    `overrides`."""
    vocab = Vocabulary(ckpt.vocab)
    model = LanguageModel(
        _config(ckpt, path, overrides),
        len(vocab),
        params=ckpt.params,
        patterns=ckpt.patterns,
        backend=backend,
    )
    return model, vocab


def _config(ckpt: Checkpoint, path, overrides: dict | None) -> TrainConfig:
    """The checkpoint's config with `overrides`, validated; CheckpointError naming the file."""
    try:
        return TrainConfig.from_dict({**ckpt.config, **(overrides or {})})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from None


def resolve_device(device: str, say):
    """The kernels.Backend the training step runs on, for --device auto | cpu | cuda.

    `cuda` without a GPU is a one-line ConfigError; `auto` takes a GPU when one is present and
    otherwise falls back to the CPU, saying so once (through `say`).
    """
    import warnings

    from .kernels import get_backend

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = get_backend(device)
    for w in caught:
        say(f"note: {w.message}")
    return backend
