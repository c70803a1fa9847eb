"""Fuzz sparselm.checkpoint.load_checkpoint with mutated checkpoint files.

Every case copies a valid checkpoint, mutates it (byte flips, truncation, insertion, overwrites,
header edits; or structural edits through h5py: deleted/added members, other dtypes and shapes,
absurd unallocated shapes, attributes, links, chunking, poked values), usually re-seals it (a
fresh checksum header, so the HDF5 parser and our structural checks see the damage rather than
the checksum test alone) and loads it. The only acceptable outcomes are a Checkpoint that passes
an independent invariant check, or a CheckpointError with a one-line message naming the file.
Anything else (another exception, a crash of the worker process, a case running past --timeout)
is a failure, reported with the case number so that `--replay N` reproduces it.

    python scripts/fuzz_checkpoint.py --cases 5000 [--workers 2] [--first 0] [--timeout 20]
    python scripts/fuzz_checkpoint.py --replay 1234

Ends with one JSON line: cases, loaded, rejected, failures, peak RSS of a worker (MiB), seconds.
tests/test_checkpoint.py imports this file and runs a few cases through Hypothesis.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparselm.checkpoint import (  # noqa: E402
    HEADER_SIZE,
    Checkpoint,
    CSRPattern,
    _seal,
    load_checkpoint,
    save_checkpoint,
)
from sparselm.csr import validate_csr_pattern  # noqa: E402
from sparselm.errors import CheckpointError  # noqa: E402

# What h5py and the HDF5 library raise for damaged files; a CheckpointError caused by anything
# else points at a bug in our own reading code, which the fuzzer reports.
EXPECTED_CAUSES = (OSError, KeyError, ValueError, TypeError, RuntimeError, RecursionError)


# ---------------------------------------------------------------------------------------------
# the valid starting point


def base_checkpoint(dtype=np.float32) -> Checkpoint:
    """A tiny but complete model: V=6, E=4, H=3 (G=12), one LSTM layer with CSR gates."""
    rng = np.random.default_rng(7)
    vocab = ["<unk>", "the", "caf\u00e9", "\u732b", "N", "<eos>"]

    def csr(rows, cols):
        indptr = np.arange(0, 2 * rows + 1, 2, dtype=np.int32)
        indices = np.concatenate([np.sort(rng.choice(cols, 2, replace=False)) for _ in range(rows)])
        return rng.standard_normal(2 * rows).astype(dtype), CSRPattern(
            indices.astype(np.int32), indptr, (rows, cols)
        )

    w_x, p_x = csr(12, 4)
    w_h, p_h = csr(12, 3)
    params = {
        "embedding.weight": rng.standard_normal((6, 4)).astype(dtype),
        "lstm.0.w_x": w_x,
        "lstm.0.w_h": w_h,
        "lstm.0.bias": np.zeros(12, dtype),
        "softmax.weight": rng.standard_normal((6, 3)).astype(dtype),
        "softmax.bias": np.zeros(6, dtype),
    }
    total = sum(p.size for p in params.values())
    return Checkpoint(
        config={"preset": "teach", "hidden": 3, "sparsity": 0.5, "dtype": np.dtype(dtype).name},
        vocab=vocab,
        params=params,
        patterns={"lstm.0.w_x": p_x, "lstm.0.w_h": p_h},
        optimizer={"adam_m": np.zeros(total, dtype), "adam_v": np.full(total, 1e-3, dtype)},
        progress={
            "epoch": 1,
            "step": 17,
            "cursor": [3, 5],
            "best_valid_loss": 5.25,
            "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 3, "inc": 7}},
        },
        state={"hidden": rng.standard_normal((1, 2, 2, 3)).astype(dtype)},
    )


def base_files(directory: Path) -> dict[str, bytes]:
    """The bytes of the valid float32 and float64 checkpoints that every case starts from."""
    out = {}
    for dtype in (np.float32, np.float64):
        path = directory / f"base_{np.dtype(dtype).name}.h5"
        save_checkpoint(path, base_checkpoint(dtype))
        out[np.dtype(dtype).name] = path.read_bytes()
    return out


# ---------------------------------------------------------------------------------------------
# byte-level mutations: data (bytearray) -> description; offsets >= lo (lo = 512 when re-sealing)


def _offset(rng, data, lo):
    return rng.randrange(lo, max(lo + 1, len(data)))


def flip_bits(rng, data, lo):
    spots = [(_offset(rng, data, lo), rng.randrange(8)) for _ in range(rng.randint(1, 16))]
    for pos, bit in spots:
        if pos < len(data):
            data[pos] ^= 1 << bit
    return f"flip {len(spots)} bits"


def truncate(rng, data, lo):
    cut = rng.randrange(0, len(data)) if rng.random() < 0.1 else _offset(rng, data, lo)
    del data[cut:]
    return f"truncate at {cut}"


def insert_bytes(rng, data, lo):
    pos = _offset(rng, data, lo)
    data[pos:pos] = rng.randbytes(rng.randint(1, 64))
    return f"insert at {pos}"


def overwrite(rng, data, lo):
    pos, n = _offset(rng, data, lo), rng.randint(1, 256)
    fill = rng.choice([rng.randbytes(n), b"\0" * n, b"\xff" * n])
    data[pos : pos + n] = fill[: len(data) - pos]
    return f"overwrite {n} bytes at {pos}"


def copy_range(rng, data, lo):
    src, dst, n = _offset(rng, data, lo), _offset(rng, data, lo), rng.randint(8, 512)
    chunk = data[src : src + n]
    data[dst : dst + len(chunk)] = chunk[: len(data) - dst]
    return f"copy {n} bytes {src}->{dst}"


def edit_header(rng, data, lo):
    lines = bytes(data[:HEADER_SIZE]).split(b"\n")
    k = rng.randrange(min(4, len(lines)))
    lines[k] = rng.choice(
        [
            b"format_version 2",
            b"format_version 0",
            b"format_version 999999999",
            b"payload_bytes 1",
            b"payload_bytes 99999999999",
            b"blake2b-256 00",
            b"",
            b"sparselm checkpoint",
            rng.randbytes(8),
        ]
    )
    head = b"\n".join(lines)[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")
    data[:HEADER_SIZE] = head
    return f"header line {k}"


BYTE_MUTATIONS = [flip_bits, truncate, insert_bytes, overwrite, copy_range]


# ---------------------------------------------------------------------------------------------
# structural mutations through h5py: (h5py.File, rng) -> description


def _objects(f, kind=None):
    names = []
    f.visititems(
        lambda name, obj: names.append(name) if kind is None or isinstance(obj, kind) else None
    )
    return names


def _random_array(rng):
    choice = rng.randrange(9)
    shapes = [(), (0,), (3,), (2, 3), (1, 2, 2, 3), (24,)]
    shape = rng.choice(shapes)
    if choice == 0:
        return np.full(shape, rng.choice([np.nan, np.inf, 1e300, -0.0]))
    if choice == 1:
        dtype = rng.choice(["i1", "u8", "i8", "i4"])
        return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    if choice == 2:
        return np.zeros(shape, dtype=rng.choice(["f2", "c8", "?", "S4", ">f4", ">i8"]))
    if choice == 3:
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "i4")])
    if choice == 4:
        return np.array(["a", "a", "", "\u00e9"][: rng.randint(0, 4)], dtype=h5py.string_dtype())
    if choice == 5:
        return np.zeros(shape, dtype=h5py.vlen_dtype(np.int32))
    return (
        np.random.default_rng(rng.randrange(2**32))
        .standard_normal(shape)
        .astype(rng.choice(["f4", "f8"]))
    )


def _recreate(f, name, rng):
    """Replace dataset `name` by one of another dtype, shape or storage layout."""
    old = f[name]
    data = old[()] if old.dtype.kind in "fiu" and old.size < 10**6 else np.zeros(4)
    del f[name]
    how = rng.randrange(8)
    if how == 0:  # absurd, never-written shape: only the declared size is stored
        shape = rng.choice([(2**40,), (2**31, 2**31), (2**62,), (10**6, 10**6)])
        f.create_dataset(name, shape=shape, dtype=rng.choice(["f4", "f8", "i4"]))
    elif how == 1:
        f.create_dataset(name, data=data.reshape(-1), chunks=True, compression="gzip")
    elif how == 2:
        with np.errstate(all="ignore"):  # float16 overflow is part of the damage
            dtype = rng.choice(["f2", "f4", "f8", "i8", "u4", "?"])
            f.create_dataset(name, data=data.astype(dtype))
    elif how == 3:
        f.create_dataset(name, data=h5py.Empty("f4"))
    elif how == 4:
        f.create_dataset(name, shape=data.shape, dtype=data.dtype, fillvalue=np.nan)
    elif how == 5:
        f.create_dataset(name, data=data.reshape(-1)[: rng.randint(0, data.size)])
    elif how == 6:
        f.create_dataset(name, data=np.concatenate([data.reshape(-1), data.reshape(-1)]))
    else:
        f.create_dataset(name, data=_random_array(rng))
    return f"recreate {name} ({how})"


def delete_member(f, rng):
    name = rng.choice(_objects(f))
    del f[name]
    return f"delete {name}"


def add_member(f, rng):
    group = f[rng.choice(["/", *_objects(f, h5py.Group)])]
    name = rng.choice(["extra", "data", "x.y", "indices", "vocab", "momentum", "lstm.1.w_x"])
    if name in group:
        return "add: name taken"
    if rng.random() < 0.2:
        group.create_group(name)
    else:
        group.create_dataset(name, data=_random_array(rng))
    return f"add {group.name}/{name}"


def recreate_dataset(f, rng):
    return _recreate(f, rng.choice(_objects(f, h5py.Dataset)), rng)


def poke_value(f, rng):
    name = rng.choice(_objects(f, h5py.Dataset))
    ds = f[name]
    if ds.dtype.kind not in "fiu" or not ds.size:
        return "poke: not numeric"
    value = rng.choice([np.nan, np.inf, -np.inf, -1, 2**31, -(2**31) - 1, 1e38, 0, 10**6])
    arr = ds[()]
    flat = arr.reshape(-1)
    with np.errstate(all="ignore"):
        flat[rng.randrange(flat.size)] = np.array(value).astype(arr.dtype)
    ds[...] = arr
    return f"poke {name} = {value}"


ATTR_NAMES = [
    "format",
    "format_version",
    "sparselm_version",
    "config",
    "progress",
    "order",
    "shape",
    "extra",
]
ATTR_VALUES = [
    lambda rng: "sparselm",
    lambda rng: "hdf5",
    lambda rng: 2,
    lambda rng: 0,
    lambda rng: -1,
    lambda rng: 2**62,
    lambda rng: 1.5,
    lambda rng: "{}",
    lambda rng: "[]",
    lambda rng: "{",
    lambda rng: "[" * 100_000 + "]" * 100_000,
    lambda rng: '{"a": ' * 5000 + "1" + "}" * 5000,
    lambda rng: "9" * 5000,
    lambda rng: '["x", "x"]',
    lambda rng: '["lstm.0.w_x"]',
    lambda rng: '["../x", "a/b"]',
    lambda rng: "NaN",
    lambda rng: b"\xff\xfe",
    lambda rng: np.array([2**40, 3]),
    lambda rng: np.array([-1, 3]),
    lambda rng: np.array([12]),
    lambda rng: np.array([12.0, 4.0]),
    lambda rng: np.zeros((2, 2), "i4"),
    lambda rng: np.array(["a", "b"], dtype=h5py.string_dtype()),
    lambda rng: h5py.Empty("i4"),
]


def set_attr(f, rng):
    obj = f[rng.choice(["/", *_objects(f)])]
    name = rng.choice(ATTR_NAMES)
    obj.attrs[name] = rng.choice(ATTR_VALUES)(rng)
    return f"attr {obj.name}@{name}"


def delete_attr(f, rng):
    obj = f[rng.choice(["/", *_objects(f)])]
    if not obj.attrs:
        return "del attr: none"
    name = rng.choice(list(obj.attrs))
    del obj.attrs[name]
    return f"del attr {obj.name}@{name}"


def edit_order(f, rng):
    group = f[rng.choice(["params", "optimizer", "state"])]
    names = json.loads(group.attrs["order"])
    how = rng.randrange(4)
    if how == 0:
        rng.shuffle(names)
    elif how == 1 and names:
        names.pop(rng.randrange(len(names)))
    elif how == 2 and names:
        names.append(rng.choice(names))
    else:
        names.append("ghost")
    group.attrs["order"] = json.dumps(names)
    return f"order of {group.name} ({how})"


def add_link(f, rng):
    target = rng.choice(_objects(f))
    name = rng.choice(_objects(f))
    parent, _, leaf = name.rpartition("/")
    del f[name]
    group = f[parent or "/"]
    if rng.random() < 0.5:
        group[leaf] = h5py.SoftLink("/" + target)
    else:
        group[leaf] = h5py.ExternalLink(rng.choice(["/etc/passwd", f.filename]), "/" + target)
    return f"link {name} -> {target}"


def move_member(f, rng):
    src, dst = rng.choice(_objects(f)), rng.choice(_objects(f))
    if src == dst or dst.startswith(src + "/") or src.startswith(dst + "/"):
        return "move: same"
    del f[dst]
    f.move(src, dst)
    return f"move {src} -> {dst}"


def edit_csr(f, rng):
    group = f[rng.choice(["params/lstm.0.w_x", "params/lstm.0.w_h"])]
    part = group[rng.choice(["indices", "indptr"])]
    arr = part[()]
    how = rng.randrange(3)
    if how == 0:
        arr[rng.randrange(arr.size)] = rng.choice([-1, 3, 4, 2**31 - 1, 99])
    elif how == 1:
        rng.shuffle(arr)
    else:
        arr[:] = arr[::-1]
    part[...] = arr
    return f"csr {part.name} ({how})"


STRUCT_MUTATIONS = [
    delete_member,
    add_member,
    recreate_dataset,
    poke_value,
    set_attr,
    delete_attr,
    edit_order,
    add_link,
    move_member,
    edit_csr,
]


# ---------------------------------------------------------------------------------------------
# one case


def mutate(path: Path, rng: random.Random) -> str:
    """Damage the valid checkpoint at `path` in place; return what was done."""
    if rng.random() < 0.45:
        data = bytearray(path.read_bytes())
        reseal = rng.random() < 0.8
        steps = [
            rng.choice(BYTE_MUTATIONS)(rng, data, HEADER_SIZE if reseal else 0)
            for _ in range(rng.randint(1, 3))
        ]
        if rng.random() < 0.05:
            steps.append(edit_header(rng, data, 0))
            reseal = False
        path.write_bytes(bytes(data))
        if reseal and len(data) >= HEADER_SIZE:
            _seal(path)
            steps.append("resealed")
        return "; ".join(steps)
    steps = []
    with h5py.File(path, "r+", locking=False) as f:
        for _ in range(rng.randint(1, 3)):
            try:
                steps.append(rng.choice(STRUCT_MUTATIONS)(f, rng))
            except Exception as exc:  # h5py refuses some edits (and fails oddly on others)
                steps.append(f"(h5py refused: {type(exc).__name__})")
    if rng.random() < 0.97:  # an edit through h5py leaves the old checksum: usually re-seal
        _seal(path)
        steps.append("resealed")
    return "; ".join(steps)


def check_loaded(ckpt) -> None:
    """The contract a loaded checkpoint must meet, checked independently of the loader."""
    assert isinstance(ckpt, Checkpoint)
    assert isinstance(ckpt.config, dict) and isinstance(ckpt.progress, dict)
    assert isinstance(ckpt.vocab, list) and all(isinstance(w, str) and w for w in ckpt.vocab)
    assert len(set(ckpt.vocab)) == len(ckpt.vocab)
    dtypes = {a.dtype for a in ckpt.params.values()}
    assert dtypes <= {np.dtype("float32"), np.dtype("float64")} and len(dtypes) <= 1
    for arrays in (ckpt.params, ckpt.optimizer, ckpt.state):
        for arr in arrays.values():
            assert isinstance(arr, np.ndarray) and arr.dtype.kind == "f"
            assert np.isfinite(arr).all()
    assert all(a.ndim == 1 for a in ckpt.optimizer.values())
    assert set(ckpt.patterns) <= set(ckpt.params)
    for name, p in ckpt.patterns.items():
        assert p.indices.dtype == np.int32 and p.indptr.dtype == np.int32
        validate_csr_pattern(p.indices, p.indptr, p.shape)
        assert ckpt.params[name].shape == p.indices.shape


def check_rejected(exc: CheckpointError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message
    cause = exc.__cause__
    assert cause is None or isinstance(cause, EXPECTED_CAUSES), repr(cause)


def run_case(case: int, workdir: Path, bases: dict[str, bytes]) -> tuple[str, str]:
    """Mutate and load one file; returns ("loaded" | "rejected", description).

    Raises AssertionError (or whatever leaked) when the outcome breaks the contract.
    """
    rng = random.Random(case)
    path = workdir / f"case_{case}.h5"
    path.write_bytes(bases[rng.choice(sorted(bases))])
    try:
        what = mutate(path, rng)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            check_rejected(exc, path)
            return "rejected", f"{what} => {exc}"
        check_loaded(ckpt)
        return "loaded", what
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# driver: cases run in worker processes, so that a crash or a hang of the HDF5 library is a
# reported failure rather than the end (or the stall) of the run


def serve() -> None:
    """Worker loop: read case numbers on stdin, answer one JSON line each on stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        bases = base_files(Path(tmp))
        for line in sys.stdin:
            case = int(line)
            try:
                outcome, what = run_case(case, Path(tmp), bases)
            except Exception as exc:  # the failure we are looking for: report it, keep going
                outcome, what = "failure", f"{type(exc).__name__}: {exc}"
            print(json.dumps({"case": case, "outcome": outcome, "what": what[:400]}), flush=True)


