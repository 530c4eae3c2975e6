"""Triton kernel: paired log-prob delta from final hidden states and the output projection.

Each program owns BLOCK_M tokens. It walks the vocabulary in BLOCK_N tiles; every weight tile
is loaded once and multiplied with both the base and the val hidden states, and each row keeps
an online log-sum-exp and the logit of its label. No (B, T, V) tensor exists, and no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tov_kernels.logprob_delta import _apply_transform


@triton.jit
def _online_update(m, s, z, logits, cols, labels):
    """Fold a float32 (BLOCK_M, BLOCK_N) logits tile into running max, sum and label logit."""
    m_new = tl.maximum(m, tl.max(logits, axis=1))
    s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
    z += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), axis=1)
    return m_new, s, z


@triton.jit
def _paired_linear_logprob_delta_kernel(
    hb_ptr, hv_ptr, w_ptr, bias_ptr, labels_ptr, out_ptr,
    N, V, H,
    s_hb_n, s_hb_h, s_hv_n, s_hv_h, s_w_v, s_w_h,
    ignore_index,
    HAS_BIAS: tl.constexpr, TRANSFORM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (labels != ignore_index)
    m_b = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s_b = tl.zeros([BLOCK_M], tl.float32)
    z_b = tl.zeros([BLOCK_M], tl.float32)
    m_v = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s_v = tl.zeros([BLOCK_M], tl.float32)
    z_v = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(0, V, BLOCK_N):
        cols = v0 + tl.arange(0, BLOCK_N)
        col_ok = cols < V
        acc_b = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_v = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < H
            hmask = row_ok[:, None] & k_ok[None, :]
            hb = tl.load(hb_ptr + rows[:, None] * s_hb_n + ks[None, :] * s_hb_h, mask=hmask,
                         other=0.0)
            hv = tl.load(hv_ptr + rows[:, None] * s_hv_n + ks[None, :] * s_hv_h, mask=hmask,
                         other=0.0)
            w = tl.load(w_ptr + cols[None, :] * s_w_v + ks[:, None] * s_w_h,
                        mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST:
                hb, hv, w = hb.to(tl.float32), hv.to(tl.float32), w.to(tl.float32)
            if IEEE:
                acc_b = tl.dot(hb, w, acc_b, input_precision="ieee")
                acc_v = tl.dot(hv, w, acc_v, input_precision="ieee")
            else:
                acc_b = tl.dot(hb, w, acc_b)
                acc_v = tl.dot(hv, w, acc_v)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc_b += bias[None, :]
            acc_v += bias[None, :]
        acc_b = tl.where(col_ok[None, :], acc_b, float("-inf"))
        acc_v = tl.where(col_ok[None, :], acc_v, float("-inf"))
        m_b, s_b, z_b = _online_update(m_b, s_b, z_b, acc_b, cols, labels)
        m_v, s_v, z_v = _online_update(m_v, s_v, z_v, acc_v, cols, labels)
    delta = (z_v - (m_v + tl.log(s_v))) - (z_b - (m_b + tl.log(s_b)))
    delta = _apply_transform(delta, TRANSFORM)
    tl.store(out_ptr + rows, tl.where(active, delta, 0.0), mask=row_ok)


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_val: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int,
                                ignore_index: int) -> torch.Tensor:
    """hidden_*: (B, T, H); weight: (V, H); bias: (V,) or None -> float32 (B, T).

    Hidden states and weight must share a dtype (the caller casts); fp32 uses exact IEEE dots.
    Triton's CPU interpreter computes bf16 dots wrongly, so there the tiles are upcast first.
    """
    B, T, H = hidden_base.shape
    V = weight.shape[0]
    N = B * T
    out = torch.empty(N, dtype=torch.float32, device=hidden_base.device)
    if N == 0:
        return out.view(B, T)
    hb, hv = hidden_base.reshape(N, H), hidden_val.reshape(N, H)
    flat_labels = labels.reshape(N).contiguous()
    block_m = 64 if N >= 64 else 16
    block_k = min(64, max(16, triton.next_power_of_2(H)))
    grid = (triton.cdiv(N, block_m),)
    _paired_linear_logprob_delta_kernel[grid](
        hb, hv, weight, bias if bias is not None else weight, flat_labels, out,
        N, V, H, *hb.stride(), *hv.stride(), *weight.stride(), ignore_index,
        HAS_BIAS=bias is not None, TRANSFORM=code, IEEE=weight.dtype == torch.float32,
        UPCAST=weight.dtype == torch.bfloat16 and hidden_base.device.type == "cpu",
        BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=block_k, num_warps=4, num_stages=2,
    )
    return out.view(B, T)
