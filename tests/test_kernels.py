"""tov_kernels against an independent float64 reference (two log_softmax + gather + mask).

Triton runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py); with TRITON_INTERPRET=0 on
a CUDA machine (benchmarks/gpu_check.sh) the same tests run the compiled kernels.
"""

import os

import pytest
import torch

from tests.reference import TRANSFORMS
from tov_kernels import paired_linear_logprob_delta, paired_logprob_delta, torch_path

IGNORE = -100
DEVICE = "cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] == "0" else "cpu"
BACKENDS = ["torch", "triton"]


def reference(logits_base, logits_val, labels, transform="identity", reduction="mean"):
    """float64: F(log_softmax(val)[y] - log_softmax(base)[y]), masked mean over positions."""
    lp_b = torch.log_softmax(logits_base.double(), dim=-1)
    lp_v = torch.log_softmax(logits_val.double(), dim=-1)
    keep = labels != IGNORE
    y = torch.where(keep, labels, 0).unsqueeze(-1)
    delta = (lp_v.gather(-1, y) - lp_b.gather(-1, y)).squeeze(-1)
    per_token = torch.where(keep, TRANSFORMS[transform](delta), 0.0)
    if reduction == "none":
        return per_token
    return per_token.sum(1) / keep.sum(1).clamp(min=1)


def rel_err(out, ref):
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    return float((out.double() - ref).norm() / ref.norm().clamp(min=1e-30))


def make_labels(B, T, V, gen, masked_rows=(), mask_frac=0.3):
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand(B, T, generator=gen) < mask_frac] = IGNORE
    for r in masked_rows:
        labels[r] = IGNORE
    return labels.to(DEVICE)


