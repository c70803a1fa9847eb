"""Corpus reading and batching.

PTB conventions: one sentence a line, tokens separated by whitespace, ``<eos>`` appended at every
line end. The vocabulary is built from the train split; a word unseen in train maps to ``<unk>``
when the vocabulary has it, otherwise it is an error naming the word, the file and the line.

Two batchings, as in the study:
- ``stream``: the id stream of a split is cut into B parallel streams read in windows of T steps;
  the hidden state is carried from one window to the next (truncated BPTT).
- ``sentence``: one line per sample, ``<eos>`` prepended as the start symbol so every token of the
  line (and its closing ``<eos>``) is predicted; lines of similar length share a batch, padded,
  with a mask; the state is reset for every batch.
Both predict every token of the split except at most B-1 dropped by the stream cut, and count
exactly how many they predicted, so perplexity = exp(sum of NLL / number of predicted tokens).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
PTB_SOURCE = (
    "Mikolov's simple-examples.tgz (simple-examples/data/ptb.*.txt), "
    "e.g. from https://www.fit.vutbr.cz/~imikolov/rnnlm/"
)
BUILTIN = "builtin"  # --data builtin: sparselm/synthetic.py's corpus, nothing on disk
DEFAULT_DATA = Path("data/ptb")


def user_data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME/sparselm, else ~/.local/share/sparselm."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sparselm"


def find_corpus(given: str | None, recorded: str = "", say: Callable[[str], Any] = print) -> str:
    """The corpus to use: `given` (--data or $SPARSELM_DATA) when set; else the one a checkpoint
    `recorded` when it is still there; else ./data/ptb, then the per-user PTB folder (where
    `sparselm data fetch ptb` puts it); else the built-in corpus, with one notice through `say`.
    """
    if given:
        return str(given)
    if recorded == BUILTIN or recorded and Path(recorded).is_dir():
        return recorded
    for folder in (DEFAULT_DATA, user_data_dir() / "ptb"):
        if folder.is_dir():
            return str(folder)
    say(
        f"note: no PTB folder found ({DEFAULT_DATA}, {user_data_dir() / 'ptb'}); using the "
        "built-in synthetic corpus (--data builtin); `sparselm data fetch ptb` installs PTB"
    )
    return BUILTIN


def source_record(source) -> str:
    """How a run's config records its corpus: "builtin" or the folder's absolute path."""
    return BUILTIN if str(source) == BUILTIN else str(Path(source).resolve())


def split_path(data_dir: Path, split: str) -> Path:
    """The file of a split: ptb.<split>.txt or <split>.txt inside data_dir."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} not found; `sparselm data fetch ptb` installs the Penn "
            f"Treebank ({PTB_SOURCE}); or pass --data DIR, set SPARSELM_DATA, or use --data builtin"
        )
    for name in (f"ptb.{split}.txt", f"{split}.txt"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"{data_dir} has no {split} split (expected ptb.{split}.txt or {split}.txt)")


def read_lines(path: Path) -> list[list[str]]:
    """The tokens of every non-blank line of a UTF-8 text file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte offset {exc.start})") from None
    if "\0" in text:  # no text corpus has one, and a checkpoint cannot store it
        line = text[: text.index("\0")].count("\n") + 1
        raise DataError(f"{path}, line {line}: contains a NUL character; is it a text file?")
    lines = [line.split() for line in text.splitlines()]
    lines = [tokens for tokens in lines if tokens]
    if not lines:
        raise DataError(f"{path} is empty")
    return lines


class Vocabulary:
    """Bijection between words and ids 0..V-1; ids ordered by train frequency, then
    alphabetically."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise DataError("vocabulary has duplicate words")

    @classmethod
    def from_lines(cls, lines: list[list[str]]) -> Vocabulary:
        counts = Counter(w for tokens in lines for w in tokens)
        counts[EOS] += len(lines)
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def eos(self) -> int:
        return self.index[EOS]

    def encode_lines(self, lines: list[list[str]], path: Path) -> list[np.ndarray]:
        """Ids of each line with <eos> appended: list of (len+1,) int32."""
        unk = self.index.get(UNK)
        out = []
        for number, tokens in enumerate(lines, 1):
            ids = [self.index.get(w, unk) for w in tokens]
            if unk is None and None in ids:
                word = tokens[ids.index(None)]
                raise DataError(
                    f"{path}, line {number}: word {word!r} is not in the vocabulary "
                    f"(which has no {UNK})"
                )
            ids.append(self.index[EOS])
            out.append(np.asarray(ids, dtype=np.int32))
        return out


@dataclass
class Corpus:
    """A vocabulary and the encoded lines of each split that was loaded (paths: for messages).

    oracle: for a corpus sampled from a known model (synthetic.py), an object whose
    token_nll(split) gives the exact -log P of every token of the split's stream, (N,) float64.
    """

    vocab: Vocabulary
    lines: dict[str, list[np.ndarray]]
    paths: dict[str, Path] = field(default_factory=dict)
    oracle: Any = None

    def stream(self, split: str) -> np.ndarray:
        """All ids of a split as one stream: (N,) int32."""
        return np.concatenate(self.lines[split])

    def n_tokens(self, split: str) -> int:
        return sum(len(x) for x in self.lines[split])

    def oracle_ppl(self, split: str, batching: str, batch_size: int) -> float | None:
        """The oracle's perplexity over exactly the tokens an evaluation with this batching and
        batch size predicts (see predicted_positions); None without an oracle."""
        if self.oracle is None:
            return None
        nll = self.oracle.token_nll(split)[
            predicted_positions(len(self.stream(split)), batching, batch_size)
        ]
        return float(np.exp(nll.mean()))


