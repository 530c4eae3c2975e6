"""Public entry points: argument checks, backend choice, per-sample reduction."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from tov_kernels import _checks, torch_path


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def _use_triton(backend: str | None, device: torch.device) -> bool:
    if backend == "torch":
        return False
    if backend is None:
        return device.type == "cuda"
    if device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set "
            "before triton is imported; use backend='torch' or backend=None on CPU"
        )
    return True


def paired_logprob_delta(
    logits_base: torch.Tensor,
    logits_val: torch.Tensor,
    labels: torch.Tensor,
    *,
    transform: str = "identity",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    label_errors: torch.Tensor | None = None,
) -> torch.Tensor:
    """F(log p_val(y_t) - log p_base(y_t)) from two logits tensors.

    logits_base, logits_val: (B, T, V) float32/bfloat16/float16, same shape and device.
    labels: (B, T) int64 aligned with the logits positions (shift for causal LMs yourself);
    positions equal to ignore_index are skipped.
    Returns float32 (B,) for reduction="mean" (0.0 for a row with no scored position) or
    float32 (B, T) for reduction="none" (0.0 at ignored positions). Arithmetic is float32.
    backend: None (Triton on CUDA, chunked torch elsewhere), "triton" or "torch".

    Label range: with label_errors=None (the default) a label outside [0, V) that is not
    ignore_index raises ValueError before anything is computed; on CUDA that check reads one
    flag back, a device-to-host sync per call. To avoid it, pass label_errors, an int32 (B,)
    tensor on the inputs' device: nothing is read back, an out-of-range label is then not
    scored (0.0, left out of the mean, like ignore_index) and label_errors[b] receives the
    number of such labels in sample b (overwritten, not accumulated). Check it where you
    sync anyway, e.g. with `tov_kernels.raise_label_errors(label_errors)` once the batch's
    scores are on the host. Both backends behave the same way.
    """
    code = _checks.check_options(transform, reduction, backend)
    _checks.check_float("logits_base", logits_base, 3, "(B, T, V)")
    _checks.check_float("logits_val", logits_val, 3, "(B, T, V)")
    _checks.check_same("logits_base", logits_base, "logits_val", logits_val)
    B, T, V = logits_base.shape
    _checks.check_labels_or_buffer(labels, (B, T), V, ignore_index, logits_base.device,
                                   label_errors)
    if _use_triton(backend, logits_base.device):
        from tov_kernels.logprob_delta import logprob_delta_tokens

        with torch.no_grad():
            per_token, mean = logprob_delta_tokens(logits_base, logits_val, labels, code,
                                                   ignore_index, label_errors=label_errors)
        return mean if reduction == "mean" else per_token
    return _torch_logprob_delta(logits_base, logits_val[None], labels, code, ignore_index,
                                reduction, label_errors)[0]


def paired_logprob_delta_multi(
    logits_base: torch.Tensor,
    logits_vals: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    transform: str = "identity",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    label_errors: torch.Tensor | None = None,
) -> torch.Tensor:
    """`paired_logprob_delta` of K targets against one base: row k is
    F(log p_val_k(y_t) - log p_base(y_t)). The base rows' log-sum-exp and label logit are
    computed once and reused for every target.

    logits_base: (B, T, V); logits_vals: (K, B, T, V) (a view is read in place, e.g.
    ``logits[B:].unflatten(0, (K, B))`` of one mixed forward) or a sequence of K (B, T, V)
    tensors (stacked: one copy). Returns float32 (K, B) for reduction="mean" or (K, B, T)
    for "none"; row k equals `paired_logprob_delta(logits_base, logits_vals[k], ...)` up to
    float rounding (the torch backend: bitwise). labels, transform, ignore_index, backend
    and label_errors as in `paired_logprob_delta`.
    """
    code = _checks.check_options(transform, reduction, backend)
    _checks.check_float("logits_base", logits_base, 3, "(B, T, V)")
    logits_vals = _checks.stack_targets("logits_vals", logits_vals, "logits_base",
                                        logits_base, "(B, T, V)")
    B, T, V = logits_base.shape
    _checks.check_labels_or_buffer(labels, (B, T), V, ignore_index, logits_base.device,
                                   label_errors)
    if _use_triton(backend, logits_base.device):
        from tov_kernels.logprob_delta import logprob_delta_tokens_multi

        with torch.no_grad():
            per_token, mean = logprob_delta_tokens_multi(
                logits_base, logits_vals, labels, code, ignore_index, label_errors=label_errors
            )
        return mean if reduction == "mean" else per_token
    return _torch_logprob_delta(logits_base, logits_vals, labels, code, ignore_index,
                                reduction, label_errors)


def _torch_logprob_delta(logits_base: torch.Tensor, logits_vals: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int, reduction: str,
                         label_errors: torch.Tensor | None) -> torch.Tensor:
    """The chunked torch path of K targets: float32 (K, B) or (K, B, T)."""
    with torch.no_grad():
        if label_errors is not None:
            labels = _checks.mask_label_errors(labels, logits_base.shape[2], ignore_index,
                                               label_errors)
        per_token = torch_path.logprob_delta_tokens(logits_base, logits_vals, labels, code,
                                                    ignore_index)
        return _checks.reduce_tokens(per_token, labels, ignore_index, reduction)


def paired_linear_logprob_delta(
    hidden_base: torch.Tensor,
    hidden_val: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    transform: str = "identity",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    label_errors: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same result as `paired_logprob_delta` on logits = hidden @ weight.T + bias,
    computed in vocabulary tiles so that no (B, T, V) tensor is ever allocated.

    hidden_base, hidden_val: (B, T, H) float; weight: (V, H) float (the output projection,
    tied embeddings included); bias: (V,) or None; labels: (B, T) int64.
    Returns float32 (B,) or (B, T) as in `paired_logprob_delta`.
    With Triton, hidden states of another dtype than the weight are cast to the weight's
    dtype (e.g. fp16 hidden states with a bf16 head are rounded to bf16); the weight is
    never converted. The torch backend computes in float32 from the inputs as given.
    label_errors: as in `paired_logprob_delta` (no device-to-host sync when given).
    """
    code = _checks.check_options(transform, reduction, backend)
    _checks.check_float("hidden_base", hidden_base, 3, "(B, T, H)")
    _checks.check_float("hidden_val", hidden_val, 3, "(B, T, H)")
    _checks.check_same("hidden_base", hidden_base, "hidden_val", hidden_val)
    return _linear_logprob_delta(hidden_base, hidden_val[None], weight, labels, bias, code,
                                 ignore_index, reduction, backend, label_errors)[0]


