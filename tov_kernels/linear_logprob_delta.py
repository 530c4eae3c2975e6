"""Triton kernels: paired log-prob delta from final hidden states and the output projection.

The base and the val hidden states of K targets form one ((1 + K) N, H) operand: row tiles
0..P-1 read base rows and kP..(k + 1)P - 1 the rows of target k (P = cdiv(N, BLOCK_M)) through
64-bit tile base pointers, so the (B, T, H) tensors (any strides, e.g. the blocks of one
forward's output without its last position) are never copied into one. The base rows are
projected once whatever K: their partials serve every target. A matmul-shaped grid walks
(row tile x vocabulary tile) in grouped order (GROUP_M row tiles share each weight tile
while it is in L2); each program computes one (BLOCK_M, BLOCK_N) logits tile over the whole
hidden dimension and its epilogue writes, per row, the tile's max and sum of
exp2((logit - max) * log2(e)) into a partials buffer of 2 x ((1 + K) N, num_vocab_tiles)
floats. No logits tensor exists, no label compare/select runs in the tile loop and nothing
is atomic. A finish kernel then merges the tiles of each row in a fixed order, computes the
label logit as a small indexed dot over H (the base's once, then each target's) and writes
delta_k = (z_val_k - z_base) - (lse_val_k - lse_base), F applied.

Determinism: the partials layout depends only on (N, V) and the tile config, never on the
number of SMs, so repeated calls are bitwise equal; and each row's arithmetic does not
depend on where the row sits in the batch, so the same rows scored inside another batch of
the same token bucket (same config) give bitwise the same per-token values.

For very large H, where Triton's K loop lags cuBLAS, the config table may name
CUBLAS_CHUNKED: vocabulary chunks through torch.mm into a bounded float32 buffer, the same
partials, the same finish kernel (cuBLAS picks its algorithm by shape, so that path is only
repeatable, not batch-invariant).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tov_kernels.logprob_delta import _apply_transform

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)  # the same, inside kernels


@dataclass(frozen=True)
class TileConfig:
    """One launch config of the tile kernel: (BLOCK_M, BLOCK_N, BLOCK_K) tile, GROUP_M row
    tiles per L2 group, num_warps and num_stages of the software pipeline."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return (f"tile_{self.block_m}x{self.block_n}x{self.block_k}_g{self.group_m}"
                f"_w{self.num_warps}_s{self.num_stages}")


CUBLAS_CHUNKED = "cublas_chunked"
Config = TileConfig | str  # a TileConfig or CUBLAS_CHUNKED

TILE_128x128 = TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=3)
TILE_128x256 = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3)
# Every config benchmarks/kernel_bench.py times for a shape (with the table's own and
# CUBLAS_CHUNKED). All build for sm_90 without register spills (ptxas: 114 to 196 registers
# per thread; 96 to 192 KiB of shared memory).
CANDIDATES: tuple[TileConfig, ...] = (
    TILE_128x128,
    TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=4),
    TILE_128x256,
    TileConfig(256, 128, 64, group_m=8, num_warps=8, num_stages=3),
)

# Bucket upper bounds (inclusive) of hidden size H, vocabulary V and tokens N = B*T per
# adapter; None: anything larger. CONFIG_TABLE maps (H bound, V bound, N bound) to the config
# for that bucket. GUESSES until measured on an H200 (benchmarks/kernel_bench.py times each
# config of `measured_configs` for a shape through `benchmark_variants`): edit the entries.
# Configs may differ between token buckets of one (H, V); the result is batch-invariant
# inside a token bucket only.
HIDDEN_BUCKETS = (1024, 4096, None)
VOCAB_BUCKETS = (65536, None)
TOKEN_BUCKETS = (2048, None)
CONFIG_TABLE: dict[tuple[int | None, int | None, int | None], Config] = {
    (1024, 65536, 2048): TILE_128x128,
    (1024, 65536, None): TILE_128x128,
    (1024, None, 2048): TILE_128x128,
    (1024, None, None): TILE_128x256,
    (4096, 65536, 2048): TILE_128x128,
    (4096, 65536, None): TILE_128x128,
    (4096, None, 2048): TILE_128x128,
    (4096, None, None): TILE_128x256,
    (None, 65536, 2048): CUBLAS_CHUNKED,
    (None, 65536, None): CUBLAS_CHUNKED,
    (None, None, 2048): CUBLAS_CHUNKED,
    (None, None, None): CUBLAS_CHUNKED,
}
# Off CUDA (the CPU interpreter, tests): small tiles, the same code.
INTERPRETER_CONFIG = TileConfig(16, 32, 16, group_m=2, num_warps=1, num_stages=1)

