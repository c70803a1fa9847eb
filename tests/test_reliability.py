"""Faults caused on purpose: signals and kill -9 during training, non-finite steps, bad input, a
full disk, determinism, and a fuzz of the corpus reader. docs/RELIABILITY.md reports the results.

The signal tests run the real CLI in subprocesses (`python -m sparselm.cli train`) and send real
signals; SPARSELM_KILL_TRIALS (default 5) sets how many SIGKILLs the chain test sends.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparselm import checkpoint
from sparselm import train as train_module
from sparselm.checkpoint import load_checkpoint
from sparselm.cli import main
from sparselm.config import make_config
from sparselm.errors import DataError
from sparselm.metrics import MetricsLog
from sparselm.model import LanguageModel
from sparselm.runs import RUN_FILES, claim_run_folder
from sparselm.signals import SignalGuard
from sparselm.train import train

REPO = Path(__file__).resolve().parent.parent
# A tiny model that saves after every step: most of its time is spent saving, so random kills
# often land inside a save. Dropout and momentum make the RNG and optimiser state matter.
MODEL = [
    "--quiet",
    "--emb",
    "8",
    "--hidden",
    "8",
    "--bptt",
    "5",
    "--batch-size",
    "4",
    "--seed",
    "5",
    "--dropout",
    "0.3",
    "--momentum",
    "0.5",
    "--log-every",
    "1",
    "--save-every",
    "1",
]
KILLS = int(os.environ.get("SPARSELM_KILL_TRIALS", "5"))
EPOCHS = max(32, 4 * KILLS)  # 15 steps an epoch: the signals and kills never reach the end,
# even when a loaded machine delays the sender
CHAIN = MODEL + ["--epochs", str(EPOCHS), "--threads", "1"]


# -- helpers -------------------------------------------------------------------------------------
def events(run: Path, kind: str) -> list[dict]:
    """The `kind` events of a run's metrics.jsonl (lines cut short by a kill are skipped)."""
    path = run / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == kind:
            out.append(record)
    return out


def losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in events(run, "train")]


def saved_step(run: Path):
    return load_checkpoint(run / "last.h5").progress["step"] if (run / "last.h5").exists() else None


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "sparselm.cli", *map(str, args)]