def paired_linear_logprob_delta_multi(
    hidden_base: torch.Tensor,
    hidden_vals: torch.Tensor | Sequence[torch.Tensor],
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    transform: str = "identity",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    label_errors: torch.Tensor | None = None,
) -> torch.Tensor:
    """`paired_linear_logprob_delta` of K targets against one base: the base rows are
    projected through the head once (their log-sum-exp and label logit are shared by every
    target), each target's rows once.

    hidden_base: (B, T, H); hidden_vals: (K, B, T, H) (a view is read in place, e.g.
    ``hidden[B:].unflatten(0, (K, B))`` of one mixed forward) or a sequence of K (B, T, H)
    tensors (stacked: one copy). Returns float32 (K, B) or (K, B, T); row k equals
    `paired_linear_logprob_delta(hidden_base, hidden_vals[k], ...)` up to float rounding
    (K = 1: bitwise). weight, bias, labels and the options as there.
    """
    code = _checks.check_options(transform, reduction, backend)
    _checks.check_float("hidden_base", hidden_base, 3, "(B, T, H)")
    hidden_vals = _checks.stack_targets("hidden_vals", hidden_vals, "hidden_base", hidden_base,
                                        "(B, T, H)")
    return _linear_logprob_delta(hidden_base, hidden_vals, weight, labels, bias, code,
                                 ignore_index, reduction, backend, label_errors)


def _linear_logprob_delta(hidden_base: torch.Tensor, hidden_vals: torch.Tensor,
                          weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                          code: int, ignore_index: int, reduction: str, backend: str | None,
                          label_errors: torch.Tensor | None) -> torch.Tensor:
    """Checks of the head and labels, then either backend for K targets: hidden_base
    (B, T, H), hidden_vals (K, B, T, H) -> float32 (K, B) or (K, B, T)."""
    B, T, H = hidden_base.shape
    _checks.check_float("weight", weight, 2, f"(V, {H})")
    if weight.shape[1] != H or weight.device != hidden_base.device:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} on {weight.device} but hidden states "
            f"(B, T, H)={tuple(hidden_base.shape)} on {hidden_base.device} need (V, {H}) there"
        )
    V = weight.shape[0]
    if bias is not None:
        _checks.check_float("bias", bias, 1, f"({V},)")
        if bias.shape[0] != V or bias.device != weight.device:
            raise ValueError(
                f"bias has shape {tuple(bias.shape)} on {bias.device}; expected ({V},) "
                f"on {weight.device}"
            )
    _checks.check_labels_or_buffer(labels, (B, T), V, ignore_index, hidden_base.device,
                                   label_errors)
    with torch.no_grad():
        if label_errors is not None:
            labels = _checks.mask_label_errors(labels, V, ignore_index, label_errors)
        if _use_triton(backend, hidden_base.device):
            from tov_kernels.linear_logprob_delta import linear_logprob_delta_tokens
        else:
            linear_logprob_delta_tokens = torch_path.linear_logprob_delta_tokens
        per_token = linear_logprob_delta_tokens(
            hidden_base, hidden_vals, weight, bias, labels, code, ignore_index
        )
        return _checks.reduce_tokens(per_token, labels, ignore_index, reduction)
