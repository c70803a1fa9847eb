#!/usr/bin/env python
"""Where one training step's time goes: every backend call of the step, wrapped and timed.

    python scripts/profile_step.py [--config h1500-d0.0005] [--steps 6] [--reps 3] [--threads 2]

Builds our model for a bench_train configuration (small, medium, large, h1500, h1500-d0.0005
or H:D), runs a few warm-up steps on random tokens, then --reps repetitions of --steps steps
with each function of the CPU backend (kernels/__init__.py: KERNELS) and the CSR products that
CSRMatrix calls wrapped by a timer; GEMMs are reported per shape. Prints the median step time,
then the median per-step time of each operation, largest first, and what the wrappers did not
see (Python between the calls). The wrappers add about a microsecond per call.
"""

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path


def wrap(backend, name, totals):
    inner = getattr(backend, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        label = name
        if name == "gemm":
            flags = "".join(k[-1] for k in ("trans_a", "trans_b") if kwargs.get(k))
            label = f"gemm {tuple(args[0].shape)} x {tuple(args[1].shape)} {flags}".rstrip()
        totals[label] += time.perf_counter() - start
        return out

    setattr(backend, name, timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="h1500-d0.0005", help="a bench_train configuration")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    ap.add_argument("--threads", type=int, default=2, help="threads for Numba and BLAS")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_train

    bench_train.set_threads(args.threads)  # before NumPy loads (imports sparselm)
    import numpy as np

    from sparselm.data import Batch
    from sparselm.kernels import KERNELS, cpu_csr, get_backend

    backend = get_backend("cpu")
    cfg = bench_train.config_for(args.config)
    ours = bench_train.Ours(cfg, 10000, backend)
    rng = np.random.default_rng(0)

    def batch():
        shape = (cfg.bptt, cfg.batch_size)
        return Batch(
            rng.integers(0, 10000, shape).astype(np.int32),
            rng.integers(0, 10000, shape).astype(np.int32),
            None,
            False,
        )

    for _ in range(3):
        ours.train_step(batch())
    totals = collections.defaultdict(float)
    for name in KERNELS:
        wrap(backend, name, totals)
    for name in ("csr_matmul", "csr_matmul_t", "csr_sddmm"):  # CSRMatrix calls the module
        wrap(cpu_csr, name, totals)
    per_rep, steps = [], []
    for _ in range(args.reps):
        totals.clear()
        for _ in range(args.steps):
            b = batch()
            start = time.perf_counter()
            ours.train_step(b)
            steps.append(time.perf_counter() - start)
        per_rep.append({k: v / args.steps for k, v in totals.items()})
    step = statistics.median(steps)
    ops = {k: statistics.median(rep.get(k, 0.0) for rep in per_rep) for k in per_rep[0]}
    print(
        f"{args.config}: median step {step * 1e3:.2f} ms ({args.threads} threads, "
        f"{cfg.bptt * cfg.batch_size} tokens)"
    )
    for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds * 1e3:8.2f} ms  {name}")
    print(f"  {(step - sum(ops.values())) * 1e3:8.2f} ms  (between the calls: Python)")


if __name__ == "__main__":
    main()
