"""Checkpoints: atomic, versioned, pickle-free HDF5 files that are validated in full on load.

File layout, format version 1
-----------------------------
A checkpoint is an HDF5 file with a 512-byte user block in front (HDF5 skips it by design, so
h5py, h5dump and HDFView open the file as usual). The user block is ASCII text, NUL-padded::

    sparselm checkpoint
    format_version 1
    payload_bytes <size of everything after the 512 bytes>
    blake2b-256 <64 hex digits: BLAKE2b-256 of everything after the 512 bytes>

The checksum is verified before the HDF5 library parses a single byte, so a truncated,
extended or bit-flipped file is rejected with a clear message instead of reaching the HDF5
parser (which is written in C and not hardened against corrupt input); silent corruption of
parameter values is detected too. The HDF5 part:

    /                     attrs: format = "sparselm", format_version = 1 (int64),
                                 sparselm_version, config (JSON object), progress (JSON object)
    /params               group, attr order = JSON list of the parameter names in model order
                          (HDF5 lists members alphabetically, so the order is stored)
    /params/<name>        dense parameter: float32 or float64 dataset of any shape
    /params/<name>/       CSR parameter: group with attr shape = int64 (2,) [R, C] and datasets
        data                (N,) float, the trainable values
        indices             (N,) int32, column numbers, strictly increasing within each row
        indptr              (R+1,) int32, row offsets
    /vocab                scalar string dataset: JSON array of the V words, id -> word
    /optimizer            group, attr order; /optimizer/<name>: (K,) float buffers
    /state                group, attr order; /state/<name>: float arrays, e.g. hidden (L,2,B,H)

Every string (attributes and /vocab) is a fixed-length UTF-8 HDF5 string, never a variable-length
one: variable-length data lives in HDF5's global heap, whose parser loops forever on some damaged
heaps (HDF5 2.0.0, found by scripts/fuzz_checkpoint.py). An attribute holds at most 64 KiB, so
config and progress must stay under MAX_ATTR_BYTES as JSON. All parameters share one float dtype.
Datasets are stored contiguous and uncompressed; names match [A-Za-z0-9_][A-Za-z0-9_.-]* (dots
are fine in HDF5 names). Nothing is pickled or evaluated: only numeric and fixed-length string
data are read, and links other than plain hard links (soft, external), external storage,
virtual datasets, filters and variable-length types are refused before any data is read.

Saving builds the whole file in memory (HDF5 never writes to the disk: h5py reports some write
errors only from destructors, where they cannot be raised), writes it to a temporary file next to
the target with checked os.write calls, fsyncs it, renames it over the target and fsyncs the
directory, so the target always holds either the old or the new checkpoint, complete. Every
problem, on save or load, raises CheckpointError with a one-line message naming the file; a full
disk says "no space left on device while saving PATH; the previous checkpoint is intact".
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sparselm import __version__
from sparselm.csr import validate_csr_pattern
from sparselm.errors import CheckpointError

FORMAT = "sparselm"
FORMAT_VERSION = 1

HEADER_SIZE = 512  # HDF5 user blocks are powers of two >= 512
MAGIC = b"sparselm checkpoint\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Loads never allocate more than this unless the caller passes max_bytes explicitly.
ABSOLUTE_MAX_BYTES = 32 * 2**30
_CHUNK = 1 << 20  # bytes per read while hashing
_WRITE_CHUNK = 1 << 24  # bytes per os.write: small enough for any platform's write limit
MAX_ATTR_BYTES = 60_000  # an HDF5 object header message holds at most 64 KiB
_INT32_MAX = np.iinfo(np.int32).max
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ROOT_MEMBERS = ("optimizer", "params", "state", "vocab")
_CSR_MEMBERS = ("data", "indices", "indptr")


@dataclass
class CSRPattern:
    """The fixed sparsity pattern of one CSR parameter.

    indices: (N,) int32, sorted within each row. indptr: (R+1,) int32. shape: (R, C).
    """

    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]


@dataclass
class Checkpoint:
    """Everything needed to resume or use a run; see the module docstring for the file layout.

    params: ordered name -> dense float32|float64 array, or the (N,) `data` of a CSR parameter.
    patterns: name -> CSRPattern for the CSR parameters (a subset of params' keys).
    optimizer: name -> (K,) float buffer. state: name -> float array, e.g. hidden (L, 2, B, H).
    config, progress: JSON objects (tuples come back as lists, dict keys as strings).
    """

    config: dict
    vocab: list[str]
    params: dict[str, np.ndarray]
    patterns: dict[str, CSRPattern]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)


class _Invalid(Exception):
    """A problem with the checkpoint's content; becomes CheckpointError with the path prepended."""


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# validation of a Checkpoint object: the same rules on save and on load, so that every file we
# write loads, and every load returns what a save would accept


def _check_name(kind: str, name) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _Invalid(f"{kind} name {name!r:.80} is not of the form [A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_float_array(what: str, arr, ndim: int | None = None) -> None:
    """arr: np.ndarray float32|float64 with only finite values (and `ndim` dims if given)."""
    if not isinstance(arr, np.ndarray):
        raise _Invalid(f"{what} is a {type(arr).__name__}, expected a NumPy array")
    if arr.dtype not in _FLOATS:
        raise _Invalid(f"{what} has dtype {arr.dtype}, expected float32 or float64")
    if ndim is not None and arr.ndim != ndim:
        raise _Invalid(f"{what} has shape {arr.shape}, expected {ndim}-D")
    if not all_finite(arr):
        raise _Invalid(f"{what} contains NaN or infinite values")


def all_finite(arr: np.ndarray) -> bool:
    """arr: any-shape float32/float64 array (host memory). True when no value is NaN or inf.

    max and min propagate NaN and are inf when any value is: two passes and no temporary array
    (np.isfinite would allocate one of booleans as large as the parameters). The one finiteness
    check of the package: the trainer uses it before every save, and the loader on every array.
    """
    return arr.size == 0 or (math.isfinite(arr.max()) and math.isfinite(arr.min()))


def _check_pattern(name: str, pattern, data: np.ndarray) -> None:
    """pattern: CSRPattern; data: (N,) float, the parameter's values."""
    if not isinstance(pattern, CSRPattern):
        raise _Invalid(f"pattern of {name} is a {type(pattern).__name__}, expected CSRPattern")
    if not (isinstance(pattern.indices, np.ndarray) and isinstance(pattern.indptr, np.ndarray)):
        raise _Invalid(f"pattern of {name} must hold NumPy arrays")
    try:
        validate_csr_pattern(pattern.indices, pattern.indptr, pattern.shape)
    except (ValueError, TypeError, IndexError) as exc:
        raise _Invalid(f"CSR parameter {name}: {_one_line(exc)}") from None
    if max(pattern.shape) > _INT32_MAX or pattern.indices.shape[0] > _INT32_MAX:
        raise _Invalid(f"CSR parameter {name} is too large for int32 indices")
    if data.ndim != 1 or data.shape[0] != pattern.indices.shape[0]:
        raise _Invalid(
            f"CSR parameter {name} has data of shape {data.shape} "
            f"but its pattern has {pattern.indices.shape[0]} non-zeros"
        )


def _check_params(params, patterns) -> None:
    if not isinstance(params, dict) or not isinstance(patterns, dict):
        raise _Invalid("params and patterns must be dicts")
    dtypes = set()
    for name, arr in params.items():
        _check_name("parameter", name)
        _check_float_array(f"parameter {name}", arr)
        dtypes.add(arr.dtype)
    if len(dtypes) > 1:
        names = sorted(str(d) for d in dtypes)
        raise _Invalid(f"parameters mix dtypes {names}; use one float dtype")
    for name, pattern in patterns.items():
        if name not in params:
            raise _Invalid(f"pattern given for {name!r:.80}, which is not a parameter")
        _check_pattern(name, pattern, params[name])


def _check_vocab(vocab) -> None:
    """vocab: list of unique, non-empty str without NUL (HDF5 strings end at a NUL)."""
    if not isinstance(vocab, list):
        raise _Invalid(f"vocab is a {type(vocab).__name__}, expected a list of strings")
    for i, word in enumerate(vocab):
        if not isinstance(word, str) or not word or "\0" in word:
            raise _Invalid(f"vocab entry {i} ({word!r:.40}) is not a non-empty string without NUL")
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"vocab entry {i} ({word!r:.40}) cannot be encoded as UTF-8") from None
    if len(set(vocab)) != len(vocab):
        seen: set[str] = set()
        dup = next(w for w in vocab if w in seen or seen.add(w))  # type: ignore[func-returns-value]
        raise _Invalid(f"vocab entry {dup!r:.40} occurs more than once")


def _check_buffers(kind: str, buffers, ndim: int | None) -> None:
    if not isinstance(buffers, dict):
        raise _Invalid(f"{kind} must be a dict of arrays")
    for name, arr in buffers.items():
        _check_name(kind, name)
        _check_float_array(f"{kind} {name}", arr, ndim)


def _json_default(obj):
    """Lets NumPy scalars and arrays (e.g. from an RNG state) through json.dumps as plain values."""
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json(kind: str, obj) -> str:
    if not isinstance(obj, dict):
        raise _Invalid(f"{kind} is a {type(obj).__name__}, expected a dict (JSON object)")
    try:
        text = json.dumps(obj, default=_json_default)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Invalid(f"{kind} is not JSON-serialisable: {_one_line(exc)}") from None
    if len(text) > MAX_ATTR_BYTES:  # ASCII: json.dumps escapes everything else
        raise _Invalid(f"{kind} takes {len(text)} bytes as JSON; at most {MAX_ATTR_BYTES} fit")
    return text


def validate_checkpoint(ckpt: Checkpoint) -> None:
    """Raise CheckpointError if `ckpt` breaks a rule of the layout (see the module docstring)."""
    try:
        _validate(ckpt)
    except _Invalid as exc:
        raise CheckpointError(f"invalid checkpoint: {exc}") from None


def _validate(ckpt) -> None:
    if not isinstance(ckpt, Checkpoint):
        raise _Invalid(f"expected a Checkpoint, got {type(ckpt).__name__}")
    _to_json("config", ckpt.config)
    _to_json("progress", ckpt.progress)
    _check_vocab(ckpt.vocab)
    _check_params(ckpt.params, ckpt.patterns)
    _check_buffers("optimizer", ckpt.optimizer, ndim=1)
    _check_buffers("state", ckpt.state, ndim=None)


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically: the file holds the old or the new checkpoint, never a mix.

    The whole file is built in memory first, so HDF5 never writes to the disk itself: h5py writes
    small datasets while closing them, inside destructors that print a full disk's error instead
    of raising it (the file then held a hole under a valid checksum). Our own checked os.write
    calls put every byte on the disk, then fsync, rename and fsync the folder.
    Raises CheckpointError (one line, naming the path) for an invalid `ckpt` (nothing is written)
    and for I/O failures such as a full disk (the temporary file is removed, the target untouched).
    """
    path = Path(os.fspath(path))
    try:
        _validate(ckpt)
    except _Invalid as exc:
        raise CheckpointError(f"cannot save checkpoint {path}: {exc}") from None
    if not path.parent.is_dir():  # checked before building the file, which may take a while
        raise CheckpointError(f"cannot save checkpoint {path}: no directory {path.parent}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        _write_file(tmp, _build_image(ckpt))
        os.replace(tmp, path)
    except BaseException as exc:  # also KeyboardInterrupt: never leave the temporary file behind
        _remove_quietly(tmp)
        if isinstance(exc, (OSError, RuntimeError)):  # RuntimeError: HDF5's, building the image
            raise CheckpointError(_save_failure(path, exc)) from None
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as exc:  # the new file is complete and in place; only the rename may not last
        raise CheckpointError(
            f"saved {path}, but syncing its folder failed ({_one_line(exc)}): after a power "
            "loss it may hold the previous checkpoint"
        ) from None


def _save_failure(path: Path, exc: OSError | RuntimeError) -> str:
    """The one-line message of a failed save; the target was not touched."""
    kept = "the previous checkpoint is intact" if path.exists() else "nothing was written there"
    code = getattr(exc, "errno", None)
    # HDF5 reports a full disk inside its own message, without setting errno on the exception.
    if code == errno.ENOSPC or "No space left" in str(exc):
        return f"no space left on device while saving {path}; {kept}"
    reason = getattr(exc, "strerror", None) or _one_line(exc)
    return f"cannot save checkpoint {path}: {reason}; {kept}"


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _build_image(ckpt: Checkpoint) -> memoryview:
    """The complete checkpoint file (sealed header + HDF5 part) as bytes, built in memory."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=HEADER_SIZE, locking=False) as f:
        _write_hdf5(f, ckpt)
    image = buf.getbuffer()
    digest = hashlib.blake2b(image[HEADER_SIZE:], digest_size=32).hexdigest()
    image[:HEADER_SIZE] = _header(len(image) - HEADER_SIZE, digest)
    return image


def _write_file(path: Path, data: memoryview) -> None:
    """Create `path` (it must not exist) holding exactly `data`, on the disk when this returns.

    Every os.write is checked (a short write is continued, ENOSPC raises), then fsync reports
    any error the filesystem deferred. Raises OSError.
    """
    # O_EXCL: the name is fresh, so an existing file means something else owns it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done : done + _WRITE_CHUNK])
        os.fsync(fd)
        if os.fstat(fd).st_size != len(data):  # cannot happen on a POSIX filesystem
            raise OSError(errno.EIO, f"wrote {len(data)} bytes but the file holds a different size")
    finally:
        os.close(fd)


def _write_hdf5(f: h5py.File, ckpt: Checkpoint) -> None:
    _set_text(f, "format", FORMAT)
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    _set_text(f, "sparselm_version", __version__)
    _set_text(f, "config", _to_json("config", ckpt.config))
    _set_text(f, "progress", _to_json("progress", ckpt.progress))
    _write_params(f.create_group("params"), ckpt.params, ckpt.patterns)
    f.create_dataset("vocab", data=_text(json.dumps(ckpt.vocab, ensure_ascii=False)))
    _write_arrays(f.create_group("optimizer"), ckpt.optimizer)
    _write_arrays(f.create_group("state"), ckpt.state)


def _text(text: str) -> np.ndarray:
    """A scalar fixed-length UTF-8 string array holding `text` (non-empty, no trailing NUL)."""
    data = text.encode("utf-8")
    return np.array(data, dtype=h5py.string_dtype("utf-8", len(data)))


def _set_text(obj, name: str, text: str) -> None:
    obj.attrs.create(name, _text(text))


def _write_params(group: h5py.Group, params: dict, patterns: dict) -> None:
    _set_text(group, "order", json.dumps(list(params)))
    for name, arr in params.items():
        if name not in patterns:
            group.create_dataset(name, data=np.asarray(arr, order="C"))
            continue
        pattern = patterns[name]
        sub = group.create_group(name)
        sub.attrs["shape"] = np.array(pattern.shape, dtype=np.int64)
        sub.create_dataset("data", data=np.asarray(arr, order="C"))
        sub.create_dataset("indices", data=np.asarray(pattern.indices, dtype=np.int32))
        sub.create_dataset("indptr", data=np.asarray(pattern.indptr, dtype=np.int32))


def _write_arrays(group: h5py.Group, arrays: dict) -> None:
    _set_text(group, "order", json.dumps(list(arrays)))
    for name, arr in arrays.items():
        group.create_dataset(name, data=np.asarray(arr, order="C"))


def _digest(fh, start: int) -> tuple[str, int]:
    """BLAKE2b-256 hex digest and byte count of the open binary file `fh` from offset `start`."""
    fh.seek(start)
    h = hashlib.blake2b(digest_size=32)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    while n := fh.readinto(buf):
        h.update(view[:n])
        total += n
    return h.hexdigest(), total


def _header(payload_bytes: int, digest: str) -> bytes:
    text = (
        MAGIC
        + f"format_version {FORMAT_VERSION}\npayload_bytes {payload_bytes}\n"
        f"blake2b-256 {digest}\n".encode("ascii")
    )
    return text.ljust(HEADER_SIZE, b"\0")


def _seal(path: Path) -> None:
    """(Re)write the user-block header of the HDF5 file at `path` (size and checksum) and fsync.

    Saves seal the image in memory (_build_image); this is for tools and tests that edit a
    checkpoint's HDF5 part in place and want a file whose checksum matches again.
    """
    with open(path, "r+b") as fh:
        digest, size = _digest(fh, HEADER_SIZE)
        fh.seek(0)
        fh.write(_header(size, digest))
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; POSIX only (Windows cannot open directories).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# loading: the header and checksum first, then the HDF5 structure, then the content rules


def load_checkpoint(
    path,
    *,
    expected_shapes: dict[str, tuple] | Callable[[Checkpoint], dict] | None = None,
    max_bytes: int | None = None,
) -> Checkpoint:
    """Read and fully validate the checkpoint at `path`.

    expected_shapes: optional name -> shape of every parameter (for a CSR parameter the dense
    shape (R, C)); the file must hold exactly these parameters with these shapes. Or a function
    of the validated Checkpoint that returns that dict, when the shapes follow from the file's
    own config and vocabulary (model_io.py); a CheckpointError it raises passes through as is.
    max_bytes: most bytes the arrays may take once read; checked against every dataset's declared
    size before it is read. Default: 4x the file size + 1 MiB, at most ABSOLUTE_MAX_BYTES.
    Raises CheckpointError, with a one-line message naming the file, for every problem.
    """

    def read(f, budget):
        ckpt = _read_checkpoint(f, budget)
        _validate(ckpt)
        shapes = expected_shapes(ckpt) if callable(expected_shapes) else expected_shapes
        _check_expected_shapes(ckpt, shapes)
        return ckpt

    return _guarded(path, read, max_bytes)


def read_config(path) -> dict:
    """The `config` JSON object of the checkpoint at `path`, without reading any array.

    The checksum is still verified (one sequential read of the file). Raises CheckpointError.
    """
    return _guarded(path, lambda f, budget: _json_attr(f, "config"), None)


def _guarded(path, reader, max_bytes):
    """reader(h5py.File, _Budget) on the verified file; every failure becomes CheckpointError."""
    shown = os.fspath(path)
    try:
        for _ in range(3):  # a concurrent atomic save may replace the file between our two opens
            result = _read_verified(shown, reader, max_bytes)
            if result is not _REPLACED:
                return result
        raise _Invalid("the file keeps being replaced while it is read; try again")
    except _Invalid as exc:
        raise CheckpointError(f"checkpoint {shown}: {exc}") from None
    except CheckpointError:  # from an expected_shapes function: already says what is wrong
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {shown} not found") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {shown}: not enough memory to load it") from None
    except Exception as exc:  # h5py: OSError, KeyError, ValueError, TypeError, RuntimeError...
        raise CheckpointError(
            f"checkpoint {shown}: unreadable or corrupt ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc


_REPLACED = object()


def _open_regular(path: str):
    """Open `path` for binary reading; returns (file object, os.stat_result). Files only."""
    # O_NONBLOCK: opening a FIFO (or a device) must not block; regular files ignore the flag.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Invalid("not a regular file")
    return os.fdopen(fd, "rb"), st


def _read_verified(path: str, reader, max_bytes):
    fh, st = _open_regular(path)
    with fh:
        _verify_header(fh, st.st_size)
        with h5py.File(path, "r", locking=False) as f:
            h5_st = os.fstat(f.id.get_vfd_handle())
            if (h5_st.st_dev, h5_st.st_ino) != (st.st_dev, st.st_ino):
                return _REPLACED
            _check_root_attrs(f)
            limit = max_bytes if max_bytes is not None else _default_max_bytes(st.st_size)
            return reader(f, _Budget(limit))


def _default_max_bytes(file_size: int) -> int:
    # A valid file's datasets are contiguous and uncompressed, so they need no more memory than
    # the file has bytes; a declared size far beyond that can only come from damage or malice.
    return min(4 * file_size + 2**20, ABSOLUTE_MAX_BYTES)


def _verify_header(fh, file_size: int) -> None:
    """Check magic, version, size and checksum of the open binary file `fh` (file_size bytes)."""
    head = fh.read(HEADER_SIZE)
    if not head:
        raise _Invalid("empty file, not a sparselm checkpoint")
    if head.startswith(HDF5_SIGNATURE):
        raise _Invalid("an HDF5 file but not a sparselm checkpoint (no sparselm header)")
    if not head.startswith(MAGIC) or len(head) < HEADER_SIZE:
        raise _Invalid("not a sparselm checkpoint (unrecognised file header)")
    payload, digest = _parse_header(head)
    if file_size - HEADER_SIZE < payload:
        raise _Invalid(f"truncated: {file_size - HEADER_SIZE} of {payload} data bytes present")
    if file_size - HEADER_SIZE > payload:
        raise _Invalid(f"{file_size - HEADER_SIZE - payload} unexpected bytes after the data")
    if _digest(fh, HEADER_SIZE)[0] != digest:
        raise _Invalid("checksum mismatch: the file is corrupted")


def _parse_header(head: bytes) -> tuple[int, str]:
    """head: the 512 header bytes. Returns (payload_bytes, hex digest)."""
    text, _, pad = head.partition(b"\0")
    version = re.match(rb"sparselm checkpoint\nformat_version (\d{1,9})\n", text)
    if version is None or pad.strip(b"\0"):
        raise _Invalid("malformed sparselm header")
    _check_version(int(version.group(1)))
    fields = re.fullmatch(
        rb"[^\n]*\n[^\n]*\npayload_bytes (\d{1,19})\nblake2b-256 ([0-9a-f]{64})\n", text
    )
    if fields is None:
        raise _Invalid("malformed sparselm header")
    return int(fields.group(1)), fields.group(2).decode("ascii")


def _check_version(version: int) -> None:
    if version > FORMAT_VERSION:
        raise _Invalid(
            f"written in format version {version} by a newer sparselm; "
            f"this sparselm {__version__} reads format version {FORMAT_VERSION}"
        )
    if version != FORMAT_VERSION:
        raise _Invalid(f"unknown format version {version}")


class _Budget:
    """Counts the bytes that reading will allocate; refuses before the allocation, not after."""

    def __init__(self, limit: int):
        self.left = limit
        self.limit = limit

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise _Invalid(
                f"{what} declares {nbytes} bytes, which exceeds the {self.limit}-byte "
                "limit for this file (pass max_bytes to raise it)"
            )
        self.left -= nbytes


# -- attributes


def _attr(obj, name: str, what: str):
    """The scalar or small attribute `name` of h5py object `obj`, dtype-checked before reading."""
    if name not in obj.attrs:
        raise _Invalid(f"{what} lacks the attribute {name!r}")
    return obj.attrs.get_id(name), obj.attrs


def _str_attr(obj, name: str, what: str = "the root") -> str:
    aid, attrs = _attr(obj, name, what)
    if aid.dtype.kind != "S" or aid.shape != ():  # fixed-length only: see the module docstring
        raise _Invalid(f"attribute {name!r} of {what} is not a fixed-length string")
    if aid.dtype.itemsize > 2**16:  # an object header message cannot hold more
        raise _Invalid(f"attribute {name!r} of {what} claims {aid.dtype.itemsize} bytes")
    return _decode(attrs[name], f"attribute {name!r} of {what}")


def _decode(value, what: str) -> str:
    if not isinstance(value, bytes):
        raise _Invalid(f"{what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"{what} is not valid UTF-8") from None


def _int_attr(obj, name: str, shape: tuple, what: str) -> np.ndarray:
    aid, attrs = _attr(obj, name, what)
    if aid.dtype.kind not in "iu" or aid.shape != shape:
        raise _Invalid(f"attribute {name!r} of {what} must be an integer array of shape {shape}")
    return np.asarray(attrs[name])


def _json_attr(obj, name: str, what: str = "the root", kind=dict):
    return _parse_json(_str_attr(obj, name, what), f"attribute {name!r} of {what}", kind)


def _parse_json(text: str, what: str, kind: type):
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Invalid(f"{what} is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(value, kind):
        raise _Invalid(f"{what} is not a JSON {kind.__name__}")
    return value


def _check_root_attrs(f: h5py.File) -> None:
    fmt = _str_attr(f, "format")
    if fmt != FORMAT:
        raise _Invalid(f"an HDF5 file of format {fmt!r:.40}, not a sparselm checkpoint")
    _check_version(int(_int_attr(f, "format_version", (), "the root")))
    _str_attr(f, "sparselm_version")


# -- structure


def _member(group: h5py.Group, name: str, what: str):
    """The dataset or group `name` of `group`, which must be a plain hard link."""
    link = group.get(name, getlink=True)
    if link is None:
        raise _Invalid(f"{what} is missing")
    if not isinstance(link, h5py.HardLink):
        kind = {h5py.SoftLink: "soft", h5py.ExternalLink: "external"}.get(type(link), "special")
        raise _Invalid(f"{what} is a {kind} link; only plain (hard-linked) members are read")
    obj = group[name]
    if not isinstance(obj, (h5py.Dataset, h5py.Group)):
        raise _Invalid(f"{what} is neither a dataset nor a group")
    return obj


def _require_members(group: h5py.Group, names, what: str) -> None:
    """The members of `group` must be exactly `names`."""
    present, wanted = set(group.keys()), set(names)
    if present - wanted:
        raise _Invalid(f"unexpected member(s) in {what}: {sorted(present - wanted)!r:.120}")
    if wanted - present:
        raise _Invalid(f"missing member(s) in {what}: {sorted(wanted - present)!r:.120}")


def _order(group: h5py.Group, what: str) -> list[str]:
    names = _json_attr(group, "order", what, kind=list)
    for name in names:
        _check_name(f"{what} member", name)
    if len(set(names)) != len(names):
        raise _Invalid(f"attribute 'order' of {what} repeats a name")
    _require_members(group, names, what)
    return names


def _typed(obj, what: str, kind: type):
    if not isinstance(obj, kind):
        raise _Invalid(f"{what} must be a {kind.__name__.lower()}")
    return obj


# -- datasets


def _check_storage(ds: h5py.Dataset, what: str, nbytes: int) -> None:
    """Refuse what we never write: chunks, filters, external or virtual storage, missing data."""
    plist = ds.id.get_create_plist()
    if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT):
        raise _Invalid(f"{what} is chunked or virtual; only contiguous datasets are read")
    if plist.get_external_count() or plist.get_nfilters():
        raise _Invalid(f"{what} uses external storage or filters, which are not read")
    if nbytes and ds.id.get_storage_size() != nbytes:
        raise _Invalid(f"{what} declares {nbytes} bytes but stores {ds.id.get_storage_size()}")


def _declared(ds: h5py.Dataset, what: str, budget: _Budget) -> None:
    """Charge the declared size of `ds` (dtype already checked) and check its storage."""
    if ds.shape is None:
        raise _Invalid(f"{what} has no dataspace")
    nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    budget.take(nbytes, what)
    _check_storage(ds, what, nbytes)


def _read_numeric(ds: h5py.Dataset, what: str, kinds: str, budget: _Budget) -> np.ndarray:
    """Read a float ('f': 4 or 8 bytes) or integer ('iu') dataset into a native-endian array.

    Returns an array of ds.shape; the dtype is checked before anything is allocated.
    """
    dtype = ds.dtype
    ok_size = dtype.itemsize in (4, 8) if dtype.kind == "f" else dtype.itemsize <= 8
    if dtype.kind not in kinds or not ok_size:
        wanted = "float32 or float64" if kinds == "f" else "an integer type"
        raise _Invalid(f"{what} has dtype {dtype}, expected {wanted}")
    _declared(ds, what, budget)
    arr = np.empty(ds.shape, dtype=np.dtype(f"{dtype.kind}{dtype.itemsize}"))
    if arr.size:
        ds.read_direct(arr)
    return arr


def _read_int32(ds: h5py.Dataset, what: str, budget: _Budget) -> np.ndarray:
    arr = _read_numeric(ds, what, "iu", budget)
    if arr.ndim != 1:
        raise _Invalid(f"{what} has shape {arr.shape}, expected 1-D")
    if arr.size and (int(arr.min()) < np.iinfo(np.int32).min or int(arr.max()) > _INT32_MAX):
        raise _Invalid(f"{what} has values that do not fit in int32")
    return arr.astype(np.int32, copy=False)


def _read_vocab(ds: h5py.Dataset, budget: _Budget) -> list[str]:
    """/vocab: a scalar fixed-length string holding a JSON array of words."""
    if ds.dtype.kind != "S" or ds.shape != ():
        raise _Invalid(
            f"/vocab has dtype {ds.dtype} and shape {ds.shape}, expected one fixed-length string"
        )
    _declared(ds, "/vocab", budget)
    return _parse_json(_decode(ds[()], "/vocab"), "/vocab", list)


# -- the whole file


def _read_checkpoint(f: h5py.File, budget: _Budget) -> Checkpoint:
    _require_members(f, _ROOT_MEMBERS, "the root group")
    params_group = _typed(_member(f, "params", "/params"), "/params", h5py.Group)
    params, patterns = _read_params(params_group, budget)
    return Checkpoint(
        config=_json_attr(f, "config"),
        vocab=_read_vocab(_typed(_member(f, "vocab", "/vocab"), "/vocab", h5py.Dataset), budget),
        params=params,
        patterns=patterns,
        optimizer=_read_arrays(f, "optimizer", budget),
        progress=_json_attr(f, "progress"),
        state=_read_arrays(f, "state", budget),
    )


def _read_params(group: h5py.Group, budget: _Budget):
    params, patterns = {}, {}
    for name in _order(group, "/params"):
        obj = _member(group, name, f"parameter {name}")
        if isinstance(obj, h5py.Dataset):
            params[name] = _read_numeric(obj, f"parameter {name}", "f", budget)
        else:
            params[name], patterns[name] = _read_csr(obj, name, budget)
    return params, patterns


def _read_csr(group: h5py.Group, name: str, budget: _Budget):
    """A CSR parameter group -> ((N,) float data, CSRPattern)."""
    what = f"CSR parameter {name}"
    _require_members(group, _CSR_MEMBERS, what)
    rows, cols = (int(s) for s in _int_attr(group, "shape", (2,), what))
    if not (0 <= rows <= _INT32_MAX and 0 <= cols <= _INT32_MAX):
        raise _Invalid(f"{what} has shape {(rows, cols)} outside [0, 2**31)")
    parts = {
        m: _typed(_member(group, m, f"{what}: {m}"), f"{what}: {m}", h5py.Dataset)
        for m in _CSR_MEMBERS
    }
    data = _read_numeric(parts["data"], f"{what}: data", "f", budget)
    indices = _read_int32(parts["indices"], f"{what}: indices", budget)
    indptr = _read_int32(parts["indptr"], f"{what}: indptr", budget)
    return data, CSRPattern(indices=indices, indptr=indptr, shape=(rows, cols))


def _read_arrays(f: h5py.File, kind: str, budget: _Budget) -> dict[str, np.ndarray]:
    group = _typed(_member(f, kind, f"/{kind}"), f"/{kind}", h5py.Group)
    arrays = {}
    for name in _order(group, f"/{kind}"):
        ds = _typed(_member(group, name, f"{kind} {name}"), f"{kind} {name}", h5py.Dataset)
        arrays[name] = _read_numeric(ds, f"{kind} {name}", "f", budget)
    return arrays


def _check_expected_shapes(ckpt: Checkpoint, expected: dict | None) -> None:
    if expected is None:
        return
    _require_same_names(list(ckpt.params), list(expected))
    for name, want in expected.items():
        pattern = ckpt.patterns.get(name)
        got = pattern.shape if pattern is not None else ckpt.params[name].shape
        if tuple(got) != tuple(want):
            raise _Invalid(f"parameter {name} has shape {tuple(got)}, expected {tuple(want)}")


def _require_same_names(present: list, wanted: list) -> None:
    missing = [n for n in wanted if n not in present]
    extra = [n for n in present if n not in wanted]
    if missing:
        raise _Invalid(f"missing parameter(s) {missing!r:.120}")
    if extra:
        raise _Invalid(f"unexpected parameter(s) {extra!r:.120}")
