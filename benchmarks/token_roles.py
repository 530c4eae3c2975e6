"""Where ToV's score comes from, token by token, on one seed of a quality configuration.

ToV's score is the mean over a row's scored tokens of delta_t = log p_val(y_t) - log
p_base(y_t). A chat answer's scored tokens are its content (a label word, a paragraph) and
the end-of-turn token after it, which every row of a task shares whatever its content says;
a tagged sentence's scored words are mostly "O", whatever its entities are.
This runs the configuration's ToV trajectory (`quality.tov_result`, the settings of the
quality run, so the same scores) keeping each epoch's base and val adapters, then recomputes
every pool row's per-token deltas with plain forwards (float64 log-softmax over the logits
of each adapter in turn, batch 1: independent of the library's fused scorer, whose score it
must reproduce) and splits them by role (`ROLES`): causal LM: ``content`` = scored tokens
before the first end-of-sequence token, ``end`` = that token and after; token
classification: ``entity`` = words whose gold tag is not "O", ``o`` = words tagged "O". Per
pool source and epoch: the mean delta over each role; and the raw-score AUC of the target
rows against each other source if the score were the mean over one role only.

    python benchmarks/token_roles.py --config chat_labels --seed 0
    python benchmarks/token_roles.py --config ner_coarse_v3 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _common, quality  # noqa: E402
from benchmarks.quality_configs import CONFIGS  # noqa: E402

ROLES = {"causal_lm": ("all", "content", "end"), "token_classification": ("all", "entity", "o")}
SCORE_ATOL = 2e-3  # the library scores in float32 with fused kernels; this is float64


@torch.no_grad()
def token_logprobs(model: Any, adapter: str, input_ids: list[int], labels: list[int],
                   shift: bool = True) -> np.ndarray:
    """Float64 log-probabilities of the labels under ``adapter``, NaN where a label is not
    scored; the model in eval mode (no dropout). ``shift`` (causal LM): (T-1,) log
    p(labels[t] | input_ids[:t]); else (token classifier): (T,) log p(labels[t]) in place."""
    model.set_adapter(adapter)
    logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()
    if shift:
        logits, labels = logits[:-1], labels[1:]
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(labels)
    scored = target != -100
    out = torch.full((target.numel(),), float("nan"), dtype=torch.float64)
    out[scored] = logp[scored.nonzero()[:, 0], target[scored]]
    return out.numpy()


def role_masks(labels: list[int], end_id: int) -> dict[str, np.ndarray]:
    """Boolean masks over positions 1..T-1: every scored token, the content (scored, before
    the first scored ``end_id``) and the end (that token and every scored one after)."""
    y = np.asarray(labels[1:])
    scored = y != -100
    hits = np.flatnonzero(scored & (y == end_id))
    first_end = hits[0] if hits.size else y.size
    position = np.arange(y.size)
    return {"all": scored, "content": scored & (position < first_end),
            "end": scored & (position >= first_end)}


def tag_role_masks(labels: list[int], o_id: int) -> dict[str, np.ndarray]:
    """Boolean masks over a token classifier's positions 0..T-1: every scored word, the
    entity words (gold tag not ``o_id``) and the "O" words."""
    y = np.asarray(labels)
    scored = y != -100
    return {"all": scored, "entity": scored & (y != o_id), "o": scored & (y == o_id)}


def row_role_means(model: Any, samples: list[Any], task: str, role_id: int
                   ) -> dict[str, np.ndarray]:
    """Per row, the mean delta over each role's tokens (NaN where a row has none);
    ``role_id``: the end-of-sequence id (causal LM) or the "O" tag's id (token classifier)."""
    shift = task == "causal_lm"
    masks = role_masks if shift else tag_role_masks
    out = {r: np.full(len(samples), np.nan) for r in ROLES[task]}
    for i, sample in enumerate(samples):
        delta = (token_logprobs(model, "val", sample.input_ids, sample.labels, shift)
                 - token_logprobs(model, "base", sample.input_ids, sample.labels, shift))
        for role, mask in masks(sample.labels, role_id).items():
            if mask.any():
                out[role][i] = float(delta[mask].mean())
    return out


