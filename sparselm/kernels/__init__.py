"""Backend selection: one kernel contract (kernels/contract.py), run on the CPU (kernels.cpu,
kernels.cpu_csr, kernels.cpu_lstm, kernels.cpu_arrays) or on a CUDA GPU (kernels.cuda). The
model, the LSTM, the output layer and the optimiser call only these, so one step implementation
runs on both.

    be = get_backend(cfg.device)        # "cpu" | "cuda" | "auto"
    be.csr_matmul(data, indices, indptr, x, out, False); be.name -> "cpu" | "cuda"

Importing this package imports nothing heavy (csr.py imports kernels.cpu_csr through it);
kernels.cuda is imported only when numba.cuda reports a GPU or the simulator is on.
"auto" uses a real GPU when there is one and otherwise the CPU, saying so once per process
(a FallbackWarning; the backend's `fallback` attribute holds the reason on every call). It
never picks the simulator, which runs each GPU thread as a Python thread: only an explicit
"cuda" does (that is how the tests reach it).
"""

from __future__ import annotations

import warnings

from ..errors import ConfigError
from .contract import ARRAY_OPS, ARRAYS, KERNEL_OPS, KERNELS, Backend

__all__ = ["ARRAYS", "DEVICES", "KERNELS", "Backend", "FallbackWarning", "get_backend"]

DEVICES = ("auto", "cpu", "cuda")


class FallbackWarning(UserWarning):
    """--device auto found no GPU and runs on the CPU."""


_fallback_noted = False  # "auto" says it fell back once per process


def get_backend(device: str = "auto") -> Backend:
    """The backend for --device: "cpu", "cuda" (ConfigError without a GPU) or "auto"."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return _cpu_backend()
    from ..device import cuda_status, simulator_enabled

    usable, detail = cuda_status()
    if device == "cuda":
        if not usable:
            raise ConfigError(f"--device cuda: {detail}; use --device cpu (or auto)")
        return _cuda_backend(detail)
    if usable and not simulator_enabled():
        return _cuda_backend(detail)
    reason = detail if not usable else "only the CUDA simulator is available"
    _note_fallback(reason)
    return _cpu_backend(fallback=reason)


def _note_fallback(reason: str) -> None:
    global _fallback_noted
    if not _fallback_noted:
        _fallback_noted = True
        warnings.warn(f"--device auto: {reason}; running on the CPU", FallbackWarning, stacklevel=3)


def _cuda_backend(detail: str) -> Backend:
    from . import cuda

    return Backend("cuda", {key: getattr(cuda, key) for key in KERNELS + ARRAYS}, detail)


def _cpu_backend(fallback: str | None = None) -> Backend:
    from . import cpu, cpu_arrays, cpu_csr, cpu_lstm

    def module(key):
        if key.startswith("csr_lstm"):
            return cpu_lstm
        return cpu_csr if key.startswith("csr_") else cpu

    functions = {key: getattr(module(key), key) for key in KERNEL_OPS}
    functions.update({key: getattr(cpu_arrays, key) for key in tuple(ARRAY_OPS) + ARRAYS})
    return Backend("cpu", functions, "NumPy + Numba", fallback)


def cpu_cache_cold(sparse: bool) -> bool:
    """Whether the CPU kernels of a training step still have to be compiled (no usable entry in
    Numba's on-disk cache), so that the first step will take a minute or more.

    Judged by representative kernels that every step uses (the softmax, and the fused sparse
    recurrence when the gates are sparse): their cache index is missing or stale exactly on a
    first run and after the package's sources change. Reads Numba's cache index through its
    internal API; if that ever changes, the answer is "cold" (the notice is then merely extra).
    """
    from . import cpu, cpu_lstm

    kernels = [cpu.softmax_xent] + ([cpu_lstm.csr_lstm_forward] if sparse else [])
    try:
        # _load_index() returns {} when the index file is absent or its source stamp is stale.
        return any(not k._cache._cache_file._load_index() for k in kernels)
    except Exception:  # noqa: BLE001 - any failure of the private API means "cannot tell"
        return True
