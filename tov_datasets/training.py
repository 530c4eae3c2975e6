"""The training loop and evaluation: LoRA fine-tuning and token-mean losses on datasets in
any supported input format.

Holds encoding a dataset, length-bucketed micro-batches, the learning-rate schedule, the
optimizers (AdamW default, `NormalizedSGD`, `copy_optimizer`), progress bars, `fit` /
`finetune` and `mean_loss` / `evaluate_loss`. What touches the model's adapters (which
one is active, which parameters train) is `models`'.

Used by the ToV trajectory, the CLI and the benchmarks. Losses are token means over the
scored tokens (labels != -100), with the same masking as the scorer: causal LMs predict
``labels[:, 1:]`` from ``logits[:, :-1]``; token classifiers score ``labels`` in place.
A training step with gradient accumulation normalises by the scored tokens of the whole step.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tov_datasets.formats import IGNORE_INDEX, Encoded, collate, encode_batch, num_scored
from tov_datasets.models import (
    adapter_mode,
    adapter_parameters,
    infer_task,
    label_map,
    pad_token_id,
    require_peft,
    seeded_rng,
)

__all__ = [
    "SCHEDULES",
    "NormalizedSGD",
    "adamw",
    "copy_optimizer",
    "encode_dataset",
    "evaluate_loss",
    "finetune",
    "fit",
    "lr_schedule",
    "mean_loss",
    "micro_batches",
    "progress_bar",
]

SCHEDULES = ("linear", "constant")
_SORT_WINDOW = 32  # micro-batches whose rows are length-sorted together before shuffling
_ENCODE_ROWS = 1024

# A tqdm-like factory: progress(total=..., desc=...) -> object with update(n) and close().
ProgressFactory = Callable[..., Any]


def encode_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    task: str,
    max_length: int | None = None,
    column_map: Mapping[str, str] | None = None,
    label2id: Mapping[str, int] | None = None,
) -> list[Encoded]:
    """Tokenise every row of a ``datasets.Dataset`` with ``formats.encode_batch``."""
    encoded: list[Encoded] = []
    for batch in dataset.iter(batch_size=_ENCODE_ROWS):
        encoded.extend(
            encode_batch(
                batch, tokenizer, task=task, max_length=max_length, column_map=column_map,
                label2id=label2id,
            )
        )
    return encoded


def micro_batches(
    lengths: np.ndarray, batch_size: int, seed: int | None = None
) -> list[np.ndarray]:
    """Row indices of micro-batches of similar length (little padding).

    ``seed=None``: rows sorted by length, in order. Otherwise a seeded shuffle: rows are
    permuted, sorted by length inside windows of ``_SORT_WINDOW`` batches, cut into batches,
    and the batches permuted.
    """
    lengths = np.asarray(lengths)
    if seed is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(lengths.size)
    window = batch_size * _SORT_WINDOW
    batches = []
    for start in range(0, order.size, window):
        part = order[start : start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, part.size, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def lr_schedule(schedule: str, lr: float, num_steps: int) -> list[float]:
    """Per-step learning rates: ``"linear"`` decays lr * (T - t) / T (t = 0..T-1; the last
    step uses lr / T, as transformers' linear schedule without warm-up), ``"constant"``."""
    if schedule == "linear":
        return [lr * (num_steps - t) / num_steps for t in range(num_steps)]
    if schedule == "constant":
        return [lr] * num_steps
    raise ValueError(f"schedule={schedule!r} is not supported; expected one of {SCHEDULES}")


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def progress_bar(progress: ProgressFactory | None, total: int, desc: str) -> Iterator[Any]:
    """``progress(total=total, desc=desc)`` (e.g. ``tqdm.tqdm``), closed on exit; or a no-op."""
    bar = _NullBar() if progress is None else progress(total=total, desc=desc)
    try:
        yield bar
    finally:
        bar.close()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """Summed log-loss (float32) over the scored tokens of a collated batch."""
    device = _device(model)
    labels = batch["labels"].to(device)
    kwargs = {"use_cache": False} if task == "causal_lm" else {}
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        **kwargs,
    ).logits
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def adamw(params: Sequence[nn.Parameter], lr: float) -> torch.optim.AdamW:
    """The default optimizer: AdamW with weight decay 0 (torch's other defaults)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def copy_optimizer(
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[tuple[nn.Parameter, nn.Parameter]],
    lr: float,
) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s class and hyperparameters (betas, eps, weight
    decay, ...; ``lr`` replaced) over the second parameter of each pair, each starting from a
    copy of its first parameter's state (e.g. AdamW's exp_avg, exp_avg_sq and step).

    Every parameter of ``optimizer`` must appear first in a pair; ``optimizer`` itself is
    left untouched (its state tensors are cloned, not shared).
    """
    target = {id(p): q for p, q in pairs}
    groups = []
    for group in optimizer.param_groups:
        missing = [tuple(p.shape) for p in group["params"] if id(p) not in target]
        if missing:
            raise ValueError(
                f"the optimizer holds parameters (shapes {missing[:3]}) with no counterpart "
                "to copy their state to"
            )
        hyper = {key: value for key, value in group.items() if key != "params"}
        groups.append({**hyper, "params": [target[id(p)] for p in group["params"]], "lr": lr})
    copied = type(optimizer)(groups)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in optimizer.state:
                copied.state[target[id(p)]] = {
                    key: value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
                    for key, value in optimizer.state[p].items()
                }
    return copied


