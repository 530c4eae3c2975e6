"""Many targets in one run (issue 17): one K-target `tov_select` against K single-target runs,
side by side in one process, on SmolLM2 with real text targets.

Targets (distinct validation sets, each with rows of its own source in the pool): tweets
(WNUT-16), BBC sport / tech / business, Wikipedia People / Geography / Biology / History;
the pool also holds rows of other sources (Wikipedia Arts and Mathematics, BBC politics and
entertainment). Every row has min..max tokens. For K in --ks the first K targets of
TARGETS are scored: one `tov_select(val={name: Dataset})` run and K `tov_select(val=Dataset)`
runs (the single-target runs of target k are shared by every K >= k), alternating, for
``repeats`` rounds; wall-time medians. Reported:

- speed-up = (sum of the K single-target walls) / (the K-target wall), beside the counted
  bound: the ratio of the counted forward-pass equivalents (FPE: a training step or a
  backward = 3 forwards) of the two, K * L (3U + 3V + 2P) / L (3U + 3KV + (1 + K) P), which
  tends to 2K / (1 + K) when scoring dominates (U base rows, V validation rows per target,
  P pool rows, L epochs; `less_vs_tov.counted_fpe`);
- measured FPE per pool sample (wall / one plain forward of the pool, measured in the same
  run) and the counted FPE of LESS optimised with its gradient datastore reused for the K
  targets (`less_vs_tov.counted_fpe`; LESS itself is not run here: its per-sample pool
  gradients do not fit this CPU budget);
- per target, the K-target run's scores against that target's single-target run: Spearman,
  top-n overlap of the raw scores and overlap of the selections. With one epoch the
  interleaved and parallel variants coincide (the base never continues from a val update);
  a second measurement at --fidelity-k targets and --fidelity-epochs epochs compares the
  interleaved variant, whose base continues from the MEAN of the K val adapters, with
  single-target runs whose base continues from their own val adapter.

    python benchmarks/multi_target.py --threads 1
    python benchmarks/multi_target.py --smoke   # a tiny random model, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks.fidelity import spearman, topk_overlap  # noqa: E402
from benchmarks.less_vs_tov import counted_fpe, forward_time  # noqa: E402

# Target order: the K-target run scores the first K.
TARGETS = ("tweets", "bbc_sport", "wiki_people", "bbc_tech", "wiki_geography", "bbc_business",
           "wiki_biology", "wiki_history")
# name -> (corpus, its category / topic); tweets come from WNUT-16
SOURCES = {
    "bbc_sport": ("bbc", "sports"), "bbc_tech": ("bbc", "tech"),
    "bbc_business": ("bbc", "business"), "wiki_people": ("wiki", "People"),
    "wiki_geography": ("wiki", "Geography"),
    "wiki_biology": ("wiki", "Biology and health sciences"),
    "wiki_history": ("wiki", "History"),
    "wiki_arts": ("wiki", "Arts"), "wiki_mathematics": ("wiki", "Mathematics"),
    "bbc_politics": ("bbc", "politics"), "bbc_entertainment": ("bbc", "entertainment"),
}
OTHERS = ("wiki_arts", "wiki_mathematics", "bbc_politics", "bbc_entertainment")
# Sizes fixed before the full run (CPU, one thread: about 20 minutes in all). P = 8 x 6 +
# 4 x 8 = 80 pool rows; U = P / 5, V = P / 8 per target, n = P / 5 per target.
FULL = {"pool_per_target": 6, "pool_per_other": 8, "val_size": 10, "base_size": 16, "n": 16,
        "min_tokens": 16, "max_tokens": 24, "epochs": 1, "repeats": 2, "ks": [1, 2, 4, 8],
        "fidelity_k": 4, "fidelity_epochs": 2, "fidelity_variants": ["interleaved"],
        "lr": 1e-3, "batch_size": 8, "max_length": 48}
SMOKE = {"pool_per_target": 4, "pool_per_other": 4, "val_size": 3, "base_size": 4, "n": 4,
         "epochs": 1, "repeats": 1, "ks": [1, 2, 4], "fidelity_k": 2, "fidelity_epochs": 2,
         "fidelity_variants": ["interleaved", "parallel"], "lr": 1e-2, "batch_size": 4,
         "max_length": 32}


def _rows_by_source(tokenizer: Any, sizes: dict[str, Any], seed: int) -> dict[str, list[str]]:
    """{source: texts of min..max tokens} for every target and other source, at least as
    many as the pool and validation sets need (real corpora from `tov_datasets.assets`)."""
    from tov_datasets import assets
    from tov_datasets.textrows import detokenize, pack, text_rows, token_length

    rng = np.random.default_rng(seed)
    length = token_length(tokenizer)
    lo, hi = sizes["min_tokens"], sizes["max_tokens"]
    need = sizes["pool_per_target"] + sizes["val_size"]
    wnut = assets.wnut16()
    tweets = [detokenize(wnut[int(i)]["tokens"]) for i in rng.permutation(len(wnut))[:2000]]
    out = {"tweets": pack(tweets, "\n", length, lo, hi)[:need]}
    corpora = {"bbc": (assets.bbc_news(), "category"), "wiki": (assets.wiki_summaries(), "topic")}
    for name, (corpus, label) in SOURCES.items():
        ds, column = corpora[corpus]
        texts = [t for t, c in zip(ds["text"], ds[column], strict=True) if c == label]
        k = need if name in TARGETS else sizes["pool_per_other"]
        out[name] = [r["text"] for r in text_rows(texts, rng, length, lo, hi, k, name)][:k]
    for name, rows in out.items():
        want = need if name in TARGETS else sizes["pool_per_other"]
        if len(rows) < want:
            raise ValueError(f"only {len(rows)} rows of {name}; {want} needed")
    return out


def _tiny_rows(sizes: dict[str, Any], seed: int) -> dict[str, list[str]]:
    """Synthetic rows for --smoke: each source its own slice of the tiny vocabulary."""
    from tests import tiny

    rng = np.random.default_rng(seed)
    sources = [*TARGETS, *OTHERS]
    out = {}
    for i, name in enumerate(sources):
        vocab = tiny.WORDS[(3 * i) % len(tiny.WORDS):][:6] or tiny.WORDS[:6]
        k = (sizes["pool_per_target"] + sizes["val_size"] if name in TARGETS
             else sizes["pool_per_other"])
        out[name] = [" ".join(rng.choice(vocab, rng.integers(3, 9))) for _ in range(k)]
    return out


def setup(smoke: bool, seed: int = 0) -> dict[str, Any]:
    """Model, tokenizer, LoRA config, the pool (Dataset: text, source) and the targets'
    validation sets ({name: Dataset}), sizes."""
    from datasets import Dataset

    from tov_datasets import models

    sizes = dict(SMOKE if smoke else FULL)
    if smoke:
        from tests import tiny

        tokenizer = tiny.tokenizer()
        model = tiny.causal_lm(tokenizer)
        rows = _tiny_rows(sizes, seed)
    else:
        from tov_datasets import assets

        model, tokenizer = assets.load_demo_model()
        rows = _rows_by_source(tokenizer, sizes, seed)
    per_target = sizes["pool_per_target"]
    pool = [{"text": t, "source": name} for name in TARGETS for t in rows[name][:per_target]]
    pool += [{"text": t, "source": name} for name in OTHERS for t in rows[name]]
    order = np.random.default_rng(seed).permutation(len(pool))
    vals = {name: Dataset.from_dict({"text": rows[name][per_target:]}) for name in TARGETS}
    return {"model": model, "tokenizer": tokenizer,
            "lora": models.default_lora_config("causal_lm", model=model),
            "pool": Dataset.from_list([pool[i] for i in order]), "vals": vals,
            "sizes": sizes}


def _scores(result: Any, column: str) -> np.ndarray:
    """float64 (P,) scores of one column of a `ToVResult.scores`, in pool row order."""
    table = result.scores.data
    rows = table.column("tov_row").to_numpy()
    scores = np.empty(len(rows))
    scores[rows] = table.column(column).to_numpy()
    return scores


def _selected_rows(selected: Any) -> set[int]:
    return set(selected.data.column("tov_row").to_numpy().tolist())


def run(s: dict[str, Any], targets: list[str] | str, variant: str, epochs: int
        ) -> dict[str, Any]:
    """One `tov_select` run: a single target (a name: ``val`` a Dataset, column tov_score)
    or several (a list: ``val`` {name: Dataset}). -> wall seconds, stage timings, scores and
    selected rows per target."""
    from tov_datasets import tov_select

    sz = s["sizes"]
    single = isinstance(targets, str)
    val = s["vals"][targets] if single else {t: s["vals"][t] for t in targets}
    t0 = time.perf_counter()
    r = tov_select(s["model"], s["tokenizer"], s["pool"], val, n=sz["n"],
                   base_size=sz["base_size"], epochs=epochs, variant=variant, lr=sz["lr"],
                   batch_size=sz["batch_size"], max_length=sz["max_length"], lora=s["lora"],
                   seed=0)
    wall = time.perf_counter() - t0
    if single:
        scores = {targets: _scores(r, "tov_score")}
        selected = {targets: _selected_rows(r.selected)}
    else:
        scores = {t: _scores(r, f"tov_score_{t}") for t in targets}
        selected = {t: _selected_rows(r.per_target[t]) for t in targets}
    return {"wall_s": wall, "stages": {k: float(v) for k, v in r.timings.items()},
            "scores": scores, "selected": selected}


def fidelity(multi: dict[str, Any], singles: dict[str, dict[str, Any]], n: int
             ) -> dict[str, dict[str, float]]:
    """Per target: Spearman and top-n overlap of the multi-target run's scores against that
    target's single-target run, and the overlap of their selections (shared / n)."""
    out = {}
    for t, scores in multi["scores"].items():
        ref = singles[t]["scores"][t]
        out[t] = {"spearman": spearman(scores, ref), "topn_overlap": topk_overlap(scores, ref, n),
                  "selected_overlap": len(multi["selected"][t] & singles[t]["selected"][t]) / n,
                  "max_abs_score_diff": float(np.abs(scores - ref).max())}
    return out


