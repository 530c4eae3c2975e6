"""How good a selection is: ranking quality of a score and paired loss comparisons.

Shared by the demo and the quality benchmarks, so both report the same numbers the same way.

- `roc_auc`, `precision_at_k`: how well a raw score ranks the target rows of a pool above
  the rest (before length bins and the random half).
- `paired_gain`: a method's test-loss gain over a reference, paired by seed (mean, s.e., t,
  the per-seed gains); `mean_and_se` of any per-seed values (e.g. two gains' difference).
- `oracle_capture`: (L_random - L_method) / (L_random - L_oracle), with a bootstrap interval
  over seeds.

All inputs are plain sequences or numpy arrays; nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PairedGain",
    "counted_forward_passes",
    "mean_and_se",
    "oracle_capture",
    "paired_gain",
    "precision_at_k",
    "roc_auc",
    "roc_curve",
]


def _scores_and_labels(scores: Sequence[float], positive: Sequence[bool]
                       ) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and positive ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or inf values")
    return s, y


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive) for the rows
    where ``positive`` is True: P(score of a positive > score of a negative), ties counting
    one half (the Mann-Whitney U statistic / (n_pos * n_neg)). NaN when a class is empty."""
    s, y = _scores_and_labels(scores, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks (1-based) over runs of tied scores
    start = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    end = np.r_[start[1:], s.size]
    for a, b in zip(start, end, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_at_k(scores: Sequence[float], positive: Sequence[bool], k: int) -> float:
    """Share of positives among the ``k`` highest scores (ties broken by row order)."""
    s, y = _scores_and_labels(scores, positive)
    if not 1 <= k <= s.size:
        raise ValueError(f"k={k} must be in [1, {s.size}]")
    top = np.argsort(-s, kind="mergesort")[:k]
    return float(y[top].mean())


@dataclass(frozen=True)
class PairedGain:
    """Gain of a method over a reference in % of the reference's loss, paired by seed.

    mean_pct, se_pct: mean and standard error over seeds of 100 * (L_ref - L_m) / L_ref;
    t: mean / se (inf when every seed gains the same, nan with one seed); by_seed: the
    per-seed gains, in the seeds' order."""

    mean_pct: float
    se_pct: float
    t: float
    by_seed: tuple[float, ...]


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof 1; nan with one value) of non-empty values."""
    x = np.asarray(values, dtype=np.float64)
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), se


def paired_gain(losses: Sequence[float], reference: Sequence[float]) -> PairedGain:
    """Per-seed relative gain of ``losses`` over ``reference`` (same seeds, same order)."""
    m = np.asarray(losses, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 1 or m.size == 0:
        raise ValueError(f"losses {m.shape} and reference {r.shape} must be equal, non-empty 1-D")
    gain = 100.0 * (r - m) / r
    mean, se = mean_and_se(gain)
    if gain.size < 2:
        t = float("nan")
    else:
        t = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else float("nan"))
    return PairedGain(mean, se, t, tuple(gain.tolist()))


def oracle_capture(
    random: Sequence[float], method: Sequence[float], oracle: Sequence[float], *,
    num_bootstrap: int = 2000, seed: int = 0, level: float = 0.9,
) -> tuple[float, float, float]:
    """(capture, low, high): capture = (mean L_random - mean L_method) /
    (mean L_random - mean L_oracle) over seeds; [low, high] the ``level`` percentile interval
    of the same ratio over seeds resampled with replacement (paired). NaN where the oracle
    does not beat random (the ratio is then meaningless)."""
    r, m, o = (np.asarray(x, dtype=np.float64) for x in (random, method, oracle))
    if not (r.shape == m.shape == o.shape) or r.ndim != 1 or r.size == 0:
        raise ValueError("random, method and oracle need the same seeds (equal 1-D lengths)")

    def ratio(idx: np.ndarray) -> float:
        gap = r[idx].mean() - o[idx].mean()
        return float((r[idx].mean() - m[idx].mean()) / gap) if gap > 0 else float("nan")

    point = ratio(np.arange(r.size))
    if not math.isfinite(point):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = np.array([ratio(rng.integers(0, r.size, r.size)) for _ in range(num_bootstrap)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return point, float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return point, float(low), float(high)


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``scores`` for the ``positive`` rows at every distinct threshold, from
    (0, 0) to (1, 1); tied scores form one step. Both (K + 1,) float64, K distinct scores;
    their trapezoid area equals `roc_auc`. NaN arrays when a class is empty."""
    s, y = _scores_and_labels(scores, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(2, np.nan), np.full(2, np.nan)
    order = np.argsort(-s, kind="mergesort")
    sorted_s, sorted_y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_s)), s.size - 1]
    tp = np.cumsum(sorted_y)[last_of_run]
    fp = (last_of_run + 1) - tp
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def counted_forward_passes(pool: int, val: int, base: int, epochs: int) -> dict[str, int]:
    """Work of a ToV selection and of LESS's per-sample gradients at the same checkpoints,
    counted in forward-pass equivalents (one sample's forward = 1, a training step or a
    per-sample gradient = 3; LESS's projection and storage not counted), for ``pool`` rows,
    ``val`` validation rows, a base (warm-up) set of ``base`` rows and ``epochs``
    checkpoints: {"tov": epochs * (3 base + 3 val + 2 pool), "less": 3 epochs base +
    epochs * (3 pool + 3 val)}. Counted, not measured."""
    return {"tov": epochs * (3 * base + 3 * val + 2 * pool),
            "less": 3 * epochs * base + epochs * (3 * pool + 3 * val)}
