"""Training loop: learning happens, resume equals the uninterrupted run to the last bit."""

import json

import numpy as np
import pytest

from sparselm.checkpoint import load_checkpoint
from sparselm.config import make_config
from sparselm.errors import ConfigError
from sparselm.train import train


def tiny_config(**overrides):
    base = dict(
        emb=8,
        hidden=8,
        layers=2,
        bptt=5,
        batch_size=4,
        epochs=3,
        log_every=1,
        eval_batch_size=3,
        seed=5,
    )
    return make_config("small", **{**base, **overrides})


def train_losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["event"] == "train"]


@pytest.mark.parametrize("batching,dropout", [("stream", 0.0), ("sentence", 0.3), ("stream", 0.3)])
def test_resume_equals_uninterrupted(tiny_corpus, tmp_path, batching, dropout):
    cfg = tiny_config(batching=batching, dropout=dropout, optimizer="sgd", momentum=0.5)
    full = train(cfg, tmp_path / "full", tiny_corpus, quiet=True)
    # the same run, stopped at step 7 (mid-epoch) and resumed
    part = tmp_path / "part"
    train(
        tiny_config(batching=batching, dropout=dropout, optimizer="sgd", momentum=0.5, max_steps=7),
        part,
        tiny_corpus,
        quiet=True,
    )
    resumed = train(cfg, part, tiny_corpus, resume=True, quiet=True)
    assert train_losses(part) == train_losses(tmp_path / "full")
    assert resumed["test_ppl"] == full["test_ppl"]
    a = load_checkpoint(tmp_path / "full" / "last.h5").params
    b = load_checkpoint(part / "last.h5").params
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_adam_resume_sparse(tiny_corpus, tmp_path):
    cfg = dict(optimizer="adam", lr=0.01, sparsity=0.3, loss_reduction="token")
    full = train(tiny_config(**cfg), tmp_path / "full", tiny_corpus, quiet=True)
    train(tiny_config(**cfg, max_steps=4), tmp_path / "part", tiny_corpus, quiet=True)
    resumed = train(tiny_config(**cfg), tmp_path / "part", tiny_corpus, resume=True, quiet=True)
    assert train_losses(tmp_path / "part") == train_losses(tmp_path / "full")
    assert resumed["test_ppl"] == full["test_ppl"]


@pytest.fixture
def predictable_corpus(tmp_path):
    """Sentences of a fixed cyclic word order: a model that learns predicts them almost surely."""
    words = "one two three four five six seven eight".split()
    lines = [" ".join(words[(i + k) % 8] for k in range(3 + i % 4)) for i in range(200)]
    folder = tmp_path / "cyclic"
    folder.mkdir()
    for split, chunk in (("train", lines[:160]), ("valid", lines[160:180]), ("test", lines[180:])):
        (folder / f"{split}.txt").write_text("\n".join(chunk) + "\n")
    return folder


def test_learning_happens(predictable_corpus, tmp_path):
    # A larger init than Zaremba's 0.1 gets this tiny model off its unigram plateau (PyTorch
    # with the same set-up sits on the same plateau for hundreds of steps).
    cfg = tiny_config(epochs=6, hidden=16, emb=16, batch_size=8, decay="constant", init_scale=0.5)
    summary = train(cfg, tmp_path / "run", predictable_corpus, quiet=True)
    losses = train_losses(tmp_path / "run")
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert summary["valid_ppl"] < 4  # 9 words with <eos>: uniform guessing gives 9
    records = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n") if x
    ]
    assert [r["epoch"] for r in records if r["event"] == "valid"] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run" / "best.h5").exists()


def test_refuses_existing_run(tiny_corpus, tmp_path):
    train(tiny_config(max_steps=1), tmp_path / "run", tiny_corpus, quiet=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(max_steps=1), tmp_path / "run", tiny_corpus, quiet=True)
    train(tiny_config(max_steps=1), tmp_path / "run", tiny_corpus, overwrite=True, quiet=True)


