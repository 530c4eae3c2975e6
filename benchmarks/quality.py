"""Quality: does fine-tuning on a selector's pick lower the target test loss more than the
pick a user would make anyway?

The configurations live in `quality_configs.py` and are committed before any selector runs
on them (the result records that commit as ``config_commit``). One run of a configuration:

1. calibrate: the oracle (n rows drawn at random from the pool's target rows) is fine-tuned
   at each lr of the grid for up to ``ft_max_epochs`` epochs at a constant lr; its loss on
   the validation set after every epoch is its learning curve. The budget is the smallest
   (epochs, lr) within 2% of the way from the zero-shot loss to the curve's minimum (the
   plateau; ``quality_configs.BUDGET_TOLERANCE``); it is then fixed for every method.
   The first run seed's split; no selector is involved. A configuration with
   ``ft_schedule="linear"`` skips this: its budget is a fixed recipe (``ft_max_epochs``
   epochs, the lr decaying linearly by epoch).
2. gate: random vs oracle at that budget on every seed. Passed when the oracle beats random
   by >= 3% of test log-loss with a paired t >= 4, and random has learned the task (token
   classification: loss <= 0.6 x the entropy of the test set's label marginal; language
   modelling: >= 3% below the zero-shot loss). A failed gate stops the run (``--force``
   runs the methods anyway, and the result says the gate failed).
3. methods: each selector picks n rows (seeded); the same fine-tune; the target test loss
   (after the budget's last epoch, or the mean over its last ``eval_epochs`` epochs).
   Scoring methods also report how their raw score ranks the target rows (ROC-AUC,
   precision@n), before length bins and the random half.

    python benchmarks/quality.py --config ner_coarse          # CPU size, 3 seeds
    python benchmarks/quality.py --config lm_tweets --size gpu
    python benchmarks/quality.py --config ner_coarse --tiny   # tiny random models (tests)
    python benchmarks/quality.py --config ner_coarse_v3 --size gpu --device cuda \
        --bundle .gpu/quality_ner_coarse_v3   # GPU machine: data + MiniLM from quality_bundle.py
    python benchmarks/quality.py --config lm_tweets_v3 --methods less_unprojected \
        --add-to benchmarks/results/quality_lm_tweets_v3.json   # a method added to a result

Metrics are those of `tov_datasets.evaluation`: gains are paired by seed, oracle capture =
(L_random - L_m) / (L_random - L_oracle) with a bootstrap interval over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import _common, eval_data, quality_bundle  # noqa: E402
from benchmarks.baselines import (  # noqa: E402
    embedding,
    label_prior,
    length,
    less,
    max_uncertainty,
    random_select,
    tov,
)
from benchmarks.baselines._util import encode, lora_copy, pad_id_of, top_n  # noqa: E402
from benchmarks.quality_configs import BUDGET_TOLERANCE, CONFIGS, Config, Sizes  # noqa: E402
from tov_datasets.evaluation import (  # noqa: E402
    mean_and_se,
    oracle_capture,
    paired_gain,
    precision_at_k,
    roc_auc,
)

GATE_MIN_GAIN_PCT, GATE_MIN_T = 3.0, 4.0
LEARNED_ENTROPY_RATIO, LEARNED_LM_GAIN = 0.6, 0.03
# ToV's selection variants computed from the scores of the "tov" run (no second trajectory)
DERIVED = {"tov_score_only": {"random_fraction": 0.0}, "tov_nobins": {"num_bins": 1}}
# "tov_holdout" (the held-out check's switch, `tov.HOLDOUT_SWITCH`) also yields, from the
# same scores, the two picks the switch chooses between: Score+Random and the scored pick
# alone; its own pick equals one of them on every seed
HOLDOUT = "tov_holdout"
HOLDOUT_DERIVED = {"tov_holdout_sr": {}, "tov_holdout_scored": {"random_fraction": 0.0}}
# with Config.strata: "tov" also derives STRATA_PICK (its score, the scored half split over
# the labels in the validation set's proportions); STRATA_RANDOM fills the same label quotas
# with a uniform random score (same U and random half): the gain of the label column alone.
# The _ALL picks also split the random half over the same labels (`strata_pick`).
STRATA_PICK, STRATA_RANDOM = "tov_strata", "strata_random"
STRATA_ALL_PICK, STRATA_ALL_RANDOM = "tov_strata_all", "strata_random_all"
# "<baseline>_score_random": that baseline's score picked in ToV's shape (the library's
# selection defaults: top scores per length bin for half of n, the other half at random from
# the base set U that ToV draws at the same seed), so it differs from ToV in the score alone
SCORE_RANDOM = "_score_random"
DEFAULT_METHODS = {
    "token_classification": ["tov", "maxunc", "less", "embedding", "length", "label_prior",
                             "label_prior" + SCORE_RANDOM],
    "causal_lm": ["tov", "maxunc", "embedding", "length"],
}
CONTROLS = ("random", "oracle")
# LESS as published projects its gradients to 8192 dims; "less_unprojected" matches the full
# gradients' cosines, which the projection estimates (causal LM: SmolLM2's 9.8M-dim LoRA
# gradients make the projection ~80 min a seed on one CPU thread)
LESS_MODES = {"less": "optimised", "less_unprojected": "unprojected"}
# LESS's per-sample gradients are vmapped over micro-batches of at most this many padded
# tokens (8 rows of 160, as every stored LESS run used): 8 rows of chat_long_v3's 352 tokens
# held over 18 GB and were killed for memory on a 24 GB machine
LESS_GRAD_TOKENS = 1280


def less_grad_batch_size(max_length: int) -> int:
    """Rows per per-sample-gradient micro-batch: 8, fewer where 8 rows of ``max_length``
    tokens exceed LESS_GRAD_TOKENS (at least 1). The rows are independent, so only memory
    and time change."""
    return max(1, min(8, LESS_GRAD_TOKENS // max_length))


# ------------------------------------------------------------------ set-up -----------------
@dataclass
class Setup:
    """One seed of a configuration: its split, model, tokenizer and LoRA configs."""

    config: Config
    sizes: Sizes
    seed: int
    pool: Any
    val: Any
    test: Any
    meta: dict[str, Any]
    model: Any
    tokenizer: Any
    selector_lora: Any
    finetune_lora: Any

    @property
    def is_target(self) -> np.ndarray:
        return np.asarray(self.pool["is_target"], dtype=bool)

    @property
    def sources(self) -> np.ndarray | None:
        """(len(pool),) str: each pool row's ``source``; None for a pool without one."""
        if "source" not in self.pool.column_names:
            return None
        return np.asarray(self.pool["source"], dtype=str)


