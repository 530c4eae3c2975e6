"""The library end to end on a CUDA device (run by benchmarks/gpu_check.sh on the GPU machine;
CI has no GPU, so these are skipped there). References are computed on the CPU in float64
from two plain forwards, or by the same run on the CPU."""

import copy
import os

import numpy as np
import pytest
import torch
from datasets import Dataset

from tests import tiny
from tests.test_scorer import MAX_LENGTH, causal_case, expected, ner_case, reference_deltas
from tov_datasets import trajectory
from tov_datasets.scorer import ToVScorer
from tov_kernels import api

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device and compiled Triton (benchmarks/gpu_check.sh runs these)",
)


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts the scorer's calls that took the Triton path."""
    calls = []
    real = api._use_triton

    def spy(backend, device):
        used = real(backend, device)
        calls.append(used)
        return used

    monkeypatch.setattr(api, "_use_triton", spy)
    return calls


def _scores(model, tok, rows, transform="identity"):
    scorer = ToVScorer(model, tok, transform=transform, max_length=MAX_LENGTH, batch_size=2)
    out = Dataset.from_dict(rows).map(scorer, batched=True, batch_size=4)
    return np.asarray(out["tov_score"], np.float64), np.asarray(out["tov_num_tokens"])


@pytest.mark.parametrize("task,fmt", [("causal_lm", "messages"), ("causal_lm", "text"),
                                      ("token_classification", "ner")])
def test_scorer_fp32_matches_cpu_float64_reference(task, fmt, tiny_causal_lm,
                                                   tiny_token_classifier, triton_calls):
    tok = tiny.tokenizer()
    causal = task == "causal_lm"
    model = tiny_causal_lm if causal else tiny_token_classifier
    rows, refs = (causal_case if causal else ner_case)(fmt, tok)
    deltas = reference_deltas(model, refs, causal, MAX_LENGTH)
    want, counts_want = expected(deltas, "identity")
    got, counts = _scores(copy.deepcopy(model).cuda(), tok, rows)
    assert np.abs(want).max() > 1e-3  # the adapters differ: a non-trivial check
    np.testing.assert_array_equal(counts, counts_want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert triton_calls and all(triton_calls)


def test_scorer_bf16_matches_plain_bf16_forwards(tiny_causal_lm):
    """bf16 on CUDA: the paired batch + kernel against two plain bf16 forwards of each sample
    (log-softmax in float64), so only batching and the kernel's rounding differ."""
    tok = tiny.tokenizer()
    rows, refs = causal_case("prompt_completion", tok)
    model = copy.deepcopy(tiny_causal_lm).to("cuda", torch.bfloat16)
    got, _ = _scores(model, tok, rows)
    want, _ = expected(reference_deltas(model, refs, True, MAX_LENGTH), "identity")  # on CUDA
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())


def test_tov_select_on_cuda_matches_the_cpu_run(tiny_tokenizer):
    """The whole trajectory (training both adapters, scoring, selection) on CUDA gives the
    CPU run's scores (fp32; dropout 0 so both runs are deterministic). Two epochs of training
    at lr 3e-2 carry the devices' float32 rounding differences into the adapters: on an H200
    the worst score differed by 7e-5 (0.2% of the largest score), hence the 1% tolerance."""
    rng = np.random.default_rng(0)
    pool = Dataset.from_dict({"text": [" ".join(rng.choice(tiny.WORDS, rng.integers(2, 12)))
                                       for _ in range(40)]})
    val = Dataset.from_dict({"text": ["math number theorem prime proof", "a prime number"]})
    from tov_datasets.models import default_lora_config

    def run(device):
        model = tiny.causal_lm(tiny_tokenizer).to(device)
        lora = default_lora_config("causal_lm", 4, model=model)
        lora.lora_dropout = 0.0
        r = trajectory.tov_select(model, tiny_tokenizer, pool, val, n=10, base_size=16,
                                  epochs=2, lr=3e-2, batch_size=4, lora=lora, seed=0)
        table = r.scores.data
        out = np.empty(len(pool))
        out[table.column("tov_row").to_numpy()] = table.column("tov_score").to_numpy()
        return out

    cpu, cuda = run("cpu"), run("cuda")
    assert np.abs(cpu).max() > 1e-4
    np.testing.assert_allclose(cuda, cpu, rtol=1e-2, atol=1e-2 * np.abs(cpu).max())
    assert np.corrcoef(cuda, cpu)[0, 1] > 0.9999
