"""Triton kernels: paired log-prob delta from final hidden states and the output projection.

The vocabulary is cut into S contiguous splits. Program (i, j) owns BLOCK_M tokens and split
j: it walks the split in BLOCK_N tiles, loads every weight tile once, multiplies it with both
the base and the val hidden states and keeps, per row, an online log-sum-exp (max, sum) and
the logit of the label if the label falls in the split. A second kernel merges the S partial
results of each row into the delta. The splits give the GPU enough programs when there are
few tokens per row block (one split per row block leaves most of an H100/H200 idle); no
(B, T, V) tensor exists, and no atomics: partials take 6 * S * N floats.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tov_kernels.logprob_delta import _apply_transform

BLOCK_N = 64
# Programs to aim for per streaming multiprocessor when choosing the number of splits.
PROGRAMS_PER_SM = 8
# Splits under the CPU interpreter: more than one, so the tests exercise the merge.
INTERPRETER_SPLITS = 3


@triton.jit
def _empty_state(BLOCK: tl.constexpr):
    """Running (max, sum, label logit) of the base rows, then of the val rows: -inf, 0, 0."""
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK], tl.float32)
    return m, zero, zero, m, zero, zero


@triton.jit
def _online_update(m, s, z, logits, cols, labels):
    """Fold a float32 (BLOCK_M, BLOCK_N) logits tile into running max, sum and label logit."""
    m_new = tl.maximum(m, tl.max(logits, axis=1))
    s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
    z += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), axis=1)
    return m_new, s, z


@triton.jit
def _paired_linear_partials_kernel(
    hb_ptr, hv_ptr, w_ptr, bias_ptr, labels_ptr,
    mb_ptr, sb_ptr, zb_ptr, mv_ptr, sv_ptr, zv_ptr,
    N, V, H, cols_per_split,
    s_hb_n, s_hb_h, s_hv_n, s_hv_h, s_w_v, s_w_h,
    ignore_index,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Writes, at [split * N + row] of each (S, N) output: max, sum and label logit of the
    base rows (mb, sb, zb), then of the val rows (mv, sv, zv)."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    v_start = split * cols_per_split
    v_stop = tl.minimum(V, v_start + cols_per_split)
    m_b, s_b, z_b, m_v, s_v, z_v = _empty_state(BLOCK_M)
    for v0 in range(v_start, v_stop, BLOCK_N):
        cols = v0 + tl.arange(0, BLOCK_N)
        col_ok = cols < v_stop
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
    at = split * N + rows
    tl.store(mb_ptr + at, m_b, mask=row_ok)
    tl.store(sb_ptr + at, s_b, mask=row_ok)
    tl.store(zb_ptr + at, z_b, mask=row_ok)
    tl.store(mv_ptr + at, m_v, mask=row_ok)
    tl.store(sv_ptr + at, s_v, mask=row_ok)
    tl.store(zv_ptr + at, z_v, mask=row_ok)


@triton.jit
def _merge(m, s, m_at, s_at):
    """Fold one split's (max, sum), read at the pointers m_at / s_at, into the running pair."""
    m_j = tl.load(m_at)
    s_j = tl.load(s_at)
    m_new = tl.maximum(m, m_j)
    return m_new, s * tl.exp(m - m_new) + s_j * tl.exp(m_j - m_new)


@triton.jit
def _merge_partials_kernel(mb_ptr, sb_ptr, zb_ptr, mv_ptr, sv_ptr, zv_ptr, labels_ptr, out_ptr,
                           N, num_splits, ignore_index,
                           TRANSFORM: tl.constexpr, BLOCK: tl.constexpr):
    """out[row] = F(log p_val(label) - log p_base(label)) from the splits' partials; 0.0 for
    ignored rows. Every split holds at least one column, so its max is finite."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (labels != ignore_index)
    rows = tl.where(row_ok, rows, 0)
    m_b, s_b, z_b, m_v, s_v, z_v = _empty_state(BLOCK)
    at = rows  # split j's partials are j * N further on
    for _ in range(num_splits):
        m_b, s_b = _merge(m_b, s_b, mb_ptr + at, sb_ptr + at)
        m_v, s_v = _merge(m_v, s_v, mv_ptr + at, sv_ptr + at)
        z_b += tl.load(zb_ptr + at)
        z_v += tl.load(zv_ptr + at)
        at += N
    delta = (z_v - (m_v + tl.log(s_v))) - (z_b - (m_b + tl.log(s_b)))
    delta = _apply_transform(delta, TRANSFORM)
    tl.store(out_ptr + rows, tl.where(active, delta, 0.0), mask=row_ok)


def num_splits(num_rows: int, vocab: int, block_m: int, device: torch.device) -> int:
    """Splits of the vocabulary: about PROGRAMS_PER_SM programs per multiprocessor on CUDA
    (no more splits than BLOCK_N tiles), INTERPRETER_SPLITS elsewhere."""
    tiles = triton.cdiv(vocab, BLOCK_N)
    if device.type != "cuda":
        return min(INTERPRETER_SPLITS, tiles)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(PROGRAMS_PER_SM * sms, triton.cdiv(num_rows, block_m))))


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_val: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int,
                                ignore_index: int, splits: int | None = None) -> torch.Tensor:
    """hidden_*: (B, T, H); weight: (V, H); bias: (V,) or None -> float32 (B, T).

    Hidden states and weight must share a dtype (the caller casts); fp32 uses exact IEEE dots.
    Triton's CPU interpreter computes bf16 dots wrongly, so there the tiles are upcast first.
    splits: vocabulary splits (default `num_splits`).
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
    wanted = splits or num_splits(N, V, block_m, hidden_base.device)
    cols_per_split = triton.cdiv(triton.cdiv(V, wanted), BLOCK_N) * BLOCK_N
    S = triton.cdiv(V, cols_per_split)  # every split non-empty
    partials = torch.empty(6, S, N, dtype=torch.float32, device=hidden_base.device)
    _paired_linear_partials_kernel[(triton.cdiv(N, block_m), S)](
        hb, hv, weight, bias if bias is not None else weight, flat_labels, *partials,
        N, V, H, cols_per_split, *hb.stride(), *hv.stride(), *weight.stride(), ignore_index,
        HAS_BIAS=bias is not None, IEEE=weight.dtype == torch.float32,
        UPCAST=weight.dtype == torch.bfloat16 and hidden_base.device.type == "cpu",
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=block_k, num_warps=4, num_stages=2,
    )
    _merge_partials_kernel[(triton.cdiv(N, 256),)](
        *partials, flat_labels, out, N, S, ignore_index, TRANSFORM=code, BLOCK=256,
    )
    return out.view(B, T)
