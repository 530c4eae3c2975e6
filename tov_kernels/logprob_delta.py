"""Triton kernel: paired log-prob delta from two logits tensors, bandwidth-bound, one launch.

`_paired_logprob_delta_kernel` runs on a (token row, vocabulary chunk) grid. Each program
streams its chunk of the base row and of the val row together, one tile of TILE_R x VEC
logits per row and step (VEC elements = one 16-byte load per lane), and keeps a running max
and sum of exponentials per lane: the loop has no block-wide reduction, only one at the end.
It writes the chunk's base-2 log-sum-exp of both rows; the chunk-0 program also picks the
two label logits. Rows whose label is ignore_index (or out of range) read nothing past the
label. Every program then counts itself done for its sample (an integer atomic); the
sample's last one merges the sample's chunks in a fixed order, gives delta = (z_val -
z_base) - (lse_val - lse_base), applies F, and writes the per-token values, the per-sample
mean and the per-sample count of out-of-range labels.

`_multi_logprob_delta_kernel` scores K targets against one base on a (token row, chunk,
side) grid: side 0 streams the base row, side k the row of target k, each once (the base's
chunk log-sum-exp and label logit serve every target); the sample's last program merges
and finishes each target in turn.

The number of chunks depends on the shape only (never on the device), and which program
merges does not change what it computes: results are bit-reproducible across calls.
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

# 16-byte vectors per row per tile: 4 KiB per row and step (measured on an H200: 256 rows and
# 8 warps beat 512 and 1024 rows, and 4 warps, at 1024 and 8192 tokens).
TILE_ROWS = 256
NUM_WARPS = 8
# Programs the (row, chunk) grid aims for: rows are split into vocabulary chunks while there
# are fewer rows than this. A constant, so that the split (and so every bit of the result)
# depends on the shape only, never on the device's SM count. About one wave of 8 programs per
# SM on an H200: at 1024 tokens (device time, bf16) 1 chunk read at 0.83 / 0.90 of copy
# bandwidth (V 49152 / 128256), 4 chunks at 0.81 / 0.91, 16 chunks at 0.59 / 0.69.
TARGET_PROGRAMS = 1024
MIN_TILES_PER_CHUNK = 2
# Tokens per step of a sample's merge (one per thread): wider steps raise the kernel's
# registers from 31 to 73 (BLOCK_T 1024) and cut the streaming loop's occupancy.
FINISH_BLOCK_T = 256


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
def _merge_chunks(lse_ptr, row, n_rows, n_chunks, n_sides, side, BLOCK_T: tl.constexpr):
    """Base-2 log-sum-exp over the chunks of one side (0 base, k target k; partials laid
    out (chunks, n_sides, rows)) for BLOCK_T rows, merged in chunk order. Unwritten
    partials (rows not scored) are 0.0 (zeroed scratch)."""
    m = tl.full((BLOCK_T,), FLOAT32_LOWEST, tl.float32)
    s = tl.zeros((BLOCK_T,), tl.float32)
    for c in range(0, n_chunks):
        part = tl.load(lse_ptr + (c * n_sides + side) * n_rows + row, cache_modifier=".cg")
        m_new = tl.maximum(m, part)
        s = s * tl.exp2(m - m_new) + tl.exp2(part - m_new)
        m = m_new
    return m + tl.log2(s)


@triton.jit
def _finish_sample(b, labels_ptr, lse_ptr, z_ptr, tokens_ptr, mean_ptr, errors_ptr,
                   T, V, n_rows, n_chunks, n_sides, side, sl_b, sl_t, ignore_index,
                   TRANSFORM: tl.constexpr, HAS_ERRORS: tl.constexpr, BLOCK_T: tl.constexpr):
    """Sample b of one target (side >= 1 of n_sides; side 0 is the base) from its partials:
    tokens[b*T:(b+1)*T] F(delta), 0.0 where not scored; mean[b] over scored positions (0.0
    if none); errors[b] the labels outside [0, V) that are not ignore_index (not scored)."""
    total = tl.zeros((BLOCK_T,), tl.float32)
    scored_count = tl.zeros((BLOCK_T,), tl.int32)
    bad_count = tl.zeros((BLOCK_T,), tl.int32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        in_sample = t < T
        label = tl.load(labels_ptr + b * sl_b + t * sl_t, mask=in_sample, other=ignore_index)
        labelled = label != ignore_index
        scored = labelled & (label >= 0) & (label < V)
        row = tl.where(in_sample, b * T + t, 0).to(tl.int32)
        lse_b = _merge_chunks(lse_ptr, row, n_rows, n_chunks, n_sides, 0, BLOCK_T)
        lse_v = _merge_chunks(lse_ptr, row, n_rows, n_chunks, n_sides, side, BLOCK_T)
        z_b = tl.load(z_ptr + row, cache_modifier=".cg")
        z_v = tl.load(z_ptr + side * n_rows + row, cache_modifier=".cg")
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


@triton.jit
def _row_chunk(row, chunk, labels_ptr, sl_b, sl_t, T, V, ignore_index, tiles_per_chunk,
               TILE_R: tl.constexpr, VEC: tl.constexpr):
    """Token row ``row`` = (b, t) of a program's (row, chunk): its label, whether the label
    is scored (not ignore_index, inside [0, V)), the chunk's first vocabulary tile of
    TILE_R x VEC columns and its tile count (0 for a row not scored)."""
    b = (row // T).to(tl.int64)
    t = (row % T).to(tl.int64)
    label = tl.load(labels_ptr + b * sl_b + t * sl_t)
    active = (label != ignore_index) & (label >= 0) & (label < V)
    first = chunk * tiles_per_chunk
    n_tiles = tl.minimum(tl.cdiv(V, TILE_R * VEC) - first, tiles_per_chunk)
    return b, t, label, active, first, tl.where(active, n_tiles, 0)


@triton.jit
def _paired_logprob_delta_kernel(
    base_ptr, val_ptr, labels_ptr, lse_ptr, z_ptr, done_ptr, tokens_ptr, mean_ptr, errors_ptr,
    T, V, n_rows, tiles_per_chunk,
    sb_b, sb_t, sb_v, sv_b, sv_t, sv_v, sl_b, sl_t,
    ignore_index,
    TRANSFORM: tl.constexpr, HAS_ERRORS: tl.constexpr, CONTIGUOUS: tl.constexpr,
    TILE_R: tl.constexpr, VEC: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (rows, chunks). Scratch, zeroed by the caller: lse float32 (chunks, 2, rows),
    base-2 log-sum-exp of the chunk of the base (0) and val (1) row; z float32 (2, rows),
    the label logits; done int32 (B,), programs finished per sample. Outputs as in
    `_finish_sample`."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    b, t, label, active, first, n_tiles = _row_chunk(
        row, chunk, labels_ptr, sl_b, sl_t, T, V, ignore_index, tiles_per_chunk, TILE_R, VEC
    )
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
    # release our partials, and the sample's last program acquires all of them
    finished = tl.atomic_add(done_ptr + b, 1, sem="acq_rel")
    if finished == T * n_chunks - 1:
        _finish_sample(b, labels_ptr, lse_ptr, z_ptr, tokens_ptr, mean_ptr, errors_ptr,
                       T, V, n_rows, n_chunks, 2, 1, sl_b, sl_t, ignore_index,
                       TRANSFORM, HAS_ERRORS, BLOCK_T)


@triton.jit
def _stream_chunk(x_row, s_v, V, first, n_tiles, y, picks, CONTIGUOUS: tl.constexpr,
                  TILE_R: tl.constexpr, VEC: tl.constexpr):
    """One row's vocabulary chunk (n_tiles tiles from tile `first`; x_row: the row's
    pointer, s_v its element stride) -> (base-2 log-sum-exp of the chunk, float32 logit of
    label y where picks, else 0.0)."""
    lanes = tl.arange(0, TILE_R)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    m = tl.full((TILE_R,), FLOAT32_LOWEST, tl.float32)
    s = tl.zeros((TILE_R,), tl.float32)
    for i in range(0, n_tiles):
        start = tl.multiple_of((first + i) * TILE_R * VEC, TILE_R * VEC)
        cols = start + lanes
        inside = cols < V
        if CONTIGUOUS:
            x = tl.load(x_row + cols, mask=inside, other=float("-inf"))
        else:
            x = tl.load(x_row + cols.to(tl.int64) * s_v, mask=inside, other=float("-inf"))
        m, s = _tile_update(x.to(tl.float32) * LOG2E, m, s)
    z = tl.load(x_row + y * s_v, mask=picks, other=0.0).to(tl.float32)
    return _lanes_logsumexp2(m, s), z


@triton.jit
def _multi_logprob_delta_kernel(
    base_ptr, vals_ptr, labels_ptr, lse_ptr, z_ptr, done_ptr, tokens_ptr, mean_ptr, errors_ptr,
    B, T, V, n_rows, tiles_per_chunk,
    sb_b, sb_t, sb_v, sv_k, sv_b, sv_t, sv_v, sl_b, sl_t,
    ignore_index,
    TRANSFORM: tl.constexpr, HAS_ERRORS: tl.constexpr, CONTIGUOUS: tl.constexpr,
    TILE_R: tl.constexpr, VEC: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """K targets against one base. Grid (rows, chunks, 1 + K): program (row, chunk, side)
    streams one chunk of one row of side 0 (the base, read once for all targets) or side k
    (target k - 1 in vals), as `_paired_logprob_delta_kernel` streams a pair. Scratch,
    zeroed by the caller: lse float32 (chunks, 1 + K, rows), z float32 (1 + K, rows), done
    int32 (B,). The sample's last program finishes it for every target: tokens float32
    (K, rows), mean float32 (K, B), errors int32 (B,)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    side = tl.program_id(2)
    n_chunks = tl.num_programs(1)
    n_sides = tl.num_programs(2)
    b, t, label, active, first, n_tiles = _row_chunk(
        row, chunk, labels_ptr, sl_b, sl_t, T, V, ignore_index, tiles_per_chunk, TILE_R, VEC
    )
    picks = active & (chunk == 0)
    y = tl.where(picks, label, 0)
    if side == 0:
        lse, z = _stream_chunk(base_ptr + b * sb_b + t * sb_t, sb_v, V, first, n_tiles, y,
                               picks, CONTIGUOUS, TILE_R, VEC)
    else:
        lse, z = _stream_chunk(vals_ptr + (side - 1).to(tl.int64) * sv_k + b * sv_b + t * sv_t,
                               sv_v, V, first, n_tiles, y, picks, CONTIGUOUS, TILE_R, VEC)
    tl.store(lse_ptr + (chunk.to(tl.int64) * n_sides + side) * n_rows + row, lse, mask=active)
    tl.store(z_ptr + side * n_rows + row, z, mask=picks)
    # release our partials, and the sample's last program acquires all of them
    finished = tl.atomic_add(done_ptr + b, 1, sem="acq_rel")
    if finished == T * n_chunks * n_sides - 1:
        for k in range(1, n_sides):
            _finish_sample(b, labels_ptr, lse_ptr, z_ptr, tokens_ptr + (k - 1) * n_rows,
                           mean_ptr + (k - 1) * B, errors_ptr, T, V, n_rows, n_chunks,
                           n_sides, k, sl_b, sl_t, ignore_index, TRANSFORM, HAS_ERRORS,
                           BLOCK_T)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def chunk_layout(rows: int, vocab: int, tile: int, chunks: int | None = None) -> tuple[int, int]:
    """(vocabulary chunks per row, tiles per chunk), from the shape only. chunks forces a count
    (clipped so that no chunk is empty); None picks enough to reach TARGET_PROGRAMS programs
    with at least MIN_TILES_PER_CHUNK tiles each."""
    n_tiles = _cdiv(vocab, tile)
    if chunks is None:
        chunks = min(_cdiv(TARGET_PROGRAMS, max(rows, 1)), _cdiv(n_tiles, MIN_TILES_PER_CHUNK))
    per_chunk = _cdiv(n_tiles, max(1, min(chunks, n_tiles)))
    return _cdiv(n_tiles, per_chunk), per_chunk


