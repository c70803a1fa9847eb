"""Experiment grids (sparselm/experiments.py): run, skip, resume, the table, local and Dask jobs."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from sparselm.cli import main
from sparselm.counting import count_from_config
from sparselm.experiments import (
    SCALES,
    STUDY_DENSITIES,
    RunSpec,
    experiment_runs,
    fixed_nnz_hidden,
    run_grid,
    run_status,
    write_results,
)
from sparselm.metrics import read_events
from sparselm.train import train

TINY = dict(
    emb=8,
    hidden=9,
    layers=2,
    bptt=5,
    batch_size=4,
    epochs=2,
    log_every=2,
    eval_batch_size=3,
    seed=5,
    optimizer="adam",
    lr=0.01,
    loss_reduction="token",
)


def tiny_grid(**extra):
    """A 2x1 grid: two densities x one optimiser, factorised output on the sparse one."""
    return [
        RunSpec("dense", "test", "grid", {**TINY, **extra}, "small"),
        RunSpec(
            "sparse",
            "test",
            "grid",
            {**TINY, **extra, "sparsity": 0.3, "output": "factorized"},
            "small",
        ),
    ]


def quiet(_line):
    pass


def test_runs_skips_and_table_matches_folders(tiny_corpus, tmp_path):
    out = tmp_path / "grid"
    first = run_grid(tiny_grid(), out, tiny_corpus, report=quiet)
    assert sorted(r["action"] for r in first) == ["trained", "trained"]
    before = {n: (out / n / "metrics.jsonl").read_text() for n in ("dense", "sparse")}
    second = run_grid(tiny_grid(), out, tiny_corpus, report=quiet)
    assert [r["action"] for r in second] == ["skipped", "skipped"]
    assert before == {n: (out / n / "metrics.jsonl").read_text() for n in ("dense", "sparse")}

    paths = write_results(tiny_grid(), out, tiny_corpus, "test grid")
    assert paths["png"].exists() and paths["md"].read_text().count("| done |") == 2
    for row in paths["rows"]:
        events = read_events(out / row["name"] / "metrics.jsonl")
        test = [e for e in events if e["event"] == "test"][-1]
        assert row["test_ppl"] == test["ppl"]
        assert row["best_valid_ppl"] == min(e["ppl"] for e in events if e["event"] == "valid")
        assert (
            row["steps"] == test["step"] and row["tokens_per_s"] == test["tokens"] / test["elapsed"]
        )
        cfg = next(s for s in tiny_grid() if s.name == row["name"]).make_config()
        assert row["gate_nonzeros"] == count_from_config(cfg, 14)["totals"]["gate_nonzeros"]
        assert row["wall_s"] > 0
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("name,experiment,group,status")
    dense = next(r for r in paths["rows"] if r["name"] == "dense")
    assert f"{dense['test_ppl']:.2f}" in paths["md"].read_text()


def test_resumes_an_interrupted_run(tiny_corpus, tmp_path):
    out = tmp_path / "grid"
    run_grid(tiny_grid(max_steps=3), out, tiny_corpus, report=quiet)
    assert run_status(out / "dense") == "partial" and (out / "dense" / "last.h5").exists()
    results = run_grid(tiny_grid(), out, tiny_corpus, report=quiet)
    assert [r["action"] for r in results] == ["resumed", "resumed"]
    calls = json.loads((out / "sparse" / "experiment.json").read_text())["invocations"]
    assert [c["action"] for c in calls] == ["trained", "resumed"]
    # the resumed run ends exactly where an uninterrupted one does
    for spec in tiny_grid():
        full = train(spec.make_config(), tmp_path / ("full-" + spec.name), tiny_corpus, quiet=True)
        test = [e for e in read_events(out / spec.name / "metrics.jsonl") if e["event"] == "test"][
            -1
        ]
        assert test["ppl"] == full["test_ppl"]


def test_local_processes(tiny_corpus, tmp_path):
    lines = []
    results = run_grid(
        tiny_grid(epochs=1), tmp_path / "grid", tiny_corpus, jobs=2, threads=1, report=lines.append
    )
    assert sorted(r["action"] for r in results) == ["trained", "trained"] and len(lines) == 2
    assert all(run_status(tmp_path / "grid" / n) == "done" for n in ("dense", "sparse"))


def test_dask_local_cluster(tiny_corpus, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        results = run_grid(
            tiny_grid(epochs=1),
            tmp_path / "grid",
            tiny_corpus,
            scheduler=cluster.scheduler_address,
            report=quiet,
        )
    assert sorted(r["action"] for r in results) == ["trained", "trained"]
    assert all(run_status(tmp_path / "grid" / n) == "done" for n in ("dense", "sparse"))


def test_scheduler_without_dask_is_one_line(tiny_corpus, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--data",
            str(tiny_corpus),
            "--out",
            str(tmp_path / "g"),
            "--set",
            "hidden=4",
            "--scheduler",
            "tcp://127.0.0.1:1",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: --scheduler needs dask")


def test_sweep_cli_end_to_end(tiny_corpus, tmp_path):
    args = [
        "sweep",
        "--preset",
        "small",
        "--data",
        str(tiny_corpus),
        "--out",
        str(tmp_path / "g"),
        "--set",
        "hidden=4,9",
        "--set",
        "emb=8",
        "--set",
        "output=factorized",
        "--set",
        "bptt=5",
        "--set",
        "batch_size=4",
        "--epochs",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    md = (tmp_path / "g" / "results.md").read_text()
    assert "hidden4-emb8-outputfactorized-bptt5-batch_size4" in md and md.count("| done |") == 2
    listing = CliRunner().invoke(main, args + ["--dry-run"]).output
    assert listing.count("done  hidden") == 2


def test_experiment_grids():
    exp1 = experiment_runs("exp1", "cpu")
    assert len(exp1) == 16 and len({r.name for r in exp1}) == 16
    assert {r.config["optimizer"] for r in exp1} == {"adam", "sgd"}
    assert sum(r.group == "dropout" for r in exp1) == 2
    assert sum(r.group == "control" for r in exp1) == 2
    exp2 = experiment_runs("exp2", "study")
    assert len(exp2) == 14 and {r.config["output"] for r in exp2} == {"factorized", "softmax"}
    for spec in exp2:
        cfg = spec.make_config()  # validates: factorised needs a square H
        assert math.isqrt(cfg.hidden) ** 2 == cfg.hidden
    # H sqrt(d) constant, up to the rounding to a square
    sparse = [r.make_config() for r in exp2 if r.group == "fixed-nnz" and r.config["sparsity"] < 1]
    products = [c.hidden * math.sqrt(c.sparsity) for c in sparse]
    assert max(products) / min(products) < 1.1
    assert fixed_nnz_hidden(2500, 0.0005, 0.0005) == 2500


def test_cpu_scale_keeps_the_study_fan_in():
    """floor(d (I + H)) of every gate row is the same at both scales (E, H / 10; d x 10)."""
    study, cpu = SCALES["study"], SCALES["cpu"]
    for d in STUDY_DENSITIES:
        for n_in_study, n_in_cpu in (
            (study.emb + study.hidden, cpu.emb + cpu.hidden),
            (2 * study.hidden, 2 * cpu.hidden),
        ):
            k = cpu.density_factor
            assert math.floor(d * n_in_study + 1e-9) == math.floor(d * k * n_in_cpu + 1e-9)


def test_smoke_scale_configs_are_valid():
    for name in ("exp1", "exp2"):
        for spec in experiment_runs(name, "smoke", epochs=1, max_steps=2):
            cfg = spec.make_config()
            assert cfg.max_steps == 2 and cfg.epochs == 1
            assert np.isfinite(cfg.sparsity)


def test_documented_commands_parse(tmp_path, monkeypatch):
    """Every `sparselm experiment|sweep` command of docs/EXPERIMENTS.md runs with --dry-run."""
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "EXPERIMENTS.md").read_text()
    monkeypatch.chdir(tmp_path)
    commands = [
        shlex.split(line, comments=True)
        for block in re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    commands = [c for c in commands if c[:1] == ["sparselm"]]
    assert len(commands) >= 4
    for words in commands:
        result = CliRunner().invoke(main, words[1:] + ["--dry-run"])
        assert result.exit_code == 0, f"{' '.join(words)}: {result.output}"
        assert result.output.count("new  ") >= 3
