"""finetune / evaluate_loss / adapter helpers on the tiny random models."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import get_peft_model

from tests import tiny
from tov_datasets import models, training
from tov_datasets.formats import collate, encode_batch

TEXTS = [
    "the king of france is a math proof",
    "music film game song album",
    "a prime number theorem in algebra and geometry",
    "the river in the city of london",
    "hello world",
    "the player of the team was in the court",
    "a cell gene protein",
    "star planet energy law",
    "the company market was not yes no",
]


@pytest.fixture
def text_ds():
    return Dataset.from_dict({"text": TEXTS})


@pytest.fixture
def ner_ds():
    words = [t.split() for t in TEXTS]
    tags = [[tiny.NER_LABELS[(i + j) % len(tiny.NER_LABELS)] for j in range(len(w))]
            for i, w in enumerate(words)]
    return Dataset.from_dict({"tokens": words, "ner_tags": tags})


def _weights(model, adapter):
    return [p.detach().clone() for p in models.adapter_parameters(model, adapter)]


def _reference_loss(model, ds, tok, task):
    """Token-mean log-loss with one plain forward per row and an explicit log-softmax."""
    label2id = model.config.label2id if task == "token_classification" else None
    rows = encode_batch(ds[:], tok, task=task, label2id=label2id)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0].double()
            labels = torch.tensor(row.labels)
            if task == "causal_lm":
                logits, labels = logits[:-1], labels[1:]
            keep = labels != -100
            logp = F.log_softmax(logits[keep], -1).gather(1, labels[keep, None])
            total -= logp.sum().item()
            count += int(keep.sum())
    return total / count


def test_evaluate_loss_matches_plain_forwards(tiny_tokenizer, tiny_causal_lm, text_ds):
    model = tiny_causal_lm
    got = training.evaluate_loss(model, text_ds, tokenizer=tiny_tokenizer, batch_size=4)
    ref = _reference_loss(model, text_ds, tiny_tokenizer, "causal_lm")
    assert got == pytest.approx(ref, rel=1e-5)
    got_val = training.evaluate_loss(model, text_ds, tokenizer=tiny_tokenizer, adapter="val")
    assert model.active_adapter == "base"
    model.set_adapter("val")
    assert got_val == pytest.approx(_reference_loss(model, text_ds, tiny_tokenizer, "causal_lm"))
    assert got_val != pytest.approx(got)


def test_evaluate_loss_token_classification(tiny_tokenizer, tiny_token_classifier, ner_ds):
    model = tiny_token_classifier.train()
    got = training.evaluate_loss(model, ner_ds, tokenizer=tiny_tokenizer, batch_size=3)
    assert model.training  # mode restored
    ref = _reference_loss(model, ner_ds, tiny_tokenizer, "token_classification")
    assert got == pytest.approx(ref, rel=1e-5)


def test_evaluate_loss_plain_model(tiny_tokenizer, text_ds):
    model = tiny.causal_lm(tiny_tokenizer)
    got = training.evaluate_loss(model, text_ds, tokenizer=tiny_tokenizer)
    assert got == pytest.approx(_reference_loss(model, text_ds, tiny_tokenizer, "causal_lm"))


@pytest.mark.parametrize("kind", ["causal_lm", "token_classification"])
def test_finetune_lowers_training_loss(tiny_tokenizer, text_ds, ner_ds, kind):
    if kind == "causal_lm":
        base, ds = tiny.causal_lm(tiny_tokenizer), text_ds
    else:
        base, ds = tiny.token_classifier(tiny_tokenizer), ner_ds
    model = get_peft_model(base, models.default_lora_config(kind, 8, model=base))
    before = training.evaluate_loss(model, ds, tokenizer=tiny_tokenizer)
    out = training.finetune(model, ds, tokenizer=tiny_tokenizer, epochs=8, lr=1e-2, batch_size=4)
    after = training.evaluate_loss(model, ds, tokenizer=tiny_tokenizer)
    assert after < before - 0.2
    assert out["steps"] == 8 * 3 and len(out["losses"]) == out["steps"]


def test_finetune_trains_only_its_adapter_and_restores_state(tiny_tokenizer, tiny_causal_lm,
                                                              text_ds):
    model = tiny_causal_lm
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    base0, val0 = _weights(model, "base"), _weights(model, "val")
    rng_state = torch.get_rng_state()
    training.finetune(model, text_ds, tokenizer=tiny_tokenizer, adapter="val", lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(base0, _weights(model, "base"), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(val0, _weights(model, "val"), strict=True))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.active_adapter == "base" and not model.training
    assert torch.equal(torch.get_rng_state(), rng_state)  # dropout RNG was forked


def test_dropout_is_on_during_training(tiny_tokenizer, text_ds):
    base = tiny.causal_lm(tiny_tokenizer)
    model = get_peft_model(base, models.default_lora_config("causal_lm", 4, model=base))
    dropouts = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and dropouts[0].p == models.LORA_DROPOUT
    seen = []
    dropouts[0].register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    training.finetune(model, text_ds, tokenizer=tiny_tokenizer, lr=1e-3)
    assert seen and all(seen)
    seen.clear()
    training.evaluate_loss(model, text_ds, tokenizer=tiny_tokenizer)
    assert seen and not any(seen)


def test_finetune_is_deterministic_from_seed(tiny_tokenizer, text_ds):
    def run(seed):
        base = tiny.causal_lm(tiny_tokenizer)
        torch.manual_seed(0)
        model = get_peft_model(base, models.default_lora_config("causal_lm", 4, model=base))
        training.finetune(model, text_ds, tokenizer=tiny_tokenizer, lr=1e-2, seed=seed,
                          batch_size=2)
        return _weights(model, "default")

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_lr_schedules_and_persistent_optimizer(tiny_tokenizer, tiny_causal_lm, text_ds):
    model = tiny_causal_lm
    out = training.finetune(model, text_ds, tokenizer=tiny_tokenizer, lr=0.1, epochs=2,
                            batch_size=3)
    assert out["lrs"] == pytest.approx([0.1 * (6 - t) / 6 for t in range(6)])
    params = models.adapter_parameters(model, "base")
    opt = torch.optim.AdamW(params, lr=1.0)
    out = training.finetune(model, text_ds, tokenizer=tiny_tokenizer, lr=0.05, batch_size=3,
                            schedule="constant", optimizer=opt)
    assert out["lrs"] == [0.05] * 3
    assert int(opt.state[params[0]]["step"]) == 3
    training.finetune(model, text_ds, tokenizer=tiny_tokenizer, lr=0.05, batch_size=3,
                      optimizer=opt)
    assert int(opt.state[params[0]]["step"]) == 6  # state carries on
    wrong = torch.optim.AdamW(models.adapter_parameters(model, "val"), lr=1.0)
    with pytest.raises(ValueError, match="outside the trained adapter"):
        training.finetune(model, text_ds, tokenizer=tiny_tokenizer, optimizer=wrong)


def test_full_batch_step_is_one_sgd_step_on_the_mean_loss(tiny_tokenizer, tiny_causal_lm,
                                                          text_ds):
    """grad_accumulation >= #micro-batches: one step with the token-mean gradient of all."""
    model = tiny_causal_lm  # lora_dropout 0: the gradient is deterministic
    tok = tiny_tokenizer
    params = models.adapter_parameters(model, "base")
    before = _weights(model, "base")
    rows = encode_batch(text_ds[:], tok, task="causal_lm")
    batch = collate(rows, models.pad_token_id(tok))
    model.train()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    grads = torch.autograd.grad(loss, params)
    model.eval()
    opt = torch.optim.SGD(params, lr=0.5)
    out = training.finetune(model, text_ds, tokenizer=tok, lr=0.5, batch_size=2,
                            grad_accumulation=100, optimizer=opt, schedule="constant")
    assert out["steps"] == 1 and out["lrs"] == [0.5]
    for p, p0, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=1e-5, atol=1e-6)


