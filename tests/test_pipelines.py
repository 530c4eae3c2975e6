"""make_tov_score: the same scores as ToVScorer (from a model or from saved paths), a cheap
datasets fingerprint and a reused map cache."""

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk
from datasets.fingerprint import Hasher

from tests import tiny
from tov_datasets.pipelines import adapter_paths, make_tov_score
from tov_datasets.scorer import NUM_TOKENS, SCORE, ToVScorer, score_column

TEXTS = [
    "hello world paris is the capital of france",
    "the king",
    "",
    "math number theorem prime proof algebra geometry river city king war music film game",
    "song album company market",
    "a",
]


def save_tiny_model(root: Path, more_targets: Sequence[str] = ()) -> tuple[Path, Path, Path]:
    """Save tiny.causal_lm_with_adapters as a plain model + tokenizer directory and two peft
    adapter directories: (model_dir, base_adapter_dir, val_adapter_dir); ``more_targets``:
    more target adapters (random, distinct) saved beside val, in root/adapters/<name>."""
    tok = tiny.tokenizer()
    with_adapters = tiny.add_adapters(tiny.causal_lm_with_adapters(tok), list(more_targets))
    with_adapters.save_pretrained(root / "adapters")  # adapters/{base,val,...}
    model_dir = root / "model"
    tiny.causal_lm(tok).save_pretrained(model_dir)  # the same seed: the same base weights
    tok.save_pretrained(model_dir)
    return model_dir, root / "adapters" / "base", root / "adapters" / "val"


def _columns(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return ds.data.column(SCORE).to_numpy(), ds.data.column(NUM_TOKENS).to_numpy()


def test_map_matches_scorer_from_model_and_from_paths(tiny_causal_lm, tiny_tokenizer, tmp_path):
    ds = Dataset.from_dict({"text": TEXTS})
    expected = _columns(ds.map(ToVScorer(tiny_causal_lm, tiny_tokenizer, batch_size=4),
                               batched=True, batch_size=3))
    tov_score = make_tov_score(tiny_causal_lm, tiny_tokenizer, batch_size=4)
    assert isinstance(tov_score, ToVScorer)
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path)
    from_paths = make_tov_score(model_dir, base_adapter=base_dir, val_adapter=val_dir,
                                batch_size=4)
    for scorer in (tov_score, from_paths):
        got = _columns(ds.map(scorer, batched=True, batch_size=3))
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert np.count_nonzero(expected[0]) == len(TEXTS) - 2  # "" and "a" have nothing to score


def test_several_targets_from_paths_equal_one_scorer_per_target(tmp_path):
    """val_adapter={name: directory}: one column per target, each equal to the single-target
    scorer of that adapter (one forward of 3B rows against two of 2B: float32 sums may
    differ in the last bit)."""
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path, more_targets=["other"])
    targets = {"val": val_dir, "other": val_dir.parent / "other"}
    ds = Dataset.from_dict({"text": TEXTS})
    scorer = make_tov_score(model_dir, base_adapter=base_dir, val_adapter=targets,
                            batch_size=4)
    assert scorer.columns == [score_column("val"), score_column("other"), NUM_TOKENS]
    got = ds.map(scorer, batched=True, batch_size=3)
    for name, directory in targets.items():
        single = _columns(ds.map(make_tov_score(model_dir, base_adapter=base_dir,
                                                val_adapter=directory, batch_size=4),
                                 batched=True, batch_size=3))
        np.testing.assert_allclose(got.data.column(score_column(name)).to_numpy(), single[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.data.column(NUM_TOKENS).to_numpy(), single[1])
    other, val = (got.data.column(score_column(n)).to_numpy() for n in ("other", "val"))
    assert np.abs(other - val).max() > 1e-3  # distinct adapters, distinct scores


def test_adapter_paths():
    assert adapter_paths(Path("a/b")) == "a/b"
    assert adapter_paths({"x": Path("a/x"), "y": "a/y"}) == {"x": "a/x", "y": "a/y"}
    with pytest.raises(ValueError, match="name: directory"):
        adapter_paths(["a/x", "a/y"])


def test_fingerprint_is_cheap_and_the_map_cache_is_reused(tiny_causal_lm, tiny_tokenizer,
                                                          tmp_path):
    Dataset.from_dict({"text": TEXTS}).save_to_disk(tmp_path / "ds")
    ds = load_from_disk(tmp_path / "ds")
    tov_score = make_tov_score(tiny_causal_lm, tiny_tokenizer)
    start = time.perf_counter()
    digest = Hasher.hash(tov_score)
    assert time.perf_counter() - start < 0.1
    assert digest == Hasher.hash(make_tov_score(tiny_causal_lm, tiny_tokenizer))
    first = ds.map(tov_score, batched=True)

    def fail(_columns):
        raise AssertionError("the cached result should have been reused")

    tov_score.score_columns = fail  # not part of the fingerprint
    second = ds.map(tov_score, batched=True)
    assert second.cache_files == first.cache_files
    np.testing.assert_array_equal(_columns(second)[0], _columns(first)[0])


def test_errors(tiny_causal_lm, tmp_path):
    with pytest.raises(ValueError, match="pass a tokenizer"):
        make_tov_score(tiny_causal_lm)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="architectures=None"):
        make_tov_score(tmp_path)
