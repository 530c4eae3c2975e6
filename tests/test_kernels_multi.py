"""The multi-target entry points (K targets against one base, the base's log-sum-exp shared)
against the float64 single-pair reference of tests/test_kernels.py, and against K calls of
the single-target functions.

Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py); with TRITON_INTERPRET=0 on
a CUDA machine the same tests run the compiled kernels.
"""

import pytest
import torch

from tests.test_kernels import BACKENDS, DEVICE, IGNORE, TRANSFORMS, make_labels, reference, rel_err
from tov_kernels import (
    paired_linear_logprob_delta,
    paired_linear_logprob_delta_multi,
    paired_logprob_delta,
    paired_logprob_delta_multi,
)

# (B, T, V): one token, V below one tile, V not a multiple of any tile; H for the fused head
SHAPES = [(1, 1, 7), (2, 5, 300), (3, 4, 1003)]
HIDDEN = 24


def make_targets(B, T, width, K, gen, scale=3.0):
    """Random non-zero base (B, T, width) and K targets (K, B, T, width) near it."""
    base = torch.randn(B, T, width, generator=gen) * scale
    vals = base + torch.randn(K, B, T, width, generator=gen) * scale / 2
    return base.to(DEVICE), vals.to(DEVICE)


def references(base, vals, labels, transform="identity", reduction="mean", weight=None,
               bias=None):
    """float64 (K, B) or (K, B, T): the single-pair reference of each target; with a weight,
    on logits = hidden @ weight.T + bias."""
    def logits(h):
        if weight is None:
            return h.double().cpu()
        x = h.double().cpu() @ weight.double().cpu().T
        return x if bias is None else x + bias.double().cpu()

    return torch.stack([reference(logits(base), logits(v), labels.cpu(), transform, reduction)
                        for v in vals])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [1, 2, 3])
def test_logits_multi_matches_reference(backend, shape, K):
    """Every transform, both reductions, a fully ignored sample and ignored positions; the
    targets as a (K, B, T, V) tensor and as a list."""
    B, T, V = shape
    gen = torch.Generator().manual_seed(K * 1000 + V)
    base, vals = make_targets(B, T, V, K, gen)
    labels = make_labels(B, T, V, gen, masked_rows=[0] if B > 1 else [])
    for transform in TRANSFORMS:
        out = paired_logprob_delta_multi(base, vals, labels, transform=transform,
                                         backend=backend)
        assert out.shape == (K, B)
        assert rel_err(out.cpu(), references(base, vals, labels, transform)) <= 1e-5, transform
    out = paired_logprob_delta_multi(base, list(vals), labels, reduction="none", backend=backend)
    ref = references(base, vals, labels, reduction="none")
    assert out.shape == (K, B, T)
    assert rel_err(out.cpu(), ref) <= 1e-5
    assert torch.all(out.cpu()[:, labels.cpu() == IGNORE] == 0.0)
    if B > 1:
        assert torch.all(out.cpu()[:, 0] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [1, 2, 3])
def test_linear_multi_matches_reference(backend, shape, K):
    """The fused head, with and without bias, every transform, both reductions."""
    B, T, V = shape
    gen = torch.Generator().manual_seed(K * 100 + V)
    base, vals = make_targets(B, T, HIDDEN, K, gen, scale=1.0)
    weight = (torch.randn(V, HIDDEN, generator=gen) / HIDDEN**0.5).to(DEVICE)
    bias = torch.randn(V, generator=gen).to(DEVICE)
    labels = make_labels(B, T, V, gen, masked_rows=[0] if B > 1 else [])
    for b in (None, bias):
        for transform in TRANSFORMS:
            out = paired_linear_logprob_delta_multi(base, vals, weight, labels, bias=b,
                                                    transform=transform, backend=backend)
            ref = references(base, vals, labels, transform, weight=weight, bias=b)
            assert out.shape == (K, B)
            assert rel_err(out.cpu(), ref) <= 1e-5, (transform, b is None)
    out = paired_linear_logprob_delta_multi(base, list(vals), weight, labels,
                                            reduction="none", backend=backend)
    ref = references(base, vals, labels, reduction="none", weight=weight)
    assert out.shape == (K, B, T)
    assert rel_err(out.cpu(), ref) <= 1e-5
    assert torch.all(out.cpu()[:, labels.cpu() == IGNORE] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 3])
