"""Independent references shared by the tests: the score transforms F, written out in torch."""

from __future__ import annotations

import torch

# F of the per-token deltas by name, as plain torch ops (any dtype; the tests use float64)
TRANSFORMS = {"identity": lambda d: d, "abs": torch.abs, "relu": lambda d: d.clamp(min=0)}
