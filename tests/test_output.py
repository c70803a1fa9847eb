"""The output heads (sparselm/heads/) against plain NumPy references.

Reference identity: the factorised layer is a dense softmax whose weight has the structure
W[v, i*S + j] = A[v, i] + B[v, j], because
h W^T = sum_ij h[i*S+j] (A[v,i] + B[v,j]) = r A^T + c B^T.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparselm.cli import main
from sparselm.config import make_config
from sparselm.counting import count_from_config
from sparselm.data import Batch
from sparselm.heads import HEADS, FactorizedHead, OutputHead, SoftmaxHead, grid_side, head_class
from sparselm.model import LanguageModel
from sparselm.workspace import Workspace

N, S, V = 7, 3, 11


def factorized(a, b, bias, grads=None) -> FactorizedHead:
    """A factorised head over host arrays A, B: (V, S), bias: (V,); grads: (dA, dB, dbias)."""
    names = ("softmax.row_weight", "softmax.col_weight", "softmax.bias")
    grads = (
        grads if grads is not None else (np.zeros_like(a), np.zeros_like(b), np.zeros_like(bias))
    )
    return FactorizedHead(dict(zip(names, (a, b, bias))), dict(zip(names, grads)), Workspace())


def reference_logits(h, a, b, bias):
    """Plain loops over the grid: r[n, i] = sum_j h[n, i*S+j], c[n, j] = sum_i h[n, i*S+j]."""
    side = a.shape[1]
    r = np.array([[sum(row[i * side + j] for j in range(side)) for i in range(side)] for row in h])
    c = np.array([[sum(row[i * side + j] for i in range(side)) for j in range(side)] for row in h])
    return r @ a.T + c @ b.T + bias


def reference_nll(logits, targets):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(targets)), targets]


def layer_inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.uniform(-1, 1, (N, S * S)).astype(dtype)
    a, b = (rng.normal(0, 0.5, (V, S)).astype(dtype) for _ in range(2))
    bias = rng.normal(0, 0.1, V).astype(dtype)
    targets = rng.integers(0, V, N).astype(np.int32)
    weights = rng.uniform(0.5, 1.5, N).astype(dtype)
    weights[2] = 0.0  # a padded row
    return h, a, b, bias, targets, weights


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_forward_matches_reference(dtype, tol):
    h, a, b, bias, targets, weights = layer_inputs(dtype)
    ref = reference_logits(h.astype(np.float64), a, b, bias)
    head = factorized(a, b, bias)
    np.testing.assert_allclose(head.logits(h), ref, rtol=tol, atol=tol)
    nll, _ = head.forward(h, targets, weights, grad=False)
    np.testing.assert_allclose(nll, reference_nll(ref, targets), rtol=tol, atol=tol)


def test_equals_dense_softmax_with_structured_weight():
    """Forward and every gradient equal the dense layer with W[v, i*S+j] = A[v,i] + B[v,j]."""
    h, a, b, bias, targets, weights = layer_inputs(np.float64, seed=1)
    w = (a[:, :, None] + b[:, None, :]).reshape(V, S * S)
    dw, dbias_d = np.zeros_like(w), np.zeros(V)
    dense = SoftmaxHead(
        {"softmax.weight": w, "softmax.bias": bias},
        {"softmax.weight": dw, "softmax.bias": dbias_d},
        Workspace(),
    )
    nll_d, cache_d = dense.forward(h, targets, weights, grad=True)
    dh_d = dense.backward(cache_d).copy()

    da, db, dbias_f = np.zeros_like(a), np.zeros_like(b), np.zeros(V)
    head = factorized(a, b, bias, (da, db, dbias_f))
    nll_f, cache_f = head.forward(h, targets, weights, grad=True)
    dh_f = head.backward(cache_f)
    np.testing.assert_allclose(head.logits(h), dense.logits(h), rtol=1e-12)
    np.testing.assert_allclose(nll_f, nll_d, rtol=1e-12)
    np.testing.assert_allclose(dh_f, dh_d, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dbias_f, dbias_d, rtol=1e-10, atol=1e-14)
    # chain rule through W = A (x) 1 + 1 (x) B: dA[v,i] = sum_j dW[v,i,j], dB[v,j] = sum_i dW[v,i,j]
    grid = dw.reshape(V, S, S)
    np.testing.assert_allclose(da, grid.sum(axis=2), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(db, grid.sum(axis=1), rtol=1e-10, atol=1e-14)


def test_gradients_overwrite():
    """Each gradient is written once per step: what the buffers held before does not matter."""
    h, a, b, bias, targets, weights = layer_inputs(np.float64, seed=2)
    grads = [np.full_like(a, 7.0), np.full_like(b, 7.0), np.full(V, 7.0)]
    head = factorized(a, b, bias, grads)
    head.backward(head.forward(h, targets, weights, grad=True)[1])
    fresh = [np.zeros_like(a), np.zeros_like(b), np.zeros(V)]
    head = factorized(a, b, bias, fresh)
    head.backward(head.forward(h, targets, weights, grad=True)[1])
    for got, new in zip(grads, fresh):
        np.testing.assert_array_equal(got, new)


def test_every_output_gradient_entry_by_finite_differences():
    """All entries of A, B, bias in a tiny float64 model: |numeric - analytic| < 1e-7 max|g|."""
    cfg = make_config(
        "small",
        emb=5,
        hidden=9,
        layers=2,
        bptt=4,
        batch_size=3,
        dtype="float64",
        init_scale=0.5,
        seed=3,
        output="factorized",
    )
    model = LanguageModel(cfg, V)
    rng = np.random.default_rng(4)
    batch = Batch(
        rng.integers(0, V, (4, 3)).astype(np.int32),
        rng.integers(0, V, (4, 3)).astype(np.int32),
        None,
        reset=False,
    )
    model.backward(model.forward(batch, None, train=True).cache)
    eps = 1e-5
    for name in ("softmax.row_weight", "softmax.col_weight", "softmax.bias"):
        flat, grad = model.params[name].reshape(-1), model.grads[name].reshape(-1).copy()
        numeric = np.empty_like(grad)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            up = model.forward(batch, None, train=False).loss
            flat[k] = old - eps
            down = model.forward(batch, None, train=False).loss
            flat[k] = old
            numeric[k] = (up - down) / (2 * eps)
        assert np.abs(numeric - grad).max() < 1e-7 * np.abs(grad).max(), name


def test_model_parameters_and_logits():
    cfg = make_config("small", emb=6, hidden=16, layers=1, dtype="float64", output="factorized")
    model = LanguageModel(cfg, V)
    names = [name for name, _ in model.params.items()]
    assert names[-3:] == ["softmax.row_weight", "softmax.col_weight", "softmax.bias"]
    assert "softmax.weight" not in names
    assert model.params["softmax.row_weight"].shape == (V, 4)
    inputs = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    logits, _ = model.logits(inputs)
    top, _, _, _ = model.hidden_forward(inputs.reshape(-1), inputs.shape[0])
    p = model.params
    ref = reference_logits(
        top.reshape(-1, 16), p["softmax.row_weight"], p["softmax.col_weight"], p["softmax.bias"]
    )
    np.testing.assert_allclose(logits, ref, rtol=1e-12)
    # forward's NLL is the same distribution's
    batch = Batch(inputs, inputs[::-1].copy(), None, reset=True)
    res = model.forward(batch, None, train=False)
    assert res.nll_sum == pytest.approx(reference_nll(ref, inputs[::-1].reshape(-1)).sum())


def test_shapes_and_square_check():
    assert grid_side(2500) == 50
    with pytest.raises(ValueError):
        grid_side(200)
    assert head_class("factorized").shapes(2500, 10000)["softmax.col_weight"] == (10000, 50)
    assert list(head_class("softmax").shapes(8, 5)) == ["softmax.weight", "softmax.bias"]
    with pytest.raises(ValueError, match="unknown output head"):
        head_class("adaptive")


def test_registry_names_every_head():
    """--output NAME picks HEADS[NAME]; every head keeps the contract's methods."""
    assert set(HEADS) == {"softmax", "factorized"}
    for name, cls in HEADS.items():
        assert cls.name == name and issubclass(cls, OutputHead)


