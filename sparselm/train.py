"""The training loop: epochs, logging, evaluation, checkpoints, interrupts and resume.

A run folder holds config.json, metrics.jsonl, last.h5 (written every `save_every` steps, at the
end of every epoch, at --max-steps and on Ctrl-C/SIGTERM) and best.h5 (lowest validation loss).
Everything that decides the next loss is in last.h5 (parameters, optimiser state, step, epoch,
batch cursor, the dropout generator's state and the carried hidden state), so a resumed run
computes exactly the losses of the uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CSRPattern, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Corpus, Vocabulary, load_corpus, make_batcher
from .errors import CheckpointError, ConfigError, NonFiniteError, SparseLMError
from .metrics import MetricsLog, Progress
from .model import LanguageModel
from .optim import Optimizer, learning_rate


class Interrupted(SparseLMError):
    """Training stopped by a signal after saving last.h5."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class RunState:
    """Where the run is: what resume restores besides parameters and optimiser state."""

    step: int = 0                 # optimiser steps done
    epoch: int = 0                # current epoch (0-based)
    cursor: int = 0               # batches of this epoch already done
    tokens: int = 0               # training tokens seen
    best_valid: float = math.inf  # lowest validation loss per token
    skipped: int = 0              # steps rejected for a non-finite loss or gradient
    elapsed: float = 0.0          # training seconds before this process
    rng: dict = field(default_factory=dict)


# -- model and checkpoint glue -------------------------------------------------------------------
def model_checkpoint(model: LanguageModel, vocab: Vocabulary, optimizer=None, run=None,
                     carried=None) -> Checkpoint:
    patterns = {name: CSRPattern(p.indices, p.indptr, tuple(p.shape))
                for name, p in model.patterns.items()}
    state = {}
    if carried is not None:
        state["hidden"] = np.stack([np.stack(hc) for hc in carried])     # (L, 2, B, H)
    progress = {} if run is None else {k: v for k, v in run.__dict__.items()}
    if run is not None and not math.isfinite(run.best_valid):
        progress["best_valid"] = None
    return Checkpoint(config=model.cfg.to_dict(), vocab=list(vocab.words),
                      params=dict(model.params.items()), patterns=patterns,
                      optimizer={} if optimizer is None else dict(optimizer.state),
                      progress=progress, state=state)


def expected_shapes(cfg: TrainConfig, vocab_size: int) -> dict:
    """name -> shape of every parameter (dense shape for CSR gates) for this config."""
    model_shapes = {"embedding.weight": (vocab_size, cfg.emb)}
    for layer in range(cfg.layers):
        model_shapes[f"lstm.{layer}.w_x"] = (4 * cfg.hidden, cfg.emb if layer == 0 else cfg.hidden)
        model_shapes[f"lstm.{layer}.w_h"] = (4 * cfg.hidden, cfg.hidden)
        model_shapes[f"lstm.{layer}.bias"] = (4 * cfg.hidden,)
    model_shapes["softmax.weight"] = (vocab_size, cfg.hidden)
    model_shapes["softmax.bias"] = (vocab_size,)
    return model_shapes


def load_model(path, overrides: dict | None = None):
    """(model, vocab, checkpoint) from a checkpoint file; raises CheckpointError.

    overrides: config fields to change (e.g. dtype, threads); never the architecture.
    """
    ckpt = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict({**ckpt.config, **(overrides or {})})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from None
    _check_shapes(ckpt, expected_shapes(cfg, len(ckpt.vocab)), path)
    vocab = Vocabulary(ckpt.vocab)
    model = LanguageModel(cfg, len(vocab), params=ckpt.params, patterns=ckpt.patterns)
    return model, vocab, ckpt


def _check_shapes(ckpt: Checkpoint, shapes: dict, path) -> None:
    if list(ckpt.params) != list(shapes):
        raise CheckpointError(f"{path}: parameters {list(ckpt.params)} do not match its config")
    for name, shape in shapes.items():
        got = tuple(ckpt.patterns[name].shape) if name in ckpt.patterns else ckpt.params[name].shape
        if got != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {got}, its config says {shape}")


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(model: LanguageModel, corpus: Corpus, split: str, progress: bool = False) -> dict:
    """Mean NLL per predicted token and perplexity of a split, counted exactly over all batches."""
    cfg = model.cfg
    batcher = make_batcher(corpus, split, cfg.batching, cfg.eval_batch_size, cfg.bptt,
                           seed=cfg.seed, train=False)
    total, count, state = 0.0, 0, None
    bar = Progress(len(batcher), f"eval {split}", enabled=progress)
    start = time.perf_counter()
    for batch in batcher.batches():
        res = model.forward(batch, state, train=False)
        total += res.nll_sum
        count += res.n_tokens
        state = res.state
        bar.update(1)
    bar.close()
    loss = total / max(count, 1)
    seconds = time.perf_counter() - start
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count,
            "tokens_per_s": count / max(seconds, 1e-9)}