def launch(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def wait_for_save(proc: subprocess.Popen, run: Path, timeout: float = 120) -> bool:
    """Wait until this process has saved last.h5 (an atomic save gives it a new inode), so it is
    training; False if the process ended first."""
    first = inode(run / "last.h5")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inode(run / "last.h5") not in (None, first):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the run made no progress")


def one_line_error(result, needle: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and needle in result.output, result.output


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- 1. interrupts and kill -9 -------------------------------------------------------------------
def test_signals_and_kills_then_resume_equal_uninterrupted(tiny_corpus, tmp_path):
    """SIGINT, SIGTERM, a double SIGINT and SIGKILLs at random moments, each followed by a
    resume: the run ends with exactly the losses and parameters of an uninterrupted one."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(
        cli("train", "--data", tiny_corpus, "--out", ref, *CHAIN),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    train_cmd = cli("train", "--data", tiny_corpus, "--out", run, *CHAIN)

    resume_cmd = _interrupt(train_cmd, run, [signal.SIGINT], 130)
    # the printed command (no model flags: they come from last.h5) continues the run
    assert resume_cmd[:2] == ["sparselm", "train"] and "--resume" in resume_cmd
    _interrupt(cli(*resume_cmd[1:]), run, [signal.SIGTERM], 143)
    _interrupt(train_cmd + ["--resume"], run, [signal.SIGINT, signal.SIGINT], 130)
    _kill_trials(train_cmd, run, KILLS)

    final = subprocess.run(
        train_cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr
    assert losses(run) == losses(ref)
    assert [r["epoch"] for r in events(run, "valid")] == list(range(1, EPOCHS + 1))
    assert (
        len(events(run, "test")) == 1
        and events(run, "test")[0]["ppl"] == events(ref, "test")[0]["ppl"]
    )
    a, b = load_checkpoint(ref / "last.h5").params, load_checkpoint(run / "last.h5").params
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert temporaries(run) == []


def test_second_signal_inside_a_finaliser_is_not_reported(monkeypatch):
    """A second Ctrl-C raises KeyboardInterrupt wherever Python is; inside a finaliser Python
    cannot raise it and reports it with a traceback. The guard drops exactly that report (the
    run then stops at the next step boundary); other unraisable errors are still reported."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_type))

    class Finalised:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    with SignalGuard() as guard:
        Finalised(KeyboardInterrupt())  # before any signal: still reported
        guard.signum = signal.SIGINT  # a first signal arrived
        Finalised(KeyboardInterrupt())  # the second one, inside a finaliser: dropped
        Finalised(ValueError("boom"))  # anything else: reported
    assert seen == [KeyboardInterrupt, ValueError]
    assert sys.unraisablehook != guard._unraisable  # restored on exit


@pytest.mark.parametrize("argv0", ["/usr/bin/sparselm", "cli.py", "/x/sparselm/__main__.py"])
def test_ctrl_c_while_the_cli_imports_is_one_line(argv0):
    """SIGINT after `sparselm` started but before a command runs (click, NumPy still loading)."""
    code = (
        f"import os, signal, sys, time; sys.argv = [{argv0!r}, 'train']; import sparselm.cli; "
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert (done.returncode, done.stderr) == (128 + signal.SIGINT, b"error: interrupted\n")


def test_importing_the_cli_leaves_ctrl_c_alone():
    code = (  # compared with the inherited handler: a background job starts with SIGINT ignored
        "import signal; was = signal.getsignal(2); import sparselm.cli; "
        "assert signal.getsignal(2) is was"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def _interrupt(command, run: Path, signals, code: int) -> list[str]:
    """Run, send `signals` once training is under way; check the clean stop. Returns the
    printed resume command."""
    before = saved_step(run) or 0
    proc = launch(command)
    assert wait_for_save(proc, run)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.001)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()  # progress lines, if not --quiet, then the error
    assert "Traceback" not in err and lines[-1].startswith("error: interrupted"), err
    step = saved_step(run)  # loads: the file is whole
    assert step >= before
    if len(signals) == 1:  # a clean stop saves exactly the last logged step
        assert step == max(r["step"] for r in events(run, "train"))
        return lines[-1].split("resume with: ")[1].split()
    return []


def _kill_trials(command, run: Path, trials: int) -> None:
    """SIGKILL at random moments: during start-up (a third of the trials) or training and
    saving; last.h5 must always load and never move backwards."""
    rng = random.Random(trials)
    seen = {"no new save": 0, "mid-save": 0}
    for trial in range(trials):
        before, first = saved_step(run), inode(run / "last.h5")
        proc = launch(command + (["--resume"] if before is not None else ["--overwrite"]))
        if trial % 3 == 0:
            time.sleep(rng.uniform(0.0, 3.0))
        elif wait_for_save(proc, run):
            time.sleep(rng.uniform(0.0, 0.2))
        proc.kill()
        proc.communicate(timeout=60)
        after = saved_step(run)  # loads: the file is whole
        assert after is None and before is None or after >= (before or 0)
        seen["no new save"] += inode(run / "last.h5") == first
        # checkpoint.py names its temporary files .<name>.<pid>-<hex>.tmp
        seen["mid-save"] += any(f".{proc.pid}-" in name for name in temporaries(run))
    print(f"{trials} SIGKILL trials: {seen}, last.h5 at step {saved_step(run)}")


# -- 2. numerical faults -------------------------------------------------------------------------
def tiny(**overrides):
    base = dict(
        emb=8,
        hidden=8,
        bptt=5,
        batch_size=4,
        epochs=2,
        log_every=1,
        save_every=1,
        eval_batch_size=3,
        seed=5,
        momentum=0.5,
    )
    return make_config("small", **{**base, **overrides})


def poison(monkeypatch, step: int, where: str) -> None:
    """Make training step `step` (1-based) non-finite: its loss ("loss") or a gradient ("grad")."""
    forward, backward = LanguageModel.forward, LanguageModel.backward
    seen = {"n": 0}

    def bad_forward(self, batch, state=None, rng=None, train=True):
        res = forward(self, batch, state, rng, train)
        if train:
            seen["n"] += 1
            if seen["n"] == step and where == "loss":
                res.loss = math.nan
        return res

    def bad_backward(self, cache):
        out = backward(self, cache)
        if seen["n"] == step and where == "grad":
            self.grads.flat[3] = math.inf
        return out

    monkeypatch.setattr(LanguageModel, "forward", bad_forward)
    monkeypatch.setattr(LanguageModel, "backward", bad_backward)


def test_nonfinite_stop_keeps_last_good_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    train(tiny(max_steps=5), clean, tiny_corpus, quiet=True)
    poison(monkeypatch, 6, "loss")
    run = tmp_path / "run"
    result = invoke(
        "train", "--data", tiny_corpus, "--out", run, "--max-steps", 12, *MODEL, "--dropout", "0"
    )  # the last of a repeated option wins
    one_line_error(result, "non-finite loss at step 6")
    assert f"{run / 'last.h5'} holds step 5" in result.output
    a, b = load_checkpoint(clean / "last.h5"), load_checkpoint(run / "last.h5")
    assert b.progress["step"] == 5
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert [r["step"] for r in events(run, "nonfinite")] == [6]


def test_nonfinite_gradient_skip_leaves_parameters(tiny_corpus, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    train(tiny(max_steps=5), clean, tiny_corpus, quiet=True)
    poison(monkeypatch, 6, "grad")
    run = tmp_path / "run"
    summary = train(tiny(max_steps=6, on_nonfinite="skip"), run, tiny_corpus, quiet=True)
    assert summary["skipped"] == 1
    a, b = load_checkpoint(clean / "last.h5"), load_checkpoint(run / "last.h5")
    assert b.progress["step"] == 6 and b.progress["skipped"] == 1
    for store in ("params", "optimizer"):
        x, y = getattr(a, store), getattr(b, store)
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert [r["step"] for r in events(run, "nonfinite")] == [6]
    # the run goes on after the skipped step, with finite losses only
    summary = train(
        tiny(max_steps=9, on_nonfinite="skip"), run, tiny_corpus, resume=True, quiet=True
    )
    assert summary["step"] == 9 and all(math.isfinite(loss) for _, loss in losses(run))


def test_overflowing_update_is_never_saved(tiny_corpus, tmp_path):
    # lr 1e38 turns the first update into inf: the save refuses it, nothing is written
    run = tmp_path / "run"
    result = invoke(
        "train",
        "--data",
        tiny_corpus,
        "--out",
        run,
        *MODEL,
        "--lr",
        "1e38",
        "--clip",
        "0",
        "--init-scale",
        "10",
        "--max-steps",
        5,
        "--on-nonfinite",
        "skip",
    )
    one_line_error(result, "parameters became non-finite by step 1")
    assert not (run / "last.h5").exists() and temporaries(run) == []


def test_diverged_skip_run_gives_up(tiny_corpus, tmp_path):
    # weights that stay finite but overflow every forward pass: skip stops after 20 in a row
    result = invoke(
        "train",
        "--data",
        tiny_corpus,
        "--out",
        tmp_path / "run",
        *MODEL,
        "--lr",
        "1e30",
        "--clip",
        "0",
        "--init-scale",
        "10",
        "--max-steps",
        60,
        "--on-nonfinite",
        "skip",
    )
    assert "Traceback" not in result.output and result.exit_code == 1
    assert "20 steps in a row were non-finite" in result.output.strip().splitlines()[-1]


# -- 3. bad input --------------------------------------------------------------------------------
def corpus_folder(root: Path, **splits) -> Path:
    """A corpus folder with the given split contents (bytes or str; None: no file)."""
    root.mkdir(parents=True, exist_ok=True)
    base = {"train": "a b c\nb c a\nc a b\n" * 20, "valid": "a b c\n" * 10, "test": "c b a\n" * 10}
    for split, content in {**base, **splits}.items():
        if content is not None:
            data = content.encode() if isinstance(content, str) else content
            (root / f"ptb.{split}.txt").write_bytes(data)
    return root


@pytest.mark.parametrize(
    "splits,needle",
    [
        ({"valid": None}, "has no valid split"),
        ({"test": ""}, "ptb.test.txt is empty"),
        ({"train": " \n\t\n"}, "ptb.train.txt is empty"),
        ({"train": b"a b\n\xff\xfe c\n"}, "ptb.train.txt, line 2: not valid UTF-8"),
        ({"valid": "a b\x00c\n"}, "ptb.valid.txt, line 1: contains a NUL"),
        ({"valid": "a b zebra\n"}, "ptb.valid.txt, line 1: word 'zebra' is not in the vocabulary"),
        ({"test": "a b\n"}, "ptb.test.txt: split of 3 tokens is too short for batch size 10"),
    ],
)
def test_bad_corpus_is_one_line_and_writes_nothing(tmp_path, splits, needle):
    data = corpus_folder(tmp_path / "data", **splits)
    out = tmp_path / "run"
    result = invoke("train", "--data", data, "--out", out, *MODEL)
    one_line_error(result, needle)
    assert not any((out / name).exists() for name in RUN_FILES)


def test_missing_data_folder(tmp_path):
    one_line_error(
        invoke("train", "--data", tmp_path / "nope", "--out", tmp_path / "run"),
        f"data folder {tmp_path / 'nope'} not found",
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sparsity", "0"], "--sparsity is a density and must be in (0, 1]"),
        (["--sparsity", "1.5"], "--sparsity is a density and must be in (0, 1]"),
        (["--sparsity", "nan"], "--sparsity"),
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--emb", "-3"], "--emb must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--bptt", "0"], "--bptt must be >= 1"),
        (["--lr", "-0.5"], "--lr must be a positive number"),
        (["--lr", "inf"], "--lr must be a positive number"),
        (["--init-scale", "inf"], "--init-scale must be a positive number"),
        (["--init-scale", "1e300"], "--init-scale must be a positive number <= 10, got 1e+300"),
        (["--clip", "nan"], "--clip must be a number >= 0"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (
            ["--batch-size", "50", "--bptt", "50"],
            "ptb.train.txt: split too short: 4 steps per stream with B=50 is less than one "
            "window of T=50",
        ),
    ],
)
def test_options_out_of_range(tmp_path, args, needle):
    out = tmp_path / "run"
    result = invoke("train", "--data", corpus_folder(tmp_path / "data"), "--out", out, *args)
    one_line_error(result, needle)
    assert not any((out / name).exists() for name in RUN_FILES)


def test_output_folder_holding_a_run(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 2)
    assert result.exit_code == 0
    first = (out / "last.h5").read_bytes()
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", out, *MODEL),
        "already holds a run; use --resume",
    )
    # --overwrite with bad data fails before it removes anything
    bad = corpus_folder(tmp_path / "bad", valid=None)
    one_line_error(
        invoke("train", "--data", bad, "--out", out, *MODEL, "--overwrite"), "has no valid split"
    )
    assert (out / "last.h5").read_bytes() == first and (out / "metrics.jsonl").exists()
    # a folder in use by another process is refused
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        one_line_error(
            invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--resume"),
            "in use by another sparselm process",
        )
    finally:
        os.close(fd)


def test_lock_survives_deleting_every_file(tiny_corpus, tmp_path):
    """The lock is on the folder: no lock file to delete, none left in a finished run."""
    out = tmp_path / "run"
    assert (
        invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 2).exit_code
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.h5", "metrics.jsonl"]
    lock = claim_run_folder(out, resume=True, overwrite=False)  # a run in progress
    try:
        for path in out.iterdir():
            path.unlink()
        one_line_error(
            invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--overwrite"),
            "in use by another sparselm process",
        )
    finally:
        lock.close()
    assert (
        invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 1).exit_code
        == 0
    )


def test_lock_file_of_an_earlier_version(tiny_corpus, tmp_path):
    """A stale .lock from an earlier sparselm is removed; one that is held still refuses."""
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as old:
        fcntl.flock(old, fcntl.LOCK_EX)
        one_line_error(
            invoke("train", "--data", tiny_corpus, "--out", out, *MODEL),
            "in use by another sparselm process",
        )
    assert (
        invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 1).exit_code
        == 0
    )
    assert not (out / ".lock").exists()


def test_resume_problems(tiny_corpus, tmp_path):
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", tmp_path / "none", "--resume"),
        "last.h5 not found (no run there)",
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", out, "--resume"),
        "stopped before its first save; start it again with --overwrite",
    )
    (out / "last.h5").write_bytes(b"garbage")
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", out, "--resume"),
        f"checkpoint {out / 'last.h5'}",
    )


