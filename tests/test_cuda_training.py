"""The whole training step on the CUDA backend (Numba's simulator in CI, a GPU when
SPARSELM_REAL_CUDA=1): same losses as the CPU backend, exact float64 gradients, checkpoints that
move between backends.

Tiny models (V = 13, H = 4) keep the simulator, which runs every GPU thread as a Python thread,
to seconds per test. Its cost is per block and per barrier, so the launches here are one block
of 32 threads, and the tiled GEMM (dozens of barriers per call: about a second each in the
simulator) is replaced by a host stand-in with the same contract. The kernels themselves, the
GEMM and multi-block launches included, are tested in test_kernels_dense.py and
test_kernels_csr.py; here it is the step built from them. On a real GPU nothing is replaced.
"""

import json

import numpy as np
import pytest
from test_gradients import B, E, H, L, T, V, random_batch, random_state

from sparselm.config import make_config
from sparselm.kernels import get_backend
from sparselm.model import LanguageModel
from sparselm.optim import Optimizer
from sparselm.train import train


@pytest.fixture
def cuda_backend(monkeypatch):
    from sparselm.device import cuda_status, simulator_enabled

    usable, detail = cuda_status()
    if not usable:
        pytest.skip(f"CUDA unavailable: {detail}")
    from sparselm.kernels import cuda

    if simulator_enabled():
        monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 32)
        monkeypatch.setattr(cuda, "MAX_BLOCKS", 1)
        monkeypatch.setattr(cuda, "gemm", host_gemm)
    return get_backend("cuda")


def host_gemm(a, b, out, accumulate=False, trans_a=False, trans_b=False):
    """kernels.cuda.gemm's contract, computed on the host (simulator only, see above)."""
    from sparselm.kernels import cuda

    a, b = cuda.to_host(a), cuda.to_host(b)
    result = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        result += out.copy_to_host()
    out.copy_to_device(np.ascontiguousarray(result, dtype=out.dtype))
    return out


def tiny_cfg(**overrides):
    base = dict(emb=E, hidden=H, layers=L, bptt=T, batch_size=B, init_scale=0.5, seed=3)
    return make_config("small", **{**base, **overrides})


VARIANTS = {  # each runs every kind of operation at least once: dense/CSR, dropout, optimisers
    "dense-sgd": dict(),
    "csr-momentum-dropout": dict(sparsity=0.4, momentum=0.9, dropout=0.3),
    "csr-adam-factorized": dict(
        sparsity=0.4, optimizer="adam", lr=0.01, output="factorized", loss_reduction="token"
    ),
}


