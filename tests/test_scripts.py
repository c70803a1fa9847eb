"""Smoke tests of the scripts under scripts/, each run as a user runs it, without the optional
peers: torch and CuPy are made unimportable in the script's process, so a developer's machine
that has them tests what a fresh one sees (the peers' columns say "n/a", the JSON still comes).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# Runs a script as __main__ with the peers blocked: a None entry in sys.modules makes
# `import torch` raise ImportError, exactly as on a machine without it.
_RUNNER = (
    "import runpy, sys; sys.modules['torch'] = sys.modules['cupy'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run scripts/<name> with args, peers blocked; fail the test on a non-zero exit."""
    cmd = [sys.executable, "-c", _RUNNER, str(SCRIPTS / name), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_kernels_quick_without_peers():
    """The CSR kernels' benchmark: SciPy still compares the products; the SDDMM, whose only
    peer is torch, gets "n/a" and no goal is claimed that was not measured."""
    res = run_script(
        "bench_kernels.py", "--quick", "--reps", "1", "--target-ms", "0.2", "--threads", "1"
    )
    summary = last_json(res.stdout)
    assert summary["benchmark"] == "csr_kernels" and summary["points"] == 2
    worst = summary["worst_point_per_op"]
    assert worst["sddmm"] is None and worst["matmul"]["x_best_peer"] > 0
    assert summary["goals"]["speedup_ge_1.5_everywhere"] is None
    sddmm_rows = [line for line in res.stdout.splitlines() if " sddmm " in line]
    assert sddmm_rows and all("n/a" in line for line in sddmm_rows)


def test_bench_train_without_torch():
    res = run_script("bench_train.py", "--configs", "32:0.25", "--reps", "1", "--steps", "1")
    result = last_json(res.stdout)
    assert result["config"] == "32:0.25" and result["ours_tokens_per_s"] > 0
    assert result["torch_tokens_per_s"] is None and result["ratio_ours_over_torch"] is None
    assert "torch n/a" in res.stderr


def test_profile_step_shows_the_sparse_kernels():
    """scripts/profile_step.py on a tiny sparse model: the fused recurrence and the SDDMM show
    up among the timed calls."""
    res = run_script(
        "profile_step.py", "--config", "16:0.25", "--steps", "1", "--reps", "1", "--threads", "1"
    )
    assert res.stdout.startswith("16:0.25: median step")
    for name in ("csr_lstm_forward", "csr_lstm_backward", "csr_sddmm", "softmax_xent"):
        assert name in res.stdout, res.stdout


def test_bench_kernels_refuses_a_wrong_kernel():
    """The benchmark checks ours against kernels.reference before timing: a kernel that returns
    a wrong result (here the SDDMM off by one entry) stops it with the op named."""
    import numpy as np

    from sparselm.csr import CSRMatrix
    from sparselm.sparsity import csr_random

    bench = runpy_module("bench_kernels.py")
    rng = np.random.default_rng(0)
    w = csr_random(40, 10, 0.3, rng, dtype=np.float32)
    x, dy = rng.standard_normal((3, 10), np.float32), rng.standard_normal((3, 40), np.float32)
    st = w.to_scipy().T.tocsr()
    mine = bench.ours(np, w, CSRMatrix(st.data, st.indices, st.indptr, st.shape), x, dy)
    bench.check_against_reference(np, w, x, dy, mine)  # the real kernels pass

    def off_by_one():
        grad = w.sddmm(dy, x)
        grad[0] += 1.0
        return grad

    mine["sddmm"] = [off_by_one]
    with pytest.raises(AssertionError, match="sddmm"):
        bench.check_against_reference(np, w, x, dy, mine)


def runpy_module(name: str):
    """scripts/<name> loaded as a module (its main() not run)."""
    import runpy
    import types

    return types.SimpleNamespace(**runpy.run_path(str(SCRIPTS / name), run_name="bench"))


@pytest.mark.slow
def test_bench_before_after_against_itself():
    """scripts/bench_before_after.py with HEAD as the earlier commit (minutes: the exported
    tree compiles its own kernels): both sides measured, ratios printed."""
    res = run_script(
        "bench_before_after.py",
        *("--before", "HEAD", "--configs", "32:0.25", "--rounds", "1", "--reps", "1"),
        *("--steps", "1", "--threads", "1"),
    )
    summary = last_json(res.stdout)
    row = summary["configs"]["32:0.25"]
    assert row["before_tokens_per_s"] > 0 and row["after_tokens_per_s"] > 0
    assert len(row["samples"]["before"]) == 2 and summary["cpu"]
