"""LESS (Xia et al., 2024, "LESS: Selecting Influential Data for Targeted Instruction
Tuning"), written from the paper for the benchmarks; princeton-nlp/LESS was read for the
details listed here, no code copied.

1. Warm-up: LoRA on a random 5% of the pool, 4 epochs, AdamW, one linear schedule with 3%
   warm-up; after every epoch the adapter and AdamW's moments are saved (safetensors).
2. For every checkpoint k: per-sample LoRA gradient of every pool sample (batch of 1,
   token-mean loss), Adam-preconditioned with that checkpoint's moments *after* the update
   the sample would make, exactly as LESS's ``obtain_gradients_with_adam``:
   m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2, g_adam = m' / sqrt(v' + eps) (b1 0.9,
   b2 0.999, eps 1e-8, no bias correction); plain (SGD) gradients of the val samples.
3. Rademacher random projection to 8192 dims (seeded; the matrix is generated block by
   block of gradient rows, so it is never materialised whole), projected gradients written
   to disk per checkpoint as LESS does (chunks of 160, then a merged unnormalised file and a
   merged L2-normalised file).
4. Score: for each checkpoint, cosine similarity of each pool gradient with each val
   gradient, MEAN over the val samples of a target subtask, then MAX over subtasks (LESS's
   matching.py: ``reshape(n, N_SUBTASKS, -1).mean(-1).max(-1)``; one target task family =
   one subtask here, i.e. the mean over val samples); summed over checkpoints weighted by
   each epoch's mean learning rate; top-n.

Modes (same mathematics; ``optimised`` agrees with ``published`` to float32 rounding):
- ``published``: one sample per forward/backward; projection every 16 samples
  (LESS's project_interval; each projection regenerates the Rademacher blocks, as a
  projector that does not hold the matrix must); LESS's on-disk layout.
- ``optimised``: per-sample gradients of a whole length-sorted micro-batch at once with
  torch.func (functional_call + vmap(grad)); the Adam transform vectorised; projection of
  many samples per pass over the blocks (each block generated once per pass, kept in memory
  across checkpoints when it fits ``cache_bytes``); only the normalised file is stored.
- ``unprojected``: ``optimised``'s per-sample gradients, matched without the projection:
  the cosine of the full gradients, which the projection estimates (its d -> infinity
  limit; Johnson-Lindenstrauss error ~ 1/sqrt(proj_dim) per cosine). The val gradients are
  held normalised in memory (val rows x D float32), each pool micro-batch is matched as it
  comes; nothing but the checkpoints is written. For models whose D makes the projection
  the cost (SmolLM2 at LoRA rank 32: D = 9.8M, 80 G multiply-adds per gradient at 8192).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from benchmarks.baselines._util import (
    batch_on_device,
    encode,
    forward_logits,
    lora_copy,
    pad_id_of,
    per_sample_token_mean,
    random_subset,
    train_adapter,
)
from tov_datasets.models import adapter_parameters, infer_task
from tov_datasets.training import micro_batches

MODES = ("published", "optimised", "unprojected")
ADAPTER = "less"
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class RademacherProjector:
    """x -> x @ R / sqrt(proj_dim), R in {-1,+1}^(grad_dim x proj_dim); block b of
    ``block_rows`` gradient rows is drawn from a generator seeded with (seed, b), so any
    batching of the samples sees the same matrix and blocks can be regenerated on demand."""

    def __init__(
        self, grad_dim: int, proj_dim: int = 8192, seed: int = 0, block_rows: int = 1024,
        cache_bytes: int = 0, device: str | torch.device = "cpu",
    ):
        self.grad_dim, self.proj_dim, self.seed, self.block_rows = (
            grad_dim, proj_dim, seed, block_rows)
        self.device = torch.device(device)
        self.num_blocks = math.ceil(grad_dim / block_rows)
        self.cache = grad_dim * proj_dim * 4 <= cache_bytes
        self._blocks: dict[int, torch.Tensor] = {}
        self.blocks_generated = 0

    def block(self, b: int) -> torch.Tensor:
        if b in self._blocks:
            return self._blocks[b]
        rows = min(self.block_rows, self.grad_dim - b * self.block_rows)
        g = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + b)
        r = torch.randint(0, 2, (rows, self.proj_dim), generator=g, dtype=torch.int8,
                          device=self.device)
        r = r.to(torch.float32).mul_(2.0).sub_(1.0)
        self.blocks_generated += 1
        if self.cache:
            self._blocks[b] = r
        return r

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        grads = grads.to(self.device, torch.float32)
        out = torch.zeros(grads.shape[0], self.proj_dim, dtype=torch.float32,
                          device=self.device)
        for b in range(self.num_blocks):
            lo = b * self.block_rows
            out.addmm_(grads[:, lo : lo + self.block_rows], self.block(b))
        return out.div_(math.sqrt(self.proj_dim))


@dataclass
class LessResult:
    selected: np.ndarray
    scores: np.ndarray
    timings: dict[str, float]
    disk_bytes: dict[str, int]  # cumulative bytes on disk after each stage
    peak_disk_bytes: int
    checkpoint_weights: list[float]
    grad_dim: int
    details: dict[str, Any] = field(default_factory=dict)


def _flat_moments(opt: torch.optim.Optimizer, params: list[nn.Parameter]):
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    return m, v


def adam_transform(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """LESS's Adam gradient (rows of g are samples): m'/sqrt(v'+eps) after the update."""
    m2 = BETA1 * m + (1 - BETA1) * g
    v2 = BETA2 * v + (1 - BETA2) * g.square()
    return m2 / torch.sqrt(v2 + EPS)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(path))