def three_steps(cfg, backend, masked: bool):
    """Losses, gradient norms and final parameters (host) of 3 training steps."""
    model = LanguageModel(cfg, V, backend=backend)
    opt = Optimizer(cfg, model.params.flat.size, model.dtype, backend)
    data, drop = np.random.default_rng(0), np.random.default_rng(1)
    state, losses, norms = None, [], []
    for _ in range(3):
        res = model.forward(random_batch(data, masked), state, drop, train=True)
        model.backward(res.cache)
        norm, applied = opt.step(model.params.flat, model.grads.flat, 0.5, model.sparse_grads)
        assert applied
        losses.append(res.loss)
        norms.append(norm)
        state = res.state
    return np.array(losses), np.array(norms), model.params.host_flat().copy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_steps_match_cpu(cuda_backend, variant):
    cfg = tiny_cfg(**VARIANTS[variant])
    masked = variant.startswith("csr-momentum")
    cpu = three_steps(cfg, get_backend("cpu"), masked)
    gpu = three_steps(cfg, cuda_backend, masked)
    # Adam moves an entry by ~lr whatever its gradient's size, so float32 rounding of a
    # near-zero gradient can differ by up to lr between backends: params to 1e-2 lr there.
    atol = {"losses": 2e-6, "norms": 2e-6, "params": 1e-4 if "adam" in variant else 2e-6}
    for what, a, b in zip(("losses", "norms", "params"), cpu, gpu):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=atol[what], err_msg=what)
    assert cpu[0][2] != cpu[0][0]  # the steps did change the model


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_gradients_equal_cpu(cuda_backend, variant):
    """The CUDA backward equals the CPU backward (itself finite-difference checked in
    test_gradients.py) in float64, for every parameter and the carried state."""
    cfg = tiny_cfg(dtype="float64", **VARIANTS[variant])
    results = []
    for backend in (get_backend("cpu"), cuda_backend):
        rng = np.random.default_rng(4)
        model = LanguageModel(cfg, V, backend=backend)
        batch, state = random_batch(rng, masked=True), random_state(model, rng)
        res = model.forward(batch, model.state_to_device(state), np.random.default_rng(7))
        state_grads = model.state_to_host(model.backward(res.cache))
        results.append((res.loss, model.grads.to_host(), state_grads))
    (loss_c, grads_c, state_c), (loss_g, grads_g, state_g) = results
    assert loss_g == pytest.approx(loss_c, rel=1e-12)
    for name in grads_c:
        np.testing.assert_allclose(
            grads_g[name], grads_c[name], rtol=1e-10, atol=1e-13, err_msg=name
        )
    for (dh_c, dc_c), (dh_g, dc_g) in zip(state_c, state_g):
        np.testing.assert_allclose(dh_g, dh_c, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(dc_g, dc_c, rtol=1e-10, atol=1e-13)


def test_float64_finite_differences_on_device(cuda_backend):
    """Central differences of the loss computed on the device, for one entry of each kind of
    parameter (embedding, CSR input and recurrent weights, bias, softmax): the device backward
    checked without the CPU as a reference. Two-point stencil, e = 1e-5: truncation ~e^2 and
    rounding ~1e-16 / e, both far below the 1e-6 relative tolerance."""
    cfg = tiny_cfg(dtype="float64", sparsity=0.4)
    model = LanguageModel(cfg, V, backend=cuda_backend)
    rng = np.random.default_rng(5)
    batch = random_batch(rng, masked=False)
    state = model.state_to_device(random_state(model, rng))
    model.backward(model.forward(batch, state, None).cache)
    grads = model.grads.to_host()
    host = model.params.to_host()  # edited on the host, copied to the device per loss

    def loss():
        model.params.load(host)
        return model.forward(batch, state, None, train=False).loss

    for name in ("embedding.weight", "lstm.0.w_x", "lstm.1.w_h", "lstm.1.bias", "softmax.weight"):
        flat, g = host[name].reshape(-1), grads[name].reshape(-1)
        k = int(np.argmax(np.abs(g)))  # the largest entry: resolvable to 1e-6 relative
        old, eps = flat[k], 1e-5
        flat[k] = old + eps
        up = loss()
        flat[k] = old - eps
        down = loss()
        flat[k] = old
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - g[k]) <= 1e-6 * abs(g[k]), (name, k, numeric, g[k])


def train_losses(run):
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "train"]


@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_resumes_on_the_other_backend(
    cuda_backend, tiny_corpus, tmp_path, first, second
):
    cfg = dict(
        emb=4,
        hidden=4,
        bptt=4,
        batch_size=3,
        epochs=1,
        log_every=1,
        eval_batch_size=3,
        seed=2,
        sparsity=0.5,
        optimizer="sgd",
        momentum=0.5,
        dropout=0.2,
    )
    full = train(
        make_config("small", **cfg, max_steps=5, device="cpu"),
        tmp_path / "full",
        tiny_corpus,
        quiet=True,
    )
    train(
        make_config("small", **cfg, max_steps=3, device=first),
        tmp_path / "part",
        tiny_corpus,
        quiet=True,
    )
    resumed = train(
        make_config("small", **cfg, max_steps=5, device=second),
        tmp_path / "part",
        tiny_corpus,
        resume=True,
        quiet=True,
    )
    np.testing.assert_allclose(
        train_losses(tmp_path / "part"), train_losses(tmp_path / "full"), rtol=1e-5
    )
    assert resumed["step"] == full["step"] == 5
