"""Plain-text rows of one token-length range from the offline corpora (`assets`).

Tweets (WNUT-16 text, a few tweets per row, newline-separated) as the target among chunks of
Wikipedia summaries and BBC News articles cut at sentence ends: every row of every source has
lo..hi tokens, so length alone does not tell the target apart. Used by the demo
(`tov_datasets.demo`) and the quality benchmark's causal-LM configurations.

A row is a dict {"text": str, "source": str, "is_target": bool}; ``length`` arguments count
the tokens of a string (`token_length`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "article_chunks",
    "detokenize",
    "pack",
    "sentences",
    "text_rows",
    "token_length",
    "tweets_among_text",
]

Length = Callable[[str], int]
# WNUT-16 tokens written without a space before them
_GLUED = {".", ",", "!", "?", ":", ";", "'s", "n't", "'m", "'re", "'ll", "'ve", "'d", "..."}


def token_length(tokenizer: Any) -> Length:
    """The number of tokens of a string under ``tokenizer`` (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def detokenize(tokens: Sequence[str]) -> str:
    """WNUT-16 word tokens as tweet text ("it 's" -> "it's", "great !" -> "great!")."""
    out = ""
    for t in tokens:
        glue = not out or t in _GLUED
        out += t if glue else " " + t
    return out


def sentences(text: str) -> list[str]:
    """``text`` with its whitespace collapsed, split after ".", "!" or "?" (empty parts
    dropped)."""
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if p]


def pack(pieces: Sequence[str], sep: str, length: Length, lo: int, hi: int) -> list[str]:
    """Consecutive pieces joined by ``sep`` into rows of lo..hi tokens, greedily: a row is
    emitted as soon as it reaches lo; a piece that would take it past hi starts a new row
    (the short one is dropped); a piece longer than hi on its own is skipped."""
    rows: list[str] = []
    current: list[str] = []
    for p in pieces:
        if length(p) > hi:
            current = []
            continue
        candidate = sep.join(current + [p])
        if length(candidate) > hi:
            current = [p]
        else:
            current.append(p)
        text = sep.join(current)
        if length(text) >= lo:
            rows.append(text)
            current = []
    return rows


def article_chunks(texts: Sequence[str], order: Sequence[int], length: Length, lo: int,
                   hi: int) -> Iterator[list[str]]:
    """Each text in ``order`` cut at sentence ends into rows of lo..hi tokens (a list per
    text; empty when no such row fits)."""
    for i in order:
        yield pack(sentences(texts[int(i)]), " ", length, lo, hi)


def text_rows(texts: Sequence[str], rng: np.random.Generator, length: Length, lo: int,
              hi: int, k: int, source: str) -> list[dict[str, Any]]:
    """Non-target rows: chunks of the texts in a random order, whole texts at a time, until
    at least k rows (the caller takes what it needs)."""
    rows: list[dict[str, Any]] = []
    for chunks in article_chunks(texts, rng.permutation(len(texts)), length, lo, hi):
        rows += [{"text": t, "source": source, "is_target": False} for t in chunks]
        if len(rows) >= k:
            break
    return rows


def tweets_among_text(
    seed: int, length: Length, *, pool_size: int, target_in_pool: int, val_size: int,
    test_size: int, min_tokens: int, max_tokens: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(pool, val, test) rows: tweet rows (WNUT-16 in a seeded order, packed) for validation,
    test and ``target_in_pool`` of the pool; the rest of the pool chunks of Wikipedia
    summaries and BBC News (half each, Wikipedia the odd one), in a seeded random order.
    Every row has min_tokens..max_tokens tokens."""
    from tov_datasets import assets

    rng = np.random.default_rng(seed)
    wnut = assets.wnut16()
    tweets = [detokenize(wnut[int(i)]["tokens"]) for i in rng.permutation(len(wnut))]
    target = pack(tweets, "\n", length, min_tokens, max_tokens)
    need = val_size + test_size + target_in_pool
    if len(target) < need:
        raise ValueError(f"only {len(target)} tweet rows; {need} asked for")
    target_rows = [{"text": t, "source": "tweets", "is_target": True} for t in target[:need]]
    other: list[dict[str, Any]] = []
    k = pool_size - target_in_pool
    wiki, bbc = assets.wiki_summaries(), assets.bbc_news()
    for name, ds in (("wiki", wiki), ("bbc", bbc)):
        rows = text_rows(ds["text"], rng, length, min_tokens, max_tokens, k, name)
        other += rows[: k - k // 2] if name == "wiki" else rows[: k // 2]
    if len(other) < k:
        raise ValueError(f"only {len(other)} Wikipedia/BBC rows; {k} asked for")
    val, test = target_rows[:val_size], target_rows[val_size:val_size + test_size]
    pool = target_rows[val_size + test_size:] + other
    pool = [pool[i] for i in rng.permutation(len(pool))]
    return pool, val, test
