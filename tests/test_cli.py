"""The command line end to end: train (teach preset on a slice of PTB), evaluate, generate, info,
and one-line errors for user mistakes."""

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from sparselm.cli import main


@pytest.fixture(scope="module")
def ptb_slice(ptb_path, tmp_path_factory):
    """The first lines of each PTB split: real words, a run of seconds."""
    folder = tmp_path_factory.mktemp("ptb_slice")
    for split, n in (("train", 3000), ("valid", 300), ("test", 300)):
        lines = (ptb_path / f"ptb.{split}.txt").read_text().splitlines()[:n]
        (folder / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def teach_run(ptb_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teach"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--preset",
            "teach",
            "--data",
            str(ptb_slice),
            "--out",
            str(out),
            "--quiet",
            "--hidden",
            "64",
            "--emb",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output.strip().splitlines()[-1])


def test_train_teach_end_to_end(teach_run):
    out, summary = teach_run
    assert summary["epoch"] == 1 and summary["valid_ppl"] < 2000
    for name in ("config.json", "metrics.jsonl", "last.h5", "best.h5"):
        assert (out / name).exists()
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("valid") == 1 and events[-1] == "test"


def test_evaluate_json(teach_run, ptb_slice):
    out, summary = teach_run
    result = CliRunner().invoke(
        main,
        ["evaluate", str(out / "last.h5"), "--data", str(ptb_slice), "--split", "test", "--json"],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["split"] == "test" and record["ppl"] == pytest.approx(
        summary["test_ppl"], rel=1e-9
    )


def test_generate(teach_run):
    out, _ = teach_run
    result = CliRunner().invoke(
        main,
        [
            "generate",
            str(out / "last.h5"),
            "--words",
            "12",
            "--prompt",
            "the company",
            "--temperature",
            "0.7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the company") and len(result.output.split()) >= 10


def test_info_counts(teach_run):
    out, _ = teach_run
    result = CliRunner().invoke(main, ["info", str(out / "last.h5"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["embedding"] > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--sparsity", "0"], "--sparsity"),
        (["train", "--hidden", "0"], "--hidden must be >= 1"),
        (["train", "--lr", "-1"], "--lr must be a positive number"),
        (["train", "--data", "/nonexistent/ptb"], "data folder /nonexistent/ptb not found"),
        (["evaluate", "/nonexistent.h5"], "not found"),
        (["generate", "/nonexistent.h5"], "not found"),
    ],
)
def test_user_mistakes_are_one_line(args, needle, tmp_path):
    if args[0] == "train":
        args = args + ["--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a checkpoint at all")
    result = CliRunner().invoke(main, ["evaluate", str(bad)])
    assert result.exit_code == 1 and result.output.startswith("error: ")
    assert "Traceback" not in result.output


def test_help_is_fast_and_imports_no_numba():
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sparselm.cli import main; "
            "sys.argv=['sparselm','--help']\ntry: main()\nexcept SystemExit: pass\n"
            "assert 'numba' not in sys.modules and 'numpy' not in sys.modules",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and time.perf_counter() - start < 5


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "sparselm", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage: sparselm ") and "train" in res.stdout
