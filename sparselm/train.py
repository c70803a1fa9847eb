"""The training loop: steps, epochs, logging, saves, and what each fault leaves behind.

Around it, one concern per module: runs.py (the run folder, its lock, the resume policy),
signals.py (Ctrl-C and SIGTERM), evaluation.py (validation and test perplexity) and model_io.py
(model <-> checkpoint, the backend).

A run folder holds config.json, metrics.jsonl, last.h5 (written every `save_every` steps, at the
end of every epoch, at --max-steps and on Ctrl-C/SIGTERM) and best.h5 (lowest validation loss).
Each validation is added to the run's history, from which plateau.py decides the anneals of
--decay plateau (logged as "anneal" events) and the end of the run by --early-stop or
--max-anneals (a "stop" event; the run then finishes as if its last epoch were done).
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
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, all_finite, save_checkpoint
from .config import TrainConfig
from .data import find_corpus, load_corpus, make_batcher, source_record
from .errors import CheckpointError, DivergedError, NonFiniteError
from .evaluation import evaluate, perplexity
from .kernels import cpu_cache_cold
from .metrics import MetricsLog, Progress
from .model import LanguageModel
from .model_io import load_model_checkpoint, model_checkpoint, model_from, resolve_device
from .optim import Optimizer, learning_rate
from .plateau import cfg_plateau, stop_reason
from .runs import (
    RunFolderError,
    RunState,
    claim_run_folder,
    clear_run,
    remove_temporaries,
    resume_command,
    resumed_fields,
    truncate_metrics,
    write_atomic,
)
from .signals import SignalGuard

# --on-nonfinite skip gives up after this many rejected steps in a row: the model has diverged
# (e.g. finite but huge weights that overflow every forward pass), and skipping would only burn
# the rest of the run.
MAX_SKIPS_IN_A_ROW = 20
# A model that predicts every word equally scores ln V per token, and a fresh model starts near it.
# A finite training loss above DIVERGED_FACTOR * ln V for DIVERGED_STEPS steps in a row means the
# run has diverged (e.g. --lr 1e6 kept the loss near 1e6 per token, and the run went on silently).
DIVERGED_FACTOR = 2.0
DIVERGED_STEPS = 50


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
            ckpt = load_model_checkpoint(self.out / "last.h5")
            recorded = str(ckpt.config.get("data", ""))
        # "": no --data and no $SPARSELM_DATA; a resumed run then finds its own corpus again
        self.data_dir = find_corpus(self.data_dir, recorded, self.device_notes.append)
        data = source_record(self.data_dir)
        if ckpt:
            fields = {**resumed_fields(self.cfg, ckpt.config), "data": data}
            self.model, vocab = model_from(ckpt, self.out / "last.h5", fields, self.backend)
            self.cfg = self.model.cfg
        else:
            self.cfg = dataclasses.replace(self.cfg, data=data)
        cfg = self.cfg
        self._load_data(vocab)
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
        self.stopped = ""  # why the validation history ended the run (plateau.stop_reason)
        if ckpt:
            self._restore(ckpt)
        self._prepare_folder(clear=overwrite and not resume)

    def _load_data(self, vocab) -> None:
        """The corpus and the training batcher; every split is batched now, so a split too
        short for its batch fails before the first step, not after an epoch."""
        cfg = self.cfg
        self.corpus = load_corpus(self.data_dir, vocab=vocab)
        self.batcher = make_batcher(
            self.corpus, "train", cfg.batching, cfg.batch_size, cfg.bptt, seed=cfg.seed, train=True
        )
        for split in ("valid", "test"):
            make_batcher(
                self.corpus,
                split,
                cfg.batching,
                cfg.eval_batch_size,
                cfg.bptt,
                seed=cfg.seed,
                train=False,
            )

    def _prepare_folder(self, clear: bool) -> None:
        """Once everything has loaded: the old run's files gone (--overwrite), leftovers of killed
        writes removed, config.json written, metrics.jsonl cut back to the restored step."""
        if clear:
            clear_run(self.out)
        remove_temporaries(self.out)
        write_atomic(self.out / "config.json", self.cfg.to_json() + "\n")
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
            self.stopped = stop_reason(self.cfg, self.run.valid_losses)
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
        if not all_finite(self.model.params.host_flat()):
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
        while run.epoch < cfg.epochs and not self._done() and not self.stopped:
            self._train_epoch(guard, steps_per_epoch)
            if guard.signum or self._done() and run.cursor < steps_per_epoch:
                break
            if not self._end_epoch(guard):
                break
        self.save()
        summary = None if guard.signum else self._finish(guard)
        if summary is None:
            raise guard.interrupted(
                f"at step {run.step}; saved {self.out / 'last.h5'}; resume with: "
                f"{resume_command(self.cfg, self.out, self.data_dir)}"
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

    def _epoch_end(self, steps_per_epoch: int) -> int:
        """The batch of this epoch the run will stop at: the epoch's end, or --max-steps when
        that comes first (the progress bar's total)."""
        if not self.cfg.max_steps:
            return steps_per_epoch
        left = max(0, self.cfg.max_steps - self.run.step)
        return min(steps_per_epoch, self.run.cursor + left)

    def _train_epoch(self, guard: SignalGuard, steps_per_epoch: int) -> None:
        cfg, run = self.cfg, self.run
        bar = Progress(
            self._epoch_end(steps_per_epoch),
            f"epoch {run.epoch + 1}/{cfg.epochs}",
            initial=run.cursor,
            enabled=not self.quiet,
        )
        window_start = t0 = time.perf_counter()
        for batch in self.batcher.batches(start=run.cursor, epoch=run.epoch):
            if guard.signum or self._done():
                break
            lr = learning_rate(cfg, run.step, run.epoch, run.valid_losses)
            res, norm, applied = self._step(batch, lr)
            run.step += 1
            run.cursor += 1
            run.tokens += res.n_tokens
            if applied:  # a rejected batch's NaN must not poison the window
                run.log_nll += res.nll_sum
                run.log_tokens += res.n_tokens
            bar.update(1)
            # a window closes every log_every steps, at the end of the epoch and at --max-steps
            # (which would otherwise leave the run's last steps out of metrics.jsonl)
            if run.step % cfg.log_every == 0 or run.cursor == steps_per_epoch or self._done():
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
        if not all_finite(self.model.params.host_flat()):
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
        self._decide(result["loss"])
        if result["loss"] < run.best_valid:
            run.best_valid = result["loss"]
            self.save("best.h5")  # before last.h5: a kill in between redoes this epoch end
        self.save()
        return True

    def _decide(self, loss: float) -> None:
        """Add a validation loss to the history; log the anneal and the stop it calls for."""
        cfg, run = self.cfg, self.run
        anneals = cfg_plateau(cfg, run.valid_losses).anneals
        run.valid_losses.append(loss)
        where = {"step": run.step, "epoch": run.epoch, "tokens": run.tokens}
        if cfg_plateau(cfg, run.valid_losses).anneals > anneals:
            lr = learning_rate(cfg, run.step, run.epoch, run.valid_losses)
            anneals += 1
            self._log(
                {"event": "anneal", **where, "anneals": anneals, "lr": lr, "elapsed": run.elapsed}
            )
            self.say(f"annealed (no better validation): lr {lr:.4g}, anneal {anneals}")
        self.stopped = stop_reason(cfg, run.valid_losses)
        if self.stopped:
            self._log({"event": "stop", **where, "reason": self.stopped, "elapsed": run.elapsed})

    def _finish(self, guard: SignalGuard) -> dict | None:
        """The summary, with test and valid perplexity after the last epoch; None on a signal."""
        run = self.run
        best = perplexity(run.best_valid) if math.isfinite(run.best_valid) else None
        summary: dict[str, Any] = {
            "step": run.step,
            "epoch": run.epoch,
            "tokens": run.tokens,
            "skipped": run.skipped,
            "elapsed": run.elapsed,
            "best_valid_ppl": best,
        }
        if self.stopped:
            summary["stopped"] = self.stopped
            kept = f"; best.h5 holds the best validation (ppl {best:.2f})" if best else ""
            self.say(f"stopped after epoch {run.epoch}: {self.stopped}{kept}")
        if run.epoch >= self.cfg.epochs or self.stopped:
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


def train(cfg: TrainConfig, out, data_dir, resume=False, overwrite=False, quiet=False) -> dict:
    """Train a model as configured; returns a summary dict. See Trainer.

    data_dir: a corpus folder, "builtin", or None to find one (data.find_corpus).

    Signals are caught from the start, so a Ctrl-C while loading still ends in a clean save.
    """
    with SignalGuard() as guard:
        trainer = Trainer(cfg, Path(out), data_dir, resume, overwrite, quiet)
        return trainer.train(guard)