class NormalizedSGD(torch.optim.Optimizer):
    """Gradient steps normalised by the gradient's RMS: ``p <- p - lr * g / rms(g)``.

    ``rms(g) = sqrt(sum of g**2 / number of elements)`` over every parameter of the
    optimizer that has a gradient (all groups together, computed in float32 per parameter
    and float64 across them; parameters without a gradient are skipped, as torch's
    optimizers do). The update's RMS is thus ``lr`` -- the size of a fresh Adam step, which
    is ~ ``lr * sign(g)`` per coordinate -- but it points along the gradient. A zero gradient
    makes no step. No momentum, no weight decay, no state.
    """

    def __init__(self, params: Any, lr: float):
        _check_positive(lr=lr)
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [
            (p, group["lr"]) for group in self.param_groups for p in group["params"]
            if p.grad is not None
        ]
        if not with_grad:
            return loss
        device = with_grad[0][0].device
        norms = torch.stack([
            torch.linalg.vector_norm(p.grad, dtype=torch.float32).to(device)
            for p, _ in with_grad
        ])
        squares = float(norms.double().square().sum())  # the step's one host sync
        rms = math.sqrt(squares / sum(p.numel() for p, _ in with_grad))
        if rms > 0:
            for p, lr in with_grad:
                p.add_(p.grad, alpha=-lr / rms)
        return loss


def _check_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    allowed = {id(p) for p in params}
    for group in optimizer.param_groups:
        if any(id(p) not in allowed for p in group["params"]):
            raise ValueError(
                "the optimizer holds parameters outside the trained adapter; build it over "
                "adapter_parameters(model, adapter)"
            )


