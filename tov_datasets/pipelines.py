"""The function form of the ToV scorer, for ``Dataset.map`` and for pipeline steps.

    tov_score = make_tov_score(model, tokenizer)
    scored = dataset.map(tov_score, batched=True)

``make_tov_score`` returns a `ToVScorer` (the one scoring path), so what `datasets` hashes for
its cache fingerprint is the scorer's cheap fingerprint, never the model's weights. The
datatrove and Data-Juicer steps (`tov_datasets.integrations`) build theirs with it from paths,
once per worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tov_datasets.models import load_model, load_tokenizer
from tov_datasets.scorer import ToVScorer

__all__ = ["adapter_paths", "make_tov_score"]

PathLike = str | os.PathLike[str]
# One target: an adapter (directory or name); several: {name: directory} with a plain model
# or a path, [name, ...] with a peft model holding them.
ValAdapters = PathLike | Mapping[str, PathLike] | Sequence[str]


def adapter_paths(val_adapter: PathLike | Mapping[str, PathLike]) -> str | dict[str, str]:
    """A pipeline step's val_adapter as plain strings (steps are pickled or hashed): one
    directory, or {target name: directory} for several targets."""
    if isinstance(val_adapter, (str, os.PathLike)):
        return os.fspath(val_adapter)
    if not isinstance(val_adapter, Mapping):
        raise ValueError(
            "val_adapter: give one adapter directory, or {name: directory} for several targets"
        )
    return {str(name): os.fspath(path) for name, path in val_adapter.items()}


def make_tov_score(
    model: torch.nn.Module | PathLike,
    tokenizer: Any = None,
    *,
    base_adapter: PathLike = "base",
    val_adapter: ValAdapters = "val",
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> ToVScorer:
    """The scoring function for ``dataset.map(tov_score, batched=True)``.

    model: a peft model holding both adapters, a plain model, or the path of a saved model
    (loaded with `models.load_model` in ``dtype``); with a plain model or a path,
    ``base_adapter`` and ``val_adapter`` are peft adapter directories. Several targets:
    ``val_adapter`` = {name: adapter directory} (a peft model: a list of its adapter names),
    scored in one forward into the columns ``tov_score_<name>``. tokenizer: a tokenizer or
    its path (default: the model path). options: the other `ToVScorer` keywords (transform,
    max_length, batch_size, device, kernel_backend, column_map).
    """
    if isinstance(model, (str, os.PathLike)):
        tokenizer = model if tokenizer is None else tokenizer
        model = load_model(model, dtype)
    if tokenizer is None:
        raise ValueError("pass a tokenizer (or its path) with a loaded model")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return ToVScorer(
        model, tokenizer, base_adapter=base_adapter, val_adapter=val_adapter, **options
    )
