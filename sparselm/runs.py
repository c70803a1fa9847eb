"""Run folders: the lock, the files a run keeps, atomic writes, and the resume policy.

A run folder holds config.json, metrics.jsonl, last.h5 and best.h5 (train.py says when each is
written). This module decides what a folder may be used for (a new run, --resume, --overwrite),
holds it exclusively for the whole run (RunLock), and, on resume, which fields the command line
may change, which logged events are redone (truncate_metrics) and the command that continues a
run (resume_command). It never touches a model: the loop (train.py) and model_io.py do.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig, make_config
from .errors import ConfigError
from .metrics import read_lines

RUN_FILES = ("metrics.jsonl", "last.h5", "best.h5", "config.json")
# Temporary files of interrupted atomic writes: ours (config.json, metrics.jsonl) and
# checkpoint.py's (.<name>.<pid>-<hex>.tmp).
_TEMPORARY = re.compile(r"\.(last\.h5|best\.h5|config\.json|metrics\.jsonl)\..+\.tmp\Z")


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
    # validation loss per token of every evaluation, in order: the plateau schedule and early
    # stopping are functions of it (plateau.py), so a resumed run decides as the first one did
    valid_losses: list = field(default_factory=list)
    skipped: int = 0  # steps rejected for a non-finite loss or gradient
    elapsed: float = 0.0  # training seconds before this process
    rng: dict = field(default_factory=dict)
    log_nll: float = 0.0  # summed NLL and tokens of the steps not yet in a "train" line:
    log_tokens: int = 0  # a resume in the middle of a window logs the same mean


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

    Kept: train and nonfinite events up to run.step; valid (and the anneal and stop that follow
    them) events of completed epochs; no test event at or after run.step (a resumed finished run
    logs it again). Lines cut short by a
    crash are dropped. Written atomically: a kill here must not lose the kept history.
    """
    if not path.exists():
        return
    kept = []
    for line, record in read_lines(path):
        try:
            keep = _keep_event(record, run)
        except (TypeError, KeyError):  # no step, or one that is not a number: not ours
            continue
        if keep:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


def _keep_event(record: dict, run: RunState) -> bool:
    step = record["step"]
    if record.get("event") in ("valid", "anneal", "stop"):
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


def pick_checkpoint(path: Path | str, say) -> Path:
    """The checkpoint that `evaluate` or `generate` given `path` reads: path itself unless it is
    a folder; in a run folder best.h5 (lowest validation loss) when there is one, else last.h5,
    named in one line through `say`."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name, why in (("best.h5", "lowest validation perplexity"), ("last.h5", "no best.h5")):
        if (path / name).is_file():
            say(f"using {path / name} ({why})")
            return path / name
    raise RunFolderError(f"{path} holds no checkpoint (neither best.h5 nor last.h5)")


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
