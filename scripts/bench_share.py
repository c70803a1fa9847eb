#!/usr/bin/env python
"""Share of the softmax bound of `--hidden 1500 --sparsity 0.0005` for the sparselm at a checkout.

    python scripts/bench_share.py PATH_TO_CHECKOUT [--reps 9] [--steps 4]

Imports sparselm from the given checkout (any commit, e.g. a `git worktree`), trains on PTB
windows (random tokens without the corpus) with 2 threads and samples this repository's
SoftmaxBound (scripts/bench_train.py) after each repetition of steps. Prints one line: our
median tokens/s, the bound's median and their ratio. Alternating two checkouts in a shell loop
compares two versions of the step on the same machine, e.g.

    for i in 1 2 3; do for r in ../old ../main; do python scripts/bench_share.py $r; done; done
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkout", help="a sparselm repository checkout (its sparselm/ is imported)")
    ap.add_argument("--reps", type=int, default=9, help="repetitions of --steps steps")
    ap.add_argument("--steps", type=int, default=4, help="training steps per repetition")
    args = ap.parse_args()
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "2")
    root = str(Path(args.checkout).resolve())
    sys.path.insert(0, root)
    import sparselm  # first: it sets OpenBLAS's thread timeout

    if not sparselm.__file__.startswith(root):
        sys.exit(f"error: sparselm imported from {sparselm.__file__}, not from {root}")
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import bench_train  # this repository's bound and token stream

    from sparselm.config import make_config
    from sparselm.data import StreamBatcher
    from sparselm.kernels import get_backend
    from sparselm.model import LanguageModel
    from sparselm.optim import Optimizer

    be = get_backend("cpu")
    cfg = make_config("small", hidden=1500, sparsity=0.0005)
    model = LanguageModel(cfg, 10000, backend=be)
    opt = Optimizer(cfg, model.params.flat.size, model.dtype, be)
    n = cfg.bptt * cfg.batch_size
    ids, _ = bench_train.token_stream(
        argparse.Namespace(data=None), n * (args.reps * args.steps + 3) + cfg.batch_size
    )
    batcher = StreamBatcher(ids, cfg.batch_size, cfg.bptt)
    batches = [batcher.batch(i) for i in range(args.reps * args.steps + 2)]
    state = None

    def step(batch):
        nonlocal state
        res = model.forward(batch, state, None, train=True)
        model.backward(res.cache)
        sparse = getattr(model, "sparse_grads", None)  # older checkouts have none
        extra = () if sparse is None else (sparse,)
        opt.step(model.params.flat, model.grads.flat, 1.0, *extra)
        state = res.state

    for batch in batches[:2]:
        step(batch)
    bound = bench_train.SoftmaxBound(cfg, 10000, be)
    ours = []
    for rep in range(args.reps):
        chunk = batches[2 + rep * args.steps : 2 + (rep + 1) * args.steps]
        start = time.perf_counter()
        for batch in chunk:
            step(batch)
        ours.append(n * len(chunk) / (time.perf_counter() - start))
        bound.sample()
    mine, limit = statistics.median(ours), bound.tokens_per_s()
    print(
        f"{root}: ours {mine:,.0f} tokens/s, softmax bound {limit:,.0f}, share {mine / limit:.3f}"
    )


if __name__ == "__main__":
    main()
