"""Input formats -> token ids and label masks, shared by the scorer and by training.

Accepted formats (TRL / Hugging Face conventions), detected from the column names:

- ``text``: plain text, every token scored (causal LM).
- ``prompt`` + ``completion``: only completion tokens scored, EOS appended like TRL. The
  prompt and completion may also be message lists (TRL's conversational prompt-completion).
- ``messages``: a chat, rendered with the tokenizer's chat template; only assistant turns scored.
- ``tokens`` + ``ner_tags``: words and their tags (token classification); the tag goes on the
  first sub-token of each word.
- ``input_ids`` + ``labels``: already tokenised, taken as is.

Labels follow the Hugging Face convention: UNSHIFTED for causal LMs (``labels[t] =
input_ids[t]`` where token t is scored, -100 elsewhere; models shift internally), class ids
for token classification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100
TASKS = ("causal_lm", "token_classification")

# Format name -> the canonical columns it needs, in detection order (most specific first).
FORMATS: dict[str, tuple[str, ...]] = {
    "tokens": ("input_ids", "labels"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "ner": ("tokens", "ner_tags"),
    "text": ("text",),
}
_TASK_FORMATS = {
    "causal_lm": ("tokens", "messages", "prompt_completion", "text"),
    "token_classification": ("tokens", "ner"),
}


@dataclass
class Encoded:
    """One tokenised sample: ``input_ids`` and ``labels`` of equal length (-100 = not scored)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def num_scored(sample: Encoded, task: str) -> int:
    """Tokens of a sample that enter the loss and the score: labels != -100, except a causal
    LM's first token (nothing predicts it)."""
    labels = sample.labels[1:] if task == "causal_lm" else sample.labels
    return sum(label != IGNORE_INDEX for label in labels)


def _canonical(columns: Sequence[str], column_map: Mapping[str, str] | None) -> list[str]:
    column_map = column_map or {}
    return [column_map.get(c, c) for c in columns]


def detect_format(columns: Sequence[str], column_map: Mapping[str, str] | None = None) -> str:
    """The input format of a dataset with these columns (after renaming by ``column_map``,
    a dict {user_column: canonical_column}): one of ``FORMATS``."""
    present = set(_canonical(list(columns), column_map))
    for name, needed in FORMATS.items():
        if present.issuperset(needed):
            return name
    mapped = f" (after column_map={dict(column_map)})" if column_map else ""
    raise ValueError(
        f"cannot tell the input format from columns {sorted(present)}{mapped}; accepted "
        f"formats need columns: {accepted_columns()}. Rename yours with column_map="
        "{'your_column': 'text'}"
    )


def accepted_columns() -> str:
    """The column sets of the accepted formats, for messages: "text; tokens+ner_tags; ..."."""
    return "; ".join("+".join(cols) for cols in reversed(FORMATS.values()))


