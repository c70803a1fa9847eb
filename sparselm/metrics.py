"""Run metrics (metrics.jsonl: one JSON object per event): its one writer, its one reader, and
the progress display.

Events: "train" (every log_every steps: step, epoch (fractional), tokens, lr, loss, ppl, grad_norm,
tokens_per_s, elapsed), "valid" (end of each epoch), "test" (end of training), "nonfinite" (a
rejected step), "anneal" (--decay plateau: step, epoch, anneals, the new lr) and "stop"
(--early-stop or --max-anneals ended the run: step, epoch, reason). Loss is the mean NLL per
predicted token, ppl its exp. Readers (resume, the grid tables, the curves) go through
read_lines / read_events / events_by_kind, which skip what a killed run leaves behind: a line cut
short, a line that is not a JSON object.
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


def read_lines(path: Path) -> list[tuple[str, dict]]:
    """(line as written, its JSON object) of each event of a metrics.jsonl; [] if it is missing.

    Blank lines and lines that are not JSON objects (e.g. a last line cut off by a kill) are
    skipped; the text is kept so that resume can rewrite the kept lines byte for byte.
    """
    path = Path(path)
    if not path.exists():
        return []
    pairs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            pairs.append((line, record))
    return pairs


def read_events(path: Path) -> list[dict]:
    """The event records of a metrics.jsonl, in order (see read_lines)."""
    return [record for _, record in read_lines(path)]


def events_by_kind(path: Path) -> dict[str, list[dict]]:
    """Records of a metrics.jsonl grouped by event ("train", "valid", "test", ...); records
    without a string "event" are left out."""
    events: dict[str, list[dict]] = {}
    for record in read_events(path):
        if isinstance(record.get("event"), str):
            events.setdefault(record["event"], []).append(record)
    return events


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