def predicted_positions(n: int, batching: str, batch_size: int) -> np.ndarray:
    """(n,) bool: which tokens of a split's n-token stream an evaluation predicts.

    sentence: all of them. stream (evaluation keeps the last partial window): the stream is cut
    into B rows of n // B tokens; the first token of each row is only an input, and the n % B
    tokens after the cut are dropped.
    """
    keep = np.ones(n, dtype=bool)
    if batching == "stream":
        row = n // batch_size
        keep[row * batch_size :] = False
        keep[: row * batch_size : row] = False
    return keep


def load_corpus(data_dir, splits=SPLITS, vocab: Vocabulary | None = None) -> Corpus:
    """Read the splits; build the vocabulary from train unless one (a checkpoint's) is given.

    data_dir "builtin" is the built-in synthetic corpus (synthetic.py), generated, not read.
    """
    if str(data_dir) == BUILTIN:
        from .synthetic import builtin_corpus

        return builtin_corpus(splits, vocab)
    needed = {*splits, *([] if vocab else ["train"])}
    paths = {split: split_path(data_dir, split) for split in needed}
    tokens = {split: read_lines(paths[split]) for split in splits}
    if vocab is None:
        train = tokens["train"] if "train" in tokens else read_lines(paths["train"])
        vocab = Vocabulary.from_lines(train)
    lines = {split: vocab.encode_lines(tokens[split], paths[split]) for split in splits}
    return Corpus(vocab, lines, {split: paths[split] for split in splits})


@dataclass
class Batch:
    """inputs, targets: (T, B) int32; mask: (T, B) float or None (all real); reset: state resets."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    reset: bool

    @property
    def n_tokens(self) -> int:
        return int(self.inputs.size if self.mask is None else np.count_nonzero(self.mask))


class StreamBatcher:
    """Windows of T steps over B parallel streams (truncated BPTT; state carried)."""

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, drop_last: bool = True):
        n = len(ids) // batch_size
        if n < 2:
            raise DataError(f"split of {len(ids)} tokens is too short for batch size {batch_size}")
        self.data = np.ascontiguousarray(ids[: n * batch_size].reshape(batch_size, n).T)  # (n, B)
        self.bptt = bptt
        # Training drops a last partial window (the classic recipe); evaluation keeps it so that
        # every token is predicted once.
        steps = n - 1
        self.n_batches = steps // bptt if drop_last else -(-steps // bptt)
        if self.n_batches < 1:
            raise DataError(
                f"split too short: {n} steps per stream with B={batch_size} is less "
                f"than one window of T={bptt}"
            )

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, index: int) -> Batch:
        start = index * self.bptt
        stop = min(start + self.bptt, self.data.shape[0] - 1)
        return Batch(self.data[start:stop], self.data[start + 1 : stop + 1], None, reset=index == 0)

    def batches(self, start: int = 0, epoch: int = 0):
        for index in range(start, self.n_batches):
            yield self.batch(index)


class SentenceBatcher:
    """One line per sample, similar lengths batched together, padded with a mask; state reset."""

    def __init__(
        self,
        lines: list[np.ndarray],
        batch_size: int,
        eos: int,
        seed: int = 0,
        shuffle: bool = True,
    ):
        order = sorted(range(len(lines)), key=lambda i: (len(lines[i]), i))
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.lines, self.eos, self.seed, self.shuffle = lines, eos, seed, shuffle

    def __len__(self) -> int:
        return len(self.groups)

    def order(self, epoch: int) -> list[int]:
        """The batch order of an epoch: a pure function of (seed, epoch), so resuming needs only
        the epoch and the cursor."""
        if not self.shuffle:
            return list(range(len(self.groups)))
        return list(np.random.default_rng([self.seed, epoch]).permutation(len(self.groups)))

    def batch(self, group: int) -> Batch:
        rows = [self.lines[i] for i in self.groups[group]]
        steps = max(len(r) for r in rows)
        inputs = np.zeros((steps, len(rows)), dtype=np.int32)
        targets = np.zeros_like(inputs)
        mask = np.zeros(inputs.shape, dtype=np.float32)
        for b, r in enumerate(rows):
            inputs[0, b] = self.eos
            inputs[1 : len(r), b] = r[:-1]
            targets[: len(r), b] = r
            mask[: len(r), b] = 1.0
        return Batch(inputs, targets, mask, reset=True)

    def batches(self, start: int = 0, epoch: int = 0):
        for group in self.order(epoch)[start:]:
            yield self.batch(group)


def make_batcher(
    corpus: Corpus,
    split: str,
    batching: str,
    batch_size: int,
    bptt: int,
    seed: int = 0,
    train: bool = True,
):
    """The batcher of one split for the configured batching; a DataError names the split's file."""
    if batching == "stream":
        try:
            return StreamBatcher(corpus.stream(split), batch_size, bptt, drop_last=train)
        except DataError as exc:
            where = corpus.paths.get(split, f"the {split} split")
            raise DataError(f"{where}: {exc}") from None
    return SentenceBatcher(corpus.lines[split], batch_size, corpus.vocab.eos, seed, shuffle=train)
