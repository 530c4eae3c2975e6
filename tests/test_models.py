"""models: loading, the model's facts, LoRA defaults, adapter parameters and modes, the
mixed-adapter forward and attaching/detaching adapters."""

import pytest
import torch
from peft import get_peft_model

from tests import tiny
from tov_datasets import models


def _weights(model, adapter):
    return [p.detach().clone() for p in models.adapter_parameters(model, adapter)]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ids(tok, rows):
    return torch.tensor([tok(r)["input_ids"][:4] for r in rows])


def test_copy_adapter(tiny_tokenizer, tiny_causal_lm, tiny_token_classifier):
    for model in (tiny_causal_lm, tiny_token_classifier):
        val_params = models.adapter_parameters(model, "val")
        models.copy_adapter(model, "base", "val")
        after = models.adapter_parameters(model, "val")
        assert [id(p) for p in after] == [id(p) for p in val_params]
        for a, b in zip(models.adapter_parameters(model, "base"), after, strict=True):
            assert torch.equal(a, b)


def test_average_adapters(tiny_tokenizer, tiny_causal_lm, tiny_token_classifier):
    """The mean of K = 3 random adapters, parameter by parameter (classifier head included),
    against a float64 mean computed by name; K = 1 is exactly copy_adapter; the destination
    keeps its parameter objects."""
    for model in (tiny_causal_lm, tiny_token_classifier):
        tiny.add_adapters(model, ["c", "dst"])
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # the classifier head copies differ too
            for adapter in ("base", "val", "c"):
                for p in models.adapter_parameters(model, adapter):
                    p.add_(torch.randn(p.shape, generator=g))
        names = {id(p): n for n, p in model.named_parameters()}
        by_name = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        dst_params = models.adapter_parameters(model, "dst")
        models.average_adapters(model, ["base", "val", "c"], "dst")
        assert [id(p) for p in models.adapter_parameters(model, "dst")] == [
            id(p) for p in dst_params]
        for q in dst_params:
            name = names[id(q)]
            sources = [by_name[name.replace(".dst.", f".{a}.")] for a in ("base", "val", "c")]
            assert not torch.equal(sources[0], sources[1])
            expected = ((sources[0] + sources[1] + sources[2]) / 3).to(q.dtype)
            assert torch.equal(q.detach(), expected), name
        assert any("modules_to_save" in names[id(q)] for q in dst_params) == (
            model is tiny_token_classifier)
        models.average_adapters(model, ["val"], "dst")
        assert all(torch.equal(a, b) for a, b in zip(_weights(model, "val"),
                                                     _weights(model, "dst"), strict=True))
        with pytest.raises(ValueError, match="at least one source adapter"):
            models.average_adapters(model, [], "dst")
    assert models.val_adapter_name("b-2") == "tov_val_b-2"


def test_paired_adapter_parameters_match_by_name(tiny_tokenizer, tiny_causal_lm,
                                                 tiny_token_classifier):
    for model in (tiny_causal_lm, tiny_token_classifier):
        names = {id(p): n for n, p in model.named_parameters()}
        pairs = models.paired_adapter_parameters(model, "base", "val")
        assert [names[id(q)] for _, q in pairs] == [
            names[id(p)].replace(".base.", ".val.") for p, _ in pairs]
        assert [id(p) for p, _ in pairs] == [
            id(p) for p in models.adapter_parameters(model, "base")]
        assert [id(q) for _, q in pairs] == [
            id(q) for q in models.adapter_parameters(model, "val")]
    assert any("modules_to_save" in names[id(p)] for p, _ in pairs)  # the classifier head


