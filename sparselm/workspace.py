"""Preallocated scratch arrays, sized once per shape and reused every step.

A training step needs the same large temporaries every time (gate pre-activations, the (T*B, V)
logits, ...). Allocating them anew costs page faults on every step; a Workspace hands out the same
buffer for the same (name, shape, dtype) until the shape changes (e.g. the last, shorter window).
Each name is one buffer: callers use distinct names for arrays that are alive at the same time.
"""

from __future__ import annotations

import numpy as np


class Workspace:
    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of this shape and dtype, reused across calls."""
        shape = tuple(int(d) for d in shape)
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
            buf = np.empty(shape, dtype=dtype)
            self._buffers[name] = buf
        return buf

    def zeros(self, name: str, shape: tuple, dtype) -> np.ndarray:
        buf = self.get(name, shape, dtype)
        buf.fill(0)
        return buf

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())
