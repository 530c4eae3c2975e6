"""benchmarks/quality_bundle.py: a bundle gives back exactly the data the configuration built,
its all-MiniLM-L6-v2 stand-in rounded to float16 (own copy or tensors shared with another
checkpoint, checked), and quality.py runs from it. A tiny BERT stands in for MiniLM and a
tiny synthetic configuration for ner_coarse_v2 (seconds)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks import quality, quality_bundle
from benchmarks.quality_configs import CONFIGS, Config, Sizes
from tests import tiny
from tov_datasets.evaluation import roc_auc

TINY_DATA = {"pool_size": 40, "target_in_pool": 10, "val_size": 5, "test_size": 8}
OTHER_DATA = {**TINY_DATA, "pool_size": 44}


def tiny_ner_data(seed: int, *, pool_size: int, target_in_pool: int, val_size: int,
                  test_size: int) -> dict:
    """Seeded synthetic NER rows: target rows use the first 20 words, the others the rest."""
    from benchmarks.quality_configs import _splits

    rng = np.random.default_rng(seed)

    def rows(k, vocab, source):
        out = []
        for _ in range(k):
            words = [str(w) for w in rng.choice(vocab, rng.integers(3, 10))]
            out.append({"tokens": words, "ner_tags": [str(rng.choice(tiny.NER_LABELS))
                                                      for _ in words],
                        "source": source, "is_target": source == "target"})
        return out

    target, other = tiny.WORDS[:20], tiny.WORDS[20:]
    pool = rows(target_in_pool, target, "target") + rows(pool_size - target_in_pool, other,
                                                         "other")
    pool = [pool[i] for i in rng.permutation(len(pool))]
    return _splits(pool, rows(val_size, target, "target"), rows(test_size, target, "target"),
                   seed)


def tiny_token_classifier(seed: int):
    tok = tiny.tokenizer()
    return tiny.token_classifier(tok, seed=seed), tok


SMALL = Sizes(data=TINY_DATA, n=4, base_size=12, epochs=1, lr=1e-2, ft_lrs=(1e-2,),
              ft_max_epochs=2, batch_size=8, max_length=64, seeds=2)
TINY_CONFIG = Config("tiny_ner", "token_classification", tiny_ner_data, tiny_token_classifier,
                     selector_rank=2, finetune_rank=2,
                     sizes={"small": SMALL, "other": Sizes(**{**SMALL.__dict__,
                                                              "data": OTHER_DATA})})


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """A stand-in for the all-MiniLM-L6-v2 package dir (a tiny BertModel with its pooler and
    an int64 position-ids tensor, as the real file has) and a lender: the same encoder in
    float16 inside a token classifier (``bert.*`` keys, no pooler), as .gpu/ner/model."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("encoders")
    tok = tiny.tokenizer()
    classifier = tiny.token_classifier(tok, seed=7)
    torch.manual_seed(8)
    base = BertModel(classifier.config)
    base.load_state_dict(classifier.bert.state_dict(), strict=False)
    package, lender = root / "package", root / "lender"
    base.save_pretrained(package)
    tok.save_pretrained(package)
    tensors = load_file(str(package / "model.safetensors"))
    tensors["embeddings.position_ids"] = torch.arange(128)[None]
    save_file(tensors, str(package / "model.safetensors"), metadata={"format": "pt"})
    classifier.half().save_pretrained(lender)
    return package, lender


@pytest.fixture
def env(encoders, tmp_path, monkeypatch):
    """TINY_CONFIG registered, the package stand-in as MiniLM, a private tov cache."""
    monkeypatch.setitem(CONFIGS, "tiny_ner", TINY_CONFIG)
    monkeypatch.setenv("TOV_MINILM_DIR", str(encoders[0]))  # restored after the test
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache"))
    return encoders