def _grads_published(model, params, samples, pad_id, task, m, v, projector, out_dir: Path):
    """One sample at a time (batch 1 backward), project every 16, chunk files of 160,
    then merged unnormalised + normalised files (LESS's layout)."""
    project_interval, save_interval = 16, 160
    full, chunk, count = [], [], 0

    def flush_chunk():
        nonlocal chunk
        if chunk:
            _save(out_dir / f"grads-{count}.safetensors", {"grads": torch.cat(chunk)})
            chunk = []

    for s in samples:
        count += 1
        batch = batch_on_device([s], pad_id, model)
        loss = per_sample_token_mean(forward_logits(model, batch, task), batch["labels"], task)[0]
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        for p in params:
            p.grad = None
        full.append(adam_transform(g, m, v) if m is not None else g)
        if count % project_interval == 0:
            chunk.append(projector.project(torch.stack(full)))
            full = []
        if count % save_interval == 0:
            flush_chunk()
    if full:
        chunk.append(projector.project(torch.stack(full)))
    flush_chunk()
    files = sorted(out_dir.glob("grads-*.safetensors"),
                   key=lambda f: int(f.stem.split("-")[1]))
    merged = torch.cat([load_file(str(f), device=str(projector.device))["grads"]
                        for f in files])
    _save(out_dir / "all_unormalized.safetensors", {"grads": merged})
    normed = F.normalize(merged, dim=1)
    _save(out_dir / "all_orig.safetensors", {"grads": normed})
    return normed


