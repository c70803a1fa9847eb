"""Weight figures, statistics, block averaging and training-curve figures on tiny synthetic data."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from sparselm import plots
from sparselm.errors import SparseLMError
from sparselm.metrics import events_by_kind

PNG = b"\x89PNG\r\n\x1a\n"
H, V, E = 8, 30, 6


def dense_to_csr(w):
    """(data (N,), pattern) of a dense (R, C) matrix: the stored entries are its non-zeros."""
    rows, cols = np.nonzero(w)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[0]))])
    pat = SimpleNamespace(
        indices=cols.astype(np.int32), indptr=indptr.astype(np.int32), shape=w.shape
    )
    return w[rows, cols].copy(), pat


def tiny_params():
    """Dense embedding/softmax, a dense layer 0 and a CSR w_h in layer 1 with an empty row."""
    rng = np.random.default_rng(0)

    def u(*s):
        return rng.uniform(-0.1, 0.1, s).astype(np.float32)

    w_h = u(4 * H, H) * (rng.random((4 * H, H)) < 0.3)
    w_h[5] = 0.0  # an empty row: fan-in 0 must be drawn and counted
    data, pat = dense_to_csr(w_h)
    params = {
        "embedding.weight": u(V, E),
        "lstm.0.w_x": u(4 * H, E),
        "lstm.0.w_h": u(4 * H, H),
        "lstm.0.bias": u(4 * H),
        "lstm.1.w_x": u(4 * H, H),
        "lstm.1.w_h": data,
        "lstm.1.bias": u(4 * H),
        "softmax.weight": u(V, H),
        "softmax.bias": u(V),
    }
    return params, {"lstm.1.w_h": pat}, w_h


def assert_png(path, min_bytes=5000):
    assert path.is_file()
    blob = path.read_bytes()
    assert blob[:8] == PNG
    assert len(blob) > min_bytes


def test_plot_weights_writes_one_png_per_matrix_and_summary(tmp_path):
    params, patterns, _ = tiny_params()
    paths = plots.plot_weights(params, patterns, tmp_path / "w", title="tiny")
    names = [p.name for p in paths]
    assert names == [
        "embedding.weight.png",
        "lstm.0.w_x.png",
        "lstm.0.w_h.png",
        "lstm.1.w_x.png",
        "lstm.1.w_h.png",
        "softmax.weight.png",
        "summary.png",
    ]
    for p in paths:
        assert_png(p)


def test_weight_stats_exact_on_hand_made_matrices():
    w = np.array([[0.0, 0.05, -0.2], [0.1, -0.06, 0.0]])  # 4 non-zeros, 4 of 6 below 0.07
    csr = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [-0.01, 0.0, 0.08]])
    data, pat = dense_to_csr(csr)
    st = plots.weight_stats({"a.weight": w, "b": np.ones(3), "c.w": data}, {"c.w": pat}, 0.07)
    assert [s["name"] for s in st] == ["a.weight", "c.w"]  # the 1-D array is not a matrix
    a, c = st
    assert a == {
        "name": "a.weight",
        "kind": "dense",
        "shape": [2, 3],
        "size": 6,
        "nnz": 4,
        "density": 4 / 6,
        "mean_abs": pytest.approx(0.41 / 6),
        "share_below": 4 / 6,
        "threshold": 0.07,
    }
    # CSR: mean and share are over the 3 stored values, density over the 9 cells
    assert (c["kind"], c["shape"], c["size"], c["nnz"]) == ("csr", [3, 3], 9, 3)
    assert c["density"] == pytest.approx(3 / 9)
    assert c["mean_abs"] == pytest.approx(0.59 / 3)
    assert c["share_below"] == pytest.approx(1 / 3)
    json.dumps(st)  # plain Python numbers, ready for --json output


@pytest.mark.parametrize(
    "shape,max_cells", [((7, 5), 3), ((32, 8), 256), ((300, 530), 256), ((13, 11), 4)]
)
def test_block_mean_abs_csr_equals_dense(shape, max_cells):
    rng = np.random.default_rng(1)
    w = rng.normal(size=shape) * (rng.random(shape) < 0.2)
    w[shape[0] // 2] = 0.0
    data, pat = dense_to_csr(w)
    got = plots.block_mean_abs_csr(data, pat.indices, pat.indptr, pat.shape, max_cells)
    want = plots.block_mean_abs_dense(w, max_cells)
    assert got.shape == want.shape and max(got.shape) <= max_cells
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_block_mean_abs_dense_by_hand():
    w = np.arange(-12, 12, dtype=np.float64).reshape(4, 6)  # 2x3 blocks of 2x2 (max_cells 3)
    got = plots.block_mean_abs_dense(w, 3)
    want = np.abs(w).reshape(2, 2, 3, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(got, want)
    # uneven edge blocks are averaged over their own (smaller) size: 5 rows -> blocks of 2, 2, 1
    w5 = np.ones((5, 1))
    np.testing.assert_allclose(plots.block_mean_abs_dense(w5, 3), np.ones((3, 1)))


def test_block_density_csr_is_the_pattern_for_small_matrices():
    _, patterns, w_h = tiny_params()
    pat = patterns["lstm.1.w_h"]
    dens = plots.block_density_csr(pat.indices, pat.indptr, pat.shape)
    np.testing.assert_array_equal(dens, (w_h != 0).astype(float))


# --------------------------------------------------------------------------- curves


def write_run(folder, cfg, lines):
    folder.mkdir(parents=True)
    if cfg is not None:
        (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "metrics.jsonl").write_text("\n".join(lines))
    return folder


def metric_lines(scale, n=40, steps_per_epoch=10, tokens_per_step=700):
    out = []
    for s in range(1, n + 1):
        loss = 6.5 * scale * np.exp(-s / 25) + 4.5
        out.append(
            json.dumps(
                {
                    "event": "train",
                    "step": s,
                    "epoch": s / steps_per_epoch,
                    "tokens": s * tokens_per_step,
                    "lr": 1.0,
                    "loss": loss,
                    "ppl": float(np.exp(loss)),
                    "tokens_per_s": 1e4,
                    "elapsed": s,
                }
            )
        )
        if s % steps_per_epoch == 0:
            vl = loss + 0.1
            out.append(
                json.dumps(
                    {
                        "event": "valid",
                        "step": s,
                        "epoch": s / steps_per_epoch,
                        "tokens": s * tokens_per_step,
                        "loss": vl,
                        "ppl": float(np.exp(vl)),
                        "elapsed": s,
                    }
                )
            )
    out.append(
        json.dumps(
            {
                "event": "test",
                "step": n,
                "epoch": n / steps_per_epoch,
                "tokens": n * tokens_per_step,
                "loss": 4.7,
                "elapsed": n,
            }
        )
    )
    return out


def test_plot_curves_two_runs_with_corrupt_and_unknown_lines(tmp_path):
    a = write_run(
        tmp_path / "a",
        {"hidden": 1500, "sparsity": 0.0005, "dropout": 0.5, "optimizer": "sgd", "lr": 1.0},
        metric_lines(1.0),
    )
    extra = [
        "",
        json.dumps({"event": "checkpoint", "path": "x"}),
        "[1, 2]",
        "not json",
        '{"event": "train", "step": 41, "epo',
    ]  # cut off mid-write by a killed run
    b = write_run(tmp_path / "b", {"hidden": 200, "preset": "small"}, metric_lines(0.8) + extra)
    out = plots.plot_curves([a, b], tmp_path / "fig" / "curves.png")
    assert out == tmp_path / "fig" / "curves.png"
    assert_png(out, 20000)
    events = events_by_kind(b / "metrics.jsonl")
    assert len(events["train"]) == 40 and len(events["valid"]) == 4 and len(events["test"]) == 1


def test_plot_curves_given_labels_and_missing_config(tmp_path):
    a = write_run(tmp_path / "a", None, metric_lines(1.0))
    out = plots.plot_curves([a], tmp_path / "c.png", labels=["baseline"])
    assert_png(out)
    with pytest.raises(SparseLMError, match="labels"):
        plots.plot_curves([a], tmp_path / "c.png", labels=["x", "y"])


def test_plot_curves_missing_run_or_metrics_is_a_user_error(tmp_path):
    with pytest.raises(SparseLMError, match="not found"):
        plots.plot_curves([tmp_path / "nope"], tmp_path / "c.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseLMError, match="no metrics"):
        plots.plot_curves([tmp_path / "empty"], tmp_path / "c.png")
    only_junk = write_run(tmp_path / "junk", {}, ["", "{bad", json.dumps({"event": "train"})])
    with pytest.raises(SparseLMError, match="no metrics"):
        plots.plot_curves([only_junk], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_label_from_config():
    cfg = {
        "hidden": 1500,
        "emb": 1500,
        "layers": 2,
        "sparsity": 0.0005,
        "dropout": 0.5,
        "optimizer": "sgd",
        "lr": 1.0,
        "preset": "large",
    }
    assert plots.label_from_config(cfg) == "H=1500 d=0.0005 drop=0.5 sgd"
    assert plots.label_from_config({"hidden": 200, "layers": 3}) == "H=200 L=3"
    assert plots.label_from_config({"preset": "teach"}) == "teach"
    assert plots.label_from_config({}) == "run"


def test_identical_configs_get_distinct_labels(tmp_path):
    cfg = {"hidden": 8}
    runs = [tmp_path / "r1", tmp_path / "r2"]
    assert plots._unique_labels(runs, [cfg, cfg], None) == ["H=8 [r1]", "H=8 [r2]"]


def test_run_colours_stay_distinct_beyond_ten_runs():
    from sparselm.plots import _run_colors

    assert len({str(c) for c in _run_colors(16)}) == 16
    assert _run_colors(2) == ["C0", "C1"]
