"""Parameter counts: per-matrix shape, non-zeros and density, and the totals of the study's Table 1.

"gate non-zeros" counts the gate weights' stored entries plus the gate biases, as the study did;
"dense-equivalent" is what the same gates would hold at density 1. "softmax" is the whole output
layer: softmax.weight + bias, or with --output factorized its row/column weights + bias.
"""

from __future__ import annotations

import numpy as np

from .config import TrainConfig
from .errors import ConfigError
from .layout import parameter_shapes
from .sparsity import build_patterns, row_fan_in


def _matrix_rows(shapes: dict, patterns: dict) -> list[dict]:
    """Per parameter: name, shape, nnz, density; for gate weights also the rows without inputs
    and the columns without outputs (of this matrix alone; None for other parameters)."""
    rows = []
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        nnz = len(patterns[name].indices) if name in patterns else size
        row = {"name": name, "shape": list(shape), "nnz": nnz, "density": nnz / size if size else 0}
        row["rows_without_inputs"], row["columns_without_outputs"] = _unconnected(
            name, shape, patterns.get(name)
        )
        rows.append(row)
    return rows


def _unconnected(name: str, shape, pattern) -> tuple[int | None, int | None]:
    """(rows holding no entry, columns holding no entry) of a gate weight: a gate row without
    inputs only ever sees its bias, and an input column without outputs (an embedding dimension,
    a unit of the layer below or of the recurrence) is ignored by this matrix. Dense: (0, 0)."""
    if not name.startswith("lstm.") or name.endswith(".bias"):
        return None, None
    if pattern is None:
        return 0, 0
    empty_rows = int(np.count_nonzero(np.diff(pattern.indptr) == 0))
    return empty_rows, int(shape[1]) - len(np.unique(pattern.indices))


def _dead_gate_rows(patterns: dict) -> int:
    """Gate rows with no input at all (empty in both W_x and W_h of their layer)."""
    layers = [name[: -len(".w_x")] for name in patterns if name.endswith(".w_x")]
    return sum(int(np.count_nonzero(row_fan_in(patterns, layer) == 0)) for layer in layers)


def _totals(rows: list[dict], patterns: dict) -> dict:
    by = {r["name"]: r for r in rows}
    gates = [r for r in rows if r["name"].startswith("lstm.")]
    return {
        "gate_rows_without_inputs": _dead_gate_rows(patterns),
        "gate_nonzeros": sum(r["nnz"] for r in gates),
        "gate_dense_equivalent": sum(int(np.prod(r["shape"])) for r in gates),
        "embedding": by["embedding.weight"]["nnz"],
        "softmax": sum(r["nnz"] for r in rows if r["name"].startswith("softmax.")),
        "total_parameters": sum(r["nnz"] for r in rows),
        "dense_equivalent_total": sum(int(np.prod(r["shape"])) for r in rows),
    }


def count_from_config(cfg: TrainConfig, vocab_size: int) -> dict:
    """Counts of the model this config builds (the patterns are drawn as training would)."""
    if vocab_size < 1:
        raise ConfigError(f"--vocab-size must be >= 1, got {vocab_size}")
    patterns = build_patterns(cfg, np.random.default_rng(cfg.seed))
    rows = _matrix_rows(parameter_shapes(cfg, vocab_size), patterns)
    return {
        "config": {
            "hidden": cfg.hidden,
            "emb": cfg.emb,
            "layers": cfg.layers,
            "sparsity": cfg.sparsity,
            "mask": cfg.mask,
            "output": cfg.output,
            "vocab": vocab_size,
        },
        "matrices": rows,
        "totals": _totals(rows, patterns),
    }


def count_from_checkpoint(path) -> dict:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    shapes = {
        name: (tuple(ckpt.patterns[name].shape) if name in ckpt.patterns else arr.shape)
        for name, arr in ckpt.params.items()
    }
    rows = _matrix_rows(shapes, ckpt.patterns)
    cfg = ckpt.config
    return {
        "config": {k: cfg.get(k) for k in ("hidden", "emb", "layers", "sparsity", "mask", "output")}
        | {"vocab": len(ckpt.vocab)},
        "matrices": rows,
        "totals": _totals(rows, ckpt.patterns),
    }


def format_counts(counts: dict) -> str:
    head = f"{'parameter':<20} {'shape':>14} {'non-zeros':>14} {'density':>9}"
    lines = [head + f" {'rows w/o inputs':>16} {'cols w/o outputs':>17}"]
    for r in counts["matrices"]:
        shape = "x".join(str(d) for d in r["shape"])
        line = f"{r['name']:<20} {shape:>14} {r['nnz']:>14,} {r['density']:>9.4%}"
        if r["rows_without_inputs"] is not None:
            line += f" {r['rows_without_inputs']:>16,} {r['columns_without_outputs']:>17,}"
        lines.append(line)
    t = counts["totals"]
    factorized = any(r["name"] == "softmax.row_weight" for r in counts["matrices"])
    label = "factorised output (A, B, bias):" if factorized else "softmax (weight + bias):"
    lines += [
        "",
        f"gate non-zeros (weights + biases): {t['gate_nonzeros']:>14,}"
        f"  (~{t['gate_nonzeros'] / 1000:,.0f}k)",
        f"gate dense-equivalent:             {t['gate_dense_equivalent']:>14,}",
        f"gate rows with no input at all:    {t['gate_rows_without_inputs']:>14,}",
        f"embedding:                         {t['embedding']:>14,}",
        f"{label:<35}{t['softmax']:>14,}",
        f"total parameters:                  {t['total_parameters']:>14,}",
        f"dense-equivalent total:            {t['dense_equivalent_total']:>14,}",
    ]
    return "\n".join(lines)
