"""The 2018 study's two experiments as grids of training runs, and their results table.

Experiment 1 (fixed hidden size): gate densities {0.0005, 0.001, 0.002, 0.005, 0.01} and the dense
baseline at H = 2500, each trained with the study's optimiser (Adam 5e-4 on the mean NLL per token,
clip 5, lr x0.5 per epoch after epoch 4) and with Zaremba's SGD (lr 1 on the loss summed over T,
clip 5, same decay); the dense baseline also with dropout 0.5.

Experiment 2 (fixed number of gate non-zeros): the hidden size grows as the density falls, with
H sqrt(d) held constant. Why that keeps the non-zeros fixed: with the fan-in mask every gate row
of layer l has k = d (I_l + H) inputs, and there are G = 4H rows, so layer l stores

    nnz_l = 4H * d (I_l + H)  ~  8 d H^2        (I_l = H above the first layer, E ~ H)

i.e. (units) x (fan-in per unit) = H x 2dH. Holding d H^2 fixed is holding H sqrt(d) fixed: a
4x sparser model gets 2x the units, each with half the inputs. (The first layer's E is fixed, so
its count drifts a little; the table reports the exact counts.) Each point is trained with the
study's factorised output (`--output factorized`, H rounded to the nearest perfect square) and,
for comparison, with the dense softmax at the same H.

Control ("no-LSTM"): the same model with fan-in 1 (every gate row reads one input, the least the
fan-in rule allows), measuring how much the embedding and the output layer achieve alone.

Scales: "study" is the paper's size (for a GPU or a cluster). "cpu" shrinks H and E by k = 10 and
multiplies every density by k, which keeps each gate row's fan-in d (I + H) exactly the study's
(the quantity the sparse model's capacity depends on) at k^2 fewer gate weights and ~k x less
softmax work; 4 epochs, decay after epoch 2. "smoke" is a seconds-long pipeline check.

A run is one folder under the grid's output folder. A folder whose metrics.jsonl has a "test"
event is finished and never redone; one with last.h5 but no test event is resumed (resume=True);
anything else is started afresh. The table (results.csv, results.md) is read back from the run
folders, so its numbers are the folders' numbers.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .metrics import read_events
from .threads import set_threads

STUDY_DENSITIES = (0.0005, 0.001, 0.002, 0.005, 0.01)
CONTROL_DENSITY = 1e-9  # the fan-in rule gives max(1, floor(d (I + H))) = 1 input per gate row
DROPOUT = 0.5  # Zaremba's medium-model rate, for the dense baseline with dropout

# The two optimisers compared in experiment 1 (decay_start comes from the scale).
OPTIMISERS = {
    "adam": dict(
        optimizer="adam", lr=5e-4, clip=5.0, loss_reduction="token", decay="step", decay_rate=0.5
    ),
    "sgd": dict(
        optimizer="sgd", lr=1.0, clip=5.0, loss_reduction="batch", decay="step", decay_rate=0.5
    ),
}


@dataclass(frozen=True)
class Scale:
    """The size of one version of the experiments; densities: the study's x density_factor."""

    name: str
    emb: int
    hidden: int
    density_factor: float
    epochs: int
    decay_start: int
    bptt: int = 20
    batch_size: int = 20
    log_every: int = 100
    eval_batch_size: int = 10


SCALES = {
    "study": Scale("study", emb=600, hidden=2500, density_factor=1, epochs=13, decay_start=4),
    "cpu": Scale("cpu", emb=60, hidden=250, density_factor=10, epochs=4, decay_start=2),
    "smoke": Scale(
        "smoke",
        emb=8,
        hidden=16,
        density_factor=50,
        epochs=1,
        decay_start=1,
        bptt=5,
        batch_size=4,
        log_every=5,
        eval_batch_size=4,
    ),
}


@dataclass
class RunSpec:
    """One training of a grid: its folder name, labels, and the config overrides of the preset."""

    name: str
    experiment: str
    group: str
    config: dict = field(default_factory=dict)
    preset: str = "study"

    def make_config(self):
        from .config import make_config

        return make_config(self.preset, **self.config)


# -- the grids -----------------------------------------------------------------------------------
def scale_densities(scale: Scale) -> list[float]:
    """The study's densities times the scale's factor (capped at 1), sparsest first."""
    return [min(1.0, d * scale.density_factor) for d in STUDY_DENSITIES]


def density_label(density: float) -> str:
    if density >= 1.0:
        return "dense"
    return "fanin1" if density <= CONTROL_DENSITY else f"d{density:g}"


