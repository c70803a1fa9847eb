"""Train on a real full disk: a tmpfs whose free space is set, page by page, around every save.

A simulated ENOSPC (a monkeypatched write) misses what a real full disk does to a library: h5py
once reported a failed write from a destructor and went on, leaving a checkpoint with a hole under
a valid checksum, and then crashed. This scan mounts a tmpfs (root only), fills it with a filler
file so that exactly N pages stay free, and runs the real CLI in it, for every N from 0 up to a
little above the run's peak use: so every save of the run, and the writes of config.json and
metrics.jsonl between them, meets a disk that fills up at every page of its file.

Two kinds of trial:
- fresh: `train` into an empty folder (2 epochs, a save every 4 steps, best.h5 at epoch ends);
- resume: the folder holds the reference run as it was after its 2nd save, and `train --resume`
  continues it into the full disk (the set-up of the issue's B1).

A trial holds when: the process ends by itself with exit 0 (the run completed) or 1 with exactly
one line on stderr, `error: ...`, that names the full disk; no traceback and no "Exception
ignored"; no temporary file is left; every last.h5 and best.h5 in the folder loads and holds
exactly what the reference run saved at that step (parameters, optimiser, hidden state,
progress); and, for a run that stopped, `--resume` on a roomy disk logs exactly the reference
run's losses and ends with its parameters, bit for bit. A checkpoint that does not load, or loads
with other data, counts as corrupt; a process killed by SIGSEGV as a segfault.

    python scripts/scan_full_disk.py --data CORPUS [--head 200] [--stride 1] [--no-resume-check]

CORPUS is a folder in PTB format; the scan uses its first --head train lines and a fifth of that
of valid and test. Prints one line per failed trial and a progress line every 25 trials; ends
with one JSON line: trials, held, failed, corrupt, segfaults, crashes, tracebacks, leftover_tmp,
resumed, resumed_exact, outcomes, pages (min, max), save_bytes, page_bytes, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparselm.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from sparselm.errors import CheckpointError  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs allocates whole pages: free space moves in pages
# Small and fast, but with dropout and momentum so that the RNG and optimiser state matter.
MODEL = (
    "--preset teach --threads 1 --quiet --hidden 8 --emb 8 --epochs 2 --save-every 4 "
    "--log-every 1 --dropout 0.3 --momentum 0.5"
).split()
# One thread everywhere, set before NumPy loads in each process: results are then bit-exact (the
# reference imports sparselm.train before the CLI could size BLAS's pool from --threads).
ENV = {
    **os.environ,
    **{v: "1" for v in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
    "MKL_NUM_THREADS": "1",
}
RESUME_FROM = 2  # the resume trials start from the reference run's 2nd save
# The reference run, with every checkpoint it saves copied to SNAPSHOTS as NAME.STEP.EPOCH.CURSOR.
SNAPSHOT_RUN = """
import shutil, sys
from pathlib import Path
import sparselm.train as t
from sparselm.cli import main
snapshots, save = Path(sys.argv[1]), t.save_checkpoint
def keep(path, ckpt):
    save(path, ckpt)
    p = ckpt.progress
    shutil.copy(path, snapshots / f"{Path(path).name}.{p['step']}.{p['epoch']}.{p['cursor']}")
