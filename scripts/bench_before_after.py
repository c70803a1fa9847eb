#!/usr/bin/env python
"""Training speed of this checkout against an earlier commit, alternated in one run.

    python scripts/bench_before_after.py --before 3ffd0c0 [--configs small,h1500-d0.0005,h1500]
                                         [--threads 2] [--rounds 3] [--reps 3] [--steps 4]

For a change that must not cost speed (a refactoring): the commit is exported with `git archive`
into a temporary folder, and each side runs its own scripts/bench_train.py (our step only, no
peer) with its own package on PYTHONPATH. Sides alternate ABBA over --rounds rounds after one
untimed warm-up each (the warm-up also compiles the kernels into each tree's Numba cache), so
drift of a shared machine hits both alike. Prints each configuration's median tokens/s per side
and the ratio after / before, the CPU model, and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--configs", default="small,h1500-d0.0005,h1500", help="bench_train configs")
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds (each side twice per round)")
    ap.add_argument("--reps", type=int, default=3, help="bench_train --reps per run")
    ap.add_argument("--steps", type=int, default=4, help="bench_train --steps per repetition")
    ap.add_argument(
        "--workdir",
        default=None,
        help="folder for the exported tree, kept and reused (with its compiled kernels) when "
        "given; default a temporary folder",
    )
    return ap.parse_args(argv)


def cpu_model() -> str:
    """The CPU's model name (figures depend on it: docs/PERFORMANCE.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def export(rev: str, dest: Path) -> Path:
    """The tree of `rev` extracted into dest (git archive: no worktree bookkeeping)."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    tar_path = dest / "tree.tar"
    tar_path.write_bytes(data)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def run_side(tree: Path, args, reps: int, steps: int) -> dict[str, float]:
    """{config: our tokens/s} from one run of tree's bench_train.py with tree's package."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(tree / "scripts" / "bench_train.py"), "--no-torch"]
    cmd += ["--configs", args.configs, "--threads", str(args.threads)]
    cmd += ["--reps", str(reps), "--steps", str(steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if res.returncode != 0:
        sys.exit(f"bench_train failed in {tree}:\n{res.stderr[-2000:]}")
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {r["config"]: r["ours_tokens_per_s"] for r in rows}


def main(argv=None):
    args = parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_before_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tree = work / "tree"
        sides = {"before": tree if tree.is_dir() else export(args.before, work), "after": REPO}
        for name, tree in sides.items():  # warm-up: compiles each tree's kernels, untimed
            print(f"warm-up ({name}) ...", file=sys.stderr, flush=True)
            run_side(tree, args, reps=1, steps=1)
        samples: dict[str, dict[str, list[float]]] = {s: {c: [] for c in configs} for s in sides}
        for rnd in range(args.rounds):
            for name in ("before", "after", "after", "before"):
                for config, tps in run_side(sides[name], args, args.reps, args.steps).items():
                    samples[name][config].append(tps)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    cpu = cpu_model()
    if not configs or args.rounds == 0:
        return
    print(f"# CPU: {cpu}; threads {args.threads}; before = {args.before}, after = this checkout")
    print(f"# {'config':>16} {'before tok/s':>13} {'after tok/s':>12} {'after/before':>13}")
    summary = {}
    for config in configs:
        before = statistics.median(samples["before"][config])
        after = statistics.median(samples["after"][config])
        summary[config] = {
            "before_tokens_per_s": round(before, 1),
            "after_tokens_per_s": round(after, 1),
            "ratio": round(after / before, 4),
            "samples": {s: [round(v, 1) for v in samples[s][config]] for s in sides},
        }
        print(f"  {config:>16} {before:13,.0f} {after:12,.0f} {after / before:13.3f}")
    print(
        json.dumps(
            {
                "benchmark": "before_after",
                "before": args.before,
                "cpu": cpu,
                "threads": args.threads,
                "rounds": args.rounds,
                "configs": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
