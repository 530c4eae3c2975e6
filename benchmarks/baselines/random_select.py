"""Random selection: n pool rows uniformly without replacement."""

from __future__ import annotations

import numpy as np


def select(model, tokenizer, pool, val, n: int, seed: int = 0, **_: object) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
