"""Label prior, token classification only: score = share of a row's words tagged other than
"O". Higher first, so it picks the most entity-dense rows: a selector whose gain matches this
one's merely tracks entity density (the prior a short fine-tune learns), not the target."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.baselines._util import format_view, top_n
from tov_datasets.formats import IGNORE_INDEX
from tov_datasets.models import infer_task

OUTSIDE = "O"


def _outside_ids(model) -> set[int]:
    """Class ids named "O" in ``model.config.id2label``."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    ids = {int(i) for i, label in id2label.items() if label == OUTSIDE}
    if not ids:
        raise ValueError(f"ner_tags are class ids but model.config.id2label {dict(id2label)} "
                         f"names no {OUTSIDE!r} class")
    return ids


def entity_share(tags: list, outside_ids: set[int] | None) -> float:
    """Share of ``tags`` (strings, or class ids with ``outside_ids`` the ids of "O") that are
    not "O"; 0.0 for a row without words."""
    if not tags:
        return 0.0
    inside = sum(t != OUTSIDE if isinstance(t, str) else int(t) not in outside_ids
                 for t in tags)
    return inside / len(tags)


def word_tags(model, pool: Any) -> list[list]:
    """Each row's per-word tags: ``ner_tags``, or the labelled positions of pre-tokenised
    token-classification rows (one per word: the first sub-token's)."""
    fmt, view = format_view(pool)
    if fmt == "ner":
        return [row["ner_tags"] for row in view]
    if fmt == "tokens" and infer_task(model) == "token_classification":
        return [[t for t in row["labels"] if t != IGNORE_INDEX] for row in view]
    raise ValueError(f"the label prior needs token-classification rows (tokens + ner_tags); "
                     f"the pool is in the {fmt!r} format")


def scores(model, tokenizer, pool, val=None) -> np.ndarray:
    """(len(pool),) float64 share of each row's words that carry an entity tag."""
    tags = word_tags(model, pool)
    has_ids = any(not isinstance(t, str) for row in tags for t in row)
    outside_ids = _outside_ids(model) if has_ids else None
    return np.array([entity_share(row, outside_ids) for row in tags], dtype=np.float64)


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    """The ``n`` most entity-dense pool rows (``seed`` and ``val`` are unused)."""
    return top_n(scores(model, tokenizer, pool, val, **kwargs), n)
