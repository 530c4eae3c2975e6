"""LoRA fine-tuning and token-mean evaluation on datasets in any supported input format.

Used by the ToV trajectory, the CLI and the benchmarks. Losses are token means over the
scored tokens (labels != -100), with the same masking as the scorer: causal LMs predict
``labels[:, 1:]`` from ``logits[:, :-1]``; token classifiers score ``labels`` in place.
A training step with gradient accumulation normalises by the scored tokens of the whole step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tov_datasets.formats import IGNORE_INDEX, TASKS, Encoded, collate, encode_batch

__all__ = [
    "SCHEDULES",
    "NormalizedSGD",
    "adamw",
    "adapter_parameters",
    "copy_adapter",
    "copy_optimizer",
    "default_lora_config",
    "default_lora_rank",
    "encode_dataset",
    "evaluate_loss",
    "finetune",
    "fit",
    "infer_task",
    "label_map",
    "lr_schedule",
    "mean_loss",
    "micro_batches",
    "num_scored",
    "pad_token_id",
    "paired_adapter_parameters",
    "progress_bar",
    "seeded_rng",
]

SCHEDULES = ("linear", "constant")
LORA_ALPHA = 32
LORA_DROPOUT = 0.2
# default_lora_rank: the largest power of two <= hidden_size / RANK_HIDDEN_RATIO, clamped to
# RANK_BOUNDS (hidden 4096 -> 256 as in the paper's 8B models; 576 -> 32; 384 -> 16).
RANK_HIDDEN_RATIO = 16
RANK_BOUNDS = (8, 256)
# Leaf names of the attention and MLP projections (Llama/Mistral/Qwen/Gemma, Phi-3,
# GPT-NeoX, GPT-2 and BERT-like encoders; "dense" is BERT's attention-output and MLP layers).
PROJECTION_NAMES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    "qkv_proj", "gate_up_proj",
    "query_key_value", "dense_h_to_4h", "dense_4h_to_h",
    "c_attn", "c_proj", "c_fc",
    "query", "key", "value", "dense",
})
_SORT_WINDOW = 32  # micro-batches whose rows are length-sorted together before shuffling
_ENCODE_ROWS = 1024

# A tqdm-like factory: progress(total=..., desc=...) -> object with update(n) and close().
ProgressFactory = Callable[..., Any]


def infer_task(model: nn.Module) -> str:
    """``"causal_lm"`` or ``"token_classification"``, from the (peft-wrapped) model's class."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(inner).__name__
    if "TokenClassification" in name:
        return "token_classification"
    if "CausalLM" in name or "LMHead" in name:
        return "causal_lm"
    raise ValueError(
        f"cannot tell the task of a {name}; tov supports causal LMs (*ForCausalLM) and token "
        "classifiers (*ForTokenClassification)"
    )


