"""The built-in synthetic corpus: deterministic, a normalised grammar, an exact oracle (checked
against a brute-force sum over derivations), and an oracle perplexity over exactly the tokens the
model's batching predicts."""

import math

import numpy as np
import pytest

from sparselm.data import (
    EOS,
    Corpus,
    Vocabulary,
    load_corpus,
    make_batcher,
    predicted_positions,
)
from sparselm.errors import DataError
from sparselm.synthetic import GRAMMAR, Grammar, builtin_corpus

SMALL = {"train": 300, "valid": 40, "test": 40}


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus(sizes=SMALL)


def test_deterministic_and_seeded(corpus):
    again = builtin_corpus(sizes=SMALL)
    other = builtin_corpus(sizes=SMALL, seed=7)
    for split in ("train", "valid", "test"):
        assert np.array_equal(corpus.stream(split), again.stream(split))
    assert corpus.vocab.words == again.vocab.words
    assert corpus.vocab.words != other.vocab.words  # other invented words


def test_vocabulary_is_the_grammars_words(corpus):
    grammar = Grammar.build()
    assert sorted(corpus.vocab.words) == grammar.words
    assert 300 <= len(corpus.vocab) <= 600 and EOS in corpus.vocab.index
    # ids by train frequency: the commonest train word first
    train = corpus.stream("train")
    assert np.bincount(train).argmax() == 0


def test_every_state_emits_a_probability_distribution(corpus):
    m = Grammar.build().transition_tensor(corpus.vocab)  # (V, S, S)
    totals = m.sum(axis=(0, 2))
    states = list(GRAMMAR)
    for state, total in zip(states, totals):
        assert total == pytest.approx(0.0 if state == "END" else 1.0, abs=1e-12), state
    # only <eos> reaches END
    end = states.index("END")
    reach = m[:, :, end].sum(axis=1)
    assert np.flatnonzero(reach).tolist() == [corpus.vocab.eos]


def brute_force_logprob(grammar: Grammar, words: list[str]) -> float:
    """log P(sentence + <eos>) summed over every derivation, by plain recursion on the rules."""
    prob = {name: dict(zip(ws, ps)) for name, (ws, ps) in grammar.classes.items()}
    tokens = words + [EOS]

    def inside(state: str, t: int) -> float:
        if t == len(tokens):
            return 1.0 if state == "END" else 0.0
        return sum(
            p * prob[name].get(tokens[t], 0.0) * inside(nxt, t + 1)
            for name, nxt, p in grammar.rules[state]
        )

    return math.log(inside("S0", 0))


def test_oracle_matches_a_brute_force_sum_over_derivations(corpus):
    grammar = Grammar.build()
    checked = 0
    for ids in corpus.lines["valid"]:
        if (
            len(ids) > 14
        ):  # the recursion is exponential in the ambiguous prefix only; keep it quick
            continue
        words = [corpus.vocab.words[i] for i in ids[:-1]]
        nll = corpus.oracle.sentence_nll(ids)
        assert nll.shape == ids.shape and np.all(np.isfinite(nll)) and np.all(nll >= 0)
        assert -nll.sum() == pytest.approx(brute_force_logprob(grammar, words), rel=1e-10)
        checked += 1
    assert checked >= 10


def test_oracle_conditionals_sum_to_one(corpus):
    """P(w | prefix) over the whole vocabulary sums to 1 after any prefix of a real sentence."""
    ids = corpus.lines["valid"][0]
    for t in range(len(ids)):
        total = sum(
            math.exp(-corpus.oracle.sentence_nll(np.append(ids[:t], w))[-1])
            for w in range(len(corpus.vocab))
        )
        assert total == pytest.approx(1.0, abs=1e-9)


def test_agreement_survives_a_relative_clause(corpus):
    """After 'DET_SG N_SG REL VT_SG DET_PL N_PL', only singular main verbs can follow."""
    g = Grammar.build()
    first = {name: words[0] for name, (words, _) in g.classes.items()}
    prefix = [first[c] for c in ("DET_SG", "N_SG", "REL", "VT_SG", "DET_PL", "N_PL")]
    ids = np.array([corpus.vocab.index[w] for w in prefix], dtype=np.int32)

    def p_next(word):
        seq = np.append(ids, corpus.vocab.index[word])
        return math.exp(-corpus.oracle.sentence_nll(seq)[-1])

    assert p_next(first["VI_SG"]) > 0.01 and p_next(first["VT_SG"]) > 0.01
    assert p_next(first["VI_PL"]) == 0.0 and p_next(first["VT_PL"]) == 0.0


@pytest.mark.parametrize("batching,batch", [("stream", 7), ("stream", 1), ("sentence", 5)])
def test_predicted_positions_are_the_batchers_targets(batching, batch):
    lines = [np.arange(s, s + n, dtype=np.int32) for s, n in ((0, 5), (5, 9), (14, 4), (18, 11))]
    # token ids = stream positions, so the targets name the positions predicted
    positions = Corpus(Vocabulary([str(i) for i in range(29)] + [EOS]), {"valid": lines})
    batcher = make_batcher(positions, "valid", batching, batch, 3, train=False)
    targets = []
    for b in batcher.batches():
        real = b.targets if b.mask is None else b.targets[b.mask > 0]
        targets.extend(np.ravel(real).tolist())
    mask = predicted_positions(29, batching, batch)
    assert sorted(targets) == np.flatnonzero(mask).tolist()


def test_oracle_ppl_is_over_the_predicted_tokens(corpus):
    nll = corpus.oracle.token_nll("valid")
    n = len(nll)
    assert corpus.oracle_ppl("valid", "sentence", 10) == pytest.approx(math.exp(nll.mean()))
    keep = np.ones(n, bool)
    keep[(n // 10) * 10 :] = False
    keep[0 : (n // 10) * 10 : n // 10] = False
    assert corpus.oracle_ppl("valid", "stream", 10) == pytest.approx(math.exp(nll[keep].mean()))


def test_load_corpus_builtin_with_a_checkpoints_vocabulary(corpus):
    again = load_corpus("builtin", splits=("valid",), vocab=corpus.vocab)
    assert again.vocab is corpus.vocab and again.oracle is not None
    assert 5 < again.oracle_ppl("valid", "stream", 10) < 100


def test_a_foreign_vocabulary_is_refused(corpus):
    with pytest.raises(DataError, match="trained on another corpus"):
        load_corpus("builtin", splits=("valid",), vocab=Vocabulary(["the", "cat", EOS, "<unk>"]))
