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
