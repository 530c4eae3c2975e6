"""Fidelity at a trained model: do ToV and LESS rank pool rows by the exact effect of one
optimizer step on them?

1. Trained state theta*: the configuration's model (``quality_configs.CONFIGS``) with the
   library's default LoRA (``default_lora_config(task, rank=cfg.selector_rank)``: alpha 32,
   dropout 0.2) trained with AdamW (constant lr, the configuration's base lr and batch size)
   on a random base set U of the pool, epoch after epoch until the epoch-mean training loss
   changes by less than ``--tol`` (2%) between epochs, at most ``--max-epochs``. The loss
   curve (training and validation) is recorded.
2. Samples: ``--samples`` pool rows outside U, stratified: ``--target-share`` of them target
   rows, the rest split evenly over the other sources.
3. References, each computed exactly at theta* for every sample x (eval mode, so no dropout;
   val loss = token mean over the whole validation set, float64 accumulation; weights and
   optimizer state restored after every sample):
   - ``exact`` (AdamW): val_loss(theta*) - val_loss(after ONE AdamW step on x alone with a
     copy of the trained optimizer's state: the step the trajectory would take);
   - ``exact_sgd``: the same for one plain SGD step theta* - eta g_x, with eta chosen so that
     the median SGD step is as long as the median of x's own part of the AdamW step (the
     AdamW step minus the step the same state takes with a zero gradient, i.e. without the
     shared momentum): eta = median ||dtheta_adam(x) - dtheta_adam(0)|| / median ||g_x||
     over the samples, fixed before any score is computed.
   Their first-order terms are reported too: ``graddot`` = g_x . g_val (plain gradients, no
   projection: the upper-bound reference for any gradient score) and ``adamdot`` =
   -g_val . dtheta_adam(x). A float64 copy of the model recomputes the references of the
   first ``--float64-check`` samples, to show the float32 forwards are exact enough.
4. Scores at theta*: ToV under each val update rule (the val adapter = theta* trained one
   epoch on the validation set at lr / 10; score = mean per-token log-prob delta val - base,
   the library's ToVScorer): ``tov`` a fresh AdamW (``val_optimizer="fresh"``), ``tov_val_sgd``
   normalised gradient steps (``"sgd"``, the library's default), ``tov_val_continue`` AdamW
   from a copy of theta*'s optimizer moments (``"continue"``: the moments the reference
   AdamW step uses), each from theta* with the same seed; LESS published
   (Adam-preconditioned gradients with theta*'s AdamW moments, val gradients plain,
   Rademacher-projected to 8192 dims, cosine, mean over the val samples;
   ``benchmarks.baselines.less``) and LESS unnormalised (the same
   with dot products).
5. Metrics for every score against both references: Spearman over all samples and within
   each source (per source and their mean), top-k overlap (k = 10% of the samples: share of
   the reference's top k among the score's top k), and the ROC-AUC of every score and
   reference for the target rows; the share of positive exact effects.

    python benchmarks/fidelity.py --config ner_coarse --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import _common, eval_data  # noqa: E402
from benchmarks.baselines import less  # noqa: E402
from benchmarks.baselines._util import (  # noqa: E402
    batch_on_device,
    encode,
    forward_logits,
    lora_copy,
    pad_id_of,
    per_sample_token_mean,
    top_n,
)
from benchmarks.quality_configs import CONFIGS  # noqa: E402
from tov_datasets import models, training  # noqa: E402
from tov_datasets.evaluation import roc_auc  # noqa: E402
from tov_datasets.formats import IGNORE_INDEX, collate  # noqa: E402
from tov_datasets.trajectory import val_update_optimizer  # noqa: E402

DEFAULT_SAMPLES = {"full": 150, "small": 45, "tiny": 18}
TINY = {"base_size": 12, "lr": 5e-2, "batch_size": 4, "max_length": 64}
PROJ_DIM = {"tiny": 256}  # LESS's projection (8192 otherwise)
TOPK_FRACTION = 0.1
TOV_RULES = {"tov": "fresh", "tov_val_sgd": "sgd", "tov_val_continue": "continue"}
SCORES = (*TOV_RULES, "less", "less_unnormalised", "graddot", "adamdot")
REFERENCES = {"exact": "AdamW step", "exact_sgd": "SGD step"}


# ---------------------------------------------------------------- metrics -------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    start = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    end = np.r_[start[1:], len(x)]
    for a, b in zip(start, end, strict=True):
        ranks[order[a:b]] = (a + b - 1) / 2.0
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (Pearson of tie-averaged ranks); NaN when a side is constant
    or fewer than 3 values."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"lengths differ: {a.shape} vs {b.shape}")
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def topk_overlap(score: Any, reference: Any, k: int) -> float:
    """Share of the reference's k highest rows among the score's k highest (ties: lower row)."""
    return len(set(top_n(score, k).tolist()) & set(top_n(reference, k).tolist())) / k


def within_source(score: np.ndarray, reference: np.ndarray, sources: np.ndarray
                  ) -> dict[str, float]:
    """Spearman of score vs reference inside each source (sorted by name)."""
    return {str(s): spearman(score[sources == s], reference[sources == s])
            for s in np.unique(sources)}


def stratified_rows(sources: np.ndarray, is_target: np.ndarray, candidates: np.ndarray,
                    num: int, target_share: float, rng: np.random.Generator) -> np.ndarray:
    """``num`` rows of ``candidates`` (sorted): round(target_share * num) target rows, the rest
    split evenly over the non-target sources (a source short of rows leaves its part to the
    others; every group is capped by what it holds)."""
    candidates = np.asarray(candidates)
    targets = candidates[is_target[candidates]]
    want_target = min(len(targets), int(round(target_share * num)))
    picked = [rng.choice(targets, want_target, replace=False)]
    others = candidates[~is_target[candidates]]
    groups = {s: rng.permutation(others[sources[others] == s]) for s in np.unique(
        sources[others])}
    left, taken = num - want_target, dict.fromkeys(groups, 0)
    while left > 0 and any(taken[s] < len(g) for s, g in groups.items()):
        open_groups = [s for s, g in groups.items() if taken[s] < len(g)]
        share = max(1, left // len(open_groups))
        for s in open_groups:
            extra = min(share, len(groups[s]) - taken[s], left)
            taken[s] += extra
            left -= extra
    picked += [g[: taken[s]] for s, g in groups.items()]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# ---------------------------------------------------------------- exact val loss ------------
class MergedValLoss:
    """Token-mean val loss of one LoRA adapter of a peft model, computed by a plain copy of
    the frozen model whose weights are refreshed to W + delta (peft's ``get_delta_weight``;
    modules_to_save copies loaded as they are) before every call: the adapter's function
    in eval mode without peft's extra LoRA matmuls (about 25% faster on CPU). Per-token
    losses in float64 (log-softmax of the logits cast to float64), summed in float64."""

    def __init__(self, plain: nn.Module, peft_model: nn.Module, adapter: str,
                 val_samples: list, pad_id: int, batch_size: int) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import ModulesToSaveWrapper

        dtype = next(peft_model.parameters()).dtype
        self.plain = copy.deepcopy(plain).to(dtype).eval()
        self.task = models.infer_task(plain)
        for p in self.plain.parameters():
            p.requires_grad_(False)
        prefix = "base_model.model."
        targets = dict(self.plain.named_modules())
        self.lora, self.saved = [], []
        for name, module in peft_model.named_modules():
            short = name[len(prefix):] if name.startswith(prefix) else name
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                self.lora.append((module, targets[short], adapter))
            elif isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
                self.saved.append((module.modules_to_save[adapter], targets[short]))
        if not self.lora:
            raise ValueError(f"no LoRA layer of adapter {adapter!r} found")
        lengths = np.array([len(s.input_ids) for s in val_samples])
        self.batches = [collate([val_samples[i] for i in mb], pad_id)
                        for mb in training.micro_batches(lengths, batch_size)]
        self.tokens = sum(int(self._scored(b["labels"]).sum()) for b in self.batches)

    def _scored(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels[:, 1:] if self.task == "causal_lm" else labels) != IGNORE_INDEX

    @torch.no_grad()
    def refresh(self) -> None:
        for lora_module, target, adapter in self.lora:
            target.weight.copy_(lora_module.base_layer.weight
                                + lora_module.get_delta_weight(adapter))
        for source, target in self.saved:
            for p, q in zip(source.parameters(), target.parameters(), strict=True):
                q.copy_(p)

    @torch.no_grad()
    def __call__(self) -> float:
        self.refresh()
        total = torch.zeros((), dtype=torch.float64)
        for batch in self.batches:
            logits = forward_logits(self.plain, batch, self.task)
            labels = batch["labels"]
            if self.task == "causal_lm":
                logits, labels = logits[:, :-1], labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                     labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                     reduction="sum")
        return float(total) / self.tokens


# ---------------------------------------------------------------- one-step effects ----------
def sample_gradient(model: nn.Module, params: list[nn.Parameter], sample: Any, pad_id: int,
                    task: str) -> list[torch.Tensor]:
    """Gradient of one sample's token-mean loss (a training step on x alone) over params."""
    batch = batch_on_device([sample], pad_id, model)
    loss = per_sample_token_mean(forward_logits(model, batch, task), batch["labels"], task)[0]
    return list(torch.autograd.grad(loss, params))


