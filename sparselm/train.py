"""The training loop: epochs, logging, evaluation, checkpoints, interrupts and resume.

A run folder holds config.json, metrics.jsonl, last.h5 (written every `save_every` steps, at the
end of every epoch, at --max-steps and on Ctrl-C/SIGTERM) and best.h5 (lowest validation loss).
Everything that decides the next loss is in last.h5 (parameters, optimiser state, step, epoch,
batch cursor, the dropout generator's state, the carried hidden state and the partial logging
window), so a resumed run computes, and logs, exactly the losses of the uninterrupted one.

Faults, and what they leave behind (docs/RELIABILITY.md has the experiments):
- Ctrl-C / SIGTERM: the current step finishes (or an evaluation is abandoned), last.h5 is saved,
  Interrupted (exit 128 + signal) says how to resume. A second signal stops at once.
- kill -9, power loss: saves are atomic (checkpoint.py), so last.h5 is the previous save; events
  logged after it are dropped from metrics.jsonl when the run resumes.
- a non-finite loss or gradient norm: the step is never applied; --on-nonfinite stop (default)
  ends the run without saving, skip goes on with the next batch.
- a finite loss far above the uniform model's (2 ln V) for 50 steps in a row: said once;
  --on-divergence stop ends the run there without saving.
- bad data, options or folders are found before the first step, each as one SparseLMError.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, CSRPattern, load_checkpoint, save_checkpoint
from .config import TrainConfig, make_config
from .data import Corpus, Vocabulary, find_corpus, load_corpus, make_batcher, source_record
from .errors import CheckpointError, ConfigError, DivergedError, NonFiniteError, SparseLMError
from .kernels import cpu_cache_cold
from .layout import parameter_shapes
from .metrics import MetricsLog, Progress
from .model import LanguageModel
from .optim import Optimizer, learning_rate

RUN_FILES = ("metrics.jsonl", "last.h5", "best.h5", "config.json")
# Temporary files of interrupted atomic writes: ours (config.json, metrics.jsonl) and
# checkpoint.py's (.<name>.<pid>-<hex>.tmp).
_TEMPORARY = re.compile(r"\.(last\.h5|best\.h5|config\.json|metrics\.jsonl)\..+\.tmp\Z")
# --on-nonfinite skip gives up after this many rejected steps in a row: the model has diverged
# (e.g. finite but huge weights that overflow every forward pass), and skipping would only burn
# the rest of the run.
MAX_SKIPS_IN_A_ROW = 20
# A model that predicts every word equally scores ln V per token, and a fresh model starts near it.
# A finite training loss above DIVERGED_FACTOR * ln V for DIVERGED_STEPS steps in a row means the
# run has diverged (e.g. --lr 1e6 kept the loss near 1e6 per token, and the run went on silently).
DIVERGED_FACTOR = 2.0
DIVERGED_STEPS = 50


class Interrupted(SparseLMError):
    """Training stopped by a signal after saving last.h5."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class RunFolderError(ConfigError):
    """The output folder holds another run, is in use, or cannot be written."""


@dataclass
class RunState:
    """Where the run is: what resume restores besides parameters and optimiser state."""

    step: int = 0  # optimiser steps done (rejected steps included)
    epoch: int = 0  # current epoch (0-based)
    cursor: int = 0  # batches of this epoch already done
    tokens: int = 0  # training tokens seen
    best_valid: float = math.inf  # lowest validation loss per token
    skipped: int = 0  # steps rejected for a non-finite loss or gradient
    elapsed: float = 0.0  # training seconds before this process
    rng: dict = field(default_factory=dict)
    log_nll: float = 0.0  # summed NLL and tokens of the steps not yet in a "train" line:
    log_tokens: int = 0  # a resume in the middle of a window logs the same mean


# -- model and checkpoint glue -------------------------------------------------------------------
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
    ckpt = load_checkpoint(path)
    return _model_from(ckpt, path, overrides, backend) + (ckpt,)


def _model_from(ckpt: Checkpoint, path, overrides: dict | None, backend=None):
    """(model, vocab) of a loaded checkpoint, its config updated by `overrides`."""
    try:
        cfg = TrainConfig.from_dict({**ckpt.config, **(overrides or {})})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from None
    _check_shapes(ckpt, expected_shapes(cfg, len(ckpt.vocab)), path)
    vocab = Vocabulary(ckpt.vocab)
    return LanguageModel(
        cfg, len(vocab), params=ckpt.params, patterns=ckpt.patterns, backend=backend
    ), vocab


