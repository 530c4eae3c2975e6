"""Length-only: rows whose number of scored tokens matches the validation set's come first.
score(x) = -|log(num_scored(x)) - median over val of log(num_scored)|, counted on the
library's own encoding for the model's task (``formats.num_scored``). Rows with no scored
token teach nothing: they rank after every other row (with a finite score)."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.baselines._util import encode, format_view, top_n
from tov_datasets.formats import num_scored
from tov_datasets.models import infer_task


def scored_lengths(model, tokenizer, dataset: Any, max_length: int | None = None) -> np.ndarray:
    """(len(dataset),) int64 number of tokens of each row that enter the model's loss."""
    task = infer_task(model)
    samples = encode(model, format_view(dataset)[1], tokenizer, max_length)
    return np.array([num_scored(s, task) for s in samples], dtype=np.int64)


def scores(model, tokenizer, pool, val, *, max_length: int | None = None) -> np.ndarray:
    """(len(pool),) float64 minus the distance in log scored length to the val median."""
    val_lengths = scored_lengths(model, tokenizer, val, max_length)
    val_lengths = val_lengths[val_lengths > 0]
    if val_lengths.size == 0:
        raise ValueError("no validation row has a scored token: there is no target length")
    target = float(np.median(np.log(val_lengths)))
    lengths = scored_lengths(model, tokenizer, pool, max_length)
    has = lengths > 0
    out = np.empty(len(lengths), dtype=np.float64)
    out[has] = -np.abs(np.log(lengths[has]) - target)
    out[~has] = (out[has].min() if has.any() else 0.0) - 1.0
    return out


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    """The ``n`` pool rows closest in scored length to the validation set (``seed`` unused)."""
    return top_n(scores(model, tokenizer, pool, val, **kwargs), n)