def test_nonfinite_step_is_rejected(tiny_corpus, tmp_path):
    from sparselm.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite .* at step [0-9]+"):
        train(
            tiny_config(lr=1e30, clip=0.0, max_steps=3, init_scale=10.0),
            tmp_path / "run",
            tiny_corpus,
            quiet=True,
        )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sparse_pattern_never_changes(tiny_corpus, tmp_path, optimizer):
    """Training moves the stored values only: the pattern is the one drawn from the seed, entries
    outside it stay exactly zero, and the optimiser state covers the stored values alone."""
    from sparselm.model import LanguageModel
    from sparselm.sparsity import build_patterns

    cfg = tiny_config(
        sparsity=0.2,
        optimizer=optimizer,
        momentum=0.9 if optimizer == "sgd" else 0,
        lr=0.05 if optimizer == "adam" else 1.0,
        max_steps=6,
    )
    train(cfg, tmp_path / "run", tiny_corpus, quiet=True)
    ckpt = load_checkpoint(tmp_path / "run" / "last.h5")
    drawn = build_patterns(cfg, np.random.default_rng(cfg.seed))
    initial = LanguageModel(cfg, len(ckpt.vocab))
    for name, pattern in drawn.items():
        np.testing.assert_array_equal(ckpt.patterns[name].indices, pattern.indices)
        np.testing.assert_array_equal(ckpt.patterns[name].indptr, pattern.indptr)
        assert not np.array_equal(ckpt.params[name], initial.params[name])  # values moved
        dense = np.zeros(pattern.shape)
        rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
        dense[rows, pattern.indices] = 1.0
        assert dense.sum() == len(ckpt.params[name]) < dense.size  # only stored entries exist
    state_sizes = {buf.size for buf in ckpt.optimizer.values()}
    assert state_sizes == {initial.params.flat.size}


def test_a_cold_kernel_cache_is_announced_and_timed(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A first run compiles for a minute or more before its first step: it says so first, and
    then how long the first step took. A warm cache says nothing."""
    import sparselm.train as train_module
    from sparselm.kernels import cpu, cpu_cache_cold

    train(tiny_config(max_steps=1), tmp_path / "warm", tiny_corpus)
    assert "compiling kernels" not in capsys.readouterr().err
    assert not cpu_cache_cold(sparse=False)  # the step above left the softmax in the cache
    monkeypatch.setattr(cpu.softmax_xent._cache._cache_file, "_load_index", lambda: {})
    assert cpu_cache_cold(sparse=False)
    monkeypatch.setattr(train_module, "cpu_cache_cold", lambda sparse: True)
    train(tiny_config(max_steps=2), tmp_path / "cold", tiny_corpus)
    err = capsys.readouterr().err
    assert err.count("compiling kernels (first run only") == 1
    assert err.count("kernels compiled; the first step took") == 1
    assert err.index("compiling kernels") < err.index("kernels compiled")


def test_a_checkpoint_that_does_not_fit_its_config_is_one_line(tmp_path):
    """load_model checks the arrays against the shapes the file's own config implies, through
    load_checkpoint(expected_shapes=): one CheckpointError naming the file and the parameter."""
    from sparselm.checkpoint import save_checkpoint
    from sparselm.data import Vocabulary
    from sparselm.errors import CheckpointError
    from sparselm.model import LanguageModel
    from sparselm.model_io import load_model, model_checkpoint

    cfg = tiny_config(layers=1, sparsity=0.5)
    vocab = Vocabulary(["<eos>", "a", "b", "c", "d"])
    ckpt = model_checkpoint(LanguageModel(cfg, len(vocab.words)), vocab)
    path = tmp_path / "c.h5"
    for change, needle in (
        ({"hidden": 9}, r"lstm.0.w_x has shape \(32, 8\), expected \(36, 8\)"),
        ({"layers": 2}, r"missing parameter\(s\) \['lstm.1.w_x'"),
        ({"hidden": 0}, "invalid config: --hidden must be >= 1"),
    ):
        ckpt.config = {**cfg.to_dict(), **change}
        save_checkpoint(path, ckpt)
        with pytest.raises(CheckpointError, match=needle) as info:
            load_model(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    ckpt.config = cfg.to_dict()
    save_checkpoint(path, ckpt)
    model, loaded, _ = load_model(path)
    assert loaded.words == vocab.words and model.cfg == cfg


def test_max_steps_logs_the_last_window(tiny_corpus, tmp_path):
    """A run cut by --max-steps records its last steps too: 7 steps with --log-every 5 log the
    windows ending at steps 5 and 7 (the last one used to be lost)."""
    train(tiny_config(max_steps=7, log_every=5), tmp_path / "run", tiny_corpus, quiet=True)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["event"] == "train"]
    assert steps == [5, 7]


def test_progress_total_stops_at_max_steps(tiny_corpus, tmp_path, monkeypatch):
    """The bar of a run cut by --max-steps counts to where the run stops (7), not to the end of
    the epoch it will never reach."""
    import sparselm.train as train_module

    totals = []

    class Recorder(train_module.Progress):
        def __init__(self, total, *args, **kwargs):
            totals.append(total)
            super().__init__(total, *args, **kwargs)

    monkeypatch.setattr(train_module, "Progress", Recorder)
    train(tiny_config(max_steps=7), tmp_path / "cut", tiny_corpus, quiet=True)
    assert totals == [7]
    totals.clear()
    train(tiny_config(epochs=1), tmp_path / "whole", tiny_corpus, quiet=True)
    assert len(totals) == 1 and totals[0] > 7  # a whole epoch of the tiny corpus
