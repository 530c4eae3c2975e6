"""benchmarks/length_bins.py: target rows per length bin against a direct reference, and a
tiny end-to-end run."""

import json

import numpy as np
import pytest

from benchmarks import length_bins


@pytest.mark.parametrize("n,num_bins", [(60, 10), (37, 4), (200, 7)])
def test_bin_occupancy_matches_a_direct_reference(n, num_bins):
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, 40, n)
    is_target = rng.random(n) < 0.3
    is_target[:2] = [True, False]
    got = length_bins.bin_occupancy(lengths, is_target, num_bins)
    # equal-count bins of the rows ordered by (length, row index): bin b holds ranks
    # [b n / num_bins, (b + 1) n / num_bins) up to how the remainder is spread
    order = np.lexsort((np.arange(n), lengths))
    sizes = np.bincount(length_bins.length_bins(lengths, num_bins), minlength=num_bins)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    expected = [int(is_target[order[edges[b]:edges[b + 1]]].sum()) for b in range(num_bins)]
    assert got["target_rows_per_bin"] == expected
    assert got["bins_with_targets"] == sum(e > 0 for e in expected)
    assert got["target_length_min_median_max"] == [
        float(lengths[is_target].min()), float(np.median(lengths[is_target])),
        float(lengths[is_target].max())]
    assert got["other_length_min_median_max"][1] == float(np.median(lengths[~is_target]))


def test_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(length_bins._common, "RESULTS_DIR", tmp_path)
    path = length_bins.main(["--config", "lm_tweets_v2", "--tiny", "--bins", "3"])
    record = json.loads(path.read_text())
    assert path.name == "length_bins_lm_tweets_v2_tiny.json"
    for r in record["details"]["per_seed"]:
        assert len(r["target_rows_per_bin"]) == 3 and sum(r["target_rows_per_bin"]) > 0
        assert r["bins_with_targets"] == sum(c > 0 for c in r["target_rows_per_bin"])
    assert record["summary"]["max_bins_with_targets"] >= record["summary"]["min_bins_with_targets"]