def test_copy_optimizer_clones_state_and_hyperparameters():
    gen = torch.Generator().manual_seed(0)
    src = [torch.nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(3)]
    dst = [torch.nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(3)]
    opt = torch.optim.AdamW([{"params": src[:2]}, {"params": src[2:], "eps": 1e-6}], lr=0.1,
                            betas=(0.8, 0.99), weight_decay=0.05)
    for _ in range(3):
        for p in src[:2]:  # src[2] never gets a gradient: no state
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    saved = [{k: v.clone() for k, v in opt.state[p].items()} for p in src[:2]]
    copied = training.copy_optimizer(opt, list(zip(src, dst, strict=True)), lr=0.01)
    assert type(copied) is torch.optim.AdamW
    assert [g["params"] for g in copied.param_groups] == [dst[:2], dst[2:]]
    for group, original in zip(copied.param_groups, opt.param_groups, strict=True):
        assert group["lr"] == 0.01 and original["lr"] == 0.1
        assert {k: v for k, v in group.items() if k not in ("params", "lr")} == {
            k: v for k, v in original.items() if k not in ("params", "lr")}
    assert dst[2] not in copied.state
    for q, state in zip(dst[:2], saved, strict=True):
        assert copied.state[q].keys() == state.keys() and int(copied.state[q]["step"]) == 3
        assert all(torch.equal(copied.state[q][k], v) for k, v in state.items())
    for q in dst[:2]:  # stepping the copy leaves the original as it was
        q.grad = torch.randn(q.shape, generator=gen)
    copied.step()
    for p, state in zip(src[:2], saved, strict=True):
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="no counterpart"):
        training.copy_optimizer(opt, list(zip(src[:2], dst[:2], strict=True)), lr=0.01)


