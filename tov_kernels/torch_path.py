"""Chunked torch implementations (CPU and any device).

Token rows are processed in chunks whose float32 scratch holds at most CHUNK_ELEMENTS
values, so extra memory is bounded and independent of B*T; a vocabulary wider than the
budget is walked in tiles merged with log-add-exp. Only positions whose label is not
ignored are computed. A chunk's log-probabilities (and its logits, when they are not a
float32 view of the input) go to buffers allocated once per call, not per chunk: where the
allocator maps large blocks afresh on every request (glibc with a fixed mmap threshold), a
per-chunk tensor costs a page fault per 4 KiB written, as much as the naive path's
full-size tensors.
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
                   tile_v: int, logp_buffer: torch.Tensor) -> torch.Tensor:
    """log p(y) per row. logits_tile(v0, v1) -> float32 (R, v1 - v0), left unmodified;
    y: int64 (R,); logp_buffer: float32 (>= R, tile_v), overwritten when tile_v >= V."""
    if tile_v >= V:
        logp = torch.log_softmax(logits_tile(0, V), dim=1, out=logp_buffer[:y.numel()])
        return logp.gather(1, y[:, None]).squeeze(1)
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


def logprob_delta_tokens(logits_base: torch.Tensor, logits_vals: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int) -> torch.Tensor:
    """Per-token F(log p_val_k(y) - log p_base(y)) of K targets: float32 (K, B, T), 0.0
    where ignored. The base rows' log p(y) is computed once per chunk and reused for every
    target (K = 1: the single-target computation, chunk for chunk).

    logits_base: (B, T, V) float32/bf16/fp16; logits_vals: (K, B, T, V); labels: (B, T) int64.
    """
    B, T, V = logits_base.shape
    K = logits_vals.shape[0]
    out = torch.zeros(K, B * T, dtype=torch.float32, device=logits_base.device)
    rows = _active_rows(labels, ignore_index)
    flat_labels = labels.reshape(-1)
    lb = logits_base.reshape(B * T, V)
    lvs = [logits_vals[k].reshape(B * T, V) for k in range(K)]
    chunk, tile_v = _chunking(V)
    cast = logits_base.dtype != torch.float32  # then a chunk's float32 logits: buffers[1]
    buffers = torch.empty(1 + cast, min(chunk, max(rows.numel(), 1)), tile_v,
                          device=logits_base.device)

    def label_logprob(logits: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        picked = _take_rows(logits, idx)  # (C, V): a view, or a copy in the input dtype

        def tile(v0: int, v1: int) -> torch.Tensor:
            if not cast:
                return picked[:, v0:v1]
            return buffers[1, :idx.numel(), :v1 - v0].copy_(picked[:, v0:v1])

        return _label_logprob(tile, y, V, tile_v, buffers[0])

    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        y = flat_labels[idx]
        logp_base = label_logprob(lb, idx, y)
        for k, lv in enumerate(lvs):
            out[k, idx] = apply_transform(label_logprob(lv, idx, y) - logp_base, code)
    return out.view(K, B, T)


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_vals: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int,
                                ignore_index: int) -> torch.Tensor:
    """Per-token F(delta) of K targets from hidden states: float32 (K, B, T), 0.0 where
    ignored.

    hidden_base: (B, T, H); hidden_vals: (K, B, T, H); weight: (V, H); bias: (V,) or None.
    Each chunk projects its base rows once and every target's rows in the same matmul:
    logits exist only as float32 ((1 + K) C, tile) chunks; a non-float32 weight is
    converted once (V x H), not per chunk. K = 1 is the single-target computation.
    """
    B, T, H = hidden_base.shape
    K = hidden_vals.shape[0]
    V = weight.shape[0]
    out = torch.zeros(K, B * T, dtype=torch.float32, device=hidden_base.device)
    rows = _active_rows(labels, ignore_index)
    flat_labels = labels.reshape(-1)
    hb = hidden_base.reshape(B * T, H)
    hvs = [hidden_vals[k].reshape(B * T, H) for k in range(K)]
    w = weight.float()
    b = bias.float() if bias is not None else None
    chunk, tile_v = _chunking(V, rows_per_sample=1 + K)
    buffers = torch.empty(2, (1 + K) * min(chunk, max(rows.numel(), 1)), tile_v,
                          device=hidden_base.device)  # [0] log-probs, [1] logits
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        c = idx.numel()
        y = flat_labels[idx]
        h = torch.cat([_take_rows(hb, idx), *(_take_rows(hv, idx) for hv in hvs)]).float()

        def tile(v0, v1, h=h):
            x = torch.matmul(h, w[v0:v1].T, out=buffers[1, :h.shape[0], :v1 - v0])
            return x if b is None else x.add_(b[v0:v1])

        logp = _label_logprob(tile, y.repeat(1 + K), V, tile_v, buffers[0])  # ((1 + K) C,)
        for k in range(K):
            out[k, idx] = apply_transform(logp[(k + 1) * c:(k + 2) * c] - logp[:c], code)
    return out.view(K, B, T)
