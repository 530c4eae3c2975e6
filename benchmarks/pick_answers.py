"""What each pick of a quality run teaches, read from its rows' answers (chat configurations).

A chat pick's fine-tune learns the answers of the rows it holds. On a labelled-chat
configuration (``chat_labels*``: the target's answers are a few label words) a row whose answer
is one of the target's label words teaches that word, whether it maps the passage the
target's way (a target row) or another way (a ``conflicting`` row). This recomputes the picks
of a finished quality run (`quality.run_selector` at the run's settings: deterministic given
the seed), checks each against the stored result (its source shares, and its raw score's AUC
for a scoring method: a pick that differs stops the run), and measures per pick. A result whose
records hold each pick's rows (``idx``, stored by `quality.py` since 2026-12-04) is read
without selecting again; its raw scores are not stored, so ``score_by_label`` is left out.
The measures:

- ``label_share``: share of its rows whose answer is one of the test set's answer words;
- ``correct_share``: among those, the share of target rows (the rest teach a wrong mapping);
- ``label_tv``: total variation distance between those rows' answer-word distribution and
  the test set's (0: the pick teaches the words as often as the test asks them; 1: disjoint);
- ``target_labels``: how many distinct answer words its target rows carry;
- ``answers``: the counts of each answer word among its label rows, and for a scoring method
  ``score_by_label``: the mean raw score of the target and of the other label rows per word.

Across the non-oracle picks of every seed it reports the Spearman correlation of each
measure with the pick's gain over random (the stored test losses, paired by seed).

Why (after ``chat_labels_v2``, before any pick's answers were looked at): ToV's pick without
its random half held more target rows than embedding similarity's (54% against 42%) and
fewer conflicting ones (29% against 58%), yet lost to random (-23% +- 29) where embedding
gained +34% +- 10. Stated before the picks were recomputed: H13, across the non-oracle picks
the gain falls as ``label_tv`` rises (Spearman < 0); H14, ToV's picks (``tov``,
``tov_score_only``) have a larger mean ``label_tv`` than embedding's. Added while the
first run went (only two embedding picks' measures seen): the same two on ``chat_labels``
(seeds 0-2, with its length and Max-Uncertainty picks), a replication on other draws. A
post-hoc diagnosis: it decides nothing in the library.

``--controls`` tests the mechanism H13 names without any selector: per seed, three picks of
n rows drawn from the pool by their answers alone, each fine-tuned with the quality run's
budget (its stored calibration) and compared with the stored random pick's loss:
``balanced``: target rows whose answer words follow the test set's shares; ``skewed``: target
rows of which two words drawn by the seed take 40% of n each (as far as the pool holds them),
the rest spread over the other words by their test shares; ``half_conflicting``: n/2 target
and n/2 conflicting rows, each half spread by the test shares. The stored oracle pick is
fine-tuned again first: its loss must equal the stored one (the fine-tune is deterministic),
else the run stops. Stated before any control ran: H15, ``skewed`` gains less than
``balanced`` by more than 2 s.e. of the paired difference; H16, ``half_conflicting`` beats
random by more than 2 s.e.

LESS on ``chat_labels_v2`` (after its result: ``less_unprojected`` -95% +- 56 vs random with 67%
target and 33% conflicting rows, where ``half_conflicting`` gained +21%), stated before any of
LESS's picks was recomputed (seeds in order from 10, one 1-thread process at a time, as many as
a session allows: each costs LESS's selection, 41-57 min): H28, LESS's picks have a larger mean
``label_tv`` than embedding's picks of the same seeds; H29, LESS's raw score reads the answer
word: its ``word_corr`` (mean over those seeds) > 0.8. H13 is recomputed with LESS's picks
added (a replication on picks it has not seen). A post-hoc diagnosis: it decides nothing.

    python benchmarks/pick_answers.py --config chat_labels_v2 --threads 1
    python benchmarks/pick_answers.py --config chat_labels --methods embedding,tov,length,maxunc
    python benchmarks/pick_answers.py --config chat_labels_v2 --controls --threads 1
    python benchmarks/pick_answers.py --config chat_labels_v2 --methods less_unprojected \
        --seeds 10 --out pick_answers_less_seed10.json   # one seed; then --merge the files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import _common, quality  # noqa: E402
from benchmarks.fidelity import spearman  # noqa: E402
from benchmarks.quality_configs import CONFIGS  # noqa: E402
from tov_datasets.evaluation import paired_gain  # noqa: E402

MEASURES = ("label_share", "correct_share", "label_tv", "target_labels")
AUC_ATOL = 1e-3
SKEW_WORDS, SKEW_SHARE = 2, 0.4  # the skewed control: two words take 40% of n each
REFIT_ATOL = 1e-4


def pick_measures(answer: np.ndarray, is_target: np.ndarray, idx: np.ndarray,
                  test_answer: np.ndarray) -> dict[str, Any]:
    """The module doc's measures of the pick ``idx`` (int rows of the pool) given every pool
    row's ``answer`` and ``is_target`` (N,) and the test rows' answers."""
    words, test_counts = np.unique(test_answer, return_counts=True)
    picked, target = answer[idx], is_target[idx]
    label = np.isin(picked, words)
    counts = np.array([(picked[label] == w).sum() for w in words])
    taught = counts / counts.sum() if counts.sum() else np.zeros(len(words))
    return {"label_share": float(label.mean()),
            "correct_share": float(target[label].mean()) if label.any() else float("nan"),
            "label_tv": (0.5 * float(np.abs(taught - test_counts / test_counts.sum()).sum())
                         if label.any() else 1.0),
            "target_labels": int(np.unique(picked[target & label]).size),
            "answers": {str(w): int(c) for w, c in zip(words, counts, strict=True)}}


def score_by_label(scores: np.ndarray, answer: np.ndarray, is_target: np.ndarray,
                   words: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean raw score of the target rows and of the other rows answered with each word."""
    out: dict[str, dict[str, float]] = {"target": {}, "other": {}}
    for kind, rows in (("target", is_target), ("other", ~is_target)):
        for w in words:
            hit = rows & (answer == w)
            if hit.any():
                out[kind][str(w)] = float(scores[hit].mean())
    return out


