"""`sparselm data fetch ptb` on local archives (a path or a file:// URL; no network): a good one
installs the three files verified, where `--data`'s default finds them; a corrupted byte, a
truncated archive, a missing member or an unreachable URL is one line, and leaves nothing."""

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparselm import fetch as fetch_module
from sparselm.cli import main
from sparselm.data import find_corpus, user_data_dir
from sparselm.fetch import PTB_FILES, SUMS_NAME, shipped_sums

REPO = Path(__file__).resolve().parent.parent


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    """A .tgz laid out like simple-examples.tgz: ./simple-examples/data/<name>, plus a decoy."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"README": b"not the corpus\n", **files}.items():
            info = tarfile.TarInfo(f"./simple-examples/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))
    return path


@pytest.fixture(scope="module")
def ptb_files(ptb_path) -> dict[str, bytes]:
    return {name: (ptb_path / name).read_bytes() for name in PTB_FILES}


@pytest.fixture(scope="module")
def good_archive(ptb_files, tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "simple-examples.tgz", ptb_files)


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """A temporary per-user data folder: tests never write to the real one."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPARSELM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "xdg"


def fetch(*args):
    return CliRunner().invoke(main, ["data", "fetch", "ptb", *args])


def assert_left_nothing(result, folder: Path, needle: str):
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after "downloading URL"
    assert last.startswith("error: ") and needle in last
    assert "Traceback" not in result.output
    assert not folder.exists()
    assert not [p for p in folder.parent.glob(".*") if p.is_dir()], "a temporary folder was left"


def test_shipped_sums_are_the_shared_corpus_sums(ptb_path):
    raw, sums = shipped_sums()
    assert raw == (ptb_path / "SHA256SUMS").read_bytes()
    assert sorted(sums) == sorted(PTB_FILES)


def test_the_sums_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert SUMS_NAME in package_data["package-data"]["sparselm"]


@pytest.mark.parametrize("as_url", [False, True])
def test_good_archive_installs_where_the_default_finds_it(
    good_archive, ptb_files, user_home, as_url
):
    archive = good_archive
    result = fetch("--from", archive.as_uri() if as_url else str(archive))
    assert result.exit_code == 0, result.output
    dest = user_data_dir() / "ptb"
    assert dest == user_home / "sparselm" / "ptb"
    for name, data in ptb_files.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "SHA256SUMS").read_bytes() == shipped_sums()[0]
    assert find_corpus(None) == str(dest)
    again = fetch("--from", str(archive))
    assert again.exit_code == 0 and "already holds" in again.output


def fake_files() -> dict[str, bytes]:
    """PTB-named members of other content: enough to test the archive checks without PTB."""
    return {name: name.encode() + bytes(range(256)) * 2000 for name in PTB_FILES}


@pytest.fixture
def stand_in(monkeypatch) -> dict[str, bytes]:
    """Fake PTB files, and the package's sums replaced by theirs: fetch's logic without PTB."""
    files = fake_files()
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    raw = "".join(f"{d}  {n}\n" for n, d in sums.items()).encode()
    monkeypatch.setattr(fetch_module, "shipped_sums", lambda: (raw, sums))
    return files


def test_dest_option_with_a_stand_in_corpus(stand_in, tmp_path, user_home):
    archive = make_archive(tmp_path / "a.tgz", stand_in)
    result = fetch("--from", str(archive), "--dest", str(tmp_path / "corpora" / "ptb"))
    assert result.exit_code == 0, result.output
    for name, data in stand_in.items():
        assert (tmp_path / "corpora" / "ptb" / name).read_bytes() == data
    assert not (user_home / "sparselm" / "ptb").exists()


def test_a_corrupted_byte_fails_its_sum(stand_in, tmp_path, user_home):
    files = dict(stand_in)
    valid = bytearray(files["ptb.valid.txt"])
    valid[1000] ^= 0x01
    files["ptb.valid.txt"] = bytes(valid)
    result = fetch("--from", str(make_archive(tmp_path / "a.tgz", files)))
    assert_left_nothing(result, user_home / "sparselm" / "ptb", "ptb.valid.txt has SHA-256")


def test_a_missing_member(stand_in, tmp_path, user_home):
    files = {k: v for k, v in stand_in.items() if k != "ptb.test.txt"}
    result = fetch("--from", str(make_archive(tmp_path / "a.tgz", files)))
    assert_left_nothing(result, user_home / "sparselm" / "ptb", "no simple-examples/data/ptb.test")


@pytest.mark.parametrize("cut", [0.3, 0.98])
def test_a_truncated_archive(tmp_path, user_home, cut):
    archive = make_archive(tmp_path / "a.tgz", fake_files())
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * cut)])
    result = fetch("--from", archive.as_uri())
    assert_left_nothing(result, user_home / "sparselm" / "ptb", "truncated or corrupt archive")


def test_a_corrupted_compressed_stream(tmp_path, user_home):
    archive = make_archive(tmp_path / "a.tgz", {"other.txt": b"x" * 100000})
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    result = fetch("--from", str(archive))
    assert_left_nothing(result, user_home / "sparselm" / "ptb", "truncated or corrupt archive")


def test_not_an_archive(tmp_path, user_home):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(b"<html>moved</html>")
    result = fetch("--from", str(archive))
    assert_left_nothing(result, user_home / "sparselm" / "ptb", "truncated or corrupt archive")


@pytest.mark.parametrize(
    "source,needle",
    [
        ("file:///nonexistent/simple-examples.tgz", "cannot download"),
        ("http://127.0.0.1:9/simple-examples.tgz", "cannot download"),  # nothing listens
        ("/nonexistent/simple-examples.tgz", "not found"),
    ],
)
def test_unreachable_source(source, needle, user_home):
    result = fetch("--from", source)
    assert_left_nothing(result, user_home / "sparselm" / "ptb", needle)


def test_refuses_an_existing_folder_that_is_not_ptb(tmp_path, user_home):
    dest = tmp_path / "ptb"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    result = fetch("--from", str(tmp_path / "unused.tgz"), "--dest", str(dest))
    assert result.exit_code == 1 and "already exists" in result.output
    assert (dest / "notes.txt").read_text() == "mine"
