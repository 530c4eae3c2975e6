"""`tov demo`: the seeded data split (fast) and the whole demo in its --small size (slow)."""

import json

import numpy as np
import pytest

from tov_datasets import cli, demo, report


@pytest.fixture(scope="module")
def split():
    return demo.prepare_data(demo.SMALL)


def test_split_is_disjoint_balanced_and_seeded(split):
    config = demo.SMALL
    assert len(split.val) == config.val_size and len(split.test) == config.test_size
    assert set(split.val["topic"]) == set(split.test["topic"]) == {config.topic}
    val, test, pool = (set(ds["title"]) for ds in (split.val, split.test, split.pool))
    assert not (val & test) and not (val & pool) and not (test & pool)
    topics, counts = np.unique(split.pool["topic"], return_counts=True)
    assert topics.size == 12 and (counts == config.pool_per_topic).all()
    again = demo.prepare_data(config)
    assert again.pool["title"] == split.pool["title"] and again.val["title"] == split.val["title"]
    other = demo.prepare_data(config.replace(seed=1))
    assert set(other.val["title"]) != val


def test_unknown_topic_exits_2(tmp_path, capsys):
    assert cli.main(["demo", "--small", "--topic", "Astrology", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown topic 'Astrology'" in err and "Mathematics, People" in err
    assert "np.str_" not in err


@pytest.mark.slow
def test_small_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--small", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for text in ("| ToV |", "| random |", "| pool |", "base model", "LoRA on ToV selection",
                 "LoRA on random selection", "ToV scoring", "total"):
        assert text in printed
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "demo" and run["arguments"]["n"] == demo.SMALL.n
    assert len(run["losses"]) == 3 and all(np.isfinite(v) for v in run["losses"].values())
    assert run["losses"]["LoRA on random selection"] < run["losses"]["base model"]
    text = (out / report.REPORT_NAME).read_text()
    assert "## Target share of each selection" in text and "## Target test loss" in text
    for name in report.PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