# -- the loop --------------------------------------------------------------------------------------
class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never half-applied."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:        # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum:               # second Ctrl-C: stop right away
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, data_dir: Path, resume: bool = False,
                 overwrite: bool = False, quiet: bool = False):
        self.cfg, self.out, self.quiet = cfg, Path(out), quiet
        prepare_run_folder(self.out, cfg, resume, overwrite)
        ckpt = vocab = None
        if resume:
            self.model, vocab, ckpt = load_model(self.out / "last.h5",
                                                 _resumable_fields(cfg))
            self.cfg = cfg = self.model.cfg
        self.corpus = load_corpus(data_dir, vocab=vocab)
        self.batcher = make_batcher(self.corpus, "train", cfg.batching, cfg.batch_size, cfg.bptt,
                                    seed=cfg.seed, train=True)
        if not resume:
            self.model = LanguageModel(cfg, len(self.corpus.vocab))
        self.optimizer = Optimizer(cfg, self.model.params.flat.size, self.model.dtype)
        self.run = RunState()
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.carried = None
        if ckpt:
            self._restore(ckpt)
        (self.out / "config.json").write_text(cfg.to_json() + "\n")
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.log.truncate_after(self.run.step)

    def _restore(self, ckpt: Checkpoint) -> None:
        progress = dict(ckpt.progress)
        if progress.get("best_valid") is None:
            progress["best_valid"] = math.inf
        self.run = RunState(**progress)
        self.optimizer.load_state(ckpt.optimizer, self.run.step - self.run.skipped)
        if self.run.rng:
            self.rng.bit_generator.state = self.run.rng
        hidden = ckpt.state.get("hidden")
        if hidden is not None:
            self.carried = [(h.astype(self.model.dtype), c.astype(self.model.dtype))
                            for h, c in hidden]

    def save(self, name: str = "last.h5") -> None:
        self.run.rng = self.rng.bit_generator.state
        save_checkpoint(self.out / name, model_checkpoint(self.model, self.corpus.vocab,
                                                          self.optimizer, self.run, self.carried))

    def train(self) -> dict:
        cfg, run = self.cfg, self.run
        steps_per_epoch = len(self.batcher)
        self.say(f"training {cfg.preset}: {self.model.params.flat.size:,} parameters, "
                 f"{steps_per_epoch} steps/epoch, {cfg.epochs} epochs -> {self.out}")
        with SignalGuard() as guard:
            while run.epoch < cfg.epochs and not self._done():
                self._train_epoch(guard, steps_per_epoch)
                if guard.signum or self._done() and run.cursor < steps_per_epoch:
                    break
                self._end_epoch()
            self.save()
            if guard.signum:
                raise Interrupted(f"interrupted at step {run.step}; saved {self.out / 'last.h5'}; "
                                  f"resume with: sparselm train --out {self.out} --resume",
                                  guard.signum)
        return self._finish()

    def _done(self) -> bool:
        return bool(self.cfg.max_steps) and self.run.step >= self.cfg.max_steps

    def _train_epoch(self, guard: SignalGuard, steps_per_epoch: int) -> None:
        cfg, run = self.cfg, self.run
        bar = Progress(steps_per_epoch, f"epoch {run.epoch + 1}/{cfg.epochs}",
                       initial=run.cursor, enabled=not self.quiet)
        window = {"nll": 0.0, "tokens": 0, "start": time.perf_counter(), "steps": 0}
        t0 = time.perf_counter()
        for batch in self.batcher.batches(start=run.cursor, epoch=run.epoch):
            if guard.signum or self._done():
                break
            lr = learning_rate(cfg, run.step, run.epoch)
            res = self.model.forward(batch, self.carried, self.rng, train=True)
            self.model.backward(res.cache)
            norm, applied = self.optimizer.step(self.model.params.flat, self.model.grads.flat,
                                                lr) if math.isfinite(res.loss) else (math.nan, False)
            if not applied:
                self._nonfinite(res.loss, norm)
            else:
                self.carried = res.state
            run.step += 1
            run.cursor += 1
            run.tokens += res.n_tokens
            window["nll"] += res.nll_sum
            window["tokens"] += res.n_tokens
            window["steps"] += 1
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.cursor == steps_per_epoch:
                self._log_train(window, lr, norm, bar, steps_per_epoch,
                                run.elapsed + time.perf_counter() - t0)
            if run.step % cfg.save_every == 0:
                run.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        run.elapsed += time.perf_counter() - t0
        bar.close()

    def _nonfinite(self, loss: float, norm: float) -> None:
        self.run.skipped += 1
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        message = (f"non-finite {what} at step {self.run.step + 1} (loss {loss}, grad norm "
                   f"{norm}); the step was rejected and the parameters are unchanged")
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(message + f"; last good checkpoint: {self.out / 'last.h5'}")
        self.say("warning: " + message + "; skipping (--on-nonfinite skip)")

    def _log_train(self, window, lr, norm, bar, steps_per_epoch, elapsed) -> None:
        run = self.run
        if not window["tokens"]:
            return
        loss = window["nll"] / window["tokens"]
        speed = window["tokens"] / max(time.perf_counter() - window["start"], 1e-9)
        record = {"event": "train", "step": run.step, "epoch": run.epoch + run.cursor /
                  steps_per_epoch, "tokens": run.tokens, "lr": lr, "loss": loss,
                  "ppl": math.exp(min(loss, 700.0)), "grad_norm": norm, "tokens_per_s": speed,
                  "elapsed": elapsed}
        self.log.write(record)
        bar.show(loss=f"{loss:.3f}", ppl=f"{record['ppl']:.1f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.3g}")
        window.update(nll=0.0, tokens=0, steps=0, start=time.perf_counter())

    def _end_epoch(self) -> None:
        run = self.run
        result = evaluate(self.model, self.corpus, "valid")
        self.log.write({"event": "valid", "step": run.step, "epoch": run.epoch + 1,
                        "tokens": run.tokens, "loss": result["loss"], "ppl": result["ppl"],
                        "elapsed": run.elapsed})
        self.say(f"epoch {run.epoch + 1}: valid ppl {result['ppl']:.2f}")
        run.epoch += 1
        run.cursor = 0
        self.carried = None
        improved = result["loss"] < run.best_valid
        if improved:
            run.best_valid = result["loss"]
        self.save()
        if improved:
            self.save("best.h5")

    def _finish(self) -> dict:
        run = self.run
        summary = {"step": run.step, "epoch": run.epoch, "tokens": run.tokens,
                   "elapsed": run.elapsed, "best_valid_ppl": math.exp(run.best_valid)
                   if math.isfinite(run.best_valid) else None}
        if run.epoch >= self.cfg.epochs:
            test = evaluate(self.model, self.corpus, "test")
            valid = evaluate(self.model, self.corpus, "valid")
            self.log.write({"event": "test", "step": run.step, "epoch": run.epoch,
                            "tokens": run.tokens, "loss": test["loss"], "ppl": test["ppl"],
                            "valid_ppl": valid["ppl"], "elapsed": run.elapsed})
            summary.update(test_ppl=test["ppl"], valid_ppl=valid["ppl"])
            self.say(f"done: valid ppl {valid['ppl']:.2f}, test ppl {test['ppl']:.2f}")
        return summary

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _resumable_fields(requested: TrainConfig) -> dict:
    """The fields a resumed run takes from the command line; all others come from the checkpoint."""
    changeable = ("epochs", "max_steps", "threads", "log_every", "save_every", "device",
                  "on_nonfinite")
    return {name: getattr(requested, name) for name in changeable}


def prepare_run_folder(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run unless resuming or overwriting; check it is writable."""
    has_run = (out / "config.json").exists() or (out / "last.h5").exists()
    if resume and not (out / "last.h5").exists():
        raise ConfigError(f"--resume: {out / 'last.h5'} not found")
    if has_run and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a run; use --resume to continue it or "
                          f"--overwrite to start over")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    if overwrite and not resume:
        for name in ("metrics.jsonl", "last.h5", "best.h5", "config.json"):
            (out / name).unlink(missing_ok=True)


def train(cfg: TrainConfig, out, data_dir, resume=False, overwrite=False, quiet=False) -> dict:
    """Train a model as configured; returns a summary dict. See Trainer."""
    return Trainer(cfg, Path(out), Path(data_dir), resume, overwrite, quiet).train()