def val_gradient(model: nn.Module, params: list[nn.Parameter], val_samples: list, pad_id: int,
                 task: str, batch_size: int) -> torch.Tensor:
    """Flat gradient of the token-mean val loss (all val tokens weighted equally)."""
    total = [torch.zeros_like(p) for p in params]
    tokens = 0
    lengths = np.array([len(s.input_ids) for s in val_samples])
    for mb in training.micro_batches(lengths, batch_size):
        batch = batch_on_device([val_samples[i] for i in mb], pad_id, model)
        logits, labels = forward_logits(model, batch, task), batch["labels"]
        if task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
        tokens += int((labels != IGNORE_INDEX).sum())
    return torch.cat([g.reshape(-1) for g in total]) / tokens


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class StepProbe:
    """Takes one step on the current params and puts params and optimizer state back.

    ``adamw(grads)``: one ``optimizer.step()`` with ``grads`` as the gradient, from the
    optimizer's current state (a copy is taken first and restored after). ``sgd(grads, lr)``:
    params - lr * grads. Both return the flat step (params after - before) and leave the
    stepped weights in place until ``restore()``."""

    def __init__(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self.params, self.optimizer = params, optimizer
        self.start = [p.detach().clone() for p in params]
        self.state = {p: {k: v.clone() if torch.is_tensor(v) else v
                          for k, v in optimizer.state[p].items()} for p in params}

    @torch.no_grad()
    def adamw(self, grads: list[torch.Tensor]) -> torch.Tensor:
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.detach().clone()
        self.optimizer.step()
        return self._step()

    @torch.no_grad()
    def sgd(self, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
        for p, g in zip(self.params, grads, strict=True):
            p.sub_(lr * g)
        return self._step()

    def _step(self) -> torch.Tensor:
        return _flat([p.detach() - p0 for p, p0 in zip(self.params, self.start, strict=True)])

    @torch.no_grad()
    def restore(self) -> None:
        for p, p0 in zip(self.params, self.start, strict=True):
            p.copy_(p0)
            p.grad = None
            self.optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v
                                       for k, v in self.state[p].items()}


@dataclass
class FirstOrder:
    graddot: np.ndarray  # g_x . g_val
    adamdot: np.ndarray  # -g_val . dtheta_adam(x)
    grad_norm: np.ndarray  # ||g_x||
    adam_step_norm: np.ndarray  # ||dtheta_adam(x)||
    adam_own_step_norm: np.ndarray  # ||dtheta_adam(x) - dtheta_adam(0)||: x's own part


def first_order(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                samples: list, g_val: torch.Tensor, pad_id: int, task: str) -> FirstOrder:
    """First-order terms of the two one-step effects and the step lengths, per sample."""
    probe = StepProbe(params, optimizer)
    momentum_step = probe.adamw([torch.zeros_like(p) for p in params]).double()
    probe.restore()
    out = {k: np.zeros(len(samples)) for k in FirstOrder.__dataclass_fields__}
    for j, x in enumerate(samples):
        g = sample_gradient(model, params, x, pad_id, task)
        flat = _flat(g)
        step = probe.adamw(g)
        probe.restore()
        out["graddot"][j] = float(flat.double() @ g_val.double())
        out["adamdot"][j] = -float(step.double() @ g_val.double())
        out["grad_norm"][j] = float(flat.double().norm())
        out["adam_step_norm"][j] = float(step.double().norm())
        out["adam_own_step_norm"][j] = float((step.double() - momentum_step).norm())
    return FirstOrder(**out)


def exact_effects(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                  samples: list, val_loss: Any, pad_id: int, task: str, sgd_lr: float
                  ) -> dict[str, Any]:
    """{"before": val loss at the current state, "exact": (N,) val_loss(before) -
    val_loss(after one AdamW step on x), "exact_sgd": (N,) the same for one SGD step at
    ``sgd_lr``, "momentum_only": the effect of an AdamW step with a zero gradient}; params
    and optimizer state are as they were on return."""
    probe = StepProbe(params, optimizer)
    before = val_loss()
    probe.adamw([torch.zeros_like(p) for p in params])
    momentum_only = before - val_loss()
    probe.restore()
    adam, sgd = np.zeros(len(samples)), np.zeros(len(samples))
    started = time.perf_counter()
    for j, x in enumerate(samples):
        if j and j % 25 == 0:
            print(f"  exact effects: {j}/{len(samples)} in {time.perf_counter() - started:.0f} s",
                  flush=True)
        g = sample_gradient(model, params, x, pad_id, task)
        probe.adamw(g)
        adam[j] = before - val_loss()
        probe.restore()
        probe.sgd(g, sgd_lr)
        sgd[j] = before - val_loss()
        probe.restore()
    return {"before": before, "exact": adam, "exact_sgd": sgd, "momentum_only": momentum_only}


def _grad_mode(model: nn.Module, params: list[nn.Parameter]) -> None:
    """Eval mode; only ``params`` require grad."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)


def float64_check(plain: nn.Module, model: nn.Module, adapter: str,
                  optimizer: torch.optim.Optimizer, samples: list, val_samples: list,
                  pad_id: int, task: str, sgd_lr: float, batch_size: int) -> dict[str, Any]:
    """The references of ``samples`` recomputed with a float64 copy of model and optimizer."""
    model64 = copy.deepcopy(model).double()
    params64 = models.adapter_parameters(model64, adapter)
    opt64 = torch.optim.AdamW(params64, lr=optimizer.param_groups[0]["lr"], weight_decay=0.0)
    opt64.load_state_dict(optimizer.state_dict())  # floating state cast to float64
    _grad_mode(model64, params64)
    loss64 = MergedValLoss(plain, model64, adapter, val_samples, pad_id, batch_size)
    return exact_effects(model64, params64, opt64, samples, loss64, pad_id, task, sgd_lr)


# ---------------------------------------------------------------- scores --------------------
def less_scores(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                samples: list, val_samples: list, pad_id: int, task: str, proj_dim: int,
                batch_size: int) -> dict[str, np.ndarray]:
    """LESS at the trained state (one checkpoint): published (cosine of projected
    Adam-preconditioned sample gradients with projected plain val gradients, mean over the
    val samples) and unnormalised (dot products instead)."""
    m, v = less._flat_moments(optimizer, params)
    grads = {}
    for part, rows, mm, vv in (("pool", samples, m, v), ("val", val_samples, None, None)):
        out = torch.empty(len(rows), sum(p.numel() for p in params))
        for mb, g in less.per_sample_gradients(model, params, rows, pad_id, task, mm, vv,
                                               batch_size):
            out[torch.as_tensor(mb)] = g
        grads[part] = out
    projector = less.RademacherProjector(grads["pool"].shape[1], proj_dim, seed=0)
    projected = projector.project(torch.cat([grads["pool"], grads["val"]])).double()
    pool, val = projected[: len(samples)], projected[len(samples):]
    return {"less": (F.normalize(pool, dim=1) @ F.normalize(val, dim=1).T).mean(1).numpy(),
            "less_unnormalised": (pool @ val.T).mean(1).numpy()}


def tov_scores(model: nn.Module, tokenizer: Any, rows: Any, val: Any, *, lr: float,
               batch_size: int, max_length: int, seed: int, val_optimizer: str,
               base_optimizer: torch.optim.Optimizer) -> tuple[np.ndarray, float]:
    """ToV at the trained state: val = base trained one epoch on ``val`` at lr / 10 (constant
    lr) under the update rule ``val_optimizer`` (``"continue"`` copies ``base_optimizer``'s
    moments, which stay untouched); the library's ToVScorer.
    Returns (scores (N,), the val adapter's training loss)."""
    from tov_datasets import ToVScorer

    models.copy_adapter(model, "base", "val")
    optimizer = val_update_optimizer(model, val_optimizer, lr / 10,
                                     base_optimizer=base_optimizer, base_adapter="base",
                                     val_adapter="val")
    info = training.finetune(model, val, tokenizer=tokenizer, adapter="val", epochs=1,
                             lr=lr / 10, batch_size=batch_size, max_length=max_length,
                             seed=seed, schedule="constant", optimizer=optimizer)
    model.set_adapter("base")
    scorer = ToVScorer(model, tokenizer, base_adapter="base", val_adapter="val",
                       transform="identity", max_length=max_length, batch_size=2 * batch_size)
    scores, _ = scorer.score_columns(rows.to_dict())
    return scores.astype(np.float64), info["mean_loss"]


# ---------------------------------------------------------------- setup ---------------------
def setup(config: str, size: str, seed: int) -> dict[str, Any]:
    """Data (pool rows carry ``source`` and ``is_target``), the plain model, tokenizer and
    sizes (base_size, lr, batch_size, max_length) of a configuration; ``size="tiny"``: the
    tiny random models of the tests with synthetic data of the configuration's task."""
    cfg = CONFIGS[config]
    if size == "tiny":
        s = eval_data.tiny_setup("ner" if cfg.task == "token_classification" else "it", seed)
        for part in ("pool", "val", "test"):
            s[part] = s[part].map(lambda r: {"is_target": r["source"] == "target"})
        return {**s, "sizes": dict(TINY), "rank": 2}
    sz = cfg.sizes[size]
    data = cfg.build(seed, **sz.data)
    model, tokenizer = cfg.load_model(seed)
    return {**data, "model": model, "tokenizer": tokenizer, "rank": cfg.selector_rank,
            "sizes": {"base_size": sz.base_size, "lr": sz.lr, "batch_size": sz.batch_size,
                      "max_length": sz.max_length}}


def train_to_convergence(model: nn.Module, samples: list, pad_id: int, *, lr: float,
                         batch_size: int, max_epochs: int, tol: float, seed: int,
                         val_loss: Any) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """AdamW epochs of adapter "base" on ``samples`` until the epoch-mean training loss
    changes by less than ``tol`` (relative) or ``max_epochs``; returns the optimizer and the
    curve {"train_loss": [...], "val_loss": [...], "converged": bool}."""
    params = models.adapter_parameters(model, "base")
    optimizer = training.adamw(params, lr)
    curve: dict[str, Any] = {"train_loss": [], "val_loss": [], "converged": False}
    for epoch in range(max_epochs):
        info = training.fit(model, samples, pad_token_id=pad_id, adapter="base", epochs=1,
                            lr=lr, batch_size=batch_size, schedule="constant",
                            seed=1000 * seed + epoch, optimizer=optimizer)
        curve["train_loss"].append(info["mean_loss"])
        curve["val_loss"].append(val_loss())
        losses = curve["train_loss"]
        print(f"  base epoch {epoch + 1}: train {losses[-1]:.4f}, val "
              f"{curve['val_loss'][-1]:.4f}", flush=True)
        if len(losses) > 1 and abs(losses[-1] - losses[-2]) < tol * losses[-2]:
            curve["converged"] = True
            break
    return optimizer, curve


# ---------------------------------------------------------------- main ----------------------
def evaluate(scores: dict[str, np.ndarray], refs: dict[str, np.ndarray], sources: np.ndarray,
             is_target: np.ndarray, k: int) -> dict[str, Any]:
    """Every metric of every score against every reference (flat summary + per source)."""
    summary: dict[str, Any] = {}
    per_source: dict[str, Any] = {}
    for ref_name, ref in refs.items():
        suffix = "" if ref_name == "exact" else "_" + ref_name.removeprefix("exact_")
        summary[f"{ref_name}_positive_share"] = float((ref > 0).mean())
        summary[f"auc_{ref_name}"] = roc_auc(ref, is_target)
        for name, score in scores.items():
            within = within_source(score, ref, sources)
            per_source[f"{name}_vs_{ref_name}"] = within
            summary[f"spearman_{name}_vs_exact{suffix}"] = spearman(score, ref)
            summary[f"spearman_{name}_within_source{suffix}"] = float(np.nanmean(
                list(within.values())))
            summary[f"topk_overlap_{name}{suffix}"] = topk_overlap(score, ref, k)
    for name, score in scores.items():
        summary[f"auc_{name}"] = roc_auc(score, is_target)
    summary["spearman_exact_vs_exact_sgd"] = spearman(refs["exact"], refs["exact_sgd"])
    return {"summary": summary, "per_source": per_source}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="ner_coarse")
    _common.add_size_options(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=None,
                    help=f"pool rows scored and stepped on (default {DEFAULT_SAMPLES})")
    ap.add_argument("--target-share", type=float, default=1 / 3)
    ap.add_argument("--max-epochs", type=int, default=8, help="cap of the base training")
    ap.add_argument("--tol", type=float, default=0.02,
                    help="base training stops when the epoch-mean loss changes by less")
    ap.add_argument("--float64-check", type=int, default=3,
                    help="samples whose references are recomputed in float64")
    a = ap.parse_args(argv)
    size, setup_size, size_label = _common.resolve_size(a)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    s = setup(a.config, setup_size, a.seed)
    timings["setup"] = time.perf_counter() - t0
    sz, tok = s["sizes"], s["tokenizer"]
    lr, bs, ml = sz["lr"], sz["batch_size"], sz["max_length"]
    num_samples = a.samples or DEFAULT_SAMPLES[setup_size]
    task = models.infer_task(s["model"])
    pad = pad_id_of(tok)
    pool = s["pool"]
    sources = np.asarray(pool["source"])
    is_target = np.asarray(pool["is_target"], dtype=bool)
    rng = np.random.default_rng(a.seed)
    base_rows = np.sort(rng.choice(len(pool), size=min(sz["base_size"], len(pool)),
                                   replace=False))
    outside = np.setdiff1d(np.arange(len(pool)), base_rows)
    rows = stratified_rows(sources, is_target, outside, num_samples, a.target_share, rng)

    # 1. the trained state
    lora = models.default_lora_config(task, rank=s["rank"], model=s["model"])
    model = lora_copy(s["model"], lora, "base", seed=a.seed)
    model.add_adapter("val", copy.deepcopy(lora))
    base_samples = encode(model, pool.select(base_rows), tok, ml)
    val_samples = encode(model, s["val"], tok, ml)
    samples = encode(model, pool.select(rows), tok, ml)
    val_loss = MergedValLoss(s["model"], model, "base", val_samples, pad, 2 * bs)
    t0 = time.perf_counter()
    optimizer, curve = train_to_convergence(
        model, base_samples, pad, lr=lr, batch_size=bs, max_epochs=a.max_epochs, tol=a.tol,
        seed=a.seed, val_loss=val_loss)
    timings["base_training"] = time.perf_counter() - t0
    params = models.adapter_parameters(model, "base")
    model.set_adapter("base")
    _grad_mode(model, params)

    # 2. references
    t0 = time.perf_counter()
    g_val = val_gradient(model, params, val_samples, pad, task, 2 * bs)
    fo = first_order(model, params, optimizer, samples, g_val, pad, task)
    sgd_lr = float(np.median(fo.adam_own_step_norm) / np.median(fo.grad_norm))
    timings["first_order"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    effects = exact_effects(model, params, optimizer, samples, val_loss, pad, task, sgd_lr)
    timings["exact"] = time.perf_counter() - t0
    print(f"  exact effects of {len(samples)} samples: {timings['exact']:.0f} s", flush=True)
    check: dict[str, Any] = {}
    if a.float64_check:
        t0 = time.perf_counter()
        c = min(a.float64_check, len(samples))
        e64 = float64_check(s["model"], model, "base", optimizer, samples[:c], val_samples,
                            pad, task, sgd_lr, 2 * bs)
        for ref in REFERENCES:
            spread = float(np.std(effects[ref]))
            diff = float(np.abs(e64[ref] - effects[ref][:c]).max())
            check[ref] = {"float64": e64[ref].tolist(), "float32": effects[ref][:c].tolist(),
                          "max_abs_diff": diff, "max_abs_diff_over_std": diff / spread}
        timings["float64_check"] = time.perf_counter() - t0
    _grad_mode(model, params)

    # 3. scores
    t0 = time.perf_counter()
    scores = less_scores(model, params, optimizer, samples, val_samples, pad, task,
                         PROJ_DIM.get(size, 8192), bs)
    timings["less"] = time.perf_counter() - t0
    tov: dict[str, np.ndarray] = {}
    val_train_loss: dict[str, float] = {}
    for name, rule in TOV_RULES.items():
        t0 = time.perf_counter()
        tov[name], val_train_loss[name] = tov_scores(
            model, tok, pool.select(rows), s["val"], lr=lr, batch_size=bs, max_length=ml,
            seed=a.seed, val_optimizer=rule, base_optimizer=optimizer)
        timings[name] = time.perf_counter() - t0
    scores = {**tov, **scores, "graddot": fo.graddot, "adamdot": fo.adamdot}
    refs = {ref: effects[ref] for ref in REFERENCES}

    # 4. metrics
    k = max(1, int(round(TOPK_FRACTION * len(samples))))
    result = evaluate(scores, refs, sources[rows], is_target[rows], k)
    summary = {**result["summary"], "samples": len(samples), "target_samples":
               int(is_target[rows].sum()), "topk": k, "base_epochs": len(curve["train_loss"]),
               "base_converged": curve["converged"], "base_train_loss": curve["train_loss"][-1],
               "base_val_loss": curve["val_loss"][-1], "sgd_lr": sgd_lr,
               "momentum_only_effect": effects["momentum_only"]}
    if check:
        summary["float64_max_abs_diff_over_std"] = max(
            v["max_abs_diff_over_std"] for v in check.values())
    timings["total"] = time.perf_counter() - started
    config = {"config": a.config, "size": size_label, "task": task, "sizes": sz,
              "lora": {"rank": s["rank"], "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                       "target_modules": sorted(lora.target_modules)},
              "data": s["meta"], "samples": len(samples), "target_share": a.target_share,
              "base_size": len(base_rows), "max_epochs": a.max_epochs, "tol": a.tol,
              "val_lr": lr / 10, "proj_dim": PROJ_DIM.get(size, 8192), "seed": a.seed,
              "threads": a.threads, "val": len(val_samples)}
    details = {"rows": rows.tolist(), "sources": sources[rows].tolist(),
               "is_target": is_target[rows].tolist(), "base_rows": base_rows.tolist(),
               "base_curve": curve, "val_adapter_train_loss": val_train_loss,
               "val_loss_before": effects["before"],
               "references": {r: v.tolist() for r, v in refs.items()},
               "scores": {n: np.asarray(v).tolist() for n, v in scores.items()},
               "grad_norm": fo.grad_norm.tolist(), "adam_step_norm": fo.adam_step_norm.tolist(),
               "adam_own_step_norm": fo.adam_own_step_norm.tolist(),
               "spearman_within_source": result["per_source"], "float64_check": check,
               "timings": timings}
    stem = f"fidelity_{a.config}" + ("" if size == "full" else f"_{size}")
    if a.out_dir:
        a.out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((a.out_dir / f"{stem}.json").resolve()) if a.out_dir else f"{stem}.json"
    path = _common.write_result("fidelity", config, summary, details, filename)
    tables = report_tables(summary, result["per_source"])
    for title, table in tables:
        _common.print_table(table, title)
    path.with_suffix(".md").write_text(markdown(a.config, summary, config, curve, check,
                                                tables, timings))
    plot(path, scores, refs, sources[rows])
    return path


# ---------------------------------------------------------------- output --------------------
def report_tables(summary: dict[str, Any], per_source: dict[str, Any]
                  ) -> list[tuple[str, list[dict]]]:
    main_rows = []
    for name in SCORES:
        row = {"score": name}
        for ref, suffix in (("adamw", ""), ("sgd", "_sgd")):
            row[f"spearman_{ref}"] = summary[f"spearman_{name}_vs_exact{suffix}"]
            row[f"within_src_{ref}"] = summary[f"spearman_{name}_within_source{suffix}"]
            row[f"top10%_{ref}"] = summary[f"topk_overlap_{name}{suffix}"]
        row["auc_target"] = summary[f"auc_{name}"]
        main_rows.append(row)
    ref_rows = [{"reference": f"{ref} ({label})",
                 "positive_share": summary[f"{ref}_positive_share"],
                 "auc_target": summary[f"auc_{ref}"]} for ref, label in REFERENCES.items()]
    sources = sorted(per_source["tov_vs_exact"])
    src_rows = [{"score": name, **{f"{src}_{ref}": per_source[f"{name}_vs_exact{suffix}"][src]
                                   for src in sources for ref, suffix in
                                   (("adamw", ""), ("sgd", "_sgd"))}} for name in SCORES]
    return [("Scores vs the exact one-step effect (Spearman, top-10% overlap, target AUC)",
             main_rows),
            ("References", ref_rows),
            ("Spearman within each source", src_rows)]


def markdown(config: str, summary: dict[str, Any], cfg: dict[str, Any], curve: dict[str, Any],
             check: dict[str, Any], tables: list[tuple[str, list[dict]]],
             timings: dict[str, float]) -> str:
    def md_table(rows: list[dict]) -> list[str]:
        cols = list(rows[0])
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                         for v in r.values()) + " |")
        return out

    lines = [f"# Fidelity ({config}): scores vs the exact effect of one optimizer step\n",
             f"Command: `{_common.command()}`. {summary['samples']} pool samples outside U "
             f"({summary['target_samples']} target), val {cfg['val']}, top-k k = "
             f"{summary['topk']}, LoRA rank {cfg['lora']['rank']} (alpha "
             f"{cfg['lora']['alpha']}, dropout {cfg['lora']['dropout']}).\n",
             f"Trained state: {summary['base_epochs']} AdamW epochs on |U| = {cfg['base_size']} "
             f"at lr {cfg['sizes']['lr']} (converged: {summary['base_converged']}, tolerance "
             f"{cfg['tol']:.0%}); training loss per epoch "
             f"{', '.join(f'{x:.4f}' for x in curve['train_loss'])}; val loss "
             f"{', '.join(f'{x:.4f}' for x in curve['val_loss'])}.\n",
             f"References: one AdamW step (trained optimizer state; a step with a zero "
             f"gradient alone changes the val loss by {summary['momentum_only_effect']:+.3g}) "
             f"and one SGD step at lr {summary['sgd_lr']:.3g} (median step length equal to "
             f"that of the sample's own part of the AdamW step).\n"]
    if check:
        lines.append("float64 recomputation of the first samples: max |float32 - float64| / "
                     "std of the effects = " + ", ".join(
                         f"{r} {v['max_abs_diff_over_std']:.2g}" for r, v in check.items())
                     + ".\n")
    for title, rows in tables:
        lines += [f"## {title}\n", *md_table(rows), ""]
    lines.append("Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n")
    return "\n".join(lines)


def plot(path: Path, scores: dict[str, np.ndarray], refs: dict[str, np.ndarray],
         sources: np.ndarray) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (*TOV_RULES, "less", "less_unnormalised")
    fig, axes = plt.subplots(1, len(names), figsize=(3.7 * len(names), 3.4))
    for ax, name in zip(axes, names, strict=True):
        for src in np.unique(sources):
            keep = sources == src
            ax.scatter(scores[name][keep], refs["exact"][keep], s=8, label=str(src))
        ax.set_xlabel(f"{name} score")
        ax.set_ylabel("exact val-loss drop (AdamW step)")
        ax.set_title(f"{name}: Spearman {spearman(scores[name], refs['exact']):.3f}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
