"""Which corpus a command uses: --data, $SPARSELM_DATA, the checkpoint's own, ./data/ptb, the
per-user folder of `sparselm data fetch ptb`, else the built-in corpus (with one notice); and a
fresh machine, with none of them, trains, resumes and evaluates on the built-in corpus."""

import json
import shutil

import pytest
from click.testing import CliRunner

from sparselm import synthetic
from sparselm.cli import main
from sparselm.data import BUILTIN, find_corpus, user_data_dir

FAST = ["--hidden", "8", "--emb", "8", "--quiet"]


@pytest.fixture
def fresh_machine(tmp_path_factory, monkeypatch):
    """An empty working folder and home, no $SPARSELM_DATA: nothing to find anywhere."""
    home, work = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("work")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("SPARSELM_DATA", raising=False)
    monkeypatch.chdir(work)
    return work


def test_find_corpus_order(fresh_machine, tiny_corpus):
    notes = []
    assert find_corpus(None, "", notes.append) == BUILTIN and len(notes) == 1
    assert "built-in" in notes[0] and "sparselm data fetch ptb" in notes[0]
    user = user_data_dir() / "ptb"
    assert user.parts[-4:] == (".local", "share", "sparselm", "ptb")
    assert str(user).startswith(str(user_data_dir().parents[2]))
    shutil.copytree(tiny_corpus, user)
    assert find_corpus(None, "", notes.append) == str(user)
    shutil.copytree(tiny_corpus, "data/ptb")
    assert find_corpus(None, "", notes.append) == "data/ptb"
    assert find_corpus(None, BUILTIN, notes.append) == BUILTIN  # a checkpoint's own corpus
    assert find_corpus(None, str(tiny_corpus), notes.append) == str(tiny_corpus)
    assert find_corpus(None, "/moved/away", notes.append) == "data/ptb"  # recorded, then gone
    assert find_corpus("elsewhere", BUILTIN, notes.append) == "elsewhere"
    assert len(notes) == 1


def test_xdg_data_home_is_the_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_data_dir() == tmp_path / "xdg" / "sparselm"


def test_fresh_machine_trains_resumes_and_evaluates_on_builtin(
    fresh_machine, tiny_corpus, monkeypatch
):
    monkeypatch.setattr(synthetic, "SIZES", {"train": 800, "valid": 80, "test": 80})
    args = ["train", "--preset", "teach", "--max-steps", "10", *FAST[:-1]]  # not --quiet
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("built-in synthetic corpus") == 1  # one notice, then training
    run = fresh_machine / "checkpoints" / "teach"
    assert json.loads((run / "config.json").read_text())["data"] == BUILTIN
    # a PTB folder appearing later must not change the corpus of the run
    shutil.copytree(tiny_corpus, "data/ptb")
    done = CliRunner().invoke(main, ["train", "--preset", "teach", "--resume", *FAST])
    assert done.exit_code == 0, done.output
    assert "built-in" not in done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["epoch"] == 1 and summary["oracle_valid_ppl"] < summary["valid_ppl"]
    evaluated = CliRunner().invoke(main, ["evaluate", str(run / "last.h5"), "--split", "valid"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"perplexity {summary['valid_ppl']:.2f}" in evaluated.output
    assert f"oracle perplexity {summary['oracle_valid_ppl']:.2f}" in evaluated.output


def test_a_checkpoint_finds_its_corpus_folder_from_anywhere(
    fresh_machine, tiny_corpus, monkeypatch
):
    args = ["train", "--preset", "teach", "--data", str(tiny_corpus), "--max-steps", "2"]
    trained = CliRunner().invoke(main, args + ["--batch-size", "4", "--bptt", "5", *FAST])
    assert trained.exit_code == 0, trained.output
    ckpt = fresh_machine / "checkpoints" / "teach" / "last.h5"
    given = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data", str(tiny_corpus), "--json"])
    (fresh_machine / "elsewhere").mkdir()
    monkeypatch.chdir(fresh_machine / "elsewhere")
    found = CliRunner().invoke(main, ["evaluate", str(ckpt), "--json"])
    assert found.exit_code == 0 and given.exit_code == 0, found.output + given.output
    assert json.loads(found.output)["ppl"] == json.loads(given.output)["ppl"]
    assert "oracle_ppl" not in json.loads(found.output)  # a folder corpus has no oracle


def test_sweep_on_builtin(fresh_machine, small_builtin):
    args = ["sweep", "--preset", "teach", "--set", "hidden=8", "--max-steps", "2", "--data"]
    result = CliRunner().invoke(main, args + [BUILTIN, "--out", "grid"])
    assert result.exit_code == 0, result.output
    assert "results.csv" in result.output
    runs = list((fresh_machine / "grid").glob("*/config.json"))
    assert [json.loads(p.read_text())["data"] for p in runs] == [BUILTIN]
