"""Figures: weight histograms and heatmaps, sparsity patterns, loss and perplexity curves.

Only the plot commands import this module, so matplotlib is never loaded by training. Figures are
built on `matplotlib.figure.Figure` directly (no pyplot): no global figure registry, no GUI
backend, nothing to close, and safe on a headless machine.

Parameters follow the project's convention: an ordered mapping name -> array, where a CSR gate
weight's entry is its values `data` (N,) and `patterns[name]` carries `indices` (N,) int32,
`indptr` (R+1,) int32 and `shape` (R, C). Gate rows come in four blocks of H rows: i, f, g, o.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sparselm.errors import SparseLMError
from sparselm.metrics import events_by_kind

GATES = ("i", "f", "g", "o")
MAX_CELLS = 256  # heatmaps are block-averaged down to at most this many cells per side
DPI = 110


# --------------------------------------------------------------------------- weight statistics


def weight_matrices(params: dict, patterns: dict) -> list[str]:
    """Names of the 2-D weight matrices (dense or CSR) in parameter order; biases are left out."""
    return [n for n, a in params.items() if n in patterns or np.ndim(a) == 2]


def _csr(name: str, params: dict, patterns: dict):
    """(data (N,), indices (N,) int, indptr (R+1,) int, (R, C)) of the CSR weight `name`."""
    pat = patterns[name]
    data = np.asarray(params[name]).ravel()
    indices, indptr = np.asarray(pat.indices), np.asarray(pat.indptr)
    shape = tuple(int(s) for s in pat.shape)
    if data.shape[0] != indices.shape[0] or indptr.shape[0] != shape[0] + 1:
        raise SparseLMError(f"{name}: CSR data/indices/indptr sizes do not match shape {shape}")
    return data, indices, indptr, shape


def _stored_values(name: str, params: dict, patterns: dict) -> tuple[np.ndarray, tuple, bool]:
    """The values a histogram shows: stored non-zeros of a CSR weight, every entry of a dense one.

    Returns (values (N,) or (R*C,), shape (R, C), is_csr).
    """
    if name in patterns:
        data, _, _, shape = _csr(name, params, patterns)
        return data, shape, True
    w = np.asarray(params[name])
    return w.ravel(), w.shape, False


def weight_stats(params: dict, patterns: dict, threshold: float = 0.07) -> list[dict]:
    """One dict of statistics per 2-D weight matrix, in parameter order.

    Keys: name, kind ("dense" | "csr"), shape [R, C], size (R*C, the dense-equivalent count),
    nnz (stored entries for CSR, non-zero entries for dense), density (nnz / size),
    mean_abs and share_below (fraction with |w| < threshold) -- both over the stored values for
    CSR (what was trained) and over all entries for dense -- and threshold. Plain Python numbers,
    so the result can be printed or dumped as JSON as is.
    """
    stats = []
    for name in weight_matrices(params, patterns):
        vals, shape, is_csr = _stored_values(name, params, patterns)
        absv = np.abs(vals.astype(np.float64, copy=False))
        size = int(shape[0]) * int(shape[1])
        nnz = int(vals.size) if is_csr else int(np.count_nonzero(vals))
        stats.append(
            {
                "name": name,
                "kind": "csr" if is_csr else "dense",
                "shape": [int(shape[0]), int(shape[1])],
                "size": size,
                "nnz": nnz,
                "density": nnz / size if size else 0.0,
                "mean_abs": float(absv.mean()) if absv.size else 0.0,
                "share_below": float(np.mean(absv < threshold)) if absv.size else 0.0,
                "threshold": float(threshold),
            }
        )
    return stats


# --------------------------------------------------------------------------- block averaging


def _blocking(n: int, max_cells: int) -> tuple[int, int]:
    """(block size, number of blocks) that cover n indices with at most max_cells blocks."""
    size = max(1, math.ceil(n / max_cells))
    return size, max(1, math.ceil(n / size))


def _cells_per_block(shape: tuple, br: int, bc: int) -> np.ndarray:
    """(nr, nc) float64: entries in each block; edge blocks are smaller than br x bc."""
    rows = np.bincount(np.arange(shape[0]) // br).astype(np.float64)
    cols = np.bincount(np.arange(shape[1]) // bc).astype(np.float64)
    return np.outer(rows, cols)


def block_mean_abs_dense(w: np.ndarray, max_cells: int = MAX_CELLS) -> np.ndarray:
    """Mean |w| over blocks of a dense (R, C) matrix -> (nr, nc) float64, nr, nc <= max_cells."""
    br, _ = _blocking(w.shape[0], max_cells)
    bc, _ = _blocking(w.shape[1], max_cells)
    absw = np.abs(np.asarray(w, dtype=np.float64))
    # reduceat sums each run of rows/cols starting at the block offsets, edge blocks included
    sums = np.add.reduceat(
        np.add.reduceat(absw, np.arange(0, w.shape[0], br), axis=0),
        np.arange(0, w.shape[1], bc),
        axis=1,
    )
    return sums / _cells_per_block(w.shape, br, bc)


def _block_sums_csr(weights, indices, indptr, shape, max_cells):
    """(nr, nc) float64 sums of `weights` (N,) over blocks, plus the block sizes (br, bc)."""
    br, nr = _blocking(shape[0], max_cells)
    bc, nc = _blocking(shape[1], max_cells)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    cell = (rows // br) * nc + np.asarray(indices) // bc
    # bincount accumulates every stored entry into its block without densifying the matrix
    sums = np.bincount(cell, weights=weights, minlength=nr * nc).reshape(nr, nc)
    return sums, br, bc


def block_mean_abs_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    shape: tuple,
    max_cells: int = MAX_CELLS,
) -> np.ndarray:
    """Mean |w| over blocks of a CSR (R, C) matrix, zeros included -> (nr, nc) float64.

    data (N,) float, indices (N,) int, indptr (R+1,) int. Equals block_mean_abs_dense of the
    densified matrix, at O(N + nr*nc) memory.
    """
    absd = np.abs(np.asarray(data, dtype=np.float64))
    sums, br, bc = _block_sums_csr(absd, indices, indptr, shape, max_cells)
    return sums / _cells_per_block(shape, br, bc)


def block_density_csr(
    indices: np.ndarray, indptr: np.ndarray, shape: tuple, max_cells: int = MAX_CELLS
) -> np.ndarray:
    """Fraction of stored entries per block of a CSR (R, C) pattern -> (nr, nc) float64.

    indices (N,) int, indptr (R+1,) int. With blocks of one cell this is the exact 0/1 pattern.
    """
    ones = np.ones(len(indices), dtype=np.float64)
    sums, br, bc = _block_sums_csr(ones, indices, indptr, shape, max_cells)
    return sums / _cells_per_block(shape, br, bc)


# --------------------------------------------------------------------------- weight figures


def _figure(figsize):
    """A pyplot-free figure; savefig picks the Agg canvas for .png by itself."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _hist_panel(ax, values: np.ndarray, threshold: float, title: str) -> None:
    """Histogram of values (N,) with the |w| < threshold band shaded and its share written."""
    from matplotlib.ticker import MaxNLocator

    values = values[np.isfinite(values)]
    ax.axvspan(-threshold, threshold, color="tab:orange", alpha=0.15, lw=0, zorder=0)
    ax.hist(values, bins=100, color="tab:blue", zorder=2)
    for x in (-threshold, threshold):
        ax.axvline(x, color="tab:orange", ls="--", lw=1.0, zorder=3)
    share = float(np.mean(np.abs(values) < threshold)) if values.size else 0.0
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # headroom so the share label never hides a bar
    ax.text(
        0.02,
        0.97,
        f"|w| < {threshold:g}: {share:.1%}",
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=9,
        zorder=4,
        bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9),
    )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))  # keeps tick labels apart in small panels
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)


