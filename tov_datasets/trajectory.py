"""ToV along a short training trajectory (interleaved or parallel): `tov_select`, its
settings (`ToVConfig`, validated in one place), its result (`ToVResult`), the epoch loop and
its resumable state on disk (the manifest records the settings and the inputs' identity).

For epochs k = 1..L on a random base set U of the pool:

1. train the base adapter one epoch on U (AdamW; its state persists across epochs);
2. copy base -> val and train val on the validation set at val_lr = ``val_lr_ratio`` x the
   base lr of epoch k: one epoch of mini-batches (``val_mode="epoch"``), or ONE step on the
   token-mean gradient of the whole validation set (``"step"``), with the update rule
   ``val_optimizer`` (`_val_optimizer`): a fresh AdamW (``"fresh"``, the default),
   normalised gradient steps (``"sgd"``, `training.NormalizedSGD`) or an AdamW continuing
   from a copy of the base optimizer's state (``"continue"``);
3. score the pool: loss(base, x) - loss(val, x) (`ToVScorer`), kept per epoch;
4. interleaved: the base continues from the val weights (val -> base, same optimizer
   state); parallel: it continues from its own weights.

The final score is the mean over epochs; the selection is length-binned Score+Random
(`select_by_score`) with the random part drawn from U.

Held-out check (``holdout_fraction`` > 0): a share of each validation set, drawn with the
seed, is kept out of every val update and scored with the pool each epoch. The ROC-AUC of
those held-out rows against the pool's rows (`HoldoutCheck`) says whether the score ranks
unseen rows of the target above the pool, that is whether it recognises the target at all,
without labels on the pool; the val updates then see the rest of the validation set only.
With ``scored_only_above``, a target whose check reads at least that AUC takes its whole
pick by score (no random half).

Several targets (``val`` a mapping name -> validation set, K >= 1): the base trajectory
does not depend on the target, so each epoch trains the base once; step 2 runs per target,
each with its own val adapter (`models.val_adapter_name`) copied from the same base and the
same stage seed as a one-target run, so a target's val adapter is exactly the one a run on
that target alone trains from that base; step 3 scores every target in ONE `ToVScorer` pass
((1 + K) x B rows per forward, a score column per target). Parallel: the base never sees
the val adapters, so each target's scores are those of a one-target run with the same
seed. Interleaved: the base continues from the parameter-wise MEAN of the K val adapters
(`models.average_adapters`; K = 1 is exactly today's val -> base copy). Each val update is
a small step (lr x ``val_lr_ratio``) from the same base, so the mean is the base moved by
the average of the targets' steps: the trajectory leans towards the mixture of targets as
a one-target trajectory leans towards its target, with no target privileged (averaging the
LoRA factors A and B separately averages their product up to second order in the steps).
The other candidate, the base's own weights, is the parallel variant. Each target then gets
the selection a one-target run would make from its scores (its own n), and the combined
selection for the mixture is their union (`ToVResult`).

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
import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tov_datasets import models, storage, tables, training
from tov_datasets.evaluation import roc_auc
from tov_datasets.formats import num_scored
from tov_datasets.models import BASE_ADAPTER, VAL_ADAPTER
from tov_datasets.report import Timer
from tov_datasets.scorer import (
    DEFAULT_TRANSFORM,
    NUM_TOKENS,
    SCORE,
    ToVScorer,
    check_target_names,
    score_column,
)
from tov_datasets.select import (
    FROM_SCORE_COLUMN,
    SelectionOverlap,
    column_strata,
    random_count,
    select_by_score,
    selection_overlap,
)

__all__ = ["TARGETS", "HoldoutCheck", "ToVConfig", "ToVResult", "draw_base_set", "epoch_column",
           "epoch_lrs", "holdout_split", "num_epochs", "tov_select", "val_update_optimizer"]

VARIANTS = ("interleaved", "parallel")
VAL_MODES = ("epoch", "step")
VAL_OPTIMIZERS = ("fresh", "continue", "sgd")
# The val update rule unless told otherwise (README, "Validation update rule, confirmation":
# "sgd" was the default for two sessions; by its committed confirmation rule it returned to
# "fresh" after falling behind it on chat_long_v3, 3.1 s.e., all 5 seeds)
DEFAULT_VAL_OPTIMIZER = "fresh"
ROW = "tov_row"
TARGETS = "tov_targets"  # the combined selection's column: the targets that chose each row
# A target name that would make its score column another target's epoch column.
_EPOCH_SUFFIX = re.compile(r"(.+)_epoch_[1-9][0-9]*")
SHARD_ROWS = 2048  # rows per score shard: the unit of resumption of a scoring pass
# epochs=None: L = clamp(round(TRAJECTORY_SAMPLES / base_size), 1, MAX_DEFAULT_EPOCHS).
TRAJECTORY_SAMPLES = 16 * 1024
# The paper's trajectories are a few epochs; each costs one training + scoring pass (and
# one saved epoch): 273 epochs on a 60-row pool before this bound. Measured (README,
# "Selector trajectory epochs"): 1 and 4 epochs picked as well as 2 on two configurations.
MAX_DEFAULT_EPOCHS = 8


# The settings a manifest records (with shard_rows): those that change the trained adapters
# or the scores. lora is recorded through the adapter config (`_run_identity`); num_bins,
# random_fraction, scored_only_above and stratify_by_column act on the final selection only,
# so a rerun may change them.
_RECORDED = ("base_size", "epochs", "lr", "val_lr_ratio", "variant", "val_mode",
             "val_optimizer", "transform", "batch_size", "seed", "max_length", "column_map")
_TIMED_STAGES = ("setup", "train_base", "train_val", "score", "io", "select")


def epoch_column(k: int, target: str | None = None) -> str:
    """The score column of epoch k: ``tov_score_epoch_<k>`` (one validation set) or
    ``tov_score_<target>_epoch_<k>`` (the named target ``target``)."""
    return f"{_score_name(target)}_epoch_{k}"


def _score_name(target: str | None) -> str:
    """The mean-score column of one target (None: a plain validation set, ``tov_score``)."""
    return SCORE if target is None else score_column(target)


@dataclass(frozen=True)
class _Target:
    """One validation target of a run: its name (None: ``val`` was one Dataset), validation
    set and the rows of it held out of the val updates (int64 ascending, empty: none); the
    name fixes its val adapter, files and score column."""

    name: str | None
    val: Any
    held_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False)

    @property
    def trained(self) -> Any:
        """The rows of the validation set the val updates train on."""
        if not self.held_rows.size:
            return self.val
        return self.val.select(np.setdiff1d(np.arange(len(self.val)), self.held_rows))

    @property
    def held(self) -> Any:
        """The held-out rows of the validation set (a Dataset, possibly empty)."""
        return self.val.select(self.held_rows)

    @property
    def adapter(self) -> str:
        return VAL_ADAPTER if self.name is None else models.val_adapter_name(self.name)

    @property
    def directory(self) -> str:
        """Its val adapter's directory in each ``epoch_KKK``."""
        return "val" if self.name is None else f"val_{self.name}"

    @property
    def column(self) -> str:
        return _score_name(self.name)

    @property
    def argument(self) -> str:
        """Where the caller passed its validation set: ``val`` or ``val['<name>']``."""
        return "val" if self.name is None else f"val[{self.name!r}]"

    @property
    def described(self) -> str:
        return "the validation set" + ("" if self.name is None else f" of target {self.name!r}")


