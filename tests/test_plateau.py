"""The validation-history decisions (plateau.py): annealing on a plateau and early stopping, as
pure functions, in learning_rate, and as configuration."""

import math

import pytest
from click.testing import CliRunner

from sparselm.cli import main
from sparselm.config import make_config
from sparselm.errors import ConfigError
from sparselm.optim import learning_rate
from sparselm.plateau import improved, plateau_schedule, since_best, stop_reason


def test_a_tie_or_nan_is_no_improvement():
    assert improved([5.0, 4.0, 4.0, 4.5, 3.0, math.nan, 2.0]) == [
        True,
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert improved([math.nan, 5.0]) == [False, True]


def test_patience_one_anneals_at_every_evaluation_without_improvement():
    # word_language_model: lr / 4 after each epoch whose validation is not the best so far
    history = [5.0, 4.0, 4.0, 3.5, 3.6, 3.7, 3.4]
    steps = [plateau_schedule(history[:n], 1, 4.0, 0) for n in range(len(history) + 1)]
    assert [s.anneals for s in steps] == [0, 0, 0, 1, 1, 2, 3, 3]
    assert [s.lr_scale for s in steps] == [1, 1, 1, 1 / 4, 1 / 4, 1 / 16, 1 / 64, 1 / 64]
    assert not any(s.stop for s in steps)


def test_patience_counts_from_the_last_improvement_or_anneal():
    history = [5.0, 5.0, 5.0, 5.0, 4.0, 4.0, 4.5, 4.5]
    anneals = [plateau_schedule(history[:n], 2, 2.0, 0).anneals for n in range(1, 9)]
    # 2 waits -> anneal, counter reset; improvement at 4.0 resets it too
    assert anneals == [0, 0, 1, 1, 1, 1, 2, 2]


def test_max_anneals_stops_at_the_next_plateau():
    history = [3.0, 3.1, 3.2, 3.3, 2.0]
    result = plateau_schedule(history[:2], 1, 10.0, 2)
    assert result == (0.1, 1, False)
    assert plateau_schedule(history[:3], 1, 10.0, 2) == (1 / 100, 2, False)
    # the third plateau stops the run instead of annealing; nothing after the stop counts
    assert plateau_schedule(history[:4], 1, 10.0, 2) == (1 / 100, 2, True)
    assert plateau_schedule(history, 1, 10.0, 2) == (1 / 100, 2, True)
    assert plateau_schedule(history, 1, 10.0, 0).anneals == 3  # 0: no limit


def test_patience_zero_is_refused():
    with pytest.raises(ValueError, match="patience must be >= 1"):
        plateau_schedule([1.0], 0, 4.0, 0)
    with pytest.raises(ConfigError, match="--patience must be >= 1, got 0"):
        make_config("small", decay="plateau", patience=0)


def test_since_best_and_early_stop():
    assert since_best([]) == 0
    assert since_best([3.0, 2.0, 2.0, 2.5]) == 2
    assert since_best([math.nan, math.nan]) == 2
    cfg = make_config("small", early_stop=2)
    assert stop_reason(cfg, [3.0, 2.0, 2.0]) == ""
    assert stop_reason(cfg, [3.0, 2.0, 2.0, 2.5]) == (
        "validation perplexity has not improved for 2 evaluations (--early-stop 2)"
    )
    assert stop_reason(make_config("small"), [3.0] * 10) == ""  # 0: never
    plateau = make_config("small", decay="plateau", max_anneals=1)
    assert stop_reason(plateau, [3.0, 3.0]) == ""
    assert "after 1 anneal (--max-anneals 1)" in stop_reason(plateau, [3.0, 3.0, 3.0])


def test_learning_rate_plateau_keeps_warmup():
    cfg = make_config(
        "small", decay="plateau", lr=2.0, warmup="linear", warmup_steps=4, decay_factor=4.0
    )
    history = [5.0, 5.5]  # one anneal
    assert [learning_rate(cfg, s, 0, history) for s in range(5)] == [0.125, 0.25, 0.375, 0.5, 0.5]
    assert learning_rate(cfg, 10, 9) == 2.0  # no history: no anneal, whatever the epoch
    # another decay ignores the history
    assert learning_rate(make_config("teach"), 10, 3, history) == 1.0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(decay="plateau", decay_factor=1.0), "--decay-factor must be a number > 1, got 1.0"),
        (dict(decay="plateau", decay_factor=math.nan), "--decay-factor must be a number > 1"),
        (dict(decay="plateau", max_anneals=-1), "--max-anneals must be >= 0, got -1"),
        (dict(early_stop=-2), "--early-stop must be >= 0, got -2"),
        (dict(patience=3), "--decay-factor, --patience and --max-anneals need --decay plateau"),
        (dict(decay_factor=2.0), "need --decay plateau"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config("small", **overrides)


def test_cli_options(tmp_path):
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    for flag in ("--decay-factor", "--patience", "--max-anneals", "--early-stop", "plateau"):
        assert flag in help_text
    result = CliRunner().invoke(
        main, ["train", "--patience", "2", "--out", str(tmp_path / "run"), "--data", "builtin"]
    )
    assert result.exit_code == 1
    assert result.output == (
        "error: --decay-factor, --patience and --max-anneals need --decay plateau\n"
    )
    # the flags reach the config: each value is checked there
    for args, message in (
        (["--decay", "plateau", "--patience", "0"], "--patience must be >= 1, got 0"),
        (["--decay", "plateau", "--max-anneals", "-1"], "--max-anneals must be >= 0, got -1"),
        (["--decay", "plateau", "--decay-factor", "0.5"], "--decay-factor must be a number > 1"),
        (["--early-stop", "-1"], "--early-stop must be >= 0, got -1"),
    ):
        result = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "run")])
        assert result.exit_code == 1 and result.output.startswith(f"error: {message}")
        assert len(result.output.splitlines()) == 1