def _counted(P: int, sz: dict[str, Any], K: int, epochs: int) -> dict[str, float]:
    """Counted FPE per pool sample: one K-target run, K single-target runs, LESS optimised
    with its datastore reused for K targets, and the bound (K single / one K-target)."""
    multi = counted_fpe(P, sz["val_size"], targets=K, epochs=epochs, base_size=sz["base_size"])
    single = counted_fpe(P, sz["val_size"], epochs=epochs, base_size=sz["base_size"])["tov"]
    return {"tov_multi": multi["tov"], "tov_singles": K * single,
            "less_optimised_amortised": multi["less"], "bound": K * single / multi["tov"]}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model and synthetic rows -> multi_target_smoke.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    s = setup(a.smoke)
    sz = s["sizes"]
    P = len(s["pool"])
    ks, epochs = sz["ks"], sz["epochs"]
    singles_needed = list(TARGETS[:max(ks)])
    jobs = [("multi", K) for K in ks] + [("single", t) for t in singles_needed]
    walls: dict[str, list[float]] = {f"multi_k{K}": [] for K in ks}
    walls.update({f"single_{t}": [] for t in singles_needed})
    walls["forward"] = []
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in walls if k != "forward"}
    first: dict[str, dict[str, Any]] = {}
    fwd = {"model": s["model"], "lora": s["lora"], "pool": s["pool"],
           "tokenizer": s["tokenizer"], "sizes": sz}
    # untimed: first-call costs (allocator, lazy imports, kernel dispatch) on a pool slice
    run({**s, "pool": s["pool"].select(range(min(2 * sz["batch_size"], P)))},
        list(TARGETS[:2]), "interleaved", epochs)
    started = time.perf_counter()
    for rep in range(sz["repeats"]):
        for kind, what in (jobs if rep % 2 == 0 else jobs[::-1]):
            key = f"multi_k{what}" if kind == "multi" else f"single_{what}"
            r = run(s, list(TARGETS[:what]) if kind == "multi" else what, "interleaved", epochs)
            walls[key].append(r["wall_s"])
            stages[key].append(r["stages"])
            first.setdefault(key, r)
            print(f"[{time.perf_counter() - started:7.1f}s] repeat {rep} {key:22s} "
                  f"{r['wall_s']:7.1f}s", flush=True)
        walls["forward"].append(forward_time(fwd))
    med = {k: _common.median(v) for k, v in walls.items()}
    rows, per_k = [], {}
    for K in ks:
        singles_wall = sum(med[f"single_{t}"] for t in TARGETS[:K])
        counted = _counted(P, sz, K, epochs)
        fid = fidelity(first[f"multi_k{K}"], {t: first[f"single_{t}"] for t in TARGETS[:K]},
                       sz["n"])
        per_k[K] = {"multi_wall_s": med[f"multi_k{K}"], "singles_wall_s": singles_wall,
                    "speedup": singles_wall / med[f"multi_k{K}"],
                    "fpe_per_sample": med[f"multi_k{K}"] / med["forward"],
                    "singles_fpe_per_sample": singles_wall / med["forward"],
                    "counted": counted, "fidelity": fid}
        rows.append({"K": K, "multi_s": med[f"multi_k{K}"], "K_singles_s": singles_wall,
                     "speedup": per_k[K]["speedup"], "counted_bound": counted["bound"],
                     "speedup/bound": per_k[K]["speedup"] / counted["bound"],
                     "fpe_measured": per_k[K]["fpe_per_sample"],
                     "fpe_counted": counted["tov_multi"],
                     "less_amortised_fpe_counted": counted["less_optimised_amortised"],
                     "min_topn_overlap": min(f["topn_overlap"] for f in fid.values()),
                     "min_spearman": min(f["spearman"] for f in fid.values())})
    # the interleaved variant's mean-of-val-adapters base against single-target runs, and
    # the parallel variant, over several epochs (one round, scores are deterministic)
    fk, fe = sz["fidelity_k"], sz["fidelity_epochs"]
    fidelity_runs = {}
    for variant in sz["fidelity_variants"]:
        multi = run(s, list(TARGETS[:fk]), variant, fe)
        singles = {t: run(s, t, variant, fe) for t in TARGETS[:fk]}
        fidelity_runs[variant] = {
            "multi_wall_s": multi["wall_s"],
            "singles_wall_s": sum(r["wall_s"] for r in singles.values()),
            "fidelity": fidelity(multi, singles, sz["n"])}
        print(f"[{time.perf_counter() - started:7.1f}s] fidelity {variant} K={fk} "
              f"epochs={fe} done", flush=True)
    k4 = per_k[4]
    summary: dict[str, float] = {f"speedup_vs_single_runs_k{K}": per_k[K]["speedup"]
                                 for K in ks}
    summary.update({f"counted_bound_k{K}": per_k[K]["counted"]["bound"] for K in ks})
    summary.update({
        "speedup_over_bound_k4": k4["speedup"] / k4["counted"]["bound"],
        "fpe_per_sample_k4": k4["fpe_per_sample"],
        "counted_fpe_per_sample_k4": k4["counted"]["tov_multi"],
        "less_amortised_counted_fpe_per_sample_k4": k4["counted"]["less_optimised_amortised"],
        # counted against counted: LESS is not run here (module doc)
        "speedup_vs_less_amortised_k4": (k4["counted"]["less_optimised_amortised"]
                                         / k4["counted"]["tov_multi"]),
        "min_topn_overlap_vs_single": min(f["topn_overlap"] for f in k4["fidelity"].values()),
        "min_spearman_vs_single": min(f["spearman"] for f in k4["fidelity"].values()),
        "forward_s_per_sample": med["forward"] / P,
    })
    for variant, r in fidelity_runs.items():
        summary[f"min_topn_overlap_vs_single_{variant}_{fe}ep"] = min(
            f["topn_overlap"] for f in r["fidelity"].values())
        summary[f"min_spearman_vs_single_{variant}_{fe}ep"] = min(
            f["spearman"] for f in r["fidelity"].values())
    config = {"model": "tiny random causal LM" if a.smoke else "SmolLM2-135M-Instruct (fp32)",
              "size": "smoke" if a.smoke else "full", "pool": P,
              "pool_sources": sorted(set(s["pool"]["source"])), "targets": list(TARGETS),
              "sizes": sz, "threads": a.threads, "device": "cpu", "variant": "interleaved",
              "lora": {"r": s["lora"].r, "alpha": s["lora"].lora_alpha,
                       "target_modules": sorted(s["lora"].target_modules)},
              "less": "counted only (less_vs_tov.counted_fpe: 4 checkpoints, 5% warm-up)"}
    details = {"walls": walls, "stages": stages,
               "per_k": {str(K): v for K, v in per_k.items()},
               "fidelity_multi_epoch": fidelity_runs}
    name = "multi_target_smoke.json" if a.smoke else "multi_target.json"
    if a.out_dir:
        a.out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((a.out_dir / name).resolve()) if a.out_dir else name
    path = _common.write_result("multi_target", config, summary, details, filename)
    _common.print_table(rows, f"multi_target pool={P} epochs={epochs} on {_common.machine()}")
    _common.print_table(
        [{"variant": v, "epochs": fe, "K": fk, "target": t, **f}
         for v, r in fidelity_runs.items() for t, f in r["fidelity"].items()],
        "per-target agreement with single-target runs")
    return path


if __name__ == "__main__":
    main()
