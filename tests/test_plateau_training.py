"""--decay plateau and --early-stop in real (tiny) runs: anneals exactly where validation did not
improve, the same decisions after --resume, a clean stop, and which events a resume redoes."""

import json

import numpy as np
import pytest

from sparselm.checkpoint import load_checkpoint
from sparselm.config import make_config
from sparselm.plateau import plateau_schedule
from sparselm.runs import RunState, truncate_metrics
from sparselm.train import train

# lr 5 on the tiny corpus: validation gets worse at epochs 4, 6 and 8 (seed 5), so the schedule
# has something to do within 8 epochs of 15 steps
RUN = dict(emb=8, hidden=8, layers=2, bptt=5, batch_size=4, eval_batch_size=3, seed=5, lr=5.0)


def config(**overrides):
    return make_config("small", **{**RUN, "epochs": 8, "log_every": 1, **overrides})


def events(run, kind=None):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # timings differ between runs; everything else must not
        for timing in ("elapsed", "tokens_per_s"):
            r.pop(timing, None)
    return [r for r in records if kind is None or r["event"] == kind]


def test_plateau_divides_the_lr_exactly_where_validation_did_not_improve(tiny_corpus, tmp_path):
    train(config(decay="plateau"), tmp_path / "run", tiny_corpus, quiet=True)
    losses = [r["loss"] for r in events(tmp_path / "run", "valid")]
    expected = [
        epoch
        for epoch in range(1, len(losses) + 1)
        if plateau_schedule(losses[:epoch], 1, 4.0, 0).anneals
        > plateau_schedule(losses[: epoch - 1], 1, 4.0, 0).anneals
    ]
    anneals = events(tmp_path / "run", "anneal")
    assert [a["epoch"] for a in anneals] == expected and len(expected) >= 2
    assert [a["lr"] for a in anneals] == [5.0 / 4**n for n in range(1, len(anneals) + 1)]
    for record in events(tmp_path / "run", "train"):  # the lr each step actually used
        done = sum(1 for a in anneals if a["epoch"] < record["epoch"])
        assert record["lr"] == 5.0 / 4**done


@pytest.mark.parametrize("stop_at", [60, 70])  # at the end of the first annealed epoch; inside
def test_plateau_resume_takes_the_same_decisions(tiny_corpus, tmp_path, stop_at):
    full = train(config(decay="plateau", max_anneals=2), tmp_path / "full", tiny_corpus, quiet=True)
    part = tmp_path / "part"
    train(config(decay="plateau", max_anneals=2, max_steps=stop_at), part, tiny_corpus, quiet=True)
    assert load_checkpoint(part / "last.h5").progress["valid_losses"]  # the history travels
    resumed = train(
        config(decay="plateau", max_anneals=2), part, tiny_corpus, resume=True, quiet=True
    )
    assert events(part) == events(tmp_path / "full")  # lr, losses, anneals and the stop
    assert resumed["stopped"] == full["stopped"]
    assert resumed["test_ppl"] == full["test_ppl"]
    a, b = (load_checkpoint(p / "last.h5").params for p in (tmp_path / "full", part))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_early_stop_ends_cleanly_and_keeps_the_best(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(config(decay="constant", early_stop=1), run, tiny_corpus)
    reason = "validation perplexity has not improved for 1 evaluation (--early-stop 1)"
    assert summary["stopped"] == reason and summary["epoch"] < 8
    valid = events(run, "valid")
    assert valid[-1]["loss"] > min(v["loss"] for v in valid[:-1])
    stop, test = events(run)[-2:]
    assert stop == {
        "event": "stop",
        "step": valid[-1]["step"],
        "epoch": valid[-1]["epoch"],
        "tokens": valid[-1]["tokens"],
        "reason": reason,
    }
    assert test["event"] == "test"
    best = min(valid, key=lambda v: v["loss"])
    assert load_checkpoint(run / "best.h5").progress["step"] == best["step"]
    err = capsys.readouterr().err
    assert f"stopped after epoch {summary['epoch']}: {reason}; best.h5 holds" in err
    # a stopped run stays stopped: resuming it trains nothing and finishes the same way
    before = events(run)
    again = train(config(decay="constant", early_stop=1), run, tiny_corpus, resume=True)
    assert again["stopped"] == reason and again["test_ppl"] == summary["test_ppl"]
    assert events(run) == before


def test_a_resume_redoes_the_anneal_and_stop_of_an_unsaved_epoch_end(tmp_path):
    """Killed after logging an epoch end but before last.h5 held it: those events are redone."""
    path = tmp_path / "metrics.jsonl"
    records = [
        {"event": "train", "step": 15, "epoch": 1.0},
        {"event": "valid", "step": 15, "epoch": 1},
        {"event": "anneal", "step": 15, "epoch": 1, "lr": 0.25},
        {"event": "train", "step": 30, "epoch": 2.0},
        {"event": "valid", "step": 30, "epoch": 2},
        {"event": "anneal", "step": 30, "epoch": 2, "lr": 0.0625},
        {"event": "stop", "step": 30, "epoch": 2, "reason": "r"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    truncate_metrics(path, RunState(step=30, epoch=1, cursor=15))  # saved before epoch 2's end
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert kept == records[:4]
