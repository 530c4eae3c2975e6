"""Triton kernel: paired log-prob delta from two logits tensors, one pass over each row.

Each program owns one token row: it streams the base and the val logits of that row once,
in BLOCK_V tiles, with an online log-sum-exp, and writes F(log p_val(y) - log p_base(y)).
Rows whose label is ignore_index read nothing. No atomics: results are bit-reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _apply_transform(delta, TRANSFORM: tl.constexpr):
    if TRANSFORM == 1:
        delta = tl.abs(delta)
    elif TRANSFORM == 2:
        delta = tl.maximum(delta, 0.0)
    return delta


@triton.jit
def _row_logsumexp(ptr, V, stride_v, n_blocks, BLOCK_V: tl.constexpr):
    """Online log-sum-exp of one row of V logits (any float dtype), in float32; 0.0 when
    n_blocks is 0 (an ignored row, nothing read). The running max starts at the lowest
    finite float32, not -inf: a block of only -inf logits (a masked part of the vocabulary)
    then leaves it finite instead of computing exp(-inf - -inf) = NaN."""
    m = -3.4028234663852886e38
    s = 0.0
    for i in range(0, n_blocks):
        cols = i * BLOCK_V + tl.arange(0, BLOCK_V)
        x = tl.load(ptr + cols * stride_v, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    empty = n_blocks == 0
    return tl.where(empty, 0.0, m) + tl.log(tl.where(empty, 1.0, s))


@triton.jit
def _paired_logprob_delta_kernel(
    base_ptr, val_ptr, labels_ptr, out_ptr,
    T, V,
    sb_b, sb_t, sb_v, sv_b, sv_t, sv_v, sl_b, sl_t,
    ignore_index,
    TRANSFORM: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    t = row % T
    label = tl.load(labels_ptr + b * sl_b + t * sl_t)
    active = label != ignore_index
    n_blocks = tl.where(active, tl.cdiv(V, BLOCK_V), 0)
    base_row = base_ptr + b * sb_b + t * sb_t
    val_row = val_ptr + b * sv_b + t * sv_t
    lse_base = _row_logsumexp(base_row, V, sb_v, n_blocks, BLOCK_V)
    lse_val = _row_logsumexp(val_row, V, sv_v, n_blocks, BLOCK_V)
    z_base = tl.load(base_row + label * sb_v, mask=active, other=0.0).to(tl.float32)
    z_val = tl.load(val_row + label * sv_v, mask=active, other=0.0).to(tl.float32)
    delta = _apply_transform((z_val - lse_val) - (z_base - lse_base), TRANSFORM)
    tl.store(out_ptr + row, tl.where(active, delta, 0.0))


def logprob_delta_tokens(logits_base: torch.Tensor, logits_val: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int) -> torch.Tensor:
    """Launch one program per token. logits_*: (B, T, V) any strides; returns float32 (B, T)."""
    B, T, V = logits_base.shape
    out = torch.empty(B * T, dtype=torch.float32, device=logits_base.device)
    if B * T == 0:
        return out.view(B, T)
    block_v = min(triton.next_power_of_2(V), 4096)
    _paired_logprob_delta_kernel[(B * T,)](
        logits_base, logits_val, labels, out, T, V,
        *logits_base.stride(), *logits_val.stride(), *labels.stride(),
        ignore_index, TRANSFORM=code, BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
    )
    return out.view(B, T)
