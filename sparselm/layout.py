"""The parameter layout: every parameter's name and dense shape, in model order.

The one place that says which parameters a configuration has. The model allocates its flat
buffer from it (a CSR gate then stores only its (N,) values), `info` counts from it, and the
checkpoint check compares a file against it. Gate rows are in blocks i, f, g, o (G = 4H):

    embedding.weight (V, E)
    lstm.{l}.w_x (G, I), lstm.{l}.w_h (G, H), lstm.{l}.bias (G,)   for l = 0 .. L-1, I = E at
                                                                    l = 0, else H
    the output head's parameters (heads/: softmax.weight (V, H), softmax.bias (V,), or another
    head's)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .heads import head_class


class Sizes(Protocol):
    """What the layout reads from a configuration (a TrainConfig has all of it)."""

    emb: int
    hidden: int
    layers: int
    output: str


def gate_names(layers: int) -> Iterator[str]:
    """lstm.{l}.w_x, lstm.{l}.w_h for l = 0 .. layers-1: the weights that may be sparse."""
    for layer in range(layers):
        yield f"lstm.{layer}.w_x"
        yield f"lstm.{layer}.w_h"


def gate_shape(sizes: Sizes, name: str) -> tuple[int, int]:
    """(G, I) of lstm.{l}.w_x, (G, H) of lstm.{l}.w_h."""
    layer = int(name.split(".")[1])
    inputs = sizes.emb if layer == 0 else sizes.hidden
    return (4 * sizes.hidden, inputs if name.endswith("w_x") else sizes.hidden)


def parameter_shapes(sizes: Sizes, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """name -> dense shape of every parameter, in model (and flat buffer) order."""
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (vocab_size, sizes.emb)}
    for layer in range(sizes.layers):
        for name in (f"lstm.{layer}.w_x", f"lstm.{layer}.w_h"):
            shapes[name] = gate_shape(sizes, name)
        shapes[f"lstm.{layer}.bias"] = (4 * sizes.hidden,)
    shapes.update(head_class(sizes.output).shapes(sizes.hidden, vocab_size))
    return shapes