def _check_shapes(ckpt: Checkpoint, shapes: dict, path) -> None:
    if list(ckpt.params) != list(shapes):
        raise CheckpointError(f"{path}: parameters {list(ckpt.params)} do not match its config")
    for name, shape in shapes.items():
        got = tuple(ckpt.patterns[name].shape) if name in ckpt.patterns else ckpt.params[name].shape
        if got != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {got}, its config says {shape}")


def _all_finite(flat: np.ndarray) -> bool:
    """flat: (P,) float. max and min propagate NaN and show inf: two passes, no temporary."""
    return flat.size == 0 or (math.isfinite(flat.max()) and math.isfinite(flat.min()))


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(700): a diverged run's loss of 1e6 per token must not overflow."""
    return math.exp(min(loss, 700.0))


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(
    model: LanguageModel, corpus: Corpus, split: str, progress: bool = False, stop=None
) -> dict | None:
    """Mean NLL per predicted token and perplexity of a split, counted exactly over all batches.

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


# -- signals -------------------------------------------------------------------------------------
class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never half-applied.

    A second signal raises KeyboardInterrupt at once (a save in progress is abandoned by
    checkpoint.py, which leaves the previous file in place). When that lands inside a finaliser
    or weakref callback, Python cannot raise it and would print it with a traceback ("Exception
    ignored in ..."); the guard silences that report, and the run stops at the next step
    boundary on the first signal's flag instead.
    """

    def __init__(self):
        self.signum = 0
        self._old = {}
        self._old_hook = None

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        if self._old:
            self._old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def _unraisable(self, info):
        if self.signum and issubclass(info.exc_type, KeyboardInterrupt):
            return  # our second-signal interrupt, swallowed by a finaliser
        self._old_hook(info)

    def _handle(self, signum, frame):
        if self.signum:  # second Ctrl-C: stop right away
            raise KeyboardInterrupt
        self.signum = signum

    def stopping(self) -> bool:
        return bool(self.signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old_hook is not None:
            sys.unraisablehook = self._old_hook


# -- the loop ------------------------------------------------------------------------------------
class Trainer:
    """One training run in a run folder; see the module docstring for what it guarantees.

    The folder is locked (RunLock) from construction until train() returns or close().
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        data_dir: Path | str | None,
        resume: bool = False,
        overwrite: bool = False,
        quiet: bool = False,
    ):
        self.cfg, self.out, self.data_dir, self.quiet = cfg, Path(out), str(data_dir or ""), quiet
        self.compile_started: float | None = None  # set while a first run compiles kernels
        self._lock = claim_run_folder(self.out, resume, overwrite)
        try:
            self._setup(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool, overwrite: bool) -> None:
        """Load (or build) everything, checking data and options, before touching the folder."""
        self.device_notes: list[str] = []  # said when training starts, not before a setup error
        self.backend = resolve_device(self.cfg.device, self.device_notes.append)
        ckpt = vocab = None
        recorded = ""
        if resume:
            ckpt = load_checkpoint(self.out / "last.h5")
            recorded = str(ckpt.config.get("data", ""))
        # "": no --data and no $SPARSELM_DATA; a resumed run then finds its own corpus again
        self.data_dir = find_corpus(self.data_dir, recorded, self.device_notes.append)
        data = source_record(self.data_dir)
        if ckpt:
            fields = {**resumed_fields(self.cfg, ckpt.config), "data": data}
            self.model, vocab = _model_from(ckpt, self.out / "last.h5", fields, self.backend)
            self.cfg = self.model.cfg
        else:
            self.cfg = dataclasses.replace(self.cfg, data=data)
        cfg = self.cfg
        self.corpus = load_corpus(self.data_dir, vocab=vocab)
        self.batcher = make_batcher(
            self.corpus, "train", cfg.batching, cfg.batch_size, cfg.bptt, seed=cfg.seed, train=True
        )
        for split in ("valid", "test"):  # too short for the eval batch: fail now, not in an hour
            make_batcher(
                self.corpus,
                split,
                cfg.batching,
                cfg.eval_batch_size,
                cfg.bptt,
                seed=cfg.seed,
                train=False,
            )
        if not resume:
            self.model = LanguageModel(cfg, len(self.corpus.vocab), backend=self.backend)
        self.optimizer = Optimizer(cfg, self.model.params.flat.size, self.model.dtype, self.backend)
        self.run = RunState()
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.carried = None
        self.saved_step: int | None = None  # step of the last.h5 this run can fall back to
        self.skips_in_a_row = 0
        self.high_in_a_row = 0  # steps in a row with a loss far above ln V (DIVERGED_*)
        self.said_diverged = False
        if ckpt:
            self._restore(ckpt)
        if overwrite and not resume:
            clear_run(self.out)
        remove_temporaries(self.out)
        write_atomic(self.out / "config.json", cfg.to_json() + "\n")
        self.log = MetricsLog(self.out / "metrics.jsonl")
        truncate_metrics(self.log.path, self.run)

    def _restore(self, ckpt: Checkpoint) -> None:
        progress = dict(ckpt.progress)
        if progress.get("best_valid") is None:
            progress["best_valid"] = math.inf
        try:
            self.run = RunState(**progress)
            self.optimizer.load_state(ckpt.optimizer, self.run.step - self.run.skipped)
            if self.run.rng:
                self.rng.bit_generator.state = self.run.rng
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.out / 'last.h5'}: cannot resume from it: {exc}") from None
        hidden = ckpt.state.get("hidden")
        if hidden is not None:
            self.carried = self.model.state_to_device(list(hidden))
        self.saved_step = self.run.step

    def close(self) -> None:
        """Release the run folder's lock (idempotent)."""
        self._lock.close()

    def save(self, name: str = "last.h5") -> None:
        """Write the run's state atomically to out/name; the previous file survives any failure."""
        path = self.out / name
        if not _all_finite(self.model.params.host_flat()):
            raise NonFiniteError(
                f"not saving {path}: the parameters became non-finite by step "
                f"{self.run.step} (an update overflowed: is --lr too large?); "
                f"{self._fallback()}"
            )
        self.run.rng = dict(self.rng.bit_generator.state)
        try:
            save_checkpoint(
                path,
                model_checkpoint(
                    self.model, self.corpus.vocab, self.optimizer, self.run, self.carried
                ),
            )
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}; training stopped at step {self.run.step}; {self._fallback()}"
            ) from None
        if name == "last.h5":
            self.saved_step = self.run.step

    def _fallback(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was saved by this run"
        return f"{self.out / 'last.h5'} holds step {self.saved_step}"

    def train(self, guard: SignalGuard | None = None) -> dict:
        """Run to the configured end; returns a summary dict. Raises Interrupted on a signal."""
        try:
            if guard is not None:
                return self._train(guard)
            with SignalGuard() as guard:
                return self._train(guard)
        finally:
            self.close()

    def _train(self, guard: SignalGuard) -> dict:
        for note in self.device_notes:
            self.say(note)
        cfg, run = self.cfg, self.run
        steps_per_epoch = len(self.batcher)
        self.say(
            f"training {cfg.preset}: {self.model.params.flat.size:,} parameters, "
            f"{steps_per_epoch} steps/epoch, {cfg.epochs} epochs on {self.backend.name} "
            f"({self.backend.detail}) -> {self.out}"
        )
        self._note_compile()
        while run.epoch < cfg.epochs and not self._done():
            self._train_epoch(guard, steps_per_epoch)
            if guard.signum or self._done() and run.cursor < steps_per_epoch:
                break
            if not self._end_epoch(guard):
                break
        self.save()
        summary = None if guard.signum else self._finish(guard)
        if summary is None:
            raise Interrupted(
                f"interrupted ({signal.Signals(guard.signum).name}) at step "
                f"{run.step}; saved {self.out / 'last.h5'}; resume with: "
                f"{resume_command(self.cfg, self.out, self.data_dir)}",
                guard.signum,
            )
        return summary

    def _note_compile(self) -> None:
        """Say once, before a first run's long silence, that the kernels are being compiled; the
        first step (see _step) then reports how long it took."""
        if self.backend.name == "cpu" and cpu_cache_cold(self.cfg.sparsity < 1.0):
            self.say("compiling kernels (first run only: later runs load them from the cache) ...")
            self.compile_started = time.perf_counter()

    def _compile_done(self) -> None:
        if self.compile_started is not None:
            seconds = time.perf_counter() - self.compile_started
            self.say(f"kernels compiled; the first step took {seconds:.0f} s")
            self.compile_started = None

    def _done(self) -> bool:
        return bool(self.cfg.max_steps) and self.run.step >= self.cfg.max_steps

    def _train_epoch(self, guard: SignalGuard, steps_per_epoch: int) -> None:
        cfg, run = self.cfg, self.run
        bar = Progress(
            steps_per_epoch,
            f"epoch {run.epoch + 1}/{cfg.epochs}",
            initial=run.cursor,
            enabled=not self.quiet,
        )
        window_start = t0 = time.perf_counter()
        for batch in self.batcher.batches(start=run.cursor, epoch=run.epoch):
            if guard.signum or self._done():
                break
            lr = learning_rate(cfg, run.step, run.epoch)
            res, norm, applied = self._step(batch, lr)
            run.step += 1
            run.cursor += 1
            run.tokens += res.n_tokens
            if applied:  # a rejected batch's NaN must not poison the window
                run.log_nll += res.nll_sum
                run.log_tokens += res.n_tokens
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.cursor == steps_per_epoch:
                self._log_train(
                    window_start,
                    lr,
                    norm,
                    bar,
                    steps_per_epoch,
                    run.elapsed + time.perf_counter() - t0,
                )
                window_start = time.perf_counter()
            if run.step % cfg.save_every == 0:
                run.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        run.elapsed += time.perf_counter() - t0
        bar.close()

    def _step(self, batch, lr: float):
        """Forward, backward and update of one batch -> (result, gradient norm, applied).

        A non-finite loss or gradient norm leaves parameters, optimiser state and the carried
        hidden state as they were (applied = False), after _nonfinite has decided stop or skip.
        """
        res = self.model.forward(batch, self.carried, self.rng, train=True)
        if not math.isfinite(res.loss):
            self._nonfinite(res.loss, math.nan)
            return res, math.nan, False
        self.model.backward(res.cache)
        norm, applied = self.optimizer.step(
            self.model.params.flat, self.model.grads.flat, lr, self.model.sparse_grads
        )
        if not applied:
            self._nonfinite(res.loss, norm)
            return res, norm, False
        self.carried = res.state
        self.skips_in_a_row = 0
        self._compile_done()
        self._watch_divergence(res.nll_sum / max(res.n_tokens, 1))
        return res, norm, True

    def _watch_divergence(self, loss: float) -> None:
        """loss: this step's NLL per token. Say once (or stop) when it stays far above ln V."""
        vocab = len(self.corpus.vocab)
        limit = DIVERGED_FACTOR * math.log(vocab)
        self.high_in_a_row = self.high_in_a_row + 1 if vocab > 1 and loss > limit else 0
        if self.high_in_a_row < DIVERGED_STEPS or self.said_diverged:
            return
        message = (
            f"the training loss has stayed above {limit:.3g} per token (twice ln V, the loss of "
            f"a uniform guess over the {vocab} words) for {self.high_in_a_row} steps, now "
            f"{loss:.4g} at step {self.run.step + 1}: the run has diverged (is --lr too large?)"
        )
        if self.cfg.on_divergence == "stop":
            raise DivergedError(f"{message}; stopping (--on-divergence stop); {self._fallback()}")
        self.said_diverged = True
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _nonfinite(self, loss: float, norm: float) -> None:
        """Record a rejected step; raise NonFiniteError unless --on-nonfinite skip can go on."""
        step = self.run.step + 1
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        self._log({"event": "nonfinite", "step": step, "loss": loss, "grad_norm": norm})
        message = (
            f"non-finite {what} at step {step} (loss {loss}, grad norm {norm}); the step "
            "was rejected"
        )
        if not _all_finite(self.model.params.host_flat()):
            # Only an update can do this (an overflow, e.g. lr far too large); it cannot be undone
            # in memory, so skipping would only reject every later step too.
            raise NonFiniteError(
                f"{message}, but the parameters are already non-finite (an "
                f"earlier update overflowed: is --lr too large?); "
                f"{self._fallback()}"
            )
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(
                f"{message} and the parameters are unchanged; stopping "
                f"(--on-nonfinite stop); {self._fallback()}"
            )
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(
                f"{message}; {self.skips_in_a_row} steps in a row were "
                f"non-finite, so the model has diverged; stopping; "
                f"{self._fallback()}"
            )
        self.run.skipped += 1
        print(f"warning: {message}; skipping it (--on-nonfinite skip)", file=sys.stderr, flush=True)

    def _log(self, record: dict) -> None:
        try:
            self.log.write(record)
        except OSError as exc:
            raise RunFolderError(
                f"cannot write {self.log.path}: {exc.strerror or exc}; {self._fallback()}"
            ) from None

    def _log_train(self, window_start, lr, norm, bar, steps_per_epoch, elapsed) -> None:
        run = self.run
        if not run.log_tokens:
            return
        loss = run.log_nll / run.log_tokens
        speed = run.log_tokens / max(time.perf_counter() - window_start, 1e-9)
        record = {
            "event": "train",
            "step": run.step,
            "epoch": run.epoch + run.cursor / steps_per_epoch,
            "tokens": run.tokens,
            "lr": lr,
            "loss": loss,
            "ppl": perplexity(loss),
            "grad_norm": norm,
            "tokens_per_s": speed,
            "elapsed": elapsed,
        }
        self._log(record)
        bar.show(
            loss=f"{loss:.3f}", ppl=f"{record['ppl']:.1f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.3g}"
        )
        run.log_nll, run.log_tokens = 0.0, 0

    def _end_epoch(self, guard: SignalGuard) -> bool:
        """Validate, log, save; False when a signal abandoned the evaluation (nothing changed)."""
        run = self.run
        result = evaluate(self.model, self.corpus, "valid", stop=guard.stopping)
        if result is None:
            return False
        self._log(
            {
                "event": "valid",
                "step": run.step,
                "epoch": run.epoch + 1,
                "tokens": run.tokens,
                "loss": result["loss"],
                "ppl": result["ppl"],
                "elapsed": run.elapsed,
            }
        )
        self.say(f"epoch {run.epoch + 1}: valid ppl {result['ppl']:.2f}{_oracle_note(result)}")
        run.epoch += 1
        run.cursor = 0
        self.carried = None
        if result["loss"] < run.best_valid:
            run.best_valid = result["loss"]
            self.save("best.h5")  # before last.h5: a kill in between redoes this epoch end
        self.save()
        return True

    def _finish(self, guard: SignalGuard) -> dict | None:
        """The summary, with test and valid perplexity after the last epoch; None on a signal."""
        run = self.run
        best = perplexity(run.best_valid) if math.isfinite(run.best_valid) else None
        summary = {
            "step": run.step,
            "epoch": run.epoch,
            "tokens": run.tokens,
            "skipped": run.skipped,
            "elapsed": run.elapsed,
            "best_valid_ppl": best,
        }
        if run.epoch >= self.cfg.epochs:
            test = evaluate(self.model, self.corpus, "test", stop=guard.stopping)
            valid = evaluate(self.model, self.corpus, "valid", stop=guard.stopping)
            if test is None or valid is None:
                return None
            self._log(
                {
                    "event": "test",
                    "step": run.step,
                    "epoch": run.epoch,
                    "tokens": run.tokens,
                    "loss": test["loss"],
                    "ppl": test["ppl"],
                    "valid_ppl": valid["ppl"],
                    "elapsed": run.elapsed,
                }
            )
            summary.update(test_ppl=test["ppl"], valid_ppl=valid["ppl"])
            if "oracle_ppl" in test:
                summary.update(
                    oracle_test_ppl=test["oracle_ppl"], oracle_valid_ppl=valid["oracle_ppl"]
                )
            self.say(f"done: valid ppl {valid['ppl']:.2f}, test ppl {test['ppl']:.2f}")
            if "oracle_ppl" in test:
                self.say(
                    f"oracle (the grammar that generated the corpus, same tokens): valid ppl "
                    f"{valid['oracle_ppl']:.2f}, test ppl {test['oracle_ppl']:.2f}"
                )
        return summary

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _oracle_note(result: dict) -> str:
    return f" (oracle {result['oracle_ppl']:.2f})" if "oracle_ppl" in result else ""


# -- resume --------------------------------------------------------------------------------------
def resumed_fields(requested: TrainConfig, saved: dict) -> dict:
    """The fields a resumed run may change; every other field comes from the checkpoint.

    max_steps, threads, device, on_nonfinite, on_divergence: the command line's (they steer this
    process).
    epochs, log_every, save_every: the command line's when it differs from the default of the
    requested preset, else the checkpoint's, so that a bare `--resume` of a run of any preset
    continues with that run's own length and logging cadence.
    """
    fields = {
        name: getattr(requested, name)
        for name in ("max_steps", "threads", "device", "on_nonfinite", "on_divergence")
    }
    try:
        default = make_config(requested.preset)
    except ConfigError:
        default = requested
    for name in ("epochs", "log_every", "save_every"):
        given = getattr(requested, name)
        fields[name] = saved.get(name, given) if given == getattr(default, name) else given
    return fields


def resume_command(cfg: TrainConfig, out: Path, data_dir: Path | str) -> str:
    """The command line that continues this run exactly."""
    words = ["sparselm", "train", "--out", str(out), "--data", str(data_dir), "--resume"]
    for flag, name, default in (
        ("--max-steps", "max_steps", 0),
        ("--threads", "threads", 0),
        ("--device", "device", "auto"),
    ):
        if getattr(cfg, name) != default:
            words += [flag, str(getattr(cfg, name))]
    return " ".join(shlex.quote(w) for w in words)


def truncate_metrics(path: Path, run: RunState) -> None:
    """Drop the events logged after the state `run` was saved in (they are redone on resume).

    Kept: train and nonfinite events up to run.step; valid events of completed epochs; no test
    event at or after run.step (a resumed finished run logs it again). Lines cut short by a
    crash are dropped. Written atomically: a kill here must not lose the kept history.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = _keep_event(record, run)
        except (ValueError, TypeError, KeyError):
            continue
        if keep:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


def _keep_event(record: dict, run: RunState) -> bool:
    step = record["step"]
    if record.get("event") == "valid":
        return step < run.step or step == run.step and record["epoch"] <= run.epoch
    if record.get("event") == "test":
        return step < run.step
    return step <= run.step


# -- the run folder ------------------------------------------------------------------------------
class RunLock:
    """An exclusive flock on the run folder itself, held by an open descriptor for the whole run.

    Locking the folder, not a file in it, means that no file can be deleted to break the lock
    (the lock file of earlier versions, .lock, invited that), and a finished run leaves nothing
    behind. The kernel drops the lock when the process ends, however it ends: no lock is stale.
    """

    def __init__(self, out: Path):
        self.fd: int | None = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _retire_old_lock_file(out)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _retire_old_lock_file(out: Path) -> None:
    """Remove the .lock file of an earlier sparselm, unless one of those still runs there."""
    old = out / ".lock"
    try:
        fd = os.open(old, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: it is in use
        old.unlink(missing_ok=True)
    finally:
        os.close(fd)


def claim_run_folder(out: Path, resume: bool, overwrite: bool) -> RunLock:
    """Create and lock the folder; refuse one in use or holding another run. Returns the lock.

    Raises RunFolderError before anything is written there (only the folder itself).
    """
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(
            f"output folder {out} is not writable: {exc.strerror or exc}"
        ) from None
    try:
        lock = RunLock(out)
    except BlockingIOError:
        raise RunFolderError(f"{out} is in use by another sparselm process") from None
    except OSError as exc:  # e.g. a filesystem without flock
        raise RunFolderError(f"cannot lock output folder {out}: {exc.strerror or exc}") from None
    try:
        check_run_folder(out, resume, overwrite)
    except BaseException:
        lock.close()
        raise
    return lock


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run unless resuming or overwriting."""
    has_run = any((out / name).exists() for name in ("config.json", "last.h5"))
    if resume and not (out / "last.h5").exists():
        hint = (
            "it stopped before its first save; start it again with --overwrite"
            if has_run
            else "no run there"
        )
        raise RunFolderError(f"--resume: {out / 'last.h5'} not found ({hint})")
    if has_run and not (resume or overwrite):
        raise RunFolderError(
            f"{out} already holds a run; use --resume to continue it or --overwrite to start over"
        )


def clear_run(out: Path) -> None:
    """Remove a previous run's files (--overwrite), once the new run is known to start."""
    try:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise RunFolderError(f"--overwrite: cannot remove {exc.filename}: {exc.strerror}") from None


def remove_temporaries(out: Path) -> None:
    """Delete temporary files left by writes that a kill cut short (we hold the folder's lock)."""
    for path in out.iterdir():
        if _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace path's content with text: a temporary file renamed over it, never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise RunFolderError(f"cannot write {path}: {exc.strerror or exc}") from None


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


def train(cfg: TrainConfig, out, data_dir, resume=False, overwrite=False, quiet=False) -> dict:
    """Train a model as configured; returns a summary dict. See Trainer.

    data_dir: a corpus folder, "builtin", or None to find one (data.find_corpus).

    Signals are caught from the start, so a Ctrl-C while loading still ends in a clean save.
    """
    with SignalGuard() as guard:
        trainer = Trainer(cfg, Path(out), data_dir, resume, overwrite, quiet)
        return trainer.train(guard)