def _mark_gates(ax, name: str, rows: int) -> None:
    """Lines between the i, f, g, o row blocks of an LSTM gate matrix, with block labels."""
    if not name.startswith("lstm.") or rows % 4:
        return
    h = rows // 4
    for k, gate in enumerate(GATES):
        if k:
            ax.axhline(k * h, color="red", lw=1.0)
        ax.text(
            0.01,
            (k + 0.5) * h,
            gate,
            color="red",
            fontsize=10,
            fontweight="bold",
            va="center",
            ha="left",
            transform=ax.get_yaxis_transform(),
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
        )


def _image_panel(fig, ax, img: np.ndarray, shape: tuple, title: str, cmap: str, label: str):
    """Show a block image (nr, nc) over the matrix's own row/column coordinates (R, C)."""
    # a few outlier blocks would otherwise squeeze everything else into the bottom colours
    vmax = float(np.percentile(img, 99.5)) if img.size > 1000 else None
    vmax = vmax if vmax and vmax < float(img.max()) else None
    # extent in matrix indices keeps the axes (and the gate lines) in real row/column numbers
    im = ax.imshow(
        img,
        cmap=cmap,
        aspect="auto",
        interpolation="nearest",
        vmax=vmax,
        extent=(0, shape[1], shape[0], 0),
    )
    ax.set_xlabel("column (input index)")
    ax.set_ylabel("row (output index)")
    ax.set_title(title, fontsize=10)
    clipped = vmax is not None
    fig.colorbar(
        im,
        ax=ax,
        label=label + (" (clipped at 99.5th pct)" if clipped else ""),
        shrink=0.9,
        extend="max" if clipped else "neither",
    )