def test_normalized_sgd_step_is_lr_times_gradient_over_its_rms():
    """p <- p - lr_group * g / rms(g), rms over every element of every parameter with a
    gradient (both groups); a parameter without gradient is skipped; zero gradient: no step."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen))
              for shape in ((5, 3), (7,), (2, 2), (4,))]
    opt = training.NormalizedSGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.3}],
                                 lr=0.05)
    grads = [torch.randn(p.shape, generator=gen) * scale
             for p, scale in zip(params[:3], (1e-3, 2.0, 0.5), strict=True)]
    for p, g in zip(params, grads, strict=False):
        p.grad = g.clone()
    before = [p.detach().double().clone() for p in params]
    opt.step()
    flat = torch.cat([g.double().flatten() for g in grads])
    rms = flat.square().mean().sqrt()  # params[3] has no gradient: not counted
    for p, p0, g, lr in zip(params[:3], before[:3], grads, (0.05, 0.05, 0.3), strict=True):
        torch.testing.assert_close(p.detach().double(), p0 - lr * g.double() / rms,
                                   rtol=1e-6, atol=1e-6 * lr)
    assert torch.equal(params[3].detach().double(), before[3])
    for p in params:
        p.grad = torch.zeros_like(p)
    frozen = [p.detach().clone() for p in params]
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, frozen, strict=True))
    # the step's RMS is lr when one lr serves every parameter (as for the val adapter)
    single = training.NormalizedSGD(params[:2], lr=0.05)
    for p, g in zip(params[:2], grads[:2], strict=True):
        p.grad = g.clone()
    start = [p.detach().double().clone() for p in params[:2]]
    single.step()
    step = torch.cat([(p.detach().double() - p0).flatten()
                      for p, p0 in zip(params[:2], start, strict=True)])
    assert step.square().mean().sqrt().item() == pytest.approx(0.05, rel=1e-5)
    with pytest.raises(ValueError, match="lr must be > 0"):
        training.NormalizedSGD(params, lr=0.0)


def test_micro_batches_cover_all_rows_and_are_seeded():
    lengths = np.random.default_rng(0).integers(1, 100, 103)
    a = training.micro_batches(lengths, 8, seed=3)
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert all(len(b) <= 8 for b in a)
    assert [b.tolist() for b in a] == [b.tolist() for b in training.micro_batches(lengths, 8, 3)]
    assert [b.tolist() for b in a] != [b.tolist() for b in training.micro_batches(lengths, 8, 4)]
    s = np.concatenate(training.micro_batches(lengths, 8))
    assert np.all(np.diff(lengths[s]) >= 0)


def test_rows_without_scored_tokens_are_skipped(tiny_tokenizer, tiny_causal_lm, text_ds):
    padded = Dataset.from_dict({"text": ["", "", "hello"] + TEXTS})
    ref = training.evaluate_loss(tiny_causal_lm, text_ds, tokenizer=tiny_tokenizer)
    got = training.evaluate_loss(tiny_causal_lm, padded, tokenizer=tiny_tokenizer, batch_size=2)
    assert got == pytest.approx(ref, rel=1e-6)  # "hello" alone: 1 token, nothing scored
    out = training.finetune(tiny_causal_lm, padded, tokenizer=tiny_tokenizer, batch_size=2)
    assert np.isfinite(out["losses"]).all()


def test_errors(tiny_tokenizer, tiny_causal_lm, text_ds):
    plain = tiny.causal_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match="get_peft_model"):
        training.finetune(plain, text_ds, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="empty"):
        training.finetune(tiny_causal_lm, text_ds.select([]), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="schedule"):
        training.finetune(tiny_causal_lm, text_ds, tokenizer=tiny_tokenizer, schedule="cosine")
    with pytest.raises(ValueError, match="no adapter"):
        training.evaluate_loss(tiny_causal_lm, text_ds, tokenizer=tiny_tokenizer, adapter="x")
    with pytest.raises(ValueError, match="no scored tokens"):
        training.evaluate_loss(tiny_causal_lm, text_ds.select([]), tokenizer=tiny_tokenizer)
