"""Parameters: one flat float buffer with named views.

The optimizer, the global-norm clip, the checkpoint and the gradient tests all walk one ordered
mapping name -> array. Every array is a view into ``flat``, so an optimizer step is a handful of
vectorised passes over one buffer, and the gradients live in a second buffer of the same layout.
A CSR gate weight contributes only its ``data`` (N,) values; its pattern lives in the model.
"""

from __future__ import annotations

import math

import numpy as np


class ParamSet:
    """Ordered named arrays, all views into ``flat``: (P,) float32|float64."""

    def __init__(self, shapes: dict[str, tuple], dtype, flat: np.ndarray | None = None):
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        total = int(sum(sizes))
        if flat is None:
            flat = np.zeros(total, dtype=dtype)
        if flat.shape != (total,) or flat.dtype != np.dtype(dtype):
            raise ValueError(f"flat buffer must be ({total},) {np.dtype(dtype)}")
        self.flat = flat
        self.arrays: dict[str, np.ndarray] = {}
        offset = 0
        for (name, shape), size in zip(self.shapes.items(), sizes):
            self.arrays[name] = flat[offset: offset + size].reshape(shape)
            offset += size

    @property
    def dtype(self) -> np.dtype:
        return self.flat.dtype

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self):
        return iter(self.arrays)

    def items(self):
        return self.arrays.items()

    def zeros_like(self) -> "ParamSet":
        return ParamSet(self.shapes, self.dtype)

    def copy(self) -> "ParamSet":
        return ParamSet(self.shapes, self.dtype, self.flat.copy())

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays (same names and shapes) into the views, casting to this set's dtype."""
        for name, view in self.arrays.items():
            view[...] = arrays[name]
