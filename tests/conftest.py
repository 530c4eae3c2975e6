"""Test-wide settings: Triton runs in its CPU interpreter, torch uses one thread, no hub."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any `import triton`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import tiny  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.tokenizer()


@pytest.fixture
def tiny_causal_lm(tiny_tokenizer):
    """A tiny random Llama wrapped by peft with two different LoRA adapters, base and val."""
    return tiny.causal_lm_with_adapters(tiny_tokenizer)


@pytest.fixture
def tiny_token_classifier(tiny_tokenizer):
    """A tiny random BERT token classifier with two different LoRA adapters, base and val."""
    return tiny.token_classifier_with_adapters(tiny_tokenizer)