TINY_SIZES = Sizes(data={}, n=4, base_size=12, epochs=1, lr=1e-2, ft_lrs=(1e-2,),
                   ft_max_epochs=2, batch_size=8, max_length=64, seeds=2)


def setup(config: Config, size: str, seed: int, models: dict[str, Any] | None = None
          ) -> Setup:
    """Seed ``seed``'s split and model. ``models`` caches a causal LM between seeds (its
    weights do not depend on the seed; a token classifier's fresh head does)."""
    from tov_datasets.models import default_lora_config

    if size == "tiny":
        s = eval_data.tiny_setup("ner" if config.task == "token_classification" else "it",
                                 seed=seed, labelled=config.strata == "answer")
        data = {k: s[k].add_column("is_target", [x == "target" for x in s[k]["source"]])
                for k in ("pool", "val", "test")}
        model, tok, sizes, meta = s["model"], s["tokenizer"], TINY_SIZES, s["meta"]
        ranks = (2, 2)
    else:
        sizes = config.sizes[size]
        built = config.build(seed, **sizes.data)
        data, meta = {k: built[k] for k in ("pool", "val", "test")}, built["meta"]
        if config.task == "causal_lm" and models is not None:
            if config.name not in models:
                models[config.name] = config.load_model(seed)
            model, tok = models[config.name]
        else:
            model, tok = config.load_model(seed)
        ranks = (config.selector_rank, config.finetune_rank)
    loras = [default_lora_config(config.task, r, model=model) for r in ranks]
    loras[1].lora_dropout = config.finetune_dropout
    if config.task == "token_classification":
        for cfg in loras:
            cfg.modules_to_save = ["classifier"]
    return Setup(config, sizes, seed, data["pool"], data["val"], data["test"], meta, model,
                 tok, loras[0], loras[1])


# ------------------------------------------------------------------ fine-tune --------------
def epoch_lrs(schedule: str, lr: float, epochs: int) -> list[float]:
    """The lr of each fine-tune epoch: ``"constant"``: ``lr`` throughout; ``"linear"``:
    lr x (1 - e / epochs) in epoch e = 0 .. epochs - 1 (lr / epochs in the last)."""
    if schedule == "constant":
        return [lr] * epochs
    if schedule == "linear":
        return [lr * (1 - e / epochs) for e in range(epochs)]
    raise ValueError(f"ft_schedule={schedule!r}; expected 'constant' or 'linear'")


def finetune_curve(s: Setup, idx: np.ndarray, lr: float, epochs: int,
                   eval_set: Any, schedule: str = "constant") -> list[float]:
    """Fine-tune a fresh LoRA (``finetune_lora``, seeded by s.seed) on pool rows ``idx`` for
    ``epochs`` epochs at the lrs of `epoch_lrs` (``schedule``); the token-mean loss on
    ``eval_set`` after each epoch."""
    from tov_datasets.models import adapter_parameters
    from tov_datasets.training import adamw, fit, mean_loss

    m = lora_copy(s.model, s.finetune_lora, "ft", seed=s.seed)
    pad = pad_id_of(s.tokenizer)
    train = encode(m, s.pool.select(idx), s.tokenizer, s.sizes.max_length)
    held = encode(m, eval_set, s.tokenizer, s.sizes.max_length)
    optimizer = adamw(adapter_parameters(m, "ft"), lr)
    curve = []
    for e, lr_e in enumerate(epoch_lrs(schedule, lr, epochs)):
        fit(m, train, pad_token_id=pad, adapter="ft", lr=lr_e, batch_size=s.sizes.batch_size,
            schedule="constant", seed=1000 * s.seed + e, optimizer=optimizer)
        curve.append(mean_loss(m, held, pad_token_id=pad, adapter="ft",
                               batch_size=2 * s.sizes.batch_size))
    return curve


def pick_test_loss(s: Setup, idx: np.ndarray, budget: dict[str, Any]
                   ) -> tuple[float, list[float]]:
    """Pool rows ``idx``'s test loss under the run's fine-tune ``budget`` (the calibration's
    ``epochs`` and ``lr``): the mean over the budget's last ``eval_epochs`` epochs; and the
    test loss after each epoch."""
    curve = finetune_curve(s, idx, budget["lr"], budget["epochs"], s.test,
                           s.config.ft_schedule)
    return float(np.mean(curve[-s.config.eval_epochs:])), curve


def zero_shot_loss(s: Setup, held: Any) -> float:
    """Loss on ``held`` before any fine-tuning (a fresh LoRA has B = 0: the base model; a
    token classifier keeps its fresh head)."""
    from tov_datasets.training import mean_loss

    m = lora_copy(s.model, s.finetune_lora, "ft", seed=s.seed)
    samples = encode(m, held, s.tokenizer, s.sizes.max_length)
    return mean_loss(m, samples, pad_token_id=pad_id_of(s.tokenizer), adapter="ft",
                     batch_size=2 * s.sizes.batch_size)


