"""The offline demo (``tov demo``, ``make demo``): ToV against random selection, end to end.

SmolLM2-135M-Instruct (`assets.load_demo_model`) and the Wikipedia vital-article summaries
(`assets.wiki_summaries`, 12 topics). One topic is the target: a few dozen of its summaries
are the validation set and a disjoint, held-out set of them is the test set (seeded split).
The pool holds the same number of rows from every topic (the target's minus validation and
test rows), so the target is 1/12 of it. ToV (`tov_select`) and a uniform random draw each
pick n rows; the same starting model is fine-tuned (LoRA, `finetune`) on each, and the target
test loss (`evaluate_loss`) is compared with the base model's. One function per stage.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tov_datasets import assets, report, training
from tov_datasets.storage import directory_bytes
from tov_datasets.trajectory import ROW, tov_select

__all__ = ["DEFAULT", "SMALL", "DemoConfig", "DemoData", "run"]

log = logging.getLogger("tov")
GROUP = "topic"
TRAJECTORY_DIR = "trajectory"
ADAPTERS = {"ToV": "tov_selected", "random": "random_selected"}


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and hyperparameters of the demo (see `DEFAULT` and `SMALL`)."""

    topic: str = "Mathematics"
    pool_per_topic: int = 16  # pool rows from each topic
    val_size: int = 24
    test_size: int = 32
    n: int = 48  # rows each selection picks
    base_size: int = 64  # ToV's random base set U
    epochs: int = 2  # ToV trajectory epochs L
    lr: float = 1e-3  # ToV base lr (val: lr / 10)
    lora_rank: int = 16
    finetune_epochs: int = 1
    finetune_lr: float = 1e-3
    max_length: int = 48  # tokens (a summary has ~100; its first sentence names the topic)
    batch_size: int = 8
    seed: int = 0

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)


DEFAULT = DemoConfig()
SMALL = DemoConfig(pool_per_topic=5, val_size=8, test_size=8, n=12, base_size=16, epochs=1,
                   max_length=32)


@dataclass
class DemoData:
    """The seeded split: ``pool`` (balanced over topics), ``val`` and ``test`` (target topic)."""

    pool: Any
    val: Any
    test: Any


def prepare_data(config: DemoConfig) -> DemoData:
    """Split the summaries: target val/test rows, then ``pool_per_topic`` rows per topic from
    the rest (fewer where a topic has fewer left)."""
    wiki = assets.wiki_summaries()
    topics = np.asarray(wiki[GROUP])
    if config.topic not in set(topics):
        names = ", ".join(sorted(set(topics.tolist())))  # plain str, not np.str_('Arts')
        raise ValueError(f"unknown topic {config.topic!r}; choose one of {names}")
    rng = np.random.default_rng(config.seed)
    target = rng.permutation(np.flatnonzero(topics == config.topic))
    held_out = config.val_size + config.test_size
    if target.size < held_out + 1:
        raise ValueError(f"topic {config.topic!r} has {target.size} rows; need > {held_out}")
    val, test = target[: config.val_size], target[config.val_size : held_out]
    free = np.ones(len(wiki), dtype=bool)
    free[target[:held_out]] = False
    pool = np.concatenate([
        rng.permutation(np.flatnonzero(free & (topics == t)))[: config.pool_per_topic]
        for t in sorted(set(topics))
    ])
    return DemoData(pool=wiki.select(np.sort(pool)), val=wiki.select(val),
                    test=wiki.select(test))


def select_with_tov(
    model: Any, tokenizer: Any, data: DemoData, config: DemoConfig, out_dir: Path,
    progress: Callable[..., Any] | None,
) -> Any:
    """ToV along a short trajectory (resumable in ``out_dir/trajectory``): a `ToVResult`."""
    lora = training.default_lora_config("causal_lm", config.lora_rank, model=model)
    return tov_select(
        model, tokenizer, data.pool, data.val, n=config.n, base_size=config.base_size,
        epochs=config.epochs, lr=config.lr, lora=lora, batch_size=config.batch_size,
        max_length=config.max_length, seed=config.seed, output_dir=out_dir / TRAJECTORY_DIR,
        progress=progress,
    )


def select_at_random(data: DemoData, config: DemoConfig) -> np.ndarray:
    """n pool rows drawn uniformly without replacement (ascending)."""
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(len(data.pool), size=config.n, replace=False))


def target_loss(model: Any, tokenizer: Any, data: DemoData, config: DemoConfig) -> float:
    """Token-mean loss of the model on the target test set."""
    return training.evaluate_loss(model, data.test, tokenizer=tokenizer,
                                  max_length=config.max_length)


