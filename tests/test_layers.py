"""The model's layers (sparselm/layers.py, lstm.LSTMLayer) and what their backward passes write."""

import numpy as np
import pytest

from sparselm.config import make_config
from sparselm.data import Batch
from sparselm.layers import Dropout, Embedding
from sparselm.model import LanguageModel
from sparselm.workspace import Workspace

V = 13


@pytest.mark.parametrize(
    "overrides",
    [dict(sparsity=0.4, dropout=0.3), dict(output="factorized", hidden=9, dropout=0.2)],
)
def test_backward_overwrites_every_gradient(overrides):
    """docs/DESIGN.md and docs/TUTORIAL.md: each backward writes every gradient entry once, so
    what the buffer held before (here NaN) does not matter."""
    cfg = make_config("small", **(dict(emb=5, hidden=6, layers=2, dtype="float64") | overrides))
    model = LanguageModel(cfg, V)
    rng = np.random.default_rng(0)
    ids = lambda: rng.integers(0, V, (4, 3)).astype(np.int32)  # noqa: E731
    batch = Batch(ids(), ids(), None, reset=True)
    cache = model.forward(batch, None, np.random.default_rng(1)).cache
    model.grads.flat[:] = 0.0
    model.backward(cache)
    fresh = model.grads.flat.copy()
    cache = model.forward(batch, None, np.random.default_rng(1)).cache
    model.grads.flat[:] = np.nan
    model.backward(cache)
    np.testing.assert_array_equal(model.grads.flat, fresh)
    assert np.any(fresh != 0)


def test_embedding_gathers_and_scatter_adds():
    rng = np.random.default_rng(2)
    weight, dweight = rng.normal(size=(V, 4)), np.full((V, 4), 7.0)
    layer = Embedding(weight, dweight, Workspace())
    ids = np.array([3, 1, 3, 0, 12, 3], np.int32)  # T = 2 steps of B = 3, repeated words
    x = layer.forward(ids, 2)
    np.testing.assert_array_equal(x.reshape(6, 4), weight[ids])
    dx = rng.normal(size=(2, 3, 4))
    layer.backward(ids, dx)
    expected = np.zeros((V, 4))
    np.add.at(expected, ids, dx.reshape(6, 4))
    np.testing.assert_allclose(dweight, expected, rtol=1e-15)


def test_dropout_is_inverted_and_its_backward_uses_the_mask():
    ws = Workspace()
    layer = Dropout(0.25, "d", ws, ws)
    x = np.ones((50, 40))
    y, mask = layer.forward(x, None, train=False)
    assert y is x and mask is None  # evaluation: x itself, no mask
    y, mask = layer.forward(x, np.random.default_rng(3), train=True)
    assert set(np.unique(mask)) == {0.0, 1.0 / 0.75}
    assert abs((mask == 0).mean() - 0.25) < 0.05
    np.testing.assert_array_equal(y, x * mask)
    d = np.full_like(x, 2.0)
    layer.backward(d, mask)
    np.testing.assert_array_equal(d, 2.0 * mask)
    assert Dropout(0.0, "z", ws, ws).forward(x, np.random.default_rng(3), train=True)[1] is None
