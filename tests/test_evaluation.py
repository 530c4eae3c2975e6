"""tov_datasets.evaluation against brute-force references on random data."""

import itertools
import math

import numpy as np
import pytest

from tov_datasets.evaluation import (
    counted_forward_passes,
    mean_and_se,
    oracle_capture,
    paired_gain,
    precision_at_k,
    roc_auc,
    roc_curve,
)


def brute_auc(s, y):
    pos, neg = s[y], s[~y]
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("n,ties", [(7, False), (40, False), (60, True)])
def test_roc_auc_matches_pair_count(n, ties):
    rng = np.random.default_rng(n)
    s = rng.normal(size=n)
    if ties:
        s = np.round(s, 0)  # many tied scores
    y = rng.random(n) < 0.3
    y[0], y[1] = True, False
    assert roc_auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)


def test_roc_auc_extremes_and_empty_class():
    assert roc_auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert roc_auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert math.isnan(roc_auc([1, 2], [True, True]))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([1, float("nan")], [True, False])


def test_precision_at_k():
    s = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    y = np.array([True, False, False, True, True])
    assert precision_at_k(s, y, 1) == 1.0
    assert precision_at_k(s, y, 3) == pytest.approx(2 / 3)
    assert precision_at_k(s, y, 5) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="k=0"):
        precision_at_k(s, y, 0)


def test_paired_gain_matches_hand_computation():
    ref = np.array([2.0, 2.2, 1.9, 2.1])
    m = np.array([1.9, 2.0, 1.85, 2.05])
    g = 100 * (ref - m) / ref
    out = paired_gain(m, ref)
    assert out.mean_pct == pytest.approx(g.mean())
    assert out.se_pct == pytest.approx(g.std(ddof=1) / 2)
    assert out.t == pytest.approx(g.mean() / (g.std(ddof=1) / 2))
    assert out.by_seed == pytest.approx([5.0, 100 * 0.2 / 2.2, 100 * 0.05 / 1.9, 100 * 0.05 / 2.1])
    assert math.isnan(paired_gain([1.0], [2.0]).se_pct)


def test_mean_and_se_by_hand():
    assert mean_and_se([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0 / 3.0)))
    mean, se = mean_and_se([4.0])
    assert mean == 4.0 and math.isnan(se)


def test_oracle_capture_point_and_interval():
    rng = np.random.default_rng(0)
    r = 2.0 + rng.normal(0, 0.01, 5)
    o = r - 0.2 + rng.normal(0, 0.01, 5)
    m = r - 0.1 + rng.normal(0, 0.01, 5)
    point, low, high = oracle_capture(r, m, o, num_bootstrap=500)
    assert point == pytest.approx((r.mean() - m.mean()) / (r.mean() - o.mean()))
    assert low <= point <= high and 0.3 < low and high < 0.7
    # an oracle that does not beat random gives no capture
    assert all(math.isnan(x) for x in oracle_capture(r, m, r + 0.1))


@pytest.mark.parametrize("n,ties", [(9, False), (50, True)])
def test_roc_curve_points_match_thresholds_and_area_matches_auc(n, ties):
    rng = np.random.default_rng(100 + n)
    s = rng.normal(size=n)
    if ties:
        s = np.round(s, 0)
    y = rng.random(n) < 0.4
    y[0], y[1] = True, False
    fpr, tpr = roc_curve(s, y)
    # reference: one point per distinct threshold t, "score >= t" predicted positive
    thresholds = np.sort(np.unique(s))[::-1]
    ref_fpr = [0.0] + [float(((s >= t) & ~y).sum() / (~y).sum()) for t in thresholds]
    ref_tpr = [0.0] + [float(((s >= t) & y).sum() / y.sum()) for t in thresholds]
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(s, y), abs=1e-12)
    assert np.isnan(roc_curve([1.0, 2.0], [True, True])[0]).all()


def test_counted_forward_passes_sums_each_stage():
    pool, val, base, epochs = 250, 24, 40, 2
    per_epoch_tov = 3 * base + 3 * val + 2 * pool  # train U, train val, paired forward
    per_epoch_less = 3 * base + 3 * pool + 3 * val  # warm-up step, per-sample gradients
    assert counted_forward_passes(pool, val, base, epochs) == {
        "tov": epochs * per_epoch_tov, "less": epochs * per_epoch_less}
