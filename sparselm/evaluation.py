"""Scoring a model on a split: mean NLL per predicted token and perplexity, counted exactly.

Used by the training loop (validation after each epoch, test at the end) and by `sparselm
evaluate`; it reads the model only through LanguageModel.forward(train=False).
"""

from __future__ import annotations

import math
import time

from .data import Corpus, make_batcher
from .metrics import Progress
from .model import LanguageModel


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(700): a diverged run's loss of 1e6 per token must not overflow."""
    return math.exp(min(loss, 700.0))


def evaluate(
    model: LanguageModel, corpus: Corpus, split: str, progress: bool = False, stop=None
) -> dict | None:
    """Mean NLL per predicted token and perplexity of a split, counted exactly over all batches.

    Returns {"loss", "ppl", "tokens", "tokens_per_s"} and, for a corpus with a known grammar,
    "oracle_ppl" over the same tokens.
    stop: optional callable checked between batches; when it returns true the evaluation is
    abandoned and None is returned (a signal must not wait for a whole split).
    """
    cfg = model.cfg
    batcher = make_batcher(
        corpus, split, cfg.batching, cfg.eval_batch_size, cfg.bptt, seed=cfg.seed, train=False
    )
    total, count, state = 0.0, 0, None
    bar = Progress(len(batcher), f"eval {split}", enabled=progress)
    start = time.perf_counter()
    for batch in batcher.batches():
        if stop is not None and stop():
            bar.close()
            return None
        res = model.forward(batch, state, train=False)
        total += res.nll_sum
        count += res.n_tokens
        state = res.state
        bar.update(1)
    bar.close()
    loss = total / max(count, 1)
    seconds = time.perf_counter() - start
    result = {
        "loss": loss,
        "ppl": perplexity(loss),
        "tokens": count,
        "tokens_per_s": count / max(seconds, 1e-9),
    }
    oracle = corpus.oracle_ppl(split, cfg.batching, cfg.eval_batch_size)
    if oracle is not None:  # the same tokens, scored by the model that generated the corpus
        result["oracle_ppl"] = oracle
    return result
