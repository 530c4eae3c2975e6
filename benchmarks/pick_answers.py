"""What each pick of a quality run teaches, read from its rows' answers (chat configurations).

A chat pick's fine-tune learns the answers of the rows it holds. On a labelled-chat
configuration (``chat_labels*``: the target's answers are a few label words) a row whose answer
is one of the target's label words teaches that word, whether it maps the passage the
target's way (a target row) or another way (a ``conflicting`` row). This recomputes the picks
of a finished quality run (`quality.run_selector` at the run's settings: deterministic given
the seed), checks each against the stored result (its source shares, and its raw score's AUC
for a scoring method: a pick that differs stops the run), and measures per pick:

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

    python benchmarks/pick_answers.py --config chat_labels_v2 --threads 1
    python benchmarks/pick_answers.py --config chat_labels --methods embedding,tov,length,maxunc
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

MEASURES = ("label_share", "correct_share", "label_tv", "target_labels")
AUC_ATOL = 1e-3


def answers(rows: Any) -> np.ndarray:
    """(len(rows),) str: each chat row's last assistant message, stripped."""
    return np.asarray([[m["content"] for m in chat if m["role"] == "assistant"][-1].strip()
                       for chat in rows["messages"]], dtype=str)


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
    """Stops unless the recomputed pick has the stored source shares and raw-score AUC."""
    shares = quality.source_shares(s, pick["idx"]) or {}
    want = stored.get("source_shares") or {}
    if any(abs(shares.get(k, 0.0) - want.get(k, 0.0)) > 1e-9 for k in {*shares, *want}):
        raise SystemExit(f"seed {seed} {name}: the recomputed pick's sources {shares} differ "
                         f"from the stored {want}: rerun with the quality run's --threads")
    auc = stored.get("ranking", {}).get("auc")
    if pick["scores"] is not None and auc is not None:
        got = quality.ranking_metrics(s, pick["scores"], {})["auc"]
        if abs(got - auc) > AUC_ATOL:
            raise SystemExit(f"seed {seed} {name}: raw-score AUC {got:.4f} differs from the "
                             f"stored {auc:.4f}")


def seed_records(config_name: str, size: str, seed: int, methods: list[str],
                 stored: dict[tuple[int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pick of ``seed`` (controls and ``methods`` with their derived variants) that
    the quality result holds, recomputed, checked and measured."""
    s = quality.setup(CONFIGS[config_name], size, seed)
    answer, test_answer = answers(s.pool), answers(s.test)
    out = []
    for method in [*quality.CONTROLS, *methods]:
        for name, pick in quality.run_selector(method, s).items():
            if (seed, name) not in stored:
                continue
            check_pick(name, seed, s, pick, stored[(seed, name)])
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
    return {"picks": len(picks), "spearman_with_gain": correlation, "by_method": by_method}


def _finite_mean(values: list[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float("nan")


def stored_picks(path: Path) -> dict[tuple[int, str], dict[str, Any]]:
    record = json.loads(path.read_text())
    return {(r["seed"], r["method"]): r for r in record["details"]["per_seed"]}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--size", choices=["small", "full", "tiny"], default="full")
    ap.add_argument("--quality", type=Path, default=None,
                    help="the quality result whose picks to recompute (default "
                    "benchmarks/results/quality_<config>.json)")
    ap.add_argument("--methods", default="tov,embedding",
                    help="comma list besides the controls; 'tov' brings its derived picks")
    ap.add_argument("--seeds", default=None, help="comma list (default: the result's seeds)")
    ap.add_argument("--merge", type=Path, nargs="+", default=[], metavar="FILE",
                    help="compute nothing: merge these files of runs on other seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/pick_answers_<config>.json")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    source = a.quality or _common.RESULTS_DIR / f"quality_{a.config}.json"
    if not source.is_file():
        raise SystemExit(f"--quality: no such file: {source}")
    stored = stored_picks(source)
    if a.merge:
        records = [r for f in a.merge for r in json.loads(f.read_text())["details"]["picks"]]
    else:
        seeds = ([int(x) for x in a.seeds.split(",")] if a.seeds
                 else sorted({sd for sd, _ in stored}))
        methods = [m for m in a.methods.split(",") if m and m not in quality.CONTROLS]
        records = [r for sd in seeds
                   for r in seed_records(a.config, a.size, sd, methods, stored)]
    summary = associations(records)
    out = a.out or _common.RESULTS_DIR / f"pick_answers_{a.config}.json"
    path = _common.write_result(
        "pick_answers", {"config": a.config, "size": a.size, "quality_file": source.name,
                         "threads": a.threads}, summary, {"picks": records},
        filename=str(out.resolve()))
    _common.print_table([{"method": m, **v} for m, v in summary["by_method"].items()],
                        f"pick_answers {a.config}: {summary['picks']} non-oracle picks; "
                        f"Spearman with gain vs random: " + ", ".join(
                            f"{k} {v:+.2f}" for k, v in summary["spearman_with_gain"].items()))
    return path


if __name__ == "__main__":
    main()