# Finish kernel: rows per program, vocabulary tiles and hidden columns per step. Fixed, so
# that each row's reduction order never depends on the shape.
FINISH_ROWS, FINISH_TILES, FINISH_HIDDEN, FINISH_WARPS = 8, 64, 64, 4
# cuBLAS-chunked path: float32 elements of the logits buffer of both adapters (256 MiB),
# the column multiple of a chunk, and columns per step of its reduction kernel.
CUBLAS_CHUNK_ELEMENTS = 1 << 26
CUBLAS_CHUNK_ALIGN = 128
CHUNK_LSE_BLOCK = 1024


def _bucket(value: int, bounds: tuple[int | None, ...]) -> int | None:
    return next(b for b in bounds if b is None or value <= b)


def config_for(hidden: int, vocab: int, tokens: int, device: torch.device) -> Config:
    """The table's config for (H, V, N) on CUDA; INTERPRETER_CONFIG elsewhere."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    key = (_bucket(hidden, HIDDEN_BUCKETS), _bucket(vocab, VOCAB_BUCKETS),
           _bucket(tokens, TOKEN_BUCKETS))
    return CONFIG_TABLE[key]


@triton.jit
def _lse_tiles_kernel(
    hb_ptr, hv_ptr, w_ptr, bias_ptr, max_ptr, sum_ptr,
    N, T, V, H, row_tiles, vocab_tiles, n_sides,
    s_hb_b, s_hb_t, s_hb_h, s_hv_k, s_hv_b, s_hv_t, s_hv_h, s_w_v, s_w_h,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Program p -> (row tile, vocabulary tile) in grouped order; writes the tile's per-row
    max and sum of exp2 at [row * vocab_tiles + vocabulary tile] of max_ptr / sum_ptr, rows
    0..N-1 base and kN..(k + 1)N - 1 target k (n_sides = 1 + K sides). Token row n of side
    s is hidden_base[n // T, n % T] (s = 0) or hidden_vals[s - 1, n // T, n % T] (any
    strides). row_tiles = cdiv(N, BLOCK_M) per side."""
    pid = tl.program_id(0)
    per_group = GROUP_M * vocab_tiles
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_sides * row_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    side = pid_m // row_tiles  # 0: base rows, k: target k's rows
    row0 = (pid_m - side * row_tiles) * BLOCK_M
    col0 = pid_n * BLOCK_N
    # 64-bit tile base pointers; 32-bit offsets inside the tile. Rows and columns past the
    # end are clamped to the last one (loads stay unmasked); the epilogue drops them.
    if side == 0:
        h_ptr = hb_ptr
        s_b = s_hb_b
        s_t = s_hb_t
        s_h = s_hb_h
    else:
        h_ptr = hv_ptr + (side - 1).to(tl.int64) * s_hv_k
        s_b = s_hv_b
        s_t = s_hv_t
        s_h = s_hv_h
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_N)
    k = tl.arange(0, BLOCK_K)
    rows = row0 + tl.minimum(r, N - 1 - row0)
    row_offs = (rows // T).to(tl.int64) * s_b + (rows % T).to(tl.int64) * s_t
    tile_off = (row0 // T).to(tl.int64) * s_b + (row0 % T).to(tl.int64) * s_t
    h_tile = h_ptr + tile_off
    w_tile = w_ptr + col0.to(tl.int64) * s_w_v
    c_in = tl.minimum(c, V - 1 - col0)
    h_offs = (row_offs - tile_off).to(tl.int32)[:, None] + k[None, :] * s_h
    w_offs = k[:, None] * s_w_h + c_in[None, :] * s_w_v
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            h = tl.load(h_tile + h_offs)
            w = tl.load(w_tile + w_offs)
        else:
            k_ok = k < H - k0
            h = tl.load(h_tile + h_offs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_tile + w_offs, mask=k_ok[:, None], other=0.0)
        if UPCAST:
            h, w = h.to(tl.float32), w.to(tl.float32)
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
        h_tile += BLOCK_K * s_h
        w_tile += BLOCK_K * s_w_h
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col0 + c_in).to(tl.float32)[None, :]
    acc = tl.where((c < V - col0)[None, :], acc, float("-inf"))  # >= 1 column is real
    m = tl.max(acc, axis=1)
    s = tl.sum(tl.exp2((acc - m[:, None]) * _LOG2E), axis=1)
    at = (side * N + row0 + r).to(tl.int64) * vocab_tiles + pid_n
    row_ok = r < N - row0
    tl.store(max_ptr + at, m, mask=row_ok)
    tl.store(sum_ptr + at, s, mask=row_ok)


@triton.jit
def _merge_side(max_ptr, sum_ptr, rows, row_ok, vocab_tiles,
                BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """(max, sum of exp2 relative to it) over all vocabulary tiles of `rows`, tiles folded
    in index order, BLOCK_T at a time. Rows where row_ok is False read nothing: (0, 1)."""
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    t = tl.arange(0, BLOCK_T)
    base = rows[:, None] * vocab_tiles
    for t0 in range(0, vocab_tiles, BLOCK_T):
        ok = row_ok[:, None] & (t0 + t < vocab_tiles)[None, :]
        m_t = tl.load(max_ptr + base + t0 + t[None, :], mask=ok, other=float("-inf"))
        s_t = tl.load(sum_ptr + base + t0 + t[None, :], mask=ok, other=0.0)
        m_new = tl.maximum(m, tl.max(m_t, axis=1))
        # rows not read hold -inf everywhere: keep their scale finite (they are dropped)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp2((m - m_safe) * _LOG2E) + tl.sum(
            s_t * tl.exp2((m_t - m_safe[:, None]) * _LOG2E), axis=1)
        m = m_new
    return tl.where(row_ok, m, 0.0), tl.where(row_ok, s, 1.0)


@triton.jit
def _label_logit(h_rows, s_h, y_rows, s_w_h, active, H, BLOCK_R: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """float32 dot of BLOCK_R hidden rows (h_rows: (BLOCK_R,) row pointers, element stride
    s_h) with the weight rows of their labels (y_rows: (BLOCK_R,) row pointers, element
    stride s_w_h); 0.0 where not active."""
    kk = tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_R, BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + kk
        ok = active[:, None] & (ks < H)[None, :]
        w = tl.load(y_rows[:, None] + ks[None, :] * s_w_h, mask=ok, other=0.0)
        h = tl.load(h_rows[:, None] + ks[None, :] * s_h, mask=ok, other=0.0)
        acc += h.to(tl.float32) * w.to(tl.float32)
    return tl.sum(acc, axis=1)


@triton.jit
def _finish_kernel(
    hb_ptr, hv_ptr, w_ptr, bias_ptr, labels_ptr, max_ptr, sum_ptr, out_ptr,
    N, T, H, vocab_tiles, n_targets,
    s_hb_b, s_hb_t, s_hb_h, s_hv_k, s_hv_b, s_hv_t, s_hv_h, s_w_v, s_w_h,
    ignore_index,
    HAS_BIAS: tl.constexpr, TRANSFORM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[k, row] = F((z_val_k - z_base) - (lse_val_k - lse_base)) for BLOCK_R token rows
    and each of the n_targets targets; 0.0 for ignored rows. z: float32 dot of the hidden
    row with the label's weight row (+ bias). The base's z and log-sum-exp are computed once
    and reused for every target."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    active = row_ok & (labels != ignore_index)
    y = tl.where(active, labels, 0).to(tl.int64)
    b = rows // T
    t = rows % T
    y_rows = w_ptr + y * s_w_v
    z_b = _label_logit(hb_ptr + b * s_hb_b + t * s_hb_t, s_hb_h, y_rows, s_w_h, active, H,
                       BLOCK_R, BLOCK_H)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + y, mask=active, other=0.0).to(tl.float32)
        z_b += bias
    m_b, s_b = _merge_side(max_ptr, sum_ptr, rows, active, vocab_tiles, BLOCK_R, BLOCK_T)
    hv_rows = hv_ptr + b * s_hv_b + t * s_hv_t  # target k: + k * s_hv_k
    side_rows = rows  # rows of target k in the partials and the output: + (k + 1) * N
    for _ in range(0, n_targets):
        side_rows += N
        z_v = _label_logit(hv_rows, s_hv_h, y_rows, s_w_h, active, H, BLOCK_R, BLOCK_H)
        if HAS_BIAS:
            z_v += bias
        m_v, s_v = _merge_side(max_ptr, sum_ptr, side_rows, active, vocab_tiles, BLOCK_R,
                               BLOCK_T)
        d_lse = (m_v - m_b) + (tl.log(s_v) - tl.log(s_b))
        delta = _apply_transform((z_v - z_b) - d_lse, TRANSFORM)
        tl.store(out_ptr + side_rows - N, tl.where(active, delta, 0.0), mask=row_ok)
        hv_rows += s_hv_k


@triton.jit
def _chunk_lse_kernel(logits_ptr, max_ptr, sum_ptr, width, chunk, chunks,
                      BLOCK_V: tl.constexpr):
    """One float32 logits row of a cuBLAS chunk (row-major, `width` columns) -> its max and
    sum of exp2 at [row * chunks + chunk]: one pass with per-lane running (max, sum), no
    barrier inside the loop, one combine at the end."""
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * width
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, width, BLOCK_V):
        x = tl.load(x_row + v0 + cols, mask=v0 + cols < width, other=float("-inf"))
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # lanes with nothing yet
        s = s * tl.exp2((m - m_safe) * _LOG2E) + tl.exp2((x - m_safe) * _LOG2E)
        m = m_new
    row_max = tl.max(m, axis=0)
    row_sum = tl.sum(s * tl.exp2((m - row_max) * _LOG2E), axis=0)
    tl.store(max_ptr + row * chunks + chunk, row_max)
    tl.store(sum_ptr + row * chunks + chunk, row_sum)


def _cublas_chunked_partials(hidden: list[torch.Tensor], weight: torch.Tensor,
                             bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary chunks of float32 logits of every side (the base, then each target) via
    torch.mm (cuBLAS on CUDA) into one reused buffer of at most CUBLAS_CHUNK_ELEMENTS
    floats, each chunk reduced by `_chunk_lse_kernel` -> the tile kernel's partials (max,
    sum of exp2), float32 (S N, chunks) each. hidden: S (N, H) tensors in the weight's
    dtype; weight: (V, H)."""
    S, N, V = len(hidden), hidden[0].shape[0], weight.shape[0]
    width = max(CUBLAS_CHUNK_ALIGN,
                CUBLAS_CHUNK_ELEMENTS // (S * N) // CUBLAS_CHUNK_ALIGN * CUBLAS_CHUNK_ALIGN)
    width = min(width, V)
    chunks = triton.cdiv(V, width)
    row_max = torch.empty(S * N, chunks, dtype=torch.float32, device=weight.device)
    row_sum = torch.empty_like(row_max)
    buffer = torch.empty(S * N * width, dtype=torch.float32, device=weight.device)
    # cuBLAS writes float32 straight from half inputs; elsewhere (CPU tests) upcast first
    direct = weight.is_cuda and hidden[0].dtype != torch.float32
    if not direct:
        hidden = [h.float() for h in hidden]
    for j, v0 in enumerate(range(0, V, width)):
        w_chunk = weight[v0:v0 + width]
        cols = w_chunk.shape[0]
        logits = buffer[:S * N * cols].view(S, N, cols)
        for side, h in enumerate(hidden):
            if direct:
                torch.mm(h, w_chunk.T, out_dtype=torch.float32, out=logits[side])
            else:
                torch.mm(h, w_chunk.T.float(), out=logits[side])
        if bias is not None:
            logits += bias[v0:v0 + cols].float()
        _chunk_lse_kernel[(S * N,)](logits, row_max, row_sum, cols, j, chunks,
                                    BLOCK_V=CHUNK_LSE_BLOCK, num_warps=4)
    return row_max, row_sum


def _fits_int32(hidden: torch.Tensor, rows: int, cols: int) -> bool:
    """Whether every offset inside a (rows x cols) tile of hidden (B, T, H), taken from the
    tile's first token row, fits in 32 bits."""
    s_b, s_t, s_h = (abs(x) for x in hidden.stride())
    T = hidden.shape[1]
    span = (rows + T - 2) // T * s_b + (min(rows, T) - 1) * s_t + (cols - 1) * s_h
    return span < 2**31


def linear_logprob_delta_tokens(hidden_base: torch.Tensor, hidden_vals: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor | None,
                                labels: torch.Tensor, code: int, ignore_index: int,
                                config: Config | None = None) -> torch.Tensor:
    """hidden_base: (B, T, H); hidden_vals: (K, B, T, H) (K targets, any strides); weight:
    (V, H); bias: (V,) or None -> float32 (K, B, T). The base rows are projected once.

    Hidden states of another dtype than the weight are cast to the weight's dtype (the small
    operand; the weight is never copied). fp32 uses exact IEEE dots. Triton's CPU interpreter
    computes bf16 dots wrongly, so there the tiles are upcast first.
    config: a TileConfig or CUBLAS_CHUNKED; default `config_for` the shape and device.
    """
    B, T, H = hidden_base.shape
    K = hidden_vals.shape[0]
    V = weight.shape[0]
    N = B * T
    device = hidden_base.device
    out = torch.empty(K, N, dtype=torch.float32, device=device)
    if N == 0:
        return out.view(K, B, T)
    hb = hidden_base.to(weight.dtype)
    hv = hidden_vals.to(weight.dtype)
    flat_labels = labels.reshape(N).contiguous()
    if config is None:
        config = config_for(H, V, N, device)
    if config == CUBLAS_CHUNKED:
        row_max, row_sum = _cublas_chunked_partials(
            [hb.reshape(N, H), *(hv[k].reshape(N, H) for k in range(K))], weight, bias)
    else:
        row_max, row_sum = _tile_partials(hb, hv, weight, bias, config)
    vocab_tiles = row_max.shape[1]
    _finish_kernel[(triton.cdiv(N, FINISH_ROWS),)](
        hb, hv, weight, bias if bias is not None else weight, flat_labels, row_max, row_sum,
        out, N, T, H, vocab_tiles, K, *hb.stride(), *hv.stride(), *weight.stride(),
        ignore_index, HAS_BIAS=bias is not None, TRANSFORM=code, BLOCK_R=FINISH_ROWS,
        BLOCK_T=FINISH_TILES, BLOCK_H=FINISH_HIDDEN, num_warps=FINISH_WARPS,
    )
    return out.view(K, B, T)


def _tile_partials(hb: torch.Tensor, hv: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None,
                   config: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the tile kernel -> (max, sum of exp2) partials, float32 ((1 + K) N, vocab
    tiles) each. hb: (B, T, H), hv: (K, B, T, H), in the weight's dtype, any strides;
    weight: (V, H)."""
    B, T, H = hb.shape
    n_sides = 1 + hv.shape[0]
    N, V = B * T, weight.shape[0]
    # 32-bit offsets inside a tile: operands whose strides could overflow them are copied
    if not _fits_int32(hb, config.block_m, config.block_k):
        hb = hb.contiguous()
    if not _fits_int32(hv[0], config.block_m, config.block_k):
        hv = hv.contiguous()
    if (config.block_n - 1) * abs(weight.stride(0)) + (
            config.block_k - 1) * abs(weight.stride(1)) >= 2**31:
        weight = weight.contiguous()
    row_tiles = triton.cdiv(N, config.block_m)
    vocab_tiles = triton.cdiv(V, config.block_n)
    row_max = torch.empty(n_sides * N, vocab_tiles, dtype=torch.float32, device=hb.device)
    row_sum = torch.empty_like(row_max)
    _lse_tiles_kernel[(n_sides * row_tiles * vocab_tiles,)](
        hb, hv, weight, bias if bias is not None else weight, row_max, row_sum,
        N, T, V, H, row_tiles, vocab_tiles, n_sides, *hb.stride(), *hv.stride(),
        *weight.stride(),
        HAS_BIAS=bias is not None, IEEE=weight.dtype == torch.float32,
        UPCAST=weight.dtype == torch.bfloat16 and hb.device.type == "cpu",
        EVEN_K=H % config.block_k == 0, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_K=config.block_k, GROUP_M=config.group_m, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return row_max, row_sum


def table_configs() -> list[Config]:
    """The distinct configs of CONFIG_TABLE, in table order."""
    return list(dict.fromkeys(CONFIG_TABLE.values()))


def measured_configs() -> list[Config]:
    """CANDIDATES, then the table's other configs, then CUBLAS_CHUNKED: each once."""
    return list(dict.fromkeys([*CANDIDATES, *table_configs(), CUBLAS_CHUNKED]))


def benchmark_variants(hidden_base: torch.Tensor, hidden_val: torch.Tensor,
                       weight: torch.Tensor, labels: torch.Tensor,
                       ignore_index: int = -100) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument callable per config of `measured_configs`, by config name (a
    TileConfig's `name` or "cublas_chunked"), each computing the per-token identity delta
    (no bias) of these inputs: what benchmarks/kernel_bench.py times to fill the table."""
    configs = measured_configs()

    def variant(config: Config) -> Callable[[], torch.Tensor]:
        return lambda: linear_logprob_delta_tokens(hidden_base, hidden_val[None], weight, None,
                                                   labels, 0, ignore_index, config=config)[0]

    return {getattr(c, "name", c): variant(c) for c in configs}
