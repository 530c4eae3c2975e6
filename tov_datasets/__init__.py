"""tov_datasets: Train-on-Validation scoring and selection for Hugging Face datasets.

    scorer = ToVScorer(peft_model, tokenizer)            # adapters "base" and "val"
    pool = pool.map(scorer, batched=True)                 # + tov_score, tov_num_tokens
    chosen = select_by_score(pool, n=5000)                # length-binned Score+Random
    result = tov_select(model, tokenizer, pool, val, n=5000)   # the whole method, one call
    result = tov_select(model, tokenizer, pool, {"a": val_a, "b": val_b}, n=5000)  # targets

Names are imported on first use, so `import tov_datasets.select` (say, in a pipeline worker)
does not pull in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ToVScorer": "tov_datasets.scorer",
    "make_tov_score": "tov_datasets.pipelines",
    "load_model": "tov_datasets.models",
    "select_indices": "tov_datasets.select",
    "select_by_score": "tov_datasets.select",
    "selection_overlap": "tov_datasets.select",
    "tov_select": "tov_datasets.trajectory",
    "ToVResult": "tov_datasets.trajectory",
    "ToVConfig": "tov_datasets.trajectory",
    "HoldoutCheck": "tov_datasets.trajectory",
    "finetune": "tov_datasets.training",
    "evaluate_loss": "tov_datasets.training",
    "default_lora_config": "tov_datasets.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tov_datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
