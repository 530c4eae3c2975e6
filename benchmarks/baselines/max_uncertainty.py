"""Max-Uncertainty: the n pool rows with the highest token-mean loss under the warmed-up
model (the same warm-up as LESS: LoRA on a random 5% of the pool, AdamW, linear schedule)."""

from __future__ import annotations

import numpy as np

from benchmarks.baselines._util import (
    encode,
    lora_copy,
    pad_id_of,
    per_sample_losses,
    random_subset,
    top_n,
    train_adapter,
)

ADAPTER = "maxunc"


def scores(
    model, tokenizer, pool, val=None, *, seed: int = 0, lora=None, warmup_fraction: float = 0.05,
    epochs: int = 4, lr: float = 2e-5, warmup_ratio: float = 0.03, batch_size: int = 8,
    max_length: int | None = None,
) -> np.ndarray:
    pad_id = pad_id_of(tokenizer)
    samples = encode(model, pool, tokenizer, max_length)
    peft_model = lora_copy(model, lora, ADAPTER, seed=seed)
    warm = random_subset(len(samples), warmup_fraction, seed)
    train_adapter(peft_model, [samples[i] for i in warm], pad_id, adapter=ADAPTER, epochs=epochs,
                  lr=lr, batch_size=batch_size, warmup_ratio=warmup_ratio, seed=seed)
    return per_sample_losses(peft_model, samples, pad_id, batch_size=2 * batch_size)


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    return top_n(scores(model, tokenizer, pool, val, seed=seed, **kwargs), n)
