"""Helpers shared by the baselines: encoding, per-sample token-mean losses, LoRA wrapping."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tov_datasets.formats import FORMATS, IGNORE_INDEX, Encoded, collate, detect_format
from tov_datasets.models import (
    adapter_parameters,
    default_lora_config,
    infer_task,
    pad_token_id,
)
from tov_datasets.training import encode_dataset, micro_batches

__all__ = [
    "batch_on_device",
    "encode",
    "format_view",
    "lora_copy",
    "per_sample_losses",
    "per_sample_token_mean",
    "random_subset",
    "top_n",
    "train_adapter",
]


def format_view(dataset: Any) -> tuple[str, Any]:
    """(input format, the dataset restricted to that format's columns): a baseline that reads
    rows through the view never sees the benchmark's ``source`` column."""
    fmt = detect_format(dataset.column_names)
    return fmt, dataset.select_columns(list(FORMATS[fmt]))


def encode(model: nn.Module, dataset: Any, tokenizer: Any, max_length: int | None = None):
    """Encoded samples of a datasets.Dataset for this model's task."""
    task = infer_task(model)
    label2id = getattr(model.config, "label2id", None) if task == "token_classification" else None
    return encode_dataset(dataset, tokenizer, task=task, max_length=max_length, label2id=label2id)


def lora_copy(
    model: nn.Module, lora: Any | None, adapter: str, rank: int | None = None, seed: int = 0
):
    """A deep copy of the plain ``model`` wrapped by peft with one fresh LoRA adapter
    (initialised from ``seed``; a fresh classifier head of ``model`` is kept as is)."""
    from peft import get_peft_model

    task = infer_task(model)
    cfg = copy.deepcopy(lora) if lora is not None else default_lora_config(task, rank, model=model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(copy.deepcopy(model), cfg, adapter_name=adapter)


def batch_on_device(samples: Sequence[Encoded], pad_id: int, model: nn.Module
                    ) -> dict[str, torch.Tensor]:
    """``collate(samples)`` with every tensor on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in collate(list(samples), pad_id).items()}


def per_sample_token_mean(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) token-mean log-loss of each row over its scored tokens (causal LMs shift)."""
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(labels.shape)
    counts = (labels != IGNORE_INDEX).sum(1).clamp(min=1)
    return flat.sum(1) / counts


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    kwargs = {"use_cache": False} if task == "causal_lm" else {}
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
    ).logits


@torch.no_grad()
def per_sample_losses(
    model: nn.Module, samples: Sequence[Encoded], pad_id: int, batch_size: int = 16
) -> np.ndarray:
    """Token-mean loss of every sample under the model's active adapter, in eval mode."""
    task = infer_task(model)
    was = model.training
    model.eval()
    out = np.zeros(len(samples), dtype=np.float64)
    lengths = np.array([len(s.input_ids) for s in samples])
    for mb in micro_batches(lengths, batch_size):
        batch = batch_on_device([samples[i] for i in mb], pad_id, model)
        out[mb] = per_sample_token_mean(forward_logits(model, batch, task), batch["labels"],
                                        task).double().cpu().numpy()
    model.train(was)
    return out


def random_subset(num: int, fraction: float, seed: int) -> np.ndarray:
    k = max(1, int(round(fraction * num)))
    return np.sort(np.random.default_rng(seed).choice(num, size=min(k, num), replace=False))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Row indices (int64, sorted ascending) of the ``n`` highest scores; ties go to the
    lower row index."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= n <= len(scores):
        raise ValueError(f"n={n} rows cannot be selected from a pool of {len(scores)}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    return np.sort(np.argsort(-scores, kind="stable")[:n]).astype(np.int64)


def linear_warmup_decay(lr: float, total: int, warmup_ratio: float) -> list[float]:
    """HF's linear schedule with warm-up: 0 -> lr over ceil(ratio*T) steps, then -> 0."""
    warm = math.ceil(warmup_ratio * total)
    out = []
    for t in range(total):
        if t < warm:
            out.append(lr * t / max(1, warm))
        else:
            out.append(lr * max(0.0, (total - t) / max(1, total - warm)))
    return out


def train_adapter(
    model: nn.Module,
    samples: Sequence[Encoded],
    pad_id: int,
    *,
    adapter: str,
    epochs: int,
    lr: float,
    batch_size: int,
    warmup_ratio: float = 0.0,
    seed: int = 0,
    on_epoch_end: Any = None,
) -> dict[str, Any]:
    """AdamW (weight decay 0) on the mean of per-sample token-mean losses, one linear
    warm-up/decay schedule over all epochs; ``on_epoch_end(epoch, optimizer, epoch_lrs)``."""
    task = infer_task(model)
    model.set_adapter(adapter)
    params = adapter_parameters(model, adapter)
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lengths = np.array([len(s.input_ids) for s in samples])
    plans = [micro_batches(lengths, batch_size, seed=seed + e) for e in range(epochs)]
    lrs = linear_warmup_decay(lr, sum(len(p) for p in plans), warmup_ratio)
    step, losses, epoch_lrs = 0, [], []
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for epoch, plan in enumerate(plans):
            this = []
            for mb in plan:
                for g in opt.param_groups:
                    g["lr"] = lrs[step]
                this.append(lrs[step])
                batch = batch_on_device([samples[i] for i in mb], pad_id, model)
                loss = per_sample_token_mean(forward_logits(model, batch, task), batch["labels"],
                                             task).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
            epoch_lrs.append(float(np.mean(this)))
            if on_epoch_end is not None:
                on_epoch_end(epoch, opt, epoch_lrs[-1])
    model.eval()
    return {"losses": losses, "epoch_lrs": epoch_lrs, "optimizer": opt, "params": params}


def pad_id_of(tokenizer: Any) -> int:
    return pad_token_id(tokenizer)