def test_copy_adapter_copies_the_classifier_head(tiny_tokenizer):
    base = tiny.token_classifier(tiny_tokenizer)
    cfg = models.default_lora_config("token_classification", model=base)
    model = get_peft_model(base, cfg, adapter_name="one")
    model.add_adapter("two", cfg)
    with torch.no_grad():
        for p in models.adapter_parameters(model, "one"):
            p.add_(1.0)
    models.copy_adapter(model, "one", "two")
    head = [n for n, _ in model.named_parameters() if "modules_to_save.two." in n]
    assert head  # the classification head belongs to the adapter
    assert all(torch.equal(x, y) for x, y in zip(_weights(model, "one"), _weights(model, "two"),
                                                 strict=True))


def test_default_lora_config():
    tok = tiny.tokenizer()
    cfg = models.default_lora_config("causal_lm", model=tiny.causal_lm(tok))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 32, 0.2)  # hidden 32: the floor
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj"}
    cfg = models.default_lora_config("token_classification", model=tiny.token_classifier(tok))
    assert cfg.r == 8 and set(cfg.target_modules) == {"query", "key", "value", "dense"}
    assert models.default_lora_config("causal_lm", 3, model=tiny.causal_lm(tok)).r == 3
    assert models.default_lora_config("causal_lm", 8).target_modules == "all-linear"
    assert set(models.default_lora_config("causal_lm", 4, target_modules=["q_proj"])
               .target_modules) == {"q_proj"}
    with pytest.raises(ValueError, match="pass rank= or model="):
        models.default_lora_config("causal_lm")
    with pytest.raises(ValueError, match="task"):
        models.default_lora_config("seq2seq")


@pytest.mark.parametrize(("hidden", "rank"), [(32, 8), (128, 8), (300, 16), (384, 16),
                                              (576, 32), (2048, 128), (4094, 128),
                                              (4096, 256), (8192, 256), (16384, 256)])
def test_default_lora_rank_scales_with_the_hidden_size(hidden, rank):
    """Largest power of two <= hidden / 16, clamped to [8, 256]; read from the config, or
    from the input embeddings when the config names it otherwise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=16, hidden_size=hidden, intermediate_size=8,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert models.default_lora_rank(model) == rank
    assert models.default_lora_rank(get_peft_model(model, models.default_lora_config(
        "causal_lm", 2, model=model))) == rank

    class Bare(torch.nn.Module):  # a config without a hidden size: the embeddings' width
        config = None

        def get_input_embeddings(self):
            return torch.nn.Embedding(2, hidden, device="meta")

    assert models.default_lora_rank(Bare()) == rank


def test_pad_token_id_rule():
    tok = tiny.tokenizer(pad=False)
    assert tok.pad_token_id is None and models.pad_token_id(tok) == tok.eos_token_id
    padded = tiny.tokenizer()
    assert models.pad_token_id(padded) == padded.pad_token_id
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        models.pad_token_id(tok)


def test_adapter_mode_activates_and_restores(tiny_causal_lm):
    model = tiny_causal_lm
    model.base_model.model.lm_head.train()  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    val = {id(p) for p in models.adapter_parameters(model, "val")}
    base = {id(p) for p in models.adapter_parameters(model, "base")}
    with models.adapter_mode(model, "val", train=True) as active:
        assert active == "val" == model.active_adapter and model.training
        assert {id(p) for p in model.parameters() if p.requires_grad} == val
    with models.adapter_mode(model, ["val", "base"], train=True) as active:
        assert active == "base" == model.active_adapter
        assert {id(p) for p in model.parameters() if p.requires_grad} == val | base
    with models.adapter_mode(model, ["base", "val"], train=False):
        assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match=r"no adapter 'other'; it has \['base', 'val'\]"):
        with models.adapter_mode(model, ["val", "other"], train=True):
            pass
    assert model.active_adapter == "base"
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_mixed_adapter_forward_matches_one_forward_per_adapter(tiny_tokenizer, tiny_causal_lm):
    """Rows [i B, (i+1) B) of one forward equal a separate forward with adapter i active,
    for two and three adapters (the many-targets case)."""
    model = tiny_causal_lm
    tiny.add_adapters(model, ["val2"])
    inputs = {"input_ids": _ids(tiny_tokenizer, ["hello world yes", "no paris hello"])}
    for adapters in (["base", "val"], ["val2", "base", "val"]):
        with models.adapter_mode(model, adapters, train=False), torch.no_grad():
            mixed = models.mixed_adapter_forward(model, inputs, adapters, use_cache=False).logits
        assert mixed.shape[0] == 2 * len(adapters)
        for i, adapter in enumerate(adapters):
            with models.adapter_mode(model, adapter, train=False), torch.no_grad():
                alone = model(**inputs, use_cache=False).logits
            torch.testing.assert_close(mixed[2 * i : 2 * i + 2], alone, rtol=0, atol=1e-6)
    assert not torch.equal(mixed[:2], mixed[2:4])  # the adapters differ
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        models.forward_with_adapter_names(model, inputs, ["base", "val", "val"])
    with torch.no_grad():  # the failed call left no peft hooks behind
        model(**inputs)


def test_attached_to_a_plain_model_leaves_it_as_it_was(tiny_tokenizer):
    """Three new adapters from one seed; on exit the original modules are back, with the
    token classifier's own head (not the trained modules_to_save copy)."""
    for model in (tiny.causal_lm(tiny_tokenizer), tiny.token_classifier(tiny_tokenizer)):
        before, cls = _state(model), type(model)
        lora = models.default_lora_config(models.infer_task(model), 4, model=model)
        with models.attached(model, ["a", "b", "c"], lora=lora, seed=0) as peft_model:
            assert models.adapter_names(peft_model) == ["a", "b", "c"]
            with torch.no_grad():
                for name in ("a", "b", "c"):
                    for p in models.adapter_parameters(peft_model, name):
                        p.add_(1.0)
        assert type(model) is cls and not hasattr(model, "peft_config")
        assert _same_state(before, _state(model))


