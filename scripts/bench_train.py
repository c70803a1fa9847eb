#!/usr/bin/env python
"""Training (and evaluation) tokens/s of sparselm against PyTorch, side by side in one process.

For each configuration both implementations train on the same token windows with the same
threads: our step (forward, BPTT, clip, SGD) and PyTorch's (nn.Embedding + nn.LSTM + nn.Linear +
cross-entropy + clip_grad_norm_ + SGD). They alternate, `--reps` times `--steps` steps each, and
the medians are compared, so machine noise hits both alike. The "softmax bound" is the speed the
step would have if everything but the output layer were free: the three output GEMMs (logits,
d(hidden), d(weight)) timed here, once after each repetition of our steps, so that it sees the same
machine as they do. Ends with one JSON line per configuration.

    python scripts/bench_train.py --configs small,medium --threads 2
    python scripts/bench_train.py --device cuda --configs small,large,h1500-d0.0005   # on a GPU

With --device cuda our step runs on the CUDA backend and PyTorch on its GPU; the softmax bound is
then timed with the backend's GEMM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

CONFIGS = {
    # name: (preset, overrides)
    "small": ("small", {}),
    "medium": ("medium", {"dropout": 0.0}),
    "large": ("large", {"dropout": 0.0}),
    "h1500": ("small", {"hidden": 1500}),
    "h1500-d0.0005": ("small", {"hidden": 1500, "sparsity": 0.0005}),
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--configs",
        default="small,medium",
        help=f"comma-separated, from {', '.join(CONFIGS)} (or H:D e.g. 650:0.01)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    ap.add_argument("--steps", type=int, default=5, help="training steps per repetition")
    ap.add_argument("--eval", action="store_true", help="also time evaluation (no gradients)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where both sides train (cuda: our CUDA backend and torch on the GPU)",
    )
    ap.add_argument(
        "--data",
        default=None,
        help="PTB folder (default $SPARSELM_DATA or ../shared/data/ptb); random tokens when absent",
    )
    ap.add_argument(
        "--grid",
        action="store_true",
        help="ours only: training tokens/s over H x density (see --hiddens, "
        "--densities), E = H, T = B = 20; with --plot FILE draws it",
    )
    ap.add_argument("--hiddens", default="200,650,1500,2500", help="H values for --grid")
    ap.add_argument("--densities", default="1,0.01,0.001,0.0005", help="densities for --grid")
    ap.add_argument("--plot", default=None, help="PNG file for the --grid figure")
    return ap.parse_args()


def set_threads(n: int) -> None:
    """Thread counts for every pool, then import sparselm: as in the CLI, the package sets
    OpenBLAS's thread timeout, which only takes effect if it comes before NumPy loads BLAS."""
    from sparselm.threads import set_threads as set_pools

    set_pools(n)


def config_for(name: str):
    from sparselm.config import make_config

    if name in CONFIGS:
        preset, overrides = CONFIGS[name]
    else:
        hidden, density = name.split(":")
        preset, overrides = (
            "small",
            {"hidden": int(hidden), "emb": int(hidden), "sparsity": float(density)},
        )
    return make_config(preset, **overrides)


def token_stream(args, needed: int):
    import numpy as np

    folder = Path(
        args.data
        or os.environ.get("SPARSELM_DATA")
        or Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"
    )
    if (folder / "ptb.train.txt").is_file():
        from sparselm.data import load_corpus

        ids = load_corpus(folder, splits=("train",)).stream("train")
        return ids[:needed] if len(ids) >= needed else np.resize(ids, needed), "ptb"
    return np.random.default_rng(0).integers(0, 10000, needed).astype(np.int32), "random"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Ours:
    """Our training step on `backend` (kernels.get_backend); each step reads its loss back to
    the host, so a GPU step is complete (synchronised) when train_step returns."""

    def __init__(self, cfg, vocab_size, backend):
        from sparselm.model import LanguageModel
        from sparselm.optim import Optimizer

        self.model = LanguageModel(cfg, vocab_size, backend=backend)
        self.opt = Optimizer(cfg, self.model.params.flat.size, self.model.dtype, backend)
        self.state = None

    def train_step(self, batch) -> float:
        res = self.model.forward(batch, self.state, None, train=True)
        self.model.backward(res.cache)
        self.opt.step(self.model.params.flat, self.model.grads.flat, 1.0, self.model.sparse_grads)
        self.state = res.state
        return res.loss

    def eval_step(self, batch) -> float:
        res = self.model.forward(batch, self.state, train=False)
        self.state = res.state
        return res.nll_sum


