"""The language model: embedding -> L LSTM layers (dense or CSR gates) -> output head.

The model is a composition of layers, each a forward/backward pair bound to its parameter and
gradient views: layers.Embedding, layers.Dropout, lstm.LSTMLayer and an output head from
heads.HEADS (chosen by cfg.output; the model never branches on it). Parameters follow
layout.parameter_shapes (gate rows in blocks i, f, g, o):
    embedding.weight (V, E); lstm.{l}.w_x (G, I) dense or (N,) CSR values; lstm.{l}.w_h (G, H) or
    (N,); lstm.{l}.bias (G,); then the head's (softmax.weight (V, H), softmax.bias (V,), or the
    factorised head's); I = E for l = 0, else H.
The CSR patterns and the initial values come from sparsity.py (the study's rule).
Dropout (Zaremba et al.) is applied to the non-recurrent connections only: the embedding output,
between layers, and before the head; inverted, so evaluation needs no rescaling.

Backends: parameters, gradients, the carried state and every buffer of the step live on the
model's backend (kernels.get_backend: NumPy or a CUDA device) and every operation of the step is
one of its kernels, so one implementation runs on both. Per step, only the batch's word ids,
row weights and dropout masks go to the device (the masks are drawn on the host from the run's
generator: a CPU and a GPU run draw the same masks, and --resume reproduces them), and the (T*B,)
NLL comes back for the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .csr import CSRMatrix
from .dense import DenseMatrix
from .heads import head_class
from .kernels import get_backend
from .layers import Dropout, Embedding
from .layout import parameter_shapes
from .lstm import LSTMLayer
from .optim import RowSparse
from .params import ParamSet
from .sparsity import build_patterns, init_parameters
from .workspace import Workspace


@dataclass
class ForwardResult:
    loss: float  # the differentiated objective: sum_n row_weight_n * nll_n
    nll_sum: float  # summed NLL of the real (unmasked) tokens
    n_tokens: int  # number of real tokens predicted
    state: list  # [(h, c)] per layer, (B, H) copies on the backend: the carried state
    cache: tuple | None


class LanguageModel:
    """Parameters, gradients and the hand-written forward and backward of the whole model."""

    def __init__(
        self,
        cfg: TrainConfig,
        vocab_size: int,
        params: dict | None = None,
        patterns: dict | None = None,
        backend=None,
    ):
        """params: name -> host array (a checkpoint's), or None to initialise from cfg.seed;
        backend: kernels.Backend the model runs on (default the CPU)."""
        self.cfg, self.vocab_size = cfg, vocab_size
        self.dtype = np.dtype(cfg.dtype)
        self.be = backend if backend is not None else get_backend("cpu")
        rng = np.random.default_rng(cfg.seed)
        self.patterns = patterns if patterns is not None else build_patterns(cfg, rng)
        host = ParamSet(self._shapes(), self.dtype)
        if params is None:
            init_parameters(host, self.patterns, cfg, rng)
        else:
            host.load(params)
        self.params = host if self.be.name == "cpu" else host.to_backend(self.be)
        self.grads = self.params.zeros_like()
        self.ws = Workspace(self.be)
        self.host_ws = self.ws if self.be.name == "cpu" else Workspace(get_backend("cpu"))
        self.sparse_grads: RowSparse | None = None  # set by backward()
        self._build_layers()

    # -- construction -------------------------------------------------------------------------
    def _shapes(self) -> dict:
        """The layout's shapes, a CSR gate's replaced by its stored values' (N,)."""
        shapes = parameter_shapes(self.cfg, self.vocab_size)
        nnz = {name: (len(p.indices),) for name, p in self.patterns.items()}
        return {name: nnz.get(name, shape) for name, shape in shapes.items()}

    def _build_layers(self) -> None:
        """The composition: embedding, dropout, then per layer an LSTM layer and a dropout, and
        the output head; each bound to its parameter and gradient views."""
        c, p, g, ws = self.cfg, self.params, self.grads, self.ws
        self.embedding = Embedding(p["embedding.weight"], g["embedding.weight"], ws)
        self.dropouts = [
            Dropout(c.dropout, f"drop{i}", ws, self.host_ws) for i in range(c.layers + 1)
        ]
        self.lstm: list[LSTMLayer] = []
        for layer in range(c.layers):
            w_x, w_h, bias = (f"lstm.{layer}.{part}" for part in ("w_x", "w_h", "bias"))
            weights = self._operator(w_x, p[w_x]), self._operator(w_h, p[w_h]), p[bias]
            grads = g[w_x], g[w_h], g[bias]
            self.lstm.append(LSTMLayer(*weights, *grads, ws, f"l{layer}."))
        self.head = head_class(c.output)(p, g, ws)

    def _operator(self, name: str, values: np.ndarray):
        p = self.patterns.get(name)
        if p is None:
            return DenseMatrix(values, self.be)
        if isinstance(p, CSRMatrix):  # built here: reuse its transpose pattern
            return p.with_data(values)
        return CSRMatrix(values, p.indices, p.indptr, tuple(p.shape))

    def init_state(self, batch_size: int) -> list:
        """[(h, c)] of zeros, (B, H) on the backend, per layer."""
        zeros = lambda: self.be.zeros((batch_size, self.cfg.hidden), self.dtype)  # noqa: E731
        return [(zeros(), zeros()) for _ in range(self.cfg.layers)]

    def state_to_host(self, state) -> list | None:
        """[(h, c)] as NumPy arrays (for checkpoints), or None."""
        if state is None:
            return None
        return [(self.be.to_host(h), self.be.to_host(c)) for h, c in state]

    def state_to_device(self, state) -> list | None:
        """[(h, c)] host arrays (a checkpoint's) as this model's dtype on its backend."""
        if state is None:
            return None
        return [tuple(self.be.to_device(np.asarray(a, self.dtype)) for a in pair) for pair in state]

    def _clone(self, a):
        out = self.be.empty(a.shape, a.dtype)
        self.be.copy(out, a)
        return out

    # -- forward ------------------------------------------------------------------------------
    def forward(self, batch, state=None, rng=None, train: bool = True) -> ForwardResult:
        """Loss of one batch. batch.inputs, targets: (T, B) int32 host arrays; state: [(h, c)]
        (B, H) on the backend, or None.

        With train=True the logits gradient is computed on the way (fused kernel) and the cache
        for backward() is returned; dropout masks are drawn from rng (required when dropout > 0).
        """
        be = self.be
        steps, nb = batch.inputs.shape
        n = steps * nb
        self.check_ids(batch.inputs, "input")
        self.check_ids(batch.targets, "target")
        if batch.reset:
            state = None
        ids = be.to_device(batch.inputs.reshape(n))
        x, new_state, masks, layer_caches = self.hidden_forward(ids, steps, state, rng, train)
        row_w = self._row_weights(batch)
        targets, row_w_dev = be.to_device(batch.targets.reshape(n)), be.to_device(row_w)
        nll, out_cache = self.head.forward(x.reshape(n, self.cfg.hidden), targets, row_w_dev, train)
        nll = be.to_host(nll)
        real = nll if batch.mask is None else nll * batch.mask.reshape(n)
        cache = None
        if train:  # the words of the batch: the embedding gradient's only non-zero rows
            words = be.to_device(np.unique(batch.inputs).astype(np.int32))
            cache = (ids, words, steps, masks, layer_caches, out_cache)
        return ForwardResult(
            float(np.dot(nll, row_w)), float(real.sum()), batch.n_tokens, new_state, cache
        )

    def check_ids(self, ids: np.ndarray, what: str = "word") -> None:
        """Raise ValueError unless every id of ids (any shape, integer, a host array) is in [0, V).

        The embedding gather and the softmax read rows by id without bounds checks (a stray id
        would read a neighbouring row, and its gradient would be scattered past the embedding's
        gradient into the next parameter's), so ids are checked where they enter the model.
        """
        if ids.size == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} id {bad} is outside the vocabulary [0, {self.vocab_size}) of this model"
            )

    def hidden_forward(self, ids, steps: int, state=None, rng=None, train: bool = False):
        """Embedding and LSTM layers. ids: (T*B,) int32 on the backend, time-major; state:
        [(h, c)] (B, H) or None.

        Returns top: (T, B, H) the input of the output layer (after dropout), the new state
        (copies), the dropout masks and the per-layer caches.
        """
        nb = ids.shape[0] // steps
        if state is None:
            state = self.init_state(nb)
        x, mask = self.dropouts[0].forward(self.embedding.forward(ids, steps), rng, train)
        masks, layer_caches, new_state = [mask], [], []
        for layer, dropout, (h0, c0) in zip(self.lstm, self.dropouts[1:], state):
            out, (h, cc), cache = layer.forward(x, h0, c0)
            layer_caches.append(cache)
            new_state.append((self._clone(h), self._clone(cc)))
            x, mask = dropout.forward(out, rng, train)
            masks.append(mask)
        return x, new_state, masks, layer_caches

    def logits(self, inputs, state=None):
        """Next-word logits (no dropout), on the CPU backend. inputs: (T, B) int32 -> (T*B, V)
        float, new state."""
        if self.be.name != "cpu":
            raise ValueError("logits() runs on the CPU backend; load the model with device cpu")
        self.check_ids(inputs, "input")
        top, new_state, _, _ = self.hidden_forward(
            np.ascontiguousarray(inputs).reshape(-1), inputs.shape[0], state
        )
        return self.head.logits(top.reshape(-1, self.cfg.hidden)), new_state

    def _row_weights(self, batch) -> np.ndarray:
        """Each row's factor in the differentiated loss: (T*B,) float, a host array.

        "batch": sum over steps of the batch mean (Zaremba/TensorFlow; lr 1.0 refers to it);
        "token": the mean NLL per real token.
        """
        steps, nb = batch.inputs.shape
        scale = 1.0 / nb if self.cfg.loss_reduction == "batch" else 1.0 / max(batch.n_tokens, 1)
        w = self.host_ws.get("row_weights", (steps * nb,), self.dtype)
        if batch.mask is None:
            w.fill(scale)
        else:
            # The mask (0/1, any float dtype) is copied exactly, then scaled in the model's dtype:
            # a float32 mask times a Python float would round 1/B to float32 (NumPy's NEP 50).
            w[...] = batch.mask.reshape(-1)
            w *= scale
        return w

    # -- backward -----------------------------------------------------------------------------
    def backward(self, cache) -> list:
        """Fill self.grads (each array written once) with the gradient of the forward's loss.

        Returns [(dh0, dc0)] per layer: the gradient reaching the initial (carried) state.
        Afterwards `sparse_grads` says which rows of the embedding gradient can be non-zero.
        """
        ids, words, steps, masks, layer_caches, out_cache = cache
        start, stop = self.grads.span("embedding.weight")
        self.sparse_grads = RowSparse(start, stop, self.cfg.emb, words)
        nb, nh = ids.shape[0] // steps, self.cfg.hidden
        # Every gradient is written once per step (overwritten); the embedding's, a scatter-add
        # over the batch's words, is cleared by its layer: no zeroing pass over all parameters.
        d = self.head.backward(out_cache).reshape(steps, nb, nh)
        state_grads: list = [None] * len(self.lstm)
        for layer in range(len(self.lstm) - 1, -1, -1):
            self.dropouts[layer + 1].backward(d, masks[layer + 1])
            d, dh0, dc0 = self.lstm[layer].backward(d, layer_caches[layer])
            state_grads[layer] = (self._clone(dh0), self._clone(dc0))
        self.dropouts[0].backward(d, masks[0])
        self.embedding.backward(ids, d)
        return state_grads
