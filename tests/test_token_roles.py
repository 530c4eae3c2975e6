"""benchmarks/token_roles.py: per-token ToV deltas by role, against the library's score."""

import json

import numpy as np
import pytest

from benchmarks import token_roles


def test_role_masks_split_scored_tokens_at_the_first_end_token():
    # position 0 is never predicted; -100 is not scored; 7 is the end token
    labels = [5, -100, 3, 4, 7, 9, -100]
    m = token_roles.role_masks(labels, end_id=7)
    assert m["all"].tolist() == [False, True, True, True, True, False]
    assert m["content"].tolist() == [False, True, True, False, False, False]
    assert m["end"].tolist() == [False, False, False, True, True, False]
    none = token_roles.role_masks([5, 3, 4], end_id=7)  # no end token: all content
    assert none["content"].tolist() == [True, True] and not none["end"].any()


def test_tag_role_masks_split_scored_words_by_gold_tag():
    labels = [-100, 0, 3, -100, 4, 0, -100]  # 0 is "O"; -100: special tokens, later subwords
    m = token_roles.tag_role_masks(labels, o_id=0)
    assert m["all"].tolist() == [False, True, True, False, True, True, False]
    assert m["entity"].tolist() == [False, False, True, False, True, False, False]
    assert m["o"].tolist() == [False, True, False, False, False, True, False]


def test_by_source_means_and_pairwise_auc():
    values = np.array([0.9, 0.1, 0.5, np.nan, 0.2, 0.8])
    sources = np.array(["t", "a", "b", "t", "a", "t"])
    r = token_roles.by_source(values, sources, sources == "t")
    assert r["mean"]["t"] == np.mean([0.9, 0.8]) and r["mean"]["a"] == np.mean([0.1, 0.2])
    assert r["auc_vs_source"] == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("config", ["chat_labels", "ner_coarse_v3"])
def test_tiny_run_reproduces_the_library_score(config, tmp_path):
    path = token_roles.main(["--config", config, "--size", "tiny", "--threads", "1",
                             "--out-dir", str(tmp_path)])
    record = json.loads(path.read_text())
    epochs = record["details"]["epochs"]
    assert len(epochs) == 1
    assert record["summary"]["max_abs_diff_vs_library"] <= token_roles.SCORE_ATOL
    for role in token_roles.ROLES[record["details"]["task"]]:
        assert all(0.0 <= a <= 1.0 for a in epochs[0][role]["auc_vs_source"].values())
        assert all(np.isfinite(v) for v in epochs[0]["all"]["mean"].values())
