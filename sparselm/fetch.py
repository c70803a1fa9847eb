"""`sparselm data fetch ptb`: download the Penn Treebank, verify it, install it for every run.

The archive is Mikolov's simple-examples.tgz. Only simple-examples/data/ptb.{train,valid,test}.txt
are taken from it, each checked against the SHA-256 sums shipped in the package
(sparselm/ptb.SHA256SUMS, the sums of the corpus the project's results were measured on).

Atomic: everything is written in a temporary folder beside the destination and renamed into
place only once all three files are verified, so an interrupted download, a truncated or corrupt
archive or a wrong sum never leaves a half folder where training would look.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath

from .data import user_data_dir
from .errors import DataError
from .metrics import Progress

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
SUMS_NAME = "ptb.SHA256SUMS"
CHUNK = 1 << 20


class FetchError(DataError):
    """A download failed, or what it brought is not the expected corpus."""


def shipped_sums() -> tuple[bytes, dict[str, str]]:
    """The package's SHA256SUMS file: its bytes, and file name -> hex digest."""
    raw = resources.files("sparselm").joinpath(SUMS_NAME).read_bytes()
    sums = {}
    for line in raw.decode().splitlines():
        digest, name = line.split()
        sums[name.lstrip("*")] = digest
    return raw, sums


def fetch_ptb(dest: Path | None = None, source: str | None = None, say=print) -> Path:
    """Install ptb.{train,valid,test}.txt (verified) into dest (default: the per-user folder
    that the --data default finds); source: an archive's path or URL (default PTB_URL)."""
    dest = Path(dest) if dest else user_data_dir() / "ptb"
    raw_sums, sums = shipped_sums()
    if dest.exists():
        if all(_sha256_file(dest / name) == sums[name] for name in PTB_FILES):
            say(f"{dest} already holds the verified Penn Treebank")
            return dest
        raise FetchError(f"{dest} already exists and is not a verified PTB; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        archive = _local_archive(source or PTB_URL, work, say)
        folder = work / dest.name
        folder.mkdir()
        _extract(archive, folder, sums, source or PTB_URL)
        (folder / "SHA256SUMS").write_bytes(raw_sums)
        os.rename(folder, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"installed the Penn Treebank (3 files, SHA-256 verified) in {dest}")
    return dest


def _local_archive(source: str, work: Path, say) -> Path:
    """A path to the archive: `source` itself when it is a file path, else downloaded into
    work/ with a progress bar (a short download is an error, not a truncated corpus)."""
    if "://" not in source:
        if not Path(source).is_file():
            raise FetchError(f"archive {source} not found")
        return Path(source)
    target = work / "archive.tgz"
    say(f"downloading {source}")
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            bar = Progress(size, "download (bytes)")
            got = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            bar.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {source}: {reason}") from None
    if size and got != size:
        raise FetchError(f"download of {source} cut short: {got:,} of {size:,} bytes")
    return target


def _extract(archive: Path, folder: Path, sums: dict[str, str], source: str) -> None:
    """Copy the three PTB members of the .tgz into folder, then verify each sum. The whole
    archive is read first, so a truncated or corrupt one is named as such, even past the members.
    """
    digests = {}
    try:
        with gzip.open(archive, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    name = _ptb_name(member)
                    if name:
                        digests[name] = _copy(tar.extractfile(member), folder / name)
            while stream.read(CHUNK):  # to the end: gzip checks its CRC and length there
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise FetchError(f"{source}: truncated or corrupt archive ({exc})") from None
    for name in PTB_FILES:
        if name not in digests:
            raise FetchError(
                f"{source}: no simple-examples/data/{name} in the archive; is it "
                "Mikolov's simple-examples.tgz?"
            )
        if digests[name] != sums[name]:
            raise FetchError(
                f"{source}: {name} has SHA-256 {digests[name]}, expected {sums[name]} "
                "(a damaged or different archive)"
            )


def _ptb_name(member: tarfile.TarInfo) -> str | None:
    """The PTB file a member is (simple-examples/data/ptb.<split>.txt), else None."""
    parts = PurePosixPath(member.name).parts
    if member.isfile() and len(parts) >= 2 and parts[-2] == "data" and parts[-1] in PTB_FILES:
        return parts[-1]
    return None


def _copy(source, path: Path) -> str:
    """Write a file object to path; its SHA-256 hex digest. A read error (a damaged archive)
    propagates as it is; a write error becomes a FetchError naming the file."""
    digest = hashlib.sha256()
    try:
        out = open(path, "wb")
    except OSError as exc:
        raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from None
    with out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _sha256_file(path: Path) -> str | None:
    """path's SHA-256 hex digest, or None when it is not a readable file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
