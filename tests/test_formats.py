"""Input formats -> token ids and label masks on the tiny word-level tokenizer."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers.processors import TemplateProcessing

from tests import tiny
from tov_datasets.formats import IGNORE_INDEX, Encoded, collate, detect_format, encode_batch

LABEL2ID = {k: i for i, k in enumerate(tiny.NER_LABELS)}


def _with_template(single: str, specials: list[str]):
    tok = tiny.tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=single, special_tokens=[(s, tok.convert_tokens_to_ids(s)) for s in specials]
    )
    return tok


@pytest.fixture(scope="module")
def bos_tokenizer():
    """Adds BOS (<|im_start|>) in front of every text, like Llama tokenizers."""
    return _with_template("<|im_start|> $A", ["<|im_start|>"])


@pytest.fixture(scope="module")
def bert_tokenizer():
    """Wraps every text in [CLS] ... [SEP], like BERT tokenizers."""
    return _with_template("[CLS] $A [SEP]", ["[CLS]", "[SEP]"])


def labelled(tok, enc: Encoded) -> str:
    ids = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab >= 0]
    return " ".join(tok.convert_ids_to_tokens(ids))


def test_text_scores_every_token_but_the_first(tiny_tokenizer, bos_tokenizer):
    (enc,) = encode_batch({"text": ["hello world paris"]}, tiny_tokenizer, task="causal_lm")
    assert enc.input_ids == tiny_tokenizer("hello world paris")["input_ids"]
    assert enc.labels == [IGNORE_INDEX] + enc.input_ids[1:]
    assert labelled(tiny_tokenizer, enc) == "world paris" and not enc.truncated
    (enc,) = encode_batch({"text": ["hello world"]}, bos_tokenizer, task="causal_lm")
    assert bos_tokenizer.convert_ids_to_tokens(enc.input_ids) == ["<|im_start|>", "hello", "world"]
    assert labelled(bos_tokenizer, enc) == "hello world"


def test_prompt_completion_labels_completion_and_eos(tiny_tokenizer, bos_tokenizer):
    batch = {"prompt": ["question hello", "hello"], "completion": [" yes paris", "world"]}
    first, second = encode_batch(batch, tiny_tokenizer, task="causal_lm")
    assert tiny_tokenizer.decode(first.input_ids) == "question hello yes paris <|im_end|>"
    assert labelled(tiny_tokenizer, first) == "yes paris <|im_end|>"
    # "hello" + "world" tokenises to [UNK] jointly: the completion is tokenised on its own
    assert labelled(tiny_tokenizer, second) == "world <|im_end|>"
    (enc,) = encode_batch({"prompt": ["hello"], "completion": [" yes"]}, bos_tokenizer,
                          task="causal_lm")
    assert bos_tokenizer.convert_ids_to_tokens(enc.input_ids)[0] == "<|im_start|>"
    assert labelled(bos_tokenizer, enc) == "yes <|im_end|>"


def test_conversational_prompt_completion(tiny_tokenizer):
    batch = {
        "prompt": [[{"role": "user", "content": "hello"}]],
        "completion": [[{"role": "assistant", "content": "yes paris"}]],
    }
    (enc,) = encode_batch(batch, tiny_tokenizer, task="causal_lm")
    assert labelled(tiny_tokenizer, enc) == "yes paris <|im_end|>"


CHAT = [
    {"role": "system", "content": "music"},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "yes paris"},
    {"role": "user", "content": "king"},
    {"role": "assistant", "content": "no"},
]


def test_messages_label_only_assistant_turns(tiny_tokenizer):
    (enc,) = encode_batch({"messages": [CHAT]}, tiny_tokenizer, task="causal_lm")
    rendered = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert enc.input_ids == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert labelled(tiny_tokenizer, enc) == "yes paris <|im_end|> no <|im_end|>"


def test_messages_assistant_first_and_empty_turns(tiny_tokenizer):
    chat = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "king"},
            {"role": "assistant", "content": ""}]
    (enc,) = encode_batch({"messages": [chat]}, tiny_tokenizer, task="causal_lm")
    assert labelled(tiny_tokenizer, enc) == "hello <|im_end|>"


def test_ner_first_subtoken_ints_and_strings(tiny_tokenizer, bert_tokenizer):
    # with is_split_into_words, "hello world" is one word of two sub-tokens here
    words = [["hello world", "paris", "king"]]
    for tags in ([["B-person", "O", "B-geo-loc"]], [[1, 0, 3]], [np.array([1, 0, 3])]):
        (enc,) = encode_batch({"tokens": words, "ner_tags": tags}, tiny_tokenizer,
                              task="token_classification", label2id=LABEL2ID)
        assert tiny_tokenizer.convert_ids_to_tokens(enc.input_ids) == [
            "hello", "world", "paris", "king"]
        assert enc.labels == [1, IGNORE_INDEX, 0, 3]
    (enc,) = encode_batch({"tokens": words, "ner_tags": [[1, 0, 3]]}, bert_tokenizer,
                          task="token_classification")
    assert bert_tokenizer.convert_ids_to_tokens(enc.input_ids)[0] == "[CLS]"
    assert enc.labels == [IGNORE_INDEX, 1, IGNORE_INDEX, 0, 3, IGNORE_INDEX]


def test_ner_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="label2id"):
        encode_batch({"tokens": [["paris"]], "ner_tags": [["O"]]}, tiny_tokenizer,
                     task="token_classification")
    with pytest.raises(ValueError, match="not in label2id"):
        encode_batch({"tokens": [["paris"]], "ner_tags": [["B-movie"]]}, tiny_tokenizer,
                     task="token_classification", label2id=LABEL2ID)
    with pytest.raises(ValueError, match="does not fit task"):
        encode_batch({"tokens": [["paris"]], "ner_tags": [[0]]}, tiny_tokenizer, task="causal_lm")


def test_pretokenised_taken_as_is(tiny_tokenizer):
    batch = {"input_ids": [[5, 6, 7]], "labels": [[5, -100, 7]], "text": ["ignored"]}
    (enc,) = encode_batch(batch, tiny_tokenizer, task="causal_lm")
    assert enc == Encoded([5, 6, 7], [5, -100, 7], False)


def test_truncation_keeps_the_left_part(tiny_tokenizer):
    batch = {"prompt": ["hello", "hello"], "completion": [" yes paris king", " no"]}
    long, short = encode_batch(batch, tiny_tokenizer, task="causal_lm", max_length=3)
    assert long.truncated and not short.truncated
    assert tiny_tokenizer.convert_ids_to_tokens(long.input_ids) == ["hello", "yes", "paris"]
    assert labelled(tiny_tokenizer, long) == "yes paris"
    assert labelled(tiny_tokenizer, short) == "no <|im_end|>"


def test_empty_text_and_completion_label_nothing(tiny_tokenizer, bos_tokenizer):
    for tok in (tiny_tokenizer, bos_tokenizer):
        encs = encode_batch({"text": ["", None]}, tok, task="causal_lm")
        encs += encode_batch({"prompt": ["hello"], "completion": [""]}, tok, task="causal_lm")
        assert [sum(label != -100 for label in e.labels) for e in encs] == [0, 0, 0]


def test_column_map(tiny_tokenizer):
    batch = {"question": ["hello"], "answer": [" yes"]}
    cmap = {"question": "prompt", "answer": "completion"}
    assert detect_format(batch, cmap) == "prompt_completion"
    (enc,) = encode_batch(batch, tiny_tokenizer, task="causal_lm", column_map=cmap)
    assert labelled(tiny_tokenizer, enc) == "yes <|im_end|>"


def test_bad_columns_list_formats_and_columns():
    with pytest.raises(ValueError) as err:
        detect_format(["prompt", "answer"])
    msg = str(err.value)
    for part in ("text", "prompt+completion", "messages", "tokens+ner_tags", "input_ids+labels",
                 "'answer'"):
        assert part in msg


def test_detect_each_format():
    assert detect_format(["text", "id"]) == "text"
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["tokens", "ner_tags", "pos_tags"]) == "ner"
    assert detect_format(["input_ids", "labels", "text"]) == "tokens"


def test_numpy_and_pyarrow_columns(tiny_tokenizer):
    lists = {"prompt": ["hello", "king"], "completion": [" yes paris", " no"]}
    expected = encode_batch(lists, tiny_tokenizer, task="causal_lm")
    as_numpy = {k: np.array(v, dtype=object) for k, v in lists.items()}
    as_arrow = {k: pa.array(v) for k, v in lists.items()}
    assert encode_batch(as_numpy, tiny_tokenizer, task="causal_lm") == expected
    assert encode_batch(as_arrow, tiny_tokenizer, task="causal_lm") == expected
    # Ray's numpy batches hold list columns as object arrays of arrays
    chats = np.empty(1, dtype=object)
    chats[0] = np.array(CHAT, dtype=object)
    (enc,) = encode_batch({"messages": chats}, tiny_tokenizer, task="causal_lm")
    assert enc == encode_batch({"messages": [CHAT]}, tiny_tokenizer, task="causal_lm")[0]
    ids = np.empty(1, dtype=object)
    ids[0] = np.array([5, 6], dtype=np.int64)
    (enc,) = encode_batch({"input_ids": ids, "labels": ids}, tiny_tokenizer, task="causal_lm")
    assert enc.input_ids == [5, 6] and type(enc.input_ids[0]) is int


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate(side):
    batch = collate([Encoded([5, 6, 7], [-100, 6, 7]), Encoded([8], [8])], 0, side)
    assert all(t.dtype == torch.int64 for t in batch.values())
    if side == "right":
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    else:
        assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
