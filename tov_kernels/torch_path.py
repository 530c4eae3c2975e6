"""Chunked torch implementations (CPU and any device).

Token rows are processed in chunks whose float32 scratch holds at most CHUNK_ELEMENTS
values, so extra memory is bounded and independent of B*T; a vocabulary wider than the
budget is walked in tiles merged with log-add-exp. Only positions whose label is not
ignored are computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tov_kernels._checks import apply_transform

# float32 scratch elements per chunk: 2**21 -> 8 MiB per buffer.
CHUNK_ELEMENTS = 1 << 21
# Fewest rows per chunk before the vocabulary is tiled instead.
MIN_ROWS = 8


def _chunking(V: int, rows_per_sample: int = 1) -> tuple[int, int]:
    """(token rows per chunk, vocabulary tile width) so that rows * tile <= CHUNK_ELEMENTS."""
    tile_v = min(V, max(1, CHUNK_ELEMENTS // (MIN_ROWS * rows_per_sample)))
    rows = max(1, CHUNK_ELEMENTS // (tile_v * rows_per_sample))
    return rows, tile_v


def _label_logprob(logits_tile: Callable[[int, int], torch.Tensor], y: torch.Tensor, V: int,
                   tile_v: int) -> torch.Tensor:
    """log p(y) per row. logits_tile(v0, v1) -> float32 (R, v1 - v0), left unmodified;
    y: int64 (R,)."""
    if tile_v >= V:
        return torch.log_softmax(logits_tile(0, V), dim=1).gather(1, y[:, None]).squeeze(1)
    target = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    lse = None
    for v0 in range(0, V, tile_v):
        x = logits_tile(v0, min(V, v0 + tile_v))
        inside = (y >= v0) & (y < v0 + x.shape[1])
        local = (y - v0).clamp_(0, x.shape[1] - 1)[:, None]
        target += torch.where(inside, x.gather(1, local).squeeze(1), 0.0)
        part = torch.logsumexp(x, dim=1)
        lse = part if lse is None else torch.logaddexp(lse, part)
    return target - lse


def _active_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)


def _take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] for sorted row indices: a view when they form one range, else a copy.

    (Advanced indexing, not index_select: the latter is erratic on a busy 2-core CPU.)
    """
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == idx.numel():
        return x[first:last + 1]
    return x[idx]


def logprob_delta_tokens(logits_base: torch.Tensor, logits_val: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int) -> torch.Tensor:
    """Per-token F(log p_val(y) - log p_base(y)): float32 (B, T), 0.0 where ignored.

    logits_*: (B, T, V) float32/bf16/fp16; labels: (B, T) int64.
    """
    B, T, V = logits_base.shape
    out = torch.zeros(B * T, dtype=torch.float32, device=logits_base.device)
    rows = _active_rows(labels, ignore_index)
    flat_labels = labels.reshape(-1)
    lb, lv = logits_base.reshape(B * T, V), logits_val.reshape(B * T, V)
    chunk, tile_v = _chunking(V)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        y = flat_labels[idx]
        logp = []
        for logits in (lb, lv):
            picked = _take_rows(logits, idx)  # (C, V): a view, or scratch in the input dtype

            def tile(v0, v1, picked=picked):
                return picked[:, v0:v1].float()

            logp.append(_label_logprob(tile, y, V, tile_v))
        out[idx] = apply_transform(logp[1] - logp[0], code)
    return out.view(B, T)


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_val: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int,
                                ignore_index: int) -> torch.Tensor:
    """Per-token F(delta) from hidden states: float32 (B, T), 0.0 where ignored.

    hidden_*: (B, T, H); weight: (V, H); bias: (V,) or None. Logits exist only as float32
    (2C, tile) chunks; a non-float32 weight is converted once (V x H), not per chunk.
    """
    B, T, H = hidden_base.shape
    V = weight.shape[0]
    out = torch.zeros(B * T, dtype=torch.float32, device=hidden_base.device)
    rows = _active_rows(labels, ignore_index)
    flat_labels = labels.reshape(-1)
    hb, hv = hidden_base.reshape(B * T, H), hidden_val.reshape(B * T, H)
    w = weight.float()
    b = bias.float() if bias is not None else None
    chunk, tile_v = _chunking(V, rows_per_sample=2)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        c = idx.numel()
        y = flat_labels[idx]
        h = torch.cat([_take_rows(hb, idx), _take_rows(hv, idx)]).float()  # (2C, H)

        def tile(v0, v1, h=h):
            x = h @ w[v0:v1].T
            return x if b is None else x.add_(b[v0:v1])

        logp = _label_logprob(tile, torch.cat([y, y]), V, tile_v)
        out[idx] = apply_transform(logp[c:] - logp[:c], code)
    return out.view(B, T)