def logprob_delta_tokens(logits_base: torch.Tensor, logits_val: torch.Tensor,
                         labels: torch.Tensor, code: int, ignore_index: int, *,
                         label_errors: torch.Tensor | None = None, chunks: int | None = None,
                         tile_rows: int = TILE_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token F(delta) float32 (B, T) and per-sample mean float32 (B,), one launch.

    logits_*: (B, T, V) float32/bf16/fp16, any strides (a unit last stride gets vector
    loads); labels: (B, T) int64/int32, not range-checked here: a label outside [0, V) that
    is not ignore_index is not scored and is counted into label_errors (int32 (B,), written,
    not accumulated) when given. chunks / tile_rows: force the vocabulary split and the tile
    height (a power of two); the defaults are the tuned ones. Nothing is read back to the
    host.
    """
    B, T, V = logits_base.shape
    device = logits_base.device
    n_rows = B * T
    out = torch.empty(n_rows + B, dtype=torch.float32, device=device)
    per_token, mean = out[:n_rows].view(B, T), out[n_rows:]
    if n_rows == 0:
        mean.zero_()
        if label_errors is not None:
            label_errors.zero_()
        return per_token, mean
    vec = 16 // max(logits_base.element_size(), logits_val.element_size())
    n_chunks, per_chunk = chunk_layout(n_rows, V, tile_rows * vec, chunks)
    scratch = torch.zeros((n_chunks * 2 + 2) * n_rows + B, dtype=torch.float32, device=device)
    lse, z = scratch[:n_chunks * 2 * n_rows], scratch[n_chunks * 2 * n_rows:-B]
    done = scratch[-B:].view(torch.int32)
    _paired_logprob_delta_kernel[(n_rows, n_chunks)](
        logits_base, logits_val, labels, lse, z, done, per_token, mean,
        label_errors if label_errors is not None else done,
        T, V, n_rows, per_chunk,
        *logits_base.stride(), *logits_val.stride(), *labels.stride(), ignore_index,
        TRANSFORM=code, HAS_ERRORS=label_errors is not None,
        CONTIGUOUS=logits_base.stride(2) == 1 and logits_val.stride(2) == 1,
        TILE_R=tile_rows, VEC=vec, BLOCK_T=min(FINISH_BLOCK_T, 1 << (T - 1).bit_length()),
        num_warps=NUM_WARPS,
    )
    return per_token, mean


def logprob_delta_tokens_multi(logits_base: torch.Tensor, logits_vals: torch.Tensor,
                               labels: torch.Tensor, code: int, ignore_index: int, *,
                               label_errors: torch.Tensor | None = None,
                               chunks: int | None = None,
                               tile_rows: int = TILE_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprob_delta_tokens` of K targets, one launch: per-token F(delta) float32 (K, B, T)
    and per-sample means float32 (K, B). The base rows are streamed once for all targets.

    logits_base: (B, T, V); logits_vals: (K, B, T, V) (any strides: a view of one mixed
    forward's logits is read in place). The vocabulary split counts (1 + K) rows per token
    toward TARGET_PROGRAMS; other arguments as in `logprob_delta_tokens`.
    """
    B, T, V = logits_base.shape
    K = logits_vals.shape[0]
    device = logits_base.device
    n_rows = B * T
    out = torch.empty(K * (n_rows + B), dtype=torch.float32, device=device)
    per_token, mean = out[:K * n_rows].view(K, B, T), out[K * n_rows:].view(K, B)
    if n_rows == 0:
        mean.zero_()
        if label_errors is not None:
            label_errors.zero_()
        return per_token, mean
    n_sides = 1 + K
    vec = 16 // max(logits_base.element_size(), logits_vals.element_size())
    n_chunks, per_chunk = chunk_layout(n_rows * n_sides, V, tile_rows * vec, chunks)
    scratch = torch.zeros((n_chunks + 1) * n_sides * n_rows + B, dtype=torch.float32,
                          device=device)
    lse = scratch[:n_chunks * n_sides * n_rows]
    z = scratch[n_chunks * n_sides * n_rows:-B]
    done = scratch[-B:].view(torch.int32)
    _multi_logprob_delta_kernel[(n_rows, n_chunks, n_sides)](
        logits_base, logits_vals, labels, lse, z, done, per_token, mean,
        label_errors if label_errors is not None else done,
        B, T, V, n_rows, per_chunk,
        *logits_base.stride(), *logits_vals.stride(), *labels.stride(), ignore_index,
        TRANSFORM=code, HAS_ERRORS=label_errors is not None,
        CONTIGUOUS=logits_base.stride(2) == 1 and logits_vals.stride(3) == 1,
        TILE_R=tile_rows, VEC=vec, BLOCK_T=min(FINISH_BLOCK_T, 1 << (T - 1).bit_length()),
        num_warps=NUM_WARPS,
    )
    return per_token, mean
