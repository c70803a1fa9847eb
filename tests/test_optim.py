"""Learning-rate schedules and optimiser steps against hand-computed values."""

import math

import numpy as np
import pytest

from sparselm.config import make_config
from sparselm.optim import Optimizer, RowSparse, clip_scale, learning_rate


def test_zaremba_small_schedule():
    cfg = make_config("small")
    assert [learning_rate(cfg, 0, e) for e in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_large_schedule_and_constant():
    cfg = make_config("large")
    assert learning_rate(cfg, 0, 13) == 1.0
    assert learning_rate(cfg, 0, 14) == pytest.approx(1 / 1.15)
    assert learning_rate(make_config("teach"), 10**6, 50) == 1.0


def test_warmups():
    lin = make_config("small", warmup="linear", warmup_steps=4, decay="constant")
    assert [learning_rate(lin, s, 0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    t2t = make_config("small", warmup="t2t", warmup_steps=10, decay="constant", lr=2.0)
    assert learning_rate(t2t, 0, 0) == pytest.approx(2.0 * 0.01)
    assert learning_rate(t2t, 5, 0) == pytest.approx(2.0 * 0.1)
    assert learning_rate(t2t, 10, 0) == 2.0


def test_halving():
    cfg = make_config("small", decay="halving", halving_epochs=(2, 5))
    assert [learning_rate(cfg, 0, e) for e in range(7)] == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_clip_scale():
    assert clip_scale(10.0, 5.0) == 0.5 and clip_scale(3.0, 5.0) == 1.0
    assert clip_scale(10.0, 0.0) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_with_clip_and_momentum(dtype):
    cfg = make_config("small", clip=1.0, momentum=0.9)
    opt = Optimizer(cfg, 2, dtype)
    p = np.array([1.0, 2.0], dtype)
    g = np.array([3.0, 4.0], dtype)  # norm 5 -> clipped to 1: [0.6, 0.8]
    norm, applied = opt.step(p, g, lr=0.5)
    assert applied and norm == pytest.approx(5.0)
    np.testing.assert_allclose(p, [1 - 0.3, 2 - 0.4], rtol=1e-6)
    opt.step(p, g, lr=0.5)  # v = 0.9 * [0.6, 0.8] + [0.6, 0.8]
    np.testing.assert_allclose(p, [0.7 - 0.5 * 1.14, 1.6 - 0.5 * 1.52], rtol=1e-6)


def test_adam_two_steps():
    cfg = make_config("small", optimizer="adam", clip=0.0, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    opt = Optimizer(cfg, 1, np.float64)
    p, g = np.array([1.0]), np.array([0.5])
    m = v = 0.0
    expected = 1.0
    for t in (1, 2):
        opt.step(p, g, 0.1)
        m = 0.9 * m + 0.1 * 0.5
        v = 0.999 * v + 0.001 * 0.25
        expected -= 0.1 * (m / (1 - 0.9**t)) / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
        assert p[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "kind",
    [dict(), dict(momentum=0.9), dict(optimizer="adam", lr=0.01)],
    ids=["sgd", "momentum", "adam"],
)
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_row_sparse_step_equals_dense_step(kind, clip):
    """Telling the optimiser which rows of a block can be non-zero changes nothing but speed:
    two steps give the same norms and parameters as without (the block sits mid-buffer here)."""
    cfg = make_config("small", clip=clip, **kind)
    n_rows, width, start = 50, 4, 7
    stop = start + n_rows * width
    rows = np.array([3, 17, 18, 41], np.int32)
    results = []
    for sparse in (None, RowSparse(start, stop, width, rows)):
        p = np.random.default_rng(0).normal(size=stop + 5)
        opt = Optimizer(cfg, p.size, np.float64)
        norms = []
        for step in range(2):
            g = np.random.default_rng(10 + step).normal(size=p.size)
            block = g[start:stop].reshape(n_rows, width)
            block[np.setdiff1d(np.arange(n_rows), rows)] = 0.0
            norms.append(opt.step(p, g, 0.5, sparse)[0])
        results.append((norms, p))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)
    assert clip == 0.0 or results[0][0][0] > clip  # the clip did act


def test_workspace_rows_grow_and_are_reused():
    """The optimiser's row buffers: a view of the first n rows, reallocated only to grow."""
    from sparselm.workspace import Workspace

    ws = Workspace()
    a = ws.rows("r", 5, 3, np.float32)
    b = ws.rows("r", 2, 3, np.float32)
    assert a.shape == (5, 3) and b.shape == (2, 3) and np.shares_memory(a, b)
    assert b.flags["C_CONTIGUOUS"]
    c = ws.rows("r", 9, 3, np.float32)
    assert c.shape == (9, 3) and not np.shares_memory(a, c)
    assert ws.rows("r", 0, 3, np.float32).shape == (0, 3)


def test_nonfinite_gradient_is_not_applied():
    opt = Optimizer(make_config("small", momentum=0.5), 2, np.float32)
    p = np.array([1.0, 2.0], np.float32)
    norm, applied = opt.step(p, np.array([np.nan, 1.0], np.float32), 1.0)
    assert not applied and math.isnan(norm)
    np.testing.assert_array_equal(p, [1.0, 2.0])
    assert not opt.state["momentum"].any()