t.save_checkpoint = keep
main(sys.argv[2:], prog_name="sparselm")
"""


# -- the disk ------------------------------------------------------------------------------------
def mount_problem() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can (tried once, then unmounted)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    try:
        with tmpfs(PAGE * 16):
            return None
    except RuntimeError as exc:
        return str(exc)


@contextlib.contextmanager
def tmpfs(size: int) -> Iterator[Path]:
    """A fresh tmpfs of `size` bytes mounted on a temporary folder; always unmounted after.

    Raises RuntimeError (with mount's message) when the mount fails.
    """
    where = Path(tempfile.mkdtemp(prefix="sparselm-tmpfs-"))
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=True)
    finally:
        where.rmdir()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(root: Path, free: int) -> None:
    """Write root/filler so that exactly `free` bytes (a multiple of PAGE) stay available."""
    filler = root / "filler"
    filler.unlink(missing_ok=True)
    size = free_bytes(root) - free
    if size < 0:
        raise RuntimeError(f"only {free_bytes(root)} bytes free on {root}, {free} wanted")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        chunk = bytes(1 << 20)
        while size > 0:
            size -= os.write(fd, chunk[: min(size, len(chunk))])
    finally:
        os.close(fd)
    if free_bytes(root) != free:
        raise RuntimeError(f"could not leave exactly {free} bytes free on {root}")


# -- the runs ------------------------------------------------------------------------------------
def train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The real CLI, one thread (bit-exact), in a subprocess."""
    cmd = [sys.executable, "-m", "sparselm.cli", "train", "--data", str(data), "--out", str(out)]
    return subprocess.run(
        cmd + list(extra), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600
    )


def reference(data: Path, root: Path) -> Path:
    """Run the reference to the end in root/ref, every save kept in root/snapshots."""
    snapshots = root / "snapshots"
    snapshots.mkdir()
    cmd = [sys.executable, "-c", SNAPSHOT_RUN, str(snapshots), "train", "--data", str(data)]
    done = subprocess.run(
        cmd + ["--out", str(root / "ref")] + MODEL,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the reference run failed: {done.stderr.strip()}")
    return snapshots


def losses(run: Path) -> list:
    """(event, step, loss) of every train/valid/test event of a run's metrics.jsonl."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") in ("train", "valid", "test"):
            out.append((record["event"], record["step"], record["loss"]))
    return out


# -- the checks ----------------------------------------------------------------------------------
def same_content(a: Checkpoint, b: Checkpoint) -> bool:
    """Equal arrays bit for bit and equal progress, apart from the wall-clock `elapsed`."""

    def arrays(c: Checkpoint) -> dict:
        return {**c.params, **{f"opt/{k}": v for k, v in c.optimizer.items()}, **c.state}

    left, right = arrays(a), arrays(b)
    if left.keys() != right.keys():
        return False
    if not all(np.array_equal(left[k], right[k]) and left[k].dtype == right[k].dtype for k in left):
        return False
    strip = lambda p: {k: v for k, v in p.items() if k != "elapsed"}  # noqa: E731
    return strip(a.progress) == strip(b.progress) and a.config == b.config and a.vocab == b.vocab


def corrupt_files(run: Path, snapshots: Path) -> list[str]:
    """The checkpoints in `run` that do not load, or hold other data than the reference saved."""
    bad = []
    for name in ("last.h5", "best.h5"):
        if not (run / name).exists():
            continue
        try:
            got = load_checkpoint(run / name)
        except CheckpointError as exc:
            bad.append(f"{name}: {exc}")
            continue
        p = got.progress
        snap = snapshots / f"{name}.{p['step']}.{p['epoch']}.{p['cursor']}"
        if not snap.exists() or not same_content(got, load_checkpoint(snap)):
            bad.append(f"{name}: loads, but does not hold what the run saved at step {p['step']}")
    return bad


def problems(done: subprocess.CompletedProcess, run: Path) -> dict:
    """What went wrong with one trial's process and folder, besides the checkpoints' content."""
    err = done.stderr
    lines = err.strip().splitlines()
    found = {
        "segfault": done.returncode == -signal.SIGSEGV,
        "crash": done.returncode not in (0, 1),
        "traceback": "Traceback" in err or "Exception ignored" in err,
        "leftover_tmp": [p.name for p in run.glob("*.tmp")] if run.exists() else [],
    }
    if done.returncode == 1:
        one = len(lines) == 1 and lines[0].startswith("error: ")
        found["not_one_line"] = not one
        found["not_full_disk"] = one and "no space left on device" not in lines[0].lower()
    return found


def resume_exact(data: Path, run: Path, ref: Path, snapshots: Path, scratch: Path) -> bool:
    """Resume a copy of a stopped run on a roomy disk: the reference's losses and parameters?"""
    copy = scratch / "resumed"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    done = train(data, copy, "--resume", "--threads", "1", "--quiet")
    if done.returncode != 0 or losses(copy) != losses(ref):
        return False
    return not corrupt_files(copy, snapshots)


# -- the scan ------------------------------------------------------------------------------------
def pages(size: int) -> int:
    return -(-size // PAGE)


def prepare(kind: str, disk: Path, ref: Path, snapshots: Path) -> Path:
    """Empty the disk and set up the trial's run folder on it (see the module docstring)."""
    for entry in disk.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run = disk / "r"
    if kind == "resume":
        run.mkdir()
        shutil.copy(ref / "config.json", run)
        shutil.copy(ref / "metrics.jsonl", run)
        last = sorted(snapshots.glob("last.h5.*"), key=lambda p: int(p.name.split(".")[2]))
        shutil.copy(last[RESUME_FROM - 1], run / "last.h5")
    return run


def trial(kind: str, free_pages: int, ctx: dict) -> dict:
    run = prepare(kind, ctx["disk"], ctx["ref"], ctx["snapshots"])
    fill_to(ctx["disk"], free_pages * PAGE)
    extra = ["--resume", "--threads", "1", "--quiet"] if kind == "resume" else MODEL
    done = train(ctx["data"], run, *extra)
    found = problems(done, run)
    found["corrupt"] = corrupt_files(run, ctx["snapshots"])
    found["outcome"] = "completed" if done.returncode == 0 else _where(done.stderr)
    if done.returncode == 1 and (run / "last.h5").exists() and ctx["resume_check"]:
        found["resumed_exact"] = resume_exact(
            ctx["data"], run, ctx["ref"], ctx["snapshots"], ctx["scratch"]
        )
    elif done.returncode == 0:
        found["resumed_exact"] = losses(run) == losses(ctx["ref"])  # ran to the end: the same run
    found["held"] = not (
        found["crash"]
        or found["traceback"]
        or found["leftover_tmp"]
        or found["corrupt"]
        or found.get("not_one_line")
        or found.get("not_full_disk")
        or found.get("resumed_exact") is False
    )
    found["stderr"] = done.stderr.strip()[-400:]
    return found


def _where(stderr: str) -> str:
    """Which write met the full disk, from the one-line error."""
    for name in ("last.h5", "best.h5", "metrics.jsonl", "config.json"):
        if f"saving {name}" in stderr or f"/{name}" in stderr.split(";")[0]:
            return f"stopped writing {name}"
    return "stopped: " + stderr.strip()[:60]


def plan(ref: Path, snapshots: Path, stride: int) -> list[tuple[str, int]]:
    """(kind, free pages) of every trial: every page from 0 to a little above each kind's peak."""
    save = max(pages(p.stat().st_size) for p in snapshots.iterdir())
    small = sum(pages((ref / n).stat().st_size) for n in ("config.json", "metrics.jsonl"))
    fresh_peak = 3 * save + small  # best.h5, last.h5 and the temporary file of a new save
    resume_peak = 2 * save + small  # last.h5 is there already
    trials = [("fresh", n) for n in range(0, fresh_peak + 8, stride)]
    return trials + [("resume", n) for n in range(0, resume_peak + 8, stride)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="corpus folder in PTB format")
    parser.add_argument("--head", type=int, default=200, help="train lines of the corpus to use")
    parser.add_argument("--stride", type=int, default=1, help="pages between free-space amounts")
    parser.add_argument(
        "--no-resume-check", action="store_true", help="skip resuming each stopped run"
    )
    args = parser.parse_args(argv)
    # SIGTERM, or SIGINT in a background job (which starts with it ignored), must still unmount.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    why = mount_problem()
    if why:
        print(f"error: cannot scan: {why}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparselm-scan-") as tmp:
        root = Path(tmp)
        data = cut_corpus(args.data, root / "data", args.head)
        snapshots = reference(data, root)
        ref = root / "ref"
        trials = plan(ref, snapshots, args.stride)
        save_bytes = max(p.stat().st_size for p in snapshots.iterdir())
        with tmpfs(PAGE * (max(n for _, n in trials) + 8 * pages(save_bytes))) as disk:
            ctx = dict(data=data, ref=ref, snapshots=snapshots, disk=disk, scratch=root)
            ctx["resume_check"] = not args.no_resume_check
            results = run_trials(trials, ctx)
    summary = summarise(results, trials, save_bytes, time.perf_counter() - start)
    print(json.dumps(summary), flush=True)
    return 0 if summary["held"] == summary["trials"] else 1


def cut_corpus(source: Path, dest: Path, head: int) -> Path:
    """dest/ptb.{train,valid,test}.txt: the first `head` (train) or head/5 lines of source's."""
    dest.mkdir()
    for split, n in (("train", head), ("valid", head // 5), ("test", head // 5)):
        with open(source / f"ptb.{split}.txt") as fh:
            lines = [line for _, line in zip(range(n), fh)]
        (dest / f"ptb.{split}.txt").write_text("".join(lines))
    return dest


def run_trials(trials: list[tuple[str, int]], ctx: dict) -> list[dict]:
    results = []
    for i, (kind, free) in enumerate(trials, 1):
        found = trial(kind, free, ctx)
        found.update(kind=kind, free_pages=free)
        results.append(found)
        if not found["held"]:
            print(f"FAILED {kind} free={free} pages: {json.dumps(found)}", flush=True)
        if i % 25 == 0:
            print(f"{i}/{len(trials)} trials, {sum(r['held'] for r in results)} held", flush=True)
    return results


def summarise(results: list[dict], trials: list, save_bytes: int, seconds: float) -> dict:
    return {
        "trials": len(results),
        "held": sum(r["held"] for r in results),
        "failed": sum(not r["held"] for r in results),
        "corrupt": sum(len(r["corrupt"]) for r in results),
        "segfaults": sum(r["segfault"] for r in results),
        "crashes": sum(r["crash"] for r in results),
        "tracebacks": sum(r["traceback"] for r in results),
        "leftover_tmp": sum(bool(r["leftover_tmp"]) for r in results),
        "resumed": sum("resumed_exact" in r for r in results),
        "resumed_exact": sum(r.get("resumed_exact") is True for r in results),
        "outcomes": dict(Counter(f"{r['kind']}: {r['outcome']}" for r in results)),
        "pages": [min(n for _, n in trials), max(n for _, n in trials)],
        "save_bytes": save_bytes,
        "page_bytes": PAGE,
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
