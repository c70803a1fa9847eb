"""Shared fixtures, and the CUDA simulator switch (below).

The Penn Treebank corpus is read from one place only: $SPARSELM_DATA when set, otherwise
../shared/data/ptb next to the checkout (the workplace's shared folder).
"""

import os

# The CUDA kernel tests run on Numba's simulator unless a real GPU is asked for. The variable must
# be set before numba is first imported in this process; it only changes numba.cuda (the CPU
# @njit kernels compile and run exactly as without it), and --device auto never picks the
# simulator.
if os.environ.get("SPARSELM_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest

REPO = Path(__file__).resolve().parent.parent


# -- coverage: not inside Numba -------------------------------------------------------------------
# Coverage measures our Python (sparselm/kernels/ is omitted: it runs as machine code or in the
# CUDA simulator). On Python 3.11 its tracer still sees every Python call, and Numba's compiler
# and the simulator's per-thread machinery are millions of them (a cold one-process suite reached
# the same test about 15% later under coverage). Both are paused around those two entry points,
# where none of the measured code runs (depth-counted: compiling a kernel compiles its callees).
_paused = 0


def _outside_coverage(fn):
    @functools.wraps(fn)
    def untraced(*args, **kwargs):
        global _paused
        import coverage

        cov = coverage.Coverage.current() if _paused == 0 else None
        if cov is not None:
            cov.stop()
        _paused += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _paused -= 1
            if cov is not None:
                cov.start()

    return untraced


# -- xdist: each kernel compiled by one worker --------------------------------------------------
# A cold suite is mostly Numba compiling, and two workers that reach the same kernel at once
# both compile it (a cold run compiled the SDDMM's two training signatures twice: a quarter of
# all compile time). Under xdist, compiling a kernel takes a lock named after it, shared by the
# workers: the second one waits, then finds the first one's result in Numba's on-disk cache
# (Dispatcher.compile looks there first). Locks are per function, so different kernels still
# compile in parallel; a caller's lock is held while its callees compile, which cannot
# deadlock because calls form no cycles. Held locks are counted per process (flock is per open
# file: a process taking its own lock again would wait for itself).
_held: dict[str, int] = {}


def _one_worker_at_a_time(fn, lock_dir: Path):
    import fcntl
    import hashlib

    @functools.wraps(fn)
    def compile_locked(self, sig):
        py_func = getattr(self, "py_func", None)
        name = f"{getattr(py_func, '__module__', '?')}.{getattr(py_func, '__qualname__', '?')}"
        if name in _held:
            return fn(self, sig)
        path = lock_dir / hashlib.sha1(name.encode()).hexdigest()[:16]
        with open(path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _held[name] = 1
            try:
                return fn(self, sig)
            finally:
                del _held[name]

    return compile_locked


def pytest_configure(config):
    from numba.core.dispatcher import Dispatcher

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import hashlib
        import tempfile

        # one folder per checkout (its Numba cache lives beside its sources)
        tag = hashlib.sha1(str(REPO).encode()).hexdigest()[:12]
        lock_dir = Path(tempfile.gettempdir()) / f"sparselm-compile-locks-{tag}"
        lock_dir.mkdir(exist_ok=True)
        Dispatcher.compile = _one_worker_at_a_time(Dispatcher.compile, lock_dir)
    if config.pluginmanager.hasplugin("_cov") and getattr(config.option, "cov_source", None):
        Dispatcher.compile = _outside_coverage(Dispatcher.compile)
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            from numba.cuda.simulator.kernel import FakeCUDAKernel

            FakeCUDAKernel.__call__ = _outside_coverage(FakeCUDAKernel.__call__)


def ptb_dir() -> Path:
    env = os.environ.get("SPARSELM_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "ptb"


@pytest.fixture(scope="session")
def ptb_path() -> Path:
    """Folder holding ptb.{train,valid,test}.txt; skips the test when the corpus is absent."""
    path = ptb_dir()
    if not (path / "ptb.train.txt").is_file():
        pytest.skip(f"PTB corpus not found at {path} (set SPARSELM_DATA)")
    return path


@pytest.fixture(scope="module")
def small_builtin():
    """`--data builtin` at a few thousand sentences (seconds, not a minute) for a whole module;
    the same sizes for every command of the module, so its splits stay the same."""
    from sparselm import synthetic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "SIZES", {"train": 3000, "valid": 300, "test": 300})
        yield "builtin"


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A tiny corpus folder in PTB format (train/valid/test), fast enough for any test."""
    words = "the cat sat on the mat and the dog ate a bone <unk> N".split()
    lines = []
    for i in range(60):
        n = 3 + (i * 7) % 9
        lines.append(" ".join(words[(i * 3 + k * 5) % len(words)] for k in range(n)))
    (tmp_path / "ptb.train.txt").write_text("\n".join(lines[:40]) + "\n")
    (tmp_path / "ptb.valid.txt").write_text("\n".join(lines[40:50]) + "\n")
    (tmp_path / "ptb.test.txt").write_text("\n".join(lines[50:]) + "\n")
    return tmp_path


class KernelBackend:
    """One kernel backend for the parametrised kernel suites: its kernel functions (`k` for the
    dense and optimiser kernels, `csr` for the CSR products, `arrays` for the array operations
    of the step: gemm, copy, gather, ...), and how test arrays travel to it
    (`dev`) and back (`host`). `simulated` is True on Numba's CUDA simulator, where every GPU
    thread is a Python thread: tests keep to tiny shapes there."""

    def __init__(self, name, kernels, csr, arrays, dev, empty, host, simulated=False):
        self.name, self.k, self.csr, self.arrays = name, kernels, csr, arrays
        self.dev, self.empty, self.host = dev, empty, host
        self.simulated = simulated


@pytest.fixture(params=["cpu", "cuda"])
def kernel_backend(request, monkeypatch) -> KernelBackend:
    """The CPU kernels, then the CUDA kernels with small launches (8 threads per block, at most 3
    blocks, so every kernel runs several blocks, its grid-stride loop and its boundary checks)."""
    if request.param == "cpu":
        import numpy as np

        from sparselm.kernels import cpu, cpu_arrays, cpu_csr

        return KernelBackend("cpu", cpu, cpu_csr, cpu_arrays, np.array, np.empty, np.asarray)
    from sparselm.device import cuda_status, simulator_enabled

    usable, detail = cuda_status()
    if not usable:
        pytest.skip(f"CUDA unavailable: {detail}")
    from sparselm.kernels import cuda

    monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(cuda, "MAX_BLOCKS", 3)
    return KernelBackend(
        "cuda",
        cuda,
        cuda,
        cuda,
        cuda.to_device,
        cuda.empty,
        lambda a: a.copy_to_host(),
        simulated=simulator_enabled(),
    )
