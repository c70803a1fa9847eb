#!/usr/bin/env python
"""CSR kernels vs scipy.sparse, torch.sparse and dense NumPy, side by side, in one run.

    python scripts/bench_kernels.py [--quick] [--threads N] [--reps R] [--target-ms T]
                                    [--hidden 650,1500] [--density 0.0005] [--rows 20]

For each gate matrix W_h (4H, H) with a fan-in mask of density d, float32, and M batch rows:
  matmul    out (M, 4H) = x (M, H) @ W^T        ours: CSRMatrix.matmul
  matmul_t  out (M, H)  = dy (M, 4H) @ W         ours: CSRMatrix.matmul_t
  sddmm     dW on the pattern of W (N values)    ours: CSRMatrix.sddmm
Ours and the peers get their best public formulation (several are tried, the fastest kept),
timed the same way; the peers get their own precomputed transpose where it helps, and so does
ours: matmul_t also runs on a CSRMatrix of W^T with its values copied once (see `ours`). The
`out` column says which of ours won: batch-major (C) or feature-major (F) output (scipy's
`W @ x.T` returns the latter), T for the precomputed W^T. `x_in_place` is matmul_t's ratio
with W's values read in place through t_perm, as training does. scipy.sparse is
single-threaded and has no SDDMM; torch.sparse uses MKL on its own threads (sampled_addmm for
the SDDMM); dense is NumPy's BLAS (the full dy^T x for the gradient). Time per call is the
median of --reps repetitions, each looping the call for about --target-ms; repetitions of ours
and the peers are interleaved, each after a short sleep and an untimed warm-up of the same
length, and x_peer is the median of the ratios within each round of repetitions (see
`compare`). GFLOP/s = 2 * nnz * M / time. Before timing a point, each of ours' formulations
is checked against the plain-loop specification (sparselm.kernels.reference): a wrong result
stops the run. That check loops in Python over W's entries (seconds at H = 2500, d = 0.1).
Ends with one JSON line summarising the run.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

GRID_H = (650, 1500, 2500)
GRID_D = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1)
GRID_M = (20, 400)
QUICK = ((200,), (0.01, 0.1), (20,))
OPS = ("matmul", "matmul_t", "sddmm")


def _floats(kind):
    """argparse type: "a,b,c" -> tuple of kind."""
    return lambda text: tuple(kind(v) for v in text.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny grid for smoke tests")
    p.add_argument("--threads", type=int, default=2, help="threads for Numba, torch and BLAS")
    p.add_argument("--reps", type=int, default=None, help="repetitions per point (median)")
    p.add_argument("--target-ms", type=float, default=None, help="duration of one repetition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--hidden",
        type=_floats(int),
        default=None,
        help="comma-separated H values (default: the full grid's)",
    )
    p.add_argument(
        "--density",
        type=_floats(float),
        default=None,
        help="comma-separated densities (default: the full grid's)",
    )
    p.add_argument(
        "--rows",
        type=_floats(int),
        default=None,
        help="comma-separated batch rows M (default: the full grid's)",
    )
    args = p.parse_args(argv)
    base = QUICK if args.quick else (GRID_H, GRID_D, GRID_M)
    args.grid = tuple(
        given or default for given, default in zip((args.hidden, args.density, args.rows), base)
    )
    args.reps = args.reps or (3 if args.quick else 7)
    args.target_ms = args.target_ms or (1.0 if args.quick else 8.0)
    return args


def _loop(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def _calibrate(fn, target_s):
    """Calls per repetition so that one repetition lasts about target_s (after a warm-up)."""
    fn()
    n = 1
    while True:
        elapsed = _loop(fn, n)
        if elapsed >= target_s / 4 or n >= 1 << 16:
            return max(1, round(n * target_s / max(elapsed, 1e-9)))
        n *= 4


# After its work torch's OpenMP threads spin for up to ~200 ms, holding both cores: the next
# repetition (ours, first in each round) waits this long after a library with its own threads.
_SPIN_S = 0.25


def compare(fns, reps, target_s, in_place=None):
    """Times of {name: [formulations]}: {name: median seconds per call of its fastest
    formulation}, "pick": {name: index of that formulation}, and "x_peer": the median over
    rounds of (best peer's time / ours) within the round; with in_place = n also "x_in_place",
    the same ratio for the fastest of ours' first n formulations.

    A round times every formulation once, back to back, ours first; rounds repeat `reps`
    times. The host's speed drifts by up to 2x over seconds (other guests), and a ratio of
    two times taken milliseconds apart cancels most of that, where a ratio of medians taken
    at different moments does not. Each timing starts after a short sleep that lets the
    previous library's threads go idle, then an untimed run of the same length: after idling
    the cores take milliseconds to come back to speed (a 78 us call took 173 us right after
    0.3 s idle and still 102 us 50-100 calls later), and ours, first in each round, came
    after the longest idle (the pause after torch).
    """
    flat = [(name, j, f) for name, fs in fns.items() for j, f in enumerate(fs)]
    loops = [_calibrate(f, target_s) for _, _, f in flat]
    samples = [[] for _ in flat]
    for _ in range(reps):
        for (_, _, f), n, got in zip(flat, loops, samples):
            time.sleep(min(0.03, target_s * 5))
            _loop(f, n)  # untimed: back up to speed
            got.append(_loop(f, n) / n)
        if "torch" in fns:
            time.sleep(_SPIN_S)

    def fastest(name, limit=None):  # (median, index, samples)
        runs = [
            (statistics.median(got), j, got)
            for (n, j, _), got in zip(flat, samples)
            if n == name and (limit is None or j < limit)
        ]
        return min(runs, key=lambda run: run[0])

    best = {name: fastest(name) for name in fns}
    out = {name: med for name, (med, _, _) in best.items()}
    out["pick"] = {name: j for name, (_, j, _) in best.items()}
    peers = [got for name, (_, _, got) in best.items() if name in ("scipy", "torch")]

    def paired(ours):
        return statistics.median(min(p[i] for p in peers) / ours[i] for i in range(reps))

    if "ours" in best and peers:
        out["x_peer"] = paired(best["ours"][2])
        if in_place is not None:
            out["x_in_place"] = paired(fastest("ours", in_place)[2])
    return out


def peers(np, sp, torch, w, x, dy):
    """{op: {peer: [callables]}} for one matrix; w: CSRMatrix, x (M, C), dy (M, R) float32."""
    s = w.to_scipy()
    st = s.T.tocsr()
    dense = w.to_dense()
    out = {
        "matmul": {"scipy": [lambda: s @ x.T], "dense": [lambda: x @ dense.T]},
        "matmul_t": {"scipy": [lambda: dy @ s, lambda: st @ dy.T], "dense": [lambda: dy @ dense]},
        "sddmm": {"dense": [lambda: dy.T @ x]},
    }
    if torch is not None:
        tw = torch.sparse_csr_tensor(
            torch.from_numpy(w.indptr.astype(np.int64)),
            torch.from_numpy(w.indices.astype(np.int64)),
            torch.from_numpy(w.data),
            size=w.shape,
        )
        twt = torch.sparse_csr_tensor(
            torch.from_numpy(st.indptr.astype(np.int64)),
            torch.from_numpy(st.indices.astype(np.int64)),
            torch.from_numpy(st.data),
            size=st.shape,
        )
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        out["matmul"]["torch"] = [lambda: torch.sparse.mm(tw, tx.T), lambda: tx @ tw.t()]
        out["matmul_t"]["torch"] = [lambda: tdy @ tw, lambda: torch.sparse.mm(twt, tdy.T)]
        out["sddmm"]["torch"] = [lambda: torch.sparse.sampled_addmm(tw, tdy.T, tx, beta=0.0)]
    return out


def ours(np, w, w_t, x, dy):
    """{op: [callables]} through the public CSRMatrix methods, outputs preallocated. The
    products take their output batch-major (C-contiguous (M, X)) or feature-major (F-contiguous,
    the transpose of an (X, M) array), as the peers' formulations return either. matmul_t also
    runs as w_t.matmul, w_t a CSRMatrix of W^T with its values copied once outside the timing,
    as the peers get their precomputed transposes; w.matmul_t reads W's values in place, as
    training does (the `out` column says which won)."""
    m, (rows, cols) = x.shape[0], w.shape
    out, out_f = np.empty((m, rows), w.dtype), np.empty((rows, m), w.dtype).T
    out_t, out_t_f = np.empty_like(x), np.empty((cols, m), w.dtype).T
    grad = np.empty(w.nnz, w.dtype)
    return {
        "matmul": [lambda: w.matmul(x, out=out), lambda: w.matmul(x, out=out_f)],
        "matmul_t": [
            lambda: w.matmul_t(dy, out=out_t),
            lambda: w.matmul_t(dy, out=out_t_f),
            lambda: w_t.matmul(dy, out=out_t),
            lambda: w_t.matmul(dy, out=out_t_f),
        ],
        "sddmm": [lambda: w.sddmm(dy, x, out=grad)],
    }


def check_against_reference(np, w, x, dy, mine):
    """Runs each of ours' callables once and checks its result against the plain-loop
    specification (sparselm.kernels.reference) before anything is timed: a fast wrong kernel
    must not make a figure. Raises AssertionError naming the op and the point."""
    from sparselm.kernels import reference

    m, (rows, cols) = x.shape[0], w.shape
    want = {
        "matmul": np.zeros((m, rows), w.dtype),
        "matmul_t": np.zeros((m, cols), w.dtype),
        "sddmm": np.zeros(w.nnz, w.dtype),
    }
    reference.csr_matmul(w.data, w.indices, w.indptr, x, want["matmul"], False)
    t_arrays = (w.data, w.t_perm, w.t_indices, w.t_indptr)
    reference.csr_matmul_t(*t_arrays, dy, want["matmul_t"], False)
    reference.csr_sddmm(w.indices, w.indptr, dy, x, want["sddmm"], False)
    for op, fns in mine.items():
        scale = max(1.0, float(np.abs(want[op]).max(initial=0.0)))
        for i, fn in enumerate(fns):
            got = fn()
            if not np.allclose(got, want[op], rtol=1e-4, atol=1e-4 * scale):
                raise AssertionError(f"{op} (form {i}) differs from kernels.reference at {w!r}")


LAYOUTS = ("C", "F", "CT", "FT")  # ours' formulations, in the order `ours` lists them
IN_PLACE = 2  # matmul_t: the first two read W's values in place


def measure(args, np, sp, torch, csr_random, CSRMatrix):
    """Rows of results: dict(H, d, M, nnz, op, ours, scipy, torch, dense) in seconds.

    Dense products do not depend on d and are timed last, once per (H, M, op): OpenBLAS
    threads busy-wait for a long while after each call and would slow whatever runs next.
    """
    grid = args.grid
    rng = np.random.default_rng(args.seed)
    target = args.target_ms / 1e3
    rows, dense_fns = [], {}
    for h in grid[0]:
        for m in grid[2]:
            x = rng.standard_normal((m, h)).astype(np.float32)
            dy = rng.standard_normal((m, 4 * h)).astype(np.float32)
            for d in grid[1]:
                w = csr_random(4 * h, h, d, rng, mask="fanin", dtype=np.float32, scale=0.1)
                st = w.to_scipy().T.tocsr()
                w_t = CSRMatrix(st.data, st.indices, st.indptr, st.shape)
                mine, theirs = ours(np, w, w_t, x, dy), peers(np, sp, torch, w, x, dy)
                check_against_reference(np, w, x, dy, mine)
                for op in OPS:
                    fns = {"ours": mine[op]}
                    fns.update((p, theirs[op][p]) for p in ("scipy", "torch") if p in theirs[op])
                    in_place = IN_PLACE if op == "matmul_t" else None
                    row = {
                        "H": h,
                        "d": d,
                        "M": m,
                        "nnz": w.nnz,
                        "op": op,
                        "scipy": None,
                        "torch": None,
                        **compare(fns, args.reps, target, in_place),
                    }
                    dense_fns.setdefault((h, m, op), theirs[op]["dense"])
                    rows.append(row)
                print(".", end="", file=sys.stderr, flush=True)
    dense = {}
    for key, fns in dense_fns.items():
        time.sleep(min(0.3, target * 30))
        dense[key] = compare({"dense": fns}, args.reps, target)["dense"]
    print(file=sys.stderr)
    for row in rows:
        row["dense"] = dense[(row["H"], row["M"], row["op"])]
    return rows


def derived(row):
    """(GFLOP/s, x best peer (paired, see compare) or None without a peer, x dense) of one row.

    The SDDMM's only peer is torch: without it that op has no ratio."""
    flops = 2.0 * row["nnz"] * row["M"]
    return flops / row["ours"] / 1e9, row.get("x_peer"), row["dense"] / row["ours"]


def fmt_ratio(x, width):
    return f"{x:{width}.2f}" if x is not None else f"{'n/a':>{width}}"


def fmt_us(t):
    return f"{t * 1e6:10.1f}" if t is not None else f"{'n/a':>10}"


def print_header():
    print(
        f"{'H':>5} {'d':>7} {'M':>4} {'nnz':>8} {'op':>9} {'out':>3} {'ours_us':>10} {'GF/s':>6} "
        f"{'scipy_us':>10} {'torch_us':>10} {'dense_us':>10} {'x_peer':>7} {'x_dense':>8} "
        f"{'x_in_place':>10}",
        flush=True,
    )


def print_row(row):
    gflops, x_peer, x_dense = derived(row)
    layout = LAYOUTS[row["pick"]["ours"]] if row["op"] != "sddmm" else "-"
    print(
        f"{row['H']:5d} {row['d']:7.4f} {row['M']:4d} {row['nnz']:8d} {row['op']:>9} "
        f"{layout:>3} {fmt_us(row['ours'])} {gflops:6.1f} {fmt_us(row['scipy'])} "
        f"{fmt_us(row['torch'])} {fmt_us(row['dense'])} {fmt_ratio(x_peer, 7)} {x_dense:8.2f} "
        f"{fmt_ratio(row.get('x_in_place', x_peer), 10)}",
        flush=True,
    )


def break_even(points):
    """Density where our time equals dense time: points [(d, ours, dense)] sorted by d.

    Interpolated in log-log between grid densities; beyond the grid it is extrapolated from the
    densest point with time proportional to d (returned with a flag).
    """
    import math

    ratios = [(d, t / td) for d, t, td in points]
    if ratios[0][1] >= 1:
        return ratios[0][0], "below grid"
    for (d0, r0), (d1, r1) in zip(ratios, ratios[1:]):
        if r1 >= 1:
            f = -math.log(r0) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(d0) + f * (math.log(d1) - math.log(d0))), "interpolated"
    d_max, r_max = ratios[-1]
    return min(1.0, d_max / r_max), "extrapolated"