def test_multi_equals_single_target_calls(backend, K):
    """Row k equals the single-target call on target k: bitwise on the torch path (the same
    chunks, the base's log-prob reused) and for the fused head's Triton kernels (each row's
    arithmetic does not depend on its neighbours); the logits Triton kernel splits the
    vocabulary by (1 + K) rows per token, so there within float rounding (K = 1 bitwise)."""
    B, T, V = 3, 6, 700
    gen = torch.Generator().manual_seed(31 + K)
    base, vals = make_targets(B, T, V, K, gen)
    labels = make_labels(B, T, V, gen)
    multi = paired_logprob_delta_multi(base, vals, labels, reduction="none", backend=backend)
    single = torch.stack([paired_logprob_delta(base, v, labels, reduction="none",
                                               backend=backend) for v in vals])
    if backend == "torch" or K == 1:
        assert torch.equal(multi, single)
    else:
        assert torch.allclose(multi, single, rtol=0, atol=1e-6)
    hb, hvs = make_targets(B, T, HIDDEN, K, gen, scale=1.0)
    weight = torch.randn(V, HIDDEN, generator=gen).to(DEVICE) / HIDDEN**0.5
    multi = paired_linear_logprob_delta_multi(hb, hvs, weight, labels, reduction="none",
                                              backend=backend)
    single = torch.stack([paired_linear_logprob_delta(hb, hv, weight, labels,
                                                      reduction="none", backend=backend)
                          for hv in hvs])
    if backend == "torch" and K > 1:  # one matmul of (1 + K) C rows instead of K of 2C rows
        assert torch.allclose(multi, single, rtol=0, atol=1e-6)
    else:
        assert torch.equal(multi, single)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_of_one_forward_are_read_in_place(backend):
    """The scorer's layout: one ((1 + K) B, T + 1, width) output without its last position,
    the targets as `[B:].unflatten(0, (K, B))` (a strided view), int32 labels."""
    B, T, V, K = 2, 5, 260, 3
    gen = torch.Generator().manual_seed(41)
    out = torch.randn((1 + K) * B, T + 1, V, generator=gen).to(DEVICE) * 3
    logits = out[:, :-1]
    vals = logits[B:].unflatten(0, (K, B))
    assert not vals.is_contiguous()
    labels = make_labels(B, T, V, gen)
    ref = references(logits[:B], vals, labels)
    got = paired_logprob_delta_multi(logits[:B], vals, labels.int(), backend=backend)
    assert rel_err(got.cpu(), ref) <= 1e-5
    hidden = torch.randn((1 + K) * B, T + 1, HIDDEN, generator=gen).to(DEVICE)[:, :-1]
    weight = torch.randn(V, HIDDEN, generator=gen).to(DEVICE) / HIDDEN**0.5
    vals = hidden[B:].unflatten(0, (K, B))
    got = paired_linear_logprob_delta_multi(hidden[:B], vals, weight, labels.int(),
                                            backend=backend)
    assert rel_err(got.cpu(), references(hidden[:B], vals, labels, weight=weight)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multi_half_precision(backend, dtype):
    """Low-precision inputs, float32 arithmetic, compared in float64 on the rounded values."""
    B, T, V, K = 2, 4, 333, 2
    gen = torch.Generator().manual_seed(51)
    base, vals = make_targets(B, T, V, K, gen)
    base, vals = base.to(dtype), vals.to(dtype)
    labels = make_labels(B, T, V, gen)
    out = paired_logprob_delta_multi(base, vals, labels, backend=backend)
    assert rel_err(out.cpu(), references(base, vals, labels)) <= 1e-5
    hb, hvs = make_targets(B, T, HIDDEN, K, gen, scale=1.0)
    weight = (torch.randn(V, HIDDEN, generator=gen) / 4).to(dtype).to(DEVICE)
    hb, hvs = hb.to(dtype), hvs.to(dtype)
    out = paired_linear_logprob_delta_multi(hb, hvs, weight, labels, backend=backend)
    assert rel_err(out.cpu(), references(hb, hvs, labels, weight=weight)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_label_errors(backend):
    """Out-of-range labels: ValueError without a buffer; with one, not scored (like
    ignore_index) in every target, counted per sample."""
    B, T, V, K = 2, 4, 50, 2
    gen = torch.Generator().manual_seed(61)
    base, vals = make_targets(B, T, V, K, gen)
    bad = make_labels(B, T, V, gen, mask_frac=0.0)
    bad[1, 2], bad[1, 0] = V, -3
    with pytest.raises(ValueError, match="outside"):
        paired_logprob_delta_multi(base, vals, bad, backend=backend)
    clean = bad.masked_fill((bad < 0) | (bad >= V), IGNORE)
    errors = torch.full((B,), 7, dtype=torch.int32, device=DEVICE)
    out = paired_logprob_delta_multi(base, vals, bad, backend=backend, label_errors=errors)
    assert errors.cpu().tolist() == [0, 2]
    assert rel_err(out.cpu(), references(base, vals, clean)) <= 1e-5
    weight = torch.randn(V, HIDDEN, generator=gen).to(DEVICE)
    hb, hvs = make_targets(B, T, HIDDEN, K, gen, scale=0.3)
    errors.fill_(7)
    out = paired_linear_logprob_delta_multi(hb, hvs, weight, bad, backend=backend,
                                            label_errors=errors)
    assert errors.cpu().tolist() == [0, 2]
    assert rel_err(out.cpu(), references(hb, hvs, clean, weight=weight)) <= 1e-5


class TestMultiBadInput:
    def setup_method(self):
        self.base = torch.randn(2, 3, 10)
        self.labels = torch.zeros(2, 3, dtype=torch.long)

    def test_no_targets(self):
        with pytest.raises(ValueError, match="no targets"):
            paired_logprob_delta_multi(self.base, [], self.labels)
        with pytest.raises(ValueError, match="no targets"):
            paired_logprob_delta_multi(self.base, torch.randn(0, 2, 3, 10), self.labels)

    def test_shape_and_dtype(self):
        with pytest.raises(ValueError, match=r"logits_vals\[1\]"):
            paired_logprob_delta_multi(self.base, [self.base, torch.randn(2, 3, 11)],
                                       self.labels)
        with pytest.raises(ValueError, match="logits_vals"):
            paired_logprob_delta_multi(self.base, self.base, self.labels)  # no K axis
        with pytest.raises(ValueError, match=r"logits_vals\[k\]"):
            paired_logprob_delta_multi(self.base, torch.randn(2, 2, 3, 9), self.labels)
        with pytest.raises(TypeError, match="float32"):
            paired_logprob_delta_multi(self.base, [self.base.double()], self.labels)
        with pytest.raises(ValueError, match=r"weight"):
            paired_linear_logprob_delta_multi(self.base, self.base[None], torch.randn(5, 9),
                                              self.labels)