def base_config(scale: Scale, optimiser: str, epochs=None, max_steps=None) -> dict:
    """Overrides of the "study" preset shared by every run of a grid at this scale."""
    cfg = dict(
        emb=scale.emb,
        hidden=scale.hidden,
        bptt=scale.bptt,
        batch_size=scale.batch_size,
        epochs=epochs or scale.epochs,
        decay_start=scale.decay_start,
        log_every=scale.log_every,
        eval_batch_size=scale.eval_batch_size,
        **OPTIMISERS[optimiser],
    )
    if max_steps:  # a short run still logs ~10 points, so its curves have a shape
        cfg.update(max_steps=max_steps, log_every=max(1, min(scale.log_every, max_steps // 10)))
    return cfg


def experiment1(scale: Scale, epochs=None, max_steps=None) -> list[RunSpec]:
    """Fixed H: every density and dense, x {adam, sgd}; dense + dropout; fan-in-1 control."""
    runs = []
    for opt in OPTIMISERS:
        base = base_config(scale, opt, epochs, max_steps)
        for d in scale_densities(scale) + [1.0]:
            runs.append(
                RunSpec(
                    f"{opt}-h{scale.hidden}-{density_label(d)}",
                    "exp1",
                    "density",
                    {**base, "sparsity": d},
                )
            )
        runs.append(
            RunSpec(
                f"{opt}-h{scale.hidden}-dense-drop{DROPOUT:g}",
                "exp1",
                "dropout",
                {**base, "dropout": DROPOUT},
            )
        )
        runs.append(
            RunSpec(
                f"{opt}-h{scale.hidden}-fanin1",
                "exp1",
                "control",
                {**base, "sparsity": CONTROL_DENSITY},
            )
        )
    return runs


def square_hidden(hidden: float) -> int:
    """The perfect square nearest to hidden (at least 4): what the factorised output needs."""
    return max(2, round(math.sqrt(hidden))) ** 2


def fixed_nnz_hidden(anchor_hidden: int, anchor_density: float, density: float) -> int:
    """H with H sqrt(d) = anchor_hidden sqrt(anchor_density), rounded to a perfect square."""
    return square_hidden(anchor_hidden * math.sqrt(anchor_density / density))


def experiment2(scale: Scale, epochs=None, max_steps=None) -> list[RunSpec]:
    """Fixed gate non-zeros: H grows as d falls (the sparsest point has the scale's H), Adam,
    factorised output and dense softmax at every point; fan-in-1 control at the largest H."""
    densities = scale_densities(scale)
    base = base_config(scale, "adam", epochs, max_steps)
    runs = []
    points = [(d, fixed_nnz_hidden(scale.hidden, densities[0], d)) for d in densities + [1.0]]
    points.append((CONTROL_DENSITY, square_hidden(scale.hidden)))
    for d, hidden in points:
        group = "control" if d <= CONTROL_DENSITY else "fixed-nnz"
        for output in ("factorized", "softmax"):
            short = "fact" if output == "factorized" else "softmax"
            runs.append(
                RunSpec(
                    f"adam-h{hidden}-{density_label(d)}-{short}",
                    "exp2",
                    group,
                    {**base, "hidden": hidden, "sparsity": d, "output": output},
                )
            )
    return runs


EXPERIMENTS = {"exp1": experiment1, "exp2": experiment2}


def experiment_runs(name: str, scale: str = "cpu", epochs=None, max_steps=None) -> list[RunSpec]:
    """The RunSpecs of experiment `name` ("exp1" | "exp2") at `scale` (study | cpu | smoke)."""
    from .errors import ConfigError

    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return EXPERIMENTS[name](SCALES[scale], epochs, max_steps)


def sweep_runs(preset: str, grid: dict, fixed: dict | None = None) -> list[RunSpec]:
    """The cartesian product of grid {field: [values]} over `preset`, with `fixed` overrides.

    Each run is named by its grid values, e.g. "hidden100-sparsity0.01".
    """
    import itertools

    from .errors import ConfigError

    fields = list(grid)
    runs = []
    for values in itertools.product(*(grid[f] for f in fields)):
        name = (
            "-".join(
                f"{f}{v:g}" if isinstance(v, float) else f"{f}{v}" for f, v in zip(fields, values)
            )
            or preset
        )
        runs.append(
            RunSpec(name, "sweep", "grid", {**(fixed or {}), **dict(zip(fields, values))}, preset)
        )
    for spec in runs:  # every run's config is valid before any is listed or trained
        try:
            spec.make_config()
        except ConfigError as exc:
            raise ConfigError(f"--set: run {spec.name}: {exc}") from None
    return runs


# -- one run -------------------------------------------------------------------------------------
def run_status(folder: Path) -> str:
    """ "done" (a test event is logged), "partial" (last.h5 without test event) or "new"."""
    folder = Path(folder)
    if any(e.get("event") == "test" for e in read_events(folder / "metrics.jsonl")):
        return "done"
    return "partial" if (folder / "last.h5").exists() else "new"


def _record_invocation(
    folder: Path, spec: RunSpec, action: str, seconds: float, error: str | None
) -> None:
    """Append this invocation to <run>/experiment.json; wall_s sums all invocations' seconds."""
    path = folder / "experiment.json"
    info = json.loads(path.read_text()) if path.exists() and action != "trained" else {}
    calls = info.get("invocations", []) + [{"action": action, "wall_s": seconds, "error": error}]
    info = {"spec": asdict(spec), "wall_s": sum(c["wall_s"] for c in calls), "invocations": calls}
    tmp = folder / ".experiment.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)


def run_one(spec: RunSpec, out: str, data: str, quiet: bool = True) -> dict:
    """Train (or resume, or skip) one run in out/<spec.name>. Never raises for a failed run.

    Returns {"name", "action": skipped|trained|resumed|failed|interrupted, "error"}.
    """
    from .errors import SparseLMError
    from .signals import Interrupted
    from .train import train

    folder = Path(out) / spec.name
    status = run_status(folder)
    if status == "done":
        return {"name": spec.name, "action": "skipped", "error": None}
    action, error = ("resumed" if status == "partial" else "trained"), None
    start = time.perf_counter()
    try:
        train(
            spec.make_config(),
            folder,
            Path(data),
            resume=status == "partial",
            overwrite=status == "new",
            quiet=quiet,
        )
    except Interrupted as exc:
        action, error = "interrupted", str(exc)
    except (SparseLMError, ArithmeticError, MemoryError) as exc:
        action, error = "failed", f"{type(exc).__name__}: {exc}"
    if folder.is_dir():
        _record_invocation(folder, spec, action, time.perf_counter() - start, error)
    return {"name": spec.name, "action": action, "error": error}


# -- running a grid: serial, local processes, or a Dask cluster ------------------------------------
def run_grid(
    specs: list[RunSpec],
    out,
    data,
    jobs: int = 1,
    scheduler: str | None = None,
    threads: int = 0,
    report=print,
) -> list[dict]:
    """Run every spec: in this process (jobs=1), in `jobs` local processes, or on the Dask
    cluster at `scheduler`. report(line) is called once per finished run. Returns the results."""
    from .data import source_record

    out, data = Path(out).resolve(), source_record(data)
    out.mkdir(parents=True, exist_ok=True)
    if scheduler:
        return _run_dask(specs, out, data, scheduler, report)
    if jobs > 1:
        return _run_processes(specs, out, data, jobs, threads, report)
    results = []
    for spec in specs:
        results.append(run_one(spec, str(out), str(data)))
        report(_result_line(results[-1]))
        if results[-1]["action"] == "interrupted":
            break
    return results


def _result_line(result: dict) -> str:
    tail = f": {result['error']}" if result["error"] else ""
    return f"{result['action']:>11}  {result['name']}{tail}"


def _run_processes(specs, out: Path, data: str, jobs: int, threads: int, report) -> list[dict]:
    """ProcessPoolExecutor with fresh ("spawn") workers, each sized to threads (default
    cores // jobs) before it imports Numba, so the jobs do not oversubscribe the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), set_threads, (threads,))
    results = []
    try:
        futures = [pool.submit(run_one, spec, str(out), str(data)) for spec in specs]
        for future in as_completed(futures):
            results.append(future.result())
            report(_result_line(results[-1]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _run_dask(specs, out: Path, data: str, address: str, report) -> list[dict]:
    """Submit each run as one task to the Dask scheduler at `address`. Workers must see `out`
    and `data` at the same paths (a shared file system)."""
    from .errors import ConfigError

    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            '--scheduler needs dask.distributed: pip install "sparselm[dist]"'
        ) from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    results = []
    with client:
        futures = [
            client.submit(
                run_one,
                spec,
                str(out),
                str(data),
                pure=False,
                key=f"sparselm-{spec.name}-{time.time_ns()}",
            )
            for spec in specs
        ]
        for future in as_completed(futures):
            results.append(future.result())
            report(_result_line(results[-1]))
    return results


# -- the results table ----------------------------------------------------------------------------
COLUMNS = (
    "name",
    "experiment",
    "group",
    "status",
    "optimizer",
    "output",
    "hidden",
    "emb",
    "density",
    "dropout",
    "gate_nonzeros",
    "total_parameters",
    "epochs",
    "steps",
    "train_ppl",
    "best_valid_ppl",
    "test_ppl",
    "tokens_per_s",
    "train_s",
    "wall_s",
)


def vocab_size(data) -> int:
    """V of the corpus in `data`: the vocabulary training builds from its train split."""
    from .data import BUILTIN, Vocabulary, load_corpus, read_lines, split_path

    if str(data) == BUILTIN:
        return len(load_corpus(BUILTIN, splits=("train",)).vocab)

    return len(Vocabulary.from_lines(read_lines(split_path(Path(data), "train"))))


def _last(events: list[dict], kind: str) -> dict:
    found = [e for e in events if e.get("event") == kind]
    return found[-1] if found else {}


def result_row(spec: RunSpec, folder: Path, vocab: int) -> dict:
    """One table row, every number read from the run folder (config.json, metrics.jsonl,
    experiment.json); parameter counts recomputed from its config.json as training draws them."""
    from .config import TrainConfig
    from .counting import count_from_config

    folder = Path(folder)
    events = read_events(folder / "metrics.jsonl")
    cfg = (
        TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
        if (folder / "config.json").exists()
        else spec.make_config()
    )
    totals = count_from_config(cfg, vocab)["totals"]
    train, test = _last(events, "train"), _last(events, "test")
    valid = [e["ppl"] for e in events if e.get("event") == "valid" and e.get("ppl") is not None]
    last = events[-1] if events else {}
    wall = (
        json.loads((folder / "experiment.json").read_text()).get("wall_s")
        if (folder / "experiment.json").exists()
        else None
    )
    elapsed = last.get("elapsed")
    return {
        "name": spec.name,
        "experiment": spec.experiment,
        "group": spec.group,
        "status": run_status(folder),
        "optimizer": cfg.optimizer,
        "output": cfg.output,
        "hidden": cfg.hidden,
        "emb": cfg.emb,
        "density": cfg.sparsity,
        "dropout": cfg.dropout,
        "gate_nonzeros": totals["gate_nonzeros"],
        "total_parameters": totals["total_parameters"],
        "epochs": last.get("epoch"),
        "steps": last.get("step"),
        "train_ppl": train.get("ppl"),
        "best_valid_ppl": min(valid) if valid else None,
        "test_ppl": test.get("ppl"),
        "tokens_per_s": (last["tokens"] / elapsed) if elapsed and last.get("tokens") else None,
        "train_s": elapsed,
        "wall_s": wall,
    }


def collect_results(specs: list[RunSpec], out, data) -> list[dict]:
    """The table rows of every spec whose folder exists under out, in grid order."""
    vocab = vocab_size(data)
    return [
        result_row(spec, Path(out) / spec.name, vocab)
        for spec in specs
        if (Path(out) / spec.name).is_dir()
    ]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value >= 1.0 and value == int(value) and value < 1e6:
            return str(int(value))
        return f"{value:.4g}" if value < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_csv(rows: list[dict], path: Path) -> Path:
    """results.csv: every column, numbers at full precision."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})
    return path


MD_COLUMNS = (
    "name",
    "status",
    "hidden",
    "density",
    "output",
    "dropout",
    "gate_nonzeros",
    "total_parameters",
    "epochs",
    "train_ppl",
    "best_valid_ppl",
    "test_ppl",
    "tokens_per_s",
    "wall_s",
)


def write_markdown(rows: list[dict], path: Path, title: str) -> Path:
    """results.md: a readable table (rounded) of the main columns; results.csv has them all."""
    lines = [f"# {title}", "", "| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[k]) for k in MD_COLUMNS) + " |")
    lines += [
        "",
        "status: done = test event logged; partial = stopped early (max-steps or "
        "interrupted), resumable; epochs = completed epochs or fraction; wall_s = seconds "
        "of all invocations, evaluation included; train_s (csv) excludes evaluation.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_results(specs: list[RunSpec], out, data, title: str) -> dict:
    """results.csv, results.md and curves.png in out; returns {"rows", "csv", "md", "png"}."""
    from .plots import plot_curves

    out = Path(out)
    rows = collect_results(specs, out, data)
    paths = {
        "rows": rows,
        "csv": write_csv(rows, out / "results.csv"),
        "md": write_markdown(rows, out / "results.md", title),
        "png": None,
    }
    plotted = [
        r["name"]
        for r in rows
        if any(e.get("event") == "train" for e in read_events(out / r["name"] / "metrics.jsonl"))
    ]
    if plotted:
        paths["png"] = plot_curves([out / n for n in plotted], out / "curves.png", labels=plotted)
    return paths