def check_pick(name: str, seed: int, s: quality.Setup, pick: dict[str, Any],
               stored: dict[str, Any]) -> None:
    """Stops unless the recomputed pick has the stored source shares (or, where none are
    stored, target share) and raw-score AUC."""
    shares = quality.source_shares(s, pick["idx"]) or {}
    want = stored.get("source_shares") or {}
    if not want:  # a result from before source shares were stored: the target share
        shares = {"target": float(s.is_target[pick["idx"]].mean())}
        want = {"target": stored["target_share"]}
    if any(abs(shares.get(k, 0.0) - want.get(k, 0.0)) > 1e-9 for k in {*shares, *want}):
        raise SystemExit(f"seed {seed} {name}: the recomputed pick's sources {shares} differ "
                         f"from the stored {want}: rerun with the quality run's --threads")
    auc = stored.get("ranking", {}).get("auc")
    if pick["scores"] is not None and auc is not None:
        got = quality.ranking_metrics(s, pick["scores"], {})["auc"]
        if abs(got - auc) > AUC_ATOL:
            raise SystemExit(f"seed {seed} {name}: raw-score AUC {got:.4f} differs from the "
                             f"stored {auc:.4f}")


def seed_picks(s: quality.Setup, method: str,
               stored: dict[tuple[int, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``method``'s picks of seed ``s.seed`` (with its derived variants) that the quality
    result holds: read from the records where each holds its rows (``idx``, no raw scores),
    else recomputed and checked against the records."""
    names = quality.tov_picks(s.config) if method == "tov" else [method]
    held = [stored[(s.seed, name)] for name in names if (s.seed, name) in stored]
    if held and all("idx" in r for r in held):
        return {r["method"]: {"idx": np.asarray(r["idx"], np.int64), "scores": None}
                for r in held}
    picks = {name: pick for name, pick in quality.run_selector(method, s).items()
             if (s.seed, name) in stored}
    for name, pick in picks.items():
        check_pick(name, s.seed, s, pick, stored[(s.seed, name)])
    return picks


def seed_records(config_name: str, size: str, seed: int, methods: list[str],
                 stored: dict[tuple[int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pick of ``seed`` (controls and ``methods`` with their derived variants) that
    the quality result holds, measured (`seed_picks`)."""
    s = quality.setup(CONFIGS[config_name], size, seed)
    answer, test_answer = quality.answers(s.pool), quality.answers(s.test)
    out = []
    for method in [*quality.CONTROLS, *methods]:
        for name, pick in seed_picks(s, method, stored).items():
            rec = {"seed": seed, "method": name, "test_loss": stored[(seed, name)]["test_loss"],
                   **pick_measures(answer, s.is_target, pick["idx"], test_answer),
                   "idx": np.asarray(pick["idx"]).tolist()}
            if pick["scores"] is not None:
                rec["score_by_label"] = score_by_label(
                    np.asarray(pick["scores"], np.float64), answer, s.is_target,
                    np.unique(test_answer))
            out.append(rec)
            print(f"seed {seed} {name:16s} " + " ".join(
                f"{k} {rec[k]:.3f}" for k in MEASURES), flush=True)
    return out


def associations(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each non-oracle pick's gain over random (%, paired by seed); the Spearman correlation
    of every measure with it; each method's mean of every measure."""
    random = {r["seed"]: r["test_loss"] for r in records if r["method"] == "random"}
    picks = [r for r in records if r["method"] != "oracle" and r["seed"] in random]
    gain = np.array([100 * (random[r["seed"]] - r["test_loss"]) / random[r["seed"]]
                     for r in picks])
    by_method: dict[str, dict[str, float]] = {}
    for m in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == m]
        by_method[m] = {k: _finite_mean([r[k] for r in mine]) for k in MEASURES}
        by_method[m]["picks"] = len(mine)
    correlation = {}
    for k in MEASURES:
        x = np.array([r[k] for r in picks], dtype=np.float64)
        have = np.isfinite(x)
        correlation[k] = spearman(x[have], gain[have])
    return {"picks": len(picks), "spearman_with_gain": correlation, "by_method": by_method,
            "word_effect": word_effect(records)}


def word_effect(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per scoring method, means over seeds of: ``word_spread``, the range of the target
    rows' mean raw score over answer words; ``mapping_gap``, the mean over words of the
    target rows' mean score minus the other rows' with the same answer; ``word_corr``, the
    Pearson correlation over words of those two means. A score that reads the mapping has a
    positive gap; one that reads only the answer word has gap 0 and correlation 1."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        by = r.get("score_by_label")
        if not by:
            continue
        words = sorted(set(by["target"]) & set(by["other"]))
        t = np.array([by["target"][w] for w in words])
        o = np.array([by["other"][w] for w in words])
        stats = out.setdefault(r["method"], {"word_spread": [], "mapping_gap": [],
                                             "word_corr": []})
        stats["word_spread"].append(float(np.ptp(t)) if t.size else float("nan"))
        stats["mapping_gap"].append(float((t - o).mean()) if t.size else float("nan"))
        varied = t.size > 2 and t.std() > 0 and o.std() > 0
        stats["word_corr"].append(float(np.corrcoef(t, o)[0, 1]) if varied else float("nan"))
    return {m: {k: _finite_mean(v) for k, v in st.items()} | {"seeds": len(st["word_spread"])}
            for m, st in out.items()}


def _finite_mean(values: list[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


def word_quotas(shares: np.ndarray, n: int, available: np.ndarray) -> np.ndarray:
    """(W,) int summing to n: n split over words in proportion to ``shares`` (largest
    remainder), none above its ``available`` rows; a word's shortfall goes one row at a time
    to the word with room furthest below its share."""
    if available.sum() < n:
        raise ValueError(f"{available.sum()} rows for a pick of {n}")
    raw = shares * n
    quota = np.floor(raw).astype(np.int64)
    quota[np.argsort(quota - raw, kind="stable")[: n - quota.sum()]] += 1
    quota = np.minimum(quota, available)
    while quota.sum() < n:
        room = np.flatnonzero(quota < available)
        quota[room[np.argmax(raw[room] - quota[room])]] += 1
    return quota


def draw_by_word(rows: np.ndarray, answer: np.ndarray, words: np.ndarray, shares: np.ndarray,
                 n: int, rng: np.random.Generator) -> np.ndarray:
    """n of ``rows`` drawn without replacement, `word_quotas` of them per answer word."""
    by_word = [rows[answer[rows] == w] for w in words]
    quota = word_quotas(shares, n, np.array([r.size for r in by_word]))
    return np.concatenate([rng.choice(r, q, replace=False) for r, q in zip(by_word, quota,
                                                                          strict=True)])


def control_picks(answer: np.ndarray, is_target: np.ndarray, test_answer: np.ndarray, n: int,
                  seed: int) -> dict[str, np.ndarray]:
    """The ``--controls`` picks (module doc), each (n,) ascending pool rows."""
    rng = np.random.default_rng([seed, 13])
    words, counts = np.unique(test_answer, return_counts=True)
    shares = counts / counts.sum()
    label = np.isin(answer, words)
    target, conflicting = np.flatnonzero(is_target & label), np.flatnonzero(~is_target & label)
    skew = np.zeros(len(words))
    dominant = rng.choice(len(words), SKEW_WORDS, replace=False)
    skew[dominant] = SKEW_SHARE
    rest = np.setdiff1d(np.arange(len(words)), dominant)
    skew[rest] = (1 - SKEW_WORDS * SKEW_SHARE) * shares[rest] / shares[rest].sum()
    half = n // 2
    picks = {"balanced": draw_by_word(target, answer, words, shares, n, rng),
             "skewed": draw_by_word(target, answer, words, skew, n, rng),
             "half_conflicting": np.concatenate([
                 draw_by_word(target, answer, words, shares, n - half, rng),
                 draw_by_word(conflicting, answer, words, shares, half, rng)])}
    return {k: np.sort(v) for k, v in picks.items()}


def control_records(config_name: str, size: str, seed: int, budget: dict[str, Any],
                    stored: dict[tuple[int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed ``seed``'s control picks, measured and fine-tuned with ``budget``, after the
    stored oracle pick's loss is reproduced."""
    s = quality.setup(CONFIGS[config_name], size, seed)
    answer, test_answer = quality.answers(s.pool), quality.answers(s.test)
    oracle = quality.run_selector("oracle", s)["oracle"]["idx"]
    refit, _ = quality.pick_test_loss(s, oracle, budget)
    if abs(refit - stored[(seed, "oracle")]["test_loss"]) > REFIT_ATOL:
        raise SystemExit(f"seed {seed}: the oracle pick fine-tuned again gives test loss "
                         f"{refit:.6f}, the stored {stored[(seed, 'oracle')]['test_loss']:.6f}")
    out = []
    for arm, idx in control_picks(answer, s.is_target, test_answer, s.sizes.n, seed).items():
        loss, curve = quality.pick_test_loss(s, idx, budget)
        rec = {"seed": seed, "method": arm, "test_loss": loss, "test_curve": curve,
               **pick_measures(answer, s.is_target, idx, test_answer), "idx": idx.tolist()}
        out.append(rec)
        print(f"seed {seed} {arm:16s} loss {loss:.4f} " + " ".join(
            f"{k} {rec[k]:.3f}" for k in MEASURES), flush=True)
    return out


def control_summary(records: list[dict[str, Any]],
                    stored: dict[tuple[int, str], dict[str, Any]]) -> dict[str, Any]:
    """Each control arm's gain over the stored random pick (% of its loss, paired by seed),
    and the paired differences H15 and H16 read (`quality.paired_difference`, points)."""
    losses: dict[str, dict[int, float]] = {}
    for r in records:
        losses.setdefault(r["method"], {})[r["seed"]] = r["test_loss"]
    out: dict[str, Any] = {}
    for arm, by_seed in losses.items():
        seeds = sorted(by_seed)
        g = paired_gain([by_seed[sd] for sd in seeds],
                        [stored[(sd, "random")]["test_loss"] for sd in seeds])
        out[arm] = {"seeds": seeds, "improvement_pct": g.mean_pct,
                    "improvement_se_pct": g.se_pct, "t": g.t,
                    "improvement_pct_by_seed": list(g.by_seed)}
    for a in ("skewed", "half_conflicting"):
        if a in out and "balanced" in out:
            out[f"{a}_minus_balanced"] = quality.paired_difference(out[a], out["balanced"])
    return out


def merge_picks(files: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The picks of several runs, one record per (seed, method) in first-seen order; a
    pick two runs both hold must have the same rows."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for r in (r for picks in files for r in picks):
        key = (r["seed"], r["method"])
        if key in out and out[key]["idx"] != r["idx"]:
            raise SystemExit(f"--merge: seed {key[0]} {key[1]}: two files hold different rows")
        out.setdefault(key, r)
    return list(out.values())


def stored_picks(path: Path) -> tuple[dict[tuple[int, str], dict[str, Any]], dict[str, Any]]:
    """A quality result's per-seed records by (seed, method), and its fine-tune budget."""
    record = json.loads(path.read_text())
    details = record["details"]
    return ({(r["seed"], r["method"]): r for r in details["per_seed"]},
            details["calibration"])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--size", choices=["small", "full", "tiny"], default="full")
    ap.add_argument("--quality", type=Path, default=None,
                    help="the quality result whose picks to recompute (default "
                    "benchmarks/results/quality_<config>.json)")
    ap.add_argument("--methods", default="tov,embedding",
                    help="comma list besides the controls; 'tov' brings its derived picks")
    ap.add_argument("--controls", action="store_true",
                    help="fine-tune the control picks drawn by answer (module doc) instead")
    ap.add_argument("--seeds", default=None, help="comma list (default: the result's seeds)")
    ap.add_argument("--merge", type=Path, nargs="+", default=[], metavar="FILE",
                    help="compute nothing: merge these files of runs on other seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/pick_answers[_controls]_<config>.json")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    source = a.quality or _common.RESULTS_DIR / f"quality_{a.config}.json"
    if not source.is_file():
        raise SystemExit(f"--quality: no such file: {source}")
    stored, budget = stored_picks(source)
    if a.merge:
        records = merge_picks([json.loads(f.read_text())["details"]["picks"] for f in a.merge])
    else:
        seeds = ([int(x) for x in a.seeds.split(",")] if a.seeds
                 else sorted({sd for sd, _ in stored}))
        methods = [m for m in a.methods.split(",") if m and m not in quality.CONTROLS]
        records = [r for sd in seeds for r in (
            control_records(a.config, a.size, sd, budget, stored) if a.controls
            else seed_records(a.config, a.size, sd, methods, stored))]
    stem = "pick_answers_controls" if a.controls else "pick_answers"
    out = a.out or _common.RESULTS_DIR / f"{stem}_{a.config}.json"
    config = {"config": a.config, "size": a.size, "quality_file": source.name,
              "threads": a.threads, "budget": {k: budget[k] for k in ("epochs", "lr")}}
    if a.controls:
        summary = control_summary(records, stored)
        path = _common.write_result(stem, config, summary, {"picks": records},
                                    filename=str(out.resolve()))
        _common.print_table(
            [{"arm": k, "gain_%": v["improvement_pct"], "se_%": v["improvement_se_pct"]}
             for k, v in summary.items() if "seeds" in v and "t" in v],
            f"controls {a.config}: skewed - balanced {_pp(summary, 'skewed')}, "
            f"half_conflicting - balanced {_pp(summary, 'half_conflicting')}")
        return path
    summary = associations(records)
    path = _common.write_result(stem, config, summary, {"picks": records},
                                filename=str(out.resolve()))
    _common.print_table([{"method": m, **v} for m, v in summary["by_method"].items()],
                        f"pick_answers {a.config}: {summary['picks']} non-oracle picks; "
                        f"Spearman with gain vs random: " + ", ".join(
                            f"{k} {v:+.2f}" for k, v in summary["spearman_with_gain"].items()))
    return path


def _pp(summary: dict[str, Any], arm: str) -> str:
    d = summary.get(f"{arm}_minus_balanced")
    return "n/a" if d is None else f"{d['mean_pp']:+.2f} +- {d['se_pp']:.2f} points"


if __name__ == "__main__":
    main()