def _step_plan(
    samples: Sequence[Encoded], epochs: int, batch_size: int, accumulation: int, seed: int
) -> list[list[np.ndarray]]:
    """The optimizer steps of ``epochs`` epochs: each a list of ``accumulation`` (fewer at
    an epoch's end) micro-batches of row indices, shuffled from ``seed + epoch``."""
    lengths = np.array([len(s.input_ids) for s in samples])
    plan = []
    for epoch in range(epochs):
        batches = micro_batches(lengths, batch_size, seed=seed + epoch)
        plan += [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
    return plan


def fit(
    model: nn.Module,
    samples: Sequence[Encoded],
    *,
    pad_token_id: int,
    adapter: str | None = None,
    epochs: int = 1,
    lr: float = 2e-4,
    batch_size: int = 8,
    schedule: str = "linear",
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    grad_accumulation: int | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Train one adapter on encoded samples; the engine of :func:`finetune` (see there).
    (Over 60 lines through its signature: the loop itself is ~25.)

    ``grad_accumulation``: micro-batches per optimizer step (default 1); a value at least the
    number of micro-batches of an epoch makes one full-batch step per epoch.
    """
    _check_positive(
        epochs=epochs, lr=lr, batch_size=batch_size, grad_accumulation=grad_accumulation or 1
    )
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not supported; expected one of {SCHEDULES}")
    if not samples:
        raise ValueError("nothing to train on: the dataset is empty")
    require_peft(model)
    task = infer_task(model)
    counts = np.array([num_scored(s, task) for s in samples])
    if counts.sum() == 0:
        raise ValueError("the dataset has no scored tokens (every label is -100)")
    plan = _step_plan(samples, epochs, batch_size, grad_accumulation or 1, seed)
    lrs = lr_schedule(schedule, lr, len(plan))
    losses: list[float] = []
    with adapter_mode(model, adapter, train=True) as used:
        params = adapter_parameters(model, used)
        if optimizer is None:
            optimizer = adamw(params, lr)
        else:
            _check_optimizer(optimizer, params)
        with (
            seeded_rng(seed, _device(model)),
            progress_bar(progress, len(plan), f"train {used}") as bar,
        ):
            for step, step_lr in zip(plan, lrs, strict=True):
                tokens = max(int(sum(counts[mb].sum() for mb in step)), 1)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                total = 0.0
                for mb in step:
                    if not counts[mb].any():  # no scored tokens (e.g. empty rows): no loss
                        continue
                    loss = _loss_sum(model, collate([samples[i] for i in mb], pad_token_id), task)
                    (loss / tokens).backward()
                    total += loss.item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total / tokens)
                bar.update(1)
    step_tokens = [sum(int(counts[mb].sum()) for mb in step) for step in plan]
    mean = sum(loss * t for loss, t in zip(losses, step_tokens, strict=True)) / sum(step_tokens)
    return {"lrs": lrs, "losses": losses, "mean_loss": mean, "steps": len(plan), "adapter": used}


def finetune(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any,
    adapter: str | None = None,
    epochs: int = 1,
    lr: float = 2e-4,
    batch_size: int = 8,
    schedule: str = "linear",
    max_length: int | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    grad_accumulation: int | None = None,
    column_map: Mapping[str, str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """LoRA fine-tuning of one adapter of a peft model on a ``datasets.Dataset``.

    Trains ``adapter`` (default: the active one; it is active only while training) with
    AdamW (weight decay 0) or the given ``optimizer`` (over that adapter's parameters; its
    state carries on), learning rate per step from ``schedule`` (``lr_schedule``), dropout
    on. Only that adapter's parameters get gradients. Micro-batches: length-bucketed and
    shuffled from ``seed + epoch``, padded to their longest row; dropout seeded from
    ``seed`` (the caller's RNG state is left as it was). Mode, active adapter and
    requires_grad flags are restored afterwards.

    Returns ``{"lrs": per-step lrs, "losses": per-step token-mean losses, "mean_loss",
    "steps", "adapter"}``.
    """
    task = infer_task(model)
    samples = encode_dataset(
        dataset, tokenizer, task=task, max_length=max_length, column_map=column_map,
        label2id=label_map(model, task),
    )
    return fit(
        model, samples, pad_token_id=pad_token_id(tokenizer), adapter=adapter, epochs=epochs,
        lr=lr, batch_size=batch_size, schedule=schedule, seed=seed, optimizer=optimizer,
        grad_accumulation=grad_accumulation, progress=progress,
    )


def mean_loss(
    model: nn.Module,
    samples: Sequence[Encoded],
    *,
    pad_token_id: int,
    adapter: str | None = None,
    batch_size: int = 16,
) -> float:
    """Token-mean log-loss over all scored tokens of encoded samples, in eval mode."""
    _check_positive(batch_size=batch_size)
    task = infer_task(model)
    lengths = np.array([len(s.input_ids) for s in samples])
    counts = np.array([num_scored(s, task) for s in samples])
    if counts.sum() == 0:
        raise ValueError("the dataset has no scored tokens (empty, or every label is -100)")
    total = 0.0
    with adapter_mode(model, adapter, train=False), torch.no_grad():
        for mb in micro_batches(lengths, batch_size):
            if not counts[mb].any():  # no scored tokens (e.g. empty rows): no loss
                continue
            total += _loss_sum(model, collate([samples[i] for i in mb], pad_token_id), task).item()
    return total / float(counts.sum())


def evaluate_loss(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any,
    adapter: str | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    column_map: Mapping[str, str] | None = None,
) -> float:
    """Token-mean log-loss over all scored tokens of ``dataset`` (same masking as the
    scorer), with ``adapter`` (default: the active one; a plain model works too), in eval
    mode; mode and active adapter are restored."""
    task = infer_task(model)
    samples = encode_dataset(
        dataset, tokenizer, task=task, max_length=max_length, column_map=column_map,
        label2id=label_map(model, task),
    )
    return mean_loss(
        model, samples, pad_token_id=pad_token_id(tokenizer), adapter=adapter,
        batch_size=batch_size,
    )
