"""Smoke tests of the benchmarks: baselines on tiny random models (LESS optimised ==
published), and every benchmark script end to end in --tiny mode (files and shapes only;
the quality targets are not asserted here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from peft import LoraConfig

from tests import tiny

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _text_sets(seed=0, n_pool=32, n_val=5):
    rng = np.random.default_rng(seed)

    def sent():
        return " ".join(rng.choice(tiny.WORDS, rng.integers(3, 12)))

    return (Dataset.from_dict({"text": [sent() for _ in range(n_pool)]}),
            Dataset.from_dict({"text": [sent() for _ in range(n_val)]}))


def _ner_sets(seed=0, n_pool=24, n_val=5):
    rng = np.random.default_rng(seed)

    def row():
        words = [str(w) for w in rng.choice(tiny.WORDS, rng.integers(3, 10))]
        return words, [str(rng.choice(tiny.NER_LABELS)) for _ in words]

    rows = [row() for _ in range(n_pool + n_val)]
    ds = Dataset.from_dict({"tokens": [r[0] for r in rows], "ner_tags": [r[1] for r in rows]})
    return ds.select(range(n_pool)), ds.select(range(n_pool, n_pool + n_val))


LORA_LM = LoraConfig(r=2, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     task_type="CAUSAL_LM")
LORA_NER = LoraConfig(r=1, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"],
                      task_type="TOKEN_CLS")


@pytest.mark.parametrize("task", ["causal_lm", "token_classification"])
def test_less_optimised_equals_published(tiny_tokenizer, task, tmp_path):
    from benchmarks.baselines import less

    if task == "causal_lm":
        model, lora = tiny.causal_lm(tiny_tokenizer), LORA_LM
        pool, val = _text_sets()
    else:
        model, lora = tiny.token_classifier(tiny_tokenizer), LORA_NER
        pool, val = _ner_sets()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for mode in less.MODES:
        results[mode] = less.less_scores(
            model, tiny_tokenizer, pool, val, mode=mode, lora=lora, n=8, seed=3,
            warmup_fraction=0.25, lr=1e-2, proj_dim=64, block_rows=40, train_batch_size=4,
            grad_batch_size=5, proj_batch=7, output_dir=tmp_path / mode,
        )
    pub, opt = results["published"], results["optimised"]
    assert pub.scores.shape == (len(pool),) and np.isfinite(pub.scores).all()
    assert np.abs(pub.scores).max() > 0
    np.testing.assert_allclose(opt.scores, pub.scores, rtol=1e-4, atol=1e-5 * np.abs(
        pub.scores).max())
    assert pub.selected.tolist() == opt.selected.tolist() and len(pub.selected) == 8
    assert len(pub.checkpoint_weights) == 4 and all(w > 0 for w in pub.checkpoint_weights)
    # LESS's layout: per checkpoint an adapter + optimizer state, chunked + merged grads
    assert len(list((tmp_path / "published").glob("ckpt*/optimizer.safetensors"))) == 4
    assert len(list((tmp_path / "published").rglob("all_unormalized.safetensors"))) == 8
    assert pub.peak_disk_bytes > opt.peak_disk_bytes > 0
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch_equal(v, before[k])


@pytest.mark.parametrize("task", ["causal_lm", "token_classification"])
def test_less_unprojected_is_the_cosine_of_full_gradients(tiny_tokenizer, task, tmp_path):
    """Against a float64 batch-1 autograd loop over the kept checkpoints, and against the
    published (projected) scores within the projection's Johnson-Lindenstrauss error."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from benchmarks.baselines import less
    from benchmarks.baselines._util import encode, lora_copy, pad_id_of
    from benchmarks.fidelity import sample_gradient
    from tov_datasets.models import adapter_parameters

    if task == "causal_lm":
        model, lora = tiny.causal_lm(tiny_tokenizer), LORA_LM
        pool, val = _text_sets(seed=4)
    else:
        model, lora = tiny.token_classifier(tiny_tokenizer), LORA_NER
        pool, val = _ner_sets(seed=4)
    kw = dict(lora=lora, n=8, seed=5, warmup_fraction=0.25, lr=1e-2, train_batch_size=4,
              grad_batch_size=3)
    r = less.less_scores(model, tiny_tokenizer, pool, val, mode="unprojected",
                         output_dir=tmp_path / "u", **kw)
    assert r.details["mode"] == "unprojected" and np.isfinite(r.scores).all()
    assert r.selected.tolist() == np.sort(np.argsort(-r.scores, kind="stable")[:8]).tolist()

    peft = lora_copy(model, lora, less.ADAPTER, seed=5).double().eval()
    params = adapter_parameters(peft, less.ADAPTER)
    names = {id(p): nm for nm, p in peft.named_parameters()}
    pool_s, val_s = encode(model, pool, tiny_tokenizer), encode(model, val, tiny_tokenizer)
    pad = pad_id_of(tiny_tokenizer)

    def flat(x):
        return torch.cat([g.reshape(-1) for g in sample_gradient(peft, params, x, pad, task)])

    reference = np.zeros(len(pool))
    for k, weight in enumerate(r.checkpoint_weights):
        state = load_file(str(tmp_path / "u" / f"ckpt{k}" / "adapter.safetensors"))
        moments = load_file(str(tmp_path / "u" / f"ckpt{k}" / "optimizer.safetensors"))
        with torch.no_grad():
            for p in params:
                p.copy_(state[names[id(p)]].double())
        m, v = (torch.cat([moments[names[id(p)] + suffix].double().reshape(-1)
                           for p in params]) for suffix in (".exp_avg", ".exp_avg_sq"))
        pool_g = torch.stack([less.adam_transform(flat(x), m, v) for x in pool_s])
        val_g = torch.stack([flat(x) for x in val_s])
        cosine = F.normalize(pool_g, dim=1) @ F.normalize(val_g, dim=1).T
        reference += weight * cosine.mean(1).numpy()
    assert np.abs(reference).max() > 1e-4 and np.ptp(reference) > 1e-5
    np.testing.assert_allclose(r.scores, reference, rtol=1e-4,
                               atol=1e-5 * np.abs(reference).max())

    # the projection estimates these cosines: a JL projection to d dims errs by
    # sd <= sqrt(2 / d) per cosine; 5 sd of the weighted sum bounds the difference
    d = 4096
    pub = less.less_scores(model, tiny_tokenizer, pool, val, mode="published", proj_dim=d,
                           output_dir=tmp_path / "p", **kw)
    bound = 5 * sum(r.checkpoint_weights) * (2 / d) ** 0.5
    assert np.abs(pub.scores - r.scores).max() < bound
    assert not np.allclose(pub.scores, r.scores, rtol=0, atol=1e-7)  # a different estimate


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_projector_is_blockwise_consistent():
    import torch

    from benchmarks.baselines.less import RademacherProjector

    g = torch.randn(5, 103)
    a = RademacherProjector(103, 32, seed=1, block_rows=10).project(g)
    b = RademacherProjector(103, 32, seed=1, block_rows=10, cache_bytes=1 << 30)
    full = torch.cat([b.block(i) for i in range(b.num_blocks)])
    assert set(full.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(a, g @ full / 32**0.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.project(g[:2]), a[:2], rtol=1e-5, atol=1e-5)


def test_baselines_same_interface(tiny_tokenizer):
    from benchmarks.baselines import max_uncertainty, random_select, tov

    pool, val = _text_sets()
    model = tiny.causal_lm(tiny_tokenizer)
    for fn, kw in (
        (random_select.select, {}),
        (max_uncertainty.select, {"lora": LORA_LM, "lr": 1e-2, "warmup_fraction": 0.25}),
        (tov.select, {"lora": LORA_LM, "base_size": 8, "epochs": 1}),
    ):
        idx = fn(model, tiny_tokenizer, pool, val, 8, seed=1, **kw)
        assert idx.shape == (8,) and len(set(idx.tolist())) == 8
        assert 0 <= idx.min() and idx.max() < len(pool)
    r = tov.run(model, tiny_tokenizer, pool, val, 8, seed=1, name="tov_score_only",
                lora=LORA_LM, base_size=8, epochs=1)
    assert tov.pool_scores(r).shape == (len(pool),)
    assert len(tov.selected_rows(r)) == 8


@pytest.mark.parametrize("script,config,keys", [
    ("less_vs_tov", "it", ["speedup_vs_less_published", "speedup_vs_less_optimised",
                           "storage_ratio_vs_less_published", "storage_ratio_vs_less_optimised",
                           "tov_s_per_sample", "less_published_s_per_sample",
                           "less_optimised_s_per_sample"]),
    ("fidelity", "ner_coarse", ["spearman_tov_vs_exact", "spearman_less_vs_exact",
                                "spearman_less_unnormalised_vs_exact", "topk_overlap_tov",
                                "topk_overlap_less", "spearman_tov_within_source",
                                "spearman_tov_vs_exact_sgd", "exact_positive_share",
                                "auc_tov", "spearman_tov_val_sgd_vs_exact_sgd",
                                "spearman_tov_val_continue_vs_exact", "auc_tov_val_sgd"]),
])
def test_script_tiny(script, config, keys, tmp_path):
    import importlib

    mod = importlib.import_module(f"benchmarks.{script}")
    path = mod.main(["--config", config, "--tiny", "--threads", "1", "--out-dir",
                     str(tmp_path)])
    assert path.parent == tmp_path and path.name.endswith("_tiny.json")
    record = json.loads(path.read_text())
    for k in ("benchmark", "command", "commit", "date", "machine", "versions", "config",
              "summary", "details"):
        assert k in record
    for k in keys:
        assert k in record["summary"], k
        assert np.isfinite(record["summary"][k]), k
    assert path.with_suffix(".md").is_file()


def test_multi_target_smoke(tmp_path):
    """benchmarks/multi_target.py end to end on the tiny model: the result file, the counted
    bound against the cost model written out by hand, and the scores of the K-target runs
    against the single-target runs (one epoch: equal up to kernel rounding; the parallel
    variant over two epochs: the same ranking, by construction)."""
    from benchmarks import multi_target

    path = multi_target.main(["--smoke", "--threads", "1", "--out-dir", str(tmp_path)])
    assert path == tmp_path / "multi_target_smoke.json"
    record = json.loads(path.read_text())
    summary = record["summary"]
    for key in ("speedup_vs_single_runs_k2", "speedup_vs_single_runs_k4", "fpe_per_sample_k4",
                "speedup_vs_less_amortised_k4", "min_topn_overlap_vs_single",
                "counted_bound_k4", "speedup_over_bound_k4"):
        assert np.isfinite(summary[key]) and summary[key] > 0, key
    sizes, P = record["config"]["sizes"], record["config"]["pool"]
    U, V = sizes["base_size"], sizes["val_size"]
    for K in (1, 2, 4):  # K single runs (3U + 3V + 2P each) / one run (3U + 3KV + (1 + K)P)
        bound = K * (3 * U + 3 * V + 2 * P) / (3 * U + 3 * K * V + (1 + K) * P)
        assert summary[f"counted_bound_k{K}"] == pytest.approx(bound)
    for K in ("2", "4"):
        for target, f in record["details"]["per_k"][K]["fidelity"].items():
            assert f["max_abs_score_diff"] < 1e-4, (K, target)
            assert f["topn_overlap"] == 1.0, (K, target)
    for f in record["details"]["fidelity_multi_epoch"]["parallel"]["fidelity"].values():
        assert f["spearman"] > 0.999 and f["topn_overlap"] == 1.0


def test_less_vs_tov_runs_from_a_bundle(tmp_path):
    """--save-bundle writes data + model that --bundle reads back (the GPU machine's path):
    same rows, same model outputs up to the fp16 rounding of the weights."""
    import torch

    from benchmarks import eval_data, less_vs_tov

    bundle = less_vs_tov.main(["--config", "ner", "--tiny", "--threads", "1",
                               "--save-bundle", str(tmp_path / "bundle")])
    original = less_vs_tov.setup("ner", "tiny")
    loaded = eval_data.load_bundle(bundle)
    for part in ("pool", "val", "test"):
        assert loaded[part].to_list() == original[part].to_list()
    assert loaded["lora"].task_type == original["lora"].task_type
    ids = torch.tensor([[2, 5, 7, 9, 3]])
    with torch.no_grad():
        a, b = original["model"](input_ids=ids).logits, loaded["model"](input_ids=ids).logits
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=5e-3, rtol=5e-3)
    path = less_vs_tov.main(["--config", "ner", "--tiny", "--threads", "1", "--bundle",
                             str(bundle), "--out-dir", str(tmp_path / "out")])
    record = json.loads(path.read_text())
    assert record["config"]["from_bundle"] and record["config"]["pool"] == len(original["pool"])
    assert np.isfinite(record["summary"]["speedup_vs_less_published"])


