"""The ToV scorer: a callable for ``Dataset.map(batched=True)`` and Ray Data ``map_batches``.

score(x) = mean over scored output tokens t of F(log p_val(y_t) - log p_base(y_t)), with both
adapters run in ONE forward over 2B rows (peft mixed-adapter batches). Several targets
(``val_adapter=[name, ...]``, K names) share that forward: (1 + K) x B rows, the base rows
first, and one score column per target. For causal LMs the final hidden states go through
`paired_linear_logprob_delta` with the output projection, so no (B, T, V) logits tensor is
built.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import xxhash
from datasets.fingerprint import Hasher
from datasets.utils._dill import pklregister

from tov_datasets import models
from tov_datasets.formats import IGNORE_INDEX, Encoded, collate, encode_batch, num_scored
from tov_kernels import (
    paired_linear_logprob_delta,
    paired_linear_logprob_delta_multi,
    paired_logprob_delta,
    paired_logprob_delta_multi,
    raise_label_errors,
)

SCORE = "tov_score"
NUM_TOKENS = "tov_num_tokens"
# F of the per-token deltas unless told otherwise: the signed delta (README: chat_labels_v2,
# whose committed decision returned it from abs)
DEFAULT_TRANSFORM = "identity"
# A target adapter's name becomes part of its score column, SCORE + "_" + name.
TARGET_NAME = re.compile(r"[A-Za-z0-9_-]+")
# First elements of each frozen base weight that enter the fingerprint (a cheap identity check).
_BASE_SAMPLE = 64


def _accepts(module: torch.nn.Module, arg: str) -> bool:
    return arg in inspect.signature(module.forward).parameters


def _jsonable(value: Any) -> Any:
    return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else repr(value)


def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).view(torch.uint8).cpu().numpy()


def score_column(target: str) -> str:
    """The score column of one target adapter of a multi-target scorer: ``tov_score_<name>``."""
    return f"{SCORE}_{target}"


def check_target_names(names: Sequence[Any], argument: str) -> list[str]:
    """Target names, checked: at least one; strings of letters, digits, ``_`` and ``-``
    (each names a score column, `score_column`); no repeats. Raises ValueError starting
    with ``argument`` (the argument that gave the names)."""
    names = list(names)
    if not names:
        raise ValueError(f"{argument}: give at least one target name")
    for name in names:
        if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
            raise ValueError(
                f"{argument}: {name!r} cannot name a score column; use letters, digits, "
                "'_' and '-'"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{argument}: names {repeated} appear more than once")
    return names


def _check_targets(targets: Sequence[Any], base_adapter: str) -> list[str]:
    """The target adapter names of a multi-target ``val_adapter`` (`check_target_names`),
    not the base adapter."""
    names = check_target_names(targets, "val_adapter")
    if base_adapter in names:
        raise ValueError(f"val_adapter: {base_adapter!r} is the base adapter (base_adapter)")
    return names


def _resolve_adapters(
    model: torch.nn.Module, base_adapter: Any, val_adapter: Any, multi_target: bool
) -> tuple[torch.nn.Module, str, list[str]]:
    """The model holding the adapters (a plain model gets the directories loaded, under
    "base" and "val" or the target names), the base adapter's name and the target adapters'
    names in forward order; each checked as `ToVScorer` documents."""
    if not models.is_peft_model(model):
        if multi_target and not isinstance(val_adapter, Mapping):
            raise ValueError(
                "val_adapter: with a plain model give the target adapters as "
                "{name: adapter directory}"
            )
        targets = _check_targets(val_adapter, "base") if multi_target else ["val"]
        directories = val_adapter if multi_target else {"val": val_adapter}
        model = models.load_adapters(
            model, {"base": base_adapter, **{t: directories[t] for t in targets}}
        )
        base_adapter = "base"
    elif isinstance(val_adapter, Mapping):
        raise ValueError(
            "val_adapter: a peft model takes the names of its adapters (a list), not "
            "{name: directory}"
        )
    else:
        base_adapter = str(base_adapter)
        targets = (_check_targets(val_adapter, base_adapter) if multi_target
                   else [str(val_adapter)])
        if targets == [base_adapter]:
            raise ValueError(f"val_adapter: {base_adapter!r} is the base adapter "
                             "(base_adapter); the scores would all be 0")
    present = models.adapter_names(model)
    for argument, adapter in [("base_adapter", base_adapter)] + [
        ("val_adapter", target) for target in targets
    ]:
        if adapter not in present:
            raise ValueError(
                f"{argument}: the model has no adapter {adapter!r}; it has {present}"
            )
    return model, base_adapter, targets


class ToVScorer:
    """Adds ToV scores (float32) and ``tov_num_tokens`` (int32) to a batch of samples.

    val_adapter: one target, an adapter name -> the column ``tov_score``; or several
    targets, a list of K >= 1 adapter names -> one column ``tov_score_<name>`` per target
    (`score_column`), all K scored in ONE mixed-adapter forward of (1 + K) x batch_size rows
    (the base rows first, then each target's). Target names are letters, digits, ``_`` and
    ``-`` (they name columns), distinct and not the base adapter. A list of one name gives
    the same values as the single-target scorer, under ``tov_score_<name>``.
    model: a peft model holding the adapters, or a plain transformers model with
    ``base_adapter``/``val_adapter`` given as directories saved by peft (loaded under the
    names "base" and "val"; several targets: ``val_adapter`` = {name: directory}, loaded
    under those names; the model is wrapped in place). The task (causal LM or token
    classification) is inferred from the model. transform: "identity" (default), "abs" or "relu".
    max_length: truncation length (default: the model's max_position_embeddings, if any).
    batch_size: samples per micro-batch (the forward runs (1 + K) * batch_size rows).
    device: where to score (default: where the model is; the model is moved there).
    column_map: {user_column: canonical_column}, see `tov_datasets.formats`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        base_adapter: str | os.PathLike[str] = "base",
        val_adapter: str | os.PathLike[str] | Sequence[str] | Mapping[str, Any] = "val",
        transform: str = DEFAULT_TRANSFORM,
        max_length: int | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        kernel_backend: str | None = None,
        column_map: Mapping[str, str] | None = None,
    ) -> None:
        multi_target = not isinstance(val_adapter, (str, os.PathLike))
        model, base_adapter, targets = _resolve_adapters(model, base_adapter, val_adapter,
                                                         multi_target)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None for the model's), got "
                             f"{max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.base_adapter = str(base_adapter)
        # the target adapters in forward order; val_adapter: a name, or their list
        self.targets = targets
        self.val_adapter: str | list[str] = list(targets) if multi_target else targets[0]
        self.transform = transform
        self.batch_size = batch_size
        self.kernel_backend = kernel_backend
        self.column_map = dict(column_map) if column_map else None
        inner = models.base_model(model)
        self.task = models.infer_task(inner)
        self.max_length = max_length or models.default_max_length(inner)
        label2id = models.label_map(inner, self.task)
        self.label2id = dict(label2id) if label2id is not None else None
        self._position_ids = _accepts(inner, "position_ids")
        self._accepts_use_cache = _accepts(inner, "use_cache")
        self._head = (
            models.linear_output_head(inner)
            if self.task == "causal_lm" and _accepts(inner, "logits_to_keep") else None
        )
        if device is not None:
            model.to(device)
        self._tokenizer_digest = Hasher.hash(tokenizer)

    @property
    def multi_target(self) -> bool:
        """Whether val_adapter is a list (columns ``tov_score_<name>``, not ``tov_score``)."""
        return isinstance(self.val_adapter, list)

    @property
    def columns(self) -> list[str]:
        """The columns the scorer adds, in order: the score column(s), then tov_num_tokens."""
        scores = [score_column(t) for t in self.targets] if self.multi_target else [SCORE]
        return [*scores, NUM_TOKENS]

    @property
    def pad_token_id(self) -> int:
        """`models.pad_token_id` of the tokenizer (the tokenizer is left as is)."""
        return models.pad_token_id(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- fingerprint
    def fingerprint(self) -> str:
        """A hex digest of everything that determines the scores: the config, the tokenizer,
        the base and every target adapter's weights and configs, and a sample of the frozen
        base weights. Milliseconds, where pickling the model for `datasets` fingerprints
        takes seconds."""
        h = xxhash.xxh64()
        config = (
            type(self).__qualname__, self.task, self.base_adapter, self.val_adapter,
            self.transform, self.max_length, self.batch_size, self.kernel_backend,
            sorted((self.column_map or {}).items()), sorted((self.label2id or {}).items()),
            self._tokenizer_digest, self.pad_token_id, self.tokenizer.padding_side,
        )
        h.update(repr(config).encode())
        adapters = (self.base_adapter, *self.targets)
        for adapter in adapters:  # sets (target_modules) sorted: stable across processes
            config_dict = models.adapter_config(self.model, adapter)
            h.update(json.dumps(config_dict, sort_keys=True, default=_jsonable).encode())
        for name, p in self.model.named_parameters():
            parts = name.split(".")
            if any(a in parts for a in adapters) and (
                "modules_to_save" in parts or any(s.startswith("lora_") for s in parts)
            ):
                h.update(name.encode())
                h.update(_tensor_bytes(p))
            elif not any(s.startswith("lora_") or s == "modules_to_save" for s in parts):
                h.update(name.encode())
                h.update(_tensor_bytes(p.reshape(-1)[:_BASE_SAMPLE]))
        return h.hexdigest()

    # ---------------------------------------------------------------- scoring
    def __call__(self, batch: Any, rank: int | None = None) -> Any:
        """Score a batch: what ``Dataset.map(batched=True)`` passes (returns the new
        columns, `columns`), a dict of numpy arrays or a pyarrow Table as Ray Data passes
        (returns the same type with the new columns added). ``rank`` (``with_rank=True``)
        selects cuda:rank when CUDA exists."""
        if rank is not None and torch.cuda.is_available():
            self.model.to(torch.device("cuda", rank % torch.cuda.device_count()))
        if isinstance(batch, pa.Table):
            columns = {name: batch.column(name) for name in batch.column_names}
        else:
            columns = batch
        scores, counts = self.score_columns(columns)
        per_target = scores if self.multi_target else scores[None]
        new = dict(zip(self.columns, [*per_target, counts], strict=True))
        if isinstance(batch, pa.Table):
            for name, values in new.items():
                if name in batch.column_names:
                    batch = batch.drop_columns([name])
                batch = batch.append_column(name, pa.array(values))
            return batch
        if type(batch) is dict and all(isinstance(v, np.ndarray) for v in batch.values()):
            return {**batch, **new}
        return new

    def score_columns(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and scored-token counts int32 (N,) of a dict of columns. Scores: float32
        (N,) for one target (a val_adapter name), float32 (K, N) for a list of K targets
        (row k: ``targets[k]``)."""
        encoded = encode_batch(
            columns, self.tokenizer, task=self.task, max_length=self.max_length,
            column_map=self.column_map, label2id=self.label2id,
        )
        counts = np.array([num_scored(e, self.task) for e in encoded], dtype=np.int32)
        scores = np.zeros((len(self.targets), len(encoded)), dtype=np.float32)
        rows = np.flatnonzero(counts)
        rows = rows[np.argsort([len(encoded[i].input_ids) for i in rows], kind="stable")]
        adapters = [self.base_adapter, *self.targets]
        with models.adapter_mode(self.model, adapters, train=False), torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                batch_scores, label_errors = self._score_encoded([encoded[i] for i in chunk])
                scores[:, chunk] = batch_scores.cpu().numpy()  # the batch's one sync
                raise_label_errors(label_errors)
        return (scores if self.multi_target else scores[0]), counts

    def _score_encoded(self, samples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """F-mean of the per-token deltas, float32 (K, B) (row k: ``targets[k]`` against the
        base), for B samples with scored tokens, and int32 (B,) counts of labels outside the
        model's vocabulary (not scored; checked by the caller after the scores are on the
        host, so no call syncs on its own). One forward of (1 + K) x B rows; one target: the
        paired kernel on the base rows and the target's; K >= 2: the multi-target kernel on
        the base rows and a (K, B, ...) view of the targets' rows, the base rows' log-sum-exp
        computed once."""
        side = self.tokenizer.padding_side if self._position_ids else "right"
        batch = {k: v.to(self.device) for k, v in collate(samples, self.pad_token_id,
                                                          side).items()}
        B = len(samples)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self._position_ids:
            inputs["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp_(min=0)
        options = {"use_cache": False} if self._accepts_use_cache else {}
        adapters = [self.base_adapter, *self.targets]
        labels = batch["labels"]
        # one buffer: every kernel call overwrites it with the same counts (same labels)
        label_errors = torch.zeros(B, dtype=torch.int32, device=self.device)
        kernel = {"transform": self.transform, "backend": self.kernel_backend,
                  "label_errors": label_errors}
        if self.task == "causal_lm":  # labels[:, t + 1] is predicted at position t
            labels = labels[:, 1:].masked_fill(batch["attention_mask"][:, :-1] == 0, IGNORE_INDEX)
        K = len(self.targets)  # row block k * B: adapters[k]
        if self._head is not None:
            hidden = self._final_hidden(inputs, adapters, options)[:, :-1]
            weight, bias = self._head.weight, self._head.bias
            if K == 1:
                scores = paired_linear_logprob_delta(hidden[:B], hidden[B:], weight, labels,
                                                     bias=bias, **kernel)[None]
            else:
                scores = paired_linear_logprob_delta_multi(
                    hidden[:B], hidden[B:].unflatten(0, (K, B)), weight, labels, bias=bias,
                    **kernel)
            return scores, label_errors
        logits = models.mixed_adapter_forward(self.model, inputs, adapters, **options).logits
        if self.task == "causal_lm":
            logits = logits[:, :-1]
        if K == 1:
            scores = paired_logprob_delta(logits[:B], logits[B:], labels, **kernel)[None]
        else:
            scores = paired_logprob_delta_multi(logits[:B], logits[B:].unflatten(0, (K, B)),
                                                labels, **kernel)
        return scores, label_errors

    def _final_hidden(
        self, inputs: dict[str, torch.Tensor], adapters: list[str], options: dict[str, Any]
    ) -> torch.Tensor:
        """The decoder's last_hidden_state ((1 + K) B, T, H), captured by a forward hook
        while the LM head only projects the last position (logits_to_keep=1)."""
        decoder = models.decoder(self.model)
        captured = []

        def hook(_module, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        handle = decoder.register_forward_hook(hook)
        try:
            models.mixed_adapter_forward(
                self.model, inputs, adapters, **options, logits_to_keep=1
            )
        finally:
            handle.remove()
        return captured[-1]


@pklregister(ToVScorer)
def _hash_scorer(pickler: Any, scorer: ToVScorer) -> None:
    """What datasets' fingerprint Hasher pickles for a scorer (only its hashing pickler uses
    this dispatch table; real pickling, e.g. to num_proc workers, ships the whole model)."""
    pickler.save_reduce(tuple, ((type(scorer).__qualname__, scorer.fingerprint()),), obj=scorer)
