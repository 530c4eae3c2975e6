"""Triton kernels: paired log-prob delta from two logits tensors, bandwidth-bound.

`_paired_logprob_delta_kernel` runs on a (token row, vocabulary chunk) grid. Each program
streams its chunk of the base row and of the val row together, one tile of TILE_R x VEC
logits per row and step (VEC elements = one 16-byte load per lane), and keeps a running max
and sum of exponentials per lane: the loop has no block-wide reduction, only one at the end.
It writes the chunk's base-2 log-sum-exp of both rows; the chunk-0 program also picks the
two label logits. Rows whose label is ignore_index (or out of range) read nothing past the
label. `_finish_kernel` (one program per sample) merges the chunks in a fixed order, gives
delta = (z_val - z_base) - (lse_val - lse_base), applies F, and writes the per-token values,
the per-sample mean and the per-sample count of out-of-range labels.

The number of chunks depends on the shape only (never on the device): no atomics, results
bit-reproducible across calls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Running maxima start at the lowest finite float32, not -inf: a tile of only -inf logits
# (a masked part of the vocabulary) then leaves them finite instead of giving
# exp(-inf - -inf) = NaN.
FLOAT32_LOWEST = tl.constexpr(-3.4028234663852886e38)

# 16-byte vectors per row per tile: 8 KiB of bf16 (16 KiB of float32) per row and step.
TILE_ROWS = 512
NUM_WARPS = 8
# Programs the (row, chunk) grid aims for: rows are split into vocabulary chunks while there
# are fewer rows than this. A constant, so that the split (and so every bit of the result)
# depends on the shape only, never on the device's SM count.
TARGET_PROGRAMS = 4096
MIN_TILES_PER_CHUNK = 2
FINISH_BLOCK_T = 1024


@triton.jit
def _apply_transform(delta, TRANSFORM: tl.constexpr):
    if TRANSFORM == 1:
        delta = tl.abs(delta)
    elif TRANSFORM == 2:
        delta = tl.maximum(delta, 0.0)
    return delta


@triton.jit
def _tile_update(x, m, s):
    """x: (TILE_R, VEC) float32 logits times log2(e); m, s: (TILE_R,) per-lane running max
    and sum of 2^(x - m). The reductions are over each lane's own VEC values."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x - m_new[:, None]), axis=1)
    return m_new, s


@triton.jit
def _lanes_logsumexp2(m, s):
    """(TILE_R,) lane states -> log2 of the sum of 2^x over every lane."""
    m_all = tl.max(m, axis=0)
    return m_all + tl.log2(tl.sum(s * tl.exp2(m - m_all), axis=0))