def test_unwritable_output_folder(tiny_corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # a folder under a regular file cannot be created, even by root
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", blocker / "run", *MODEL),
        f"output folder {blocker / 'run'} is not writable: Not a directory",
    )
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", blocker, *MODEL),
        f"output folder {blocker} is a file",
    )


def test_unknown_words_against_a_checkpoint(tmp_path):
    data = corpus_folder(tmp_path / "data")  # no <unk> in its vocabulary
    out = tmp_path / "run"
    assert invoke("train", "--data", data, "--out", out, *MODEL, "--max-steps", 1).exit_code == 0
    other = corpus_folder(tmp_path / "other", valid="a b\nc zebra a\n")
    one_line_error(
        invoke("evaluate", out / "last.h5", "--data", other),
        f"{other / 'ptb.valid.txt'}, line 2: word 'zebra' is not in the vocabulary "
        "(which has no <unk>)",
    )
    one_line_error(
        invoke("train", "--data", other, "--out", out, "--resume"),
        "word 'zebra' is not in the vocabulary",
    )
    one_line_error(
        invoke("evaluate", out / "last.h5", "--data", data, "--batch-size", 100),
        f"{data / 'ptb.valid.txt'}: split of 40 tokens is too short for batch size 100",
    )


@pytest.fixture
def tiny_run(tiny_corpus, tmp_path) -> Path:
    """A run folder of one training step on the tiny corpus."""
    out = tmp_path / "run"
    assert (
        invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 1).exit_code
        == 0
    )
    return out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["generate", "LAST", "--temperature", "nan"], "--temperature must be a positive number"),
        (["generate", "LAST", "--temperature", "inf"], "--temperature must be a positive number"),
        (["generate", "LAST", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["evaluate", "LAST", "--data", "DATA", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["info", "--vocab-size", "-5"], "--vocab-size must be >= 1, got -5"),
        (["info", "--vocab-size", "0"], "--vocab-size must be >= 1, got 0"),
        (
            ["sweep", "--set", "sparsity=0.5,nan", "--dry-run", "--out", "OUT"],
            "--set: run sparsitynan: --sparsity is a density and must be in (0, 1], got nan",
        ),
    ],
)
def test_bad_values_of_other_commands(tiny_run, tiny_corpus, tmp_path, args, needle):
    where = {"LAST": tiny_run / "last.h5", "DATA": tiny_corpus, "OUT": tmp_path / "grid"}
    one_line_error(invoke(*[where.get(a, a) for a in args]), needle)


