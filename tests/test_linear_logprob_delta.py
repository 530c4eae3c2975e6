"""The fused head (hidden states -> delta) against an independent float64 reference:
logits = hidden @ W.T + b, log_softmax, gather, F, mask.

Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py) with INTERPRETER_CONFIG's
small tiles unless a test passes a config; with TRITON_INTERPRET=0 on a CUDA machine the same
tests run the compiled kernels with the table's configs.
"""

import os

import pytest
import torch

from tests.reference import TRANSFORMS
from tov_kernels import linear_logprob_delta as lld
from tov_kernels import paired_linear_logprob_delta
from tov_kernels.linear_logprob_delta import (
    CUBLAS_CHUNKED,
    INTERPRETER_CONFIG,
    TileConfig,
    linear_logprob_delta_tokens,
)

IGNORE = -100
DEVICE = "cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] == "0" else "cpu"
CODES = {"identity": 0, "abs": 1, "relu": 2}
# Tile configs other than the default: tiles taller than wide, GROUP_M not dividing the row
# tiles, an uneven K tail; and every tile config of the table and the candidates.
ODD_TILE = TileConfig(32, 16, 32, group_m=3, num_warps=2, num_stages=2)
MEASURED_TILES = [c for c in lld.measured_configs() if c != CUBLAS_CHUNKED]


def reference(hidden_base, hidden_val, weight, labels, bias=None, transform="identity"):
    """float64 per-token F(log_softmax(h_val W^T + b)[y] - log_softmax(h_base W^T + b)[y]),
    0 where ignored: (B, T)."""
    w = weight.double().cpu()
    logits = [h.double().cpu() @ w.T for h in (hidden_base, hidden_val)]
    if bias is not None:
        logits = [x + bias.double().cpu() for x in logits]
    labels = labels.cpu()
    keep = labels != IGNORE
    y = torch.where(keep, labels, 0).long().unsqueeze(-1)
    lp_b, lp_v = (torch.log_softmax(x, dim=-1).gather(-1, y).squeeze(-1) for x in logits)
    return torch.where(keep, TRANSFORMS[transform](lp_v - lp_b), 0.0)


def single_target_tokens(hidden_base, hidden_val, *args, **kwargs):
    """The Triton per-token launcher on one target: float32 (B, T)."""
    return linear_logprob_delta_tokens(hidden_base, hidden_val[None], *args, **kwargs)[0]


def rel_err(out, ref):
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    return float((out.double().cpu() - ref).norm() / ref.norm().clamp(min=1e-30))


def make_inputs(B, T, V, H, seed, dtype=torch.float32, scale=1.0, with_bias=False,
                mask_frac=0.3):
    """Random non-zero hidden states (val = base + noise), weight (V, H), bias, labels with
    a fraction ignored; sample 0 fully ignored when B > 1."""
    gen = torch.Generator().manual_seed(seed)
    hb = torch.randn(B, T, H, generator=gen) * scale
    hv = hb + 0.5 * scale * torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / H**0.5
    bias = torch.randn(V, generator=gen) if with_bias else None
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand(B, T, generator=gen) < mask_frac] = IGNORE
    if B > 1:
        labels[0] = IGNORE
    move = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return (move(hb.to(dtype)), move(hv.to(dtype)), move(weight.to(dtype)),
            move(None if bias is None else bias.to(dtype)), move(labels))


