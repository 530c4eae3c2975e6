"""Fidelity: how well do the ToV and LESS scores rank pool samples by their exact effect?

From one starting adapter theta0 (a fresh LoRA trained one epoch on a random base set U of the
pool with AdamW), for each of ``--samples`` pool rows x:
  exact(x) = valloss(theta0) - valloss(theta0 - eta * grad loss(x; theta0)),
one plain SGD step on x alone (eta = the base lr), val loss = token mean over the val set.
Scores at the same theta0:
  ToV: loss(base, x) - loss(val, x), val = theta0 trained one epoch on the val set at lr/10
       (the library's ToVScorer, F identity);
  LESS: cosine of x's Adam-preconditioned gradient (theta0's AdamW moments) with the val
       gradients, projected to 8192 dims, mean over the val samples (one checkpoint);
  grad-dot (reference): g_x . g_val, the first-order Taylor term of exact(x) / eta.
Spearman rank correlation of each score with exact -> fidelity.json.

    python benchmarks/fidelity.py --config ner
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _common, eval_data  # noqa: E402
from benchmarks.baselines import less  # noqa: E402
from benchmarks.baselines._util import (  # noqa: E402
    encode,
    forward_logits,
    lora_copy,
    pad_id_of,
    per_sample_token_mean,
)

SIZES = {
    "ner": {"full": {"data": {"pool_size": 1500, "wnut_in_pool": 150, "val_size": 100,
                              "test_size": 100}, "samples": 200, "base_size": 150,
                     "lr": 2e-3, "batch_size": 16, "max_length": 64},
            "small": {"data": {"pool_size": 200, "wnut_in_pool": 30, "val_size": 30,
                               "test_size": 30}, "samples": 40, "base_size": 30,
                      "lr": 2e-3, "batch_size": 16, "max_length": 64}},
    "it": {"full": {"data": {"pool_size": 240, "val_size": 32, "test_size": 120,
                             "target_in_pool": 24}, "samples": 200, "base_size": 48,
                    "lr": 1e-3, "batch_size": 8, "max_length": 128},
           "small": {"data": {"pool_size": 40, "val_size": 8, "test_size": 16,
                              "target_in_pool": 6}, "samples": 20, "base_size": 8,
                     "lr": 1e-3, "batch_size": 8, "max_length": 128}},
}
TINY = {"samples": 24, "base_size": 8, "lr": 5e-2, "batch_size": 8, "max_length": 64}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x[np.r_[False, np.diff(x[order]) == 0]] if len(x) else []):
            r[x == v] = r[x == v].mean()  # average ranks of ties
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def setup(config: str, size: str) -> dict[str, Any]:
    from benchmarks.quality import setup as q_setup

    if size == "tiny":
        return {**eval_data.tiny_setup(config), "sizes": dict(TINY)}
    sz = SIZES[config][size]
    s = q_setup(config, "small")
    data = (eval_data.it_data(**sz["data"]) if config == "it"
            else eval_data.ner_data(**sz["data"]))
    return {**s, **data, "sizes": dict(sz)}


def main(argv: list[str] | None = None) -> Path:
    from tov_datasets.training import adapter_parameters, copy_adapter, finetune, mean_loss

    try:
        from tov_datasets import ToVScorer
    except ImportError:
        from tov_datasets.scorer import ToVScorer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["it", "ner"], default="ner")
    _common.add_size_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    size, setup_size, size_label = _common.resolve_size(a)
    s = setup(a.config, setup_size)
    sz, tok = s["sizes"], s["tokenizer"]
    lr, bs, ml = sz["lr"], sz["batch_size"], sz["max_length"]
    rng = np.random.default_rng(a.seed)
    P = len(s["pool"])
    rows = np.sort(rng.choice(P, size=min(sz["samples"], P), replace=False))
    base_rows = np.sort(rng.choice(P, size=min(sz["base_size"], P), replace=False))
    started = time.perf_counter()

    # theta0: a fresh LoRA trained one epoch on U (AdamW, moments kept for LESS)
    model = lora_copy(s["model"], s["lora"], "base", seed=a.seed)
    model.add_adapter("val", s["lora"])
    params = adapter_parameters(model, "base")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    finetune(model, s["pool"].select(base_rows), tokenizer=tok, adapter="base", epochs=1, lr=lr,
             batch_size=bs, max_length=ml, seed=a.seed, optimizer=opt, schedule="constant")
    theta0 = [p.detach().clone() for p in params]
    sub = s["pool"].select(rows)
    pad = pad_id_of(tok)
    model.set_adapter("base")
    model.eval()
    samples = encode(model, sub, tok, ml)
    val_samples = encode(model, s["val"], tok, ml)
    task = "causal_lm" if "CausalLM" in type(model.get_base_model()).__name__ else (
        "token_classification")

    # exact one-step effect
    t0 = time.perf_counter()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    before = mean_loss(model, val_samples, pad_token_id=pad, adapter="base", batch_size=2 * bs)

    def grad_of(batch_samples):
        from tov_datasets.formats import collate

        batch = collate(batch_samples, pad)
        losses = per_sample_token_mean(forward_logits(model, batch, task), batch["labels"], task)
        return torch.autograd.grad(losses.mean(), params)

    # val gradient = gradient of the token-mean val loss (as mean_loss weighs tokens)
    g_val = [torch.zeros_like(p) for p in params]
    from tov_datasets.formats import collate

    tot = 0
    for i in range(0, len(val_samples), bs):
        batch = collate(val_samples[i: i + bs], pad)
        logits = forward_logits(model, batch, task)
        lab = batch["labels"]
        lg, lb = (logits[:, :-1], lab[:, 1:]) if task == "causal_lm" else (logits, lab)
        loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        for acc, g in zip(g_val, torch.autograd.grad(loss, params), strict=True):
            acc += g
        tot += int((lb != -100).sum())
    g_val = torch.cat([g.reshape(-1) for g in g_val]) / tot
    exact, graddot = np.zeros(len(samples)), np.zeros(len(samples))
    for j, x in enumerate(samples):
        gx = grad_of([x])
        graddot[j] = float(torch.cat([g.reshape(-1) for g in gx]) @ g_val)
        with torch.no_grad():
            for p, g in zip(params, gx, strict=True):
                p.sub_(lr * g)
        exact[j] = before - mean_loss(model, val_samples, pad_token_id=pad, adapter="base",
                                      batch_size=2 * bs)
        with torch.no_grad():
            for p, p0 in zip(params, theta0, strict=True):
                p.copy_(p0)
    t_exact = time.perf_counter() - t0

    # LESS at theta0 (one checkpoint)
    t0 = time.perf_counter()
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    proj = less.RademacherProjector(sum(p.numel() for p in params), 8192, seed=0,
                                    cache_bytes=4 << 30)
    with tempfile.TemporaryDirectory() as d:
        tr = less._grads_optimised(model, params, samples, pad, task, m, v, proj,
                                   Path(d) / "pool", bs, 256)
        va = less._grads_optimised(model, params, val_samples, pad, task, None, None, proj,
                                   Path(d) / "val", bs, 256)
    less_score = (tr @ va.T).mean(1).double().numpy()
    t_less = time.perf_counter() - t0

    # ToV at theta0: val = theta0 + one epoch on the val set at lr / 10
    t0 = time.perf_counter()
    copy_adapter(model, "base", "val")
    finetune(model, s["val"], tokenizer=tok, adapter="val", epochs=1, lr=lr / 10, batch_size=bs,
             max_length=ml, seed=a.seed, schedule="constant")
    model.set_adapter("base")
    for p in model.parameters():
        p.requires_grad_(False)
    scorer = ToVScorer(model, tok, base_adapter="base", val_adapter="val", max_length=ml,
                       batch_size=2 * bs)
    scored = sub.map(scorer, batched=True, batch_size=256, new_fingerprint=f"fid-{a.seed}")
    tov_score = np.asarray(scored.data.column("tov_score").to_numpy(), dtype=np.float64)
    t_tov = time.perf_counter() - t0

    summary = {
        "spearman_tov_vs_exact": spearman(tov_score, exact),
        "spearman_less_vs_exact": spearman(less_score, exact),
        "spearman_graddot_vs_exact": spearman(graddot, exact),
        "samples": len(samples),
    }
    config = {"config": a.config, "size": size_label,
               "sizes": sz, "eta": lr, "val": len(val_samples),
              "seed": a.seed, "threads": a.threads}
    details = {"rows": rows.tolist(), "exact": exact.tolist(), "tov": tov_score.tolist(),
               "less": less_score.tolist(), "graddot": graddot.tolist(),
               "val_loss_theta0": before,
               "timings": {"exact": t_exact, "less": t_less, "tov": t_tov,
                           "total": time.perf_counter() - started}}
    stem = "fidelity" if (size == "full" and a.config == "ner") else (
        f"fidelity_{a.config}" + ("" if size == "full" else f"_{size}"))
    if a.out_dir:
        a.out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((a.out_dir / f"{stem}.json").resolve()) if a.out_dir else f"{stem}.json"
    path = _common.write_result("fidelity", config, summary, details, filename)
    table = [{"score": k, "spearman_vs_exact": summary[f"spearman_{k}_vs_exact"],
              "seconds": details["timings"].get(k, t_exact)} for k in ("tov", "less", "graddot")]
    _common.print_table(table, f"fidelity {a.config}: {len(samples)} pool samples")
    md = [f"# Fidelity ({a.config}): Spearman of each score with the exact one-step effect\n",
          f"Command: `{' '.join(sys.argv)}`; {len(samples)} pool samples, val {len(val_samples)},"
          f" eta {lr}; exact effect took {t_exact:.1f} s.\n",
          "| score | Spearman vs exact | seconds |", "|---|---|---|"]
    md += [f"| {r['score']} | {r['spearman_vs_exact']:.3f} | {r['seconds']:.1f} |" for r in table]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
        for ax, (name, sc) in zip(axes, (("ToV", tov_score), ("LESS", less_score)), strict=True):
            ax.scatter(sc, exact, s=8)
            ax.set_xlabel(f"{name} score")
            ax.set_ylabel("exact one-step val-loss drop")
            ax.set_title(f"{name}: Spearman {spearman(sc, exact):.3f}")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=110)
        plt.close(fig)
    except ImportError:
        pass
    return path


if __name__ == "__main__":
    main()