def holdout_split(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """The rows of a validation set of ``num_rows`` rows that a run with ``seed`` and
    holdout_fraction ``fraction`` holds out: int64 ascending, max(1, round(fraction x
    num_rows)) of them (none for fraction 0), the same for every target of a run."""
    count = 0 if fraction == 0 else max(1, round(fraction * num_rows))
    rng = np.random.default_rng(_derive(seed, 0, 2))
    return np.sort(rng.choice(num_rows, size=min(count, num_rows), replace=False)
                   ).astype(np.int64)


def _epoch_step(k: int, name: str) -> str:
    """The manifest step ``name`` of epoch k (``train``, ``scores/<shard>``)."""
    return f"epoch_{k}/{name}"


def _epoch_of(step: str) -> int:
    """The epoch of a manifest step written by `_epoch_step`."""
    return int(step.split("/")[0].removeprefix("epoch_"))


@dataclass(frozen=True)
class ToVConfig:
    """The settings of a `tov_select` run, validated on construction.

    base_size: rows of U, drawn from the pool with ``seed``. epochs: L (None: 16384 /
    base_size rounded, clamped to [1, 8]: `num_epochs`). lr: the base lr of epoch 1 (see
    ``epoch_lrs``). max_length: truncation for training and scoring (default: the model's
    max_position_embeddings). batch_size: micro-batch size for training and scoring.
    val_mode: the val update of each epoch is one epoch of mini-batches (``"epoch"``) or one
    step on the gradient of the whole validation set (``"step"``), by the rule
    ``val_optimizer`` (default ``DEFAULT_VAL_OPTIMIZER``, ``"fresh"``), all at val_lr =
    ``val_lr_ratio`` x the epoch's base lr: ``"fresh"``: a new AdamW each epoch; its first
    steps are ~ val_lr * sign(g) per coordinate whatever the base's step size (``"step"`` +
    ``"fresh"`` is one such step).
    ``"continue"``: AdamW from a copy of the base optimizer's moments and step count after
    that base epoch (the base optimizer is untouched). Adam's first moment then carries the
    base's momentum (the direction of training on U) into the val update, and the second
    moment scales it like a base step. ``"sgd"``: normalised gradient steps,
    val_lr * g / rms(g) (`training.NormalizedSGD`): the RMS size of a fresh Adam step, along
    the gradient instead of its sign.
    variant: ``"interleaved"`` (the base continues from the val weights) or ``"parallel"``.
    lora: a peft LoraConfig for a plain model (None: ``default_lora_config(task,
    model=model)``). transform: F of the per-token deltas ("identity", "abs", "relu").
    num_bins, random_fraction: the final selection's length bins and random share
    (`select_by_score`). stratify_by_column: a column of scalar labels (e.g. a classification
    answer) in the pool and every validation set: the scored part and the random part each
    keep each label's share of the target's validation set (`select_by_score`); None: no
    strata.
    seed: draws U, the LoRA start, micro-batch order, dropout and the held-out rows.
    holdout_fraction: the share of each validation set kept out of the val updates and
    scored with the pool (`holdout_split`; module doc, `HoldoutCheck`); 0 (default): none.
    scored_only_above: with holdout_fraction > 0, a target whose held-out check reads an AUC
    >= this value (`HoldoutCheck.auc`) takes its whole pick by score (random_fraction 0): the
    check says the score recognises the target, so the random half would only dilute the
    pick; below it, random_fraction applies. None (default): random_fraction always.
    column_map: {user_column: canonical_column} (`tov_datasets.formats`; kept as a dict,
    None when empty).
    """

    base_size: int = 4096
    epochs: int | None = None
    lr: float = 2e-4
    val_lr_ratio: float = 0.1
    variant: str = "interleaved"
    val_mode: str = "epoch"
    val_optimizer: str = DEFAULT_VAL_OPTIMIZER
    lora: Any = None
    transform: str = DEFAULT_TRANSFORM
    num_bins: int = 10
    random_fraction: float = 0.5
    stratify_by_column: str | None = None
    batch_size: int = 8
    max_length: int | None = None
    seed: int = 0
    holdout_fraction: float = 0.0
    scored_only_above: float | None = None
    column_map: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_map", dict(self.column_map) if self.column_map else None)
        for name, allowed in (("variant", VARIANTS), ("val_mode", VAL_MODES),
                              ("val_optimizer", VAL_OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported; pass one of {allowed}"
                )
        if self.base_size < 1:
            raise ValueError(f"base_size={self.base_size} must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1 (or None for the default rule)")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(
                f"max_length={self.max_length} must be >= 1 (or None: the model's "
                "max_position_embeddings)"
            )
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(
                f"holdout_fraction={self.holdout_fraction} must be in [0, 1) (0: no held-out "
                "check)"
            )
        if self.scored_only_above is not None and not (
            0 <= self.scored_only_above <= 1 and self.holdout_fraction > 0
        ):
            raise ValueError(
                f"scored_only_above={self.scored_only_above} must be in [0, 1] and needs "
                f"holdout_fraction > 0 (got {self.holdout_fraction}), e.g. "
                "holdout_fraction=0.2: it reads the held-out check's AUC"
            )
        if not (self.lr > 0 and self.val_lr_ratio > 0 and self.batch_size >= 1):
            raise ValueError(
                f"lr={self.lr}, val_lr_ratio={self.val_lr_ratio} and "
                f"batch_size={self.batch_size} must be positive"
            )

    def resolved(self, model: nn.Module) -> ToVConfig:
        """This config with ``epochs`` and ``max_length`` as the run uses them."""
        return dataclasses.replace(
            self, epochs=num_epochs(self.base_size, self.epochs),
            max_length=self.max_length or models.default_max_length(model),
        )

    def record(self) -> dict[str, Any]:
        """What the manifest records of the settings (``_RECORDED``, plus shard_rows, and
        holdout_fraction where > 0, so that a run begun before the option resumes)."""
        held = {"holdout_fraction": self.holdout_fraction} if self.holdout_fraction else {}
        return {**{name: getattr(self, name) for name in _RECORDED}, "shard_rows": SHARD_ROWS,
                **held}


@dataclass(frozen=True)
class HoldoutCheck:
    """How the scores rank the validation rows held out of the val updates against the pool.

    rows: int64 (H,), the held-out rows of the validation set, ascending. scores: float32
    (H,), their scores (mean over epochs, the run's F); scores_per_epoch: each epoch's
    float32 (H,); num_tokens: int32 (H,), their scored tokens. auc: ROC-AUC of the held-out
    rows against the pool's rows, on the mean scores (rows without scored tokens left out):
    the chance that an unseen row of the target outscores a pool row; 1: the score puts the
    target above the whole pool, 0.5: it does not tell the target from the pool.
    auc_per_epoch: the same on each epoch's scores.
    Pool rows like the target's count as negatives here, which pulls the AUC towards 0.5
    as their share of the pool grows.
    """

    rows: np.ndarray
    scores: np.ndarray
    scores_per_epoch: list[np.ndarray]
    num_tokens: np.ndarray
    auc: float
    auc_per_epoch: list[float]


@dataclass
class ToVResult:
    """What `tov_select` returns.

    One validation set (``val`` a Dataset):
    selected: the n chosen pool rows (all pool columns, plus ``tov_row`` = row index in the
    pool, ``tov_score``, ``tov_num_tokens``, the per-epoch scores and ``tov_from_score``: True
    if chosen by score, False if by the random part), ascending ``tov_row``.
    scores: one row per pool row: ``tov_row``, ``tov_score`` (mean over epochs),
    ``tov_num_tokens`` and ``tov_score_epoch_1..L``.
    per_target, overlap: None.

    Named targets (``val`` a mapping name -> Dataset):
    scores: ``tov_row``, ``tov_score_<name>`` per target (mean over epochs),
    ``tov_num_tokens``, then ``tov_score_<name>_epoch_1..L`` target by target
    (`epoch_column`).
    per_target: {name: the n_name rows a one-validation-set run would select from that
    target's scores (same seed and layout: ``tov_score``, ``tov_score_epoch_k``,
    ``tov_from_score``)}.
    selected: the combined selection for the mixture of targets, the union of the
    per-target selections (a row chosen by several targets appears once), ascending
    ``tov_row``: pool columns, the ``scores`` columns and ``tov_targets`` (the names of the
    targets that chose the row, in the mapping's order).
    overlap: {"selected": shared rows between the per-target selections, "from_score":
    between their score-chosen parts}, each a `select.SelectionOverlap`.

    base_indices: the pool rows of the base set U, ascending.
    timings: seconds per stage (setup, train_base, train_val, score, io, select, total).
    disk_bytes: bytes under output_dir at the end (0 without one).
    history: per epoch, the base and val learning rates, step counts and training losses
    (named targets: ``val_steps`` and ``val_loss`` are {name: value}).
    holdout: with ``holdout_fraction`` > 0, the `HoldoutCheck` of the validation set (named
    targets: {name: HoldoutCheck}); None otherwise. With ``scored_only_above``, a target
    whose check reads an AUC at or above it has every row of its pick chosen by score
    (``tov_from_score`` all True).
    """

    selected: Any
    scores: Any
    base_indices: np.ndarray
    timings: dict[str, float]
    disk_bytes: int
    history: list[dict[str, Any]] = field(default_factory=list)
    per_target: dict[str, Any] | None = None
    overlap: dict[str, SelectionOverlap] | None = None
    holdout: HoldoutCheck | dict[str, HoldoutCheck] | None = None


def num_epochs(base_size: int, epochs: int | None = None) -> int:
    """``epochs``, or clamp(round(16384 / base_size), 1, 8) when None (``MAX_DEFAULT_EPOCHS``
    says why 8)."""
    if epochs is not None:
        return epochs
    return min(max(1, round(TRAJECTORY_SAMPLES / base_size)), MAX_DEFAULT_EPOCHS)


def epoch_lrs(lr: float, epochs: int) -> list[float]:
    """The base learning rate of each epoch: lr * (L - k + 1) / L for k = 1..L (the linear
    `training.lr_schedule`, one step per epoch)."""
    return training.lr_schedule("linear", lr, epochs)


def _derive(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for one stage (e.g. epoch k, base or val)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _targets(val: Any) -> list[_Target]:
    """The validation targets of ``val``: one unnamed target for a Dataset; for a mapping,
    one per name (`scorer.check_target_names`; no name may be another's plus
    ``_epoch_<k>``, or its score column would be that target's epoch-k column)."""
    if not isinstance(val, Mapping):
        return [_Target(None, val)]
    names = check_target_names(list(val), "val")
    for name in names:
        match = _EPOCH_SUFFIX.fullmatch(name)
        if match and match.group(1) in names:
            raise ValueError(
                f"val: target {name!r} would share its score column {score_column(name)!r} "
                f"with the epoch columns of target {match.group(1)!r}; rename it"
            )
    return [_Target(name, val[name]) for name in names]


def _with_holdout(targets: list[_Target], config: ToVConfig) -> list[_Target]:
    """``targets`` with their held-out rows (`holdout_split`); a validation set left with no
    rows to train on is a ValueError naming ``holdout_fraction``."""
    out = []
    for target in targets:
        held = holdout_split(len(target.val), config.holdout_fraction, config.seed)
        if held.size and held.size >= len(target.val):
            raise ValueError(
                f"holdout_fraction={config.holdout_fraction} holds out all {len(target.val)} "
                f"rows of {target.described}, leaving none for the val update; lower "
                "holdout_fraction or pass more validation rows"
            )
        out.append(_Target(target.name, target.val, held))
    return out


def _counts(n: int | Mapping[str, int], targets: list[_Target]) -> dict[str | None, int]:
    """{target name: rows to select}: ``n`` for every target, or ``n[name]``."""
    names = [t.name for t in targets]
    if not isinstance(n, Mapping):
        return dict.fromkeys(names, n)
    if names == [None]:
        raise ValueError("n: a mapping of per-target counts needs val as a mapping of named "
                         "targets; pass an int")
    if set(n) != set(names):
        raise ValueError(f"n: its keys {sorted(map(str, n))} must be the targets of val "
                         f"{sorted(names)}")
    return {name: n[name] for name in names}


def _check_data(config: ToVConfig, pool: Any, targets: list[_Target],
                counts: Mapping[str | None, int]) -> None:
    """The settings that must fit the data: pool and validation sets non-empty datasets,
    each n and base_size within the pool, each random part within the base set (with label
    strata: n within the pool's rows of the validation set's labels, the random part within
    the base set's; the scored part may still take too many of the latter, which only the
    final selection can tell)."""
    import datasets

    for name, ds in (("pool", pool), *((t.argument, t.val) for t in targets)):
        if not isinstance(ds, datasets.Dataset):
            raise TypeError(
                f"{name} must be a datasets.Dataset, got {type(ds).__name__}; build one with "
                "datasets.Dataset.from_list(rows) or datasets.load_dataset(...)"
            )
    if len(pool) == 0:
        raise ValueError("the pool is empty: pass the candidate samples to select from")
    for target in targets:
        if len(target.val) == 0:
            raise ValueError(f"{target.described} is empty: pass at least one sample of the "
                             "target distribution")
    if config.base_size > len(pool):
        raise ValueError(
            f"base_size={config.base_size} exceeds the pool's {len(pool)} rows; pass "
            f"base_size={len(pool)} (=len(pool)) or fewer"
        )
    for name, n in counts.items():
        label = "n" if name is None else f"n[{name!r}]"
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"{label}={n!r} must be an integer")
        if not 0 < n <= len(pool):
            raise ValueError(f"{label}={n} must be in [1, len(pool)={len(pool)}]")
        n_random = random_count(n, config.random_fraction)
        if n_random > config.base_size:
            raise ValueError(
                f"the random part ({n_random} of {label}={n}) is drawn from the base set of "
                f"base_size={config.base_size}; raise base_size or lower n or random_fraction"
            )
    column = config.stratify_by_column
    if column is None:
        return
    base = draw_base_set(len(pool), config.base_size, config.seed)
    for target in targets:  # before any training
        strata = column_strata(pool, column, target.val, names=("pool", target.argument))
        labelled = strata["stratum_weights"][strata["strata"]] > 0  # (len(pool),)
        n = counts[target.name]
        n_random = random_count(n, config.random_fraction)
        if labelled.sum() < n:
            raise ValueError(
                f"stratify_by_column={column!r}: the labels of {target.described} hold "
                f"{labelled.sum()} pool rows, fewer than the {n} selected (every row chosen, "
                "by score or at random, has one of them); lower n"
            )
        if labelled[base].sum() < n_random:
            raise ValueError(
                f"stratify_by_column={column!r}: the labels of {target.described} hold "
                f"{labelled[base].sum()} rows of the base set (base_size={config.base_size}), "
                f"fewer than the {n_random} drawn at random from it; raise base_size, or "
                "lower n or random_fraction"
            )


def _with_overrides(config: ToVConfig | None, overrides: Mapping[str, Any]) -> ToVConfig:
    """``config`` (default ``ToVConfig()``) with the fields named in ``overrides`` replaced;
    a name that is no field is a TypeError, as for any unknown keyword argument."""
    fields = {f.name for f in dataclasses.fields(ToVConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"tov_select() got unexpected keyword arguments {unknown}; the "
                        f"settings are the fields of ToVConfig: {sorted(fields)}")
    return dataclasses.replace(config or ToVConfig(), **overrides)


def draw_base_set(num_rows: int, base_size: int, seed: int) -> np.ndarray:
    """(base_size,) int64 ascending pool rows of the base set U that a trajectory with
    ``seed`` draws (also the random part's pool of its selection)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=base_size, replace=False)).astype(np.int64)


def _adapter_digest(model: nn.Module, adapter: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in models.adapter_parameters(model, adapter):
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


def _run_identity(model: nn.Module, tokenizer: Any, pool: Any,
                  targets: list[_Target]) -> dict[str, Any]:
    """What identifies the inputs in the manifest, by content, never by path: the model's
    class, config, a sample of its frozen weights and the starting adapter weights; the
    tokenizer's rules; the pool's and validation sets' rows (named targets: ``val`` =
    {name: rows' digest} and ``targets`` = the names in order)."""
    inner = models.base_model(model)
    config = inner.config.to_dict()
    lora = models.adapter_config(model, BASE_ADAPTER)
    for settings in (config, lora):
        for key in _LOCATION_KEYS:
            settings.pop(key, None)
    if targets[0].name is None:
        val = {"val": storage.dataset_digest(targets[0].val)}
    else:
        val = {"val": {t.name: storage.dataset_digest(t.val) for t in targets},
               "targets": [t.name for t in targets]}
    return {
        "model_class": type(inner).__name__,
        "model_config": config,
        "model_weights": _weights_sample_digest(model),
        "lora": lora,
        "start_adapter": _adapter_digest(model, BASE_ADAPTER),
        "tokenizer": _tokenizer_digest(tokenizer),
        "pool": storage.dataset_digest(pool),
        **val,
    }


class _Run:
    """One trajectory: the model with its base and val adapters, the resolved settings,
    the targets, the encoded base and validation sets, the base optimizer, the manifest
    (None: in memory), the stage timer and which epoch's weights are held."""

    def __init__(self, model: nn.Module, tokenizer: Any, pool: Any, targets: list[_Target],
                 base_indices: np.ndarray, config: ToVConfig,
                 manifest: storage.Manifest | None, progress: Any):
        self.model, self.pool, self.config, self.manifest = model, pool, config, manifest
        self.targets = targets
        self.progress = progress
        task = models.infer_task(model)
        encode = dict(
            task=task, max_length=config.max_length, column_map=config.column_map,
            label2id=models.label_map(model, task),
        )
        self.base_samples = training.encode_dataset(pool.select(base_indices), tokenizer,
                                                    **encode)
        # {val adapter: its encoded validation set (the rows the val updates train on)}
        self.val_samples = {t.adapter: training.encode_dataset(t.trained, tokenizer, **encode)
                            for t in targets}
        self.held = {t.adapter: t.held for t in targets if t.held_rows.size}
        if not any(num_scored(s, task) for s in self.base_samples):
            raise ValueError(
                "the base set (drawn from the pool) has no scored tokens: every sample is "
                "empty after tokenization and truncation"
            )
        for target in targets:
            if not any(num_scored(s, task) for s in self.val_samples[target.adapter]):
                raise ValueError(
                    f"{target.described} has no scored tokens: every sample is empty after "
                    "tokenization and truncation"
                )
            held = self.held.get(target.adapter)
            if held is not None and not any(
                    num_scored(s, task) for s in training.encode_dataset(held, tokenizer,
                                                                          **encode)):
                raise ValueError(
                    f"holdout_fraction={config.holdout_fraction}: the {len(held)} held-out rows "
                    f"of {target.described} have no scored tokens (empty after tokenization "
                    "and truncation); raise holdout_fraction or pass 0 for no held-out check"
                )
        self.pad_token_id = models.pad_token_id(tokenizer)
        self.lrs = epoch_lrs(config.lr, config.epochs)
        self.optimizer = training.adamw(
            models.adapter_parameters(model, BASE_ADAPTER), config.lr
        )
        self.scorer = ToVScorer(
            model, tokenizer, base_adapter=BASE_ADAPTER,
            val_adapter=[t.adapter for t in targets] if self.named else VAL_ADAPTER,
            transform=config.transform, max_length=config.max_length,
            batch_size=config.batch_size, column_map=config.column_map,
        )
        self.weights_epoch = 0  # the epoch whose (base, val) weights the adapters hold
        self.optimizer_epoch = 0  # the epoch whose base optimizer state is held
        self.timed = Timer(_TIMED_STAGES)

    @property
    def named(self) -> bool:
        """Whether the targets are named (``val`` was a mapping)."""
        return self.targets[0].name is not None

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
    """Epoch k of the base on U, continuing from epoch k-1 (interleaved: from its val, the
    mean of the targets' val adapters, `models.average_adapters`)."""
    if k > 1 and run.config.variant == "interleaved":
        models.average_adapters(run.model, [t.adapter for t in run.targets], BASE_ADAPTER)
    with run.timed("train_base"):
        out = training.fit(
            run.model, run.base_samples, pad_token_id=run.pad_token_id, adapter=BASE_ADAPTER,
            lr=run.lrs[k - 1], batch_size=run.config.batch_size, schedule="constant",
            seed=_derive(run.config.seed, k, 0), optimizer=run.optimizer,
            progress=run.progress,
        )
    run.optimizer_epoch = k
    return {"base_lr": run.lrs[k - 1], "base_steps": out["steps"], "base_loss": out["mean_loss"]}


def val_update_optimizer(model: nn.Module, choice: str, val_lr: float, *,
                         base_optimizer: torch.optim.Optimizer | None = None,
                         base_adapter: str = BASE_ADAPTER,
                         val_adapter: str = VAL_ADAPTER) -> torch.optim.Optimizer | None:
    """The optimizer that trains ``val_adapter`` under the update rule ``choice`` (one of
    ``VAL_OPTIMIZERS``) at ``val_lr``; None for ``"fresh"`` (`training.fit`'s new AdamW).

    ``"continue"``: an AdamW over ``val_adapter`` starting from a copy of
    ``base_optimizer``'s state (exp_avg, exp_avg_sq and step mapped parameter by parameter
    from ``base_adapter``; its betas, eps and weight decay; lr = val_lr), which is left
    untouched. ``"sgd"``: `training.NormalizedSGD` at val_lr.
    """
    if choice == "continue":
        if base_optimizer is None:
            raise ValueError('val_optimizer "continue" needs the base optimizer')
        pairs = models.paired_adapter_parameters(model, base_adapter, val_adapter)
        return training.copy_optimizer(base_optimizer, pairs, val_lr)
    if choice == "sgd":
        return training.NormalizedSGD(models.adapter_parameters(model, val_adapter), lr=val_lr)
    if choice != "fresh":
        raise ValueError(f"val_optimizer must be one of {VAL_OPTIMIZERS}, got {choice!r}")
    return None


def _val_optimizer(run: _Run, k: int, adapter: str,
                   val_lr: float) -> torch.optim.Optimizer | None:
    """The update rule of epoch k's training of the val adapter ``adapter``
    (`val_update_optimizer` of ``run.config.val_optimizer``).

    ``"continue"`` copies the base optimizer's state right after base epoch k, held only
    while val trains (one more copy of the moments in memory). Base and val training of an
    epoch form one manifest step, so a resumed epoch k reloads epoch k-1's
    ``optimizer.safetensors``, retrains base epoch k and copies the same state as an
    uninterrupted run.
    """
    if run.config.val_optimizer == "continue":
        assert run.optimizer_epoch == k, "the base optimizer must hold epoch k's state"
    return val_update_optimizer(run.model, run.config.val_optimizer, val_lr,
                                base_optimizer=run.optimizer, val_adapter=adapter)


def _train_val(run: _Run, k: int) -> dict[str, Any]:
    """For each target: copy base -> its val adapter and train that on its validation set
    at val_lr_ratio x lr_k. Every target trains with the same stage seed (seed, k, 1), so
    its val adapter is the one a run on that target alone trains from the same base."""
    val_lr = run.config.val_lr_ratio * run.lrs[k - 1]
    step_mode = run.config.val_mode == "step"
    outs = {}
    for target in run.targets:
        models.copy_adapter(run.model, BASE_ADAPTER, target.adapter)
        samples = run.val_samples[target.adapter]
        with run.timed("train_val"):
            outs[target.name] = training.fit(
                run.model, samples, pad_token_id=run.pad_token_id, adapter=target.adapter,
                lr=val_lr, batch_size=run.config.batch_size, schedule="constant",
                seed=_derive(run.config.seed, k, 1),
                optimizer=_val_optimizer(run, k, target.adapter, val_lr),
                grad_accumulation=len(samples) if step_mode else None,
                progress=run.progress,
            )
    run.weights_epoch = k
    if not run.named:
        return {"val_lr": val_lr, "val_steps": outs[None]["steps"],
                "val_loss": outs[None]["mean_loss"]}
    return {"val_lr": val_lr, "val_steps": {name: o["steps"] for name, o in outs.items()},
            "val_loss": {name: o["mean_loss"] for name, o in outs.items()}}


def _save_epoch(run: _Run, k: int, info: dict[str, Any]) -> None:
    """The base and val adapters and the base optimizer state of epoch k, then the manifest
    entry."""
    if run.manifest is None:
        return
    with run.timed("io"):
        paths = [
            models.save_adapter(run.model, BASE_ADAPTER, run.path(k, "base")),
            *(models.save_adapter(run.model, t.adapter, run.path(k, t.directory))
              for t in run.targets),
            storage.save_optimizer_state(run.optimizer, run.path(k, "optimizer.safetensors")),
        ]
        run.manifest.record(_epoch_step(k, "train"), paths, **info)


def _load_epoch(run: _Run, k: int, *, optimizer: bool) -> None:
    """Make the adapters (and, if asked, the base optimizer) hold epoch k's state."""
    if k == 0:  # the starting point is only ever held, never reloaded (epochs run forward)
        assert run.weights_epoch == 0 and (not optimizer or run.optimizer_epoch == 0)
        return
    with run.timed("io"):
        if run.weights_epoch != k:
            models.load_adapter(run.model, BASE_ADAPTER, run.path(k, "base"))
            for target in run.targets:
                models.load_adapter(run.model, target.adapter, run.path(k, target.directory))
            run.weights_epoch = k
        if optimizer and run.optimizer_epoch != k:
            storage.load_optimizer_state(run.optimizer, run.path(k, "optimizer.safetensors"))
            run.optimizer_epoch = k


def _score_epoch(run: _Run, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores float32 (K, N) (row i: ``run.targets[i]``) and scored-token counts int32 (N,)
    of the pool for epoch k, all targets in one scoring pass, shard by shard; finished
    shards (one column per target) are read back, the others scored and saved."""
    num_rows = len(run.pool)
    scores = np.empty((len(run.targets), num_rows), dtype=np.float32)
    counts = np.empty(num_rows, dtype=np.int32)
    starts = range(0, num_rows, SHARD_ROWS)
    with training.progress_bar(run.progress, num_rows, f"score epoch {k}") as bar:
        for i, start in enumerate(starts):
            stop = min(start + SHARD_ROWS, num_rows)
            step = _epoch_step(k, f"scores/{i}")
            if run.done(step):
                with run.timed("io"):
                    table = storage.read_parquet(run.path(k, f"scores/shard_{i:05d}.parquet"))
            else:
                _load_epoch(run, k, optimizer=False)
                with run.timed("score"):
                    s, c = run.scorer.score_columns(run.pool[start:stop])
                s = s.reshape(len(run.targets), -1)
                table = pa.table({
                    **{t.column: pa.array(row, pa.float32()) for t, row in zip(run.targets, s,
                                                                              strict=True)},
                    NUM_TOKENS: pa.array(c, pa.int32()),
                })
                if run.manifest is not None:
                    with run.timed("io"):
                        path = storage.write_parquet(
                            run.path(k, f"scores/shard_{i:05d}.parquet"), table
                        )
                        run.manifest.record(step, [path])
            for i_target, target in enumerate(run.targets):
                scores[i_target, start:stop] = table.column(target.column).to_numpy()
            counts[start:stop] = table.column(NUM_TOKENS).to_numpy()
            bar.update(stop - start)
    return scores, counts


def _score_holdout(run: _Run, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{val adapter: (scores float32 (H,), scored-token counts int32 (H,))} of each target's
    held-out rows at epoch k, by that target's val adapter (one file per target, one
    manifest step per epoch; a finished step is read back)."""
    step = _epoch_step(k, "holdout")
    paths = {t.adapter: run.path(k, f"holdout/{t.directory}.parquet") if run.manifest else None
             for t in run.targets if t.adapter in run.held}
    if run.done(step):
        with run.timed("io"):
            held_tables = {adapter: storage.read_parquet(path) for adapter, path in paths.items()}
    else:
        _load_epoch(run, k, optimizer=False)
        held_tables = {}
        for i, target in enumerate(run.targets):
            if target.adapter not in run.held:
                continue
            with run.timed("score"):
                s, c = run.scorer.score_columns(run.held[target.adapter][:])
            held_tables[target.adapter] = pa.table({
                SCORE: pa.array(s.reshape(len(run.targets), -1)[i], pa.float32()),
                NUM_TOKENS: pa.array(c, pa.int32()),
            })
        if run.manifest is not None:
            with run.timed("io"):
                written = [storage.write_parquet(paths[a], t) for a, t in held_tables.items()]
                run.manifest.record(step, written)
    return {adapter: (t.column(SCORE).to_numpy(), t.column(NUM_TOKENS).to_numpy())
            for adapter, t in held_tables.items()}


def _trajectory(run: _Run) -> tuple[list[np.ndarray], np.ndarray, list[dict[str, Any]],
                                    list[dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """All epochs: per-epoch scores (K, N), token counts, per-epoch history and per-epoch
    held-out scores (`_score_holdout`; empty dicts without a held-out check), resuming
    finished epochs and shards from the manifest; a redone epoch invalidates everything
    after it."""
    per_epoch, history, held, counts = [], [], [], None
    for k in range(1, run.config.epochs + 1):
        step = _epoch_step(k, "train")
        if run.done(step):
            info = run.manifest.info(step)  # type: ignore[union-attr]
        else:
            if run.manifest is not None:
                run.manifest.forget(lambda s, k=k: _epoch_of(s) >= k)
            _load_epoch(run, k - 1, optimizer=True)
            info = {"epoch": k, **_train_base(run, k), **_train_val(run, k)}
            _save_epoch(run, k, info)
        scores, counts = _score_epoch(run, k)
        per_epoch.append(scores)
        held.append(_score_holdout(run, k) if run.held else {})
        history.append(info)
    return per_epoch, counts, history, held


def _holdout_check(target: _Target, held: list[tuple[np.ndarray, np.ndarray]],
                   pool_scores: list[np.ndarray], pool_counts: np.ndarray) -> HoldoutCheck:
    """The `HoldoutCheck` of one target from its per-epoch held-out (scores, counts) and the
    pool's per-epoch scores float32 (N,) and counts int32 (N,)."""
    held_counts = held[0][1]
    scored_held, scored_pool = held_counts > 0, pool_counts > 0
    positive = np.r_[np.ones(scored_held.sum(), bool), np.zeros(scored_pool.sum(), bool)]

    def auc(held_scores: np.ndarray, pool: np.ndarray) -> float:
        return roc_auc(np.r_[held_scores[scored_held], pool[scored_pool]], positive)

    per_epoch = [s for s, _ in held]
    mean = _mean_score(per_epoch)
    return HoldoutCheck(
        rows=target.held_rows, scores=mean, scores_per_epoch=per_epoch,
        num_tokens=held_counts, auc=auc(mean, _mean_score(pool_scores)),
        auc_per_epoch=[auc(s, p) for s, p in zip(per_epoch, pool_scores, strict=True)],
    )


def _holdout_checks(targets: list[_Target], held: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                    per_epoch: list[np.ndarray], counts: np.ndarray
                    ) -> dict[str | None, HoldoutCheck]:
    """{target name (None: one validation set): its `HoldoutCheck`} from `_trajectory`'s
    per-epoch held-out and pool scores; empty without held-out rows."""
    return {t.name: _holdout_check(t, [h[t.adapter] for h in held],
                                   [e[i] for e in per_epoch], counts)
            for i, t in enumerate(targets) if t.held_rows.size}


def _mean_score(per_epoch: list[np.ndarray]) -> np.ndarray:
    """float32 (N,): the mean over epochs of per-epoch float32 (N,) scores (summed in
    float64), the ``tov_score`` of a row."""
    return np.mean(np.stack(per_epoch), axis=0, dtype=np.float64).astype(np.float32)


def _scores_dataset(per_epoch: list[np.ndarray], counts: np.ndarray) -> pa.Table:
    """The scores table of one target: ``tov_row``, ``tov_score`` (mean of the epochs'
    float32 (N,) scores), ``tov_num_tokens``, ``tov_score_epoch_1..L``."""
    mean = _mean_score(per_epoch)
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

    table = tables.flat_table(pool)
    table = table.drop_columns([c for c in columns.column_names if c in table.column_names])
    for name in columns.column_names:
        table = table.append_column(name, columns.column(name))
    added = datasets.Features.from_arrow_schema(columns.schema)
    features = datasets.Features(
        {name: added.get(name) or pool.features[name] for name in table.column_names}
    )
    return datasets.Dataset(table.replace_schema_metadata(None),
                            info=datasets.DatasetInfo(features=features))


def _random_fraction_of(config: ToVConfig, check: HoldoutCheck | None) -> float:
    """The random share of a target's pick: 0 where ``config.scored_only_above`` is set and
    the target's held-out ``check`` reads an AUC at or above it, else
    ``config.random_fraction``."""
    threshold = config.scored_only_above
    if threshold is not None and check is not None and check.auc >= threshold:
        return 0.0
    return config.random_fraction


def _select(pool: Any, scores: pa.Table, n: int, config: ToVConfig,
            base_indices: np.ndarray, val: Any, check: HoldoutCheck | None) -> Any:
    """The Score+Random selection of n pool rows by the one-target ``scores`` table (label
    strata weighted by ``val``, the target's validation set, where configured; the random
    share from `_random_fraction_of` the target's held-out ``check``)."""
    column = config.stratify_by_column
    return select_by_score(
        _with_columns(pool, scores), n, num_bins=config.num_bins,
        random_fraction=_random_fraction_of(config, check), random_pool=base_indices,
        seed=config.seed,
        mark_from_score=True, stratify_by_column=column,
        stratify_like=None if column is None else val,
    )


def _named_scores(single: Mapping[str, pa.Table], epochs: int) -> pa.Table:
    """The scores table of named targets from each one's one-target table: ``tov_row``,
    ``tov_score_<name>`` per target, ``tov_num_tokens``, ``tov_score_<name>_epoch_k``."""
    first = next(iter(single.values()))
    columns = {ROW: first.column(ROW)}
    columns.update({score_column(name): table.column(SCORE) for name, table in single.items()})
    columns[NUM_TOKENS] = first.column(NUM_TOKENS)
    for name, table in single.items():
        columns.update({epoch_column(k, name): table.column(epoch_column(k))
                        for k in range(1, epochs + 1)})
    return pa.table(columns)


def _combined(pool: Any, scores: pa.Table, rows: Mapping[str, np.ndarray]) -> Any:
    """The union of the per-target selections ``rows`` ({name: pool rows}) as a flat
    dataset: pool columns, ``scores`` columns and ``tov_targets`` (list of names; a pool
    column of that name is replaced)."""
    import datasets

    union = np.unique(np.concatenate(list(rows.values())))
    member = np.stack([np.isin(union, chosen) for chosen in rows.values()], axis=1)
    row_of, target_of = np.nonzero(member)  # row-major: each row's targets in mapping order
    offsets = np.searchsorted(row_of, np.arange(union.size + 1)).astype(np.int32)
    chosen_by = pa.ListArray.from_arrays(pa.array(offsets),
                                         pa.array(np.asarray(list(rows))[target_of]))
    full = _with_columns(pool, scores)
    table = full.data.table.take(union)
    if TARGETS in table.column_names:
        table = table.drop_columns([TARGETS])
    features = {name: full.features[name] for name in table.column_names}
    table = table.append_column(TARGETS, chosen_by)
    features.update(datasets.Features.from_arrow_schema(pa.schema([table.schema.field(TARGETS)])))
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=datasets.Features(features)))


def _overlap(rows: Mapping[str, np.ndarray],
             per_target: Mapping[str, Any]) -> dict[str, SelectionOverlap]:
    """Shared rows between the per-target selections (``rows``: {name: pool rows}) and
    between their score-chosen parts."""
    by_score = {name: rows[name][sel.data.column(FROM_SCORE_COLUMN).to_numpy(
        zero_copy_only=False)] for name, sel in per_target.items()}
    return {"selected": selection_overlap(rows), "from_score": selection_overlap(by_score)}


def _selections(
    pool: Any, targets: list[_Target], per_epoch: list[np.ndarray], counts: np.ndarray,
    counts_by_target: Mapping[str | None, int], config: ToVConfig, base_indices: np.ndarray,
    checks: Mapping[str | None, HoldoutCheck],
) -> tuple[pa.Table, Any, dict[str, Any] | None, dict[str, SelectionOverlap] | None]:
    """(scores table, selected, per_target, overlap) of `ToVResult` from the per-epoch
    scores float32 (K, N), token counts (N,) and the held-out checks (`_holdout_checks`)."""
    single = {t.name: _scores_dataset([e[i] for e in per_epoch], counts)
              for i, t in enumerate(targets)}
    per_target = {t.name: _select(pool, single[t.name], counts_by_target[t.name], config,
                                  base_indices, t.val, checks.get(t.name)) for t in targets}
    if None in single:  # one validation set
        return single[None], per_target[None], None, None
    scores = _named_scores(single, len(per_epoch))
    rows = {name: sel.data.column(ROW).to_numpy() for name, sel in per_target.items()}
    return scores, _combined(pool, scores, rows), per_target, _overlap(rows, per_target)


def tov_select(
    model: nn.Module,
    tokenizer: Any,
    pool: Any,
    val: Any,
    *,
    n: int | Mapping[str, int],
    config: ToVConfig | None = None,
    output_dir: str | Path | None = None,
    progress: Any = None,
    **overrides: Any,
) -> ToVResult:
    """Score ``pool`` by ToV along a short trajectory and select ``n`` rows (module doc).
    (Over 60 lines through this documentation: the body is ~35.)

    Settings: ``config`` (default ``ToVConfig()``) with ``overrides`` (any `ToVConfig`
    field by name, e.g. ``lr=1e-4``) replacing its fields; `ToVConfig` describes each.

    model: a plain transformers causal LM or token classifier (LoRA from ``lora``, default
    ``default_lora_config(task, model=model)``, fresh weights drawn from ``seed``), or a peft
    model: the trajectory starts from a copy of its ACTIVE adapter, with that adapter's config.
    The model is trained in place through temporary adapters ("tov_base", "tov_val"; named
    targets: "tov_val_<name>" each) that are removed on return (a plain model gets its
    original modules back); its own weights, adapters, mode and requires_grad flags are
    left as they were. The trained adapters live only in ``output_dir``.
    pool, val: ``datasets.Dataset`` in any format of `tov_datasets.formats`; or ``val`` a
    mapping {target name: Dataset} of K >= 1 named targets (names: letters, digits, ``_`` and
    ``-``; no name may be another's plus ``_epoch_<k>``, which would clash with its epoch
    columns): one base trajectory, one val adapter per target, one scoring pass (module
    doc); the result holds per-target and combined selections (`ToVResult`).
    n: rows to select; with named targets, per target: an int (the same for each) or a
    mapping {target name: n} with the targets' names as keys.
    output_dir: per-epoch adapters (``epoch_KKK/base``, ``epoch_KKK/val``, named targets
    ``epoch_KKK/val_<name>``, peft safetensors), base optimizer state, score shards
    (``epoch_KKK/scores/shard_SSSSS.parquet``, one score column per target), the held-out
    rows' scores (``epoch_KKK/holdout/val[_<name>].parquet``, with ``holdout_fraction``) and
    ``manifest.json`` (recording every target's name and validation rows). A rerun with the
    same arguments resumes (finished epochs and shards are verified by checksum and
    skipped; the results are bit-identical on CPU, and on CUDA with
    ``torch.use_deterministic_algorithms(True)``); other arguments
    raise `storage.ManifestMismatchError`. ``n``, ``num_bins``, ``random_fraction`` and
    ``scored_only_above`` only act on the final selection, so they may change between reruns
    (the scores are reused).
    progress: a tqdm-like factory, ``progress(total=..., desc=...)`` -> object with
    ``update(k)`` and ``close()`` (e.g. ``tqdm.tqdm``); default: quiet.
    """
    started = time.perf_counter()
    config = _with_overrides(config, overrides)
    targets = _targets(val)
    counts_by_target = _counts(n, targets)
    _check_data(config, pool, targets, counts_by_target)
    targets = _with_holdout(targets, config)
    base_indices = draw_base_set(len(pool), config.base_size, config.seed)
    adapters = [BASE_ADAPTER, *(t.adapter for t in targets)]
    with (
        models.attached(model, adapters, lora=config.lora, seed=config.seed) as peft_model,
        contextlib.ExitStack() as stack,
    ):
        settings = config.resolved(peft_model)
        manifest = None
        if output_dir is not None:
            args = {**settings.record(), **_run_identity(peft_model, tokenizer, pool, targets)}
            manifest = stack.enter_context(storage.Manifest(output_dir, args))
        run = _Run(peft_model, tokenizer, pool, targets, base_indices, settings, manifest,
                   progress)
        run.timed.seconds["setup"] = time.perf_counter() - started
        per_epoch, counts, history, held = _trajectory(run)
    with run.timed("select"):
        checks = _holdout_checks(targets, held, per_epoch, counts)
        scores, selected, per_target, overlap = _selections(
            pool, targets, per_epoch, counts, counts_by_target, config, base_indices, checks
        )
    import datasets

    run.timed.seconds["total"] = time.perf_counter() - started
    return ToVResult(
        selected=selected,
        scores=datasets.Dataset(scores),
        base_indices=base_indices,
        timings=run.timed.seconds,
        disk_bytes=storage.directory_bytes(output_dir) if output_dir is not None else 0,
        history=history,
        per_target=per_target,
        overlap=overlap,
        holdout=checks.get(None, checks) if checks else None,
    )