class CaseServer:
    """One `--serve` worker process; started on first use, restarted after a crash or a hang."""

    def __init__(self, timeout: float = 20.0):
        self.timeout = timeout
        self.proc = None

    def run(self, case: int) -> dict:
        """Run one case; returns {"case", "outcome": loaded|rejected|failure, "what"}."""
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve"],
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        try:
            self.proc.stdin.write(f"{case}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died after its last answer
            line = ""
        else:
            with selectors.DefaultSelector() as sel:
                sel.register(self.proc.stdout, selectors.EVENT_READ)
                ready = sel.select(self.timeout)
            line = self.proc.stdout.readline() if ready else None
        if line:
            return json.loads(line)
        if line is None:
            why = f"no answer within {self.timeout} s (hang)"
        else:  # e.g. exit -11: the HDF5 library crashed on the file
            why = f"worker died (exit {self.proc.wait(timeout=self.timeout)})"
        self.close()
        return {"case": case, "outcome": "failure", "what": why}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def drive(cases: int, first: int, workers: int, timeout: float) -> dict:
    """Run cases first..first+cases-1 on `workers` servers; returns the summary dict."""
    start = time.monotonic()
    todo = iter(range(first, first + cases))
    lock = threading.Lock()
    results = []

    def work():
        server = CaseServer(timeout)
        try:
            while (case := next(todo, None)) is not None:  # next() on a range iterator is atomic
                result = server.run(case)
                with lock:
                    results.append(result)
                if result["outcome"] == "failure":
                    print(f"FAILURE case {case}: {result['what']}", file=sys.stderr, flush=True)
        finally:
            server.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("loaded", "rejected", "failure")}
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, largest worker
    return {
        "cases": len(results),
        **counts,
        "failed_cases": [r for r in results if r["outcome"] == "failure"][:20],
        "peak_worker_rss_mib": round(rss / 1024, 1),
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--first", type=int, default=0, help="number of the first case (its seed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds one case may take")
    ap.add_argument("--replay", type=int, help="run one case in this process, verbosely")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.replay is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print(run_case(args.replay, Path(tmp), base_files(Path(tmp))))
        return 0
    summary = drive(args.cases, args.first, args.workers, args.timeout)
    print(json.dumps(summary))
    return 1 if summary["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
