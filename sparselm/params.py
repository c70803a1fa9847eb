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
    """Ordered named arrays, all views into ``flat``: (P,) float32|float64.

    ``backend`` (kernels.Backend; None or the CPU backend: NumPy) allocates ``flat``; on a GPU the
    views are device arrays, and ``to_host`` gives NumPy copies (checkpoints, finiteness checks).
    """

    def __init__(self, shapes: dict[str, tuple], dtype, flat=None, backend=None):
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.backend = backend if backend is not None and backend.name != "cpu" else None
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        total = int(sum(sizes))
        if flat is None:
            flat = (
                np.zeros(total, dtype=dtype)
                if self.backend is None
                else self.backend.zeros(total, np.dtype(dtype))
            )
        if tuple(flat.shape) != (total,) or flat.dtype != np.dtype(dtype):
            raise ValueError(f"flat buffer must be ({total},) {np.dtype(dtype)}")
        self.flat = flat
        self.arrays: dict = {}
        offset = 0
        for (name, shape), size in zip(self.shapes.items(), sizes):
            self.arrays[name] = flat[offset : offset + size].reshape(shape)
            offset += size

    @property
    def dtype(self) -> np.dtype:
        return self.flat.dtype

    def __getitem__(self, name: str):
        return self.arrays[name]

    def span(self, name: str) -> tuple[int, int]:
        """(start, stop): where array `name` lies in ``flat``."""
        start = 0
        for other, shape in self.shapes.items():
            if other == name:
                return start, start + math.prod(shape)
            start += math.prod(shape)
        raise KeyError(name)

    def __iter__(self):
        return iter(self.arrays)

    def items(self):
        return self.arrays.items()

    def zeros_like(self) -> ParamSet:
        return ParamSet(self.shapes, self.dtype, backend=self.backend)

    def to_backend(self, backend) -> ParamSet:
        """The same values in a ParamSet on `backend` (one copy of the flat buffer)."""
        out = ParamSet(self.shapes, self.dtype, backend=backend)
        backend.copy(out.flat, self.host_flat())
        return out

    def host_flat(self) -> np.ndarray:
        """``flat`` as a NumPy array: itself on the host, a copy from a device."""
        return self.flat if self.backend is None else self.backend.to_host(self.flat)

    def to_host(self) -> dict[str, np.ndarray]:
        """name -> NumPy array: the views themselves on the host, copies from a device."""
        if self.backend is None:
            return dict(self.arrays)
        return dict(ParamSet(self.shapes, self.dtype, self.host_flat()).items())

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays (same names and shapes) into the views, casting to this set's dtype."""
        host = ParamSet(self.shapes, self.dtype) if self.backend is not None else self
        for name, view in host.arrays.items():
            view[...] = arrays[name]
        if self.backend is not None:  # values were cast into a host set: send them over
            self.backend.copy(self.flat, host.flat)
