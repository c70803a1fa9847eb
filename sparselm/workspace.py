"""Preallocated scratch arrays, sized once per shape and reused every step.

A training step needs the same large temporaries every time (gate pre-activations, the (T*B, V)
logits, ...). Allocating them anew costs page faults on every step; a Workspace hands out the same
buffer for the same (name, shape, dtype) until the shape changes (e.g. the last, shorter window).
Each name is one buffer: callers use distinct names for arrays that are alive at the same time.
Buffers live on the workspace's backend (host memory, or the GPU), and the step's functions find
their kernels there too: `ws.be` is the Backend (kernels/__init__.py) the step runs on.
"""

from __future__ import annotations

import numpy as np


class Workspace:
    def __init__(self, backend=None) -> None:
        if backend is None:
            from .kernels import get_backend

            backend = get_backend("cpu")
        self.be = backend
        self._buffers: dict = {}

    def get(self, name: str, shape: tuple, dtype):
        """An uninitialised C-contiguous array of this shape and dtype, reused across calls."""
        shape = tuple(int(d) for d in shape)
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != np.dtype(dtype):
            buf = self.be.empty(shape, np.dtype(dtype))
            self._buffers[name] = buf
        return buf

    def rows(self, name: str, n: int, width: int, dtype):
        """(n, width) C-contiguous: the first n rows of a buffer that only ever grows, for a row
        count that changes from step to step (the batch's distinct words)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != width or buf.dtype != np.dtype(dtype):
            buf = self.be.empty((max(n, 1), int(width)), np.dtype(dtype))
            self._buffers[name] = buf
        return buf[:n]

    def zeros(self, name: str, shape: tuple, dtype):
        buf = self.get(name, shape, dtype)
        self.be.fill(buf, 0)
        return buf
