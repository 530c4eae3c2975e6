"""ToV along a short training trajectory (interleaved or parallel), and `tov_select`.

For epochs k = 1..L on a random base set U of the pool:

1. train the base adapter one epoch on U (AdamW; its state persists across epochs);
2. copy base -> val and train val on the validation set at val_lr = ``val_lr_ratio`` x the
   base lr of epoch k: one epoch of mini-batches (``val_mode="epoch"``), or ONE step on the
   token-mean gradient of the whole validation set (``"step"``), with the update rule
   ``val_optimizer`` (`_val_optimizer`): a fresh AdamW (``"fresh"``), an AdamW continuing
   from a copy of the base optimizer's state (``"continue"``), or normalised gradient steps
   (``"sgd"``, `training.NormalizedSGD`);
3. score the pool: loss(base, x) - loss(val, x) (`ToVScorer`), kept per epoch;
4. interleaved: the base continues from the val weights (val -> base, same optimizer
   state); parallel: it continues from its own weights.

The final score is the mean over epochs; the selection is length-binned Score+Random
(`select_by_score`) with the random part drawn from U.

Every stage draws its randomness (micro-batch order, dropout) from a seed derived from
(seed, epoch, stage), so resuming needs no RNG state: the adapters and the base optimizer
state of the last finished epoch are enough for a bit-identical continuation.

Learning rates: epoch k trains at lr_k = lr * (L - k + 1) / L, constant within the epoch (a
linear decay across the L epochs, per epoch). The base lr at the end of epoch k is thus
lr_k, and it never reaches 0, so every epoch's val update (and score) is informative; a
per-step decay to 0 would make the last epoch's val lr vanish (with L = 1, every score).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tov_datasets import storage, training
from tov_datasets.scorer import NUM_TOKENS, SCORE, ToVScorer
from tov_datasets.select import random_count, select_by_score

__all__ = ["ToVResult", "epoch_lrs", "num_epochs", "tov_select"]

VARIANTS = ("interleaved", "parallel")
VAL_MODES = ("epoch", "step")
VAL_OPTIMIZERS = ("fresh", "continue", "sgd")
BASE_ADAPTER = "tov_base"
VAL_ADAPTER = "tov_val"
ROW = "tov_row"
SHARD_ROWS = 2048  # rows per score shard: the unit of resumption of a scoring pass
# epochs=None: L = clamp(round(TRAJECTORY_SAMPLES / base_size), 1, MAX_DEFAULT_EPOCHS).
TRAJECTORY_SAMPLES = 16 * 1024
# The paper's trajectories are a few epochs; more on a small base set average the scores
# over near-identical adapters, at the cost of one training + scoring pass (and one saved
# epoch) each: 273 epochs on a 60-row pool before this bound.
MAX_DEFAULT_EPOCHS = 8


def epoch_column(k: int) -> str:
    return f"tov_score_epoch_{k}"


@dataclass
class ToVResult:
    """What `tov_select` returns.

    selected: the n chosen pool rows (all pool columns, plus ``tov_row`` = row index in the
    pool, ``tov_score``, ``tov_num_tokens``, the per-epoch scores and ``tov_from_score``: True
    if chosen by score, False if by the random part), ascending ``tov_row``.
    scores: one row per pool row: ``tov_row``, ``tov_score`` (mean over epochs),
    ``tov_num_tokens`` and ``tov_score_epoch_1..L``.
    base_indices: the pool rows of the base set U, ascending.
    timings: seconds per stage (setup, train_base, train_val, score, io, select, total).
    disk_bytes: bytes under output_dir at the end (0 without one).
    history: per epoch, the base and val learning rates, step counts and training losses.
    """

    selected: Any
    scores: Any
    base_indices: np.ndarray
    timings: dict[str, float]
    disk_bytes: int
    history: list[dict[str, Any]] = field(default_factory=list)


def num_epochs(base_size: int, epochs: int | None = None) -> int:
    """``epochs``, or clamp(round(16384 / base_size), 1, 8) when None (``MAX_DEFAULT_EPOCHS``
    says why 8)."""
    if epochs is not None:
        return epochs
    return min(max(1, round(TRAJECTORY_SAMPLES / base_size)), MAX_DEFAULT_EPOCHS)


def epoch_lrs(lr: float, num_epochs: int) -> list[float]:
    """The base learning rate of each epoch: lr * (L - k + 1) / L for k = 1..L."""
    return [lr * (num_epochs - k) / num_epochs for k in range(num_epochs)]


def _derive(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for one stage (e.g. epoch k, base or val)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _check_arguments(
    pool: Any, val: Any, n: int, base_size: int, epochs: int | None, lr: float,
    val_lr_ratio: float, variant: str, val_mode: str, val_optimizer: str,
    random_fraction: float, batch_size: int, max_length: int | None,
) -> None:
    import datasets

    for name, ds in (("pool", pool), ("val", val)):
        if not isinstance(ds, datasets.Dataset):
            raise TypeError(
                f"{name} must be a datasets.Dataset, got {type(ds).__name__}; build one with "
                "datasets.Dataset.from_list(rows) or datasets.load_dataset(...)"
            )
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; pass one of {VARIANTS}")
    if val_mode not in VAL_MODES:
        raise ValueError(f"val_mode={val_mode!r} is not supported; pass one of {VAL_MODES}")
    if val_optimizer not in VAL_OPTIMIZERS:
        raise ValueError(
            f"val_optimizer={val_optimizer!r} is not supported; pass one of {VAL_OPTIMIZERS}"
        )
    if len(pool) == 0:
        raise ValueError("the pool is empty: pass the candidate samples to select from")
    if len(val) == 0:
        raise ValueError(
            "the validation set is empty: pass at least one sample of the target distribution"
        )
    if not 0 < n <= len(pool):
        raise ValueError(f"n={n} must be in [1, len(pool)={len(pool)}]")
    if base_size < 1:
        raise ValueError(f"base_size={base_size} must be >= 1")
    if base_size > len(pool):
        raise ValueError(
            f"base_size={base_size} exceeds the pool's {len(pool)} rows; pass "
            f"base_size={len(pool)} (=len(pool)) or fewer"
        )
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1 (or None for the default rule)")
    if max_length is not None and max_length < 1:
        raise ValueError(
            f"max_length={max_length} must be >= 1 (or None: the model's "
            "max_position_embeddings)"
        )
    if not (lr > 0 and val_lr_ratio > 0 and batch_size >= 1):
        raise ValueError(
            f"lr={lr}, val_lr_ratio={val_lr_ratio} and batch_size={batch_size} must be positive"
        )
    n_random = random_count(n, random_fraction)
    if n_random > base_size:
        raise ValueError(
            f"the random part ({n_random} of n={n}) is drawn from the base set of "
            f"base_size={base_size}; raise base_size or lower n or random_fraction"
        )


def _draw_base(num_rows: int, base_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=base_size, replace=False)).astype(np.int64)


def _original(module: nn.Module) -> nn.Module:
    """The module peft wrapped (the module itself when not a peft wrapper)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    if isinstance(module, AuxiliaryTrainingWrapper):
        return module.original_module
    return module