def _heatmap_note(shape: tuple) -> str:
    """Title suffix saying how many matrix entries one heatmap cell averages."""
    br, _ = _blocking(shape[0], MAX_CELLS)
    bc, _ = _blocking(shape[1], MAX_CELLS)
    return "" if br == bc == 1 else f" (mean over {br}x{bc} blocks)"


def _fanin_panel(ax, indptr: np.ndarray) -> None:
    """Bar chart of how many rows have each fan-in (stored entries per row), from indptr (R+1,)."""
    from matplotlib.ticker import MaxNLocator

    fanin = np.diff(indptr)
    lo = int(fanin.min())
    counts = np.bincount(fanin - lo)  # start at the smallest fan-in: no run of empty bars from 0
    ax.bar(lo + np.arange(counts.size), counts, width=0.8, color="tab:green")
    ax.set_xlim(lo - 1.5, lo + counts.size + 0.5)  # room around a single bar (fan-in method)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("fan-in (non-zeros per row)")
    ax.set_ylabel("rows")
    ax.set_title(
        f"fan-in: min {fanin.min()}, mean {fanin.mean():.2f}, max {fanin.max()}, "
        f"empty rows {int(np.sum(fanin == 0))}",
        fontsize=10,
    )


def _matrix_figure(name, params, patterns, stat, threshold, title):
    """One matrix's figure: histogram and |w| heatmap, plus pattern and fan-in when CSR."""
    is_csr = name in patterns
    fig = _figure((12, 9.5) if is_csr else (12, 5))
    axes = fig.subplots(2 if is_csr else 1, 2, squeeze=False).ravel()
    shape = tuple(stat["shape"])
    head = (f"{title}: " if title else "") + f"{name}  {shape[0]}x{shape[1]}  "
    fig.suptitle(
        head + f"nnz {stat['nnz']:,}  density {stat['density']:.4g}  "
        f"mean |w| {stat['mean_abs']:.4g}",
        fontsize=12,
    )
    vals, _, _ = _stored_values(name, params, patterns)
    _hist_panel(axes[0], vals, threshold, "stored non-zero values" if is_csr else "all values")
    if is_csr:
        data, indices, indptr, _ = _csr(name, params, patterns)
        img = block_mean_abs_csr(data, indices, indptr, shape)
    else:
        img = block_mean_abs_dense(np.asarray(params[name]))
    _image_panel(fig, axes[1], img, shape, "|w|" + _heatmap_note(shape), "viridis", "mean |w|")
    _mark_gates(axes[1], name, shape[0])
    if is_csr:
        dens = block_density_csr(indices, indptr, shape)
        _image_panel(
            fig,
            axes[2],
            dens,
            shape,
            "sparsity pattern" + _heatmap_note(shape),
            "Greys",
            "share of stored entries",
        )
        _mark_gates(axes[2], name, shape[0])
        _fanin_panel(axes[3], indptr)
    return fig