def by_source(values: np.ndarray, sources: np.ndarray, is_target: np.ndarray
              ) -> dict[str, Any]:
    """Mean per source (over rows with a value) and the AUC of the target rows against each
    other source alone (`quality.auc_vs_sources`, over rows with a value)."""
    have = ~np.isnan(values)
    means = {str(k): float(values[have & (sources == k)].mean())
             if (have & (sources == k)).any() else float("nan") for k in np.unique(sources)}
    return {"mean": means,
            "auc_vs_source": quality.auc_vs_sources(values[have], is_target[have],
                                                    sources[have])}


def run(config_name: str, size: str, seed: int) -> dict[str, Any]:
    from tov_datasets import models, training

    config = CONFIGS[config_name]
    s = quality.setup(config, size, seed)
    task = config.task
    role_id = (s.tokenizer.eos_token_id if task == "causal_lm"
               else s.model.config.label2id["O"])
    sources, is_target = s.sources, s.is_target
    samples = training.encode_dataset(s.pool, s.tokenizer, task=task,
                                      max_length=s.sizes.max_length,
                                      label2id=models.label_map(s.model, task))
    epochs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        result = quality.tov_result(s, "tov", output_dir=tmp)
        table = result.scores.data
        order = np.argsort(table.column("tov_row").to_numpy())
        for k in range(1, s.sizes.epochs + 1):
            library = np.asarray(table.column(f"tov_score_epoch_{k}").to_numpy(),
                                 dtype=np.float64)[order]
            directory = Path(tmp) / f"epoch_{k:03d}"
            model = models.load_adapters(copy.deepcopy(s.model),
                                         {"base": directory / "base", "val": directory / "val"})
            model.eval()
            means = row_role_means(model, samples, task, role_id)
            gap = float(np.nanmax(np.abs(means["all"] - library)))
            if gap > SCORE_ATOL:
                raise AssertionError(f"epoch {k}: plain forwards differ from the library's "
                                     f"score by {gap:.2e} (> {SCORE_ATOL})")
            epochs.append({"epoch": k, "max_abs_diff_vs_library": gap,
                           **{r: by_source(means[r], sources, is_target)
                              for r in ROLES[task]}})
    return {"config": config_name, "task": task, "size": size, "seed": seed,
            "role_token_id": int(role_id),
            "pool_sources": s.meta.get("pool_sources"), "epochs": epochs}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--size", choices=["small", "full", "gpu", "tiny"], default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    details = run(a.config, a.size, a.seed)
    last = details["epochs"][-1]
    summary = {"seed": a.seed, "epochs": len(details["epochs"]),
               "max_abs_diff_vs_library": max(e["max_abs_diff_vs_library"]
                                             for e in details["epochs"])}
    roles = ROLES[details["task"]]
    for role in roles:
        for src, value in last[role]["auc_vs_source"].items():
            summary[f"{role}_auc_vs_{src}"] = value
        for src, value in last[role]["mean"].items():
            summary[f"{role}_mean_delta_{src}"] = value
    suffix = "" if a.size == "full" else f"_{a.size}"
    out_dir = a.out_dir or _common.RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = _common.write_result(
        "token_roles", {"config": a.config, "size": a.size, "seed": a.seed,
                        "threads": a.threads}, summary, details,
        filename=str((out_dir / f"token_roles_{a.config}{suffix}_seed{a.seed}.json").resolve()))
    rows = []
    for e in details["epochs"]:
        for role in roles:
            rows.append({"epoch": e["epoch"], "role": role,
                         **{f"mean {k}": v for k, v in e[role]["mean"].items()},
                         **{f"auc vs {k}": v for k, v in e[role]["auc_vs_source"].items()}})
    _common.print_table(rows)
    return path


if __name__ == "__main__":
    main()
