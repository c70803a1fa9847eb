"""The command line end to end: train (teach preset on a small built-in corpus), evaluate,
generate, info, and one-line errors for user mistakes."""

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from sparselm.cli import main
from sparselm.data import load_corpus


@pytest.fixture(scope="module")
def teach_run(small_builtin, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teach"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--preset",
            "teach",
            "--data",
            small_builtin,
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
    # 443 words: a uniform guess has perplexity 443; the grammar's own is about 21
    assert summary["epoch"] == 1 and summary["valid_ppl"] < 200
    assert 15 < summary["oracle_valid_ppl"] < summary["valid_ppl"]
    for name in ("config.json", "metrics.jsonl", "last.h5", "best.h5"):
        assert (out / name).exists()
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("valid") == 1 and events[-1] == "test"


def test_evaluate_json(teach_run, monkeypatch):
    out, summary = teach_run
    monkeypatch.delenv("SPARSELM_DATA", raising=False)  # the checkpoint's own corpus: builtin
    result = CliRunner().invoke(
        main, ["evaluate", str(out / "last.h5"), "--split", "test", "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["split"] == "test" and record["ppl"] == pytest.approx(
        summary["test_ppl"], rel=1e-9
    )
    assert record["oracle_ppl"] == pytest.approx(summary["oracle_test_ppl"], rel=1e-12)


def test_generate(teach_run):
    out, _ = teach_run
    valid = load_corpus("builtin", splits=("valid",))
    prompt = " ".join(valid.vocab.words[i] for i in valid.lines["valid"][0][:2])
    result = CliRunner().invoke(
        main,
        [
            "generate",
            str(out / "last.h5"),
            "--words",
            "12",
            "--prompt",
            prompt,
            "--temperature",
            "0.7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(prompt) and len(result.output.split()) >= 10


def test_a_run_folder_means_its_best_checkpoint(teach_run, tmp_path, monkeypatch):
    """evaluate and generate given a run folder read best.h5, else last.h5, and say which."""
    import shutil

    out, summary = teach_run
    monkeypatch.delenv("SPARSELM_DATA", raising=False)
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(out / "best.h5", folder / "best.h5")
    (folder / "last.h5").write_bytes(b"not a checkpoint: picking it would fail")
    result = CliRunner().invoke(main, ["evaluate", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"using {folder / 'best.h5'} (lowest validation perplexity)\n"
    record = json.loads(result.stdout)
    assert record["checkpoint"] == str(folder / "best.h5")
    assert record["ppl"] == pytest.approx(summary["best_valid_ppl"], rel=1e-9)
    result = CliRunner().invoke(main, ["generate", str(folder), "--words", "3"])
    assert result.exit_code == 0 and "best.h5" in result.stderr and result.stdout.strip()
    (folder / "best.h5").rename(folder / "last.h5")
    result = CliRunner().invoke(main, ["generate", str(folder), "--words", "3"])
    assert result.stderr == f"using {folder / 'last.h5'} (no best.h5)\n"
    (folder / "last.h5").unlink()
    result = CliRunner().invoke(main, ["evaluate", str(folder)])
    assert result.exit_code == 1 and result.output == (
        f"error: {folder} holds no checkpoint (neither best.h5 nor last.h5)\n"
    )


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


def test_train_options_come_from_the_config_fields():
    """Every TrainConfig field with a flag is a `train` (and `info`) option with the field's help
    text and choices, listed under its group; validate refuses a value outside those choices."""
    import dataclasses

    import click

    from sparselm.cli import info, train
    from sparselm.config import TrainConfig, cli_fields, make_config
    from sparselm.errors import ConfigError

    for command in (train, info):
        options = {p.name: p for p in command.params}
        for f in cli_fields():
            option = options[f.name]
            assert option.opts == ["--" + f.name.replace("_", "-")]
            assert option.help == f.metadata["help"] and option.group == f.metadata["group"]
            if f.metadata["choices"]:
                assert isinstance(option.type, click.Choice)
                assert tuple(option.type.choices) == f.metadata["choices"]
    flagless = {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in cli_fields()}
    assert flagless == {"preset", "beta1", "beta2", "eps", "halving_epochs", "eval_batch_size",
                        "data", "extra"}  # fmt: skip
    with pytest.raises(ConfigError, match="^--loss-reduction must be one of batch, token, got 'x'"):
        make_config("teach", loss_reduction="x")
    with pytest.raises(ConfigError, match="^--eval-batch-size must be >= 1, got 0"):
        make_config("teach", eval_batch_size=0)


def test_help_groups_the_options_and_shows_every_preset():
    from sparselm.config import PRESETS

    result = CliRunner().invoke(main, ["train", "--help"], terminal_width=100)
    assert result.exit_code == 0
    text = result.output
    headings = ["Options:", "Model options:", "Data options:", "Optimisation options:"]
    positions = [text.index(h) for h in headings + ["Run options:", "Presets"]]
    assert positions == sorted(positions)
    assert text.index("--hidden") > text.index("Model options:") > text.index("--quiet")
    table = text[text.index("Presets") :].splitlines()
    assert table[1].split() == list(PRESETS)
    rows = {line.split()[0]: line.split()[1:] for line in table[2:] if line.strip()}
    assert rows["--hidden"] == ["128", "200", "650", "1500", "2500"]
    assert rows["--optimizer"] == ["sgd", "sgd", "sgd", "sgd", "adam"]
    assert rows["--lr"][-1] == "0.0005"


def test_one_thread_setup_for_the_cli_and_the_grid_workers(monkeypatch):
    """threads.set_threads sizes all four pools; 0/None leave them alone. The CLI and the grid's
    worker processes use this one function."""
    import os

    from sparselm import cli, experiments, threads

    for var in threads.POOL_VARIABLES:
        monkeypatch.setenv(var, "7")
    threads.set_threads(0)
    threads.set_threads(None)
    assert {os.environ[v] for v in threads.POOL_VARIABLES} == {"7"}
    threads.set_threads(3)
    assert [os.environ[v] for v in threads.POOL_VARIABLES] == ["3"] * 4
    assert cli.set_threads is threads.set_threads is experiments.set_threads
