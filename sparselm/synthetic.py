"""The built-in corpus (``--data builtin``): a synthetic language whose probabilities are exact.

A newcomer can train with nothing on disk, and see how close the model gets to what is learnable
at all: the corpus is sampled from a known probabilistic grammar, so the best possible perplexity
(the *oracle*'s) is computed exactly, not estimated.

The language. 442 invented words (consonant-vowel syllables drawn from the seed; no
third-party text) in classes: determiners, names, adjectives, nouns (singular and plural:
stem + "s"), intransitive and transitive verbs (singular: stem + "t", plural: the stem),
prepositions, adverbs, relative pronouns, conjunctions. Within a class the words follow a Zipf law
(p ∝ 1/rank). Sentences follow a right-linear (regular) grammar, ``GRAMMAR`` below, with
subject-verb agreement across an optional relative clause, adjective chains, prepositional
phrases and coordination. A valid sentence: "belo fedevi rugut gono defes dukut bokide gose gosi"
(a name; a relative clause whose object, "gono defes", is plural; then the main verb "dukut",
singular like "belo"). One determiner word is shared by the singular and the plural class (like
English "the"), so the grammar's state is ambiguous until the noun comes.

The oracle. The grammar is a probabilistic finite automaton: from state s, a rule emits a word of
class c and moves to state s'. For each word w, M[w][s, s'] = sum over the rules s -> (c, s') of
P(rule) P(w | c), and P(w_1 .. w_n) = e_start M[w_1] ... M[w_n] 1 (the forward algorithm), summing
over every derivation. Every sentence ends with ``<eos>``, the only word that reaches the final
state. The forward vector, normalised after each word, gives P(w_t | w_1 .. w_{t-1}) exactly; its
negative log is the oracle's NLL of token t (``<eos>`` included, exactly as the model predicts it).

Comparable with the model's perplexity. The model's is exp(sum NLL / predicted tokens) over the
tokens its batching predicts (data.predicted_positions: stream batching skips the first token of
each of the B streams and the < B tokens cut off the end). The oracle's perplexity is taken over
exactly the same tokens. Sentences are sampled independently, so the best possible prediction of
a token conditions on its own sentence's prefix only: the model, which carries its state across
sentences in stream batching, can do no better than the oracle in expectation. The oracle
predicts a sentence's first word from the start state, which the model can tell from the <eos>
before it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import EOS, SPLITS, Corpus, Vocabulary
from .errors import DataError

SEED = 2026
# Sentences per split: 8.9 tokens each on average (with <eos>), so 177,402 train tokens: one
# teach epoch (B = T = 20) is 443 steps (docs/RESULTS.md has its time and perplexities).
SIZES = {"train": 20000, "valid": 2000, "test": 2000}
SOURCE = "the built-in synthetic corpus (sparselm/synthetic.py)"

# Word classes: name -> number of words. N_SG/N_PL and V*_SG/V*_PL share stems.
CLASS_SIZES = {"NAME": 30, "ADJ": 40, "N": 100, "VI": 30, "VT": 40, "PREP": 8, "ADV": 15}
CLOSED = {"DET": 1, "DET_SG": 2, "DET_PL": 2, "REL": 2, "CONJ": 2}


# The grammar: state -> [(word class, next state, probability)]. `s`/`p` in a name is the number
# the state remembers (subject number for agreement; the noun's, after a determiner). END is final.
def _grammar() -> dict[str, list[tuple[str, str, float]]]:
    g: dict[str, list[tuple[str, str, float]]] = {
        "S0": [("DET_SG", "NA_s", 0.4), ("DET_PL", "NA_p", 0.35), ("NAME", "SUBJ_s", 0.25)],
        "OBJ": [("DET_SG", "OA_s", 0.45), ("DET_PL", "OA_p", 0.35), ("NAME", "VPD", 0.2)],
        "PP": [("DET_SG", "PA_s", 0.45), ("DET_PL", "PA_p", 0.35), ("NAME", "VPD", 0.2)],
        "VPD": [
            (EOS, "END", 0.5),
            ("PREP", "PP", 0.25),
            ("ADV", "ADVD", 0.12),
            ("CONJ", "S0", 0.13),
        ],
        "ADVD": [(EOS, "END", 0.8), ("CONJ", "S0", 0.2)],
    }
    for m in "sp":
        M = "SG" if m == "s" else "PL"
        g[f"NA_{m}"] = [("ADJ", f"NA_{m}", 0.3), (f"N_{M}", f"SUBJ_{m}", 0.7)]
        g[f"OA_{m}"] = [("ADJ", f"OA_{m}", 0.25), (f"N_{M}", "VPD", 0.75)]
        g[f"PA_{m}"] = [("ADJ", f"PA_{m}", 0.25), (f"N_{M}", "VPD", 0.75)]
        # subject of number m: a main verb agreeing with it, or a relative clause first
        g[f"SUBJ_{m}"] = [("REL", f"RC_{m}", 0.2), (f"VI_{M}", "VPD", 0.35)]
        g[f"SUBJ_{m}"].append((f"VT_{M}", "OBJ", 0.45))
        g[f"RC_{m}"] = [(f"VI_{M}", f"RCE_{m}", 0.4), (f"VT_{M}", f"RO_{m}", 0.6)]
        g[f"RO_{m}"] = [
            ("DET_SG", f"ROA_{m}s", 0.45),
            ("DET_PL", f"ROA_{m}p", 0.35),
            ("NAME", f"RCE_{m}", 0.2),
        ]
        for k in "sp":  # the relative clause's object (number k) must not erase m
            K = "SG" if k == "s" else "PL"
            g[f"ROA_{m}{k}"] = [("ADJ", f"ROA_{m}{k}", 0.25), (f"N_{K}", f"RCE_{m}", 0.75)]
        g[f"RCE_{m}"] = [(f"VI_{M}", "VPD", 0.45), (f"VT_{M}", "OBJ", 0.55)]
    g["END"] = []
    return g


GRAMMAR = _grammar()


def _invent_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """`count` new distinct words of 2-3 consonant-vowel syllables (ending in a vowel)."""
    consonants, vowels = list("bdfgklmnprsvz"), list("aeiou")
    words: list[str] = []
    while len(words) < count:
        n = 2 + int(rng.random() < 0.4)
        word = "".join(
            consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))]
            for _ in range(n)
        )
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


@dataclass
class Grammar:
    """The automaton with its lexicon: classes[name] = (words, probabilities); states indexed."""

    states: list[str]
    classes: dict[str, tuple[list[str], np.ndarray]]
    rules: dict[str, list[tuple[str, str, float]]]

    @classmethod
    def build(cls, seed: int = SEED) -> Grammar:
        rng = np.random.default_rng([seed, 0])
        taken: set[str] = set()
        closed = {name: _invent_words(rng, n, taken) for name, n in CLOSED.items()}
        stems = {name: _invent_words(rng, n, taken) for name, n in CLASS_SIZES.items()}
        lists = {
            "DET_SG": closed["DET"] + closed["DET_SG"],  # the shared determiner is the commonest
            "DET_PL": closed["DET"] + closed["DET_PL"],
            "REL": closed["REL"],
            "CONJ": closed["CONJ"],
            "N_SG": stems["N"],
            "N_PL": [w + "s" for w in stems["N"]],
            **{name: stems[name] for name in ("NAME", "ADJ", "PREP", "ADV")},
        }
        for verb in ("VI", "VT"):
            lists[f"{verb}_SG"] = [w + "t" for w in stems[verb]]
            lists[f"{verb}_PL"] = stems[verb]
        classes = {name: (words, _zipf(len(words))) for name, words in lists.items()}
        classes[EOS] = ([EOS], np.ones(1))
        return cls(list(GRAMMAR), classes, GRAMMAR)

    @property
    def words(self) -> list[str]:
        """Every word the grammar can emit, <eos> included, each once."""
        return sorted({w for words, _ in self.classes.values() for w in words})

    def transition_tensor(self, vocab: Vocabulary) -> np.ndarray:
        """M: (V, S, S) float64, M[w, s, s'] = P(emit w and move s -> s'); rows sum to 1 over
        (w, s') for every state but END."""
        index = {s: i for i, s in enumerate(self.states)}
        m = np.zeros((len(vocab), len(self.states), len(self.states)))
        for state, rules in self.rules.items():
            for name, nxt, p in rules:
                words, probs = self.classes[name]
                for word, q in zip(words, probs):
                    m[vocab.index[word], index[state], index[nxt]] += p * q
        return m

    def sample(self, rng: np.random.Generator, count: int) -> list[list[str]]:
        """`count` sentences (without the closing <eos>), sampled in parallel, deterministic in
        the generator's state."""
        tables = _SamplingTables(self)
        state = np.zeros(count, dtype=np.int64)  # S0 is the first state
        out: list[list[str]] = [[] for _ in range(count)]
        live = np.arange(count)
        while live.size:
            rule = _draw(tables.rule_cum[state[live]], rng.random(live.size))
            klass = tables.rule_class[state[live], rule]
            word = _draw(tables.word_cum[klass], rng.random(live.size))
            state[live] = tables.rule_next[state[live], rule]
            for i, c, w in zip(live, klass, word):
                if c != tables.eos_class:
                    out[i].append(tables.words[c][w])
            live = live[state[live] != tables.end]
        return out


class _SamplingTables:
    """Padded cumulative tables of the grammar for vectorised sampling."""

    def __init__(self, g: Grammar):
        names = list(g.classes)
        self.words = [g.classes[n][0] for n in names]
        self.eos_class = names.index(EOS)
        self.end = g.states.index("END")
        width = max(len(r) for r in g.rules.values())
        s = len(g.states)
        self.rule_cum = np.ones((s, width))  # padding never drawn: cumulative 1
        self.rule_class = np.zeros((s, width), dtype=np.int64)
        self.rule_next = np.zeros((s, width), dtype=np.int64)
        for i, state in enumerate(g.states):
            rules = g.rules[state]
            if rules:
                self.rule_cum[i, : len(rules)] = np.cumsum([p for _, _, p in rules])
            for j, (name, nxt, _) in enumerate(rules):
                self.rule_class[i, j] = names.index(name)
                self.rule_next[i, j] = g.states.index(nxt)
        self.word_cum = np.ones((len(names), max(len(w) for w in self.words)))
        for i, name in enumerate(names):
            probs = g.classes[name][1]
            self.word_cum[i, : len(probs)] = np.cumsum(probs)


def _draw(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index drawn from each row: cumulative (K, W) float, u (K,) uniform in [0, 1) -> (K,) int.

    The last real entry may round to just below 1; u beyond it takes that entry, never padding.
    """
    index = (u[:, None] >= cumulative).sum(axis=1)
    last = (cumulative < 1.0 - 1e-9).sum(axis=1)  # index of each row's last real entry
    return np.minimum(index, last)


def _zipf(n: int) -> np.ndarray:
    """(n,) float64 probabilities ∝ 1 / rank."""
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


class Oracle:
    """Exact per-token NLL of the corpus under the grammar that generated it.

    lines: split -> the corpus's encoded sentences, each (n,) int32 ending with <eos>.
    """

    def __init__(self, grammar: Grammar, vocab: Vocabulary, lines: dict[str, list[np.ndarray]]):
        self.m = grammar.transition_tensor(vocab)  # (V, S, S)
        self.start = grammar.states.index("S0")
        self.lines = lines
        self._nll: dict[str, np.ndarray] = {}

    def sentence_nll(self, ids: np.ndarray) -> np.ndarray:
        """ids: (n,) int32, a sentence with its <eos> -> (n,) float64, -log P(w_t | w_<t)."""
        alpha = np.zeros(self.m.shape[1])
        alpha[self.start] = 1.0
        out = np.empty(len(ids))
        for t, w in enumerate(ids):
            alpha = alpha @ self.m[w]
            p = alpha.sum()
            out[t] = -np.log(p) if p > 0 else np.inf
            if p > 0:
                alpha /= p
        return out

    def token_nll(self, split: str) -> np.ndarray:
        """(N,) float64 over the split's stream (the lines concatenated), computed once."""
        if split not in self._nll:
            self._nll[split] = np.concatenate([self.sentence_nll(x) for x in self.lines[split]])
        return self._nll[split]


@functools.lru_cache(maxsize=4)
def _grammar_of(seed: int) -> Grammar:
    return Grammar.build(seed)


@functools.lru_cache(maxsize=8)
def _split_sentences(seed: int, split: str, count: int) -> list[list[str]]:
    """The sentences of a split, sampled from its own generator [seed, split number]; cached
    (tests and evaluate load the corpus repeatedly): callers must not modify them."""
    rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
    return _grammar_of(seed).sample(rng, count)


def builtin_corpus(
    splits=SPLITS, vocab: Vocabulary | None = None, seed: int = SEED, sizes: dict | None = None
) -> Corpus:
    """The built-in corpus: `sizes` sentences per split (default SIZES), deterministic in seed.

    The vocabulary (unless a checkpoint's is given) is every word of the grammar, ordered by
    train frequency then alphabetically, so no valid or test word is ever unknown.
    """
    sizes = {**SIZES, **(sizes or {})}
    grammar = _grammar_of(seed)
    tokens = {split: _split_sentences(seed, split, sizes[split]) for split in splits}
    if vocab is None:
        counts = Vocabulary.from_lines(_split_sentences(seed, "train", sizes["train"]))
        vocab = Vocabulary(counts.words + [w for w in grammar.words if w not in counts.index])
    elif set(vocab.words) != set(grammar.words):  # a PTB model would map it all to <unk>
        raise DataError(
            f"{SOURCE}: the checkpoint's vocabulary ({len(vocab)} words) is not this corpus's "
            f"({len(grammar.words)}); it was trained on another corpus: pass that one with --data"
        )
    lines = {split: vocab.encode_lines(tokens[split], Path(SOURCE)) for split in splits}
    return Corpus(vocab, lines, {}, oracle=Oracle(grammar, vocab, lines))
