"""Full-epoch trainings on PTB and the built-in corpus (marked slow: `python -m pytest -m slow`,
minutes each)."""

import json

import pytest
from click.testing import CliRunner

from sparselm.cli import main

pytestmark = pytest.mark.slow


def test_teach_preset_learns_on_full_ptb(ptb_path, tmp_path):
    """The teaching run on PTB: one epoch, validation perplexity under 300."""
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--preset",
            "teach",
            "--data",
            str(ptb_path),
            "--out",
            str(tmp_path / "teach"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["valid_ppl"] < 300 and summary["test_ppl"] < 300


def test_sparse_teach_learns_on_full_ptb(ptb_path, tmp_path):
    """The same at density 0.05: sparse gates still learn far below the unigram's ~690."""
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--preset",
            "teach",
            "--sparsity",
            "0.05",
            "--data",
            str(ptb_path),
            "--out",
            str(tmp_path / "sp"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["valid_ppl"] < 400


def test_teach_preset_learns_on_builtin(tmp_path):
    """The teaching run of the README on a fresh machine: one epoch of the built-in corpus ends
    within 1.5x of the oracle's perplexity (a uniform guess: 443; the oracle: about 21)."""
    args = ["train", "--preset", "teach", "--data", "builtin", "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(main, args + ["--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["oracle_valid_ppl"] < summary["valid_ppl"] < 1.5 * summary["oracle_valid_ppl"]
    assert summary["oracle_test_ppl"] < summary["test_ppl"] < 1.5 * summary["oracle_test_ppl"]