def test_divergence_is_said_once_or_stops_the_run(tiny_corpus, tmp_path, monkeypatch):
    """--lr 1e6 keeps the loss finite but near 1e6 per token: a diverged run must say so."""
    monkeypatch.setattr(train_module, "DIVERGED_STEPS", 5)  # 50 in real runs: keep this fast
    args = [*MODEL, "--lr", "1e6", "--epochs", 1, "--save-every", 100]
    result = invoke("train", "--data", tiny_corpus, "--out", tmp_path / "warn", *args)
    assert result.exit_code == 0
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "for 5 steps, now" in warnings[0]
    assert "the run has diverged (is --lr too large?)" in warnings[0]
    stop = invoke(
        "train", "--data", tiny_corpus, "--out", tmp_path / "stop", *args, "--on-divergence", "stop"
    )
    one_line_error(
        stop, "the run has diverged (is --lr too large?); stopping (--on-divergence stop)"
    )
    calm = invoke("train", "--data", tiny_corpus, "--out", tmp_path / "calm", *MODEL, "--epochs", 1)
    assert calm.exit_code == 0 and "warning" not in calm.output


def test_huge_finite_validation_loss_ends_the_run(tiny_run, tiny_corpus):
    """A diverged run's best validation loss of 5000 per token: exp() must not overflow."""
    ckpt = load_checkpoint(tiny_run / "last.h5")
    ckpt.progress["best_valid"] = 5000.0
    checkpoint.save_checkpoint(tiny_run / "last.h5", ckpt)
    result = invoke("train", "--data", tiny_corpus, "--out", tiny_run, "--resume", "--max-steps", 2)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["best_valid_ppl"] == math.exp(700)