@triton.jit
def _paired_logprob_delta_kernel(
    base_ptr, val_ptr, labels_ptr, lse_ptr, z_ptr,
    T, V, n_rows, tiles_per_chunk,
    sb_b, sb_t, sb_v, sv_b, sv_t, sv_v, sl_b, sl_t,
    ignore_index,
    CONTIGUOUS: tl.constexpr, TILE_R: tl.constexpr, VEC: tl.constexpr,
):
    """Grid (rows, chunks). lse: float32 (chunks, 2, rows), base-2 log-sum-exp of the chunk
    of the base (0) and val (1) row; z: float32 (2, rows), the label logits (chunk 0)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    b = (row // T).to(tl.int64)
    t = (row % T).to(tl.int64)
    label = tl.load(labels_ptr + b * sl_b + t * sl_t)
    active = (label != ignore_index) & (label >= 0) & (label < V)
    first = chunk * tiles_per_chunk
    n_tiles = tl.minimum(tl.cdiv(V, TILE_R * VEC) - first, tiles_per_chunk)
    n_tiles = tl.where(active, n_tiles, 0)
    base_row = base_ptr + b * sb_b + t * sb_t
    val_row = val_ptr + b * sv_b + t * sv_t
    lanes = tl.arange(0, TILE_R)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    m_b = tl.full((TILE_R,), FLOAT32_LOWEST, tl.float32)
    m_v = tl.full((TILE_R,), FLOAT32_LOWEST, tl.float32)
    s_b = tl.zeros((TILE_R,), tl.float32)
    s_v = tl.zeros((TILE_R,), tl.float32)
    for i in range(0, n_tiles):
        start = tl.multiple_of((first + i) * TILE_R * VEC, TILE_R * VEC)
        cols = start + lanes
        inside = cols < V
        if CONTIGUOUS:
            x_b = tl.load(base_row + cols, mask=inside, other=float("-inf"))
            x_v = tl.load(val_row + cols, mask=inside, other=float("-inf"))
        else:
            x_b = tl.load(base_row + cols.to(tl.int64) * sb_v, mask=inside, other=float("-inf"))
            x_v = tl.load(val_row + cols.to(tl.int64) * sv_v, mask=inside, other=float("-inf"))
        m_b, s_b = _tile_update(x_b.to(tl.float32) * LOG2E, m_b, s_b)
        m_v, s_v = _tile_update(x_v.to(tl.float32) * LOG2E, m_v, s_v)
    out = lse_ptr + chunk.to(tl.int64) * 2 * n_rows + row
    tl.store(out, _lanes_logsumexp2(m_b, s_b), mask=active)
    tl.store(out + n_rows, _lanes_logsumexp2(m_v, s_v), mask=active)
    picks = active & (chunk == 0)
    y = tl.where(picks, label, 0)
    tl.store(z_ptr + row, tl.load(base_row + y * sb_v, mask=picks).to(tl.float32), mask=picks)
    tl.store(z_ptr + n_rows + row, tl.load(val_row + y * sv_v, mask=picks).to(tl.float32),
             mask=picks)


@triton.jit
def _merge_chunks(lse_ptr, row, n_rows, n_chunks, side, mask, BLOCK_T: tl.constexpr):
    """Base-2 log-sum-exp over the chunks of one side (0 base, 1 val) for BLOCK_T rows,
    merged in chunk order (deterministic)."""
    m = tl.full((BLOCK_T,), FLOAT32_LOWEST, tl.float32)
    s = tl.zeros((BLOCK_T,), tl.float32)
    for c in range(0, n_chunks):
        part = tl.load(lse_ptr + (c * 2 + side) * n_rows + row, mask=mask, other=0.0)
        m_new = tl.maximum(m, part)
        s = s * tl.exp2(m - m_new) + tl.exp2(part - m_new)
        m = m_new
    return m + tl.log2(s)


@triton.jit
def _finish_kernel(
    labels_ptr, lse_ptr, z_ptr, tokens_ptr, mean_ptr, errors_ptr,
    T, V, n_rows, n_chunks, sl_b, sl_t, ignore_index,
    TRANSFORM: tl.constexpr, HAS_ERRORS: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (B,). tokens: float32 (B*T,) F(delta), 0.0 where not scored; mean: float32 (B,)
    over scored positions (0.0 if none); errors: int32 (B,) labels outside [0, V) that are
    not ignore_index (those positions are not scored)."""
    b = tl.program_id(0)
    total = tl.zeros((BLOCK_T,), tl.float32)
    scored_count = tl.zeros((BLOCK_T,), tl.int32)
    bad_count = tl.zeros((BLOCK_T,), tl.int32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        in_sample = t < T
        label = tl.load(labels_ptr + b.to(tl.int64) * sl_b + t * sl_t, mask=in_sample,
                        other=ignore_index)
        labelled = label != ignore_index
        scored = labelled & (label >= 0) & (label < V)
        row = b * T + t
        lse_b = _merge_chunks(lse_ptr, row, n_rows, n_chunks, 0, scored, BLOCK_T)
        lse_v = _merge_chunks(lse_ptr, row, n_rows, n_chunks, 1, scored, BLOCK_T)
        z_b = tl.load(z_ptr + row, mask=scored, other=0.0)
        z_v = tl.load(z_ptr + n_rows + row, mask=scored, other=0.0)
        delta = _apply_transform((z_v - z_b) - (lse_v - lse_b) * LN2, TRANSFORM)
        delta = tl.where(scored, delta, 0.0)
        tl.store(tokens_ptr + row, delta, mask=in_sample)
        total += delta
        scored_count += scored.to(tl.int32)
        bad_count += (labelled & ~scored).to(tl.int32)
    n_scored = tl.maximum(tl.sum(scored_count, axis=0), 1).to(tl.float32)
    tl.store(mean_ptr + b, tl.sum(total, axis=0) / n_scored)
    if HAS_ERRORS:
        tl.store(errors_ptr + b, tl.sum(bad_count, axis=0))


def chunk_layout(rows: int, vocab: int, tile: int, chunks: int | None = None) -> tuple[int, int]:
    """(vocabulary chunks per row, tiles per chunk), from the shape only. chunks forces a count
    (clipped so that no chunk is empty); None picks enough to reach TARGET_PROGRAMS programs
    with at least MIN_TILES_PER_CHUNK tiles each."""
    n_tiles = triton.cdiv(vocab, tile)
    if chunks is None:
        chunks = min(triton.cdiv(TARGET_PROGRAMS, max(rows, 1)),
                     triton.cdiv(n_tiles, MIN_TILES_PER_CHUNK))
    per_chunk = triton.cdiv(n_tiles, max(1, min(chunks, n_tiles)))
    return triton.cdiv(n_tiles, per_chunk), per_chunk


def logprob_delta_tokens(logits_base: torch.Tensor, logits_val: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int, *,
                         label_errors: torch.Tensor | None = None, chunks: int | None = None,
                         tile_rows: int = TILE_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token F(delta) float32 (B, T) and per-sample mean float32 (B,), two launches.

    logits_*: (B, T, V) float32/bf16/fp16, any strides (a unit last stride gets vector
    loads); labels: (B, T) int64/int32, not range-checked here: a label outside [0, V) that
    is not ignore_index is not scored and is counted into label_errors (int32 (B,), written,
    not accumulated) when given. chunks / tile_rows: force the vocabulary split and the tile
    height (a power of two); the defaults are the tuned ones.
    """
    B, T, V = logits_base.shape
    device = logits_base.device
    tokens = torch.empty(B * T + B, dtype=torch.float32, device=device)
    per_token, mean = tokens[:B * T].view(B, T), tokens[B * T:]
    if B == 0:
        return per_token, mean
    n_rows = B * T
    vec = 16 // max(logits_base.element_size(), logits_val.element_size())
    n_chunks, per_chunk = chunk_layout(n_rows, V, tile_rows * vec, chunks)
    scratch = torch.empty((n_chunks * 2 + 2) * max(n_rows, 1), dtype=torch.float32,
                          device=device)
    lse, z = scratch[:n_chunks * 2 * n_rows], scratch[n_chunks * 2 * n_rows:]
    if n_rows:
        _paired_logprob_delta_kernel[(n_rows, n_chunks)](
            logits_base, logits_val, labels, lse, z, T, V, n_rows, per_chunk,
            *logits_base.stride(), *logits_val.stride(), *labels.stride(), ignore_index,
            CONTIGUOUS=logits_base.stride(2) == 1 and logits_val.stride(2) == 1,
            TILE_R=tile_rows, VEC=vec, num_warps=NUM_WARPS,
        )
    _finish_kernel[(B,)](
        labels, lse, z, per_token, mean, label_errors if label_errors is not None else mean,
        T, V, n_rows, n_chunks, *labels.stride(), ignore_index,
        TRANSFORM=code, HAS_ERRORS=label_errors is not None,
        BLOCK_T=min(FINISH_BLOCK_T, triton.next_power_of_2(max(T, 1))), num_warps=4,
    )
    return per_token, mean