class Torch:
    """The same model and step in PyTorch, on its GPU when `device` is "cuda" and it has one."""

    def __init__(self, cfg, vocab_size, threads, device="cpu"):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.cfg = torch, cfg
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.emb = torch.nn.Embedding(vocab_size, cfg.emb).to(self.device)
        self.lstm = torch.nn.LSTM(cfg.emb, cfg.hidden, cfg.layers).to(self.device)
        self.out = torch.nn.Linear(cfg.hidden, vocab_size).to(self.device)
        self.params = [*self.emb.parameters(), *self.lstm.parameters(), *self.out.parameters()]
        for p in self.params:
            torch.nn.init.uniform_(p, -cfg.init_scale, cfg.init_scale)
        self.opt = torch.optim.SGD(self.params, lr=1.0)
        self.state = None

    def _loss(self, batch):
        t = self.torch
        x = t.from_numpy(batch.inputs.astype("int64")).to(self.device)
        y = t.from_numpy(batch.targets.astype("int64")).to(self.device)
        h, state = self.lstm(self.emb(x), self.state)
        self.state = tuple(s.detach() for s in state)
        logits = self.out(h).reshape(-1, self.out.out_features)
        # summed over T, averaged over B: what lr = 1.0 means in Zaremba's recipe
        return t.nn.functional.cross_entropy(logits, y.reshape(-1)) * x.shape[0]

    def train_step(self, batch) -> float:
        loss = self._loss(batch)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        self.opt.step()
        return float(loss)

    def eval_step(self, batch) -> float:
        with self.torch.no_grad():
            return float(self._loss(batch))


class SoftmaxBound:
    """tokens/s if only the output layer's three GEMMs cost anything (on the backend).

    Each call of `sample` times the three once (logits, d(hidden), d(weight)); the benchmark
    samples after each repetition of our steps, so that the bound and our speed see the same
    machine (these shared machines drift by a few percent within a minute).
    """

    def __init__(self, cfg, vocab_size, backend):
        import numpy as np

        self.n, self.backend = cfg.bptt * cfg.batch_size, backend
        rng = np.random.default_rng(0)
        self.h = backend.to_device(rng.standard_normal((self.n, cfg.hidden), dtype=np.float32))
        self.w = backend.to_device(rng.standard_normal((vocab_size, cfg.hidden), dtype=np.float32))
        self.logits = backend.empty((self.n, vocab_size), np.float32)
        self.dh = backend.empty((self.n, cfg.hidden), np.float32)
        self.dw = backend.zeros((vocab_size, cfg.hidden), np.float32)
        self.samples = []
        self.sample(keep=False)  # warm-up

    def sample(self, keep=True) -> None:
        be = self.backend
        start = time.perf_counter()
        be.gemm(self.h, self.w, self.logits, trans_b=True)
        be.gemm(self.logits, self.w, self.dh)
        be.gemm(self.logits, self.h, self.dw, accumulate=True, trans_a=True)
        be.to_host(self.dh[:1])  # waits for a GPU to finish
        if keep:
            self.samples.append(self.n / (time.perf_counter() - start))

    def tokens_per_s(self) -> float:
        return statistics.median(self.samples)


# Before each timed block: lets the other library's idle threads stop spinning (PyTorch's OpenMP
# threads spin for 200 ms after its work by default, and would hold the cores of ours).
SETTLE_S = 0.3


def time_steps(fn, batches) -> float:
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return sum(b.inputs.size for b in batches) / (time.perf_counter() - start)


