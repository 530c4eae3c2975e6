"""The training-free baselines (benchmarks/baselines/embedding.py, length.py, label_prior.py):
scores against independent references and hand-computed values, select's contract, every
input format."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from datasets import Dataset

from benchmarks.baselines import embedding, label_prior, length
from benchmarks.baselines._util import top_n
from benchmarks.eval_data import tiny_setup
from tests import tiny

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FOOTBALL_VAL = [
    "The striker scored twice in the second half and the home team won the league match.",
    "The goalkeeper saved a penalty in the final minute of the cup final.",
    "The coach changed the formation after the defenders conceded an early goal.",
]
FOOTBALL_POOL = [
    "The midfielder passed to the winger, who crossed for a header into the net.",
    "Fans filled the stadium as the referee showed a red card to the captain.",
    "The club signed a new centre-back before the transfer window closed.",
    "Extra time ended goalless, so the semi-final went to a penalty shoot-out.",
]
COOKING_POOL = [
    "Whisk the eggs with sugar, then fold in the flour and bake for twenty minutes.",
    "Simmer the onions in butter until golden and season the sauce with thyme.",
    "Knead the dough, let it rise for an hour and brush the loaf with olive oil.",
    "Roast the vegetables with garlic and finish the soup with a splash of cream.",
]
LONG_TEXT = " ".join(["football match goal"] * 120)  # 360 words: truncated at 256 pieces


def reference_scores(pool_texts: list[str], val_texts: list[str]) -> np.ndarray:
    """Plain AutoModel forward per text (no padding), numpy float64 mean pooling over the
    tokens, cosine to the normalised mean of the normalised val embeddings."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tov_datasets.assets import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    model = AutoModel.from_pretrained(minilm_dir(), local_files_only=True).eval()

    def unit(text: str) -> np.ndarray:
        enc = tok(text, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].double().numpy()  # (T, 384)
        v = hidden.mean(axis=0)
        return v / np.linalg.norm(v)

    centroid = np.mean([unit(t) for t in val_texts], axis=0)
    centroid /= np.linalg.norm(centroid)
    return np.array([unit(t) @ centroid for t in pool_texts])


@pytest.fixture(scope="module")
def football():
    pool_texts = FOOTBALL_POOL + COOKING_POOL + [LONG_TEXT, ""]
    return pool_texts, reference_scores(pool_texts, FOOTBALL_VAL)


def _text(texts: list[str], **extra) -> Dataset:
    return Dataset.from_dict({"text": texts, **extra})


@pytest.mark.parametrize("batch_size", [64, 3])
def test_embedding_matches_reference(football, batch_size):
    pool_texts, expected = football
    from transformers import AutoTokenizer

    from tov_datasets.assets import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    assert len(tok(LONG_TEXT)["input_ids"]) > 300  # the truncation is exercised
    got = embedding.scores(None, None, _text(pool_texts), _text(FOOTBALL_VAL),
                           batch_size=batch_size)
    assert got.dtype == np.float64 and got.shape == (len(pool_texts),)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    again = embedding.scores(None, None, _text(pool_texts), _text(FOOTBALL_VAL),
                             batch_size=batch_size)
    np.testing.assert_array_equal(got, again)  # deterministic


def test_embedding_ranks_football_above_cooking(football):
    pool_texts, _ = football
    got = embedding.scores(None, None, _text(pool_texts), _text(FOOTBALL_VAL))
    assert got[:4].min() > got[4:8].max() + 0.1
    picked = embedding.select(None, None, _text(pool_texts), _text(FOOTBALL_VAL), 4, seed=0)
    assert set(picked.tolist()) <= {0, 1, 2, 3, 8}  # football rows (and the football-only text)


def test_embedding_ignores_source_and_model(football, tiny_tokenizer):
    pool_texts, expected = football
    pool = _text(pool_texts, source=["cooking"] * 4 + ["target"] * 6)
    got = embedding.scores(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, pool,
                           _text(FOOTBALL_VAL, source=["target"] * 3))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_row_text_every_format():
    assert embedding.row_text({"text": "a b", "source": "x"}) == "a b"
    assert embedding.row_text({"text": None}) == ""
    assert embedding.row_text({"prompt": "Q?", "completion": "A."}) == "Q?\nA."
    assert embedding.row_text({"prompt": [{"role": "user", "content": "Q?"}],
                               "completion": [{"role": "assistant", "content": "A."}]}
                              ) == "Q?\nA."
    assert embedding.row_text({"messages": [{"role": "system", "content": "S"}]
                               + _chat("Q?", "A.")}) == "S\nQ?\nA."
    assert embedding.row_text({"tokens": ["New", "York", "!"], "ner_tags": ["B", "I", "O"]}
                              ) == "New York !"
    with pytest.raises(ValueError, match="'tokens' format"):
        embedding.row_text({"input_ids": [1, 2], "labels": [1, 2]})


