"""tov_datasets.textrows: tweet text, sentence splits and greedy packing into rows of lo..hi
tokens, against plain references (a word counts as a token); the tweets-among-text builder
on the real corpora with the word count as its length."""

import numpy as np
import pytest

from tov_datasets import textrows


def words(text: str) -> int:
    return len(text.split())


def reference_pack(pieces, sep, lo, hi):
    """Greedy packing by piece index: a row runs from ``start`` to the current piece."""
    rows, start = [], 0
    for i, piece in enumerate(pieces):
        if words(piece) > hi:
            start = i + 1
            continue
        if words(sep.join(pieces[start:i + 1])) > hi:
            start = i
        if words(sep.join(pieces[start:i + 1])) >= lo:
            rows.append(sep.join(pieces[start:i + 1]))
            start = i + 1
    return rows


def test_detokenize_glues_punctuation_and_clitics():
    assert textrows.detokenize(["it", "'s", "great", "!", "@bob"]) == "it's great! @bob"
    assert textrows.detokenize(["I", "do", "n't", "know", "..."]) == "I don't know..."
    assert textrows.detokenize([]) == ""


def test_sentences_split_after_end_marks_and_collapse_whitespace():
    text = "  One two.  Three?\nFour!Five six.   "
    assert textrows.sentences(text) == ["One two.", "Three?", "Four!Five six."]
    assert textrows.sentences("   ") == []


def test_pack_by_hand():
    pieces = ["a b", "c", "d e f", "g h i j k", "l", "m n"]
    # a b + c = 3 words: a row; d e f: a row; g..k (5) is longer than 4: skipped;
    # l (1) then l m n (3): a row
    assert textrows.pack(pieces, " ", words, 3, 4) == ["a b c", "d e f", "l m n"]
    # a row that would pass hi restarts at the piece that overflowed: "a b" + "c d e" > 4
    assert textrows.pack(["a b", "c d e", "f"], "\n", words, 4, 4) == ["c d e\nf"]


def test_pack_matches_the_reference_on_random_pieces():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(50)]
    for trial in range(200):
        pieces = [" ".join(rng.choice(vocab, size=rng.integers(1, 9)))
                  for _ in range(rng.integers(0, 30))]
        lo = int(rng.integers(1, 8))
        hi = lo + int(rng.integers(0, 8))
        got = textrows.pack(pieces, "\n", words, lo, hi)
        assert got == reference_pack(pieces, "\n", lo, hi), trial
        assert all(lo <= words(row) <= hi for row in got)


def test_text_rows_take_whole_texts_in_a_seeded_order_until_k():
    texts = [f"Text {i} one. Text {i} two words here. Short." for i in range(20)]
    rows = textrows.text_rows(texts, np.random.default_rng(3), words, 3, 5, 7, "src")
    order = np.random.default_rng(3).permutation(20)
    expected = []
    for i in order:  # each text: "Text i one." (3) and "Text i two words here." (5)
        expected += [f"Text {i} one.", f"Text {i} two words here."]
        if len(expected) >= 7:
            break
    assert [r["text"] for r in rows] == expected and len(rows) == 8
    assert all(r["source"] == "src" and r["is_target"] is False for r in rows)


def test_tweets_among_text_splits_and_mixes_the_sources():
    sizes = dict(pool_size=40, target_in_pool=8, val_size=5, test_size=6, min_tokens=10,
                 max_tokens=20)
    pool, val, test = textrows.tweets_among_text(0, words, **sizes)
    assert len(pool) == 40 and len(val) == 5 and len(test) == 6
    sources = [r["source"] for r in pool]
    assert sources.count("tweets") == 8 and sources.count("wiki") == 16
    assert sources.count("bbc") == 16
    assert all(r["is_target"] == (r["source"] == "tweets") for r in pool + val + test)
    assert all(r["source"] == "tweets" for r in val + test)
    texts = [r["text"] for r in pool + val + test]
    assert all(10 <= words(t) <= 20 for t in texts)
    tweets = [r["text"] for r in pool + val + test if r["is_target"]]
    assert len(set(tweets)) == len(tweets)  # no tweet row in two splits
    again = textrows.tweets_among_text(0, words, **sizes)
    assert again == (pool, val, test)
    assert textrows.tweets_among_text(1, words, **sizes)[1] != val
    with pytest.raises(ValueError, match="tweet rows"):
        textrows.tweets_among_text(0, words, **(sizes | {"target_in_pool": 10_000}))