def test_full_disk_during_save(tiny_corpus, tmp_path, monkeypatch):
    """ENOSPC at the end of the 4th save: one line naming the file, the 3rd save stays."""
    write, calls = checkpoint._write_file, {"n": 0}

    def full_disk(path, data):
        calls["n"] += 1
        write(path, data)  # the temporary file is written...
        if calls["n"] == 4:  # ...and then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_file", full_disk)
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 9)
    one_line_error(
        result,
        f"no space left on device while saving {out / 'last.h5'}; the previous checkpoint is "
        f"intact; training stopped at step 4; {out / 'last.h5'} holds step 3",
    )
    assert saved_step(out) == 3 and temporaries(out) == []


def test_full_disk_during_metrics_write(tiny_corpus, tmp_path, monkeypatch):
    write, calls = MetricsLog.write, {"n": 0}

    def full_disk(self, record):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, record)

    monkeypatch.setattr(MetricsLog, "write", full_disk)
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_corpus, "--out", out, *MODEL, "--max-steps", 9)
    one_line_error(
        result,
        f"cannot write {out / 'metrics.jsonl'}: No space left on device; "
        f"{out / 'last.h5'} holds step 2",
    )


@pytest.mark.parametrize(
    "error,needle",
    [
        (
            MemoryError("Unable to allocate 640. GiB for an array with shape (800000, 200000)"),
            "out of memory: Unable to allocate 640. GiB",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/x/metrics.jsonl"),
            "/x/metrics.jsonl: Permission denied",
        ),
    ],
)
def test_environment_errors_are_one_line(tiny_corpus, tmp_path, monkeypatch, error, needle):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("sparselm.train.truncate_metrics", fail)
    one_line_error(
        invoke("train", "--data", tiny_corpus, "--out", tmp_path / "run", *MODEL), needle
    )


