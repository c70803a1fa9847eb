"""Checkpoint files: round trips, atomic saves under faults, and rejection of every damaged file.

The fuzz engine lives in scripts/fuzz_checkpoint.py (which runs many more cases); here Hypothesis
draws a modest number of its cases and runs them in a worker process, so that a crash or a hang
of the HDF5 library fails the test instead of killing or stalling the suite.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparselm.checkpoint as ckmod
from sparselm.checkpoint import (
    FORMAT_VERSION,
    HEADER_SIZE,
    Checkpoint,
    CSRPattern,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from sparselm.errors import CheckpointError

REPO = Path(__file__).resolve().parent.parent


def _load_fuzz_module():
    spec = importlib.util.spec_from_file_location(
        "fuzz_checkpoint", REPO / "scripts" / "fuzz_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz_module()
base_checkpoint = fuzz.base_checkpoint
SHAPES = {
    "embedding.weight": (6, 4),
    "lstm.0.w_x": (12, 4),
    "lstm.0.w_h": (12, 3),
    "lstm.0.bias": (12,),
    "softmax.weight": (6, 3),
    "softmax.bias": (6,),
}


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.config == b.config and a.progress == b.progress and a.vocab == b.vocab
    for field in ("params", "optimizer", "state"):
        x, y = getattr(a, field), getattr(b, field)
        assert list(x) == list(y), field  # order preserved
        for name in x:
            assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape
            np.testing.assert_array_equal(x[name], y[name])
    assert list(a.patterns) == list(b.patterns)
    for name, p in a.patterns.items():
        q = b.patterns[name]
        assert q.indices.dtype == np.int32 and q.indptr.dtype == np.int32
        np.testing.assert_array_equal(p.indices, q.indices)
        np.testing.assert_array_equal(p.indptr, q.indptr)
        assert tuple(p.shape) == q.shape


def one_line_error(path, match: str, **kw) -> CheckpointError:
    """Load `path`, expecting a one-line CheckpointError that names the file and matches."""
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, **kw)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return info.value


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "last.h5"
    save_checkpoint(path, base_checkpoint())
    return path


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_dense_csr_everything(tmp_path, dtype):
    ckpt = base_checkpoint(dtype)
    path = tmp_path / "c.h5"
    save_checkpoint(path, ckpt)
    loaded = load_checkpoint(path, expected_shapes=SHAPES)
    assert_same(ckpt, loaded)
    assert list(loaded.params)[:3] == ["embedding.weight", "lstm.0.w_x", "lstm.0.w_h"]
    assert loaded.progress["rng"]["state"]["state"] == 2**100 + 3
    assert read_config(path) == ckpt.config


def test_round_trip_minimal_and_overwrite(tmp_path):
    path = tmp_path / "c.h5"
    first = Checkpoint(config={}, vocab=[], params={}, patterns={})
    save_checkpoint(path, first)
    assert_same(first, load_checkpoint(path))
    second = base_checkpoint()
    save_checkpoint(path, second)
    assert_same(second, load_checkpoint(path))
    assert sorted(os.listdir(tmp_path)) == ["c.h5"]  # no temporary file left


def test_round_trip_odd_shapes_and_layouts(tmp_path):
    params = {
        "scalar": np.array(3.0),
        "empty": np.zeros((0, 3)),
        "transposed": np.arange(12.0).reshape(3, 4).T,
        "strided": np.arange(10.0)[::3],
    }
    ckpt = Checkpoint(
        config={}, vocab=["x"], params=params, patterns={}, state={"hidden": np.zeros((2, 0))}
    )
    save_checkpoint(tmp_path / "c.h5", ckpt)
    assert_same(ckpt, load_checkpoint(tmp_path / "c.h5"))


def test_big_endian_data_loads_as_native(saved):
    with h5py.File(saved, "r+") as f:
        _replace(f, "params/softmax.bias", data=np.arange(6, dtype=">f4"))
        _replace(f, "params/lstm.0.w_x/indptr", data=np.arange(0, 25, 2, dtype=">i8"))
    ckmod._seal(saved)
    ckpt = load_checkpoint(saved)
    assert ckpt.params["softmax.bias"].dtype == np.dtype("=f4")
    np.testing.assert_array_equal(ckpt.params["softmax.bias"], np.arange(6))
    assert ckpt.patterns["lstm.0.w_x"].indptr.dtype == np.dtype("=i4")


def test_file_replaced_between_check_and_parse_is_read_again(saved, monkeypatch):
    """A concurrent atomic save may swap the file after its checksum was verified."""
    newer = base_checkpoint(np.float64)
    verify = ckmod._verify_header
    calls = []

    def verify_then_replace(fh, size):
        verify(fh, size)
        calls.append(size)
        if len(calls) == 1:
            save_checkpoint(saved, newer)

    monkeypatch.setattr(ckmod, "_verify_header", verify_then_replace)
    assert_same(newer, load_checkpoint(saved))
    assert len(calls) == 2


def test_numpy_values_in_progress_become_plain_json(tmp_path):
    ckpt = base_checkpoint()
    ckpt.progress = {
        "step": np.int64(5),
        "loss": np.float32(2.5),
        "key": np.arange(3, dtype=np.uint32),
    }
    save_checkpoint(tmp_path / "c.h5", ckpt)
    assert load_checkpoint(tmp_path / "c.h5").progress == {"step": 5, "loss": 2.5, "key": [0, 1, 2]}


words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(vocab=st.lists(words, unique=True, max_size=20))
def test_any_unicode_vocab_round_trips(tmp_path, vocab):
    ckpt = Checkpoint(config={"v": len(vocab)}, vocab=vocab, params={}, patterns={})
    save_checkpoint(tmp_path / "v.h5", ckpt)
    assert load_checkpoint(tmp_path / "v.h5").vocab == vocab


def test_layout_is_plain_hdf5(saved):
    with h5py.File(saved, "r") as f:  # readable by any HDF5 tool: the header is a user block
        assert f.userblock_size == HEADER_SIZE
        assert f.attrs["format"] == b"sparselm" and f.attrs["format_version"] == FORMAT_VERSION
        assert set(f["params/lstm.0.w_x"]) == {"data", "indices", "indptr"}
        assert json.loads(f["params"].attrs["order"])[0] == "embedding.weight"
    assert saved.read_bytes().startswith(b"sparselm checkpoint\nformat_version 1\n")


# ---------------------------------------------------------------------------------------------
# saving: refused input, faults in the middle, a full disk, SIGKILL


def _mutated(**changes) -> Checkpoint:
    ckpt = base_checkpoint()
    for key, value in changes.items():
        setattr(ckpt, key, value)
    return ckpt


def _bad_params(name, value):
    params = dict(base_checkpoint().params)
    params[name] = value
    return params


BAD_INPUT = {
    "nan": lambda: _mutated(params=_bad_params("softmax.bias", np.full(6, np.nan, np.float32))),
    "inf": lambda: _mutated(params=_bad_params("lstm.0.bias", np.full(12, np.inf, np.float32))),
    "int dtype": lambda: _mutated(params=_bad_params("softmax.bias", np.zeros(6, np.int32))),
    "mixed dtypes": lambda: _mutated(params=_bad_params("softmax.bias", np.zeros(6))),
    "slash in name": lambda: _mutated(params=_bad_params("a/b", np.zeros(2, np.float32))),
    "csr data length": lambda: _mutated(params=_bad_params("lstm.0.w_x", np.zeros(5, np.float32))),
    "list not array": lambda: _mutated(params=_bad_params("softmax.bias", [0.0] * 6)),
    "duplicate word": lambda: _mutated(vocab=["a", "b", "a"]),
    "empty word": lambda: _mutated(vocab=["a", ""]),
    "NUL in word": lambda: _mutated(vocab=["a\0b"]),
    "surrogate": lambda: _mutated(vocab=["\ud800"]),
    "config set": lambda: _mutated(config={"x": {1, 2}}),
    "config list": lambda: _mutated(config=[1]),
    "progress too big": lambda: _mutated(progress={"x": "y" * 70_000}),
    "optimizer 2-D": lambda: _mutated(optimizer={"momentum": np.zeros((2, 2), np.float32)}),
    "pattern of unknown": lambda: _mutated(
        patterns={**base_checkpoint().patterns, "nope": base_checkpoint().patterns["lstm.0.w_x"]}
    ),
    "unsorted pattern": lambda: _mutated(
        patterns={
            **base_checkpoint().patterns,
            "lstm.0.w_x": CSRPattern(
                np.array([1, 0] * 12, np.int32), np.arange(0, 25, 2, dtype=np.int32), (12, 4)
            ),
        }
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_save_refuses_what_load_would_reject(tmp_path, case):
    path = tmp_path / "c.h5"
    with pytest.raises(CheckpointError, match="cannot save checkpoint") as info:
        save_checkpoint(path, BAD_INPUT[case]())
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory(tmp_path):
    match = f"cannot save checkpoint .*: no directory {tmp_path}/no$"
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / "no" / "c.h5", base_checkpoint())


def _write_then_fail(exc):
    def fake(group, arrays):  # writes part of the file, then fails like a real write would
        group.create_dataset("partial", data=np.zeros(1000))
        raise exc

    return fake


@pytest.mark.parametrize(
    "exc, expected",
    [
        (ValueError("boom"), ValueError),  # a bug: propagates unchanged
        (KeyboardInterrupt(), KeyboardInterrupt),
        (RuntimeError("Unable to create dataset"), CheckpointError),
    ],
)
def test_failed_save_leaves_old_file_and_no_temp(saved, monkeypatch, exc, expected):
    before = saved.read_bytes()
    monkeypatch.setattr(ckmod, "_write_arrays", _write_then_fail(exc))
    with pytest.raises(expected):
        save_checkpoint(saved, base_checkpoint(np.float64))
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


def _interrupt(*args):
    raise KeyboardInterrupt


def test_interrupt_after_sealing_leaves_old_file(saved, monkeypatch):
    before = saved.read_bytes()
    monkeypatch.setattr(ckmod.os, "replace", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(saved, base_checkpoint(np.float64))
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


def _enospc(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["fsync", "hdf5 write"])
def test_full_disk_is_a_one_line_checkpoint_error(saved, monkeypatch, where):
    before = saved.read_bytes()
    if where == "fsync":
        monkeypatch.setattr(ckmod.os, "fsync", _enospc)
    else:  # HDF5 puts errno 28 in its message, not on the exception
        monkeypatch.setattr(
            ckmod,
            "_write_arrays",
            _write_then_fail(
                OSError(
                    "Can't synchronously write data (file write failed: errno = 28, "
                    "error message = 'No space left on device')"
                )
            ),
        )
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(saved, base_checkpoint())
    assert str(info.value) == (
        f"no space left on device while saving {saved}; the previous checkpoint is intact"
    )
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


def test_short_writes_are_continued_and_enospc_after_some_bytes_fails(saved, monkeypatch):
    """write(2) may write part of a buffer; on a full disk the next call fails with ENOSPC."""
    before, written = saved.read_bytes(), []
    real_write = os.write

    def short_write(fd, data):
        if sum(written) > 3000:  # the disk fills up after a few KiB
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real_write(fd, bytes(data[:1000])))
        return written[-1]

    monkeypatch.setattr(ckmod.os, "write", short_write)
    with pytest.raises(CheckpointError, match="^no space left on device while saving"):
        save_checkpoint(saved, base_checkpoint(np.float64))
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]
    written.clear()
    monkeypatch.setattr(ckmod.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    save_checkpoint(saved, base_checkpoint(np.float64))  # short writes alone are fine
    assert_same(base_checkpoint(np.float64), load_checkpoint(saved))


def test_first_save_failing_says_nothing_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(ckmod.os, "fsync", _enospc)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path / "c.h5", base_checkpoint())
    assert str(info.value).endswith("; nothing was written there")
    assert os.listdir(tmp_path) == []


def test_save_never_lets_hdf5_write_to_the_disk(saved, monkeypatch):
    """HDF5 builds the file in memory: a file-backed h5py.File during a save is a regression."""
    opened = []
    real_file = ckmod.h5py.File

    def spy(name, *args, **kwargs):
        opened.append(name)
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(ckmod.h5py, "File", spy)
    save_checkpoint(saved, base_checkpoint())
    assert opened and all(isinstance(name, io.BytesIO) for name in opened)


def test_real_write_failure_file_size_limit(saved):
    """A real failed write(2) inside the HDF5 library (RLIMIT_FSIZE -> EFBIG) in a subprocess."""
    before = saved.read_bytes()
    code = textwrap.dedent(f"""
        import resource, sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from sparselm.checkpoint import Checkpoint, save_checkpoint
        from sparselm.errors import CheckpointError
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        ckpt = Checkpoint(config={{}}, vocab=[], params={{"w": np.ones(500_000, np.float32)}},
                          patterns={{}})
        try:
            save_checkpoint({str(saved)!r}, ckpt)
        except CheckpointError as exc:
            print("CheckpointError:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(f"CheckpointError: cannot save checkpoint {saved}"), out
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


KILL_CHILD = """
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from sparselm.checkpoint import Checkpoint, save_checkpoint
step = 0
while True:
    step += 1
    ckpt = Checkpoint(config={"run": "kill"}, vocab=["a", "b"], patterns={},
                      params={"w": np.full(300_000, step, np.float32)},
                      optimizer={"m": np.full(1000, -step, np.float32)}, progress={"step": step})
    save_checkpoint(sys.argv[1], ckpt)
    print(step, flush=True)
"""


def test_sigkill_during_repeated_saves_never_corrupts(tmp_path):
    path = tmp_path / "last.h5"
    rng = random.Random(1)
    orphans = kills = 0
    # At least 6 kills, and more until one has landed mid-save: how often a random kill finds
    # the temporary file depends on the machine's load, and a run without one proves nothing.
    while kills < 6 or (orphans == 0 and kills < 60):
        kills += 1
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(path), str(REPO)],
            stdout=subprocess.PIPE,
            text=True,
        )
        child.stdout.readline()  # at least one complete save exists
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        ckpt = load_checkpoint(path)
        step = ckpt.progress["step"]
        assert step >= 1 and (ckpt.params["w"] == step).all()
        assert (ckpt.optimizer["m"] == -step).all()
        # What a kill can leave: finished checkpoints and at most one orphaned temporary file.
        for leftover in tmp_path.glob(".last.h5.*.tmp"):
            leftover.unlink()
            orphans += 1
        assert os.listdir(tmp_path) == ["last.h5"]
    assert orphans, f"none of {kills} kills landed in the middle of a save: the test proved nothing"