def summarise(rows, args):
    """The final JSON object: worst ratios, GFLOP/s, break-even densities, goals."""
    by_op = {op: [r for r in rows if r["op"] == op] for op in OPS}
    worst: dict = {}
    for op, rs in by_op.items():
        compared = [r for r in rs if derived(r)[1] is not None]
        if not compared:  # no peer for this op in this run (torch absent): "n/a"
            worst[op] = None
            continue
        r = min(compared, key=lambda r: derived(r)[1])
        worst[op] = {"x_best_peer": round(derived(r)[1], 3), "H": r["H"], "d": r["d"], "M": r["M"]}
    dense_enough = [derived(r)[0] for r in rows if r["d"] >= 0.005]
    gf = [derived(r)[0] for r in rows]
    breaks = {"matmul": {}, "matmul+matmul_t+sddmm": {}}
    for h in sorted({r["H"] for r in rows}):
        for m in sorted({r["M"] for r in rows}):
            sel = [r for r in rows if r["H"] == h and r["M"] == m]
            ds = sorted({r["d"] for r in sel})
            fwd = [
                (
                    d,
                    *next(
                        (r["ours"], r["dense"]) for r in sel if r["d"] == d and r["op"] == "matmul"
                    ),
                )
                for d in ds
            ]
            tot = [
                (
                    d,
                    sum(r["ours"] for r in sel if r["d"] == d),
                    sum(r["dense"] for r in sel if r["d"] == d),
                )
                for d in ds
            ]
            for name, pts in (("matmul", fwd), ("matmul+matmul_t+sddmm", tot)):
                dens, how = break_even(pts)
                breaks[name][f"H{h}_M{m}"] = {"density": round(dens, 4), "how": how}
    ratios = [w["x_best_peer"] for w in worst.values() if w is not None]
    min_ratio = min(ratios) if ratios else None
    in_places = [r["x_in_place"] for r in by_op["matmul_t"] if "x_in_place" in r]
    in_place = min(in_places) if in_places else None
    x_peers = [derived(r)[1] for r in rows if derived(r)[1] is not None]
    min_gf = min(dense_enough) if dense_enough else None
    return {
        "benchmark": "csr_kernels",
        "dtype": "float32",
        "threads": args.threads,
        "quick": args.quick,
        "points": len(rows) // len(OPS),
        "reps": args.reps,
        "min_speedup_vs_best_peer": min_ratio,
        "worst_point_per_op": worst,
        "matmul_t_values_in_place_min_speedup": round(in_place, 3) if in_places else None,
        "points_compared": len(x_peers),
        "points_below_1.5": sum(x < 1.5 for x in x_peers),
        "points_below_1.5_matmul_t_values_in_place": sum(x < 1.5 for x in in_places),
        "gflops_range": [round(min(gf), 2), round(max(gf), 2)],
        "min_gflops_at_d_ge_0.005": round(min_gf, 2) if min_gf is not None else None,
        "break_even_density_vs_dense": breaks,
        "goals": {
            # None: not every op had a peer in this run (torch absent), so not measured.
            "speedup_ge_1.5_everywhere": (
                min_ratio >= 1.5 if min_ratio is not None and None not in worst.values() else None
            ),
            "gflops_ge_20_at_d_ge_0.005": min_gf is not None and min_gf >= 20,
        },
    }


def main(argv=None):
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy/torch load their BLAS
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    warnings.filterwarnings("ignore")  # torch: "sparse CSR support is in beta state"
    import numba
    import numpy as np
    import scipy
    import scipy.sparse as sp

    from sparselm.csr import CSRMatrix
    from sparselm.sparsity import csr_random

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    numba.set_num_threads(args.threads)
    print(
        f"# threads={args.threads} cpus={os.cpu_count()} numpy {np.__version__} "
        f"scipy {scipy.__version__} numba {numba.__version__} "
        f"torch {torch.__version__ if torch else 'absent'}; reps={args.reps} "
        f"target={args.target_ms} ms",
        flush=True,
    )
    rows = measure(args, np, sp, torch, csr_random, CSRMatrix)
    print_header()
    for row in rows:
        print_row(row)
    summary = summarise(rows, args)
    print(f"# numba threading layer: {numba.threading_layer()}")
    print("# break-even density vs dense (ours as fast as dense):")
    for name, per in summary["break_even_density_vs_dense"].items():
        print(
            f"#   {name}: "
            + ", ".join(f"{k} {v['density']:.4f} ({v['how']})" for k, v in per.items())
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
