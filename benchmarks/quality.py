"""Quality: does selecting n pool rows with ToV lower the target test loss more than Random,
Max-Uncertainty and LESS, after the same LoRA fine-tune?

For each configuration (it, ner), seed and method: select n rows of the pool, LoRA fine-tune
a fresh copy of the same base model on them with a fixed budget (same epochs, lr, batch
size for every method, so the same number of steps), and measure the token-mean log-loss on
the target test set. Improvement over random is paired by seed:
100 * (loss_random - loss_method) / loss_random; mean and standard error over seeds.
Every selection method uses the same LoRA config and the same base lr (LESS/Max-Uncertainty
warm-up, ToV trajectory, the final fine-tune).

    python benchmarks/quality.py --config ner            # full size (sizes in SIZES)
    python benchmarks/quality.py --config it --small     # smoke run -> quality_it_small.json
    python benchmarks/quality.py --config ner --tiny     # tiny random models (tests)
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import _common, eval_data  # noqa: E402
from benchmarks.baselines import less, max_uncertainty, random_select, tov  # noqa: E402
from benchmarks.baselines._util import lora_copy  # noqa: E402

# Sizes: one full run of both configs is meant to fit in about an hour on 2 shared CPU cores.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "ner": {
        "full": {"data": {"pool_size": 1500, "wnut_in_pool": 150, "val_size": 100,
                          "test_size": 500},
                 "n": 150, "base_size": 150, "epochs": 2, "lr": 2e-3, "ft_epochs": 3,
                 "batch_size": 16, "max_length": 64, "seeds": 5},
        "small": {"data": {"pool_size": 200, "wnut_in_pool": 30, "val_size": 30,
                           "test_size": 60},
                  "n": 30, "base_size": 30, "epochs": 1, "lr": 2e-3, "ft_epochs": 2,
                  "batch_size": 16, "max_length": 64, "seeds": 2},
    },
    "it": {
        "full": {"data": {"pool_size": 240, "val_size": 32, "test_size": 120,
                          "target_in_pool": 24},
                 "n": 48, "base_size": 48, "epochs": 1, "lr": 1e-3, "ft_epochs": 2,
                 "batch_size": 8, "max_length": 128, "seeds": 5},
        "small": {"data": {"pool_size": 40, "val_size": 8, "test_size": 16,
                           "target_in_pool": 6},
                  "n": 8, "base_size": 8, "epochs": 1, "lr": 1e-3, "ft_epochs": 1,
                  "batch_size": 8, "max_length": 128, "seeds": 2},
    },
}
TINY = {"n": 8, "base_size": 8, "epochs": 1, "lr": 1e-2, "ft_epochs": 1, "batch_size": 8,
        "max_length": 64, "seeds": 2}
DEFAULT_METHODS = ["random", "tov", "tov_score_only", "maxunc", "less"]
# target_only: a control, not a method: n rows drawn at random from the pool's target-source
# rows (as many as there are). It tells whether more in-domain rows lower the test loss at all.
ALL_METHODS = (DEFAULT_METHODS + [v for v in tov.VARIANTS if v not in DEFAULT_METHODS]
               + ["target_only"])


def setup(config: str, size: str) -> dict[str, Any]:
    if size == "tiny":
        s = eval_data.tiny_setup(config)
        return {**s, "sizes": dict(TINY)}
    sz = SIZES[config][size]
    if config == "it":
        data = eval_data.it_data(**sz["data"])
        model, tok = eval_data.load_it_model()
        lora = eval_data.it_lora()
    else:
        data = eval_data.ner_data(**sz["data"])
        model, tok = eval_data.load_ner_model()
        lora = eval_data.ner_lora()
    return {**data, "model": model, "tokenizer": tok, "lora": lora, "sizes": dict(sz)}


def is_target(source: str) -> bool:
    return source == "target" or source == "wnut16" or source.endswith("lexicon")


def run_method(name: str, s: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    sz, model, tok, pool, val = s["sizes"], s["model"], s["tokenizer"], s["pool"], s["val"]
    n, lr, lora, bs, ml = sz["n"], sz["lr"], s["lora"], sz["batch_size"], sz["max_length"]
    info: dict[str, Any] = {}
    if name == "random":
        idx = random_select.select(model, tok, pool, val, n, seed)
    elif name == "target_only":
        rows = np.flatnonzero([is_target(x) for x in pool["source"]])
        idx = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, rows.size),
                                                         replace=False))
    elif name == "maxunc":
        idx = max_uncertainty.select(model, tok, pool, val, n, seed, lora=lora, lr=lr,
                                     batch_size=bs, max_length=ml)
    elif name in ("less", "less_published"):
        r = less.less_scores(copy.deepcopy(model), tok, pool, val, n=n, seed=seed, lora=lora,
                             lr=lr, train_batch_size=bs, max_length=ml,
                             mode="published" if name == "less_published" else "optimised",
                             cache_bytes=4 << 30)
        idx, info = r.selected, {"timings": r.timings, "peak_disk_bytes": r.peak_disk_bytes}
    elif name in tov.VARIANTS:
        r = tov.run(copy.deepcopy(model), tok, pool, val, n, seed=seed, name=name, lora=lora,
                    base_size=sz["base_size"], epochs=sz["epochs"], lr=lr, batch_size=bs,
                    max_length=ml)
        idx, info = tov.selected_rows(r), {"timings": r.timings}
    else:
        raise ValueError(f"unknown method {name!r}")
    return np.asarray(idx), info


def finetune_and_test(s: dict[str, Any], idx: np.ndarray, seed: int) -> float:
    from tov_datasets.training import evaluate_loss, finetune

    sz = s["sizes"]
    m = lora_copy(s["model"], s["lora"], "ft", seed=seed)
    finetune(m, s["pool"].select(idx), tokenizer=s["tokenizer"], adapter="ft",
             epochs=sz["ft_epochs"], lr=sz["lr"], batch_size=sz["batch_size"],
             max_length=sz["max_length"], seed=seed)
    return float(evaluate_loss(m, s["test"], tokenizer=s["tokenizer"], adapter="ft",
                               batch_size=2 * sz["batch_size"], max_length=sz["max_length"]))


def zero_shot_loss(s: dict[str, Any]) -> float:
    from tov_datasets.training import evaluate_loss

    sz = s["sizes"]
    m = lora_copy(s["model"], s["lora"], "ft", seed=0)  # LoRA B = 0: the base model
    return float(evaluate_loss(m, s["test"], tokenizer=s["tokenizer"], adapter="ft",
                               batch_size=2 * sz["batch_size"], max_length=sz["max_length"]))


def summarise(losses: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    base = np.array(losses["random"])
    for name, vals in losses.items():
        v = np.array(vals)
        imp = 100.0 * (base - v) / base
        k = len(v)
        out[name] = {
            "loss_mean": float(v.mean()),
            "loss_se": float(v.std(ddof=1) / math.sqrt(k)) if k > 1 else float("nan"),
            "improvement_pct": float(imp.mean()),
            "improvement_se_pct": float(imp.std(ddof=1) / math.sqrt(k)) if k > 1 else float(
                "nan"),
        }
    return out


def write_outputs(stem: str, config: dict, summary: dict, details: dict, stats: dict,
                  out_dir: Path | None) -> Path:
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((out_dir / f"{stem}.json").resolve()) if out_dir else f"{stem}.json"
    path = _common.write_result("quality", config, summary, details, filename=filename)
    rows = [{"method": k, "test_loss": v["loss_mean"], "se": v["loss_se"],
             "improvement_vs_random_%": v["improvement_pct"],
             "improvement_se_%": v["improvement_se_pct"],
             "target_rows_selected_%": details["target_fraction_pct"].get(k, float("nan"))}
            for k, v in stats.items()]
    _common.print_table(rows, f"quality {config['config']} ({len(details['seeds'])} seeds)")
    md = [f"# Quality, config `{config['config']}`\n",
          f"Command: `{' '.join(sys.argv)}`; seeds {details['seeds']}; pool "
          f"{config['data_meta'].get('pool')}, n {config['sizes']['n']}; zero-shot test loss "
          f"{details['zero_shot_loss']:.4f}.\n",
          "| method | test loss (mean ± se) | improvement vs random % (± se) | target rows "
          "selected % |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['test_loss']:.4f} ± {r['se']:.4f} | "
                  f"{r['improvement_vs_random_%']:+.2f} ± {r['improvement_se_%']:.2f} | "
                  f"{r['target_rows_selected_%']:.1f} |")
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(stats)
        ax.bar(names, [stats[k]["improvement_pct"] for k in names],
               yerr=[stats[k]["improvement_se_pct"] for k in names], capsize=4,
               color=["#888" if k == "random" else "#1f77b4" if k.startswith("tov") else "#d62728"
                      for k in names])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("test loss improvement vs random (%)")
        ax.set_title(f"{config['config']}: n={config['sizes']['n']}, "
                     f"{len(details['seeds'])} seeds (± s.e.)")
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=110)
        plt.close(fig)
    except ImportError:
        pass
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["it", "ner"], required=True)
    _common.add_size_options(ap)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma list of {ALL_METHODS} (random is always run)")
    ap.add_argument("--tag", default="", help="file name suffix: quality_<config>_<tag>.json "
                    "(e.g. a comparison of ToV variants beside the main run)")
    a = ap.parse_args(argv)
    size, setup_size, size_label = _common.resolve_size(a)
    s = setup(a.config, setup_size)
    seeds = list(range(a.seeds if a.seeds is not None else s["sizes"]["seeds"]))
    methods = ["random"] + [m for m in a.methods.split(",") if m and m != "random"]
    losses: dict[str, list[float]] = {m: [] for m in methods}
    target_pct: dict[str, list[float]] = {m: [] for m in methods}
    per_seed: list[dict[str, Any]] = []
    sources = np.array(s["pool"]["source"])
    started = time.perf_counter()
    zs = zero_shot_loss(s)
    print(f"zero-shot test loss {zs:.4f}", flush=True)
    for seed in seeds:
        for m in methods:
            t0 = time.perf_counter()
            idx, info = run_method(m, s, seed)
            t_sel = time.perf_counter() - t0
            loss = finetune_and_test(s, idx, seed)
            tp = 100.0 * float(np.mean([is_target(x) for x in sources[idx]]))
            losses[m].append(loss)
            target_pct[m].append(tp)
            per_seed.append({"seed": seed, "method": m, "test_loss": loss, "n": int(len(idx)),
                             "target_rows_pct": tp, "select_s": t_sel,
                             "total_s": time.perf_counter() - t0, **info})
            print(f"seed {seed} {m:16s} loss {loss:.4f} target% {tp:5.1f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    stats = summarise(losses)
    summary = {"seeds": len(seeds)}
    for key, m in (("tov", "tov"), ("less", "less"), ("maxunc", "maxunc")):
        if m in stats:
            summary[f"{key}_improvement_pct"] = stats[m]["improvement_pct"]
    if "tov" in stats:
        summary["tov_improvement_se_pct"] = stats["tov"]["improvement_se_pct"]
        summary["tov_minus_less_pct"] = (stats["tov"]["improvement_pct"]
                                         - stats.get("less", {}).get("improvement_pct", np.nan))
    for m, st in stats.items():
        summary[f"{m}_test_loss"] = st["loss_mean"]
        if m not in ("tov", "less", "maxunc", "random"):
            summary[f"{m}_improvement_pct"] = st["improvement_pct"]
    config = {"config": a.config, "size": size_label,
               "sizes": s["sizes"], "methods": methods,
              "data_meta": s["meta"], "lora": _lora_dict(s["lora"]), "threads": a.threads}
    details = {"seeds": seeds, "per_seed": per_seed, "stats": stats,
               "target_fraction_pct": {m: float(np.mean(v)) for m, v in target_pct.items()},
               "zero_shot_loss": zs, "wall_s": time.perf_counter() - started}
    stem = (f"quality_{a.config}" + (f"_{a.tag}" if a.tag else "")
            + ("" if size == "full" else f"_{size}"))
    return write_outputs(stem, config, summary, details, stats, a.out_dir)


def _lora_dict(cfg) -> dict[str, Any]:
    return {"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
            "target_modules": sorted(cfg.target_modules),
            "modules_to_save": list(cfg.modules_to_save or [])}


if __name__ == "__main__":
    main()