def bench_config(name, args, torch_ok):
    from sparselm.data import StreamBatcher
    from sparselm.kernels import get_backend

    backend = get_backend(args.device)
    cfg = config_for(name)
    vocab = 10000
    need = cfg.batch_size * cfg.bptt * (args.steps * (args.reps + 1) + 2) + cfg.batch_size
    ids, source = token_stream(args, need)
    batcher = StreamBatcher(ids, cfg.batch_size, cfg.bptt)
    batches = [batcher.batch(i) for i in range(len(batcher))]
    ours = Ours(cfg, vocab, backend)
    peer = Torch(cfg, vocab, args.threads, args.device) if torch_ok else None
    t0 = time.perf_counter()
    ours.train_step(batches[0])  # compile (or load the Numba cache)
    first_step = time.perf_counter() - t0
    if peer:
        peer.train_step(batches[0])
    bound = SoftmaxBound(cfg, vocab, backend)  # its buffers are not the step's memory
    rss_start = rss_mb()
    rows = {"ours": [], "torch": []}
    for rep in range(args.reps):
        chunk = batches[1 + rep * args.steps : 1 + (rep + 1) * args.steps]
        rows["ours"].append(time_steps(ours.train_step, chunk))
        bound.sample()  # before PyTorch, whose OpenMP threads spin on after its steps
        if peer:
            rows["torch"].append(time_steps(peer.train_step, chunk))
    result = {
        "config": name,
        "hidden": cfg.hidden,
        "emb": cfg.emb,
        "sparsity": cfg.sparsity,
        "T": cfg.bptt,
        "B": cfg.batch_size,
        "threads": args.threads,
        "data": source,
        "device": backend.detail,
        "torch_device": peer.device if peer else None,
        "ours_tokens_per_s": statistics.median(rows["ours"]),
        "ours_runs": [round(x) for x in rows["ours"]],
        "first_step_s": round(first_step, 3),
        "rss_mb": round(rss_mb()),
        "rss_growth_mb": round(rss_mb() - rss_start, 1),
        "softmax_bound_tokens_per_s": bound.tokens_per_s(),
        "softmax_bound_runs": [round(x) for x in bound.samples],
    }
    result["share_of_softmax_bound"] = (
        result["ours_tokens_per_s"] / result["softmax_bound_tokens_per_s"]
    )
    # Without the peer (torch absent or --no-torch) its fields are null: "n/a", not a gap.
    result["torch_tokens_per_s"] = statistics.median(rows["torch"]) if peer else None
    result["torch_runs"] = [round(x) for x in rows["torch"]]
    result["ratio_ours_over_torch"] = (
        result["ours_tokens_per_s"] / result["torch_tokens_per_s"] if peer else None
    )
    if args.eval:
        chunk = batches[1 : 1 + args.steps]
        result["ours_eval_tokens_per_s"] = statistics.median(
            time_steps(ours.eval_step, chunk) for _ in range(args.reps)
        )
        if peer:
            result["torch_eval_tokens_per_s"] = statistics.median(
                time_steps(peer.eval_step, chunk) for _ in range(args.reps)
            )
    return result


def run_grid(args):
    """Training tokens/s of our model over H x density; one JSON line per point."""
    results = []
    for hidden in (int(h) for h in args.hiddens.split(",")):
        for density in (float(d) for d in args.densities.split(",")):
            args.no_torch = True
            r = bench_config(f"{hidden}:{density}", args, torch_ok=False)
            results.append(r)
            print(
                f"H={hidden:5d} d={density:<7g}: {r['ours_tokens_per_s']:8,.0f} tok/s "
                f"(softmax bound {r['softmax_bound_tokens_per_s']:,.0f})",
                file=sys.stderr,
                flush=True,
            )
    if args.plot:
        plot_grid(results, args.plot)
    return results


def plot_grid(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for density in sorted({r["sparsity"] for r in results}, reverse=True):
        pts = [(r["hidden"], r["ours_tokens_per_s"]) for r in results if r["sparsity"] == density]
        ax.plot(*zip(*pts), marker="o", label="dense" if density == 1 else f"density {density:g}")
    hiddens = sorted({r["hidden"] for r in results})
    bound = [
        statistics.median(r["softmax_bound_tokens_per_s"] for r in results if r["hidden"] == h)
        for h in hiddens
    ]
    ax.plot(hiddens, bound, "k--", lw=1, label="softmax bound (median)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden size H (E = H, T = B = 20, V = 10000)")
    ax.set_ylabel("training tokens / s")
    ax.set_title(f"sparselm training speed, {results[0]['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    args = parse_args()
    set_threads(args.threads)
    import numba

    torch_ok = False
    if not args.no_torch:
        try:
            import torch  # noqa: F401

            torch_ok = True
        except ImportError:
            print("torch not importable: PyTorch columns skipped", file=sys.stderr)
    print(
        f"threads={args.threads} numba_layer={numba.config.THREADING_LAYER} reps={args.reps} "
        f"steps/rep={args.steps}",
        file=sys.stderr,
    )
    if args.grid:
        for r in run_grid(args):
            print(json.dumps(r))
        return
    results = []
    for name in args.configs.split(","):
        r = bench_config(name.strip(), args, torch_ok)
        results.append(r)
        line = (
            f"{r['config']:>16}: ours {r['ours_tokens_per_s']:8,.0f} tok/s"
            f"  softmax bound {r['softmax_bound_tokens_per_s']:8,.0f}"
            f" ({r['share_of_softmax_bound']:.0%})"
        )
        if r["torch_tokens_per_s"] is not None:
            line += (
                f"  torch {r['torch_tokens_per_s']:8,.0f}  ratio {r['ratio_ours_over_torch']:.2f}x"
            )
        else:
            line += "  torch n/a"
        print(line, file=sys.stderr, flush=True)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
