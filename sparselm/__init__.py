"""sparselm: word-level LSTM language models with sparse gate weights, by hand in NumPy + Numba.

Dimension letters used in every docstring: T steps, B batch, E embedding, H hidden,
G = 4H gates, V vocabulary, N = nnz of a CSR matrix, M rows of a batched product.
"""

import os

__version__ = "0.1.0"

# After each call OpenBLAS's worker threads spin-wait for new work for up to 2^28 cycles by
# default, holding the cores that Numba's kernels need next: a training step alternates the two
# libraries. 2^4 cycles measured 4-10% faster steps on 2 cores (docs/PERFORMANCE.md). Read when
# OpenBLAS loads, so it is set here, before NumPy/SciPy load through this package; a value the
# user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# The library's entry points, importable from the package itself. Loaded on first use
# (PEP 562), so `import sparselm` and `sparselm --help` stay free of NumPy kernels and Numba.
# Training is `from sparselm.train import train`: a package attribute named `train` would be
# replaced by the submodule sparselm.train as soon as anything imports it.
_EXPORTS = {
    "TrainConfig": "config",
    "make_config": "config",
    "PRESETS": "config",
    "evaluate": "evaluation",
    "perplexity": "evaluation",
    "load_model": "model_io",
    "load_corpus": "data",
    "LanguageModel": "model",
    "sample_text": "generate",
    "get_backend": "kernels",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sparselm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
