"""Fused paired log-prob-delta kernels: F(log p_val(y) - log p_base(y)) without (B, T, V)
float32 intermediates. Triton on CUDA; a chunked, bounded-memory torch path elsewhere."""

from tov_kernels._checks import raise_label_errors
from tov_kernels.api import (
    paired_linear_logprob_delta,
    paired_linear_logprob_delta_multi,
    paired_logprob_delta,
    paired_logprob_delta_multi,
)

__all__ = ["paired_logprob_delta", "paired_linear_logprob_delta", "paired_logprob_delta_multi",
           "paired_linear_logprob_delta_multi", "raise_label_errors"]