@pytest.mark.parametrize("shape", [(1, 1, 7, 16), (2, 5, 300, 48), (3, 7, 603, 40),
                                   (2, 9, 130, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(shape, with_bias):
    """Several shapes (V below one tile, V not a multiple of any tile, H not a multiple of
    BLOCK_K), every transform, mean and per-token; ignored positions and samples exactly 0."""
    B, T, V, H = shape
    hb, hv, w, bias, labels = make_inputs(B, T, V, H, seed=V + H, with_bias=with_bias)
    for transform in TRANSFORMS:
        ref = reference(hb, hv, w, labels, bias, transform)
        none = paired_linear_logprob_delta(hb, hv, w, labels, bias=bias, transform=transform,
                                           reduction="none", backend="triton")
        assert none.shape == (B, T)
        assert rel_err(none, ref) <= 1e-5, transform
        assert (none[labels == IGNORE] == 0).all()
        mean = paired_linear_logprob_delta(hb, hv, w, labels, bias=bias, transform=transform,
                                           backend="triton")
        keep = (labels != IGNORE).cpu()
        ref_mean = ref.sum(1) / keep.sum(1).clamp(min=1)
        assert mean.shape == (B,)
        assert rel_err(mean, ref_mean) <= 1e-5, transform
        if B > 1:
            assert mean[0].item() == 0.0


@pytest.mark.parametrize("config", [None, ODD_TILE, *MEASURED_TILES, CUBLAS_CHUNKED],
                         ids=lambda c: getattr(c, "name", str(c)))
def test_label_at_every_vocabulary_position(config):
    """One token per vocabulary column: labels at the first and last column of every tile
    and at the last column of V (V = 3 * 32 + 5 is not a multiple of any tile width)."""
    V, H = 101, 24
    hb, hv, w, bias, _ = make_inputs(1, V, V, H, seed=4, with_bias=True)
    labels = torch.arange(V, device=DEVICE)[None, :]
    out = single_target_tokens(hb, hv, w, bias, labels, 0, IGNORE, config=config)
    ref = reference(hb, hv, w, labels, bias)
    assert rel_err(out, ref) <= 1e-5
    # every single position, not only the norm
    assert torch.allclose(out.double().cpu(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [None, CUBLAS_CHUNKED], ids=str)
def test_huge_hidden_states(config):
    """Hidden states of magnitude 1e4 (logits up to ~1e5): finite and accurate relative to
    the delta, every transform."""
    B, T, V, H = 2, 6, 257, 32
    hb, hv, w, _, labels = make_inputs(B, T, V, H, seed=6, scale=1e4, mask_frac=0.0)
    assert hb.abs().max() > 1e4
    for transform in TRANSFORMS:
        out = single_target_tokens(hb, hv, w, None, labels, CODES[transform], IGNORE,
                                          config=config)
        assert rel_err(out, reference(hb, hv, w, labels, None, transform)) <= 1e-5, transform


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_half_precision(dtype, with_bias):
    """Half-precision hidden states, weight and bias; float32 arithmetic: equal to float64
    on the same rounded values."""
    hb, hv, w, bias, labels = make_inputs(2, 6, 333, 40, seed=11, dtype=dtype,
                                          with_bias=with_bias)
    out = paired_linear_logprob_delta(hb, hv, w, labels, bias=bias, reduction="none",
                                      backend="triton")
    assert rel_err(out, reference(hb, hv, w, labels, bias)) <= 1e-5


def test_mixed_dtypes_round_hidden_states_to_weight_dtype():
    """fp16 hidden states with a bf16 head: the hidden states are rounded to bf16 (the
    weight is left as it is), bitwise the same as casting them first."""
    hb, hv, w, _, labels = make_inputs(2, 5, 300, 32, seed=12, dtype=torch.float16)
    w = w.to(torch.bfloat16)
    out = paired_linear_logprob_delta(hb, hv, w, labels, reduction="none", backend="triton")
    cast = paired_linear_logprob_delta(hb.to(torch.bfloat16), hv.to(torch.bfloat16), w,
                                       labels, reduction="none", backend="triton")
    assert torch.equal(out, cast)
    ref = reference(hb.to(torch.bfloat16), hv.to(torch.bfloat16), w, labels)
    assert rel_err(out, ref) <= 1e-5


def test_strided_and_shared_buffer_inputs():
    """Hidden states as the two halves of one (2B, T + 1, H) forward output without its last
    position (as the scorer passes them: not viewable as (N, H)), as column slices of a wider
    buffer, int32 labels and a column-major (tied) weight: all equal to the reference."""
    B, T, V, H = 3, 5, 200, 32
    hb, hv, w, _, labels = make_inputs(B, T, V, H, seed=13)
    ref = reference(hb, hv, w, labels)
    both = torch.cat([torch.cat([hb, hv]), torch.randn(2 * B, 1, H).to(DEVICE)], dim=1)
    hidden = both[:, :-1]
    assert hidden[:B].stride() == ((T + 1) * H, H, 1)
    for config in (None, ODD_TILE, CUBLAS_CHUNKED):
        out = single_target_tokens(hidden[:B], hidden[B:], w, None, labels.int(), 0,
                                          IGNORE, config=config)
        assert rel_err(out, ref) <= 1e-5
    wide = torch.zeros(2, B, T, H + 8, device=DEVICE)
    wide[0, ..., 3:3 + H], wide[1, ..., 3:3 + H] = hb, hv
    column_major = w.T.contiguous().T
    assert column_major.stride() == (1, V)
    out = paired_linear_logprob_delta(wide[0, ..., 3:3 + H], wide[1, ..., 3:3 + H],
                                      column_major, labels, reduction="none", backend="triton")
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("config", [None, ODD_TILE, CUBLAS_CHUNKED],
                         ids=lambda c: getattr(c, "name", str(c)))
def test_bitwise_repeatable_and_batch_invariant(config):
    """Repeated calls are bitwise equal; the same samples scored inside a larger batch, at
    other positions (so other rows of other tiles, a different grid), give bitwise the same
    per-token values on the GPU (tile configs; the cuBLAS path is only required to repeat).
    Under the interpreter tl.dot is numpy's matmul, whose OpenBLAS kernels on some CPUs
    (Haswell/Zen) round a row differently by its position in the tile, so there the moved
    samples are held to float32 rounding instead."""
    B, T, V, H = 4, 7, 500, 48
    hb, hv, w, bias, labels = make_inputs(B, T, V, H, seed=9, with_bias=True, mask_frac=0.2)
    small = [single_target_tokens(hb[1:3], hv[1:3], w, bias, labels[1:3], 0, IGNORE,
                                         config=config) for _ in range(3)]
    assert all(torch.equal(small[0], r) for r in small[1:])
    assert rel_err(small[0], reference(hb[1:3], hv[1:3], w, labels[1:3], bias)) <= 1e-5
    if config == CUBLAS_CHUNKED:
        return
    order = [3, 1, 2, 0, 3]  # samples 1 and 2 move to rows 7..20 of a 35-row batch
    large = single_target_tokens(hb[order], hv[order], w, bias, labels[order], 0,
                                        IGNORE, config=config)
    if DEVICE == "cuda":
        assert torch.equal(large[1:3], small[0])
    else:
        assert torch.allclose(large[1:3], small[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cublas_chunked_path(monkeypatch, dtype, with_bias):
    """The cuBLAS-chunked fallback (torch.mm into a bounded float32 buffer) with a budget
    forcing several chunks, the last one partial: equal to the reference."""
    monkeypatch.setattr(lld, "CUBLAS_CHUNK_ELEMENTS", 2000)
    monkeypatch.setattr(lld, "CUBLAS_CHUNK_ALIGN", 16)
    B, T, V, H = 2, 11, 301, 40  # 2 x 22 rows -> chunks of 32 columns, the last 13 wide
    hb, hv, w, bias, labels = make_inputs(B, T, V, H, seed=14, dtype=dtype,
                                          with_bias=with_bias)
    shapes = []
    partials = lld._cublas_chunked_partials

    def spy(*args):
        result = partials(*args)
        shapes.append(result[0].shape)
        return result

    monkeypatch.setattr(lld, "_cublas_chunked_partials", spy)
    for transform in TRANSFORMS:
        out = single_target_tokens(hb, hv, w, bias, labels, CODES[transform], IGNORE,
                                          config=CUBLAS_CHUNKED)
        assert rel_err(out, reference(hb, hv, w, labels, bias, transform)) <= 1e-5
    assert shapes[0] == (2 * B * T, 10)


def test_config_table_covers_every_bucket():
    """Every (H, V, tokens) bucket has an entry; lookups land in the right bucket; off CUDA
    the interpreter's small tiles are used."""
    keys = {(h, v, n) for h in lld.HIDDEN_BUCKETS for v in lld.VOCAB_BUCKETS
            for n in lld.TOKEN_BUCKETS}
    assert set(lld.CONFIG_TABLE) == keys
    for config in lld.CONFIG_TABLE.values():
        assert config == CUBLAS_CHUNKED or isinstance(config, TileConfig)
    cuda = torch.device("cuda")
    assert lld.config_for(576, 49152, 1024, cuda) == lld.CONFIG_TABLE[(1024, 65536, 2048)]
    assert lld.config_for(4096, 128256, 8192, cuda) == lld.CONFIG_TABLE[(4096, None, None)]
    assert lld.config_for(1025, 65536, 2049, cuda) == lld.CONFIG_TABLE[(4096, 65536, None)]
    assert lld.config_for(8192, 32000, 10, cuda) == lld.CONFIG_TABLE[(None, 65536, 2048)]
    assert lld.config_for(576, 49152, 1024, torch.device("cpu")) == INTERPRETER_CONFIG


def test_benchmark_variants_each_config():
    """benchmark_variants: one callable per candidate, table config and the cuBLAS path, by
    name, each giving the reference."""
    hb, hv, w, _, labels = make_inputs(2, 5, 300, 32, seed=15)
    variants = lld.benchmark_variants(hb, hv, w, labels)
    configs = {*lld.CANDIDATES, *lld.table_configs(), CUBLAS_CHUNKED}
    assert set(variants) == {getattr(c, "name", c) for c in configs}
    assert len(variants) == len(configs)
    ref = reference(hb, hv, w, labels)
    for name, run in variants.items():
        assert rel_err(run(), ref) <= 1e-5, name


def test_offsets_past_32_bits_copy_the_operand():
    """A hidden-state tensor whose in-tile offsets would overflow 32 bits is flagged (the
    launcher then copies it to a contiguous tensor)."""
    ok = torch.empty_strided((4, 8, 64), (8 * 64, 64, 1), device="meta")
    assert lld._fits_int32(ok, 128, 64)
    huge = torch.empty_strided((4, 8, 64), (2**30, 64, 1), device="meta")
    assert lld._fits_int32(huge, 8, 64)  # 8 rows touch at most 2 samples: 2**30 + ...
    assert not lld._fits_int32(huge, 16, 64)  # 16 rows may touch 3: 2**31 + ...


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_of_range_labels_are_flagged(backend):
    """With label_errors: out-of-range labels are counted per sample and left unscored
    (like ignore_index), nothing raises until raise_label_errors; without it, ValueError."""
    import tov_kernels

    hb, hv, w, _, labels = make_inputs(3, 5, 70, 32, seed=31, mask_frac=0.0)
    labels[0] = torch.randint(0, 70, (5,))
    labels[0, 1], labels[0, 3], labels[2, 4] = 70, -1, 10**6
    good = labels.masked_fill((labels < 0) | (labels >= 70), IGNORE)
    ref = reference(hb, hv, w, good)
    errors = torch.full((3,), -7, dtype=torch.int32, device=DEVICE)
    out = paired_linear_logprob_delta(hb, hv, w, labels, reduction="none", backend=backend,
                                      label_errors=errors)
    assert rel_err(out, ref) < 1e-5 and errors.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"sample\(s\) \[0, 2\] hold 3 value"):
        tov_kernels.raise_label_errors(errors)
    with pytest.raises(ValueError, match=r"labels holds 70, outside \[0, 70\)"):
        paired_linear_logprob_delta(hb, hv, w, labels, backend=backend)
    paired_linear_logprob_delta(hb, hv, w, good, backend=backend, label_errors=errors)
    assert errors.tolist() == [0, 0, 0]
