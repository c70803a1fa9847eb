"""Training on a real full disk: a small tmpfs (root only) whose free space is set page by page.

A monkeypatched ENOSPC misses what a real full disk does inside a library (h5py once swallowed
the error in a destructor, leaving a hole under a valid checksum, then crashed). The scan over
hundreds of free-space amounts is scripts/scan_full_disk.py; this is its quick form for the suite.
"""

from __future__ import annotations

import shutil
import sys

import pytest
from test_reliability import MODEL, invoke, losses, script_module, temporaries

from sparselm.checkpoint import load_checkpoint

SCAN = script_module("scan_full_disk")
# No --threads: in this process it would set NUMBA_NUM_THREADS for every later test (Numba refuses
# a change once its pool runs), and one process computes bit-exactly whatever the flag says.
TRAIN = MODEL
RESUME = ["--resume", "--quiet", "--max-steps", "6"]


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """What Python would print as "Exception ignored in ...": errors no caller ever saw."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def stopped_cleanly(result, run) -> int | None:
    """Check a run that met the full disk; the step of its failed save, None if it did not save."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "no space left on device" in lines[0].lower(), result.output
    if "while saving" not in lines[0]:  # config.json or metrics.jsonl met the full disk
        return None
    step = load_checkpoint(run / "last.h5").progress["step"]  # the previous save, intact
    assert lines[0].endswith(f"{run / 'last.h5'} holds step {step}"), lines[0]
    return step


def test_resume_into_a_full_disk_stops_cleanly_and_resumes_bit_exactly(
    tiny_corpus, tmp_path, unraisable
):
    why = SCAN.mount_problem()
    if why:
        pytest.skip(f"needs a real full disk (a tmpfs): {why}")
    ref, start = tmp_path / "ref", tmp_path / "start"
    for out, steps in ((ref, 6), (start, 3)):
        done = invoke("train", "--data", tiny_corpus, "--out", out, *TRAIN, "--max-steps", steps)
        assert done.exit_code == 0, done.output
    save = SCAN.pages((start / "last.h5").stat().st_size)
    stops = set()
    with SCAN.tmpfs(SCAN.PAGE * (4 * save + 16)) as disk:
        for free in [0, *range(save - 2, save + 4)]:  # around the size of one save
            run = disk / "r"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(start, run)
            SCAN.fill_to(disk, free * SCAN.PAGE)
            result = invoke("train", "--data", tiny_corpus, "--out", run, *RESUME)
            assert temporaries(run) == [] and "Traceback" not in result.output
            stops.add(stopped_cleanly(result, run) if result.exit_code else "completed")
            (disk / "filler").unlink()  # room again: the run goes on as if nothing happened
            again = invoke("train", "--data", tiny_corpus, "--out", run, *RESUME)
            assert again.exit_code == 0 and losses(run) == losses(ref)
            assert SCAN.same_content(
                load_checkpoint(run / "last.h5"), load_checkpoint(ref / "last.h5")
            )
    assert stops == {None, 3, "completed"}  # config.json, then step 4's save met the full disk
    assert unraisable == []