def _strip_peft(module: nn.Module) -> None:
    """Put back the modules peft wrapped, recursively (the inverse of get_peft_model)."""
    for name, child in list(module.named_children()):
        original = _original(child)
        if original is not child:
            setattr(module, name, original)
        _strip_peft(original)


@contextlib.contextmanager
def _attached(model: nn.Module, lora: Any, seed: int) -> Iterator[nn.Module]:
    """The model as a peft model holding BASE_ADAPTER (the starting point) and VAL_ADAPTER.

    A plain model is wrapped with ``lora`` (fresh LoRA weights drawn from ``seed``); a peft
    model gets two new adapters, BASE a copy of its active adapter. On exit the user's model
    is as it was: the new adapters (or all LoRA layers) removed, requires_grad flags, mode
    and active adapter restored.
    """
    from peft import PeftModel, get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    device = next(model.parameters()).device
    if isinstance(model, PeftModel):
        if lora is not None:
            raise ValueError(
                "lora= applies to plain models only; a peft model starts from its active "
                "adapter and its config"
            )
        start = model.active_adapter
        clash = {BASE_ADAPTER, VAL_ADAPTER} & set(model.peft_config)
        if clash:
            raise ValueError(f"the model already has adapters {sorted(clash)}; remove them")
        config = model.peft_config[start]
        with training.seeded_rng(seed, device):
            for name in (BASE_ADAPTER, VAL_ADAPTER):
                model.add_adapter(name, copy.deepcopy(config))
        training.copy_adapter(model, start, BASE_ADAPTER)
        peft_model = model
    else:
        config = lora or training.default_lora_config(training.infer_task(model), model=model)
        inner_dict = set(vars(model))
        with training.seeded_rng(seed, device):
            peft_model = get_peft_model(model, copy.deepcopy(config), adapter_name=BASE_ADAPTER)
            peft_model.add_adapter(VAL_ADAPTER, copy.deepcopy(config))
    try:
        yield peft_model
    finally:
        if peft_model is model:
            model.set_adapter(start)
            for name in (BASE_ADAPTER, VAL_ADAPTER):
                model.delete_adapter(name)
        else:
            _strip_peft(model)
            for key in set(vars(model)) - inner_dict:  # e.g. the peft_config peft attaches
                delattr(model, key)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _adapter_digest(model: nn.Module, adapter: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in training.adapter_parameters(model, adapter):
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_WEIGHT_SAMPLES = 64  # values per frozen weight tensor in the model's identity


def _weights_sample_digest(model: nn.Module) -> str:
    """sha256 of the frozen weights' names, shapes, dtypes and up to 64 evenly spaced values
    of each: identifies a model by content at the cost of a few reads (hashing every weight
    of a large model would take minutes). The trajectory's adapters are left out."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if BASE_ADAPTER in name or VAL_ADAPTER in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _WEIGHT_SAMPLES)][:_WEIGHT_SAMPLES]
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()


def _tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of what a tokenizer does: its vocabulary and rules (the serialised fast
    tokenizer, else the vocabulary), special tokens, padding/truncation sides, chat template
    and maximum length; not where it was loaded from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return storage.canonical_hash({
        "rules": rules,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "sides": [tokenizer.padding_side, tokenizer.truncation_side],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "model_max_length": tokenizer.model_max_length,
    })


# Identity entries that name where something was loaded from, not what it is.
_LOCATION_KEYS = ("_name_or_path", "base_model_name_or_path")


def _identity(model: nn.Module, tokenizer: Any, pool: Any, val: Any) -> dict[str, Any]:
    """What identifies the inputs in the manifest, by content, never by path: the model's
    class, config, a sample of its frozen weights and the starting adapter weights; the
    tokenizer's rules; the pool's and validation set's rows."""
    inner = model.get_base_model()
    config = inner.config.to_dict()
    lora = model.peft_config[BASE_ADAPTER].to_dict()
    for settings in (config, lora):
        for key in _LOCATION_KEYS:
            settings.pop(key, None)
    return {
        "model_class": type(inner).__name__,
        "model_config": config,
        "model_weights": _weights_sample_digest(model),
        "lora": lora,
        "start_adapter": _adapter_digest(model, BASE_ADAPTER),
        "tokenizer": _tokenizer_digest(tokenizer),
        "pool": storage.dataset_digest(pool),
        "val": storage.dataset_digest(val),
    }


class _Run:
    """One trajectory: the model with both adapters, the encoded base and validation sets,
    the base optimizer, the manifest (None: in memory) and which epoch's weights are held."""

    def __init__(self, model: nn.Module, tokenizer: Any, pool: Any, val: Any,
                 base_indices: np.ndarray, options: dict[str, Any],
                 manifest: storage.Manifest | None, progress: Any):
        self.model, self.pool, self.options, self.manifest = model, pool, options, manifest
        self.progress = progress
        task = training.infer_task(model)
        encode = dict(
            task=task, max_length=options["max_length"], column_map=options["column_map"],
            label2id=training.label_map(model, task),
        )
        self.base_samples = training.encode_dataset(pool.select(base_indices), tokenizer,
                                                    **encode)
        self.val_samples = training.encode_dataset(val, tokenizer, **encode)
        if not any(training.num_scored(s, task) for s in self.base_samples):
            raise ValueError(
                "the base set (drawn from the pool) has no scored tokens: every sample is "
                "empty after tokenization and truncation"
            )
        if not any(training.num_scored(s, task) for s in self.val_samples):
            raise ValueError(
                "the validation set has no scored tokens: every sample is empty after "
                "tokenization and truncation"
            )
        self.pad_token_id = training.pad_token_id(tokenizer)
        self.lrs = epoch_lrs(options["lr"], options["epochs"])
        self.optimizer = training.adamw(
            training.adapter_parameters(model, BASE_ADAPTER), options["lr"]
        )
        self.scorer = ToVScorer(
            model, tokenizer, base_adapter=BASE_ADAPTER, val_adapter=VAL_ADAPTER,
            transform=options["transform"], max_length=options["max_length"],
            batch_size=options["batch_size"], column_map=options["column_map"],
        )
        self.weights_epoch = 0  # the epoch whose (base, val) weights the adapters hold
        self.optimizer_epoch = 0  # the epoch whose base optimizer state is held
        self.timings = dict.fromkeys(
            ("setup", "train_base", "train_val", "score", "io", "select"), 0.0
        )

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - start

    def done(self, step: str) -> bool:
        """Whether ``step`` finished in an earlier run and its files pass their checksums."""
        if self.manifest is None:
            return False
        with self.timed("io"):
            return self.manifest.verify(step)

    def path(self, k: int, name: str) -> Path:
        assert self.manifest is not None
        return self.manifest.path(f"epoch_{k:03d}/{name}")


def _train_base(run: _Run, k: int) -> dict[str, Any]:
    """Epoch k of the base on U, continuing from epoch k-1 (interleaved: from its val)."""
    if k > 1 and run.options["variant"] == "interleaved":
        training.copy_adapter(run.model, VAL_ADAPTER, BASE_ADAPTER)
    with run.timed("train_base"):
        out = training.fit(
            run.model, run.base_samples, pad_token_id=run.pad_token_id, adapter=BASE_ADAPTER,
            lr=run.lrs[k - 1], batch_size=run.options["batch_size"], schedule="constant",
            seed=_derive(run.options["seed"], k, 0), optimizer=run.optimizer,
            progress=run.progress,
        )
    run.optimizer_epoch = k
    return {"base_lr": run.lrs[k - 1], "base_steps": out["steps"], "base_loss": out["mean_loss"]}


def _val_optimizer(run: _Run, k: int, val_lr: float) -> torch.optim.Optimizer | None:
    """The update rule of epoch k's val training (None: `training.fit`'s fresh AdamW).

    ``"continue"``: an AdamW over the val adapter starting from a copy of the base
    optimizer's state right after base epoch k (exp_avg, exp_avg_sq and step mapped
    parameter by parameter; the base's betas, eps and weight decay; lr = val_lr), held
    only while val trains (one more copy of the moments in memory). The base optimizer is
    not modified. Base and val training of an epoch form one manifest step, so a resumed
    epoch k reloads epoch k-1's ``optimizer.safetensors``, retrains base epoch k and copies
    the same state as an uninterrupted run. ``"sgd"``: `training.NormalizedSGD` at val_lr.
    """
    choice = run.options["val_optimizer"]
    if choice == "continue":
        assert run.optimizer_epoch == k, "the base optimizer must hold epoch k's state"
        pairs = training.paired_adapter_parameters(run.model, BASE_ADAPTER, VAL_ADAPTER)
        return training.copy_optimizer(run.optimizer, pairs, val_lr)
    if choice == "sgd":
        return training.NormalizedSGD(
            training.adapter_parameters(run.model, VAL_ADAPTER), lr=val_lr
        )
    return None


def _train_val(run: _Run, k: int) -> dict[str, Any]:
    """Copy base -> val and train val on the validation set at val_lr_ratio x lr_k."""
    training.copy_adapter(run.model, BASE_ADAPTER, VAL_ADAPTER)
    val_lr = run.options["val_lr_ratio"] * run.lrs[k - 1]
    step_mode = run.options["val_mode"] == "step"
    with run.timed("train_val"):
        out = training.fit(
            run.model, run.val_samples, pad_token_id=run.pad_token_id, adapter=VAL_ADAPTER,
            lr=val_lr, batch_size=run.options["batch_size"], schedule="constant",
            seed=_derive(run.options["seed"], k, 1), optimizer=_val_optimizer(run, k, val_lr),
            grad_accumulation=len(run.val_samples) if step_mode else None,
            progress=run.progress,
        )
    run.weights_epoch = k
    return {"val_lr": val_lr, "val_steps": out["steps"], "val_loss": out["mean_loss"]}


def _save_epoch(run: _Run, k: int, info: dict[str, Any]) -> None:
    """Both adapters and the base optimizer state of epoch k, then the manifest entry."""
    if run.manifest is None:
        return
    with run.timed("io"):
        paths = [
            storage.save_adapter(run.model, BASE_ADAPTER, run.path(k, "base")),
            storage.save_adapter(run.model, VAL_ADAPTER, run.path(k, "val")),
            storage.save_optimizer_state(run.optimizer, run.path(k, "optimizer.safetensors")),
        ]
        run.manifest.record(f"epoch_{k}/train", paths, **info)


def _load_epoch(run: _Run, k: int, *, optimizer: bool) -> None:
    """Make the adapters (and, if asked, the base optimizer) hold epoch k's state."""
    if k == 0:  # the starting point is only ever held, never reloaded (epochs run forward)
        assert run.weights_epoch == 0 and (not optimizer or run.optimizer_epoch == 0)
        return
    with run.timed("io"):
        if run.weights_epoch != k:
            storage.load_adapter(run.model, BASE_ADAPTER, run.path(k, "base"))
            storage.load_adapter(run.model, VAL_ADAPTER, run.path(k, "val"))
            run.weights_epoch = k
        if optimizer and run.optimizer_epoch != k:
            storage.load_optimizer_state(run.optimizer, run.path(k, "optimizer.safetensors"))
            run.optimizer_epoch = k


def _score_epoch(run: _Run, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float32) and scored-token counts (int32) of the pool for epoch k, shard by
    shard; finished shards are read back, the others scored and saved."""
    num_rows = len(run.pool)
    scores = np.empty(num_rows, dtype=np.float32)
    counts = np.empty(num_rows, dtype=np.int32)
    starts = range(0, num_rows, run.options["shard_rows"])
    with training.progress_bar(run.progress, num_rows, f"score epoch {k}") as bar:
        for i, start in enumerate(starts):
            stop = min(start + run.options["shard_rows"], num_rows)
            step = f"epoch_{k}/scores/{i}"
            if run.done(step):
                with run.timed("io"):
                    table = storage.read_parquet(run.path(k, f"scores/shard_{i:05d}.parquet"))
            else:
                _load_epoch(run, k, optimizer=False)
                with run.timed("score"):
                    s, c = run.scorer.score_columns(run.pool[start:stop])
                table = pa.table({SCORE: pa.array(s, pa.float32()),
                                  NUM_TOKENS: pa.array(c, pa.int32())})
                if run.manifest is not None:
                    with run.timed("io"):
                        path = storage.write_parquet(
                            run.path(k, f"scores/shard_{i:05d}.parquet"), table
                        )
                        run.manifest.record(step, [path])
            scores[start:stop] = table.column(SCORE).to_numpy()
            counts[start:stop] = table.column(NUM_TOKENS).to_numpy()
            bar.update(stop - start)
    return scores, counts


def _trajectory(run: _Run) -> tuple[list[np.ndarray], np.ndarray, list[dict[str, Any]]]:
    """All epochs: per-epoch scores, token counts and per-epoch history (resuming finished
    epochs and shards from the manifest; a redone epoch invalidates everything after it)."""
    per_epoch, history, counts = [], [], None
    for k in range(1, run.options["epochs"] + 1):
        step = f"epoch_{k}/train"
        if run.done(step):
            info = run.manifest.info(step)  # type: ignore[union-attr]
        else:
            if run.manifest is not None:
                run.manifest.forget(lambda s, k=k: int(s.split("/")[0][6:]) >= k)
            _load_epoch(run, k - 1, optimizer=True)
            info = {"epoch": k, **_train_base(run, k), **_train_val(run, k)}
            _save_epoch(run, k, info)
        scores, counts = _score_epoch(run, k)
        per_epoch.append(scores)
        history.append(info)
    return per_epoch, counts, history


def _scores_dataset(per_epoch: list[np.ndarray], counts: np.ndarray) -> pa.Table:
    mean = np.mean(np.stack(per_epoch), axis=0, dtype=np.float64).astype(np.float32)
    columns = {
        ROW: pa.array(np.arange(counts.size, dtype=np.int64)),
        SCORE: pa.array(mean),
        NUM_TOKENS: pa.array(counts),
    }
    columns.update({epoch_column(k): pa.array(s) for k, s in enumerate(per_epoch, 1)})
    return pa.table(columns)


def _with_columns(pool: Any, columns: pa.Table) -> Any:
    """The pool as a flat in-memory dataset with ``columns`` appended (same names replaced)."""
    import datasets

    table = pool.data.table
    if pool._indices is not None:
        table = table.take(pool._indices.column(0))
    table = table.drop_columns([c for c in columns.column_names if c in table.column_names])
    for name in columns.column_names:
        table = table.append_column(name, columns.column(name))
    added = datasets.Features.from_arrow_schema(columns.schema)
    features = datasets.Features(
        {name: added.get(name) or pool.features[name] for name in table.column_names}
    )
    return datasets.Dataset(table.replace_schema_metadata(None),
                            info=datasets.DatasetInfo(features=features))


def tov_select(
    model: nn.Module,
    tokenizer: Any,
    pool: Any,
    val: Any,
    *,
    n: int,
    base_size: int = 4096,
    epochs: int | None = None,
    lr: float = 2e-4,
    val_lr_ratio: float = 0.1,
    variant: str = "interleaved",
    val_mode: str = "epoch",
    val_optimizer: str = "fresh",
    lora: Any = None,
    transform: str = "identity",
    num_bins: int = 10,
    random_fraction: float = 0.5,
    batch_size: int = 8,
    max_length: int | None = None,
    seed: int = 0,
    output_dir: str | Path | None = None,
    column_map: Mapping[str, str] | None = None,
    progress: Any = None,
) -> ToVResult:
    """Score ``pool`` by ToV along a short trajectory and select ``n`` rows (module doc).

    model: a plain transformers causal LM or token classifier (LoRA from ``lora``, default
    ``default_lora_config(task, model=model)``, fresh weights drawn from ``seed``), or a peft
    model: the trajectory starts from a copy of its ACTIVE adapter, with that adapter's config.
    The model is trained in place through two temporary adapters ("tov_base", "tov_val") that
    are removed on return (a plain model gets its original modules back); its own weights,
    adapters, mode and requires_grad flags are left as they were. The trained adapters live
    only in ``output_dir``.
    pool, val: ``datasets.Dataset`` in any format of `tov_datasets.formats`.
    base_size: rows of U, drawn from the pool with ``seed``. epochs: L (None: 16384 /
    base_size rounded, clamped to [1, 8]: `num_epochs`). lr: the base lr of epoch 1 (see
    ``epoch_lrs``). max_length: truncation for training and scoring (default: the model's
    max_position_embeddings). batch_size: micro-batch size for training and scoring.
    val_mode: the val update of each epoch is one epoch of mini-batches (``"epoch"``) or one
    step on the gradient of the whole validation set (``"step"``), by the rule
    ``val_optimizer``, all at val_lr = ``val_lr_ratio`` x the epoch's base lr:
    ``"fresh"``: a new AdamW each epoch; its first steps are ~ val_lr * sign(g) per
    coordinate whatever the base's step size (``"step"`` + ``"fresh"`` is one such step).
    ``"continue"``: AdamW from a copy of the base optimizer's moments and step count after
    that base epoch (the base optimizer is untouched). Adam's first moment then carries the
    base's momentum (the direction of training on U) into the val update, and the second
    moment scales it like a base step. ``"sgd"``: normalised gradient steps,
    val_lr * g / rms(g) (`training.NormalizedSGD`): the RMS size of a fresh Adam step, along
    the gradient instead of its sign.
    output_dir: per-epoch adapters (``epoch_KKK/base``, ``epoch_KKK/val``, peft safetensors),
    base optimizer state, score shards (``epoch_KKK/scores/shard_SSSSS.parquet``) and
    ``manifest.json``. A rerun with the same arguments resumes (finished epochs and shards
    are verified by checksum and skipped; the results are bit-identical on CPU, and on CUDA
    with ``torch.use_deterministic_algorithms(True)``); other arguments
    raise `storage.ManifestMismatchError`. ``n``, ``num_bins`` and ``random_fraction`` only
    act on the final selection, so they may change between reruns (the scores are reused).
    progress: a tqdm-like factory, ``progress(total=..., desc=...)`` -> object with
    ``update(k)`` and ``close()`` (e.g. ``tqdm.tqdm``); default: quiet.
    """
    started = time.perf_counter()
    _check_arguments(pool, val, n, base_size, epochs, lr, val_lr_ratio, variant, val_mode,
                     val_optimizer, random_fraction, batch_size, max_length)
    base_indices = _draw_base(len(pool), base_size, seed)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    options = {
        "base_size": base_size, "epochs": num_epochs(base_size, epochs), "lr": lr,
        "val_lr_ratio": val_lr_ratio, "variant": variant, "val_mode": val_mode,
        "val_optimizer": val_optimizer,
        "transform": transform, "batch_size": batch_size, "seed": seed,
        "max_length": max_length or getattr(inner.config, "max_position_embeddings", None),
        "column_map": dict(column_map) if column_map else None, "shard_rows": SHARD_ROWS,
    }
    with _attached(model, lora, seed) as peft_model, contextlib.ExitStack() as stack:
        manifest = None
        if output_dir is not None:
            args = {**options, **_identity(peft_model, tokenizer, pool, val)}
            manifest = stack.enter_context(storage.Manifest(output_dir, args))
        run = _Run(peft_model, tokenizer, pool, val, base_indices, options, manifest, progress)
        run.timings["setup"] = time.perf_counter() - started
        per_epoch, counts, history = _trajectory(run)
    with run.timed("select"):
        scores = _scores_dataset(per_epoch, counts)
        selected = select_by_score(
            _with_columns(pool, scores), n, num_bins=num_bins, random_fraction=random_fraction,
            random_pool=base_indices, seed=seed, mark_from_score=True,
        )
    import datasets

    run.timings["total"] = time.perf_counter() - started
    return ToVResult(
        selected=selected,
        scores=datasets.Dataset(scores),
        base_indices=base_indices,
        timings=run.timings,
        disk_bytes=storage.directory_bytes(output_dir) if output_dir is not None else 0,
        history=history,
    )