def _hidden_size(model: nn.Module) -> int:
    """The model's hidden size: its config's ``hidden_size`` (``n_embd`` / ``d_model``), else
    the width of its input embeddings."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(inner.get_input_embeddings().embedding_dim)


def default_lora_rank(model: nn.Module) -> int:
    """The LoRA rank used when none is given: the largest power of two <= hidden_size / 16,
    clamped to [8, 256] (hidden 4096 -> 256 as in the paper for 8B models, SmolLM2-135M's
    576 -> 32, MiniLM's 384 -> 16): the adapter grows with the model instead of rank 256
    giving a small model as many LoRA parameters as weights."""
    low, high = RANK_BOUNDS
    ratio = _hidden_size(model) // RANK_HIDDEN_RATIO
    rank = 1 << (ratio.bit_length() - 1) if ratio >= 1 else 1
    return min(max(rank, low), high)


def default_lora_config(
    task: str,
    rank: int | None = None,
    *,
    model: nn.Module | None = None,
    target_modules: Sequence[str] | str | None = None,
) -> Any:
    """The default LoRA config: alpha 32, dropout 0.2, rank ``rank`` (None:
    `default_lora_rank` of ``model``, which is then required), on the attention and MLP
    projections.

    Targets: ``target_modules`` if given; else the projections of ``model`` found by name
    (``PROJECTION_NAMES``); else peft's ``"all-linear"``. Token classifiers also train their
    classification head (peft's TOKEN_CLS task adds it to ``modules_to_save``).
    """
    from peft import LoraConfig

    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {TASKS}")
    if rank is None and model is None:
        raise ValueError("pass rank= or model= (the default rank scales with the model)")
    if target_modules is None and model is not None:
        names = {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        }
        target_modules = sorted(names & PROJECTION_NAMES) or None
    return LoraConfig(
        r=rank if rank is not None else default_lora_rank(model),
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=list(target_modules) if target_modules is not None else "all-linear",
        task_type="CAUSAL_LM" if task == "causal_lm" else "TOKEN_CLS",
    )


def _require_peft(model: nn.Module) -> None:
    if not hasattr(model, "peft_config"):
        raise ValueError(
            "training needs a peft model holding a LoRA adapter; wrap yours with "
            "peft.get_peft_model(model, default_lora_config(task, model=model))"
        )


def _adapter_containers(model: nn.Module) -> Iterator[Any]:
    """The per-adapter containers (ModuleDict/ParameterDict) of peft's tuner layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            for layer_name in module.adapter_layer_names:
                try:
                    yield functools.reduce(getattr, layer_name.split("."), module)
                except AttributeError:
                    continue


def _members(item: Any) -> list[nn.Parameter]:
    return [item] if isinstance(item, nn.Parameter) else list(item.parameters())


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """The parameters of one adapter (LoRA factors, modules_to_save copies), in model order."""
    params, seen = [], set()
    for container in _adapter_containers(model):
        if adapter in container:
            for p in _members(container[adapter]):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    if not params:
        raise ValueError(f"the model has no adapter {adapter!r}")
    return params


def paired_adapter_parameters(
    model: nn.Module, src: str, dst: str
) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(parameter of ``src``, the same parameter of ``dst``) for two adapters of one config,
    in model order: the same module and role (e.g. ``...q_proj.lora_A.<src>.weight`` and
    ``...q_proj.lora_A.<dst>.weight``). Raises ValueError if their layouts differ."""
    pairs = []
    for container in _adapter_containers(model):
        if src not in container and dst not in container:
            continue
        if src not in container or dst not in container:
            raise ValueError(
                f"adapters {src!r} and {dst!r} target different modules; create "
                f"{dst!r} with the config of {src!r}"
            )
        for p, q in zip(_members(container[src]), _members(container[dst]), strict=True):
            if p.shape != q.shape:
                raise ValueError(
                    f"adapters {src!r} and {dst!r} differ in shape ({tuple(p.shape)} vs "
                    f"{tuple(q.shape)}); create {dst!r} with the config of {src!r}"
                )
            pairs.append((p, q))
    return pairs


def copy_adapter(model: nn.Module, src: str, dst: str) -> None:
    """Copy the weights of adapter ``src`` into adapter ``dst`` in place (same config).

    The parameter objects of ``dst`` are kept, so an optimizer over them stays valid.
    """
    with torch.no_grad():
        for p, q in paired_adapter_parameters(model, src, dst):
            q.copy_(p)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")


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


def num_scored(sample: Encoded, task: str) -> int:
    """Tokens of a sample that enter the loss (a causal LM's first token never does)."""
    labels = sample.labels[1:] if task == "causal_lm" else sample.labels
    return sum(label != IGNORE_INDEX for label in labels)


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


@contextlib.contextmanager
def _using(model: nn.Module, adapter: str | None, *, train: bool) -> Iterator[str | None]:
    """Activate ``adapter`` (default: the active one) in train or eval mode; in train mode only
    its parameters require grad. The mode, active adapter and requires_grad flags are
    restored on exit. Yields the adapter used."""
    was_training = model.training
    previous = getattr(model, "active_adapter", None)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if adapter is not None:
            _require_peft(model)
            if adapter not in model.peft_config:
                raise ValueError(
                    f"the model has no adapter {adapter!r}; it has {sorted(model.peft_config)}"
                )
            model.set_adapter(adapter)
        used = adapter or previous
        if train:
            _require_peft(model)
            trainable = {id(p) for p in adapter_parameters(model, used)}
            for p in model.parameters():
                p.requires_grad_(id(p) in trainable)
        model.train(train)
        yield used
    finally:
        if previous is not None and model.active_adapter != previous:
            model.set_adapter(previous)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


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


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG (dropout) for the block, leaving the caller's RNG state untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
    _require_peft(model)
    task = infer_task(model)
    lengths = np.array([len(s.input_ids) for s in samples])
    counts = np.array([num_scored(s, task) for s in samples])
    if counts.sum() == 0:
        raise ValueError("the dataset has no scored tokens (every label is -100)")
    accumulation = grad_accumulation or 1
    plan = []
    for epoch in range(epochs):
        batches = micro_batches(lengths, batch_size, seed=seed + epoch)
        plan += [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
    lrs = lr_schedule(schedule, lr, len(plan))
    losses: list[float] = []
    with _using(model, adapter, train=True) as used:
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


def label_map(model: nn.Module, task: str) -> Mapping[str, int] | None:
    """The model's label2id for token classification (what NER tag strings map to)."""
    return getattr(model.config, "label2id", None) if task == "token_classification" else None


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
    with _using(model, adapter, train=False), torch.no_grad():
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