def test_model_goes_through_its_head():
    for output, cls in (("softmax", SoftmaxHead), ("factorized", FactorizedHead)):
        cfg = make_config("small", emb=4, hidden=9, layers=1, dtype="float64", output=output)
        assert type(LanguageModel(cfg, V).head) is cls


def test_counting_study_factorized():
    counts = count_from_config(make_config("study", sparsity=0.001, output="factorized"), 10000)
    totals = counts["totals"]
    assert totals["softmax"] == 2 * 10000 * 50 + 10000
    assert totals["total_parameters"] == 6_000_000 + 100_000 + 1_010_000
    result = CliRunner().invoke(
        main, ["info", "--preset", "study", "--output", "factorized", "--json"]
    )
    assert result.exit_code == 0, result.output
    names = [m["name"] for m in json.loads(result.output)["matrices"]]
    assert names[-3:] == ["softmax.row_weight", "softmax.col_weight", "softmax.bias"]
    text = CliRunner().invoke(main, ["info", "--preset", "study", "--output", "factorized"]).output
    assert "softmax.row_weight" in text and "1,010,000" in text


def test_trains_on_tiny_corpus(tiny_corpus, tmp_path):
    from sparselm.train import train

    cfg = make_config(
        "small",
        emb=8,
        hidden=9,
        layers=2,
        bptt=5,
        batch_size=4,
        epochs=2,
        log_every=1,
        eval_batch_size=3,
        output="factorized",
        seed=2,
    )
    summary = train(cfg, tmp_path / "run", tiny_corpus, quiet=True)
    assert np.isfinite(summary["test_ppl"]) and summary["test_ppl"] < 40


def test_checkpoint_reloads(tiny_corpus, tmp_path):
    """load_model (resume, evaluate, generate) must accept a factorised checkpoint."""
    from sparselm import model_io
    from sparselm import train as train_module

    cfg = make_config(
        "small",
        emb=8,
        hidden=9,
        layers=1,
        bptt=5,
        batch_size=4,
        epochs=1,
        max_steps=2,
        output="factorized",
    )
    assert "softmax.row_weight" in model_io.expected_shapes(cfg, V)
    train_module.train(cfg, tmp_path / "run", tiny_corpus, quiet=True)
    model, _, _ = model_io.load_model(tmp_path / "run" / "last.h5")
    assert [name for name, _ in model.params.items()][-3:] == [
        "softmax.row_weight",
        "softmax.col_weight",
        "softmax.bias",
    ]


def test_config_offers_exactly_the_registered_heads():
    """config.py lists --output's choices itself (it must not import the heads, which load
    Numba); they must be the registry's."""
    import dataclasses

    from sparselm.config import TrainConfig
    from sparselm.heads import HEADS

    (field,) = [f for f in dataclasses.fields(TrainConfig) if f.name == "output"]
    assert sorted(field.metadata["choices"]) == sorted(HEADS)
