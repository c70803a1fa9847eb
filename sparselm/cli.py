"""The `sparselm` command line.

Heavy modules (NumPy, Numba, h5py) are imported inside the commands, so `sparselm --help`
answers at once, and `--threads` can set the thread pools before they start. The training
options of `train` and `info` are made from TrainConfig's fields (config.setting: help, group,
choices), so this file names no hyper-parameter; the presets are config.PRESETS'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path


def _interrupted_early(signum, frame):
    """Ctrl-C before a command has started (while Python imports click, numpy...): one line."""
    os.write(2, b"error: interrupted\n")
    os._exit(128 + signum)  # nothing has been written yet: there is nothing to clean up


def _is_the_program() -> bool:
    """Run as the `sparselm` script, `python -m sparselm[.cli]` or cli.py, not imported."""
    argv0 = sys.argv[0] if sys.argv else ""
    return __name__ == "__main__" or (
        os.path.basename(argv0) in ("sparselm", "cli.py")
        or argv0.endswith(os.path.join("sparselm", "__main__.py"))
    )


# As the program, Ctrl-C in the imports below would print a KeyboardInterrupt traceback;
# run_guarded hands SIGINT back to Python once a command runs.
if _is_the_program():
    signal.signal(signal.SIGINT, _interrupted_early)

import click  # noqa: E402

from .config import PRESETS, TrainConfig, cli_fields, flag_name, make_config  # noqa: E402
from .threads import set_threads  # noqa: E402

DATA_HELP = (
    "Corpus: a folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt, or 'builtin' "
    "(a synthetic language, nothing on disk). Default: $SPARSELM_DATA, then ./data/ptb, then "
    "the folder of `sparselm data fetch ptb`, else builtin."
)


def data_source(value: str | None) -> str | None:
    """--data, else $SPARSELM_DATA, else None: found later (data.find_corpus)."""
    return value or os.environ.get("SPARSELM_DATA") or None


def notice(message: str) -> None:
    click.echo(message, err=True)


def fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_guarded(fn, *args, **kwargs):
    """Run a command body; a user mistake (SparseLMError) becomes one line on stderr, exit 1.

    So do the environment's failures that no module turned into one (an OSError from a file
    we write, memory for an absurd size): one line naming the file or the size. Anything else
    is a bug and keeps its traceback.
    """
    from .errors import SparseLMError

    if signal.getsignal(signal.SIGINT) is _interrupted_early:  # from here on: KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn(*args, **kwargs)
    except SparseLMError as exc:
        code = getattr(exc, "exit_code", 1)
        fail(one_line(str(exc)), code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except MemoryError as exc:
        fail(one_line(f"out of memory: {exc or 'try smaller sizes'}"))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(one_line(f"{where}{exc.strerror or exc}"))


def one_line(text: str) -> str:
    """Messages carry paths and words from files: keep them to one line whatever they hold."""
    return " ".join(text.split())


# -- options made from TrainConfig's fields (config.setting): one edit adds a hyper-parameter -----
_TYPES = {"int": int, "float": float, "str": str}  # TrainConfig's annotations are strings


class GroupedOption(click.Option):
    """An option shown under a heading of --help (its TrainConfig field's group)."""

    def __init__(self, *args, group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose --help lists its TrainConfig options by group ("Model options:", ...)
    after its own options."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            group = getattr(param, "group", None)
            if record is not None:
                title = f"{group.capitalize()} options" if group else "Options"
                # padded to click's widest first column, so that every section lines up
                sections.setdefault(title, []).append((record[0].ljust(30), record[1]))
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def train_options(fn):
    """A click option for every TrainConfig field with a flag; unset flags keep the preset's."""
    for f in reversed(cli_fields()):
        choices = f.metadata["choices"]
        fn = click.option(
            flag_name(f),
            f.name,
            type=click.Choice(list(choices)) if choices else _TYPES[str(f.type)],
            default=None,
            help=f.metadata["help"],
            cls=GroupedOption,
            group=f.metadata["group"],
        )(fn)
    return fn


def preset_option(help_text: str):
    """--preset, choosing among config.PRESETS (default small)."""
    return click.option(
        "--preset",
        default="small",
        show_default=True,
        type=click.Choice(list(PRESETS)),
        help=help_text,
    )


def preset_table(note: str = "flags override single fields") -> str:
    """--help's epilog: every preset's value of every field some preset sets (flags as rows)."""
    configs = {name: make_config(name) for name in PRESETS}
    shown = [
        f for f in dataclasses.fields(TrainConfig) if any(f.name in p for p in PRESETS.values())
    ]
    rows = [["", *configs]] + [
        [flag_name(f), *(_shown(getattr(c, f.name)) for c in configs.values())] for f in shown
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    return f"\b\nPresets ({note}):\n" + "\n".join(lines)


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparselm")
def main():
    """sparselm: LSTM language models with sparse gate weights, by hand in NumPy + Numba."""


@main.command(cls=GroupedCommand, epilog=preset_table())
@click.option("--data", "data", default=None, help=DATA_HELP)
@preset_option("Named configuration; flags override single fields.")
@click.option("--out", default=None, help="Run folder (default checkpoints/<preset>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.h5.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@train_options
def train(data, preset, out, resume, overwrite, quiet, **overrides):
    """Train a language model (dense or sparse gates) and save checkpoints."""
    set_threads(overrides.get("threads"))

    def body():
        from .config import make_config
        from .train import train as run_training

        cfg = make_config(preset, **overrides)
        folder = Path(out) if out else Path("checkpoints") / preset
        summary = run_training(cfg, folder, data_source(data), resume, overwrite, quiet)
        click.echo(json.dumps(summary))

    run_guarded(body)


CKPT_HELP = "CKPT: a checkpoint file, or a run folder (its best.h5, else its last.h5)."


@main.command(epilog=CKPT_HELP)
@click.argument("ckpt", type=click.Path())
@click.option(
    "--data",
    default=None,
    help=DATA_HELP.replace("$SPARSELM_DATA,", "$SPARSELM_DATA, then the checkpoint's own corpus,"),
)
@click.option(
    "--split",
    type=click.Choice(["valid", "test", "train"]),
    default="valid",
    show_default=True,
    help="Which split to score.",
)
@click.option("--batch-size", type=int, default=None, help="Evaluation batch size.")
@click.option("--threads", type=int, default=None, help="Threads for Numba and BLAS.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to evaluate (auto: a GPU when present).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def evaluate(ckpt, data, split, batch_size, threads, device, as_json):
    """Perplexity of a checkpoint on a split."""
    set_threads(threads)

    def body():
        from .data import find_corpus, load_corpus
        from .errors import ConfigError
        from .evaluation import evaluate as run_eval
        from .model_io import load_model, resolve_device
        from .runs import pick_checkpoint

        if batch_size is not None and batch_size < 1:  # 0 must not mean "the default"
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        overrides = {"eval_batch_size": batch_size} if batch_size else {}
        backend = resolve_device(device, notice)
        path = pick_checkpoint(ckpt, notice)
        model, vocab, checkpoint = load_model(path, overrides, backend)
        source = find_corpus(data_source(data), str(checkpoint.config.get("data", "")), notice)
        corpus = load_corpus(source, splits=(split,), vocab=vocab)
        result = run_eval(model, corpus, split, progress=not as_json)
        result.update(split=split, checkpoint=str(path))
        if as_json:
            click.echo(json.dumps(result))
        else:
            oracle = result.get("oracle_ppl")
            click.echo(
                f"{split}: loss {result['loss']:.4f}  perplexity {result['ppl']:.2f}  "
                f"({result['tokens']:,} tokens, {result['tokens_per_s']:,.0f} tokens/s)"
                + (f"\noracle perplexity {oracle:.2f} (the corpus's own grammar)" if oracle else "")
            )

    run_guarded(body)


@main.command(epilog=CKPT_HELP)
@click.argument("ckpt", type=click.Path())
@click.option(
    "--words",
    type=click.IntRange(1, 100000),
    default=50,
    show_default=True,
    help="Number of words to sample.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Softmax temperature (<1: safer, >1: more varied).",
)
@click.option("--prompt", default="", help="Text to condition on (words of the vocabulary).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
def generate(ckpt, words, temperature, prompt, seed):
    """Sample text from a checkpoint."""

    def body():
        from .generate import sample_text
        from .model_io import load_model
        from .runs import pick_checkpoint

        model, vocab, _ = load_model(pick_checkpoint(ckpt, notice), {"dtype": "float64"})
        click.echo(sample_text(model, vocab, words, temperature, prompt, seed))

    run_guarded(body)


@main.command(cls=GroupedCommand, epilog=preset_table())
@click.argument("ckpt", required=False, type=click.Path(dir_okay=False))
@preset_option("Configuration to count when no checkpoint is given.")
@click.option(
    "--vocab-size",
    type=int,
    default=10000,
    show_default=True,
    help="Vocabulary size V when no checkpoint is given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@train_options
def info(ckpt, preset, vocab_size, as_json, **overrides):
    """Shapes, non-zeros and parameter counts of a checkpoint or of a configuration."""

    def body():
        from .config import make_config
        from .counting import count_from_checkpoint, count_from_config, format_counts

        if ckpt:
            counts = count_from_checkpoint(ckpt)
        else:
            counts = count_from_config(make_config(preset, **overrides), vocab_size)
        click.echo(json.dumps(counts) if as_json else format_counts(counts))

    run_guarded(body)


@main.command("plot-weights")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--out", default=None, help="Output folder (default: plots/ beside the checkpoint).")
@click.option(
    "--threshold",
    type=float,
    default=0.07,
    show_default=True,
    help="Report the share of weights with |w| below this.",
)
def plot_weights(ckpt, out, threshold):
    """Histograms, heatmaps and sparsity patterns of every weight matrix."""

    def body():
        from .checkpoint import load_checkpoint
        from .plots import plot_weights as draw

        checkpoint = load_checkpoint(ckpt)
        folder = Path(out) if out else Path(ckpt).parent / "plots"
        paths = draw(
            checkpoint.params, checkpoint.patterns, folder, threshold, title=Path(ckpt).name
        )
        click.echo(f"wrote {len(paths)} figures to {folder}")

    run_guarded(body)


@main.command("plot-curves")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="curves.png", show_default=True, help="Output PNG file.")
def plot_curves(runs, out):
    """Training and validation loss/perplexity of one or more run folders."""

    def body():
        from .plots import plot_curves as draw

        path = draw([Path(r) for r in runs], Path(out))
        click.echo(f"wrote {path}")

    run_guarded(body)


@main.group()
def data():
    """Corpora: fetch the Penn Treebank (the built-in corpus needs nothing)."""


@data.command()
@click.argument("name", type=click.Choice(["ptb"]))
@click.option(
    "--dest",
    default=None,
    help="Folder to create (default: $XDG_DATA_HOME/sparselm/ptb or ~/.local/share/sparselm/ptb, "
    "which --data finds by itself).",
)
@click.option(
    "--from",
    "source",
    default=None,
    metavar="FILE_OR_URL",
    help="simple-examples.tgz from this path or URL instead of Mikolov's site.",
)
def fetch(name, dest, source):
    """Download and verify a corpus (ptb: Mikolov's simple-examples.tgz, SHA-256 checked)."""

    def body():
        from .fetch import fetch_ptb

        fetch_ptb(Path(dest) if dest else None, source, say=notice)

    run_guarded(body)


# -- grids of runs: the study's experiments and explicit sweeps ----------------------------------
def grid_options(fn):
    """Options shared by `experiment` and `sweep`."""
    options = [
        click.option(
            "--out",
            default=None,
            help="Grid folder: one run folder per run, plus results.csv, results.md, curves.png.",
        ),
        click.option(
            "--data",
            default=None,
            help=DATA_HELP + " Dask workers must see a folder at the same path.",
        ),
        click.option(
            "--jobs",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="Runs trained at once, in local processes.",
        ),
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Submit each run to this Dask scheduler (tcp://host:8786) instead.",
        ),
        click.option(
            "--threads",
            type=int,
            default=None,
            help="Threads per run (default: all cores / --jobs).",
        ),
        click.option(
            "--max-steps",
            type=click.IntRange(0),
            default=None,
            help="Stop every run after N steps (smoke runs; rerun without it to finish).",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(1),
            default=None,
            help="Epochs per run (default: the scale's or preset's).",
        ),
        click.option("--only", default=None, help="Only the runs whose name contains this text."),
        click.option(
            "--dry-run", is_flag=True, help="List the runs and their state; train nothing."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_grid_command(specs, out, title, data, jobs, scheduler, threads, only, dry_run):
    """Run (or list) the specs under out, then write the results table and curves."""
    from .data import find_corpus
    from .experiments import run_grid, run_status, write_results

    chosen = [s for s in specs if not only or only in s.name]
    out = Path(out)
    if dry_run:
        for spec in chosen:
            click.echo(f"{run_status(out / spec.name):>8}  {spec.name}  {json.dumps(spec.config)}")
        return
    if jobs == 1 and not scheduler:
        set_threads(threads)
    click.echo(f"{len(chosen)} runs -> {out}", err=True)
    data = find_corpus(data_source(data), say=notice)
    results = run_grid(
        chosen,
        out,
        data,
        jobs,
        scheduler,
        threads or 0,
        report=notice,
    )
    paths = write_results(specs, out, data, title)  # every run of the grid so far
    click.echo(
        f"wrote {paths['csv']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else "")
    )
    failed = [r["name"] for r in results if r["action"] in ("failed", "interrupted")]
    if failed:
        fail(f"{len(failed)} run(s) did not finish: {', '.join(failed)}")


@main.command()
@click.argument("name", type=click.Choice(["exp1", "exp2"]))
@click.option(
    "--scale",
    type=click.Choice(["cpu", "study", "smoke"]),
    default="cpu",
    show_default=True,
    help="study: the paper's sizes (GPU/cluster); cpu: H and E / 10, "
    "densities x 10 (same fan-ins), <= 3 h on 2 cores; smoke: seconds.",
)
@grid_options
def experiment(name, scale, out, data, jobs, scheduler, threads, max_steps, epochs, only, dry_run):
    """Run the study's experiment 1 (fixed H) or 2 (fixed gate non-zeros) as a resumable grid."""

    def body():
        from .experiments import experiment_runs

        specs = experiment_runs(name, scale, epochs, max_steps)
        folder = out or f"checkpoints/{name}-{scale}"
        run_grid_command(
            specs, folder, f"{name}, scale {scale}", data, jobs, scheduler, threads, only, dry_run
        )

    run_guarded(body)


def parse_settings(settings) -> dict:
    """("hidden=100,200", "sparsity=0.01") -> {"hidden": [100, 200], "sparsity": [0.01]},
    each value converted to its TrainConfig field's type."""
    import dataclasses

    from .config import TrainConfig
    from .errors import ConfigError

    kinds = {
        f.name: type(f.default)
        for f in dataclasses.fields(TrainConfig)
        if isinstance(f.default, (int, float, str)) and f.name != "preset"
    }
    grid = {}
    for text in settings:
        key, sep, values = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in kinds:
            raise ConfigError(
                f"--set {text!r}: expected FIELD=V1,V2,... with FIELD one of "
                f"{', '.join(sorted(kinds))}"
            )
        try:
            grid[key] = [kinds[key](v.strip()) for v in values.split(",")]
        except ValueError:
            raise ConfigError(
                f"--set {text!r}: values of {key} must be {kinds[key].__name__}"
            ) from None
    return grid


@main.command(epilog=preset_table("--set replaces single fields"))
@preset_option("Configuration every run starts from.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="FIELD=V1,V2,...",
    help="A config field and its values; several --set make a cartesian grid.",
)
@grid_options
def sweep(preset, settings, out, data, jobs, scheduler, threads, max_steps, epochs, only, dry_run):
    """Train every combination of the --set values (resumable, with a results table)."""

    def body():
        from .experiments import sweep_runs

        fixed = {k: v for k, v in (("max_steps", max_steps), ("epochs", epochs)) if v}
        specs = sweep_runs(preset, parse_settings(settings), fixed)
        run_grid_command(
            specs,
            out or f"checkpoints/sweep-{preset}",
            f"sweep over {preset}",
            data,
            jobs,
            scheduler,
            threads,
            only,
            dry_run,
        )

    run_guarded(body)


if __name__ == "__main__":
    main()