def test_attached_to_a_peft_model_copies_its_active_adapter(tiny_causal_lm):
    model = tiny_causal_lm
    model.set_adapter("val")
    with pytest.raises(ValueError, match="lora= applies to plain models only"):
        with models.attached(model, ["x"], lora=models.default_lora_config("causal_lm", 2)):
            pass
    with models.attached(model, ["x", "y"], seed=1) as peft_model:
        assert peft_model is model
        for p, q in zip(_weights(model, "val"), _weights(model, "x"), strict=True):
            assert torch.equal(p, q)
    assert models.adapter_names(model) == ["base", "val"] and model.active_adapter == "val"
    with pytest.raises(ValueError, match=r"already has adapters \['val'\]"):
        with models.attached(model, ["val"]):
            pass


def test_load_model_and_tokenizer(tmp_path):
    """A saved directory loads with its head and weights, in eval mode; NER labels the model
    does not know get a new head; a tokenizer without a pad token pads with EOS."""
    tok = tiny.tokenizer(pad=False)
    lm = tiny.causal_lm(tok)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    loaded = models.load_model(tmp_path / "lm", torch.float32)
    assert type(loaded) is type(lm) and not loaded.training
    assert _same_state(_state(lm), _state(loaded))
    loaded_tok = models.load_tokenizer(tmp_path / "lm")
    assert loaded_tok.pad_token == loaded_tok.eos_token == tok.eos_token
    tiny.token_classifier(tok).save_pretrained(tmp_path / "ner")
    assert models.infer_task(models.load_model(tmp_path / "ner")) == "token_classification"
    fresh = models.load_model(tmp_path / "ner", labels=["B-x", "O"])
    assert fresh.config.id2label == {0: "B-x", 1: "O"}
    assert models.label_map(fresh, "token_classification") == {"B-x": 0, "O": 1}
    assert models.label_map(fresh, "causal_lm") is None
    with pytest.raises(OSError):
        models.load_model(tmp_path / "missing")