SHAPES = [(1, 1, 7), (2, 5, 300), (3, 4, 5003), (2, 3, 129)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_logits_matches_reference(backend, shape, transform):
    B, T, V = shape
    gen = torch.Generator().manual_seed(B * 1000 + T * 10 + V)
    lb = (torch.randn(B, T, V, generator=gen) * 3).to(DEVICE)
    lv = (lb.cpu() + torch.randn(B, T, V, generator=gen)).to(DEVICE)
    labels = make_labels(B, T, V, gen, masked_rows=(0,) if B > 1 else ())
    ref = reference(lb, lv, labels, transform)
    out = paired_logprob_delta(lb, lv, labels, transform=transform, backend=backend)
    assert out.shape == (B,)
    assert rel_err(out, ref) <= 1e-5
    if B > 1:
        assert out[0].item() == 0.0  # fully masked row: exactly zero, never NaN
    none = paired_logprob_delta(lb, lv, labels, transform=transform, reduction="none",
                                backend=backend)
    assert none.shape == (B, T)
    assert rel_err(none, reference(lb, lv, labels, transform, "none")) <= 1e-5
    assert (none[labels == IGNORE] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 7, 16), (2, 5, 300, 48), (2, 3, 1000, 100)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_reference(backend, shape, with_bias):
    B, T, V, H = shape
    gen = torch.Generator().manual_seed(V + H)
    hb = torch.randn(B, T, H, generator=gen).to(DEVICE)
    hv = (hb.cpu() + 0.5 * torch.randn(B, T, H, generator=gen)).to(DEVICE)
    weight = (torch.randn(V, H, generator=gen) / H**0.5).to(DEVICE)
    bias = torch.randn(V, generator=gen).to(DEVICE) if with_bias else None
    labels = make_labels(B, T, V, gen)
    logits_b, logits_v = hb.double() @ weight.double().T, hv.double() @ weight.double().T
    if with_bias:
        logits_b, logits_v = logits_b + bias.double(), logits_v + bias.double()
    for transform in TRANSFORMS:
        ref = reference(logits_b, logits_v, labels, transform)
        out = paired_linear_logprob_delta(hb, hv, weight, labels, bias=bias, transform=transform,
                                          backend=backend)
        assert rel_err(out, ref) <= 1e-5, transform


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_embeddings(backend):
    """A tied output projection is the embedding matrix itself: a non-contiguous view works."""
    gen = torch.Generator().manual_seed(3)
    B, T, V, H = 2, 4, 200, 32
    embedding = torch.nn.Embedding(V, H).to(DEVICE)
    hb = torch.randn(B, T, H, generator=gen).to(DEVICE)
    hv = torch.randn(B, T, H, generator=gen).to(DEVICE)
    labels = make_labels(B, T, V, gen)
    w = embedding.weight.detach()
    ref = reference(hb @ w.T, hv @ w.T, labels)
    out = paired_linear_logprob_delta(hb, hv, embedding.weight, labels, backend=backend)
    assert rel_err(out, ref) <= 1e-5
    strided = torch.randn(H, V, generator=gen).to(DEVICE).T  # (V, H), column-major
    ref = reference(hb @ strided.T, hv @ strided.T, labels)
    out = paired_linear_logprob_delta(hb, hv, strided, labels, backend=backend)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    """Low-precision inputs, float32 arithmetic: compare with float64 on the same rounded values."""
    gen = torch.Generator().manual_seed(11)
    B, T, V, H = 2, 6, 333, 40
    lb = (torch.randn(B, T, V, generator=gen) * 4).to(dtype).to(DEVICE)
    lv = (torch.randn(B, T, V, generator=gen) * 4).to(dtype).to(DEVICE)
    labels = make_labels(B, T, V, gen)
    out = paired_logprob_delta(lb, lv, labels, backend=backend)
    assert rel_err(out, reference(lb, lv, labels)) <= 1e-5
    hb = torch.randn(B, T, H, generator=gen).to(dtype).to(DEVICE)
    hv = torch.randn(B, T, H, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(V, H, generator=gen) / 4).to(dtype).to(DEVICE)
    ref = reference(hb.double() @ weight.double().T, hv.double() @ weight.double().T, labels)
    out = paired_linear_logprob_delta(hb, hv, weight, labels, backend=backend)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_stay_finite(backend):
    gen = torch.Generator().manual_seed(5)
    B, T, V = 2, 3, 257
    lb = (torch.randn(B, T, V, generator=gen) * 1e4).to(DEVICE)
    lv = (torch.randn(B, T, V, generator=gen) * 1e4).to(DEVICE)
    labels = make_labels(B, T, V, gen, mask_frac=0.0)
    for transform in TRANSFORMS:
        out = paired_logprob_delta(lb, lv, labels, transform=transform, backend=backend)
        assert rel_err(out, reference(lb, lv, labels, transform)) <= 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_huge_logits_stay_finite(backend):
    """Hidden states and weights whose logits reach +-1e4 (fused linear path)."""
    gen = torch.Generator().manual_seed(6)
    B, T, V, H = 2, 3, 257, 16
    hb = torch.randn(B, T, H, generator=gen).to(DEVICE)
    hv = torch.randn(B, T, H, generator=gen).to(DEVICE)
    weight = (torch.randn(V, H, generator=gen) * 1e4 / H**0.5).to(DEVICE)
    labels = make_labels(B, T, V, gen, mask_frac=0.0)
    logits_b, logits_v = hb.double() @ weight.double().T, hv.double() @ weight.double().T
    assert logits_b.abs().max() > 1e4
    for transform in TRANSFORMS:
        out = paired_linear_logprob_delta(hb, hv, weight, labels, transform=transform,
                                          backend=backend)
        assert rel_err(out, reference(logits_b, logits_v, labels, transform)) <= 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_first_vocabulary_block(backend):
    """Rows whose first vocabulary block (4096 columns) is all -inf, e.g. a masked vocabulary:
    finite and equal to the reference (a running max starting at -inf gave NaN)."""
    gen = torch.Generator().manual_seed(8)
    B, T, V = 2, 3, 5003
    lb = torch.randn(B, T, V, generator=gen) * 3
    lv = lb + torch.randn(B, T, V, generator=gen)
    lb[..., :4096] = float("-inf")
    lv[..., :4096] = float("-inf")
    labels = torch.randint(4096, V, (B, T), generator=gen)
    labels[0, 0] = IGNORE
    lb, lv, labels = lb.to(DEVICE), lv.to(DEVICE), labels.to(DEVICE)
    for transform in TRANSFORMS:
        out = paired_logprob_delta(lb, lv, labels, transform=transform, backend=backend)
        assert rel_err(out, reference(lb, lv, labels, transform)) <= 1e-5, transform


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_bitwise(backend):
    gen = torch.Generator().manual_seed(9)
    B, T, V, H = 3, 7, 500, 64
    hb = torch.randn(B, T, H, generator=gen).to(DEVICE)
    hv = torch.randn(B, T, H, generator=gen).to(DEVICE)
    weight = torch.randn(V, H, generator=gen).to(DEVICE)
    labels = make_labels(B, T, V, gen)
    runs = [paired_linear_logprob_delta(hb, hv, weight, labels, reduction="none",
                                        backend=backend) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    lb, lv = hb @ weight.T, hv @ weight.T
    runs = [paired_logprob_delta(lb, lv, labels, backend=backend) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_backends_and_apis_agree():
    gen = torch.Generator().manual_seed(21)
    B, T, V, H = 2, 5, 600, 24
    hb = torch.randn(B, T, H, generator=gen).to(DEVICE)
    hv = torch.randn(B, T, H, generator=gen).to(DEVICE)
    weight = torch.randn(V, H, generator=gen).to(DEVICE)
    labels = make_labels(B, T, V, gen)
    outs = [paired_linear_logprob_delta(hb, hv, weight, labels, backend=b) for b in BACKENDS]
    outs += [paired_logprob_delta(hb @ weight.T, hv @ weight.T, labels, backend=b)
             for b in BACKENDS]
    for o in outs[1:]:
        assert rel_err(o, outs[0].double()) <= 1e-5


def test_torch_path_chunks_tokens_and_vocabulary(monkeypatch):
    """A tiny element budget forces many token chunks and vocabulary tiles (logaddexp merge)."""
    monkeypatch.setattr(torch_path, "CHUNK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(13)
    B, T, V, H = 3, 9, 1001, 16
    lb = torch.randn(B, T, V, generator=gen) * 5
    lv = torch.randn(B, T, V, generator=gen) * 5
    labels = make_labels(B, T, V, gen).cpu()
    out = paired_logprob_delta(lb, lv, labels, backend="torch")
    assert rel_err(out, reference(lb, lv, labels)) <= 1e-5
    hb, hv = torch.randn(B, T, H, generator=gen), torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    out = paired_linear_logprob_delta(hb, hv, weight, labels, backend="torch")
    assert rel_err(out, reference(hb @ weight.T, hv @ weight.T, labels)) <= 1e-5


@pytest.mark.parametrize("V", [1001, 40])
def test_torch_path_chunks_half_precision(monkeypatch, V):
    """bf16 inputs through the reused float32 buffers, with vocabulary tiles (V 1001: the
    last tile 1 wide) and without (V 40 within one tile), on chunks of 8 rows."""
    monkeypatch.setattr(torch_path, "CHUNK_ELEMENTS", 64 if V > 64 else 8 * V)
    gen = torch.Generator().manual_seed(17)
    B, T, H = 3, 9, 16
    lb = (torch.randn(B, T, V, generator=gen) * 5).bfloat16()
    lv = (torch.randn(B, T, V, generator=gen) * 5).bfloat16()
    labels = make_labels(B, T, V, gen).cpu()
    out = paired_logprob_delta(lb, lv, labels, backend="torch")
    assert rel_err(out, reference(lb.double(), lv.double(), labels)) <= 1e-5
    hb, hv = torch.randn(B, T, H, generator=gen), torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen).bfloat16()
    w = weight.double()
    out = paired_linear_logprob_delta(hb, hv, weight, labels, backend="torch")
    assert rel_err(out, reference(hb.double() @ w.T, hv.double() @ w.T, labels)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_all_masked(backend):
    lb = torch.randn(0, 4, 10, device=DEVICE)
    empty = torch.zeros(0, 4, dtype=torch.long, device=DEVICE)
    assert paired_logprob_delta(lb, lb, empty, backend=backend).shape == (0,)
    lb = torch.randn(2, 3, 10, device=DEVICE)
    labels = torch.full((2, 3), IGNORE, device=DEVICE)
    out = paired_logprob_delta(lb, lb + 1, labels, backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(2))
    out = paired_linear_logprob_delta(lb, lb, torch.randn(7, 10, device=DEVICE), labels,
                                      backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(2))


class TestBadInput:
    def setup_method(self):
        self.lb = torch.randn(2, 3, 10)
        self.labels = torch.randint(0, 10, (2, 3))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"logits_base has shape \(2, 3, 10\).*\(2, 3, 11\)"):
            paired_logprob_delta(self.lb, torch.randn(2, 3, 11), self.labels)
        with pytest.raises(ValueError, match=r"labels has shape \(2, 4\).*\(2, 3\)"):
            paired_logprob_delta(self.lb, self.lb, torch.zeros(2, 4, dtype=torch.long))
        with pytest.raises(ValueError, match=r"logits_base must have shape \(B, T, V\)"):
            paired_logprob_delta(self.lb[0], self.lb[0], self.labels)
        with pytest.raises(ValueError, match=r"weight has shape \(10, 5\)"):
            paired_linear_logprob_delta(torch.randn(2, 3, 4), torch.randn(2, 3, 4),
                                        torch.randn(10, 5), self.labels)
        with pytest.raises(ValueError, match=r"bias has shape \(9,\)"):
            paired_linear_logprob_delta(torch.randn(2, 3, 4), torch.randn(2, 3, 4),
                                        torch.randn(10, 4), self.labels, bias=torch.randn(9))

    def test_device_mismatch(self):
        with pytest.raises(ValueError, match="labels is on meta"):
            paired_logprob_delta(self.lb, self.lb, self.labels.to("meta"))
        with pytest.raises(ValueError, match="logits_val is on meta"):
            paired_logprob_delta(self.lb, self.lb.to("meta"), self.labels)

    def test_label_out_of_range(self):
        labels = self.labels.clone()
        labels[1, 2] = 10
        with pytest.raises(ValueError, match=r"labels holds 10, outside \[0, 10\)"):
            paired_logprob_delta(self.lb, self.lb, labels)
        labels[1, 2] = -1
        with pytest.raises(ValueError, match="labels holds -1"):
            paired_logprob_delta(self.lb, self.lb, labels)

    def test_non_float_inputs(self):
        with pytest.raises(TypeError, match="logits_base must be float32.*torch.int64"):
            paired_logprob_delta(self.labels[..., None].expand(2, 3, 10), self.lb, self.labels)
        with pytest.raises(TypeError, match="labels must be an int64 tensor"):
            paired_logprob_delta(self.lb, self.lb, self.labels.float())

    def test_unknown_options(self):
        with pytest.raises(ValueError, match="transform='square'.*abs.*identity.*relu"):
            paired_logprob_delta(self.lb, self.lb, self.labels, transform="square")
        with pytest.raises(ValueError, match="reduction='sum'"):
            paired_logprob_delta(self.lb, self.lb, self.labels, reduction="sum")
        with pytest.raises(ValueError, match="backend='cuda'"):
            paired_logprob_delta(self.lb, self.lb, self.labels, backend="cuda")

    def test_triton_on_cpu_without_interpreter(self, monkeypatch):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
            paired_logprob_delta(self.lb, self.lb, self.labels, backend="triton")
