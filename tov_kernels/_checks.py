"""Argument checks, transform codes and the per-sample reduction shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence

import torch

TRANSFORMS = {"identity": 0, "abs": 1, "relu": 2}
REDUCTIONS = ("mean", "none")
BACKENDS = (None, "torch", "triton")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def transform_code(transform: str) -> int:
    if transform not in TRANSFORMS:
        raise ValueError(
            f"transform={transform!r} is not supported; expected one of {sorted(TRANSFORMS)}"
        )
    return TRANSFORMS[transform]


def apply_transform(delta: torch.Tensor, code: int) -> torch.Tensor:
    """F(delta) for a transform code, in place where possible."""
    if code == 1:
        return delta.abs_()
    if code == 2:
        return delta.clamp_(min=0.0)
    return delta


def check_float(name: str, t: torch.Tensor, ndim: int, shape_hint: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_hint}, got {type(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, bfloat16 or float16, got {t.dtype} "
            f"(shape {tuple(t.shape)}); cast it with .float()"
        )
    if t.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got {tuple(t.shape)}")


def check_label_tensor(labels: torch.Tensor, shape: tuple[int, ...],
                       device: torch.device) -> None:
    """labels: (B, T) int64/int32 on `device`. Reads no values (no device-to-host sync)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels)
        raise TypeError(f"labels must be an int64 tensor of shape {shape}, got {got}")
    if tuple(labels.shape) != shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but the inputs expect {shape} (B, T); "
            "for causal LMs shift labels so that labels[:, t] is predicted at position t"
        )
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device} but the inputs are on {device}")


def out_of_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """bool, labels' shape: a label that is neither ignore_index nor in [0, vocab)."""
    return (labels != ignore_index) & ((labels < 0) | (labels >= vocab))


def check_labels(labels: torch.Tensor, shape: tuple[int, ...], vocab: int, ignore_index: int,
                 device: torch.device) -> None:
    """check_label_tensor, then every value is ignore_index or in [0, vocab): ValueError
    otherwise. On CUDA this reads one flag back (a device-to-host sync)."""
    check_label_tensor(labels, shape, device)
    bad = out_of_range(labels, vocab, ignore_index)
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels holds {value}, outside [0, {vocab}) and not ignore_index={ignore_index}"
        )


def check_label_errors_buffer(label_errors: torch.Tensor, batch: int,
                              device: torch.device) -> None:
    """label_errors: int32 (B,) on the inputs' device."""
    if (not isinstance(label_errors, torch.Tensor) or label_errors.dtype != torch.int32
            or tuple(label_errors.shape) != (batch,) or label_errors.device != device):
        got = (f"{label_errors.dtype} {tuple(label_errors.shape)} on {label_errors.device}"
               if isinstance(label_errors, torch.Tensor) else type(label_errors))
        raise ValueError(f"label_errors must be an int32 tensor of shape ({batch},) on "
                         f"{device}, got {got}")


def mask_label_errors(labels: torch.Tensor, vocab: int, ignore_index: int,
                      label_errors: torch.Tensor) -> torch.Tensor:
    """labels with out-of-range values set to ignore_index; label_errors[b] (int32 (B,))
    receives sample b's count of them. Device ops only: nothing is read back."""
    bad = out_of_range(labels, vocab, ignore_index)
    label_errors.copy_(bad.sum(dim=1))
    return labels.masked_fill(bad, ignore_index)


def check_labels_or_buffer(labels: torch.Tensor, shape: tuple[int, ...], vocab: int,
                           ignore_index: int, device: torch.device,
                           label_errors: torch.Tensor | None) -> None:
    """`check_labels` (reads a flag back) without a label_errors buffer; with one, only the
    labels' type, shape and device and the buffer (no device-to-host sync)."""
    if label_errors is None:
        check_labels(labels, shape, vocab, ignore_index, device)
    else:
        check_label_tensor(labels, shape, device)
        check_label_errors_buffer(label_errors, shape[0], device)


def stack_targets(name: str, values: torch.Tensor | Sequence[torch.Tensor],
                  like_name: str, like: torch.Tensor, shape_hint: str) -> torch.Tensor:
    """K targets' tensors as one (K, *like.shape) tensor: a tensor of that shape as it is
    (a view stays a view), a non-empty sequence of tensors shaped like `like` stacked (a
    copy). Same dtype checks as `check_float`, same shape and device as `like`."""
    if isinstance(values, torch.Tensor):
        check_float(name, values, like.ndim + 1, f"(K, {shape_hint[1:]}")
    else:
        values = list(values)
    if len(values) == 0:
        raise ValueError(f"{name} holds no targets (K = 0); give at least one")
    if isinstance(values, torch.Tensor):
        check_same(f"{name}[k]", values[0], like_name, like)
        return values
    for k, value in enumerate(values):
        check_float(f"{name}[{k}]", value, like.ndim, shape_hint)
        check_same(f"{name}[{k}]", value, like_name, like)
    return torch.stack(values)


def raise_label_errors(label_errors: torch.Tensor) -> None:
    """ValueError if any count in label_errors (int32 (B,), from a call with
    label_errors=...) is non-zero. Reads the counts back: call it where the caller syncs
    anyway (e.g. when a batch's scores go to the host)."""
    counts = label_errors.cpu()
    bad = counts.nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"labels of sample(s) {bad[:10]} hold {int(counts.sum())} value(s) that are "
            "neither ignore_index nor inside [0, V) (not scored)"
        )


def check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}; "
            "they must match"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def check_options(transform: str, reduction: str, backend: str | None) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {REDUCTIONS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; expected one of {BACKENDS}")
    return transform_code(transform)


def reduce_tokens(per_token: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                  reduction: str) -> torch.Tensor:
    """per_token: float32 (..., B, T) with 0.0 at ignored positions (e.g. (K, B, T) for K
    targets) -> (..., B) mean or per_token itself."""
    if reduction == "none":
        return per_token
    counts = (labels != ignore_index).sum(dim=1).clamp_(min=1).to(torch.float32)
    return per_token.sum(dim=-1) / counts
