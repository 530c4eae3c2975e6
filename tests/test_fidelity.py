"""benchmarks/fidelity.py: metrics against independent references (pandas' Spearman, sets),
the exact val loss against the library's mean_loss, the one-step effects against a hand-written
AdamW/SGD update, and LESS at one checkpoint against a per-sample autograd loop."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from benchmarks import fidelity
from benchmarks.baselines import less
from benchmarks.baselines._util import encode, lora_copy, pad_id_of
from tests import tiny
from tov_datasets import models, training

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# ---------------------------------------------------------------- metrics -------------------
def _pandas_spearman(a, b) -> float:
    """pandas' DataFrame Spearman (its own tie-averaged ranks; no scipy needed)."""
    return float(pd.DataFrame({"a": a, "b": b}).corr(method="spearman").loc["a", "b"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_pandas_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a + rng.normal(0, 2, 40)
    b[::5] = b[1]
    expected = _pandas_spearman(a, b)
    assert fidelity.spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert fidelity.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(fidelity.spearman(np.ones(5), b[:5]))


def test_topk_overlap_against_sets():
    rng = np.random.default_rng(3)
    score, ref = rng.normal(size=50), rng.normal(size=50)
    for k in (1, 5, 12):
        expected = len(set(np.argsort(-score)[:k]) & set(np.argsort(-ref)[:k])) / k
        assert fidelity.topk_overlap(score, ref, k) == expected
    assert fidelity.topk_overlap(score, score, 7) == 1.0
    assert fidelity.topk_overlap(score, -score, 7) == 0.0


def test_within_source_is_spearman_per_source():
    rng = np.random.default_rng(4)
    sources = np.array(["a", "b", "c"] * 10)
    score, ref = rng.normal(size=30), rng.normal(size=30)
    out = fidelity.within_source(score, ref, sources)
    assert list(out) == ["a", "b", "c"]
    for s in "abc":
        keep = sources == s
        assert out[s] == pytest.approx(_pandas_spearman(score[keep], ref[keep]))


def test_stratified_rows():
    rng = np.random.default_rng(5)
    sources = np.array(["t"] * 30 + ["wiki"] * 12 + ["bbc"] * 200)
    is_target = sources == "t"
    candidates = np.arange(10, 242)
    rows = fidelity.stratified_rows(sources, is_target, candidates, 60, 1 / 3, rng)
    assert len(rows) == len(set(rows.tolist())) == 60
    assert set(rows.tolist()) <= set(candidates.tolist())
    assert (np.diff(rows) > 0).all()
    counts = pd.Series(sources[rows]).value_counts().to_dict()
    assert counts == {"t": 20, "wiki": 12, "bbc": 28}  # wiki holds 12: bbc takes the rest
    few = fidelity.stratified_rows(sources, is_target, candidates, 9, 1 / 3,
                                   np.random.default_rng(0))
    assert pd.Series(sources[few]).value_counts().to_dict() == {"t": 3, "wiki": 3, "bbc": 3}


# ---------------------------------------------------------------- exact effects -------------
def _trained(config: str, dtype=torch.float32):
    """(setup, peft model with adapter "base" trained 2 epochs, optimizer, samples)."""
    s = fidelity.setup(config, "tiny", 0)
    task = models.infer_task(s["model"])
    lora = models.default_lora_config(task, rank=2, model=s["model"])
    lora.lora_dropout = 0.0
    model = lora_copy(s["model"], lora, "base", seed=0)
    tiny._randomise_lora(model, "base", 7)  # B != 0: the adapter changes the function
    pad = pad_id_of(s["tokenizer"])
    pool = encode(model, s["pool"], s["tokenizer"], 64)
    val = encode(model, s["val"], s["tokenizer"], 64)
    params = models.adapter_parameters(model, "base")
    opt = training.adamw(params, 1e-2)
    training.fit(model, pool[:12], pad_token_id=pad, adapter="base", epochs=2, lr=1e-2,
                 batch_size=4, schedule="constant", optimizer=opt)
    if dtype == torch.float64:
        model = model.double()
        params = models.adapter_parameters(model, "base")
        opt64 = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
        opt64.load_state_dict(opt.state_dict())
        opt = opt64
    fidelity._grad_mode(model, params)
    return s, model, params, opt, pool[12:18], val, pad, task


@pytest.mark.parametrize("config", ["ner_coarse", "lm_tweets"])
def test_merged_val_loss_equals_mean_loss(config):
    s, model, params, opt, samples, val, pad, task = _trained(config)
    loss = fidelity.MergedValLoss(s["model"], model, "base", val, pad, 3)
    expected = training.mean_loss(model, val, pad_token_id=pad, adapter="base")
    assert loss() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():  # refreshed from the adapter on every call
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
    assert loss() == pytest.approx(training.mean_loss(model, val, pad_token_id=pad,
                                                      adapter="base"), rel=1e-5)
    assert loss() != pytest.approx(expected, rel=1e-5)


def _manual_adamw(params, opt, grads):
    """AdamW (weight decay 0) by hand from the optimizer's state: the new params."""
    group = opt.param_groups[0]
    (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
    out = []
    for p, g in zip(params, grads, strict=True):
        st = opt.state[p]
        t = float(st["step"]) + 1
        m = b1 * st["exp_avg"] + (1 - b1) * g
        v = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
        out.append(p.detach() - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))
    return out


@pytest.mark.parametrize("config", ["ner_coarse", "lm_tweets"])
def test_exact_effects_against_hand_written_steps(config):
    s, model, params, opt, samples, val, pad, task = _trained(config)
    loss = fidelity.MergedValLoss(s["model"], model, "base", val, pad, 3)
    weights = [p.detach().clone() for p in params]
    state = copy.deepcopy({i: opt.state[p] for i, p in enumerate(params)})
    effects = fidelity.exact_effects(model, params, opt, samples, loss, pad, task, sgd_lr=0.05)
    # params and optimizer state are back, bit for bit
    for p, w in zip(params, weights, strict=True):
        assert torch.equal(p, w)
    for i, p in enumerate(params):
        assert set(opt.state[p]) == set(state[i])
        for k, v in state[i].items():
            assert torch.equal(torch.as_tensor(opt.state[p][k]), torch.as_tensor(v))
    before = training.mean_loss(model, val, pad_token_id=pad, adapter="base")
    assert effects["before"] == pytest.approx(before, rel=1e-5)
    for j, x in enumerate(samples):
        g = fidelity.sample_gradient(model, params, x, pad, task)
        for name, new in (("exact", _manual_adamw(params, opt, g)),
                          ("exact_sgd", [p.detach() - 0.05 * gi for p, gi in zip(
                              params, g, strict=True)])):
            with torch.no_grad():
                for p, w in zip(params, new, strict=True):
                    p.copy_(w)
            after = training.mean_loss(model, val, pad_token_id=pad, adapter="base")
            with torch.no_grad():
                for p, w in zip(params, weights, strict=True):
                    p.copy_(w)
            assert effects[name][j] == pytest.approx(before - after, abs=2e-6), (name, j)
    assert np.abs(effects["exact"]).max() > 1e-3 and np.abs(effects["exact_sgd"]).max() > 1e-4
    zero = _manual_adamw(params, opt, [torch.zeros_like(p) for p in params])
    with torch.no_grad():
        for p, w in zip(params, zero, strict=True):
            p.copy_(w)
    after = training.mean_loss(model, val, pad_token_id=pad, adapter="base")
    assert effects["momentum_only"] == pytest.approx(before - after, abs=2e-6)


def test_small_sgd_step_effect_is_lr_times_graddot():
    """First order in float64: exact_sgd / lr -> g_x . g_val, and adamdot's step is the one
    the AdamW reference takes (lr -> 0 is not needed there: compare with the hand step)."""
    s, model, params, opt, samples, val, pad, task = _trained("ner_coarse", torch.float64)
    loss = fidelity.MergedValLoss(s["model"], model, "base", val, pad, 3)
    g_val = fidelity.val_gradient(model, params, val, pad, task, 3)
    fo = fidelity.first_order(model, params, opt, samples, g_val, pad, task)
    lr = 1e-6
    effects = fidelity.exact_effects(model, params, opt, samples, loss, pad, task, sgd_lr=lr)
    np.testing.assert_allclose(effects["exact_sgd"] / lr, fo.graddot, rtol=1e-3,
                               atol=1e-4 * np.abs(fo.graddot).max())
    for j, x in enumerate(samples):
        g = fidelity.sample_gradient(model, params, x, pad, task)
        step = torch.cat([(n - p.detach()).reshape(-1) for n, p in zip(
            _manual_adamw(params, opt, g), params, strict=True)])
        assert fo.adamdot[j] == pytest.approx(-float(step @ g_val), rel=1e-6)
        assert fo.adam_step_norm[j] == pytest.approx(float(step.norm()), rel=1e-6)
        assert fo.grad_norm[j] == pytest.approx(float(torch.cat(
            [t.reshape(-1) for t in g]).norm()), rel=1e-9)
    assert (fo.adam_own_step_norm < fo.adam_step_norm * 2).all() and (
        fo.adam_own_step_norm > 0).all()


def test_less_scores_against_autograd_loop():
    s, model, params, opt, samples, val, pad, task = _trained("ner_coarse")
    out = fidelity.less_scores(model, params, opt, samples, val, pad, task, proj_dim=64,
                               batch_size=3)
    m, v = less._flat_moments(opt, params)

    def grads(rows, adam):
        res = []
        for x in rows:
            g = torch.cat([t.reshape(-1) for t in fidelity.sample_gradient(
                model, params, x, pad, task)])
            res.append(less.adam_transform(g, m, v) if adam else g)
        return torch.stack(res)

    dim = sum(p.numel() for p in params)
    proj = less.RademacherProjector(dim, 64, seed=0)
    matrix = torch.cat([proj.block(b) for b in range(proj.num_blocks)]).double() / 8.0
    pool_p, val_p = grads(samples, True).double() @ matrix, grads(val, False).double() @ matrix
    cosine = (F.normalize(pool_p, dim=1) @ F.normalize(val_p, dim=1).T).mean(1).numpy()
    dot = (pool_p @ val_p.T).mean(1).numpy()
    np.testing.assert_allclose(out["less"], cosine, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["less_unnormalised"], dot, rtol=1e-4,
                               atol=1e-5 * np.abs(dot).max())
    assert np.abs(out["less"]).max() > 1e-3


@pytest.mark.parametrize("config", ["ner_coarse", "lm_tweets"])
def test_tov_scores_under_each_val_rule(config):
    """Each rule's score is loss(base, x) - loss(val, x) by two plain evaluations of the val
    adapter it trained; the rules train different val adapters; "continue" leaves the base
    optimizer's state bit for bit and the base adapter stays."""
    s, model, params, opt, samples, val, pad, task = _trained(config)
    model.add_adapter("val", copy.deepcopy(model.peft_config["base"]))
    base = [p.detach().clone() for p in params]
    state = copy.deepcopy({i: opt.state[p] for i, p in enumerate(params)})
    rows = s["pool"].select(range(12, 18))
    vals = {}
    for name, rule in fidelity.TOV_RULES.items():
        scores, train_loss = fidelity.tov_scores(
            model, s["tokenizer"], rows, s["val"], lr=1e-2, batch_size=4, max_length=64,
            seed=0, val_optimizer=rule, base_optimizer=opt)
        assert np.isfinite(train_loss) and scores.shape == (len(samples),)
        expected = [training.mean_loss(model, [x], pad_token_id=pad, adapter="base")
                    - training.mean_loss(model, [x], pad_token_id=pad, adapter="val")
                    for x in samples]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
        assert np.abs(scores).max() > 1e-4
        vals[name] = torch.cat([p.detach().reshape(-1).clone()
                                for p in models.adapter_parameters(model, "val")])
    for a, b in (("tov", "tov_val_sgd"), ("tov", "tov_val_continue"),
                 ("tov_val_sgd", "tov_val_continue")):
        assert not torch.allclose(vals[a], vals[b]), (a, b)
    for p, w in zip(params, base, strict=True):
        assert torch.equal(p, w)
    for i, p in enumerate(params):
        for k, v in state[i].items():
            assert torch.equal(torch.as_tensor(opt.state[p][k]), torch.as_tensor(v))
