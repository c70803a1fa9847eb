"""The size of the thread pools: the one place that sets it (TrainConfig.threads, --threads).

Numba's pool and BLAS's (OpenBLAS, OpenMP or MKL) take turns during a step and never share
cores, so both get the same count. Each library reads its count from the environment once, when
it loads; set_threads therefore works only before NumPy and Numba are imported: the CLI calls it
before a command imports them, experiments.py in each fresh worker process. A Python caller of
train.train(cfg) sizes the pools itself (this function first, or the variables), whatever
cfg.threads holds (docs/DESIGN.md, structural debts).
Imports nothing heavy: `sparselm --help` must stay fast.
"""

from __future__ import annotations

import os

POOL_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(threads: int | None) -> None:
    """Size Numba's and BLAS's pools to `threads` (None or 0: leave their defaults, all cores)."""
    if threads:
        for var in POOL_VARIABLES:
            os.environ[var] = str(threads)
