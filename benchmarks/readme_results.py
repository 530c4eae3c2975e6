"""Generate the README's results section from benchmarks/results/*.json.

    python benchmarks/readme_results.py           # print the markdown
    python benchmarks/readme_results.py --write   # replace the block between the markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
QSTART, QEND = "<!-- quality:start -->", "<!-- quality:end -->"

# (file, summary key, label, target text, format)
ROWS = [
    ("kernel_cpu.json", "time_ratio_vs_naive_v49152", "kernel CPU time / naive, V=49152",
     "<= 1", "{:.2f}"),
    ("kernel_cpu.json", "time_ratio_vs_naive_v128256", "kernel CPU time / naive, V=128256",
     "<= 1", "{:.2f}"),
    ("kernel_cpu.json", "extra_mem_ratio_vs_naive", "kernel CPU extra peak memory / naive",
     "<= 0.125", "{:.3f}"),
    ("scoring_cpu.json", "time_ratio_vs_two_forwards_1t",
     "scorer time / two plain forwards (1 thread)", "<= 1", "{:.2f}"),
    ("scoring_cpu.json", "time_ratio_vs_two_forwards_2t",
     "scorer time / two plain forwards (2 threads)", "<= 1", "{:.2f}"),
    ("scoring_cpu.json", "peak_mem_ratio_vs_naive", "scorer peak memory / naive logits path",
     "", "{:.2f}"),
    ("select.json", "select_10M_s", "select 10M scores (s)", "<= 1", "{:.2f}"),
    ("select.json", "speedup_vs_numpy", "select speed-up vs numpy", ">= 2", "{:.1f}x"),
    ("select.json", "filter_1M_to_300k_s", "filter 1M -> 300k rows (s)", "<= 0.1", "{:.3f}"),
    ("less_vs_tov.json", "speedup_vs_less_published", "speed-up vs LESS published",
     ">= 10", "{:.2f}x"),
    ("less_vs_tov.json", "speedup_vs_less_optimised", "speed-up vs LESS optimised", "> 1",
     "{:.2f}x"),
    ("less_vs_tov.json", "storage_ratio_vs_less_published", "disk: LESS published / ToV",
     ">= 50", "{:.0f}x"),
    ("less_vs_tov.json", "storage_ratio_vs_less_optimised", "disk: LESS optimised / ToV", "",
     "{:.0f}x"),
    ("less_vs_tov_ner_nvidia_h200.json", "speedup_vs_less_published",
     "H200: speed-up vs LESS published", ">= 10", "{:.1f}x"),
    ("less_vs_tov_ner_nvidia_h200.json", "speedup_vs_less_optimised",
     "H200: speed-up vs LESS optimised", "> 1", "{:.1f}x"),
    ("less_vs_tov_ner_nvidia_h200.json", "storage_ratio_vs_less_published",
     "H200: disk: LESS published / ToV", ">= 50", "{:.0f}x"),
    ("less_vs_tov_ner_nvidia_h200.json", "tov_fpe_per_sample",
     "H200: ToV forward-pass equivalents per pool sample (bound 9.4)", "", "{:.1f}"),
    ("kernel_nvidia_h200.json", "speedup_vs_naive_v128256",
     "H200: kernel speed-up vs naive, V=128256 (bf16, 8192 tokens)", "", "{:.1f}x"),
    ("kernel_nvidia_h200.json", "bandwidth_fraction_of_copy_v49152",
     "H200: kernel bandwidth on bytes read / device copy, V=49152, 8192 tokens", ">= 0.85",
     "{:.2f}"),
    ("kernel_nvidia_h200.json", "bandwidth_fraction_of_copy_v128256",
     "H200: the same, V=128256", ">= 0.85", "{:.2f}"),
    ("kernel_nvidia_h200_1024tokens.json", "bandwidth_fraction_of_copy_v49152",
     "H200: the same at 1024 tokens, V=49152 (host launch included)", ">= 0.85", "{:.2f}"),
    ("kernel_nvidia_h200_1024tokens.json", "bandwidth_fraction_of_copy_v128256",
     "H200: the same at 1024 tokens, V=128256", ">= 0.85", "{:.2f}"),
    ("kernel_nvidia_h200.json", "fused_linear_time_ratio_vs_matmul_v128256_h576",
     "H200: fused head time / bare matmul, V=128256, hidden 576, 8192 tokens (kernel before "
     "issue 15's rewrite)", "<= 1.15", "{:.2f}"),
    ("kernel_nvidia_h200.json", "fused_linear_time_ratio_vs_matmul_v128256_h4096",
     "H200: the same at hidden 4096", "<= 1.15", "{:.2f}"),
    ("multi_target.json", "speedup_vs_single_runs_k4",
     "4 targets in one run: speed-up vs 4 single-target runs (SmolLM2, CPU, 1 epoch)", ">= 1.5",
     "{:.2f}x"),
    ("multi_target.json", "counted_bound_k4",
     "its counted bound: counted FPE of 4 single-target runs / of one 4-target run", "",
     "{:.2f}x"),
    ("multi_target.json", "speedup_over_bound_k4", "measured speed-up / counted bound, K=4",
     ">= 0.9", "{:.2f}"),
    ("multi_target.json", "speedup_vs_single_runs_k2", "the same speed-up at K=2", "",
     "{:.2f}x"),
    ("multi_target.json", "speedup_vs_single_runs_k8", "the same speed-up at K=8", "",
     "{:.2f}x"),
    ("multi_target.json", "speedup_vs_less_amortised_k4",
     "counted FPE: LESS optimised, datastore reused for 4 targets / one 4-target ToV run", "> 1",
     "{:.2f}x"),
    ("multi_target.json", "min_topn_overlap_vs_single",
     "worst target's top-n overlap, 4-target run vs its single-target run (1 epoch)", ">= 0.8",
     "{:.2f}"),
    ("multi_target.json", "min_topn_overlap_vs_single_interleaved_2ep",
     "the same over 2 epochs, interleaved (base continues from the mean of the val adapters)",
     ">= 0.8", "{:.2f}"),
    ("multi_target.json", "min_spearman_vs_single_interleaved_2ep",
     "its worst per-target Spearman", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_vs_exact",
     "ner_coarse, trained model: Spearman ToV (val rule fresh, the library default) vs exact "
     "one-step (AdamW) effect",
     "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_within_source",
     "its mean within source", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "topk_overlap_tov", "ToV top-10% overlap with the exact top-10%",
     "", "{:.2f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_val_sgd_vs_exact",
     "Spearman ToV, val rule sgd, vs the same", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_val_continue_vs_exact",
     "the same, val rule continue (AdamW from the trained moments)", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_less_vs_exact",
     "Spearman LESS (published, cosine) vs the same", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_less_unnormalised_vs_exact",
     "Spearman LESS unnormalised (dot product) vs the same", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_vs_exact_sgd",
     "Spearman ToV (val rule fresh) vs exact one-step SGD effect", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "spearman_tov_val_sgd_vs_exact_sgd",
     "the same, val rule sgd", "", "{:.3f}"),
    ("fidelity_ner_coarse.json", "exact_positive_share",
     "share of samples whose AdamW step lowers the val loss", "", "{:.2f}"),
]


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def render() -> str:
    lines = ["| figure | value | target | file |", "|---|---|---|---|"]
    sources: dict[str, dict] = {}
    for name, key, label, target, fmt in ROWS:
        record = _load(name)
        if record is None or key not in record["summary"]:
            lines.append(f"| {label} | not measured yet | {target} | {name} |")
            continue
        sources[name] = record
        lines.append(f"| {label} | {fmt.format(record['summary'][key])} | {target} | {name} |")
    lines += ["", "Commands and conditions:", ""]
    for name, record in sources.items():
        size = record.get("config", {}).get("size")
        note = f"; size: {size}" if size else ""
        lines.append(f"- `{name}`: `{record['command']}` ({record['machine']}, commit "
                     f"{record['commit'][:7]}, {record['date'][:10]}{note})")
    return "\n".join(lines)


QUALITY_CONFIGS = ("ner_coarse", "ner_coarse_v2", "ner_coarse_v3", "ner_coarse_v4",
                   "ner_coarse_v5", "ner_coarse_v6", "ner_coarse_v7", "ner_coarse_v8",
                   "ner_coarse_v9",
                   "lm_tweets", "lm_tweets_v2", "lm_news", "chat_long", "chat_long_v2",
                   "chat_long_v3", "lm_tweets_v3", "chat_labels", "chat_labels_v2",
                   "chat_labels_v3", "chat_labels_v4", "lm_tweets_v4", "chat_labels_v5")


def _num(x: object, fmt: str) -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and x == x else "n/a"


def _schedule_note(summary: dict) -> str:
    schedule = summary.get("finetune_schedule", "constant")
    return "" if schedule == "constant" else f" ({schedule} decay, a fixed recipe)"


# (methods in the JSON, column head) of the scoreboard: the library's default ToV (F
# identity, val rule fresh), the same with val rule sgd, with F abs, its pick without the
# random half, its pick in the validation set's label quotas (the scored half, or the whole
# pick), the held-out check's switch (`tov_select(scored_only_above=...)`), and the
# baselines a user would reach for instead; a column shows the first of its methods a
# result holds, naming any but the first (LESS projected, else unprojected)
SWITCH = "tov_holdout"  # quality.HOLDOUT: the switch's pick (its run's check per seed)
SCOREBOARD = ((("tov",), "ToV, library default (F identity, val rule fresh)"),
              (("tov_val_sgd",), "ToV, F identity, val rule sgd"),
              (("tov_abs",), "ToV, F abs"),
              (("tov_score_only",), "ToV identity, no random half"),
              (("tov_strata",), "ToV identity, label strata"),
              (("tov_strata_all",), "ToV identity, whole pick in label strata"),
              ((SWITCH,), "ToV identity, held-out check's switch"),
              (("embedding",), "embedding similarity"), (("less", "less_unprojected"), "LESS"))


def _scoreboard_cell(stats: dict, methods: tuple[str, ...]) -> str:
    for i, m in enumerate(methods):
        if m in stats:
            return _gain_cell(stats[m]) + ("" if i == 0 else f" `{m}`")
    return _gain_cell(None)


def _gain_cell(st: dict | None) -> str:
    """'+3.16 ± 0.43 (5/5)': gain vs random %, its s.e., seeds with a gain; bold when the gain
    exceeds 2 s.e. (never for a missing or NaN s.e.)."""
    if st is None:
        return "not run"
    gain, se = st["improvement_pct"], st["improvement_se_pct"]
    by_seed = st.get("improvement_pct_by_seed") or []
    cell = f"{gain:+.2f} ± {_num(se, '{:.2f}')}"
    if by_seed:
        cell += f" ({sum(g > 0 for g in by_seed)}/{len(by_seed)})"
    return f"**{cell}**" if isinstance(se, (int, float)) and gain > 2 * se else cell


def render_scoreboard(records: dict[str, dict | None]) -> str:
    """One row per configuration ({name: its quality record, None if not measured}) whose gate
    passed: the oracle's and each method's gain over random (paired by seed), so the
    configurations read side by side."""
    passed, failed = [], []
    for config, record in records.items():
        if record is not None:
            (passed if record["summary"]["gate_passed"] else failed).append((config, record))
    heads = ["configuration", "task", "seeds", "oracle"] + [h for _, h in SCOREBOARD]
    out = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for config, record in passed:
        s, stats = record["summary"], record["details"]["stats"]
        cells = [config, s["task"], str(s["seeds"]), _gain_cell(stats["oracle"])]
        cells += [_scoreboard_cell(stats, methods) for methods, _ in SCOREBOARD]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Gain over random in % of the target test loss, ± its s.e. over seeds (seeds "
            "with a gain / seeds); bold: above 2 s.e. Which of these a committed hypothesis "
            "judged, and which were looked at after other results had been read "
            "(`ner_coarse_v3`'s F abs), is in the paragraphs below the tables. Gates that "
            "failed (methods not judged): "
            + ", ".join(f"`{c}`" for c, _ in failed) + "."]
    return "\n".join(out)


def render_quality() -> str:
    """The scoreboard, then one table per quality configuration: its premise gate, then every
    method."""
    records = {config: _load(f"quality_{config}.json") for config in QUALITY_CONFIGS}
    out: list[str] = [render_scoreboard(records), ""]
    for config, record in records.items():
        name = f"quality_{config}.json"
        if record is None:
            out += [f"**{config}**: not measured yet.", ""]
            continue
        s, d = record["summary"], record["details"]
        gate = "passed" if s["gate_passed"] else "FAILED (methods not judged)"
        out += [f"**{config}** ({s['task']}, {s['seeds']} seeds, configuration commit "
                f"`{s['config_commit'][:7]}`): premise gate {gate}: oracle "
                f"{s['oracle_improvement_pct']:+.2f}% vs random (paired t "
                f"{_num(s['oracle_t'], '{:.1f}')}), random learned the task: "
                f"{s['random_learned']} ({d['gate']['random_loss']:.4f} vs bound "
                f"{d['gate']['learned_bound']:.4f}); fine-tune budget "
                f"{s['finetune_epochs']} epochs at lr {s['finetune_lr']}"
                f"{_schedule_note(s)}. File `{name}`, "
                f"command `{record['command']}`.", "",
                "| method | seeds | test loss | gain vs random % (± se) | oracle capture (90% CI) "
                "| target rows % | raw-score AUC | precision@n |",
                "|---|---|---|---|---|---|---|---|"]
        for m, st in d["stats"].items():
            out.append(
                f"| {m} | {len(st.get('seeds', [])) or s['seeds']} | {st['test_loss']:.4f} | "
                f"{st['improvement_pct']:+.2f} ± "
                f"{_num(st['improvement_se_pct'], '{:.2f}')} | "
                f"{_num(st['oracle_capture'], '{:.2f}')} "
                f"({_num(st['oracle_capture_low'], '{:.2f}')}, "
                f"{_num(st['oracle_capture_high'], '{:.2f}')}) | "
                f"{100 * st['target_share']:.1f} | {_num(st.get('auc'), '{:.3f}')} | "
                f"{_num(st.get('precision_at_n'), '{:.3f}')} |")
        out += ["", *_holdout_line(d["stats"]), *_by_source(d["stats"])]
    return "\n".join(out)


def _holdout_line(stats: dict[str, dict]) -> list[str]:
    """The held-out check of the switch's run: its AUC by seed and on how many seeds the
    switch took the scored pick alone; empty where the switch did not run."""
    st = stats.get(SWITCH)
    if st is None or "holdout_auc_by_seed" not in st:
        return []
    aucs = st["holdout_auc_by_seed"]
    return [f"Held-out check of `{SWITCH}`'s run: AUC by seed "
            + ", ".join(f"{a:.4f}" for a in aucs) + f"; the whole pick by score on "
            f"{st['holdout_scored_only_seeds']} of {len(aucs)} seeds.", ""]


def _by_source(stats: dict[str, dict]) -> list[str]:
    """A table of each method's pick by pool source (%) and its raw score's AUC of the target
    rows against each other source alone; empty where no method recorded sources."""
    kept = {m: st for m, st in stats.items() if "source_shares" in st}
    if not kept:
        return []
    shares = sorted({k for st in kept.values() for k in st["source_shares"]})
    aucs = sorted({k for st in kept.values() for k in st.get("auc_vs_source", {})})
    head = [f"{k} %" for k in shares] + [f"AUC vs {k}" for k in aucs]
    out = ["By pool source: each pick's rows (%), and the raw score's AUC of the target rows "
           "against that source's rows alone:", "",
           "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for m, st in kept.items():
        cells = [f"{100 * st['source_shares'].get(k, 0.0):.1f}" for k in shares]
        cells += [_num(st.get("auc_vs_source", {}).get(k), "{:.3f}") for k in aucs]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out + [""]


def write(readme: Path = README) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{START}\n{render()}\n{END}{tail}"
    head, rest = text.split(QSTART, 1)
    _, tail = rest.split(QEND, 1)
    readme.write_text(f"{head}{QSTART}\n{render_quality()}\n{QEND}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="update README.md in place")
    if p.parse_args().write:
        write()
    else:
        print(render())
        print()
        print(render_quality())


if __name__ == "__main__":
    main()
