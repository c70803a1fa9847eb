"""Central finite differences (float64) against every hand-written backward pass.

For random entries of every parameter array and of the initial (carried) state, the analytic
gradient must match the central difference with a relative error below 1e-6. The fourth-order
stencil (8 L(w+e) - 8 L(w-e) - L(w+2e) + L(w-2e)) / 12e with e = 1e-4 has truncation error
~e^4 and rounding noise ~1e-16 |L| / e, both far below 1e-6 of the gradients we sample; entries
whose gradient is below 1e-2 of the array's largest are too small for any stencil to resolve to
1e-6 relative and are checked in absolute terms instead.
"""

import numpy as np
import pytest

from sparselm.config import make_config
from sparselm.data import Batch
from sparselm.model import LanguageModel

V, E, H, L, T, B = 13, 5, 4, 2, 4, 3
EPS = 1e-4


def tiny_model(**overrides) -> LanguageModel:
    cfg = make_config(
        "small",
        emb=E,
        hidden=H,
        layers=L,
        bptt=T,
        batch_size=B,
        dtype="float64",
        init_scale=0.5,
        seed=3,
        **overrides,
    )
    return LanguageModel(cfg, V)


def random_batch(rng, masked: bool) -> Batch:
    inputs = rng.integers(0, V, (T, B)).astype(np.int32)
    targets = rng.integers(0, V, (T, B)).astype(np.int32)
    mask = None
    if masked:
        mask = np.ones((T, B))
        mask[T - 1, 0] = mask[T - 2 :, 2] = 0.0  # ragged lengths, as sentence batching makes
    return Batch(inputs, targets, mask, reset=False)


def random_state(model, rng):
    return [(rng.normal(0, 0.5, (B, H)), rng.normal(0, 0.5, (B, H))) for _ in range(L)]


def loss_of(model, batch, state, seed):
    # A fresh generator with the same seed on every call: the dropout masks stay fixed.
    return model.forward(batch, state, np.random.default_rng(seed), train=True).loss


def rel_error(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-8)


def check_entries(array, grad, f, rng, what, count=6):
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    scale = np.abs(gflat).max()
    for k in rng.choice(flat.size, size=min(count, flat.size), replace=False):
        numeric = central_difference(flat, k, f)
        if abs(gflat[k]) >= 1e-2 * scale:
            ok = rel_error(numeric, gflat[k]) < 1e-6
        else:
            ok = abs(numeric - gflat[k]) < 1e-9 * max(scale, 1.0)
        assert ok, f"{what}[{k}]: numeric {numeric} analytic {gflat[k]}"


def central_difference(flat, k, f):
    old = flat[k]
    values = []
    for step in (EPS, -EPS, 2 * EPS, -2 * EPS):
        flat[k] = old + step
        values.append(f())
    flat[k] = old
    up, down, up2, down2 = values
    return (8 * (up - down) - (up2 - down2)) / (12 * EPS)


def run_gradient_check(model, masked=False, seed=0):
    rng = np.random.default_rng(seed)
    batch = random_batch(rng, masked)
    state = random_state(model, rng)
    res = model.forward(batch, state, np.random.default_rng(7), train=True)
    state_grads = model.backward(res.cache)
    grads = {name: g.copy() for name, g in model.grads.items()}
    f = lambda: loss_of(model, batch, state, 7)  # noqa: E731
    for name, array in model.params.items():
        check_entries(array, grads[name], f, rng, name)
    for layer in range(L):
        for which in range(2):
            check_entries(
                state[layer][which],
                state_grads[layer][which],
                f,
                rng,
                f"state {layer} {'hc'[which]}",
            )


@pytest.mark.parametrize("reduction", ["batch", "token"])
def test_dense_stream(reduction):
    run_gradient_check(tiny_model(loss_reduction=reduction))


def test_sentence_mask():
    run_gradient_check(tiny_model(batching="sentence"), masked=True)


def test_dropout_fixed_mask():
    run_gradient_check(tiny_model(dropout=0.3), masked=True, seed=1)


@pytest.mark.parametrize("density", [0.1, 0.01, 0.5])
def test_sparse(density):
    run_gradient_check(tiny_model(sparsity=density, dropout=0.2), seed=2)


def test_sparse_uniform_mask():
    run_gradient_check(tiny_model(sparsity=0.3, mask="uniform"), masked=True, seed=4)


@pytest.mark.parametrize("reduction", ["batch", "token"])
def test_factorized_output(reduction):
    # H = 4 = 2 x 2: the output layer sees h through its 2 row sums and 2 column sums.
    run_gradient_check(
        tiny_model(output="factorized", loss_reduction=reduction, dropout=0.2), masked=True, seed=5
    )


def test_factorized_output_sparse_gates():
    run_gradient_check(tiny_model(output="factorized", sparsity=0.3), seed=7)


def test_float32_mask_gives_the_float64_loss_of_a_float64_model():
    # SentenceBatcher's masks are float32; a float64 model must still weight rows by 1/B in
    # float64 (1/3 rounded to float32 is ~3e-8 off, relative).
    model, rng = tiny_model(), np.random.default_rng(5)
    batch = random_batch(rng, masked=True)
    mask32 = Batch(batch.inputs, batch.targets, batch.mask.astype(np.float32), batch.reset)
    state = random_state(model, rng)
    exact = model.forward(batch, state, train=True).loss
    assert abs(model.forward(mask32, state, train=True).loss - exact) <= 1e-15 * abs(exact)


@pytest.mark.parametrize("field", ["inputs", "targets"])
@pytest.mark.parametrize("bad", [V, -1])
def test_word_ids_outside_the_vocabulary_are_refused(field, bad):
    # Unchecked, id V would read row V-1 and its gradient would land in lstm.0.w_x's.
    model, rng = tiny_model(), np.random.default_rng(6)
    batch = random_batch(rng, masked=False)
    getattr(batch, field)[1, 2] = bad
    with pytest.raises(ValueError, match=rf"id {bad} is outside the vocabulary \[0, {V}\)"):
        model.forward(batch, random_state(model, rng), train=True)
    with pytest.raises(ValueError, match=rf"id {V} is outside"):
        model.logits(np.array([[0], [V]], dtype=np.int32))
