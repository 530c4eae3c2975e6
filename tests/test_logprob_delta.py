"""The logits kernel (`tov_kernels/logprob_delta.py`) against a float64 log_softmax reference:
the (row, vocabulary chunk) grid, tiles, strides, dtypes and the lazy label-range check.

Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py) and compiled on a CUDA machine
(benchmarks/gpu_check.sh sets TRITON_INTERPRET=0).
"""

import os

import pytest
import torch

import tov_kernels
from tov_kernels import _checks, paired_logprob_delta
from tov_kernels.logprob_delta import chunk_layout, logprob_delta_tokens

IGNORE = -100
DEVICE = "cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] == "0" else "cpu"
TRANSFORMS = {0: lambda d: d, 1: torch.abs, 2: lambda d: d.clamp(min=0)}


def reference(logits_base, logits_val, labels, code=0):
    """float64 per-token F(log_softmax(val)[y] - log_softmax(base)[y]) (0 where not scored)
    and the per-sample mean over scored positions; labels outside [0, V) are not scored."""
    V = logits_base.shape[-1]
    lp_b = torch.log_softmax(logits_base.double().cpu(), dim=-1)
    lp_v = torch.log_softmax(logits_val.double().cpu(), dim=-1)
    labels = labels.cpu()
    keep = (labels >= 0) & (labels < V)
    y = torch.where(keep, labels, 0).unsqueeze(-1)
    delta = (lp_v.gather(-1, y) - lp_b.gather(-1, y)).squeeze(-1)
    per_token = torch.where(keep, TRANSFORMS[code](delta), 0.0)
    return per_token, per_token.sum(1) / keep.sum(1).clamp(min=1)


def assert_close(out, ref, tol=1e-5):
    assert out.dtype == torch.float32
    out = out.cpu().double()
    assert torch.isfinite(out).all()
    err = float((out - ref).norm() / ref.norm().clamp(min=1e-30))
    assert err <= tol, err


def random_case(B, T, V, seed, dtype=torch.float32, mask_frac=0.3):
    gen = torch.Generator().manual_seed(seed)
    lb = torch.randn(B, T, V, generator=gen) * 3
    lv = lb + torch.randn(B, T, V, generator=gen)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand(B, T, generator=gen) < mask_frac] = IGNORE
    return lb.to(dtype).to(DEVICE), lv.to(dtype).to(DEVICE), labels.to(DEVICE)


def run(lb, lv, labels, code=0, **kwargs):
    return logprob_delta_tokens(lb, lv, labels, code, IGNORE, **kwargs)