@pytest.mark.parametrize(
    "field,value",
    [("hidden", "8"), ("lr", None), ("dropout", True), ("halving_epochs", ["x"]), ("mask", 3)],
)
def test_config_from_a_checkpoint_is_type_checked(field, value):
    from sparselm.config import TrainConfig
    from sparselm.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({**make_config("small").to_dict(), field: value})


# -- 4. determinism ------------------------------------------------------------------------------
def test_same_seed_same_losses_bit_for_bit(tiny_corpus, tmp_path):
    cfg = tiny(dropout=0.3, sparsity=0.5, epochs=2)
    a = train(cfg, tmp_path / "a", tiny_corpus, quiet=True)
    b = train(cfg, tmp_path / "b", tiny_corpus, quiet=True)
    assert a["test_ppl"] == b["test_ppl"]
    for kind, fields in (("train", ("step", "loss", "grad_norm", "lr")), ("valid", ("loss",))):
        ra, rb = events(tmp_path / "a", kind), events(tmp_path / "b", kind)
        assert [[r[f] for f in fields] for r in ra] == [[r[f] for f in fields] for r in rb]
    different = train(
        tiny(dropout=0.3, sparsity=0.5, epochs=2, seed=6), tmp_path / "c", tiny_corpus, quiet=True
    )
    assert different["test_ppl"] != a["test_ppl"]


# -- 5. the corpus reader under random bytes -----------------------------------------------------
def script_module(name: str):
    """scripts/<name>.py imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = script_module("fuzz_corpus")
TEXTY = st.text(alphabet=st.sampled_from(list("ab <unk>\n\r\t\x0b\x85\u2028\x00é")), max_size=80)
CONTENT = st.one_of(st.none(), st.binary(max_size=120), TEXTY.map(str.encode))


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(train_=CONTENT, valid=CONTENT, test=CONTENT)
def test_random_bytes_load_or_raise_data_error(tmp_path, train_, valid, test):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by all examples
    for split, content in (("train", train_), ("valid", valid), ("test", test)):
        if content is not None:
            (folder / f"ptb.{split}.txt").write_bytes(content)
    outcome = FUZZ.check_folder(folder)
    assert outcome == "loaded" or outcome.startswith("rejected: ")


def test_fuzz_script_runs():
    outcomes = [FUZZ.run_case(case) for case in range(40)]
    assert all(o == "loaded" or o.startswith("rejected: ") for o in outcomes)
    assert "loaded" in outcomes and len(set(outcomes)) > 3


def test_split_that_is_a_directory(tmp_path):
    # a split path that is a directory: "no split", not IsADirectoryError
    data = corpus_folder(tmp_path / "data")
    (data / "ptb.valid.txt").unlink()
    (data / "ptb.valid.txt").mkdir()
    with pytest.raises(DataError, match="has no valid split"):
        FUZZ.load_corpus(data)