def test_holdout_check_tiny(tmp_path, monkeypatch):
    """benchmarks/holdout_check.py on two tiny seeds: per-seed figures in range and
    consistent, the summary their means; a rerun of the same settings reuses the seeds."""
    from benchmarks import holdout_check

    argv = ["--config", "lm_tweets_v3", "--tiny", "--seeds", "0,1", "--fraction", "0.3",
            "--threads", "1", "--out-dir", str(tmp_path)]
    path = holdout_check.main(argv)
    record = json.loads(path.read_text())
    per_seed = record["details"]["per_seed"]
    assert [e["seed"] for e in per_seed] == [0, 1]
    for e in per_seed:
        assert e["held_out_rows"] == max(1, round(0.3 * e["val_rows"]))
        assert len(e["held_out_scores"]) == e["held_out_rows"]
        for k in ("holdout_auc", "holdout_auc_vs_nontarget", "pool_target_auc"):
            assert 0 <= e[k] <= 1, k
        assert e["abs_gap"] == pytest.approx(abs(e["holdout_auc_vs_nontarget"]
                                                 - e["pool_target_auc"]))
    for k in ("holdout_auc", "pool_target_auc", "abs_gap"):
        assert record["summary"][f"{k}_mean"] == pytest.approx(np.mean([e[k] for e in per_seed]))
    monkeypatch.setattr(holdout_check, "check_seed", lambda *a: pytest.fail("recomputed"))
    again = json.loads(holdout_check.main(argv).read_text())
    assert again["details"]["per_seed"] == per_seed


def test_holdout_check_by_answer_tiny(tmp_path):
    """--by-answer writes its own file with each answer's count and mean score among the
    held-out rows and the pool's target rows (counts: the held-out rows, the target rows)."""
    from benchmarks import holdout_check

    path = holdout_check.main(["--config", "chat_labels_v2", "--tiny", "--seeds", "0",
                               "--by-answer", "--threads", "1", "--out-dir", str(tmp_path)])
    assert path.name == "holdout_check_chat_labels_v2_by_answer_tiny.json"
    entry = json.loads(path.read_text())["details"]["per_seed"][0]
    held, target = entry["by_answer"]["held_out"], entry["by_answer"]["pool_target"]
    assert sum(v["rows"] for v in held.values()) == entry["held_out_rows"]
    assert sum(v["rows"] for v in target.values()) > 0
    means = {a: v["mean_score"] for a, v in held.items()}
    weighted = sum(v["rows"] * v["mean_score"] for v in held.values()) / entry["held_out_rows"]
    assert weighted == pytest.approx(np.mean(entry["held_out_scores"]))
    assert all(np.isfinite(list(means.values())))