def finetune_and_test(
    model: Any, tokenizer: Any, data: DemoData, rows: np.ndarray, name: str,
    config: DemoConfig, progress: Callable[..., Any] | None,
) -> float:
    """Fine-tune a fresh LoRA adapter (seeded, so every selection starts alike) on the pool
    ``rows``, return the target test loss; the model is given back without the adapter."""
    from peft import get_peft_model

    lora = training.default_lora_config("causal_lm", config.lora_rank, model=model)
    with training.seeded_rng(config.seed, next(model.parameters()).device):
        peft_model = get_peft_model(model, lora, adapter_name=ADAPTERS[name])
    try:
        training.finetune(
            peft_model, data.pool.select(rows), tokenizer=tokenizer,
            epochs=config.finetune_epochs, lr=config.finetune_lr, batch_size=config.batch_size,
            max_length=config.max_length, seed=config.seed, progress=progress,
        )
        return target_loss(peft_model, tokenizer, data, config)
    finally:
        peft_model.unload()


def composition_table(data: DemoData, selections: dict[str, np.ndarray], topic: str) -> str:
    """Target rows and share of each selection against the pool's."""
    topics = np.asarray(data.pool[GROUP])
    pool_share = float(np.mean(topics == topic))
    rows = [["pool", len(topics), int((topics == topic).sum()), f"{pool_share:.1%}", "1.0x"]]
    for name, idx in selections.items():
        share = float(np.mean(topics[idx] == topic))
        rows.append([name, idx.size, int((topics[idx] == topic).sum()), f"{share:.1%}",
                     f"{share / pool_share:.1f}x"])
    return report.markdown_table(["rows of", "rows", topic, "share", "vs pool"], rows)


def loss_table(losses: dict[str, float]) -> str:
    """Target test loss per model, with the change against the base model."""
    base = losses["base model"]
    rows = [[name, value, "" if name == "base model" else f"{value - base:+.4f}"]
            for name, value in losses.items()]
    return report.markdown_table(["model", "target test loss", "vs base"], rows)


def write_outputs(
    out_dir: Path, config: DemoConfig, data: DemoData, result: Any,
    selections: dict[str, np.ndarray], sections: dict[str, str], stages: report.Stages,
    device: str, losses: dict[str, float], resumed: bool,
) -> None:
    """report.md, plots and run.json."""
    scores = result.scores.with_format("arrow")[:]
    counts = {
        "target topic": config.topic, "pool rows": len(data.pool),
        "validation rows": len(data.val), "test rows (held out)": len(data.test),
        "base set rows": config.base_size, "epochs": config.epochs, "selected (n)": config.n,
        "ToV trajectory resumed": "yes" if resumed else "no",
    }
    report.write_report(out_dir, report.report_data(
        f"tov demo: {config.topic}", scores, selections, groups=np.asarray(data.pool[GROUP]),
        group_column=GROUP, counts=counts, timings=stages.seconds, sections=sections,
    ))
    report.write_run_json(
        out_dir / "run.json", command="demo", arguments=dataclasses.asdict(config),
        timings=stages.seconds, trajectory_timings=result.timings, history=result.history,
        losses=losses, counts=counts, device=device, resumed=resumed,
        disk_bytes={"trajectory": result.disk_bytes, "total": directory_bytes(out_dir)},
    )


def run(config: DemoConfig, out_dir: str | Path,
        progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The whole demo; prints its tables and returns {"losses", "selections", "timings"}."""
    out_dir = Path(out_dir)
    resumed = (out_dir / TRAJECTORY_DIR / "manifest.json").is_file()
    stages = report.Stages()
    with stages("prepare data"):
        data = prepare_data(config)
    with stages("load model"):
        model, tokenizer = assets.load_demo_model()
    result = select_with_tov(model, tokenizer, data, config, out_dir, progress)
    stages.add(result.timings, report.TRAJECTORY_STAGES)
    selections = {"ToV": result.selected.with_format("arrow")[:].column(ROW).to_numpy(),
                  "random": select_at_random(data, config)}
    with stages("test loss, base model"):
        losses = {"base model": target_loss(model, tokenizer, data, config)}
    for name, rows in selections.items():
        with stages(f"fine-tune + test, {name}"):
            losses[f"LoRA on {name} selection"] = finetune_and_test(
                model, tokenizer, data, rows, name, config, progress
            )
    sections = {
        "Target share of each selection": composition_table(data, selections, config.topic),
        "Target test loss": loss_table(losses),
    }
    with stages("report"):
        write_outputs(out_dir, config, data, result, selections, sections, stages,
                      report.device_name(model), losses, resumed)
    total = sum(stages.seconds.values())
    timing = report.markdown_table(
        ["stage", "seconds"],
        [*([k, f"{v:.1f}"] for k, v in stages.seconds.items()), ["total", f"{total:.1f}"]],
    )
    print("\n\n".join([
        f"tov demo: target topic {config.topic!r}; {len(data.val)} validation rows, "
        f"{len(data.test)} held-out test rows; pool of {len(data.pool)} rows "
        f"({config.pool_per_topic} per topic); n = {config.n}"
        + ("; ToV trajectory resumed from an earlier run" if resumed else ""),
        *sections.values(), timing, f"report: {out_dir / report.REPORT_NAME}",
    ]))
    return {"losses": losses, "selections": selections, "timings": stages.seconds}
