"""The contract every output head keeps: the layer from the top LSTM output to the loss.

A head maps h: (N, H), the top layer's output after dropout (N = T*B rows, time-major), to the
per-row NLL of the targets, and back to d(loss)/dh. The model calls only these methods, so it
never asks which head it has, and adding a head is one new module here (plus its line in
heads/__init__.py's registry and its tests).

Gradients are overwritten, not accumulated: each parameter of the head is written once per
backward (as every gradient of the model except the embedding's scatter-add).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import numpy as np

from ..workspace import Workspace


class Arrays(Protocol):
    """name -> array: a ParamSet, or a plain dict in tests."""

    def __getitem__(self, name: str) -> Any: ...


class OutputHead(ABC):
    """One output layer bound to its parameter and gradient arrays and a workspace.

    params, grads: name -> array on ws's backend (the model's ParamSets; views into their flat
    buffers, so the optimiser's in-place updates are seen without rebinding). The head keeps the
    arrays it names in `shapes`.
    """

    name: ClassVar[str]  # the --output choice that selects this head

    def __init__(self, params: Arrays, grads: Arrays, ws: Workspace):
        self.ws = ws

    @staticmethod
    @abstractmethod
    def shapes(hidden: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """name -> shape of the head's parameters, in model (flat buffer) order.
        Raises ValueError when the head cannot take this hidden size."""

    @abstractmethod
    def forward(self, h, targets, row_weights, grad: bool) -> tuple[Any, tuple]:
        """Per-row NLL of the targets, and the cache for backward.

        h: (N, H) C-contiguous; targets: (N,) int32; row_weights: (N,) float, each row's factor in
        the differentiated loss (0 for padding); all on the backend, h's float dtype.
        Returns nll: (N,) float64 on the backend and cache (used once, by backward). With
        grad=False no gradient is computed and the cache may not be passed to backward.
        """

    @abstractmethod
    def backward(self, cache: tuple) -> Any:
        """Overwrite the head's gradients with those of sum_n row_weights[n] * nll[n]; return
        dh: (N, H), a workspace buffer (valid until the next forward)."""

    @abstractmethod
    def logits(self, h: np.ndarray) -> np.ndarray:
        """Next-word logits (N, V) of host arrays h: (N, H) (the CPU backend: generation)."""