def test_embedding_every_format_embeds_its_row_text():
    """The same rows in each format score like their row_text as plain text."""
    pairs = [(FOOTBALL_POOL[0], COOKING_POOL[0]), (COOKING_POOL[1], FOOTBALL_POOL[1])]
    pools = {
        "prompt_completion": Dataset.from_dict({"prompt": [p for p, _ in pairs],
                                                "completion": [c for _, c in pairs]}),
        "messages": Dataset.from_dict({"messages": [_chat(p, c) for p, c in pairs]}),
        "ner": Dataset.from_dict({"tokens": [p.split() for p, _ in pairs],
                                  "ner_tags": [["O"] * len(p.split()) for p, _ in pairs]}),
    }
    val = Dataset.from_dict({"messages": [_chat(FOOTBALL_VAL[0], FOOTBALL_VAL[1])]})
    val_as_text = _text([FOOTBALL_VAL[0] + "\n" + FOOTBALL_VAL[1]])
    for fmt, pool in pools.items():
        texts = [embedding.row_text(r) for r in pool]
        if fmt == "ner":
            assert texts == [p for p, _ in pairs]
        else:
            assert texts == [p + "\n" + c for p, c in pairs]
        np.testing.assert_allclose(embedding.scores(None, None, pool, val),
                                   embedding.scores(None, None, _text(texts), val_as_text),
                                   atol=1e-6, rtol=0, err_msg=fmt)


def _words(k: int) -> str:
    return " ".join(tiny.WORDS[:k])


def test_length_hand_computed(tiny_tokenizer):
    """Tiny word-level tokenizer, no special tokens: a causal LM's text of w words has w - 1
    scored tokens; a completion of w words has w + 1 (EOS); a chat's assistant turn of w
    words has w + 1 (<|im_end|>); a token classifier scores every word."""
    lm = tiny.causal_lm(tiny_tokenizer)
    val = _text([_words(3), _words(5), _words(9)], source=["t"] * 3)  # 2, 4, 8: median log 4
    pool = _text([_words(2), _words(5), _words(17), _words(3), ""],  # 1, 4, 16, 2, 0 scored
                 source=["o"] * 5)
    log2, log4 = math.log(2), math.log(4)
    expected = [-log4, 0.0, -log4, -log2, -log4 - 1.0]  # no scored token: after the rest
    got = length.scores(lm, tiny_tokenizer, pool, val)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert length.select(lm, tiny_tokenizer, pool, val, 3, seed=0).tolist() == [0, 1, 3]
    assert length.select(lm, tiny_tokenizer, pool, val, 4, seed=0).tolist() == [0, 1, 2, 3]
    # truncation: 10 words cut to 5 tokens -> 4 scored (the val median)
    np.testing.assert_allclose(
        length.scores(lm, tiny_tokenizer, _text([_words(10)]), val, max_length=5), [0.0])

    pc = Dataset.from_dict({"prompt": ["the a", "the"], "completion": ["of and", ""]})
    chats = Dataset.from_dict({"messages": [_chat("the a", "of and to")]})
    assert length.scored_lengths(lm, tiny_tokenizer, pc).tolist() == [3, 0]
    assert length.scored_lengths(lm, tiny_tokenizer, chats).tolist() == [4]
    np.testing.assert_allclose(length.scores(lm, tiny_tokenizer, chats, pc), [-log4 + math.log(3)])

    ner = tiny.token_classifier(tiny_tokenizer)
    ner_val = Dataset.from_dict({"tokens": [["the"] * 2, ["a"] * 8],
                                 "ner_tags": [["O"] * 2, ["O"] * 8]})  # median log 4
    ner_pool = Dataset.from_dict({"tokens": [["of"] * 4, ["and"]], "ner_tags": [["O"] * 4, ["O"]]})
    np.testing.assert_allclose(length.scores(ner, tiny_tokenizer, ner_pool, ner_val),
                               [0.0, -log4])
    with pytest.raises(ValueError, match="no validation row has a scored token"):
        length.scores(lm, tiny_tokenizer, pool, _text([""]))