def per_sample_gradients(model, params, samples, pad_id, task, m=None, v=None,
                         batch_size: int = 8) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(rows, float32 (len(rows), D) gradients) per length-sorted micro-batch of ``samples``:
    each row's gradient of its token-mean loss over ``params`` (D their total size; vmap of
    grad over the padded micro-batch), LESS's Adam transform applied when ``m``, ``v``
    (flat moments) are given. The model should be in eval mode (no dropout)."""
    from torch.func import functional_call, grad, vmap

    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]

    def loss_fn(flat_params, ids, mask, labels):
        # Causal LM, right padding: the real tokens never attend to the pads after them and
        # pads carry no labels, so the mask is dropped (transformers' mask helpers branch on
        # its values, which vmap cannot trace); encoders keep it.
        # Encoders get a ready 4D additive mask, which transformers uses as is.
        if task == "causal_lm":
            kwargs = {"use_cache": False}
        else:
            add = (1.0 - mask.to(torch.float32)) * torch.finfo(torch.float32).min
            kwargs = {"attention_mask": add[None, None, None, :]}
        out = functional_call(
            model, dict(zip(keys, flat_params, strict=True)), args=(),
            kwargs={"input_ids": ids[None], **kwargs}, strict=False,
        )
        return per_sample_token_mean(out.logits, labels[None], task)[0]

    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0, 0))
    # SDPA's CPU backward has no vmap batching rule (it falls back to a per-sample loop):
    # the eager attention (same mathematics) batches.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "set_attn_implementation"):
        inner.set_attn_implementation("eager")
    detached = tuple(p.detach() for p in params)
    lengths = np.array([len(s.input_ids) for s in samples])
    for mb in micro_batches(lengths, batch_size):
        batch = batch_on_device([samples[i] for i in mb], pad_id, model)
        gs = per_sample(detached, batch["input_ids"], batch["attention_mask"], batch["labels"])
        g = torch.cat([t.reshape(len(mb), -1) for t in gs], dim=1)
        yield mb, (adam_transform(g, m, v) if m is not None else g)


def _grads_optimised(model, params, samples, pad_id, task, m, v, projector, out_dir: Path,
                     batch_size: int, proj_batch: int):
    """per_sample_gradients of length-sorted micro-batches; project proj_batch rows at once."""
    result = torch.empty(len(samples), projector.proj_dim, device=projector.device)
    pending_rows: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush():
        if pending:
            rows = np.concatenate(pending_rows)
            result[torch.as_tensor(rows, device=result.device)] = projector.project(
                torch.cat(pending))
            pending.clear()
            pending_rows.clear()

    for mb, g in per_sample_gradients(model, params, samples, pad_id, task, m, v, batch_size):
        pending.append(g)
        pending_rows.append(mb)
        if sum(len(r) for r in pending_rows) >= proj_batch:
            flush()
    flush()
    normed = F.normalize(result, dim=1)
    _save(out_dir / "all_orig.safetensors", {"grads": normed})
    return normed


def _sims_unprojected(model, params, pool, val, pad_id, task, m, v, batch_size: int,
                      timings: dict[str, float]) -> torch.Tensor:
    """(len(pool), len(val)) float32 cosines of the full gradients: pool rows Adam-transformed
    with the flat moments ``m``, ``v``, val rows plain (``optimised``'s gradients)."""
    t0 = time.perf_counter()
    val_g = torch.empty(len(val), sum(p.numel() for p in params), device=params[0].device)
    for mb, g in per_sample_gradients(model, params, val, pad_id, task, None, None, batch_size):
        val_g[torch.as_tensor(mb, device=val_g.device)] = F.normalize(g, dim=1)
    timings["grads_val"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    sims = torch.empty(len(pool), len(val), device=val_g.device)
    for mb, g in per_sample_gradients(model, params, pool, pad_id, task, m, v, batch_size):
        sims[torch.as_tensor(mb, device=sims.device)] = F.normalize(g, dim=1) @ val_g.T
    timings["grads_pool"] += time.perf_counter() - t0
    return sims


def less_scores(
    model: nn.Module,
    tokenizer: Any,
    pool: Any,
    val: Any,
    *,
    mode: str = "published",
    seed: int = 0,
    lora: Any = None,
    warmup_fraction: float = 0.05,
    epochs: int = 4,
    lr: float = 2e-5,
    warmup_ratio: float = 0.03,
    train_batch_size: int = 8,
    proj_dim: int = 8192,
    block_rows: int = 1024,
    grad_batch_size: int = 8,
    proj_batch: int = 256,
    cache_bytes: int = 2 << 30,
    max_length: int | None = None,
    val_groups: np.ndarray | None = None,
    output_dir: str | Path | None = None,
    keep_files: bool = False,
    n: int | None = None,
) -> LessResult:
    """Run LESS end to end on a plain transformers ``model`` (copied, never modified)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="less-"))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    disk: dict[str, int] = {}
    task = infer_task(model)
    pad_id = pad_id_of(tokenizer)
    try:
        t0 = time.perf_counter()
        pool_s = encode(model, pool, tokenizer, max_length)
        val_s = encode(model, val, tokenizer, max_length)
        peft_model = lora_copy(model, lora, ADAPTER, seed=seed)
        timings["prepare"] = time.perf_counter() - t0

        # 1. warm-up training with per-epoch checkpoints (adapter + AdamW moments)
        t0 = time.perf_counter()
        warm_idx = random_subset(len(pool_s), warmup_fraction, seed)


        def save_ckpt(epoch, opt, _lr):
            params = adapter_parameters(peft_model, ADAPTER)
            names = {id(p): n for n, p in peft_model.named_parameters()}
            _save(out / f"ckpt{epoch}" / "adapter.safetensors",
                  {names[id(p)]: p for p in params})
            state = {}
            for p in params:
                state[names[id(p)] + ".exp_avg"] = opt.state[p]["exp_avg"]
                state[names[id(p)] + ".exp_avg_sq"] = opt.state[p]["exp_avg_sq"]
            _save(out / f"ckpt{epoch}" / "optimizer.safetensors", state)

        info = train_adapter(
            peft_model, [pool_s[i] for i in warm_idx], pad_id, adapter=ADAPTER, epochs=epochs,
            lr=lr, batch_size=train_batch_size, warmup_ratio=warmup_ratio, seed=seed,
            on_epoch_end=save_ckpt,
        )
        weights = info["epoch_lrs"]
        params = info["params"]
        timings["warmup"] = time.perf_counter() - t0
        disk["warmup"] = directory_bytes(out)

        grad_dim = sum(p.numel() for p in params)
        projector = RademacherProjector(
            grad_dim, proj_dim, seed=0, block_rows=block_rows,
            cache_bytes=cache_bytes if mode == "optimised" else 0,
            device=params[0].device,
        )
        names = {id(p): nm for nm, p in peft_model.named_parameters()}
        peft_model.eval()
        for p in peft_model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        timings["grads_pool"] = timings["grads_val"] = 0.0
        score = np.zeros(len(pool_s), dtype=np.float64)
        groups = np.zeros(len(val_s), dtype=np.int64) if val_groups is None else np.asarray(
            val_groups)
        for k in range(epochs):
            ck = out / f"ckpt{k}"
            state = load_file(str(ck / "adapter.safetensors"), device=str(projector.device))
            moments = load_file(str(ck / "optimizer.safetensors"), device=str(projector.device))
            with torch.no_grad():
                for p in params:
                    p.copy_(state[names[id(p)]])
            m = torch.cat([moments[names[id(p)] + ".exp_avg"].reshape(-1) for p in params])
            v = torch.cat([moments[names[id(p)] + ".exp_avg_sq"].reshape(-1) for p in params])
            if mode == "unprojected":
                sims = _sims_unprojected(peft_model, params, pool_s, val_s, pad_id, task, m, v,
                                         grad_batch_size, timings).double().cpu().numpy()
                score += weights[k] * _match(sims, groups)
                continue
            reps = {}
            for part, samples, mm, vv in (("pool", pool_s, m, v), ("val", val_s, None, None)):
                t0 = time.perf_counter()
                kind = "adam" if mm is not None else "sgd"
                d = out / "grads" / f"{part}-ckpt{k}-{kind}" / f"dim{proj_dim}"
                if mode == "published":
                    reps[part] = _grads_published(peft_model, params, samples, pad_id, task, mm,
                                                  vv, projector, d)
                else:
                    reps[part] = _grads_optimised(peft_model, params, samples, pad_id, task, mm,
                                                  vv, projector, d, grad_batch_size, proj_batch)
                timings[f"grads_{part}"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            sims = (reps["pool"] @ reps["val"].T).double().cpu().numpy()
            score += weights[k] * _match(sims, groups)
            timings["matching"] = timings.get("matching", 0.0) + time.perf_counter() - t0
        disk["grads"] = directory_bytes(out)
        t0 = time.perf_counter()
        order = np.argsort(-score, kind="stable")
        selected = np.sort(order[: n if n is not None else len(order)])
        timings["select"] = time.perf_counter() - t0
        timings["total"] = sum(timings.values())
        return LessResult(
            selected=selected, scores=score, timings=timings, disk_bytes=disk,
            peak_disk_bytes=max(disk.values()), checkpoint_weights=list(weights),
            grad_dim=int(grad_dim),
            details={"warmup_size": int(len(warm_idx)), "warmup_losses": info["losses"],
                     "blocks_generated": projector.blocks_generated, "mode": mode},
        )
    finally:
        if not keep_files and output_dir is None:
            shutil.rmtree(out, ignore_errors=True)


def _match(sims: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """LESS's matching of one checkpoint: (pool, val) cosines -> per pool row the MAX over
    val groups (subtasks) of the MEAN over the group's rows."""
    return np.stack([sims[:, groups == g].mean(1) for g in np.unique(groups)], 1).max(1)


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    """Top-n pool rows by the LESS score (indices, sorted)."""
    return less_scores(model, tokenizer, pool, val, n=n, seed=seed, **kwargs).selected
