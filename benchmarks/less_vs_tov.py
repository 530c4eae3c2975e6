"""Speed and storage: ToV against LESS (published and optimised) on the same pool, model and
machine, in one run.

Equal footing: ToV runs L = 4 epochs on a base set U of 5% of the pool (LESS: 4 warm-up
epochs on a random 5% of the pool, one checkpoint per epoch), same LoRA config, same
micro-batch size. The three runs alternate for ``--repeats`` rounds; medians are reported.
Peak disk = bytes under each method's output directory at its largest (nothing is deleted
before the end in either method). Forward-pass equivalents (FPE): wall time per pool sample
divided by the time of one plain forward of that sample (measured in the same run, same
batching as ToV's scorer); the counted FPE of each method (training and backward counted as
3 forwards, projection not counted) is the bound it could reach.

    python benchmarks/less_vs_tov.py --config ner
    python benchmarks/less_vs_tov.py --config it --small
    # on a GPU machine without the data packages (benchmarks/gpu_check.sh):
    python benchmarks/less_vs_tov.py --config ner --save-bundle .gpu/ner      # here
    python benchmarks/less_vs_tov.py --config ner --bundle .gpu/ner --device cuda  # there
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
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
from benchmarks.baselines import less, tov  # noqa: E402
from benchmarks.baselines._util import encode, lora_copy, pad_id_of  # noqa: E402

SIZES = {
    "ner": {"full": {"data": {"pool_size": 1500, "wnut_in_pool": 150, "val_size": 100,
                              "test_size": 100}, "lr": 2e-3, "batch_size": 16,
                     "max_length": 64, "repeats": 2},
            "small": {"data": {"pool_size": 200, "wnut_in_pool": 30, "val_size": 30,
                               "test_size": 30}, "lr": 2e-3, "batch_size": 16,
                      "max_length": 64, "repeats": 1}},
    "it": {"full": {"data": {"pool_size": 240, "val_size": 32, "test_size": 120,
                             "target_in_pool": 24}, "lr": 1e-3, "batch_size": 8,
                    "max_length": 128, "repeats": 1},
           "small": {"data": {"pool_size": 40, "val_size": 8, "test_size": 16,
                              "target_in_pool": 6}, "lr": 1e-3, "batch_size": 8,
                     "max_length": 128, "repeats": 1}},
}
TINY = {"lr": 1e-2, "batch_size": 8, "max_length": 64, "repeats": 1}
EPOCHS = 4
FRACTION = 0.05


def setup(config: str, size: str, bundle: Path | None = None) -> dict[str, Any]:
    sizes = dict(TINY) if size == "tiny" else dict(SIZES[config][size])
    if bundle is not None:
        return {**eval_data.load_bundle(bundle), "sizes": sizes}
    if size == "tiny":
        return {**eval_data.tiny_setup(config), "sizes": sizes}
    if config == "it":
        data, (model, tok), lora = (eval_data.it_data(**sizes["data"]),
                                    eval_data.load_it_model(), eval_data.it_lora())
    else:
        data, (model, tok), lora = (eval_data.ner_data(**sizes["data"]),
                                    eval_data.load_ner_model(), eval_data.ner_lora())
    return {**data, "model": model, "tokenizer": tok, "lora": lora, "sizes": sizes}


def forward_time(s: dict[str, Any]) -> float:
    """Seconds for one eval forward of every pool sample (length-sorted batches)."""
    from benchmarks.baselines._util import batch_on_device, forward_logits
    from tov_datasets.models import infer_task
    from tov_datasets.training import micro_batches

    m = lora_copy(s["model"], s["lora"], "fwd")
    m.eval()
    task = infer_task(m)
    samples = encode(m, s["pool"], s["tokenizer"], s["sizes"]["max_length"])
    lengths = np.array([len(x.input_ids) for x in samples])
    pad = pad_id_of(s["tokenizer"])
    _synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        for mb in micro_batches(lengths, s["sizes"]["batch_size"]):
            forward_logits(m, batch_on_device([samples[i] for i in mb], pad, m), task)
    _synchronize()
    return time.perf_counter() - t0


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_tov(s, out: Path) -> dict[str, Any]:
    sz = s["sizes"]
    P = len(s["pool"])
    base = max(1, int(round(FRACTION * P)))
    t0 = time.perf_counter()
    r = tov.run(copy.deepcopy(s["model"]), s["tokenizer"], s["pool"], s["val"], n=base,
                seed=0, name="tov", lora=s["lora"], base_size=base, epochs=EPOCHS,
                lr=sz["lr"], batch_size=sz["batch_size"], max_length=sz["max_length"],
                output_dir=out)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_disk_bytes": int(r.disk_bytes),
            "stages": {k: float(v) for k, v in r.timings.items()}}


def run_less(s, mode: str, out: Path) -> dict[str, Any]:
    sz = s["sizes"]
    t0 = time.perf_counter()
    r = less.less_scores(copy.deepcopy(s["model"]), s["tokenizer"], s["pool"], s["val"],
                         mode=mode, n=10, seed=0, lora=s["lora"], lr=sz["lr"],
                         epochs=EPOCHS, warmup_fraction=FRACTION,
                         train_batch_size=sz["batch_size"], grad_batch_size=sz["batch_size"],
                         max_length=sz["max_length"], output_dir=out, cache_bytes=4 << 30)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_disk_bytes": int(r.peak_disk_bytes), "grad_dim": r.grad_dim,
            "stages": r.timings, "disk_by_stage": r.disk_bytes}


METHODS = ("tov", "less_optimised", "less_published")


def run_method(s: dict[str, Any], name: str) -> dict[str, Any]:
    """One run of method ``name`` writing into a fresh temporary directory (removed after)."""
    d = Path(tempfile.mkdtemp(prefix=f"lvt-{name}-"))
    try:
        return (run_tov(s, d / "out") if name == "tov"
                else run_less(s, name.split("_")[1], d / "out"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _warm_up(s: dict[str, Any]) -> None:
    """One untimed run of every method on a slice of the pool."""
    for name in METHODS:
        run_method(s, name)
    forward_time(s)


def counted_fpe(P: int, V: int, *, targets: int = 1, epochs: int = EPOCHS,
                base_size: int | None = None) -> dict[str, float]:
    """Forward-pass equivalents per pool sample implied by each algorithm (train/backward
    step = 3 forwards; LESS projection and I/O not counted). K = ``targets`` validation sets
    of V rows each: ToV trains its base once per epoch (U = ``base_size`` rows, default 5% of
    the pool), K val adapters and scores the pool with 1 + K adapters; LESS (4 checkpoints
    after warm-up on 5% of the pool) computes its pool gradient datastore once and the K
    validation sets' gradients at each checkpoint."""
    U = base_size if base_size is not None else max(1, round(FRACTION * P))
    U_less = max(1, round(FRACTION * P))
    K = targets
    return {
        "tov": epochs * (3 * U / P + 3 * K * V / P + 1 + K),
        "less": 3 * EPOCHS * U_less / P + EPOCHS * (3 + 3 * K * V / P),
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["it", "ner"], default="ner")
    _common.add_size_options(ap)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="where every method runs (cpu, cuda)")
    ap.add_argument("--save-bundle", type=Path, default=None, metavar="DIR",
                    help="write this configuration's data and model to DIR and exit")
    ap.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                    help="read the data and model from a --save-bundle DIR")
    a = ap.parse_args(argv)
    size, setup_size, size_label = _common.resolve_size(a)
    s = setup(a.config, setup_size, a.bundle)
    if a.save_bundle is not None:
        return eval_data.save_bundle(s, a.save_bundle)
    s["model"].to(a.device)
    repeats = a.repeats or s["sizes"]["repeats"]
    P, V = len(s["pool"]), len(s["val"])
    runs: dict[str, list[dict[str, Any]]] = {"tov": [], "less_published": [],
                                             "less_optimised": [], "forward": []}
    if a.device.startswith("cuda"):  # CUDA context, Triton compilation, cuBLAS autotuning
        _warm_up({**s, "pool": s["pool"].select(range(min(64, P)))})
    for rep in range(repeats):
        for name in METHODS:
            r = run_method(s, name)
            runs[name].append(r)
            print(f"repeat {rep} {name:15s} {r['wall_s']:8.1f}s disk "
                  f"{r['peak_disk_bytes'] / 1e6:9.2f} MB", flush=True)
        runs["forward"].append({"wall_s": forward_time(s)})
    med = {k: _common.median([r["wall_s"] for r in v]) for k, v in runs.items()}
    disk = {k: max(r["peak_disk_bytes"] for r in v) for k, v in runs.items() if k != "forward"}
    fwd_per_sample = med["forward"] / P
    counted = counted_fpe(P, V)
    summary = {
        "speedup_vs_less_published": med["less_published"] / med["tov"],
        "speedup_vs_less_optimised": med["less_optimised"] / med["tov"],
        "storage_ratio_vs_less_published": disk["less_published"] / disk["tov"],
        "storage_ratio_vs_less_optimised": disk["less_optimised"] / disk["tov"],
        "tov_s_per_sample": med["tov"] / P,
        "less_published_s_per_sample": med["less_published"] / P,
        "less_optimised_s_per_sample": med["less_optimised"] / P,
        "forward_s_per_sample": fwd_per_sample,
        "tov_fpe_per_sample": med["tov"] / med["forward"],
        "less_published_fpe_per_sample": med["less_published"] / med["forward"],
        "less_optimised_fpe_per_sample": med["less_optimised"] / med["forward"],
        "tov_counted_fpe": counted["tov"],
        "less_counted_fpe": counted["less"],
        "tov_peak_disk_bytes": disk["tov"],
        "less_published_peak_disk_bytes": disk["less_published"],
        "less_optimised_peak_disk_bytes": disk["less_optimised"],
    }
    config = {"config": a.config, "size": size_label,
               "pool": P, "val": V, "epochs_checkpoints":
              EPOCHS, "base_fraction": FRACTION, "sizes": s["sizes"], "repeats": repeats,
              "proj_dim": 8192, "threads": a.threads, "device": a.device,
              "from_bundle": a.bundle is not None, "lora": _lora(s["lora"]),
              "grad_dim": runs["less_published"][0]["grad_dim"]}
    stem = f"less_vs_tov_{a.config}" if size == "full" else f"less_vs_tov_{a.config}_{size}"
    if size == "full" and a.config == "ner" and a.device == "cpu":
        stem = "less_vs_tov"  # the headline file (shared notes); other configs get a suffix
    if a.device.startswith("cuda"):
        stem += f"_{_common.gpu_slug()}"
    if a.out_dir:
        a.out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((a.out_dir / f"{stem}.json").resolve()) if a.out_dir else f"{stem}.json"
    path = _common.write_result("less_vs_tov", config, summary, {"runs": runs}, filename)
    rows = []
    for k in ("tov", "less_optimised", "less_published"):
        fpe_bound = counted["tov" if k == "tov" else "less"]
        rows.append({"method": k, "wall_s": med[k], "s_per_sample": med[k] / P,
                     "peak_disk_MB": disk[k] / 1e6, "fpe_measured": med[k] / med["forward"],
                     "fpe_counted": fpe_bound,
                     "measured/counted": med[k] / med["forward"] / fpe_bound})
    _common.print_table(rows, f"less_vs_tov {a.config} pool={P} on {_common.machine()}")
    md = [f"# ToV vs LESS: speed and storage ({a.config}, pool {P}, val {V}, "
          f"{_common.machine()})\n",
          f"Command: `{' '.join(sys.argv)}`; {repeats} repeat(s), medians; 4 epochs/"
          "checkpoints on 5% of the pool for both; projection 8192 dims; gradient dim "
          f"{config['grad_dim']}; one forward = {fwd_per_sample * 1e3:.2f} ms/sample.\n",
          "| method | wall s | s/sample | peak disk MB | FPE measured | FPE counted | "
          "measured/counted |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['wall_s']:.1f} | {r['s_per_sample']:.4f} | "
                  f"{r['peak_disk_MB']:.2f} | {r['fpe_measured']:.1f} | {r['fpe_counted']:.2f} "
                  f"| {r['measured/counted']:.1f} |")
    md.append(f"\nToV speed-up: {summary['speedup_vs_less_published']:.1f}x vs published, "
              f"{summary['speedup_vs_less_optimised']:.1f}x vs optimised; storage ratio "
              f"{summary['storage_ratio_vs_less_published']:.1f}x / "
              f"{summary['storage_ratio_vs_less_optimised']:.1f}x.")
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    _plot(path, rows)
    return path


def _plot(path: Path, rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = [r["method"] for r in rows]
    axes[0].bar(names, [r["wall_s"] for r in rows], color=["#1f77b4", "#ff7f0e", "#d62728"])
    axes[0].set_ylabel("wall time (s)")
    axes[0].set_yscale("log")
    axes[1].bar(names, [r["peak_disk_MB"] for r in rows], color=["#1f77b4", "#ff7f0e",
                                                                "#d62728"])
    axes[1].set_ylabel("peak disk (MB)")
    axes[1].set_yscale("log")
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)


def _lora(cfg) -> dict[str, Any]:
    return {"r": cfg.r, "alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules),
            "modules_to_save": list(cfg.modules_to_save or [])}


if __name__ == "__main__":
    main()
