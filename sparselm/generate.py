"""Sampling text from a trained model."""

from __future__ import annotations

import math

import numpy as np

from .data import EOS, Vocabulary
from .errors import ConfigError, DataError


def sample_text(
    model, vocab: Vocabulary, words: int, temperature: float, prompt: str = "", seed: int = 0
) -> str:
    """Feed the prompt (or <eos>), then draw `words` words from softmax(logits / temperature)."""
    if not (0 < temperature < math.inf):  # NaN too
        raise ConfigError(f"--temperature must be a positive number, got {temperature}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    unknown = [w for w in prompt.split() if w not in vocab.index]
    if unknown:
        raise DataError(f"prompt word {unknown[0]!r} is not in the model's vocabulary")
    context = [vocab.eos] + [vocab.index[w] for w in prompt.split()]
    logits, state = model.logits(np.asarray(context, dtype=np.int32).reshape(-1, 1))
    out = list(prompt.split())
    for _ in range(words):
        z = logits[-1].astype(np.float64) / temperature
        prob = np.exp(z - z.max())
        word = int(rng.choice(len(prob), p=prob / prob.sum()))
        out.append("\n" if vocab.words[word] == EOS else vocab.words[word])
        logits, state = model.logits(np.asarray([[word]], dtype=np.int32), state)
    return " ".join(out).replace(" \n ", "\n").replace(" \n", "\n").strip()
