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
from .sparsity import build_patterns


def _matrix_rows(shapes: dict, patterns: dict) -> list[dict]:
    rows = []
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        nnz = len(patterns[name].indices) if name in patterns else size
        rows.append(
            {"name": name, "shape": list(shape), "nnz": nnz, "density": nnz / size if size else 0.0}
        )
    return rows


def _totals(rows: list[dict]) -> dict:
    by = {r["name"]: r for r in rows}
    gates = [r for r in rows if r["name"].startswith("lstm.")]
    return {
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
        "totals": _totals(rows),
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
        "totals": _totals(rows),
    }


def format_counts(counts: dict) -> str:
    lines = [f"{'parameter':<20} {'shape':>14} {'non-zeros':>14} {'density':>9}"]
    for r in counts["matrices"]:
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(f"{r['name']:<20} {shape:>14} {r['nnz']:>14,} {r['density']:>9.4%}")
    t = counts["totals"]
    factorized = any(r["name"] == "softmax.row_weight" for r in counts["matrices"])
    label = "factorised output (A, B, bias):" if factorized else "softmax (weight + bias):"
    lines += [
        "",
        f"gate non-zeros (weights + biases): {t['gate_nonzeros']:>14,}"
        f"  (~{t['gate_nonzeros'] / 1000:,.0f}k)",
        f"gate dense-equivalent:             {t['gate_dense_equivalent']:>14,}",
        f"embedding:                         {t['embedding']:>14,}",
        f"{label:<35}{t['softmax']:>14,}",
        f"total parameters:                  {t['total_parameters']:>14,}",
        f"dense-equivalent total:            {t['dense_equivalent_total']:>14,}",
    ]
    return "\n".join(lines)