def _summary_figure(params, patterns, stats, threshold, title):
    """One histogram panel per weight matrix, each titled with its |w| < threshold share."""
    n = len(stats)
    ncols = min(3, max(1, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure((4.2 * ncols, 3.3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, st in zip(axes, stats):
        vals, _, _ = _stored_values(st["name"], params, patterns)
        kind = f"nnz {st['nnz']:,}" if st["kind"] == "csr" else "dense"
        _hist_panel(ax, vals, threshold, f"{st['name']}  {st['shape'][0]}x{st['shape'][1]}  {kind}")
    for ax in axes[n:]:
        ax.set_visible(False)
    head = f"{title}: " if title else ""
    fig.suptitle(head + f"weight distributions (threshold {threshold:g})", fontsize=12)
    return fig


def _file_name(name: str) -> str:
    """Parameter name -> PNG file name; path separators are replaced so it stays in out_dir."""
    return name.replace("/", "_").replace("\\", "_") + ".png"


def plot_weights(
    params: dict, patterns: dict, out_dir: Path, threshold: float = 0.07, title: str = ""
) -> list[Path]:
    """Write one PNG per 2-D weight matrix and `summary.png` into out_dir; return their paths.

    params: name -> array; dense weights (R, C), CSR weights as their data (N,) with
    patterns[name] giving indices (N,), indptr (R+1,), shape (R, C). Biases (1-D) are skipped.
    threshold: the |w| level whose share is reported (the study: ~75% below 0.07 when dense).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = weight_stats(params, patterns, threshold)
    if not stats:
        raise SparseLMError("no 2-D weight matrices to plot")
    paths = []
    for st in stats:
        fig = _matrix_figure(st["name"], params, patterns, st, threshold, title)
        path = out_dir / _file_name(st["name"])
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    path = out_dir / "summary.png"
    _summary_figure(params, patterns, stats, threshold, title).savefig(path, dpi=DPI)
    paths.append(path)
    return paths


# --------------------------------------------------------------------------- training curves


def label_from_config(cfg: dict) -> str:
    """Short legend text from a run's config, e.g. "H=1500 d=0.0005 drop=0.5 sgd".

    Missing keys are left out; layers is only named when it is not the study's 2; an empty
    result falls back to the preset name, then "run".
    """
    parts = []
    if cfg.get("hidden") is not None:
        parts.append(f"H={cfg['hidden']}")
    if cfg.get("layers") not in (None, 2):
        parts.append(f"L={cfg['layers']}")
    if cfg.get("sparsity") is not None:
        parts.append(f"d={_fmt(cfg['sparsity'])}")
    if cfg.get("dropout") is not None:
        parts.append(f"drop={_fmt(cfg['dropout'])}")
    if cfg.get("optimizer"):
        parts.append(str(cfg["optimizer"]))
    return " ".join(parts) or str(cfg.get("preset") or "run")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fmt(x) -> str:
    """Numbers in their shortest form (0.0005, not 0.00050000); anything else as given."""
    return f"{x:g}" if _is_number(x) else str(x)


def read_run(run: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(config dict, metrics by event) of a run folder; SparseLMError if it has nothing to plot."""
    run = Path(run)
    if not run.is_dir():
        raise SparseLMError(f"run folder not found: {run}")
    cfg = {}
    try:
        loaded = json.loads((run / "config.json").read_text(encoding="utf-8"))
        cfg = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass  # the legend falls back to the folder name; curves need only the metrics
    metrics_path = run / "metrics.jsonl"
    if not metrics_path.is_file():
        raise SparseLMError(f"no metrics in {run} (metrics.jsonl missing)")
    events = events_by_kind(metrics_path)
    if not any(_series(events.get(ev, []), "epoch", "loss")[0].size for ev in ("train", "valid")):
        raise SparseLMError(f"no metrics in {run} (no train or valid records with epoch and loss)")
    return cfg, events


def _value(rec: dict, key: str) -> float:
    """rec[key] as float, NaN when absent or not a number; ppl falls back to exp(loss)."""
    v = rec.get(key)
    if key == "ppl" and not _is_number(v) and _is_number(rec.get("loss")):
        return math.exp(min(rec["loss"], 700.0))  # capped so a diverged loss stays finite
    return float(v) if v is not None and _is_number(v) else math.nan


def _series(records: list[dict], xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray]:
    """(x (K,), y (K,)) float64 of the records where both values are finite numbers."""
    xy = np.array([(_value(r, xkey), _value(r, ykey)) for r in records], dtype=np.float64)
    if xy.size == 0:
        return np.empty(0), np.empty(0)
    keep = np.isfinite(xy).all(axis=1)
    return xy[keep, 0], xy[keep, 1]


def _unique_labels(runs: list[Path], cfgs: list[dict], labels: list[str] | None) -> list[str]:
    """Given labels, or config labels made unique by the folder name when two runs collide."""
    if labels is not None:
        if len(labels) != len(runs):
            raise SparseLMError(f"{len(labels)} labels given for {len(runs)} runs")
        return [str(s) for s in labels]
    base = [label_from_config(c) for c in cfgs]
    return [b if base.count(b) == 1 else f"{b} [{Path(r).name}]" for b, r in zip(base, runs)]


def _plot_run(axes, events: dict, color) -> None:
    """Draw one run on the four panels: loss/ppl against epoch/tokens."""
    for ax, (xkey, ykey) in zip(
        axes, [("epoch", "loss"), ("tokens", "loss"), ("epoch", "ppl"), ("tokens", "ppl")]
    ):
        x, y = _series(events.get("train", []), xkey, ykey)
        ax.plot(x, y, color=color, lw=0.8, alpha=0.55)
        x, y = _series(events.get("valid", []), xkey, ykey)
        ax.plot(x, y, color=color, lw=1.8, marker="o", ms=4)
        x, y = _series(events.get("test", []), xkey, ykey)
        ax.plot(x, y, color=color, ls="none", marker="*", ms=12, mec="black", mew=0.6)


def _style_curve_axes(axes) -> None:
    from matplotlib.ticker import EngFormatter

    for ax, (xlabel, ylabel) in zip(
        axes,
        [
            ("epoch", "loss (NLL per token)"),
            ("tokens seen", "loss (NLL per token)"),
            ("epoch", "perplexity"),
            ("tokens seen", "perplexity"),
        ],
    ):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
        if xlabel == "tokens seen":
            ax.xaxis.set_major_formatter(EngFormatter())  # 1.5M rather than a 1e6 offset
        if ylabel == "perplexity":
            ax.set_yscale("log")


def _run_colors(n: int) -> list:
    """n distinct colours: the default cycle up to 10 runs, then evenly spaced on a wide map (a
    sweep of 16 runs must not show two runs in one colour)."""
    if n <= 10:
        return [f"C{k}" for k in range(n)]
    from matplotlib import colormaps

    cmap = colormaps["turbo"]
    return [cmap(k / (n - 1)) for k in range(n)]


def _curve_legend(fig, colors, labels) -> None:
    """One legend below the panels: a colour per run, then what line styles mean."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2.5) for c in colors]
    handles += [
        Line2D([], [], color="0.3", lw=0.8, alpha=0.7),
        Line2D([], [], color="0.3", lw=1.8, marker="o", ms=4),
        Line2D([], [], color="0.3", ls="none", marker="*", ms=12, mec="black", mew=0.6),
    ]
    names = list(labels) + ["train", "valid", "test"]
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=9)


def plot_curves(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Write a 2x2 figure of loss and perplexity vs epoch and vs tokens seen for several runs.

    runs: run folders with metrics.jsonl (and config.json for the legend); labels: legend text
    per run, default from each config. Returns out. Raises SparseLMError for a missing run
    folder or a run without usable metrics.
    """
    if not runs:
        raise SparseLMError("no run folders given")
    loaded = [read_run(r) for r in runs]
    names = _unique_labels(runs, [c for c, _ in loaded], labels)
    fig = _figure((12, 9))
    axes = fig.subplots(2, 2).ravel()
    colors = _run_colors(len(runs))
    for (_, events), color in zip(loaded, colors):
        _plot_run(axes, events, color)
    _style_curve_axes(axes)
    _curve_legend(fig, colors, names)
    fig.suptitle("training curves", fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out
