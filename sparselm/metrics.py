"""Run metrics (metrics.jsonl: one JSON object per event) and the progress display.

Events: "train" (every log_every steps: step, epoch (fractional), tokens, lr, loss, ppl, grad_norm,
tokens_per_s, elapsed), "valid" (end of each epoch), "test" (end of training). Loss is the mean
NLL per predicted token, ppl its exp.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per event, flushed at once so a crash loses nothing logged."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, record: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")


class Progress:
    """A tqdm bar on a terminal; plain lines (at most one per 10 s) when stderr is not a TTY."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True):
        self.enabled, self.desc, self.total, self.count = enabled, desc, total, initial
        self.bar = None
        self._last_line = time.monotonic()
        self._fields: dict[str, str] = {}
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False
            )

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)

    def show(self, **fields) -> None:
        """Display the latest metrics (loss, ppl, tokens/s, ...)."""
        self._fields = fields
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
        elif self.enabled and time.monotonic() - self._last_line >= 10:
            self._last_line = time.monotonic()
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"{self.desc} {self.count}/{self.total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