# (B, T, V, tile_rows): float32 tiles hold tile_rows * 4 logits, so V=300 with 8 rows is 10
# tiles (the last one partial), V=5003 with the default tile is 3 tiles.
SHAPES = [(1, 1, 7, 2), (2, 5, 300, 8), (3, 4, 5003, 512), (2, 3, 129, 4), (4, 2, 64, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("code", list(TRANSFORMS))
def test_matches_reference(shape, code):
    B, T, V, tile_rows = shape
    lb, lv, labels = random_case(B, T, V, seed=B * 1000 + T * 10 + V)
    ref_tokens, ref_mean = reference(lb, lv, labels, code)
    for chunks in (None, 1, 3):
        per_token, mean = run(lb, lv, labels, code, chunks=chunks, tile_rows=tile_rows)
        assert per_token.shape == (B, T) and mean.shape == (B,)
        assert_close(per_token, ref_tokens)
        assert_close(mean, ref_mean)
        assert (per_token[labels == IGNORE] == 0).all()


def test_labels_at_every_column():
    """One token per vocabulary column, the last included; V is no multiple of the tile
    (16) nor of the 3 chunks."""
    V = 37
    lb, lv, _ = random_case(1, V, V, seed=1)
    labels = torch.arange(V, device=DEVICE)[None]
    ref_tokens, ref_mean = reference(lb, lv, labels)
    for chunks in (1, 3):
        per_token, mean = run(lb, lv, labels, chunks=chunks, tile_rows=4)
        assert_close(per_token, ref_tokens)
        assert_close(mean, ref_mean)


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_leading_all_inf_tiles(chunks):
    """The first tiles (all of chunk 0 with 4 chunks) are -inf, e.g. a masked vocabulary:
    finite and equal to the reference, never NaN."""
    B, T, V = 2, 3, 160
    lb, lv, _ = random_case(B, T, V, seed=8)
    lb[..., :64] = float("-inf")
    lv[..., :64] = float("-inf")
    labels = torch.randint(64, V, (B, T), generator=torch.Generator().manual_seed(8))
    labels[0, 0] = IGNORE
    labels = labels.to(DEVICE)
    for code in TRANSFORMS:
        ref_tokens, ref_mean = reference(lb, lv, labels, code)
        per_token, mean = run(lb, lv, labels, code, chunks=chunks, tile_rows=8)
        assert_close(per_token, ref_tokens)
        assert_close(mean, ref_mean)


def test_ignored_rows_read_nothing():
    """NaN logits on ignored rows do not reach any result; a fully ignored sample is 0."""
    B, T, V = 3, 4, 200
    lb, lv, labels = random_case(B, T, V, seed=4)
    labels[1] = IGNORE
    labels[2, 0] = IGNORE
    lb[labels == IGNORE] = float("nan")
    lv[labels == IGNORE] = float("nan")
    ref_tokens, ref_mean = reference(lb.nan_to_num(), lv.nan_to_num(), labels)
    for chunks in (None, 1):
        per_token, mean = run(lb, lv, labels, chunks=chunks, tile_rows=8)
        assert_close(per_token, ref_tokens)
        assert_close(mean, ref_mean)
        assert mean[1].item() == 0.0
        assert (per_token[labels == IGNORE] == 0).all()


def test_strided_inputs():
    """A unit last stride with padded rows (vector path) and a transposed layout whose last
    stride is T (scalar path) both give the reference."""
    B, T, V = 2, 5, 150
    lb, lv, labels = random_case(B, T, V, seed=5)
    ref_tokens, ref_mean = reference(lb, lv, labels)
    padded_b = torch.zeros(B, T, V + 3, device=DEVICE)
    padded_b[..., :V] = lb
    transposed_v = lv.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, V), stride (.., 1, T)
    assert transposed_v.stride(2) == T and not padded_b[..., :V].is_contiguous()
    for base, val in ((padded_b[..., :V], lv), (lb, transposed_v),
                      (padded_b[..., :V], transposed_v)):
        for chunks in (None, 1):
            per_token, mean = run(base, val, labels, chunks=chunks, tile_rows=8)
            assert_close(per_token, ref_tokens)
            assert_close(mean, ref_mean)
    strided_labels = torch.stack([labels, labels], dim=2)[..., 0]  # stride (2T, 2)
    per_token, _ = run(lb, lv, strided_labels, tile_rows=8)
    assert_close(per_token, ref_tokens)


def test_chunk_grid_and_row_grid_are_deterministic():
    """Repeated calls are bit-identical on the (row, chunk) grid and on one program per row;
    the two agree within float32 rounding."""
    lb, lv, labels = random_case(3, 6, 700, seed=9)
    per_row = [run(lb, lv, labels, chunks=1, tile_rows=8) for _ in range(3)]
    per_chunk = [run(lb, lv, labels, tile_rows=8) for _ in range(3)]
    assert chunk_layout(18, 700, 32)[0] > 1
    for runs in (per_row, per_chunk):
        for tokens, mean in runs[1:]:
            assert torch.equal(tokens, runs[0][0]) and torch.equal(mean, runs[0][1])
    assert torch.allclose(per_row[0][0], per_chunk[0][0], rtol=1e-6, atol=1e-6)
    assert_close(per_chunk[0][1], reference(lb, lv, labels)[1])


def test_chunk_layout_depends_on_shape_only():
    for rows in (1, 7, 1024, 8192, 100_000):
        for vocab in (7, 300, 49152, 128256):
            for tile in (32, 4096):
                n_chunks, per_chunk = chunk_layout(rows, vocab, tile)
                n_tiles = -(-vocab // tile)
                assert 1 <= n_chunks <= n_tiles
                assert (n_chunks - 1) * per_chunk < n_tiles <= n_chunks * per_chunk  # none empty
    assert chunk_layout(8192, 49152, 4096) == (1, 12)  # many rows: one program per row
    assert chunk_layout(1024, 49152, 4096) == (1, 12)
    assert chunk_layout(100, 49152, 4096) == (6, 2)
    assert chunk_layout(2, 128256, 4096) == (16, 2)  # at least 2 tiles per chunk
    assert chunk_layout(2, 300, 32, chunks=10_000) == (10, 1)  # forced, clipped to the tiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    """Half-precision inputs get 8-wide vectors, float32 4-wide; arithmetic is float32, so the
    result matches float64 on the same rounded values. Mixed dtypes use the narrower vector."""
    B, T, V = 2, 6, 333
    lb, lv, labels = random_case(B, T, V, seed=11, dtype=dtype)
    ref_tokens, ref_mean = reference(lb, lv, labels)
    for chunks in (None, 1):
        per_token, mean = run(lb, lv, labels, chunks=chunks, tile_rows=8)
        assert_close(per_token, ref_tokens)
        assert_close(mean, ref_mean)
    out = paired_logprob_delta(lb, lv.float(), labels, backend="triton")
    assert_close(out, reference(lb, lv.float(), labels)[1])
    out = paired_logprob_delta(lb, lv, labels.int(), backend="triton")  # int32 labels
    assert_close(out, ref_mean)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_of_range_labels_are_flagged(backend):
    """With label_errors: out-of-range labels are counted per sample and not scored (left out
    of the mean); nothing raises until raise_label_errors. Without it: ValueError at once."""
    B, T, V = 3, 5, 90
    lb, lv, labels = random_case(B, T, V, seed=12)
    labels[0, 1], labels[0, 3], labels[2, 4] = V, -1, 10**6
    ref_tokens, ref_mean = reference(lb, lv, labels)
    errors = torch.full((B,), -7, dtype=torch.int32, device=DEVICE)
    for reduction, ref in (("mean", ref_mean), ("none", ref_tokens)):
        out = paired_logprob_delta(lb, lv, labels, reduction=reduction, backend=backend,
                                   label_errors=errors)
        assert_close(out, ref)
        assert errors.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"sample\(s\) \[0, 2\] hold 3 value"):
        tov_kernels.raise_label_errors(errors)
    with pytest.raises(ValueError, match=rf"labels holds {V}, outside \[0, {V}\)"):
        paired_logprob_delta(lb, lv, labels, backend=backend)
    good = labels.masked_fill(~((labels >= 0) & (labels < V)), IGNORE)
    paired_logprob_delta(lb, lv, good, backend=backend, label_errors=errors)
    assert errors.tolist() == [0, 0, 0]
    tov_kernels.raise_label_errors(errors)  # all zero: no error


def test_label_errors_skips_the_host_check(monkeypatch):
    """Passing label_errors skips the value check that syncs on CUDA (see also the CUDA test
    below, which forbids synchronising operations outright)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("check_labels reads the labels back")

    monkeypatch.setattr(_checks, "check_labels", forbidden)
    lb, lv, labels = random_case(2, 3, 50, seed=13)
    errors = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    out = paired_logprob_delta(lb, lv, labels, backend="triton", label_errors=errors)
    assert_close(out, reference(lb, lv, labels)[1])
    with pytest.raises(AssertionError, match="reads the labels back"):
        paired_logprob_delta(lb, lv, labels, backend="triton")


def test_label_errors_buffer_is_checked():
    lb, lv, labels = random_case(2, 3, 50, seed=14)
    for bad in (torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int32),
                torch.zeros(2, dtype=torch.int32, device="meta")):
        with pytest.raises(ValueError, match=r"label_errors must be an int32 tensor of shape"):
            paired_logprob_delta(lb, lv, labels, label_errors=bad)


def test_empty_inputs():
    lb = torch.randn(0, 4, 10, device=DEVICE)
    per_token, mean = run(lb, lb, torch.zeros(0, 4, dtype=torch.long, device=DEVICE))
    assert per_token.shape == (0, 4) and mean.shape == (0,)
    lb = torch.randn(2, 0, 10, device=DEVICE)
    per_token, mean = run(lb, lb, torch.zeros(2, 0, dtype=torch.long, device=DEVICE))
    assert per_token.shape == (2, 0) and mean.tolist() == [0.0, 0.0]


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA with compiled Triton (gpu_check.sh)")
def test_no_device_to_host_sync_on_cuda():
    lb, lv, labels = random_case(4, 64, 32000, seed=15, dtype=torch.bfloat16)
    errors = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    paired_logprob_delta(lb, lv, labels, label_errors=errors)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = paired_logprob_delta(lb, lv, labels, label_errors=errors)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, reference(lb, lv, labels)[1])
