"""Vocabulary, corpus reading and both batchings."""

import numpy as np
import pytest

from sparselm.data import (
    EOS,
    UNK,
    SentenceBatcher,
    StreamBatcher,
    load_corpus,
    read_lines,
    split_path,
)
from sparselm.errors import DataError


def write_corpus(folder, train, valid="a b\n", test="b a\n", prefix="ptb."):
    folder.mkdir(exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{prefix}{split}.txt").write_text(text)
    return folder


def test_vocabulary_order_and_eos(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "c", "b a b\nc b\n"))
    v = corpus.vocab
    assert v.words[:2] == ["b", EOS]  # by frequency (b: 3, <eos>: 2), then alphabetical
    assert sorted(v.words) == sorted(["a", "b", "c", EOS])
    ids = corpus.stream("train")
    assert [v.words[i] for i in ids] == ["b", "a", "b", EOS, "c", "b", EOS]


def test_plain_split_names(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "c", "x y\n", "x\n", "y\n", prefix=""))
    assert corpus.n_tokens("valid") == 2


def test_unseen_word_maps_to_unk(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "c", f"a {UNK} b\n", valid="a zebra\n"))
    v = corpus.vocab
    assert [v.words[i] for i in corpus.lines["valid"][0]] == ["a", UNK, EOS]


def test_unseen_word_without_unk_names_word_file_line(tmp_path):
    folder = write_corpus(tmp_path / "c", "a b\n", valid="a b\nb zebra a\n")
    with pytest.raises(DataError, match=r"ptb.valid.txt, line 2: word 'zebra'"):
        load_corpus(folder)


@pytest.mark.parametrize("problem", ["missing_dir", "missing_split", "empty", "binary"])
def test_bad_corpus_is_one_clear_error(tmp_path, problem):
    folder = write_corpus(tmp_path / "c", "a b\n")
    if problem == "missing_dir":
        folder = tmp_path / "nowhere"
    elif problem == "missing_split":
        (folder / "ptb.test.txt").unlink()
    elif problem == "empty":
        (folder / "ptb.train.txt").write_text("\n  \n")
    else:
        (folder / "ptb.train.txt").write_bytes(b"a b\n\xff\xfe c\n")
    with pytest.raises(DataError) as info:
        load_corpus(folder)
    assert "\n" not in str(info.value)
    if problem == "binary":
        assert "line 2" in str(info.value) and "UTF-8" in str(info.value)


def test_stream_batches_align_and_cover():
    ids = np.arange(103, dtype=np.int32)
    train = StreamBatcher(ids, batch_size=4, bptt=5)
    # 103 // 4 = 25 steps per stream; 24 predictions each -> 4 full windows of 5
    assert len(train) == 4
    b0, b1 = train.batch(0), train.batch(1)
    assert b0.inputs.shape == (5, 4) and b0.reset and not b1.reset
    np.testing.assert_array_equal(b0.inputs[:, 1], np.arange(25, 30))
    np.testing.assert_array_equal(b0.targets, b0.inputs + 1)
    np.testing.assert_array_equal(b1.inputs[0], b0.inputs[-1] + 1)  # streams continue
    full = StreamBatcher(ids, batch_size=4, bptt=5, drop_last=False)
    assert len(full) == 5 and full.batch(4).inputs.shape == (4, 4)
    assert sum(b.n_tokens for b in full.batches()) == 4 * 24


def test_sentence_batches_pad_and_mask():
    lines = [np.array(x, dtype=np.int32) for x in ([5, 6, 0], [7, 0], [5, 5, 5, 6, 0], [8, 0])]
    sb = SentenceBatcher(lines, batch_size=2, eos=0, seed=1, shuffle=False)
    assert len(sb) == 2
    first = sb.batch(0)  # the two shortest lines
    assert first.reset and first.inputs.shape == (2, 2)
    np.testing.assert_array_equal(first.inputs[0], [0, 0])  # <eos> starts each sample
    batches = [sb.batch(g) for g in range(2)]
    assert sum(b.n_tokens for b in batches) == sum(len(x) for x in lines)
    last = batches[1]
    np.testing.assert_array_equal(last.mask[:, 0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(last.targets[:3, 0], [5, 6, 0])
    assert sorted(SentenceBatcher(lines, 2, 0, seed=1).order(3)) == [0, 1]
    same = [SentenceBatcher(lines, 2, 0, seed=1).order(3) for _ in range(2)]
    assert same[0] == same[1]


def test_ptb_counts(ptb_path):
    corpus = load_corpus(ptb_path)
    assert len(corpus.vocab) == 10000
    assert {s: corpus.n_tokens(s) for s in ("train", "valid", "test")} == {
        "train": 929589,
        "valid": 73760,
        "test": 82430,
    }
    assert split_path(ptb_path, "train").name == "ptb.train.txt"
    assert len(read_lines(ptb_path / "ptb.valid.txt")) == 3370