def label_entropy(test: Any) -> float:
    """Entropy (nats) of the test set's label marginal over words: the loss of a predictor
    that knows only the label frequencies."""
    tags = [t for row in test["ner_tags"] for t in row]
    _, counts = np.unique(np.asarray(tags, dtype=str), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------ selectors --------------
def oracle_rows(s: Setup) -> np.ndarray:
    rows = np.flatnonzero(s.is_target)
    if rows.size < 2 * s.sizes.n:
        raise ValueError(f"the pool holds {rows.size} target rows; the oracle needs >= 2n = "
                         f"{2 * s.sizes.n}")
    return np.sort(np.random.default_rng(s.seed).choice(rows, s.sizes.n, replace=False))


def run_selector(name: str, s: Setup) -> dict[str, dict[str, Any]]:
    """method name -> {"idx": selected rows, "scores": raw score per pool row or None,
    "extra": per-method facts}; "tov" also yields its DERIVED selection variants."""
    sz, n = s.sizes, s.sizes.n
    common = {"seed": s.seed}
    if name.endswith(SCORE_RANDOM):
        from tov_datasets.trajectory import draw_base_set

        baseline = name[: -len(SCORE_RANDOM)]
        r = run_selector(baseline, s)[baseline]
        counts = length.scored_lengths(s.model, s.tokenizer, s.pool, sz.max_length)
        base = draw_base_set(len(s.pool), sz.base_size, s.seed)
        return {name: {"idx": score_random_pick(s, r["scores"], counts, base), "scores":
                       r["scores"], "extra": {**r["extra"], "derived_from": baseline}}}
    if name in (STRATA_RANDOM, STRATA_ALL_RANDOM):
        from tov_datasets.trajectory import draw_base_set

        counts = length.scored_lengths(s.model, s.tokenizer, s.pool, sz.max_length)
        base = draw_base_set(len(s.pool), sz.base_size, s.seed)
        noise = np.random.default_rng([s.seed, 1]).random(len(s.pool))
        pick = strata_pick(s, noise, counts, base, whole=name == STRATA_ALL_RANDOM)
        return {name: {"idx": pick, "scores": None, "extra": {}}}
    if name == "random":
        return {name: {"idx": random_select.select(None, None, s.pool, s.val, n, s.seed),
                       "scores": None, "extra": {}}}
    if name == "oracle":
        return {name: {"idx": oracle_rows(s), "scores": None, "extra": {}}}
    if name.startswith("tov"):
        return _run_tov(name, s)
    warm = {"lora": s.selector_lora, "lr": sz.lr, "batch_size": sz.batch_size,
            "max_length": sz.max_length}
    extra: dict[str, Any] = {}
    if name == "maxunc":
        scores = max_uncertainty.scores(s.model, s.tokenizer, s.pool, s.val, **common, **warm)
    elif name in LESS_MODES:
        r = less.less_scores(copy.deepcopy(s.model), s.tokenizer, s.pool, s.val, n=n,
                             seed=s.seed, lora=s.selector_lora, lr=sz.lr,
                             train_batch_size=sz.batch_size, max_length=sz.max_length,
                             mode=LESS_MODES[name], cache_bytes=4 << 30,
                             grad_batch_size=less_grad_batch_size(sz.max_length))
        scores, extra = np.asarray(r.scores, dtype=np.float64), {"timings": r.timings}
    elif name == "embedding":
        scores = embedding.scores(s.model, s.tokenizer, s.pool, s.val)
    elif name == "length":
        scores = length.scores(s.model, s.tokenizer, s.pool, s.val, max_length=sz.max_length)
    elif name == "label_prior":
        scores = label_prior.scores(s.model, s.tokenizer, s.pool, s.val)
    else:
        raise ValueError(f"unknown method {name!r}")
    return {name: {"idx": top_n(scores, n), "scores": scores, "extra": extra}}


def tov_result(s: Setup, name: str, **kwargs: Any) -> Any:
    """`tov_select`'s result for ToV variant ``name`` on seed ``s`` at the configuration's
    trajectory settings (``tov_rank<r>``: the default with LoRA rank r; ``tov_epochs<L>``:
    the default with L trajectory epochs); ``kwargs`` (e.g. ``output_dir``) go to
    `tov_select`."""
    sz, lora, variant, epochs = s.sizes, s.selector_lora, name, s.sizes.epochs
    if name.startswith("tov_rank"):
        lora, variant = copy.deepcopy(lora), "tov"
        lora.r = int(name[len("tov_rank"):])
    elif name.startswith("tov_epochs"):
        variant, epochs = "tov", int(name[len("tov_epochs"):])
    return tov.run(s.model, s.tokenizer, s.pool, s.val, sz.n, seed=s.seed, name=variant,
                   lora=lora, base_size=sz.base_size, epochs=epochs, lr=sz.lr,
                   batch_size=sz.batch_size, max_length=sz.max_length, **kwargs)


def _run_tov(name: str, s: Setup) -> dict[str, dict[str, Any]]:
    r = tov_result(s, name)
    scores = tov.pool_scores(r)
    table = r.scores.data
    order = np.argsort(table.column("tov_row").to_numpy())
    epochs = [np.asarray(table.column(c).to_numpy(), dtype=np.float64)[order]
              for c in table.column_names if c.startswith("tov_score_epoch_")]
    counts = np.asarray(table.column("tov_num_tokens").to_numpy())[order]
    extra = {"timings": r.timings, "base_indices": r.base_indices.tolist(),
             "epoch_scores": epochs, "history": r.history}
    if r.holdout is not None:
        extra["holdout"] = {
            "auc": r.holdout.auc, "rows": int(len(r.holdout.rows)),
            "scored_only": bool(np.all(r.selected.data.column("tov_from_score").to_numpy()))}
    out = {name: {"idx": tov.selected_rows(r), "scores": scores, "extra": extra}}
    options = {**DERIVED, **HOLDOUT_DERIVED}
    for derived in (p for p in picks_of(s.config, name) if p != name):
        idx = (score_random_pick(s, scores, counts, r.base_indices, **options[derived])
               if derived in options else
               strata_pick(s, scores, counts, r.base_indices, whole=derived == STRATA_ALL_PICK))
        out[derived] = {"idx": idx, "scores": scores, "extra": {**extra, "derived_from": name}}
    return out


def picks_of(config: Config, method: str) -> list[str]:
    """The picks that ``method``'s run yields and that are fine-tuned: `tov_picks` for
    "tov", the switch and HOLDOUT_DERIVED for HOLDOUT, else the method alone."""
    if method == "tov":
        return tov_picks(config)
    return [HOLDOUT, *HOLDOUT_DERIVED] if method == HOLDOUT else [method]


def tov_picks(config: Config) -> list[str]:
    """The picks of the "tov" run that are fine-tuned: Config.tov_picks, or by default
    "tov", DERIVED and, where the configuration has strata, STRATA_PICK (the others are
    derived from the run's scores; STRATA_ALL_PICK where it has strata)."""
    derived = [*DERIVED, *([STRATA_PICK, STRATA_ALL_PICK] if config.strata else [])]
    if config.tov_picks is None:
        return ["tov", *DERIVED, *([STRATA_PICK] if config.strata else [])]
    unknown = sorted(set(config.tov_picks) - {"tov", *derived})
    if unknown:
        raise ValueError(f"configuration {config.name}: tov_picks {unknown} are not picks of "
                         f"the tov run; choose from {['tov', *derived]}")
    return list(config.tov_picks)


def answers(rows: Any) -> np.ndarray:
    """(len(rows),) str: each chat row's answer (its last assistant message, stripped)."""
    return np.asarray([[m["content"] for m in chat if m["role"] == "assistant"][-1].strip()
                       for chat in rows["messages"]], dtype=str)


def label_strata(s: Setup) -> dict[str, np.ndarray]:
    """`select_indices`' strata keywords: the pool rows' answers as labels, weighted by
    their counts among the validation set's answers (Config.strata "answer")."""
    from tov_datasets.select import label_strata as strata_of

    if s.config.strata != "answer":
        raise ValueError(f"configuration {s.config.name} has no strata (Config.strata)")
    strata, weights = strata_of(answers(s.pool), answers(s.val))
    return {"strata": strata, "stratum_weights": weights}


def strata_pick(s: Setup, scores: np.ndarray, counts: np.ndarray, base: np.ndarray, *,
                whole: bool) -> np.ndarray:
    """(n,) int64 ascending rows: the top ``scores`` (len(pool),) of each label's length bins
    for half of n, in the validation set's label quotas (`label_strata`), plus a random half
    from the base set ``base`` outside it. whole=True (STRATA_ALL_PICK): the random half in
    the same quotas, `select_indices` with strata as the library does since chat_labels_v4's
    decision, seeded [seed, 2] as chat_labels_v4 was committed; whole=False (STRATA_PICK):
    the random half uniform over all labels at the run seed, as chat_labels_v2-v4 were."""
    from tov_datasets.select import random_count, select_indices

    strata, n = label_strata(s), s.sizes.n
    if whole:
        return select_indices(scores.astype(np.float32), counts, n, random_pool=base,
                              seed=[s.seed, 2], **strata)
    n_random = random_count(n, 0.5)
    scored = select_indices(scores.astype(np.float32), counts, n - n_random,
                            random_fraction=0.0, **strata)
    drawn = score_random_pick(s, scores, counts, np.setdiff1d(base, scored), n=n_random,
                              random_fraction=1.0)
    return np.sort(np.concatenate([scored, drawn]))


def score_random_pick(s: Setup, scores: np.ndarray, counts: np.ndarray, base: np.ndarray,
                      n: int | None = None, **options: Any) -> np.ndarray:
    """(n,) int64 ascending rows (default n: the configuration's): `select_indices` at the
    library's defaults (``options`` override them) on raw ``scores`` (len(pool),) and
    scored-token ``counts``, its random part drawn from the base set ``base`` with the run
    seed."""
    from tov_datasets.select import select_indices

    return np.sort(select_indices(scores.astype(np.float32), counts, n or s.sizes.n,
                                  random_pool=base, seed=s.seed, **options))


# ------------------------------------------------------------------ metrics ----------------
def ranking_metrics(s: Setup, scores: np.ndarray | None, extra: dict[str, Any]
                    ) -> dict[str, Any]:
    """AUC and precision@n of a raw score for the target rows: over the pool, over the rows
    outside ToV's base set U (ToV only), and per epoch (ToV only); the AUC of the target
    rows against each other source's rows alone (``auc_vs_source``)."""
    if scores is None:
        return {}
    y, n = s.is_target, s.sizes.n
    out: dict[str, Any] = {"auc": roc_auc(scores, y), "precision_at_n": precision_at_k(
        scores, y, n)}
    sources = s.sources
    if sources is not None:
        out["auc_vs_source"] = auc_vs_sources(scores, y, sources)
    if "base_indices" in extra:
        outside = np.ones(y.size, dtype=bool)
        outside[np.asarray(extra["base_indices"], dtype=np.int64)] = False
        out["auc_outside_u"] = roc_auc(scores[outside], y[outside])
        out["precision_at_n_outside_u"] = precision_at_k(scores[outside], y[outside],
                                                         min(n, int(outside.sum())))
        out["auc_per_epoch"] = [roc_auc(e, y) for e in extra["epoch_scores"]]
    return out


def auc_vs_sources(scores: np.ndarray, is_target: np.ndarray, sources: np.ndarray
                   ) -> dict[str, float]:
    """{source: ROC-AUC of ``scores`` for the target rows against that source's rows alone}
    for every source holding non-target rows (all arrays (N,))."""
    out = {}
    for src in np.unique(sources[~is_target]):
        rows = is_target | (sources == src)
        out[str(src)] = roc_auc(scores[rows], is_target[rows])
    return out


def source_shares(s: Setup, idx: np.ndarray) -> dict[str, float] | None:
    """Share of each pool source among the selected rows ``idx`` (None: no sources)."""
    sources = s.sources
    if sources is None:
        return None
    picked = sources[np.asarray(idx, dtype=np.int64)]
    return {str(src): float((picked == src).mean()) for src in np.unique(sources)}


def answer_shares(s: Setup, idx: np.ndarray) -> dict[str, float] | None:
    """{answer: share of the pick's rows} where the configuration has answer strata."""
    if s.config.strata != "answer":
        return None
    words, counts = np.unique(answers(s.pool.select(idx)), return_counts=True)
    return {str(w): float(c) / len(idx) for w, c in zip(words, counts, strict=True)}


def entity_share(s: Setup, idx: np.ndarray) -> float | None:
    """Token classification: the mean over the selected rows ``idx`` of each row's share of
    words tagged other than "O" (``label_prior``'s score); None for other tasks."""
    if s.config.task != "token_classification":
        return None
    picked = s.pool.select(np.asarray(idx, dtype=np.int64))
    return float(label_prior.scores(s.model, s.tokenizer, picked).mean())


def mean_by_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of dicts (a key missing from some dicts: the mean of those holding it)."""
    keys = sorted({k for d in dicts for k in d})
    return {k: float(np.mean([d[k] for d in dicts if k in d])) for k in keys}


# ------------------------------------------------------------------ stages -----------------
def calibrate(s: Setup) -> dict[str, Any]:
    """The oracle's validation-loss curve per lr, its zero-shot validation loss, and the
    chosen budget (`choose_budget`) measured from a reference loss: the zero-shot loss for a
    causal LM; for a token classifier the validation set's label entropy (a fresh head's
    zero-shot loss is far above it and is left within the first epoch). Under
    ``ft_schedule="linear"`` nothing is calibrated: the budget is the configuration's fixed
    recipe, ``ft_max_epochs`` epochs from its one lr."""
    if s.config.ft_schedule == "linear":
        if len(s.sizes.ft_lrs) != 1:
            raise ValueError(f"ft_schedule='linear' takes one lr; ft_lrs={s.sizes.ft_lrs}")
        return {"schedule": "linear", "epochs": s.sizes.ft_max_epochs,
                "lr": float(s.sizes.ft_lrs[0]), "zero_shot": zero_shot_loss(s, s.val)}
    idx = oracle_rows(s)
    curves = {str(lr): finetune_curve(s, idx, lr, s.sizes.ft_max_epochs, s.val)
              for lr in s.sizes.ft_lrs}
    zero = zero_shot_loss(s, s.val)
    reference = label_entropy(s.val) if s.config.task == "token_classification" else zero
    return {"curves": curves, "zero_shot": zero, "reference": reference,
            **choose_budget(curves, reference)}


def choose_budget(curves: dict[str, list[float]], reference: float) -> dict[str, Any]:
    """The smallest epoch count whose loss (at some lr) is within BUDGET_TOLERANCE of the
    way from ``reference`` (the untrained loss) to the minimum over all curves; at that epoch
    count, the lr with the lower loss."""
    best = min(min(c) for c in curves.values())
    bound = best + BUDGET_TOLERANCE * max(reference - best, 0.0)  # reference < best: the min
    epochs, lr = min(((e + 1, float(lr)) for lr, c in curves.items()
                      for e, v in enumerate(c) if v <= bound),
                     key=lambda b: (b[0], curves[str(b[1])][b[0] - 1]))
    return {"plateau": best, "bound": bound, "epochs": epochs, "lr": lr}


def gate_result(losses: dict[str, list[float]], zero_shot: list[float],
                entropy: list[float] | None) -> dict[str, Any]:
    g = paired_gain(losses["oracle"], losses["random"])
    random_mean = float(np.mean(losses["random"]))
    if entropy is not None:
        bound = LEARNED_ENTROPY_RATIO * float(np.mean(entropy))
        learned_rule = f"random loss <= {LEARNED_ENTROPY_RATIO} x label entropy"
    else:
        bound = (1 - LEARNED_LM_GAIN) * float(np.mean(zero_shot))
        learned_rule = f"random loss <= {1 - LEARNED_LM_GAIN} x zero-shot loss"
    learned = random_mean <= bound
    passed = g.mean_pct >= GATE_MIN_GAIN_PCT and g.t >= GATE_MIN_T and learned
    return {"gate_passed": bool(passed), "oracle_improvement_pct": g.mean_pct,
            "oracle_improvement_se_pct": g.se_pct, "oracle_t": g.t,
            "random_learned": bool(learned), "random_loss": random_mean,
            "learned_bound": bound, "learned_rule": learned_rule,
            "zero_shot_loss": float(np.mean(zero_shot)),
            "label_entropy": float(np.mean(entropy)) if entropy is not None else None}


def summarise(per_seed: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Flat summary (keys of shared/notes/benchmarks.md) and per-method statistics."""
    by = {m: {r["seed"]: r for r in per_seed if r["method"] == m} for m in methods}
    stats: dict[str, dict[str, Any]] = {}
    for m in methods:
        # paired by seed: the seeds where this method and both controls have a result
        seeds = sorted(set(by[m]) & set(by["random"]) & set(by["oracle"]))
        if not seeds:
            continue
        loss = {k: [by[k][sd]["test_loss"] for sd in seeds] for k in (m, "random", "oracle")}
        g = paired_gain(loss[m], loss["random"])
        cap = oracle_capture(loss["random"], loss[m], loss["oracle"])
        rows = [by[m][sd] for sd in seeds]
        st: dict[str, Any] = {
            "seeds": seeds, "test_loss": float(np.mean(loss[m])),
            "improvement_pct": g.mean_pct, "improvement_se_pct": g.se_pct, "t": g.t,
            "improvement_pct_by_seed": list(g.by_seed),
            "oracle_capture": cap[0], "oracle_capture_low": cap[1],
            "oracle_capture_high": cap[2],
            "target_share": float(np.mean([r["target_share"] for r in rows])),
        }
        for key in ("auc", "precision_at_n", "auc_outside_u", "precision_at_n_outside_u"):
            vals = [r["ranking"][key] for r in rows if key in r.get("ranking", {})]
            if vals:
                st[key] = float(np.mean(vals))
        epochs = [r["ranking"]["auc_per_epoch"] for r in rows
                  if "auc_per_epoch" in r.get("ranking", {})]
        if epochs:
            st["auc_per_epoch"] = np.mean(np.array(epochs), axis=0).tolist()
        # entity share and per source: over the seeds that recorded them (runs before they
        # were recorded lack them)
        entity = [r["entity_share"] for r in rows if r.get("entity_share") is not None]
        if entity:
            st["entity_share"] = float(np.mean(entity))
            st["entity_share_by_seed"] = [r.get("entity_share") for r in rows]
        shares = [r["source_shares"] for r in rows if r.get("source_shares")]
        if shares:
            st["source_shares"] = mean_by_key(shares)
        by_source = [r["ranking"]["auc_vs_source"] for r in rows
                     if "auc_vs_source" in r.get("ranking", {})]
        if by_source:
            st["auc_vs_source"] = mean_by_key(by_source)
        checks = [r["holdout"] for r in rows if r.get("holdout")]
        if checks:  # the held-out check of the run the pick came from, and its decision
            st["holdout_auc_by_seed"] = [c["auc"] for c in checks]
            st["holdout_scored_only_seeds"] = sum(c["scored_only"] for c in checks)
        stats[m] = st
    selectors = [m for m in stats if m not in CONTROLS]
    for m in selectors:
        vs = {other: paired_difference(stats[m], stats[other])
              for other in selectors if other != m}
        stats[m]["paired_vs"] = {k: v for k, v in vs.items() if v is not None}
    summary: dict[str, Any] = {}
    for m, st in stats.items():
        if m == "random":
            continue
        summary[f"{m}_improvement_pct"] = st["improvement_pct"]
        summary[f"{m}_improvement_se_pct"] = st["improvement_se_pct"]
        summary[f"{m}_oracle_capture"] = st["oracle_capture"]
        summary[f"{m}_target_share"] = st["target_share"]
        for key in ("auc", "precision_at_n"):
            if key in st:
                summary[f"{m}_{key}"] = st[key]
    summary["random_target_share"] = stats["random"]["target_share"]
    tovs = [m for m in stats if m.startswith("tov")]
    if tovs:
        best = max(tovs, key=lambda m: (np.nan_to_num(stats[m]["oracle_capture"], nan=-1e9)))
        summary["best_tov_variant"] = best
        summary["best_tov_oracle_capture"] = stats[best]["oracle_capture"]
    return {"summary": summary, "stats": stats}


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Method a's gain over random minus method b's, in percentage points, paired over the
    seeds both finished: mean, standard error, and on how many seeds a is ahead or behind.
    None when they share fewer than two seeds."""
    gain_b = dict(zip(b["seeds"], b["improvement_pct_by_seed"], strict=True))
    gain_a = zip(a["seeds"], a["improvement_pct_by_seed"], strict=True)
    d = np.array([g - gain_b[sd] for sd, g in gain_a if sd in gain_b])
    if d.size < 2:
        return None
    mean, se = mean_and_se(d)
    return {"seeds": int(d.size), "mean_pp": mean, "se_pp": se,
            "ahead": int((d > 0).sum()), "behind": int((d < 0).sum())}


def config_commit() -> str:
    """The commit that last changed the configurations (quality_configs.py)."""
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.check_output(
            ["git", "log", "-n1", "--format=%H", "--", "benchmarks/quality_configs.py"],
            cwd=root, text=True, stderr=subprocess.DEVNULL).strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Progress:
    """Results kept per (stage, seed, method) in a JSON file next to the result, so an
    interrupted run resumes where it stopped (same configuration commit and sizes only)."""

    def __init__(self, path: Path, key: dict[str, Any]):
        self.path, self.key = path, json.loads(json.dumps(key))  # as saved (tuples -> lists)
        self.done: dict[str, Any] = {}
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == self.key:
                self.done = saved["done"]

    def get(self, name: str) -> Any:
        return self.done.get(name)

    def merge(self, path: Path) -> int:
        """Adds the entries of another process's progress file (same key); returns how many
        were new. An entry both hold must be equal."""
        if not path.is_file():
            raise SystemExit(f"--merge-progress: no such file: {path}")
        saved = json.loads(path.read_text())
        if saved.get("key") != self.key:
            raise SystemExit(f"--merge-progress: {path} is of another run (configuration "
                             f"commit, seeds or sizes differ): {saved.get('key')}")
        new = {k: v for k, v in saved["done"].items() if k not in self.done}
        clash = [k for k, v in saved["done"].items() if k in self.done and self.done[k] != v]
        if clash:
            raise SystemExit(f"--merge-progress: {path} disagrees on {clash[:3]}")
        self.done.update(new)
        self._save()
        return len(new)

    def add_result(self, path: Path, config: str, size: str, sizes: dict[str, Any],
                   seeds: list[int]) -> str:
        """Seeds this progress with a stored result's calibration and per-seed records (a
        method added to a finished run reuses its budget, controls and other methods);
        returns the result's configuration commit. Refused unless the result is of this
        configuration, size, sizes and seeds (a Sizes field added since the result was
        written counts at its default)."""
        if not path.is_file():
            raise SystemExit(f"--add-to: no such file: {path}")
        stored = json.loads(path.read_text())
        cfg = stored.get("config", {})
        added = {f.name: f.default for f in fields(Sizes) if f.default is not MISSING}
        got = (cfg.get("config"), cfg.get("size"), {**added, **cfg.get("sizes", {})},
               sorted({r["seed"] for r in stored["details"]["per_seed"]}))
        want = (config, size, json.loads(json.dumps(sizes)), sorted(seeds))
        if got != want:
            raise SystemExit(f"--add-to: {path} is not a result of --config {config} --size "
                             f"{size} as committed now (configuration, size, sizes, seeds): "
                             f"{got} != {want}")
        for r in stored["details"]["per_seed"]:
            self.done.setdefault(f"{r['seed']}/{r['method']}", r)
        self.done.setdefault("calibration", stored["details"]["calibration"])
        self._save()
        return stored["summary"]["config_commit"]

    def put(self, name: str, value: Any) -> None:
        self.done[name] = value
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "done": self.done}, default=_jsonable))
        os.replace(tmp, self.path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)


class Runner:
    """Evaluates (seed, method) pairs of one configuration, resuming from ``progress``; the
    Setup of the current seed is kept (runs go seed by seed)."""

    def __init__(self, config: Config, size: str, progress: Progress):
        self.config, self.size, self.progress = config, size, progress
        self.current: Setup | None = None
        self.models: dict[str, Any] = {}
        self.budget: dict[str, Any] = {}

    def setup(self, seed: int) -> Setup:
        if self.current is None or self.current.seed != seed:
            self.current = None  # free the previous seed's model first
            self.current = setup(self.config, self.size, seed, self.models)
        return self.current

    def calibrate(self, seed: int) -> dict[str, Any]:
        if self.progress.get("calibration") is None:
            self.progress.put("calibration", calibrate(self.setup(seed)))
        self.budget = self.progress.get("calibration")
        return self.budget

    def zero_shot(self, seed: int) -> dict[str, Any]:
        key = f"{seed}/zero_shot"
        if self.progress.get(key) is None:
            s = self.setup(seed)
            token_cls = self.config.task == "token_classification"
            self.progress.put(key, {"loss": zero_shot_loss(s, s.test),
                                    "entropy": label_entropy(s.test) if token_cls else None})
        return self.progress.get(key)

    def evaluate(self, seed: int, method: str) -> None:
        """Select with ``method`` (and its derived variants), fine-tune, test; saved per
        pick, so a run stopped between a method's picks fine-tunes only the missing ones."""
        names = picks_of(self.config, method)
        if all(self.progress.get(f"{seed}/{name}") is not None for name in names):
            return
        s = self.setup(seed)
        t0 = time.perf_counter()
        picks = run_selector(method, s)
        t_select = time.perf_counter() - t0
        for name in names:
            pick = picks[name]
            if self.progress.get(f"{seed}/{name}") is not None:
                continue
            idx = np.asarray(pick["idx"], dtype=np.int64).tolist()
            # a pick of the same rows as one of its run's picks already fine-tuned (the
            # switch's pick is one of HOLDOUT_DERIVED's) reuses that fine-tune: the
            # fine-tune depends on the rows and the seed alone
            same = [r for r in (self.progress.get(f"{seed}/{other}") for other in names)
                    if r is not None and r.get("idx") == idx]
            loss, curve = ((same[0]["test_loss"], same[0]["test_curve"]) if same
                           else pick_test_loss(s, pick["idx"], self.budget))
            ranking = ranking_metrics(s, pick["scores"], pick["extra"])
            self.progress.put(f"{seed}/{name}", {
                "seed": seed, "method": name, "test_loss": loss, "test_curve": curve,
                "target_share": float(s.is_target[pick["idx"]].mean()),
                "source_shares": source_shares(s, pick["idx"]),
                "entity_share": entity_share(s, pick["idx"]),
                "answer_shares": answer_shares(s, pick["idx"]), "ranking": ranking,
                "select_s": t_select, "n": int(len(pick["idx"])),
                "idx": idx, "timings": pick["extra"].get("timings"),
                "history": pick["extra"].get("history"),
                **({"holdout": pick["extra"]["holdout"]} if "holdout" in pick["extra"] else {})})
            print(f"seed {seed} {name:16s} loss {loss:.4f} target "
                  f"{100 * s.is_target[pick['idx']].mean():5.1f}% auc "
                  f"{ranking.get('auc', float('nan')):.3f} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)

    def results(self) -> list[dict[str, Any]]:
        return [v for k, v in self.progress.done.items()
                if "/" in k and not k.endswith("/zero_shot")]


def run(config: Config, size: str, seeds: list[int], methods: list[str], force: bool,
        progress: Progress, summarise_only: bool = False,
        method_seeds: list[int] | None = None) -> dict[str, Any]:
    """calibrate -> gate (controls on every seed) -> methods on every seed (module doc)."""
    started = time.perf_counter()
    runner = Runner(config, size, progress)
    cal = runner.calibrate(seeds[0])
    chosen = (f"oracle val-loss plateau {cal['plateau']:.4f}, bound {cal['bound']:.4f}"
              if "plateau" in cal else "a fixed recipe")
    print(f"budget: {budget_text(cal)} ({chosen}, zero-shot {cal['zero_shot']:.4f})",
          flush=True)
    for seed in method_seeds if method_seeds is not None else seeds:
        for m in CONTROLS:
            runner.evaluate(seed, m)
            if m == "random":
                runner.zero_shot(seed)
    if any(progress.get(f"{seed}/{m}") is None for seed in seeds for m in CONTROLS):
        raise SystemExit("the gate needs the controls of every seed: once the other "
                         "--method-seeds runs have theirs, rerun with --merge-progress and "
                         "their progress files")
    zs = [runner.zero_shot(seed) for seed in seeds]
    controls = {m: [progress.get(f"{seed}/{m}")["test_loss"] for seed in seeds]
                for m in CONTROLS}
    token_cls = config.task == "token_classification"
    gate = gate_result(controls, [z["loss"] for z in zs],
                       [z["entropy"] for z in zs] if token_cls else None)
    print(f"gate: {'PASSED' if gate['gate_passed'] else 'FAILED'}: oracle "
          f"{gate['oracle_improvement_pct']:+.2f}% (t {gate['oracle_t']:.1f}), random learned: "
          f"{gate['random_learned']} ({gate['random_loss']:.4f} vs bound "
          f"{gate['learned_bound']:.4f})", flush=True)
    if (gate["gate_passed"] or force) and not summarise_only:
        for seed in method_seeds if method_seeds is not None else seeds:
            for m in methods:
                runner.evaluate(seed, m)
    per_seed = [r for r in runner.results() if r["seed"] in seeds]
    names = list(CONTROLS) + [m for m in dict.fromkeys(r["method"] for r in per_seed)
                              if m not in CONTROLS]
    return {"calibration": cal, "gate": gate, "per_seed": per_seed,
            **summarise(per_seed, names), "wall_s": time.perf_counter() - started}


def budget_text(cal: dict[str, Any]) -> str:
    """The budget in words, e.g. 9 epochs at lr 0.0003, naming the schedule unless it is
    constant."""
    schedule = cal.get("schedule", "constant")
    return (f"{cal['epochs']} epochs at lr {cal['lr']}"
            + ("" if schedule == "constant" else f" ({schedule} decay)"))


def write_outputs(stem: str, config: Config, size: str, seeds: list[int], result: dict,
                  out_dir: Path | None, threads: int, run_config: dict[str, Any],
                  commit: str | None = None) -> Path:
    """The result's JSON and markdown; ``commit``: the configuration commit to record
    (default: the one that last changed quality_configs.py)."""
    gate, stats = result["gate"], result["stats"]
    summary = {"task": config.task, "config_commit": commit or config_commit(),
               "seeds": len(seeds),
               **{k: gate[k] for k in ("gate_passed", "oracle_improvement_pct", "oracle_t",
                                       "random_learned")},
               "finetune_epochs": result["calibration"]["epochs"],
               "finetune_lr": result["calibration"]["lr"],
               "finetune_schedule": config.ft_schedule, **result["summary"]}
    sizes = asdict(config.sizes[size]) if size in config.sizes else asdict(TINY_SIZES)
    cfg = {"config": config.name, "size": size, "sizes": sizes, "threads": threads,
           "selector_rank": config.selector_rank, "finetune_rank": config.finetune_rank,
           "methods": list(stats), **run_config}
    details = {k: result[k] for k in ("calibration", "gate", "stats", "per_seed", "wall_s")}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    filename = str((out_dir / f"{stem}.json").resolve()) if out_dir else f"{stem}.json"
    path = _common.write_result("quality", cfg, summary, details, filename=filename)
    rows = [{"method": m, "test_loss": st["test_loss"], "gain_%": st["improvement_pct"],
             "se_%": st["improvement_se_pct"], "capture": st["oracle_capture"],
             "target_%": 100 * st["target_share"], "auc": st.get("auc", float("nan")),
             "prec@n": st.get("precision_at_n", float("nan"))} for m, st in stats.items()]
    title = (f"quality {config.name} ({size}, {len(seeds)} seeds): gate "
             f"{'passed' if gate['gate_passed'] else 'FAILED'}, oracle "
             f"{gate['oracle_improvement_pct']:+.2f}% t {gate['oracle_t']:.1f}; budget "
             f"{budget_text(result['calibration'])}")
    _common.print_table(rows, title)
    md = [f"# Quality, configuration `{config.name}` ({size})\n",
          f"Command: `{_common.command()}`; seeds {seeds}; configuration commit "
          f"`{summary['config_commit'][:10]}`.\n", f"{title}.\n",
          "| method | seeds | test loss | gain vs random % (± se) | oracle capture (90% CI) | "
          "target rows % | AUC | precision@n |", "|---|---|---|---|---|---|---|---|"]
    for m, st in stats.items():
        md.append(
            f"| {m} | {len(st['seeds'])} | {st['test_loss']:.4f} | {st['improvement_pct']:+.2f} ± "
            f"{st['improvement_se_pct']:.2f} | {st['oracle_capture']:.2f} "
            f"({st['oracle_capture_low']:.2f}, {st['oracle_capture_high']:.2f}) | "
            f"{100 * st['target_share']:.1f} | {st.get('auc', float('nan')):.3f} | "
            f"{st.get('precision_at_n', float('nan')):.3f} |")
    path.with_suffix(".md").write_text("\n".join(md + seed_tables(stats)) + "\n")
    return path


def seed_tables(stats: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: each method's gain over random on every seed (and its pick's entity-tag
    share, where recorded), then every pair of selectors' paired difference of gains."""
    seeds = sorted({sd for st in stats.values() for sd in st["seeds"]})
    recorded = any(st.get("entity_share_by_seed") for st in stats.values())
    entity_note = " (entity-tag share of the pick's rows, %)" if recorded else ""
    out = ["", f"Gain vs random by seed, %{entity_note}:", "",
           "| method | " + " | ".join(str(sd) for sd in seeds) + " |",
           "|---|" + "---|" * len(seeds)]
    for m, st in stats.items():
        entity = st.get("entity_share_by_seed") or [None] * len(st["seeds"])
        cells = {sd: f"{g:+.1f}" + ("" if e is None else f" ({100 * e:.1f})")
                 for sd, g, e in zip(st["seeds"], st["improvement_pct_by_seed"], entity,
                                     strict=True)}
        out.append(f"| {m} | " + " | ".join(cells.get(sd, "") for sd in seeds) + " |")
    pairs = [(a, b, st["paired_vs"][b]) for i, (a, st) in enumerate(stats.items())
             for b in list(stats)[i + 1:] if b in st.get("paired_vs", {})]
    if pairs:
        out += ["", "Paired differences of gains (a minus b, percentage points):", "",
                "| a | b | seeds | a - b (± se) | a ahead | a behind |",
                "|---|---|---|---|---|---|"]
        out += [f"| {a} | {b} | {d['seeds']} | {d['mean_pp']:+.2f} ± {d['se_pp']:.2f} | "
                f"{d['ahead']} | {d['behind']} |" for a, b, d in pairs]
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--size", choices=["small", "full", "gpu"], default="full")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (tests)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="the first k of the size's run seeds (default: all)")
    ap.add_argument("--methods", default=None,
                    help="comma list (default per task: "
                    f"{DEFAULT_METHODS}); random and oracle always run; 'tov' adds "
                    f"{sorted(DERIVED)} (and {STRATA_PICK} where the configuration has "
                    f"strata, which also offers {STRATA_RANDOM} and {STRATA_ALL_RANDOM}; "
                    f"Config.tov_picks may choose others); {HOLDOUT} adds "
                    f"{sorted(HOLDOUT_DERIVED)}; variants: "
                    f"{sorted(tov.VARIANTS)} "
                    "and tov_rank<r>, tov_epochs<L>; "
                    f"<baseline>{SCORE_RANDOM}: a baseline's score picked in ToV's shape")
    ap.add_argument("--force", action="store_true", help="run the methods on a failed gate")
    ap.add_argument("--summarise-only", action="store_true",
                    help="compute nothing new: write the result from the progress file "
                    "(each method over the seeds it has finished, paired with the controls)")
    ap.add_argument("--method-seeds", default=None,
                    help="comma list: run the controls and methods on these seeds only (the "
                    "gate needs every seed's controls); to share seeds between processes, "
                    "give each its own --out-dir holding a copy of the progress file, then "
                    "merge them with --merge-progress")
    ap.add_argument("--merge-progress", type=Path, nargs="+", default=[], metavar="FILE",
                    help="first add the entries of these progress files (the copies of other "
                    "--method-seeds processes) to this run's progress file")
    ap.add_argument("--add-to", type=Path, default=None, metavar="RESULT",
                    help="add --methods to this stored result of the same --config and --size "
                    "(its budget, controls and methods are reused, not rerun; the new result "
                    "keeps its configuration commit)")
    ap.add_argument("--tag", default="", help="file name suffix: quality_<config>_<tag>.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    ap.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                    help="read each seed's data and all-MiniLM-L6-v2 from a bundle of "
                    "benchmarks/quality_bundle.py (the GPU machine)")
    ap.add_argument("--device", default="cpu", help="where the model runs (cuda on a GPU)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    config = CONFIGS[a.config]
    size = "tiny" if a.tiny else a.size
    if a.bundle is not None:
        config = quality_bundle.use_bundle(config, a.bundle, size)
    config = quality_bundle.on_device(config, a.device)
    sizes = TINY_SIZES if a.tiny else config.sizes[size]
    seeds = sizes.seed_list(a.seeds)
    methods = (a.methods.split(",") if a.methods else DEFAULT_METHODS[config.task])
    methods = [m for m in methods if m and m not in CONTROLS]
    stem = "_".join(x for x in ("quality", a.config, a.tag,
                                "" if size == "full" else size) if x)
    out_dir = a.out_dir or _common.RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(out_dir / f".{stem}.progress.json",
                        {"config_commit": config_commit(), "size": size, "seeds": seeds,
                         "sizes": asdict(sizes)} | ({"bundle": True} if a.bundle else {}))
    commit = (progress.add_result(a.add_to, config.name, size, asdict(sizes), seeds)
              if a.add_to else None)
    for other in a.merge_progress:
        print(f"merged {progress.merge(other)} entries of {other}", flush=True)
    method_seeds = ([int(x) for x in a.method_seeds.split(",")] if a.method_seeds else None)
    result = run(config, size, seeds, methods, a.force, progress, a.summarise_only,
                 method_seeds)
    if not math.isfinite(result["gate"]["oracle_t"]) and len(seeds) > 1:
        print("note: the oracle's gain has zero spread over seeds", flush=True)
    return write_outputs(stem, config, size, seeds, result, a.out_dir, a.threads,
                         {"device": a.device, "bundle": a.bundle and str(a.bundle)}, commit)


if __name__ == "__main__":
    main()
