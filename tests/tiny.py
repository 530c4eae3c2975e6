"""Tiny, offline models and a word-level tokenizer for fast tests (no hub access)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a of and to in is was for on with as by at from this that it be are an or not "
    "math number theorem prime proof algebra geometry river city king war music film game "
    "cell gene protein star planet energy law court team player song album company market "
    "paris france capital london user assistant system question answer yes no hello world"
).split()

NER_LABELS = ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS; unknown words map to [UNK]; chat template included."""
    specials = ["[UNK]", "<|im_end|>", "<|im_start|>", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    if pad:
        fast.pad_token = "<|im_end|>"
    fast.chat_template = CHAT_TEMPLATE
    return fast


def causal_lm(tok: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def token_classifier(tok: PreTrainedTokenizerFast, seed: int = 0) -> BertForTokenClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, num_labels=len(NER_LABELS),
        id2label=dict(enumerate(NER_LABELS)), label2id={k: i for i, k in enumerate(NER_LABELS)},
    )
    return BertForTokenClassification(cfg).eval()


def _randomise_lora(model, adapter: str, seed: int) -> None:
    """LoRA B starts at zero; give both factors random values so adapters differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f"lora_A.{adapter}." in name or f"lora_B.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def with_adapters(model, target_modules: list[str], task_type: str, rank: int = 4):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank, lora_alpha=32, lora_dropout=0.0, target_modules=target_modules,
        task_type=task_type,
    )
    peft_model = get_peft_model(model, cfg, adapter_name="base")
    peft_model.add_adapter("val", cfg)
    _randomise_lora(peft_model, "base", 1)
    _randomise_lora(peft_model, "val", 2)
    peft_model.set_adapter("base")
    return peft_model.eval()


def add_adapters(model, names: list[str], seed: int = 3):
    """More adapters with the config of "val" and random, distinct weights (many targets)."""
    for i, name in enumerate(names):
        model.add_adapter(name, model.peft_config["val"])
        _randomise_lora(model, name, seed + i)
    return model.eval()


def causal_lm_with_adapters(tok: PreTrainedTokenizerFast):
    return with_adapters(
        causal_lm(tok), ["q_proj", "v_proj", "up_proj", "down_proj"], "CAUSAL_LM"
    )


def token_classifier_with_adapters(tok: PreTrainedTokenizerFast):
    return with_adapters(token_classifier(tok), ["query", "value"], "TOKEN_CLS")