def _to_py(value: Any) -> Any:
    """Plain Python lists/dicts/scalars from numpy arrays, pyarrow arrays or nested mixes."""
    if hasattr(value, "to_pylist"):  # pyarrow Array / ChunkedArray / Scalar list
        return value.to_pylist()
    if isinstance(value, np.ndarray):
        return [_to_py(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_py(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_py(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _assistant_spans(
    tokenizer: Any, messages: list[dict], full: str, first: int = 0
) -> list[tuple[int, int]]:
    """Character spans of ``full`` (the rendered chat) holding assistant turns at index >= first.

    A turn spans from the end of the conversation before it rendered with the generation
    prompt to the end of the conversation through it (trailing whitespace dropped). Where the
    template renders earlier turns differently (so prefixes do not match) or the turn is the
    first message, the turn's content is located in ``full`` instead (and ends the span if the
    rendering through the turn is not a prefix either). Empty turns are skipped.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message.get("content")
        if i < first or message.get("role") != "assistant" or not content:
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        if i and full.startswith(before) and len(before) >= cursor:
            start = len(before)
        else:
            start = full.find(content, cursor) if isinstance(content, str) else -1
            if start < 0:
                raise ValueError(
                    f"cannot locate assistant turn {i} in the chat-template rendering; the "
                    "template neither renders conversations prefix-consistently nor keeps "
                    "the content verbatim"
                )
        through = _render(tokenizer, messages[: i + 1]).rstrip()
        if full.startswith(through) and len(through) > start:
            end = len(through)
        else:
            end = start + len(content) if isinstance(content, str) else len(full)
        spans.append((start, end))
        cursor = end
    return spans


def _encode_chat(tokenizer: Any, messages: list[dict], first: int = 0) -> tuple[list, list]:
    """(input_ids, labels) of a chat; assistant turns at index >= first are labelled."""
    full = _render(tokenizer, messages)
    spans = _assistant_spans(tokenizer, messages, full, first)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and any(a <= s < b for a, b in spans):
            labels[t] = ids[t]
    return ids, labels


def _encode_text(tokenizer: Any, texts: list[str]) -> list[tuple[list, list]]:
    ids_batch = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [
        (list(ids), list(ids) if text else [IGNORE_INDEX] * len(ids))
        for text, ids in zip(texts, ids_batch, strict=True)
    ]


def _encode_prompt_completion(
    tokenizer: Any, prompts: list, completions: list
) -> list[tuple[list, list]]:
    """TRL's rule: tokenise prompt and prompt+completion, label what follows the prompt ids,
    append EOS. If the joint ids do not start with the prompt ids (a token merged across the
    boundary), the completion is tokenised on its own and concatenated instead."""
    out: list[tuple[list, list] | None] = [None] * len(prompts)
    plain = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if isinstance(prompt, list):  # conversational: messages = prompt + completion
            out[i] = _encode_chat(tokenizer, prompt + list(completion or []), first=len(prompt))
        else:
            plain.append(i)
    if not plain:
        return out  # type: ignore[return-value]
    p_text = [prompts[i] or "" for i in plain]
    c_text = [completions[i] or "" for i in plain]
    p_ids = tokenizer(p_text, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(p_text, c_text, strict=True)])["input_ids"]
    eos = tokenizer.eos_token_id
    for i, c, pids, fids in zip(plain, c_text, p_ids, full_ids, strict=True):
        pids, fids = list(pids), list(fids)
        if not c:
            out[i] = (pids, [IGNORE_INDEX] * len(pids))
            continue
        if fids[: len(pids)] != pids:
            fids = pids + list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if eos is not None and (len(fids) == len(pids) or fids[-1] != eos):
            fids.append(eos)
        out[i] = (fids, [IGNORE_INDEX] * len(pids) + fids[len(pids):])
    return out  # type: ignore[return-value]


def _tag_ids(tags: list, label2id: Mapping[str, int] | None) -> list[int]:
    if all(isinstance(t, (int, np.integer)) for t in tags):
        return [int(t) for t in tags]
    if label2id is None:
        raise ValueError(
            f"ner_tags hold strings ({tags[:3]}...) but no label2id was given; pass "
            "label2id=model.config.label2id"
        )
    unknown = sorted({t for t in tags if t not in label2id})
    if unknown:
        raise ValueError(f"ner_tags {unknown} are not in label2id {sorted(label2id)}")
    return [label2id[t] for t in tags]


def _encode_ner(
    tokenizer: Any, words: list[list[str]], tags: list[list], label2id: Mapping[str, int] | None
) -> list[tuple[list, list]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the tokens+ner_tags format needs a fast tokenizer (for word_ids())")
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, add_special_tokens=True)
    out = []
    for i, (w, t) in enumerate(zip(words, tags, strict=True)):
        if len(w) != len(t):
            raise ValueError(f"row {i}: {len(w)} tokens but {len(t)} ner_tags")
        tag_ids = _tag_ids(list(t), label2id)
        ids = list(enc["input_ids"][i])
        labels, previous = [], None
        for word in enc.word_ids(i):
            labels.append(IGNORE_INDEX if word is None or word == previous else tag_ids[word])
            previous = word
        out.append((ids, labels))
    return out


def encode_batch(
    batch: Mapping[str, Sequence],
    tokenizer: Any,
    *,
    task: str,
    max_length: int | None = None,
    column_map: Mapping[str, str] | None = None,
    label2id: Mapping[str, int] | None = None,
) -> list[Encoded]:
    """Tokenise a batch (dict of equal-length columns: lists, numpy or pyarrow arrays) into
    one `Encoded` per row, for ``task`` "causal_lm" or "token_classification".

    For causal LMs the first token is never labelled (nothing predicts it). Truncation keeps
    the first ``max_length`` tokens and sets ``truncated``.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {TASKS}")
    fmt = detect_format(list(batch), column_map)
    if fmt not in _TASK_FORMATS[task]:
        raise ValueError(
            f"format {fmt!r} does not fit task {task!r}; it accepts {_TASK_FORMATS[task]}"
        )
    source = {(column_map or {}).get(k, k): k for k in batch}  # only needed columns are read
    col = {name: _to_py(batch[source[name]]) for name in FORMATS[fmt]}
    if fmt == "tokens":
        pairs = [(list(i), list(lab)) for i, lab in zip(col["input_ids"], col["labels"],
                                                        strict=True)]
    elif fmt == "text":
        pairs = _encode_text(tokenizer, [t or "" for t in col["text"]])
    elif fmt == "prompt_completion":
        pairs = _encode_prompt_completion(tokenizer, col["prompt"], col["completion"])
    elif fmt == "messages":
        pairs = [_encode_chat(tokenizer, m) for m in col["messages"]]
    else:
        pairs = _encode_ner(tokenizer, col["tokens"], col["ner_tags"], label2id)
    out = []
    for ids, labels in pairs:
        if len(ids) != len(labels):
            raise ValueError(f"input_ids has {len(ids)} tokens but labels has {len(labels)}")
        if task == "causal_lm" and fmt != "tokens" and labels:
            labels[0] = IGNORE_INDEX
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids, labels = ids[:max_length], labels[:max_length]
        out.append(Encoded(ids, labels, truncated))
    return out


def collate(
    samples: Sequence[Encoded], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad to the longest sample: input_ids (pad_token_id), attention_mask (0/1) and labels
    (-100), each int64 (B, T_max). ``padding_side`` "right" or "left"."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r}; expected 'right' or 'left'")
    width = max((len(s.input_ids) for s in samples), default=0)
    shape = (len(samples), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros(shape, dtype=torch.int64)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.int64)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.tensor(s.input_ids, dtype=torch.int64)
        attention_mask[row, cols] = 1
        labels[row, cols] = torch.tensor(s.labels, dtype=torch.int64)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