def test_label_prior_hand_computed(tiny_tokenizer):
    model = tiny.token_classifier(tiny_tokenizer)  # id2label: 0 "O", 1 B-person, 2 I-person, ...
    words = [["the"] * 4, ["a"] * 3, ["of"], ["and"] * 2]
    string_tags = [["O", "B-person", "I-person", "O"], ["O", "O", "O"], ["B-geo-loc"],
                   ["O", "B-geo-loc"]]
    expected = [0.5, 0.0, 1.0, 0.5]
    pool = Dataset.from_dict({"tokens": words, "ner_tags": string_tags, "source": ["s"] * 4})
    got = label_prior.scores(model, tiny_tokenizer, pool, None)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=0)
    assert label_prior.select(model, tiny_tokenizer, pool, None, 2, seed=0).tolist() == [0, 2]

    int_tags = [[tiny.NER_LABELS.index(t) for t in row] for row in string_tags]
    ints = Dataset.from_dict({"tokens": words, "ner_tags": int_tags})
    np.testing.assert_allclose(label_prior.scores(model, tiny_tokenizer, ints, None), expected)
    # "O" found through id2label, not assumed to be id 0
    shifted = copy.deepcopy(model)
    shifted.config.id2label = {0: "B-person", 1: "O", 2: "I-person"}
    rows = Dataset.from_dict({"tokens": [["the"] * 3, []], "ner_tags": [[1, 1, 0], []]})
    np.testing.assert_allclose(label_prior.scores(shifted, tiny_tokenizer, rows, None),
                               [1 / 3, 0.0])
    shifted.config.id2label = {0: "B-person", 1: "I-person"}
    with pytest.raises(ValueError, match="names no 'O' class"):
        label_prior.scores(shifted, tiny_tokenizer, rows, None)

    # pre-tokenised rows: one label per word (first sub-token), -100 elsewhere
    pre = Dataset.from_dict({"input_ids": [[5, 6, 7, 8, 9, 10]],
                             "labels": [[-100, 0, 1, -100, 2, -100]]})
    np.testing.assert_allclose(label_prior.scores(model, tiny_tokenizer, pre, None), [2 / 3])
    lm = tiny.causal_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match="'tokens' format"):
        label_prior.scores(lm, tiny_tokenizer, pre, None)
    with pytest.raises(ValueError, match="'text' format"):
        label_prior.scores(lm, tiny_tokenizer, _text(["the a"]), None)
    chats = Dataset.from_dict({"messages": [_chat("the", "a")]})
    with pytest.raises(ValueError, match="'messages' format"):
        label_prior.scores(lm, tiny_tokenizer, chats, None)


@pytest.mark.parametrize("config", ["ner", "it"])
def test_select_contract_on_tiny_setup(config):
    s = tiny_setup(config, seed=1)
    pool, val = s["pool"], s["val"]
    methods = [embedding, length] + ([label_prior] if config == "ner" else [])
    for method in methods:
        sc = method.scores(s["model"], s["tokenizer"], pool, val)
        assert sc.shape == (len(pool),) and sc.dtype == np.float64 and np.isfinite(sc).all()
        idx = method.select(s["model"], s["tokenizer"], pool, val, 8, seed=3)
        assert idx.dtype == np.int64 and idx.shape == (8,)
        assert idx.tolist() == sorted(set(idx.tolist()))
        assert 0 <= idx.min() and idx.max() < len(pool)
        assert idx.tolist() == top_n(sc, 8).tolist()
        assert sc[idx].min() >= np.delete(sc, idx).max()  # the n top-scored rows
    if config == "it":
        with pytest.raises(ValueError, match="'messages' format"):
            label_prior.select(s["model"], s["tokenizer"], pool, val, 8, seed=3)


def test_top_n_ties_and_errors():
    sc = np.array([0.5, 1.0, 0.5, 0.5, -1.0])
    assert top_n(sc, 2).tolist() == [0, 1]  # the tie at 0.5 goes to the lowest row
    assert top_n(sc, 3).tolist() == [0, 1, 2]
    assert top_n(sc, 0).tolist() == [] and top_n(sc, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n=6 rows"):
        top_n(sc, 6)
    with pytest.raises(ValueError, match="not finite"):
        top_n(np.array([0.0, np.nan]), 1)
