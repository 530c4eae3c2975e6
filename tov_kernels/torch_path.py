"""Chunked torch implementations (CPU and any device): extra memory is bounded by a fixed
element budget, independent of B*T*V. Only positions whose label is not ignored are computed.
"""

from __future__ import annotations

import torch

from tov_kernels._checks import apply_transform

# Elements of float32 scratch per (token chunk x vocabulary tile): 2**20 -> 4 MiB per buffer.
CHUNK_ELEMENTS = 1 << 20


def _logsumexp_(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of a float32 (C, V) scratch tile; overwrites x."""
    m = x.amax(dim=1, keepdim=True)
    m.masked_fill_(~torch.isfinite(m), 0.0)
    return x.sub_(m).exp_().sum(dim=1).log_().add_(m.squeeze(1))


def _active_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)


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
    tile_v = min(V, CHUNK_ELEMENTS)
    chunk = max(1, CHUNK_ELEMENTS // tile_v)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        y = flat_labels.index_select(0, idx).unsqueeze(1)
        logp = []
        for logits in (lb, lv):
            picked = logits.index_select(0, idx)  # (C, V) scratch, input dtype
            lse = None
            for v0 in range(0, V, tile_v):
                tile = picked[:, v0:v0 + tile_v].to(torch.float32, copy=True)
                part = _logsumexp_(tile)
                lse = part if lse is None else torch.logaddexp(lse, part)
            logp.append(picked.gather(1, y).squeeze(1).float() - lse)
        out[idx] = apply_transform(logp[1] - logp[0], code)
    return out.view(B, T)


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_val: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int,
                                ignore_index: int) -> torch.Tensor:
    """Per-token F(delta) from hidden states: float32 (B, T), 0.0 where ignored.

    hidden_*: (B, T, H); weight: (V, H); bias: (V,) or None. Logits exist only as
    float32 (2C, tile) tiles.
    """
    B, T, H = hidden_base.shape
    V = weight.shape[0]
    out = torch.zeros(B * T, dtype=torch.float32, device=hidden_base.device)
    rows = _active_rows(labels, ignore_index)
    flat_labels = labels.reshape(-1)
    hb, hv = hidden_base.reshape(B * T, H), hidden_val.reshape(B * T, H)
    chunk = 256
    tile_v = max(1, min(V, CHUNK_ELEMENTS // (2 * chunk)))
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        c = idx.numel()
        y = flat_labels.index_select(0, idx)
        h = torch.cat([hb.index_select(0, idx), hv.index_select(0, idx)]).float()  # (2C, H)
        y2 = torch.cat([y, y])
        target = (h * weight.index_select(0, y2).float()).sum(dim=1)
        if bias is not None:
            target += bias.index_select(0, y2).float()
        lse = None
        for v0 in range(0, V, tile_v):
            w = weight[v0:v0 + tile_v].float()
            tile = h @ w.T
            if bias is not None:
                tile += bias[v0:v0 + tile_v].float()
            part = _logsumexp_(tile)
            lse = part if lse is None else torch.logaddexp(lse, part)
        logp = target - lse
        out[idx] = apply_transform(logp[c:] - logp[:c], code)
    return out.view(B, T)