def assert_fp16_copy(model_dir, package):
    """model_dir's float32 tensors are exactly the package's rounded to float16."""
    expected = load_file(str(package / "model.safetensors"))
    got = load_file(str(model_dir / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        want = t.half().float() if t.is_floating_point() else t
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    assert not torch.equal(got["pooler.dense.weight"], expected["pooler.dense.weight"])


def test_round_trip_equals_the_built_data(env, tmp_path):
    package, _ = env
    out = quality_bundle.save("tiny_ner", "small", [0, 3], tmp_path / "bundle")
    for seed in (0, 3):
        loaded, built = quality_bundle.load(out, seed), TINY_CONFIG.build(seed, **TINY_DATA)
        for part in ("pool", "val", "test"):
            assert loaded[part].features == built[part].features
            assert loaded[part].to_list() == built[part].to_list()
        assert loaded["meta"] == built["meta"]
    assert quality_bundle.load(out, 0)["pool"]["tokens"] != quality_bundle.load(
        out, 3)["pool"]["tokens"]  # the split follows the seed
    with pytest.raises(ValueError, match="not seed 1"):
        quality_bundle.load(out, 1)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["config"], meta["size"], meta["seeds"], meta["data"]) == (
        "tiny_ner", "small", [0, 3], TINY_DATA)
    model_dir = quality_bundle.model_dir(out)
    assert_fp16_copy(model_dir, package)
    assert quality_bundle.model_dir(out) == model_dir  # built once, then reused
    assert not (out / "models" / "minilm" / "model.safetensors").exists()  # not in the bundle


def test_shared_tensors_are_checked(env, tmp_path, monkeypatch):
    package, lender = env
    out = quality_bundle.save("tiny_ner", "small", [0], tmp_path / "bundle",
                              share_weights_from=lender)
    own = load_file(str(out / "models" / "minilm" / quality_bundle.WEIGHTS_FP16))
    assert sorted(own) == ["embeddings.position_ids", "pooler.dense.bias",
                           "pooler.dense.weight"]  # what the lender lacks
    assert_fp16_copy(quality_bundle.model_dir(out), package)
    # a lender whose encoder differs is refused at save time
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors = load_file(str(lender / "model.safetensors"))
    tensors["bert.embeddings.word_embeddings.weight"][0, 0] += 1
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="tensors differ"):
        quality_bundle.save("tiny_ner", "small", [0], tmp_path / "b2", share_weights_from=bad)
    # a lender changed after the save is caught when the model is assembled (a new cache:
    # the assembled copy is keyed by the checked SHA-256 and reused)
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache2"))
    (lender / "model.safetensors").rename(lender / "orig.safetensors")
    (bad / "model.safetensors").rename(lender / "model.safetensors")
    try:
        with pytest.raises(ValueError, match="not the ones saved"):
            quality_bundle.model_dir(out)
    finally:
        (lender / "orig.safetensors").replace(lender / "model.safetensors")


def test_causal_lm_configurations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="64 MiB"):
        quality_bundle.save("lm_tweets", "gpu", [0], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_quality_runs_from_a_tiny_bundle(env, tmp_path):
    out = quality_bundle.save("tiny_ner", "small", [0, 1], tmp_path / "bundle")
    with pytest.raises(ValueError, match="not"):  # a bundle of another size
        quality_bundle.use_bundle(TINY_CONFIG, out, "other")
    path = quality.main(["--config", "tiny_ner", "--size", "small", "--bundle", str(out),
                         "--methods", "embedding", "--threads", "1", "--force",
                         "--out-dir", str(tmp_path / "results")])
    record = json.loads(path.read_text())
    assert path.name == "quality_tiny_ner_small.json"
    assert record["config"]["bundle"] == str(out) and record["config"]["device"] == "cpu"
    per_seed = {(r["seed"], r["method"]): r for r in record["details"]["per_seed"]}
    assert sorted(per_seed) == [(s, m) for s in (0, 1) for m in ("embedding", "oracle",
                                                                 "random")]
    # the embedding baseline read the bundle's data and its fp16 encoder copy
    from benchmarks.baselines import embedding
    from tov_datasets.assets import minilm_dir

    assert minilm_dir() == quality_bundle.model_dir(out)
    for seed in (0, 1):
        data = quality_bundle.load(out, seed)
        scores = embedding.scores(None, None, data["pool"], data["val"])
        target = np.asarray(data["pool"]["is_target"])
        assert per_seed[(seed, "embedding")]["ranking"]["auc"] == pytest.approx(
            roc_auc(scores, target))
        assert per_seed[(seed, "oracle")]["target_share"] == 1.0