# ---------------------------------------------------------------------------------------------
# loading: files that are not checkpoints, damaged bytes


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "nope.h5", "not found")


def test_directory_and_fifo_are_not_checkpoints(tmp_path):
    one_line_error(tmp_path, "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(fifo, "not a regular file")  # and does not block waiting for a writer


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty file"),
        (b"hello world\n" * 100, "not a sparselm checkpoint"),
        (b"sparselm checkpoint\nformat_version 1\n", "not a sparselm checkpoint"),
        (
            b"sparselm checkpoint\nformat_version 2\n".ljust(HEADER_SIZE, b"\0") + b"x" * 100,
            "format version 2 by a newer sparselm; this sparselm .* reads format version 1",
        ),
        (
            b"sparselm checkpoint\nformat_version 1\npayload_bytes x\n".ljust(HEADER_SIZE, b"\0"),
            "malformed sparselm header",
        ),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "c.h5"
    path.write_bytes(content)
    one_line_error(path, match)


def test_plain_hdf5_file(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    one_line_error(path, "an HDF5 file but not a sparselm checkpoint")


def test_truncated_appended_and_flipped(saved):
    data = saved.read_bytes()
    for cut in (HEADER_SIZE - 1, HEADER_SIZE, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:cut])
        one_line_error(saved, "truncated|not a sparselm checkpoint")
    saved.write_bytes(data + b"\0")
    one_line_error(saved, "1 unexpected bytes after the data")
    for pos in (HEADER_SIZE, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        saved.write_bytes(bytes(flipped))
        one_line_error(saved, "checksum mismatch")


def test_hdf5_edit_without_resealing_is_detected(saved):
    with h5py.File(saved, "r+") as f:
        f["params/softmax.bias"][0] = 1.0
    one_line_error(saved, "checksum mismatch")


# ---------------------------------------------------------------------------------------------
# loading: well-sealed files whose content breaks the layout (edited with h5py, then re-sealed)


def _replace(f, name, **kw):
    del f[name]
    f.create_dataset(name, **kw)


# Small edits, each (h5py.File) -> None, to build the table below.
def put(name, **kw):
    return lambda f: _replace(f, name, **kw)


def text(value: bytes):
    return np.bytes_(value)


def set_attr(obj, name, value):
    return lambda f: f[obj].attrs.__setitem__(name, value)


def del_attr(obj, name):
    return lambda f: f[obj].attrs.__delitem__(name)


def delete(name):
    return lambda f: f.__delitem__(name)


def poke(name, index, value):
    return lambda f: f[name].__setitem__(index, value)


def link(name, target):
    def edit(f):
        del f[name]
        f[name] = target

    return edit


def regroup(name):
    def edit(f):
        del f[name]
        f.create_group(name)

    return edit


W_X = "params/lstm.0.w_x"
BIAS = "params/softmax.bias"
F4 = np.float32

STRUCTURE = {
    "format attr": (set_attr("/", "format", text(b"other")), "format 'other', not a sparselm"),
    "format version attr": (set_attr("/", "format_version", 3), "format version 3 by a newer"),
    "no format": (del_attr("/", "format"), "lacks the attribute 'format'"),
    "missing param": (delete(BIAS), r"missing member\(s\) in /params"),
    "extra param": (
        lambda f: f.create_dataset("params/extra", data=np.zeros(2, F4)),
        r"unexpected member\(s\) in /params: \['extra'\]",
    ),
    "extra root group": (lambda f: f.create_group("more"), "unexpected member"),
    "missing optimizer": (delete("optimizer"), r"missing member\(s\) in the root"),
    "order repeats": (
        set_attr("params", "order", text(b'["softmax.bias", "softmax.bias"]')),
        "repeats a name",
    ),
    "order not list": (set_attr("params", "order", text(b'{"a": 1}')), "not a JSON list"),
    "int param": (put(BIAS, data=np.zeros(6, np.int32)), "dtype int32, expected float32 or"),
    "float16 param": (put(BIAS, data=np.zeros(6, np.float16)), "dtype float16"),
    "mixed dtypes": (put(BIAS, data=np.zeros(6)), "parameters mix dtypes"),
    "compound": (put(BIAS, data=np.zeros(6, "f4,i4")), "dtype"),
    "vlen strings": (put(BIAS, data=np.array(["a"], dtype=h5py.string_dtype())), "dtype object"),
    "nan param": (poke(BIAS, 0, np.nan), "NaN or infinite"),
    "inf param": (poke(W_X + "/data", 3, -np.inf), "NaN or infinite"),
    "nan optimizer": (poke("optimizer/adam_m", 1, np.nan), "NaN or infinite"),
    "optimizer 2-D": (put("optimizer/adam_m", data=np.zeros((2, 2), F4)), "expected 1-D"),
    "csr index out of range": (put(W_X + "/indices", data=np.arange(24) % 2 * 7), "out of range"),
    "csr unsorted": (put(W_X + "/indices", data=np.tile([1, 0], 12)), "unsorted"),
    "csr indptr decreasing": (put(W_X + "/indptr", data=[0, 4, 2, *range(6, 25, 2)]), "decreases"),
    "csr data length": (put(W_X + "/data", data=np.zeros(23, F4)), "pattern has 24 non-zeros"),
    "csr float indices": (put(W_X + "/indices", data=np.zeros(24)), "expected an integer type"),
    "csr int64 beyond int32": (put(W_X + "/indices", data=np.full(24, 2**40)), "fit in int32"),
    "csr shape missing": (del_attr(W_X, "shape"), "lacks the attribute 'shape'"),
    "csr shape wrong": (set_attr(W_X, "shape", [12, 4, 1]), "integer array of shape"),
    "csr missing part": (delete("params/lstm.0.w_h/indptr"), "missing member"),
    "vocab duplicates": (put("vocab", data=text(b'["a", "a"]')), "occurs more than once"),
    "vocab empty word": (put("vocab", data=text(b'["a", ""]')), "not a non-empty string"),
    "vocab not json": (put("vocab", data=text(b'["a", ')), "not valid JSON"),
    "vocab bad utf8": (put("vocab", data=text(b'["\xff"]')), "not valid UTF-8"),
    "vocab vlen": (
        put("vocab", data=np.array(["a"], dtype=h5py.string_dtype())),
        "expected one fixed-length string",
    ),
    "config list": (set_attr("/", "config", text(b"[1]")), "not a JSON dict"),
    "config not json": (set_attr("/", "config", text(b"{")), "not valid JSON"),
    "config deep": (set_attr("/", "config", text(b"[" * 30000 + b"]" * 30000)), "not valid JSON"),
    "config vlen": (set_attr("/", "config", "{}"), "not a fixed-length string"),
    "progress not json": (set_attr("/", "progress", text(b"nope")), "not valid JSON"),
    "absurd shape": (put(BIAS, shape=(2**40,), dtype="f4"), "declares 4398046511104 bytes, which"),
    "unallocated": (put(BIAS, shape=(6,), dtype="f4"), "declares 24 bytes but stores 0"),
    "gzip": (put(BIAS, data=np.zeros(6, F4), compression="gzip"), "chunked"),
    "no dataspace": (put(BIAS, data=h5py.Empty("f4")), "no dataspace"),
    "soft link": (link(BIAS, h5py.SoftLink("/params/lstm.0.bias")), "is a soft link"),
    "external link": (link("vocab", h5py.ExternalLink("/etc/passwd", "/x")), "external link"),
    "external storage": (
        put(BIAS, shape=(6,), dtype="f4", external=[("/etc/hostname", 0, 24)]),
        "external storage",
    ),
    "group for dataset": (regroup("state/hidden"), "must be a dataset"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_structurally_broken_file(saved, case):
    edit, match = STRUCTURE[case]
    with h5py.File(saved, "r+") as f:
        edit(f)
    ckmod._seal(saved)  # a correct checksum: the structural checks must catch it
    one_line_error(saved, match)


def test_absurd_shape_is_refused_before_any_allocation(saved):
    with h5py.File(saved, "r+") as f:
        _replace(f, "params/embedding.weight", shape=(2**30, 2**30), dtype="f8")
    ckmod._seal(saved)
    tracemalloc.start()
    try:
        one_line_error(saved, "exceeds")
        assert tracemalloc.get_traced_memory()[1] < 8 * 2**20  # NumPy allocations are traced
    finally:
        tracemalloc.stop()


def test_max_bytes_limits_a_valid_file(saved):
    one_line_error(saved, "exceeds the 100-byte limit", max_bytes=100)
    assert load_checkpoint(saved, max_bytes=10**6).vocab


def test_expected_shapes_names_must_match(saved):
    one_line_error(
        saved,
        r"missing parameter\(s\) \['lstm.1.w_x'\]",
        expected_shapes={**SHAPES, "lstm.1.w_x": (12, 3)},
    )
    fewer = {k: v for k, v in SHAPES.items() if k != "softmax.bias"}
    one_line_error(saved, r"unexpected parameter\(s\) \['softmax.bias'\]", expected_shapes=fewer)


def test_expected_shapes_mismatch(saved):
    one_line_error(
        saved,
        r"lstm.0.w_x has shape \(12, 4\), expected \(12, 5\)",
        expected_shapes={**SHAPES, "lstm.0.w_x": (12, 5)},
    )
    one_line_error(
        saved,
        r"softmax.bias has shape \(6,\), expected \(7,\)",
        expected_shapes={**SHAPES, "softmax.bias": (7,)},
    )


def test_expected_shapes_from_the_file_itself(saved):
    """A function of the loaded checkpoint gives the shapes (they follow from its own config);
    a CheckpointError it raises reaches the caller unchanged, not as 'unreadable or corrupt'."""
    seen = []

    def shapes(ckpt):
        seen.append(ckpt.config["preset"])
        return {**SHAPES, "lstm.0.w_x": (12, 5)}

    one_line_error(
        saved, r"lstm.0.w_x has shape \(12, 4\), expected \(12, 5\)", expected_shapes=shapes
    )
    assert seen == ["teach"]
    assert load_checkpoint(saved, expected_shapes=lambda ckpt: SHAPES).vocab

    def refuse(ckpt):
        raise CheckpointError(f"{saved}: invalid config: hidden must be >= 1")

    one_line_error(saved, r"^\S+: invalid config: hidden must be >= 1$", expected_shapes=refuse)


def test_read_config_checks_the_file_too(saved, tmp_path):
    assert read_config(saved)["preset"] == "teach"
    data = bytearray(saved.read_bytes())
    data[-1] ^= 1
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_config(saved)
    with pytest.raises(CheckpointError, match="not found"):
        read_config(tmp_path / "none.h5")


# ---------------------------------------------------------------------------------------------
# fuzz: random damage must end in a valid Checkpoint or a CheckpointError, nothing else


@pytest.fixture(scope="module")
def fuzz_server():
    server = fuzz.CaseServer(timeout=30.0)
    yield server
    server.close()


@settings(
    max_examples=150,
    deadline=timedelta(seconds=30),
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=st.integers(0, 2**40))
def test_fuzzed_files_load_or_raise_checkpoint_error(fuzz_server, case):
    result = fuzz_server.run(case)
    assert result["outcome"] in ("loaded", "rejected"), (
        f"{result} (reproduce: python scripts/fuzz_checkpoint.py --replay {case})"
    )


def test_fuzz_engine_accepts_an_undamaged_file(tmp_path):
    bases = fuzz.base_files(tmp_path)
    for data in bases.values():
        path = tmp_path / "ok.h5"
        path.write_bytes(data)
        fuzz.check_loaded(load_checkpoint(path))
