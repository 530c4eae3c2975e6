"""tov_select: the trajectory (interleaved / parallel), resumption, errors; storage helpers;
and a small real-model run (SmolLM2-135M on Wikipedia summaries)."""

import dataclasses
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets

from tests import tiny
from tests.reference import TRANSFORMS
from tov_datasets import models, storage, training, trajectory
from tov_datasets.formats import collate
from tov_datasets.scorer import ToVScorer
from tov_datasets.select import select_by_score, select_indices

N_POOL = 30


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(tiny.WORDS, rng.integers(2, 12))) for _ in range(N_POOL)]
    return Dataset.from_dict({"text": texts, "id": list(range(N_POOL))})


@pytest.fixture(scope="module")
def val():
    return Dataset.from_dict({"text": ["math number theorem prime proof", "a prime number",
                                       "the proof of the theorem in algebra"]})


@pytest.fixture
def lora(tiny_tokenizer):
    """Rank-4 LoRA on the tiny Llama; dropout 0 where a test needs exact gradients."""
    return models.default_lora_config("causal_lm", 4, model=tiny.causal_lm(tiny_tokenizer))


def _no_dropout(cfg):
    cfg.lora_dropout = 0.0
    return cfg


def _run(tok, pool, val, **kw):
    kw = {"n": 10, "base_size": 20, "epochs": 2, "lr": 3e-2, "batch_size": 4, **kw}
    return trajectory.tov_select(tiny.causal_lm(tok), tok, pool, val, **kw)


def _weights(model, adapter):
    return [p.detach().clone() for p in models.adapter_parameters(model, adapter)]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def fit_calls(monkeypatch):
    """Record every training.fit call: adapter, lr, optimizer, steps, weights before/after."""
    calls = []
    real_fit = training.fit

    def recording_fit(model, samples, **kw):
        call = {"adapter": kw["adapter"], "lr": kw["lr"], "optimizer": kw.get("optimizer"),
                "schedule": kw["schedule"], "before": _weights(model, kw["adapter"])}
        out = real_fit(model, samples, **kw)
        call.update(after=_weights(model, kw["adapter"]), steps=out["steps"], lrs=out["lrs"])
        calls.append(call)
        return out

    monkeypatch.setattr(training, "fit", recording_fit)
    return calls


@pytest.mark.parametrize("variant", ["interleaved", "parallel"])
def test_adapter_sequence_and_learning_rates(tiny_tokenizer, pool, val, lora, fit_calls,
                                             variant):
    result = _run(tiny_tokenizer, pool, val, epochs=3, lr=0.03, lora=lora, variant=variant)
    assert [c["adapter"] for c in fit_calls] == ["tov_base", "tov_val"] * 3
    base, val_calls = fit_calls[0::2], fit_calls[1::2]
    lrs = [0.03, 0.02, 0.01]  # linear decay across the epochs
    assert [c["lr"] for c in base] == pytest.approx(lrs)
    assert [c["lr"] for c in val_calls] == pytest.approx([0.1 * lr for lr in lrs])
    assert all(c["schedule"] == "constant" for c in fit_calls)
    # the base optimizer persists across epochs; each val epoch gets a fresh AdamW (the
    # default "fresh": fit builds a new one)
    assert base[0]["optimizer"] is base[1]["optimizer"] is base[2]["optimizer"] is not None
    assert all(c["optimizer"] is None for c in val_calls)
    assert all(c["steps"] == 5 for c in base)  # ceil(20 / 4) micro-batches per epoch
    for k in range(3):
        assert _same(val_calls[k]["before"], base[k]["after"])  # val starts from the base
        assert not _same(val_calls[k]["after"], base[k]["after"])
    for k in range(2):
        source = val_calls[k] if variant == "interleaved" else base[k]
        assert _same(base[k + 1]["before"], source["after"])
    assert [h["base_lr"] for h in result.history] == pytest.approx(lrs)
    assert [h["val_lr"] for h in result.history] == pytest.approx([0.1 * lr for lr in lrs])


def test_interleaved_and_parallel_share_epoch_one_only(tiny_tokenizer, pool, val, lora):
    inter = _run(tiny_tokenizer, pool, val, lora=lora, variant="interleaved").scores
    par = _run(tiny_tokenizer, pool, val, lora=lora, variant="parallel").scores
    assert np.array_equal(inter["tov_score_epoch_1"], par["tov_score_epoch_1"])
    assert not np.allclose(inter["tov_score_epoch_2"], par["tov_score_epoch_2"])


def _full_batch_gradient(model, samples, pad_token_id, params):
    """Plain autograd: the token-mean loss of the val adapter over all samples in ONE batch."""
    batch = collate(samples, pad_token_id)
    model.set_adapter("tov_val")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    grads = torch.autograd.grad(loss, params)
    model.set_adapter("tov_base")
    return [g.double() for g in grads]


def _adam_reference(p0, g, lr, state=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """One AdamW step written out in float64, from moments ``state`` (None: zeros, step 0)."""
    m0 = state["exp_avg"].double() if state else torch.zeros_like(g)
    v0 = state["exp_avg_sq"].double() if state else torch.zeros_like(g)
    t = (int(state["step"]) if state else 0) + 1
    (b1, b2) = betas
    m, v = b1 * m0 + (1 - b1) * g, b2 * v0 + (1 - b2) * g * g
    step = lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return p0.double() * (1 - lr * weight_decay) - step


def _by_val_name(model, optimizer):
    """The optimizer's state (cloned) keyed by the name of the matching val parameter."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)].replace(".tov_base.", ".tov_val."):
            {k: v.clone() for k, v in st.items()} for p, st in optimizer.state.items()}


@pytest.mark.parametrize("val_optimizer", trajectory.VAL_OPTIMIZERS)
def test_val_mode_step_is_one_step_on_the_full_val_gradient(tiny_tokenizer, pool, val, lora,
                                                           monkeypatch, val_optimizer):
    """val_mode="step": ONE update from the gradient of the whole val set (3 rows, one
    micro-batch of 4), equal to the rule written out from a plain autograd gradient on the
    same batch: fresh = Adam from zero moments (~ lr * sign(g)), continue = Adam from the
    base optimizer's moments (mapped by name), sgd = -lr * g / rms(g)."""
    lora = _no_dropout(lora)
    checked = []
    base_optimizers = []
    real_fit = training.fit

    def checking_fit(model, samples, **kw):
        if kw["adapter"] != "tov_val":
            base_optimizers.append(kw["optimizer"])
            return real_fit(model, samples, **kw)
        names = {id(p): n for n, p in model.named_parameters()}
        params = models.adapter_parameters(model, "tov_val")
        before = _weights(model, "tov_val")
        grads = _full_batch_gradient(model, samples, kw["pad_token_id"], params)
        base_state = _by_val_name(model, base_optimizers[-1])
        out = real_fit(model, samples, **kw)
        assert out["steps"] == 1
        lr = kw["lr"]
        rms = torch.sqrt(sum((g * g).sum() for g in grads) / sum(g.numel() for g in grads))
        for p, p0, g in zip(params, before, grads, strict=True):
            if val_optimizer == "sgd":
                assert isinstance(kw["optimizer"], training.NormalizedSGD)
                expected = p0.double() - lr * g / rms
            elif val_optimizer == "continue":
                state = base_state[names[id(p)]]
                assert int(state["step"]) == 3 * len(base_optimizers)  # 10 rows / batch 4
                expected = _adam_reference(p0, g, lr, state)
            else:
                assert kw["optimizer"] is None  # fit's own new AdamW
                expected = _adam_reference(p0, g, lr)
            # The update per coordinate is ~lr: the normalised step (linear in g) must match
            # to 1e-6 of that; Adam's g / (sqrt(v) + eps) magnifies the float32 rounding of
            # coordinates with |g| ~ eps: 1e-4 x lr there (a wrong moment is off by ~lr).
            atol = (1e-6 if val_optimizer == "sgd" else 1e-4) * lr
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=atol)
        checked.append(lr)
        return out

    monkeypatch.setattr(training, "fit", checking_fit)
    result = _run(tiny_tokenizer, pool, val, lora=lora, val_mode="step", lr=0.5, batch_size=4,
                  base_size=10, n=4, val_optimizer=val_optimizer)
    assert checked == pytest.approx([0.05, 0.025])
    assert [h["val_steps"] for h in result.history] == [1, 1]


@pytest.mark.parametrize("variant", ["interleaved", "parallel"])
def test_continue_copies_the_base_optimizer_state_and_leaves_it_untouched(
        tiny_tokenizer, pool, val, lora, monkeypatch, variant):
    """Each val epoch's AdamW starts from a copy of the base optimizer's state (exp_avg,
    exp_avg_sq, step), mapped by parameter name from tov_base to tov_val, with the base's
    hyperparameters and lr = val_lr; the base optimizer is bit-identical before and after
    the val epoch. In the parallel trajectory the base never sees val, so its weights and
    optimizer state match a run with fresh val optimizers exactly."""
    seen = []
    real_fit = training.fit

    def checking_fit(model, samples, **kw):
        if kw["adapter"] == "tov_base":
            seen.append({"base_optimizer": kw["optimizer"]})
            out = real_fit(model, samples, **kw)
            seen[-1]["base_after"] = _weights(model, "tov_base")
            seen[-1]["base_state"] = _by_val_name(model, kw["optimizer"])
            return out
        base_opt = seen[-1]["base_optimizer"]
        base_groups = [{k: v for k, v in g.items() if k != "params"}
                       for g in base_opt.param_groups]
        base_state = _by_val_name(model, base_opt)
        val_opt = kw["optimizer"]
        assert type(val_opt) is type(base_opt) is torch.optim.AdamW
        val_params = {n: p for n, p in model.named_parameters() if ".tov_val." in n}
        assert {id(p) for g in val_opt.param_groups for p in g["params"]} == {
            id(p) for p in val_params.values()}
        assert set(base_state) == set(val_params)
        for name, p in val_params.items():
            copied = val_opt.state[p]
            assert copied.keys() == base_state[name].keys() == {"step", "exp_avg", "exp_avg_sq"}
            for key, value in base_state[name].items():
                assert torch.equal(copied[key], value)
        original_tensors = {id(v) for st in base_opt.state.values() for v in st.values()}
        assert not original_tensors & {id(v) for st in val_opt.state.values()
                                       for v in st.values()}
        for key in ("betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert val_opt.param_groups[0][key] == base_groups[0][key]
        assert val_opt.param_groups[0]["lr"] == kw["lr"] != base_groups[0]["lr"]
        out = real_fit(model, samples, **kw)
        assert out["steps"] == 3  # batch_size 1: one step per val row
        assert [{k: v for k, v in g.items() if k != "params"}
                for g in base_opt.param_groups] == base_groups
        after = _by_val_name(model, base_opt)
        assert after.keys() == base_state.keys()
        assert all(torch.equal(after[n][k], v) for n, st in base_state.items()
                   for k, v in st.items())
        return out

    monkeypatch.setattr(training, "fit", checking_fit)
    _run(tiny_tokenizer, pool, val, lora=lora, batch_size=1, variant=variant,
         val_optimizer="continue")
    continued = list(seen)
    assert len(continued) == 2
    if variant == "parallel":
        monkeypatch.setattr(training, "fit", real_fit)
        recorded = []

        def recording_fit(model, samples, **kw):
            out = real_fit(model, samples, **kw)
            if kw["adapter"] == "tov_base":
                recorded.append((_weights(model, "tov_base"),
                                 _by_val_name(model, kw["optimizer"])))
            return out

        monkeypatch.setattr(training, "fit", recording_fit)
        _run(tiny_tokenizer, pool, val, lora=lora, batch_size=1, variant=variant)
        for epoch, (weights, state) in zip(continued, recorded, strict=True):
            assert _same(epoch["base_after"], weights)
            assert all(torch.equal(epoch["base_state"][n][k], v)
                       for n, st in state.items() for k, v in st.items())


def test_fresh_is_the_default(tiny_tokenizer, pool, val, lora, fit_calls):
    assert trajectory.DEFAULT_VAL_OPTIMIZER == trajectory.ToVConfig().val_optimizer == "fresh"
    default = _run(tiny_tokenizer, pool, val, lora=lora)
    fresh = _run(tiny_tokenizer, pool, val, lora=lora, val_optimizer="fresh")
    assert default.scores.data.table.equals(fresh.scores.data.table)
    assert default.selected.data.table.equals(fresh.selected.data.table)
    assert all(c["optimizer"] is None for c in fit_calls if c["adapter"] == "tov_val")
    others = {v: _run(tiny_tokenizer, pool, val, lora=lora, val_optimizer=v).scores
              for v in ("continue", "sgd")}
    for scores in others.values():  # the option reaches the val update
        assert not np.array_equal(scores["tov_score"], default.scores["tov_score"])


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("val_optimizer", trajectory.VAL_OPTIMIZERS)
def test_resume_after_an_interruption_is_bit_identical(tiny_tokenizer, pool, val, lora,
                                                       tmp_path, monkeypatch, val_optimizer):
    """Interrupted during epoch 2's val training (after its base epoch, so the in-memory base
    optimizer had moved on): the rerun reloads epoch 1's adapters and optimizer state,
    redoes epochs 2-3 only, and ends bit-identical to an uninterrupted run (dropout on)."""
    kw = {"lora": lora, "epochs": 3, "val_optimizer": val_optimizer}
    reference = _run(tiny_tokenizer, pool, val, **kw)
    real_fit = training.fit
    calls = []
    interrupt = [True]

    def interrupted_fit(model, samples, **fit_kw):
        calls.append(fit_kw["adapter"])
        if interrupt[0] and len(calls) == 4:
            raise _Interrupted
        return real_fit(model, samples, **fit_kw)

    monkeypatch.setattr(training, "fit", interrupted_fit)
    with pytest.raises(_Interrupted):
        _run(tiny_tokenizer, pool, val, output_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_001"]
    interrupt[0] = False
    calls.clear()
    resumed = _run(tiny_tokenizer, pool, val, output_dir=tmp_path, **kw)
    assert calls == ["tov_base", "tov_val"] * 2  # epochs 2 and 3 only
    assert resumed.scores.data.table.equals(reference.scores.data.table)
    assert resumed.selected.data.table.equals(reference.selected.data.table)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["args"]["val_optimizer"] == val_optimizer


def test_epochs_rule(tiny_tokenizer, pool, val, lora, monkeypatch):
    assert [trajectory.num_epochs(b) for b in (5, 60, 1024, 2048, 3000, 4096, 16384,
                                               100_000)] == [8, 8, 8, 8, 5, 4, 1, 1]
    assert trajectory.num_epochs(4096, epochs=7) == 7
    assert trajectory.epoch_lrs(1.0, 4) == [1.0, 0.75, 0.5, 0.25]
    monkeypatch.setattr(trajectory, "TRAJECTORY_SAMPLES", 40)  # base_size 20 -> L = 2
    result = _run(tiny_tokenizer, pool, val, lora=lora, epochs=None)
    assert len(result.history) == 2
    assert {"tov_score_epoch_1", "tov_score_epoch_2"} <= set(result.scores.column_names)


def test_result_layout(tiny_tokenizer, pool, val, lora, tmp_path):
    result = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)
    scores = result.scores
    assert scores.column_names == ["tov_row", "tov_score", "tov_num_tokens",
                                   "tov_score_epoch_1", "tov_score_epoch_2"]
    assert scores["tov_row"] == list(range(N_POOL))
    mean = (np.asarray(scores["tov_score_epoch_1"], np.float64)
            + np.asarray(scores["tov_score_epoch_2"], np.float64)) / 2
    np.testing.assert_allclose(scores["tov_score"], mean, rtol=1e-6)
    base = result.base_indices
    assert base.dtype == np.int64 and base.size == 20 and np.all(np.diff(base) > 0)
    sel = result.selected
    assert len(sel) == 10 and sel["id"] == sel["tov_row"]
    assert set(sel.column_names) >= {"text", "id", "tov_score", "tov_num_tokens"}
    expected = select_indices(np.asarray(scores["tov_score"]), np.asarray(scores["tov_num_tokens"]),
                              10, random_pool=base, seed=0)
    assert sel["tov_row"] == expected.tolist()
    assert result.disk_bytes == storage.directory_bytes(tmp_path) > 0
    assert {"setup", "train_base", "train_val", "score", "io", "select", "total"} <= set(
        result.timings)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "epoch_2/train" in manifest["steps"] and manifest["args"]["lr"] == 3e-2


def test_selected_rows_keep_pool_features_and_replace_stale_scores():
    from datasets import ClassLabel, Features, Value

    features = Features({"label": ClassLabel(names=["no", "yes"]), "tov_score": Value("string")})
    pool = Dataset.from_dict({"label": [0, 1, 1], "tov_score": ["a", "b", "c"]}, features)
    scores = pa.table({"tov_row": pa.array([0, 1, 2], pa.int64()),
                       "tov_score": pa.array([0.5, 0.1, 0.2], pa.float32())})
    combined = trajectory._with_columns(pool.select([2, 1, 0]), scores)
    assert combined.column_names == ["label", "tov_row", "tov_score"]
    assert combined.features["label"] == features["label"]
    assert combined.features["tov_score"] == Value("float32")
    assert combined["label"] == [1, 1, 0]
    assert combined["tov_score"] == pytest.approx([0.5, 0.1, 0.2])


def test_combined_rows_list_their_targets_and_replace_a_stale_column():
    pool = Dataset.from_dict({"x": [10, 11, 12, 13], "tov_targets": ["old"] * 4})
    scores = pa.table({"tov_row": pa.array(range(4), pa.int64()),
                       "tov_score_a": pa.array([0.1, 0.2, 0.3, 0.4], pa.float32())})
    combined = trajectory._combined(pool, scores, {"b": np.array([3, 1]), "a": np.array([1, 2])})
    assert combined.column_names == ["x", "tov_row", "tov_score_a", "tov_targets"]
    assert combined["x"] == [11, 12, 13] and combined["tov_row"] == [1, 2, 3]
    assert combined["tov_targets"] == [["b", "a"], ["a"], ["b"]]
    assert combined.features["tov_score_a"].dtype == "float32"


def test_resume_after_deleting_the_last_epoch_is_bit_identical(tiny_tokenizer, pool, val, lora,
                                                               tmp_path, monkeypatch, fit_calls):
    monkeypatch.setattr(trajectory, "SHARD_ROWS", 7)  # 5 shards per epoch
    first = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)  # dropout 0.2 on
    in_memory = _run(tiny_tokenizer, pool, val, lora=lora)
    assert first.scores.data.table.equals(in_memory.scores.data.table)

    shutil.rmtree(tmp_path / "epoch_002")
    fit_calls.clear()
    scored = []
    real_score = ToVScorer.score_columns
    monkeypatch.setattr(ToVScorer, "score_columns",
                        lambda self, cols: scored.append(1) or real_score(self, cols))
    second = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)
    assert [c["adapter"] for c in fit_calls] == ["tov_base", "tov_val"]  # epoch 2 only
    assert len(scored) == 5
    assert second.scores.data.table.equals(first.scores.data.table)
    assert second.selected.data.table.equals(first.selected.data.table)

    (tmp_path / "epoch_001" / "scores" / "shard_00003.parquet").unlink()
    fit_calls.clear()
    scored.clear()
    third = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)
    assert fit_calls == [] and len(scored) == 1  # only the missing shard is rescored
    assert third.scores.data.table.equals(first.scores.data.table)


def test_damaged_adapter_is_retrained(tiny_tokenizer, pool, val, lora, tmp_path, fit_calls):
    first = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)
    weights = tmp_path / "epoch_001" / "val" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    fit_calls.clear()
    again = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path)
    assert len(fit_calls) == 4  # epoch 1 failed its checksum: both epochs redone
    assert again.scores.data.table.equals(first.scores.data.table)


def test_changed_arguments_with_the_same_output_dir(tiny_tokenizer, pool, val, lora, tmp_path):
    _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path, epochs=1)
    with pytest.raises(storage.ManifestMismatchError, match="lr: 0.03 -> 0.01"):
        _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path, epochs=1, lr=1e-2)
    with pytest.raises(storage.ManifestMismatchError, match="val"):
        _run(tiny_tokenizer, pool, val.select([0, 1]), lora=lora, output_dir=tmp_path, epochs=1)
    with pytest.raises(storage.ManifestMismatchError, match="val_optimizer: 'fresh' -> 'sgd'"):
        _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path, epochs=1,
             val_optimizer="sgd")
    # the selection arguments act on the stored scores: changing them is fine
    again = _run(tiny_tokenizer, pool, val, lora=lora, output_dir=tmp_path, epochs=1, n=6)
    assert len(again.selected) == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_size": 31}, r"base_size=31 exceeds the pool's 30 rows; pass base_size=30"),
        ({"n": 31}, r"n=31 must be in \[1, len\(pool\)=30\]"),
        ({"n": 0}, r"n=0"),
        ({"val": "empty"}, "validation set is empty"),
        ({"pool": "empty"}, "pool is empty"),
        ({"variant": "serial"}, "variant='serial'"),
        ({"val_mode": "batch"}, "val_mode='batch'"),
        ({"val_optimizer": "adam"}, r"val_optimizer='adam' is not supported; pass one of "
                                    r"\('fresh', 'continue', 'sgd'\)"),
        ({"n": 30, "base_size": 10}, "random part"),
        ({"stratify_by_column": "label"},
         r"stratify_by_column='label': pool has no such column; its columns: \['text'"),
    ],
)
def test_bad_inputs(tiny_tokenizer, pool, val, change, message):
    kw = {"n": 10, "base_size": 20, **change}
    val = val.select([]) if kw.pop("val", None) == "empty" else val
    pool = pool.select([]) if kw.pop("pool", None) == "empty" else pool
    model = tiny.causal_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match=message):
        trajectory.tov_select(model, tiny_tokenizer, pool, val, **kw)
    assert not hasattr(model, "peft_config")


def test_label_strata_split_the_whole_selection_like_the_validation_set(tiny_tokenizer, pool,
                                                                         val, lora):
    """stratify_by_column: the 5 rows chosen by score are 3 "x" and 2 "y" (the validation
    set's 2:1, largest remainder), and so are the 5 drawn at random from U, none "z"; the
    same as `select_by_score` on the scores. Fewer labelled pool rows than n, or labelled
    rows of U than the random part, is refused before any training."""
    labelled = pool.add_column("label", ["x", "y", "z"] * (N_POOL // 3))
    val = val.add_column("label", ["x", "x", "y"])
    r = _run(tiny_tokenizer, labelled, val, lora=lora, epochs=1, stratify_by_column="label")
    sel = r.selected
    from_score = np.asarray(sel[trajectory.FROM_SCORE_COLUMN])
    by_score = np.asarray(sel["label"])[from_score]
    assert sorted(by_score.tolist()) == ["x", "x", "x", "y", "y"]
    assert sorted(np.asarray(sel["label"])[~from_score].tolist()) == ["x", "x", "x", "y", "y"]
    assert set(np.asarray(sel["id"])[~from_score].tolist()) <= set(r.base_indices.tolist())
    again = select_by_score(
        labelled.add_column("tov_score", r.scores["tov_score"]).add_column(
            "tov_num_tokens", r.scores["tov_num_tokens"]), 10, random_pool=r.base_indices,
        stratify_by_column="label", stratify_like=val)
    assert sorted(again["id"]) == sorted(sel["id"])
    with pytest.raises(ValueError, match=r"stratify_by_column='label': the labels of the "
                       r"validation set hold 0 pool rows, fewer than the 10 selected \(every "
                       r"row chosen, by score or at random, has one of them\); lower n"):
        _run(tiny_tokenizer, labelled, val.map(lambda _: {"label": "w"}), lora=lora,
             stratify_by_column="label")
    base = trajectory.draw_base_set(N_POOL, 20, 0)  # _run's U: base_size 20, seed 0
    in_base = np.isin(np.arange(N_POOL), base)
    rare = ["z" if not b or i in base[:2] else "x" for i, b in enumerate(in_base)]
    model = tiny.causal_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"stratify_by_column='label': the labels of the "
                       r"validation set hold 2 rows of the base set \(base_size=20\), fewer "
                       "than the 5 drawn at random from it; raise base_size"):
        trajectory.tov_select(model, tiny_tokenizer, pool.add_column("label", rare),
                              val.map(lambda _: {"label": "z"}), n=10, base_size=20, seed=0,
                              lora=lora, stratify_by_column="label")
    assert not hasattr(model, "peft_config")  # refused before any training


def test_plain_model_is_left_as_it_was(tiny_tokenizer, pool, val, lora):
    model = tiny.causal_lm(tiny_tokenizer).train()
    model.model.embed_tokens.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    flags = [p.requires_grad for p in model.parameters()]
    attrs = set(vars(model))
    rng = torch.get_rng_state()
    trajectory.tov_select(model, tiny_tokenizer, pool, val, n=10, base_size=20, epochs=1,
                          lora=lora)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert set(vars(model)) == attrs and model.training
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("named", [False, True])
def test_peft_model_starts_from_its_active_adapter(tiny_tokenizer, tiny_causal_lm, pool, val,
                                                   fit_calls, named):
    model = tiny_causal_lm  # adapters "base" (active) and "val", randomised
    model.set_adapter("val")
    own = {name: _weights(model, name) for name in ("base", "val")}
    targets = {"a": val, "b": val.select([0])} if named else val
    trajectory.tov_select(model, tiny_tokenizer, pool, targets, n=10, base_size=20, epochs=1)
    assert _same(fit_calls[0]["before"], own["val"])
    assert [c["adapter"] for c in fit_calls] == (
        ["tov_base", "tov_val_a", "tov_val_b"] if named else ["tov_base", "tov_val"])
    assert sorted(model.peft_config) == ["base", "val"] and model.active_adapter == "val"
    assert all(_same(_weights(model, name), w) for name, w in own.items())
    with pytest.raises(ValueError, match="lora= applies to plain models"):
        trajectory.tov_select(model, tiny_tokenizer, pool, val, n=10, base_size=20,
                              lora=models.default_lora_config("causal_lm", 2))


@pytest.mark.parametrize("val_optimizer", trajectory.VAL_OPTIMIZERS)
def test_token_classification_trajectory(tiny_tokenizer, val_optimizer):
    rng = np.random.default_rng(1)
    words = [list(rng.choice(tiny.WORDS, rng.integers(2, 8))) for _ in range(24)]
    tags = [[str(rng.choice(tiny.NER_LABELS)) for _ in w] for w in words]
    ds = Dataset.from_dict({"tokens": words, "ner_tags": tags})
    model = tiny.token_classifier(tiny_tokenizer)
    result = trajectory.tov_select(model, tiny_tokenizer, ds, ds.select(range(4)), n=8,
                                   base_size=24, epochs=2, lr=1e-2, batch_size=4,
                                   val_optimizer=val_optimizer)
    assert len(result.selected) == 8 and np.isfinite(result.scores["tov_score"]).all()


def test_progress_hook(tiny_tokenizer, pool, val, lora):
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc, self.done, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, k=1):
            self.done += k

        def close(self):
            self.closed = True

    _run(tiny_tokenizer, pool, val, lora=lora, epochs=1, progress=Bar)
    assert [b.desc for b in bars] == ["train tov_base", "train tov_val", "score epoch 1"]
    assert all(b.closed and b.done == b.total for b in bars) and bars[-1].total == N_POOL


# ---------------------------------------------------------------------------- storage


def test_manifest_verifies_checksums(tmp_path):
    with storage.Manifest(tmp_path, {"a": 1}) as m:
        path = storage.write_parquet(tmp_path / "x" / "s.parquet", pa.table({"v": [1, 2]}))
        m.record("step", [path], note="hi")
        assert m.verify("step") and m.info("step") == {"note": "hi"} and not m.verify("other")
        path.write_bytes(path.read_bytes() + b"!")
        assert not m.verify("step")
        with pytest.raises(RuntimeError, match="in use by another tov run"):
            storage.Manifest(tmp_path, {"a": 1}).__enter__()
    with storage.Manifest(tmp_path, {"a": 1}) as m:
        assert "step" in m.steps
    with pytest.raises(storage.ManifestMismatchError, match="a: 1 -> 2"):
        storage.Manifest(tmp_path, {"a": 2}).__enter__()


def test_manifest_args_hash_is_the_same_in_every_process():
    """LoraConfig.target_modules is a set: its order must not reach the hash (a rerun in a
    new process, with another hash seed, must resume)."""
    import os
    import subprocess
    import sys

    code = (
        "from peft import LoraConfig; from tov_datasets import storage; "
        "cfg = LoraConfig(target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj']); "
        "print(storage.Manifest('unused', {'lora': cfg.to_dict()}).args_hash)"
    )
    hashes = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
        for seed in (1, 2)
    }
    assert len(hashes) == 1


def test_atomic_writes_leave_no_partial_files(tmp_path):
    def failing(tmp):
        (tmp / "part" if tmp.is_dir() else tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write(tmp_path / "f.bin", failing)
    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write_dir(tmp_path / "d", failing)
    assert list(tmp_path.iterdir()) == []
    storage.atomic_write(tmp_path / "f.bin", lambda tmp: tmp.write_bytes(b"ok"))
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_adapter_and_optimizer_round_trip(tiny_tokenizer, tiny_causal_lm, tmp_path):
    model = tiny_causal_lm
    path = models.save_adapter(model, "val", tmp_path / "val")
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json",
                                                     "adapter_model.safetensors"]
    models.load_adapter(model, "base", path)
    assert _same(_weights(model, "base"), _weights(model, "val"))
    params = models.adapter_parameters(model, "base")
    opt = training.adamw(params, 0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    storage.save_optimizer_state(opt, tmp_path / "opt.safetensors")
    fresh = training.adamw(params, 0.1)
    storage.load_optimizer_state(fresh, tmp_path / "opt.safetensors")
    for p in params:
        for key, value in opt.state[p].items():
            assert torch.equal(fresh.state[p][key], value)


def test_dataset_digest_ignores_chunking_but_not_content():
    a = Dataset.from_dict({"t": ["x", "yy", "zzz", "w"]})
    b = concatenate_datasets([a.select(range(2)).flatten_indices(),
                              a.select(range(2, 4)).flatten_indices()])
    assert storage.dataset_digest(a) == storage.dataset_digest(b)
    assert storage.dataset_digest(a.select([1, 0, 2, 3])) != storage.dataset_digest(a)
    assert storage.dataset_digest(a.select([0, 1, 2, 3])) == storage.dataset_digest(a)


# ---------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_scores_mathematics_higher(tmp_path):
    """Val = 16 Mathematics summaries; pool = 15 Mathematics + 105 other summaries (12.5%).

    The score part of a Score+Random selection of half the pool (30 rows, length-binned top
    scores) should hold at least twice the pool's Mathematics share. (The top-scored half of
    the whole pool can hold at most twice the share, so that is no test.) ~3.5 CPU-minutes."""
    from tov_datasets import assets

    try:
        model, tok = assets.load_demo_model()
        wiki = assets.wiki_summaries()
    except assets.AssetNotInstalledError as err:
        pytest.skip(str(err))
    rng = np.random.default_rng(0)
    topics = np.asarray(wiki["topic"])
    math_rows = rng.permutation(np.flatnonzero(topics == "Mathematics"))
    other_rows = rng.choice(np.flatnonzero(topics != "Mathematics"), 105, replace=False)
    val = wiki.select(math_rows[:16]).select_columns(["text"])
    pool = wiki.select(rng.permutation(np.concatenate([math_rows[16:31], other_rows])))
    result = trajectory.tov_select(
        model, tok, pool, val, n=60, base_size=len(pool), epochs=1, lr=1e-3,
        lora=models.default_lora_config("causal_lm", 8, model=model), batch_size=8,
        max_length=64, output_dir=tmp_path,
    )
    is_math = np.asarray(pool["topic"]) == "Mathematics"
    scores = np.asarray(result.scores["tov_score"])
    lengths = np.asarray(result.scores["tov_num_tokens"])
    scored_part = select_indices(scores, lengths, 30, random_fraction=0.0)
    assert np.isin(scored_part, result.selected["tov_row"]).all()
    top_half = np.argsort(-scores, kind="stable")[: len(pool) // 2]
    print(
        f"\nSmolLM2 ToV: Mathematics share: pool {is_math.mean():.3f}, score part of the "
        f"selection {is_math[scored_part].mean():.3f}, top-scored half "
        f"{is_math[top_half].mean():.3f}; mean score math {scores[is_math].mean():.2e}, "
        f"other {scores[~is_math].mean():.2e}; timings "
        f"{ {k: round(v, 1) for k, v in result.timings.items()} }"
    )
    assert scores[is_math].mean() > scores[~is_math].mean()
    assert is_math[scored_part].mean() >= 2 * is_math.mean()


def test_config_and_keywords_are_the_same_run(tiny_tokenizer, pool, val, lora, tmp_path):
    """tov_select(config=ToVConfig(...), **overrides) is the keyword call: bit-identical
    scores and selection, and the same manifest record of the settings."""
    by_keywords = _run(tiny_tokenizer, pool, val, lora=lora, seed=3,
                       output_dir=tmp_path / "keywords")
    config = trajectory.ToVConfig(base_size=20, epochs=2, lr=3e-2, batch_size=4, lora=lora,
                                  seed=7)
    by_config = trajectory.tov_select(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, pool, val,
                                      n=10, config=config, seed=3,
                                      output_dir=tmp_path / "config")
    assert by_config.scores.data.table.equals(by_keywords.scores.data.table)
    assert by_config.selected.data.table.equals(by_keywords.selected.data.table)
    records = [json.loads((tmp_path / d / "manifest.json").read_text())["args"]
               for d in ("keywords", "config")]
    assert records[0] == records[1]
    assert [records[0][k] for k in ("base_size", "epochs", "seed", "max_length")] == [
        20, 2, 3, 128]
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['learning_rate'\]"):
        trajectory.tov_select(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, pool, val, n=10,
                              learning_rate=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    for bad, message in (({"variant": "serial"}, "variant='serial' is not supported"),
                         ({"epochs": 0}, "epochs=0 must be >= 1"),
                         ({"batch_size": 0}, "must be positive")):
        with pytest.raises(ValueError, match=message):
            trajectory.ToVConfig(**bad)
    assert trajectory.ToVConfig(column_map={}).column_map is None


# ---------------------------------------------------------------------------- named targets

NAMES = ("a", "b-2", "c_x")


@pytest.fixture(scope="module")
def targets(val):
    """Three named validation sets of the tiny LM's words (the first is ``val``)."""
    return {"a": val,
            "b-2": Dataset.from_dict({"text": ["river city king war", "music film game song",
                                               "the team and the player"]}),
            "c_x": Dataset.from_dict({"text": ["cell gene protein", "star planet energy"]})}


def _ner_data():
    """24 tokens/ner_tags rows for the tiny token classifier and three validation sets."""
    rng = np.random.default_rng(1)
    words = [list(rng.choice(tiny.WORDS, rng.integers(2, 8))) for _ in range(24)]
    tags = [[str(rng.choice(tiny.NER_LABELS)) for _ in w] for w in words]
    pool = Dataset.from_dict({"tokens": words, "ner_tags": tags})
    return pool, {name: pool.select(rows) for name, rows in
                  zip(NAMES, ([0, 1, 2, 3], [5, 9], [11, 12, 20]), strict=True)}


def _task_case(kind, tok, pool, targets):
    """(model factory, pool, targets, tov_select keywords) of the tiny causal LM or token
    classifier."""
    if kind == "causal_lm":
        return (lambda: tiny.causal_lm(tok)), pool, targets, {"n": 10, "base_size": 20}
    ner_pool, ner_targets = _ner_data()
    return (lambda: tiny.token_classifier(tok)), ner_pool, ner_targets, {
        "n": 8, "base_size": 24, "lr": 1e-2}


def _select_kw(**kw):
    return {"epochs": 2, "lr": 3e-2, "batch_size": 4, **kw}


def _tables_equal(a, b):
    return a.data.table.equals(b.data.table)


@pytest.mark.parametrize("variant", ["interleaved", "parallel"])
def test_one_target_mapping_is_the_plain_path(tiny_tokenizer, pool, val, lora, tmp_path,
                                              variant):
    """{"a": val} trains, scores and selects exactly as val alone: the same scores (under
    tov_score_a), per_target["a"] = the plain selection bit for bit, the combined selection
    has its rows; files under epoch_KKK/val_a."""
    plain = _run(tiny_tokenizer, pool, val, lora=lora, variant=variant,
                 output_dir=tmp_path / "plain")
    named = _run(tiny_tokenizer, pool, {"a": val}, lora=lora, variant=variant, n={"a": 10},
                 output_dir=tmp_path / "named")
    assert plain.per_target is None and plain.overlap is None
    assert named.scores.column_names == ["tov_row", "tov_score_a", "tov_num_tokens",
                                         "tov_score_a_epoch_1", "tov_score_a_epoch_2"]
    renamed = {"tov_score_a": "tov_score", "tov_score_a_epoch_1": "tov_score_epoch_1",
               "tov_score_a_epoch_2": "tov_score_epoch_2"}
    assert named.scores.data.table.rename_columns(
        [renamed.get(c, c) for c in named.scores.column_names]).equals(plain.scores.data.table)
    assert _tables_equal(named.per_target["a"], plain.selected)
    assert named.selected["tov_row"] == plain.selected["tov_row"]
    assert named.selected["tov_targets"] == [["a"]] * 10
    assert named.overlap["selected"].counts.tolist() == [[10]]
    assert named.overlap["from_score"].counts.tolist() == [[5]]
    assert [h["val_steps"] for h in named.history] == [{"a": 1}] * 2
    assert [h["val_loss"]["a"] for h in named.history] == [h["val_loss"] for h in plain.history]
    for name, directory in (("plain", "val"), ("named", "val_a")):
        assert sorted(p.name for p in (tmp_path / name / "epoch_001").iterdir()) == [
            "base", "optimizer.safetensors", "scores", directory]
    shard = pa.parquet.read_table(tmp_path / "named" / "epoch_001" / "scores" /
                                  "shard_00000.parquet")
    assert shard.column_names == ["tov_score_a", "tov_num_tokens"]
    args = json.loads((tmp_path / "named" / "manifest.json").read_text())["args"]
    assert args["targets"] == ["a"] and set(args["val"]) == {"a"}
    assert "targets" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["args"]


@pytest.mark.parametrize(("kind", "settings"), [
    ("causal_lm", {}),
    ("token_classification", {}),
    ("causal_lm", {"val_optimizer": "continue"}),
    ("causal_lm", {"val_optimizer": "sgd", "val_mode": "step"}),
])
def test_parallel_targets_score_as_single_target_runs(tiny_tokenizer, pool, targets, kind,
                                                      settings):
    """Parallel: the base never sees the val adapters, so each target's per-epoch scores and
    selection equal those of a single-target run on it with the same seed, bit for bit,
    while K = 3 targets share one base trajectory and one scoring pass (for every val
    update rule)."""
    make, data, named_targets, kw = _task_case(kind, tiny_tokenizer, pool, targets)
    kw = _select_kw(variant="parallel", **kw, **settings)
    many = trajectory.tov_select(make(), tiny_tokenizer, data, named_targets, **kw)
    for name, target_val in named_targets.items():
        alone = trajectory.tov_select(make(), tiny_tokenizer, data, target_val, **kw)
        for k in (1, 2):
            np.testing.assert_array_equal(many.scores[trajectory.epoch_column(k, name)],
                                          alone.scores[trajectory.epoch_column(k)])
        assert _tables_equal(many.per_target[name], alone.selected)
    epoch_2 = [np.asarray(many.scores[trajectory.epoch_column(2, t)]) for t in NAMES]
    assert not np.allclose(epoch_2[0], epoch_2[1]) and not np.allclose(epoch_2[1], epoch_2[2])


def _reference_scores(model, samples, val_adapter, causal):
    """Per sample: float64 mean over its scored tokens of F(log p_val - log p_base), F the
    default ToVConfig's, from two separate plain forwards (set_adapter), one sample at a time."""
    transform = TRANSFORMS[trajectory.ToVConfig().transform]
    model.eval()
    scores = []
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample.input_ids])
            logp = {}
            for adapter in ("tov_base", val_adapter):
                model.set_adapter(adapter)
                logp[adapter] = model(input_ids=ids).logits[0].double().log_softmax(-1)
            labels = torch.tensor(sample.labels)
            positions = torch.arange(len(labels))
            if causal:  # token t + 1 is predicted at position t
                labels, positions = labels[1:], positions[:-1]
            keep = labels != -100
            delta = (logp[val_adapter][positions[keep], labels[keep]]
                     - logp["tov_base"][positions[keep], labels[keep]])
            scores.append(float(transform(delta).mean()))
    return np.array(scores)


def _interleaved_reference(model, tok, data, named_targets, *, epochs, lr, batch_size,
                           base_size, seed=0, val_lr_ratio=0.1, held_rows=None):
    """The interleaved trajectory written out: per epoch the base continues from the plain
    float64 mean of the K val adapters (epoch 1: from its start), trains on U, each target's
    val adapter is copied from it and trained by the default val rule (a fresh AdamW, which
    fit builds) on its validation rows outside ``held_rows[name]`` (default: none); scores of
    the pool and of the held-out rows by `_reference_scores`: ({name: per-epoch pool scores},
    {name: per-epoch held-out scores})."""
    held_rows = held_rows or {name: [] for name in named_targets}
    task = models.infer_task(model)
    adapters = {name: f"tov_val_{name}" for name in named_targets}
    encode = {"task": task, "max_length": 128, "label2id": models.label_map(model, task)}
    base_rows = np.sort(np.random.default_rng(seed).choice(len(data), base_size, replace=False))
    per_epoch = {name: [] for name in named_targets}
    held_per_epoch = {name: [] for name in named_targets}
    trained = {name: ds.select([i for i in range(len(ds)) if i not in held_rows[name]])
               for name, ds in named_targets.items()}
    with models.attached(model, ["tov_base", *adapters.values()], seed=seed) as peft_model:
        pad = models.pad_token_id(tok)
        base_set = training.encode_dataset(data.select(base_rows), tok, **encode)
        pool_set = training.encode_dataset(data, tok, **encode)
        base_params = models.adapter_parameters(peft_model, "tov_base")
        optimizer = training.adamw(base_params, lr)
        for k in range(1, epochs + 1):
            lr_k = lr * (epochs - k + 1) / epochs
            if k > 1:
                vals = [models.adapter_parameters(peft_model, a) for a in adapters.values()]
                with torch.no_grad():
                    for i, p in enumerate(base_params):
                        p.copy_(torch.stack([v[i].double() for v in vals]).mean(0))
            training.fit(peft_model, base_set, pad_token_id=pad, adapter="tov_base", lr=lr_k,
                         batch_size=batch_size, schedule="constant", optimizer=optimizer,
                         seed=trajectory._derive(seed, k, 0))
            for name, adapter in adapters.items():
                with torch.no_grad():
                    for p, q in zip(base_params, models.adapter_parameters(peft_model, adapter),
                                    strict=True):
                        q.copy_(p)
                training.fit(peft_model, training.encode_dataset(trained[name], tok, **encode),
                             pad_token_id=pad, adapter=adapter, lr=val_lr_ratio * lr_k,
                             batch_size=batch_size, schedule="constant",
                             seed=trajectory._derive(seed, k, 1))
                per_epoch[name].append(_reference_scores(peft_model, pool_set, adapter,
                                                         task == "causal_lm"))
                held_set = training.encode_dataset(
                    named_targets[name].select(held_rows[name]), tok, **encode)
                held_per_epoch[name].append(_reference_scores(peft_model, held_set, adapter,
                                                              task == "causal_lm"))
    return per_epoch, held_per_epoch


def _pairwise_auc(positive, negative):
    """P(a positive outscores a negative), ties one half, over all pairs (float64)."""
    diff = np.asarray(positive, np.float64)[:, None] - np.asarray(negative, np.float64)[None]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("kind", ["causal_lm", "token_classification"])
def test_holdout_check_matches_a_reference_loop(tiny_tokenizer, pool, targets, kind):
    """holdout_fraction 0.34, K = 3 targets of 2-4 rows: one row of each is held out; the val
    updates train on the others (the pool's per-epoch scores equal the reference loop's
    trained on them), the held-out rows' mean scores equal the loop's two-forward float64
    scores, and the AUC equals a pairwise count against the pool's scored rows."""
    make, data, named_targets, kw = _task_case(kind, tiny_tokenizer, pool, targets)
    kw = _select_kw(**kw, holdout_fraction=0.34)
    result = trajectory.tov_select(make(), tiny_tokenizer, data, named_targets, **kw)
    held_rows = {name: trajectory.holdout_split(len(ds), 0.34, 0)
                 for name, ds in named_targets.items()}
    assert [len(r) for r in held_rows.values()] == [1, 1, 1]
    reference, held = _interleaved_reference(make(), tiny_tokenizer, data, named_targets,
                                             epochs=2, lr=kw["lr"], batch_size=4,
                                             base_size=kw["base_size"], held_rows=held_rows)
    counts = np.asarray(result.scores["tov_num_tokens"])
    assert set(result.holdout) == set(named_targets)
    for name, check in result.holdout.items():
        for k in (1, 2):
            np.testing.assert_allclose(result.scores[trajectory.epoch_column(k, name)],
                                       reference[name][k - 1], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(check.rows, held_rows[name])
        np.testing.assert_allclose(check.scores_per_epoch, held[name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(check.scores, np.mean(held[name], axis=0), rtol=1e-4,
                                   atol=1e-6)
        scored = counts > 0  # AUC on the library's float32 scores (checked just above)
        pool_mean = np.asarray(result.scores[f"tov_score_{name}"])[scored]
        assert check.auc == pytest.approx(_pairwise_auc(check.scores, pool_mean))
        per_epoch = [np.asarray(result.scores[trajectory.epoch_column(k, name)])[scored]
                     for k in (1, 2)]
        assert check.auc_per_epoch == pytest.approx(
            [_pairwise_auc(h, p) for h, p in zip(check.scores_per_epoch, per_epoch,
                                                 strict=True)])
        assert 0 <= check.auc <= 1 and check.num_tokens.min() > 0


def test_holdout_split_is_seeded_disjoint_and_sized():
    """max(1, round(f x rows)) distinct ascending rows, fixed by the seed; none for f = 0."""
    for rows, fraction, count in ((30, 0.2, 6), (16, 0.2, 3), (3, 0.1, 1), (100, 0.0, 0)):
        held = trajectory.holdout_split(rows, fraction, 7)
        assert held.dtype == np.int64 and len(held) == count
        assert np.all(np.diff(held) > 0) and (held.size == 0 or 0 <= held.min() < rows)
        np.testing.assert_array_equal(held, trajectory.holdout_split(rows, fraction, 7))
    assert not np.array_equal(trajectory.holdout_split(30, 0.2, 7),
                              trajectory.holdout_split(30, 0.2, 8))


def test_holdout_run_selects_as_a_run_on_the_kept_rows(tiny_tokenizer, pool, val, lora,
                                                        tmp_path, monkeypatch):
    """One validation set with a held-out row trains, scores and selects exactly as a run on
    the other rows alone; its held-out scores are stored per epoch and a rerun after an
    interruption in epoch 2 resumes to the same result; changing holdout_fraction is
    another run; a share that leaves nothing to train on is refused before training."""
    kw = {"lora": lora, "holdout_fraction": 0.34}
    held_rows = trajectory.holdout_split(len(val), 0.34, 0)
    kept = val.select([i for i in range(len(val)) if i not in held_rows])
    plain = _run(tiny_tokenizer, pool, kept, lora=lora)
    assert plain.holdout is None
    real_fit = training.fit
    calls = []

    def interrupted_fit(model, samples, **fit_kw):
        calls.append(fit_kw["adapter"])
        if len(calls) == 4:
            raise _Interrupted
        return real_fit(model, samples, **fit_kw)

    monkeypatch.setattr(training, "fit", interrupted_fit)
    with pytest.raises(_Interrupted):
        _run(tiny_tokenizer, pool, val, output_dir=tmp_path, **kw)
    monkeypatch.setattr(training, "fit", real_fit)
    held = _run(tiny_tokenizer, pool, val, output_dir=tmp_path, **kw)
    assert held.scores.data.table.equals(plain.scores.data.table)
    assert held.selected.data.table.equals(plain.selected.data.table)
    assert isinstance(held.holdout, trajectory.HoldoutCheck)
    np.testing.assert_array_equal(held.holdout.rows, held_rows)
    fresh = _run(tiny_tokenizer, pool, val, **kw)
    np.testing.assert_array_equal(fresh.holdout.scores, held.holdout.scores)
    assert fresh.holdout.auc == held.holdout.auc
    stored = [pa.parquet.read_table(tmp_path / f"epoch_00{k}" / "holdout" / "val.parquet")
              for k in (1, 2)]
    np.testing.assert_array_equal([t["tov_score"].to_numpy() for t in stored],
                                  held.holdout.scores_per_epoch)
    with pytest.raises(storage.ManifestMismatchError, match="holdout_fraction: 0.34 -> 0.5"):
        _run(tiny_tokenizer, pool, val, output_dir=tmp_path, **{**kw, "holdout_fraction": 0.5})
    with pytest.raises(storage.ManifestMismatchError, match="holdout_fraction"):
        _run(tiny_tokenizer, pool, val, output_dir=tmp_path, lora=lora)
    # a manifest written without the option (before it existed) is the same run as 0
    assert "holdout_fraction" not in trajectory.ToVConfig().record()
    model = tiny.causal_lm(tiny_tokenizer)
    for fraction, message in ((0.9, r"holdout_fraction=0.9 holds out all 3 rows of the "
                                     "validation set, leaving none"),
                              (1.0, r"holdout_fraction=1.0 must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            trajectory.tov_select(model, tiny_tokenizer, pool, val, n=10, base_size=20,
                                  holdout_fraction=fraction)
    assert not hasattr(model, "peft_config")


def _from_score(selection):
    return np.asarray(selection["tov_from_score"], dtype=bool)


def test_scored_only_above_drops_the_random_half_where_the_check_passes(
        tiny_tokenizer, pool, targets, tmp_path):
    """K = 3 named targets, holdout_fraction 0.34: with scored_only_above between the
    targets' held-out AUCs, a target at or above it selects exactly as random_fraction 0
    (every row by score), one below it exactly as the plain Score+Random pick (same
    trajectory, resumed from output_dir); the option needs holdout_fraction > 0."""
    kw = _select_kw(n=10, base_size=20, holdout_fraction=0.34, output_dir=tmp_path)
    model = tiny.causal_lm(tiny_tokenizer)
    plain = trajectory.tov_select(model, tiny_tokenizer, pool, targets, **kw)
    scored = trajectory.tov_select(model, tiny_tokenizer, pool, targets, random_fraction=0.0,
                                   **kw)
    aucs = {name: check.auc for name, check in plain.holdout.items()}
    assert len(set(aucs.values())) > 1, aucs  # the threshold can split the targets
    threshold = float(np.median(list(aucs.values())))
    switched = trajectory.tov_select(model, tiny_tokenizer, pool, targets,
                                     scored_only_above=threshold, **kw)
    assert switched.scores.data.table.equals(plain.scores.data.table)
    for name, auc in aucs.items():
        expected = scored if auc >= threshold else plain
        assert _tables_equal(switched.per_target[name], expected.per_target[name]), name
        assert _from_score(switched.per_target[name]).all() == (auc >= threshold)
    assert sum(auc >= threshold for auc in aucs.values()) in (1, 2)
    for value, fraction in ((0.9, 0.0), (1.5, 0.34)):
        with pytest.raises(ValueError, match=rf"scored_only_above={value} must be in \[0, 1\] "
                           rf"and needs holdout_fraction > 0 \(got {fraction}\)"):
            trajectory.tov_select(model, tiny_tokenizer, pool, targets,
                                  **{**kw, "holdout_fraction": fraction, "output_dir": None},
                                  scored_only_above=value)


@pytest.mark.parametrize("kind", ["causal_lm", "token_classification"])
def test_interleaved_targets_match_a_reference_loop(tiny_tokenizer, pool, targets, kind):
    """Interleaved, K = 3: every target's per-epoch scores equal a hand-written loop whose
    base continues from the plain mean of the three val adapters, scored by two separate
    float64 forwards per sample; the parallel variant (the base's own weights) differs from
    epoch 2 on."""
    make, data, named_targets, kw = _task_case(kind, tiny_tokenizer, pool, targets)
    kw = _select_kw(**kw)
    result = trajectory.tov_select(make(), tiny_tokenizer, data, named_targets, **kw)
    reference, _ = _interleaved_reference(make(), tiny_tokenizer, data, named_targets,
                                          epochs=2, lr=kw["lr"], batch_size=4,
                                          base_size=kw["base_size"])
    for name in named_targets:
        for k in (1, 2):
            np.testing.assert_allclose(result.scores[trajectory.epoch_column(k, name)],
                                       reference[name][k - 1], rtol=1e-4, atol=1e-6)
    parallel = trajectory.tov_select(make(), tiny_tokenizer, data, named_targets,
                                     **{**kw, "variant": "parallel"})
    for name in named_targets:
        assert not np.allclose(parallel.scores[trajectory.epoch_column(2, name)],
                               reference[name][1], rtol=1e-4, atol=1e-6)


def test_combined_selection_is_the_union_and_overlap_counts_shared_rows(
        tiny_tokenizer, pool, targets, lora):
    """Per-target n; combined = the union of the per-target selections, each row once, with
    the targets that chose it; overlap counts against a brute-force set computation, for
    whole selections and their score-chosen parts."""
    quotas = {"a": 6, "b-2": 10, "c_x": 8}
    result = _run(tiny_tokenizer, pool, targets, lora=lora, n=quotas)
    chosen = {name: set(sel["tov_row"]) for name, sel in result.per_target.items()}
    by_score = {name: {r for r, s in zip(sel["tov_row"], sel["tov_from_score"], strict=True)
                       if s} for name, sel in result.per_target.items()}
    assert {name: len(rows) for name, rows in chosen.items()} == quotas
    for name, sel in result.per_target.items():  # each the single-target selection rule
        expected = select_indices(np.asarray(result.scores[f"tov_score_{name}"]),
                                  np.asarray(result.scores["tov_num_tokens"]), quotas[name],
                                  random_pool=result.base_indices, seed=0)
        assert sel["tov_row"] == expected.tolist()
        assert sel["tov_score"] == result.scores[f"tov_score_{name}"][sel["tov_row"]]
    union = sorted(set().union(*chosen.values()))
    combined = result.selected
    assert combined["tov_row"] == union and len(union) < sum(quotas.values())
    assert combined["tov_targets"] == [[n for n in NAMES if row in chosen[n]] for row in union]
    assert combined["id"] == union  # the pool's own columns, row by row
    assert combined.column_names == ["text", "id", *result.scores.column_names, "tov_targets"]
    for column in result.scores.column_names:
        assert combined[column] == [result.scores[column][r] for r in union]
    for key, sets in (("selected", chosen), ("from_score", by_score)):
        overlap = result.overlap[key]
        assert overlap.names == NAMES and overlap.union == len(set().union(*sets.values()))
        assert overlap.counts.tolist() == [[len(sets[a] & sets[b]) for b in NAMES]
                                           for a in NAMES]
        assert overlap.as_dict()["a"]["c_x"] == len(sets["a"] & sets["c_x"])


def test_named_targets_resume_after_interruptions_bit_identical(
        tiny_tokenizer, pool, targets, lora, tmp_path, monkeypatch):
    """K = 3, dropout on, 5 shards per epoch: one run interrupted in epoch 2 while the second
    target's val adapter trains, its rerun interrupted while scoring epoch 2's third shard;
    the last rerun trains and scores only what is missing and ends bit-identical to an
    uninterrupted run (scores, combined and per-target selections, overlap)."""
    monkeypatch.setattr(trajectory, "SHARD_ROWS", 7)
    kw = {"lora": lora, "epochs": 3, "output_dir": tmp_path}
    reference = _run(tiny_tokenizer, pool, targets, **{**kw, "output_dir": None})
    real_fit, real_score = training.fit, ToVScorer.score_columns
    fits, scored, interrupt = [], [], {"fit": 7, "score": None}

    def interrupted_fit(model, samples, **fit_kw):
        fits.append(fit_kw["adapter"])
        if len(fits) == interrupt["fit"]:
            raise _Interrupted
        return real_fit(model, samples, **fit_kw)

    def interrupted_score(self, columns):
        scored.append(self.val_adapter)
        if len(scored) == interrupt["score"]:
            raise _Interrupted
        return real_score(self, columns)

    monkeypatch.setattr(training, "fit", interrupted_fit)
    monkeypatch.setattr(ToVScorer, "score_columns", interrupted_score)
    vals = ["tov_val_a", "tov_val_b-2", "tov_val_c_x"]
    with pytest.raises(_Interrupted):  # fit 7: epoch 2's tov_val_b-2
        _run(tiny_tokenizer, pool, targets, **kw)
    assert fits == ["tov_base", *vals, "tov_base", *vals[:2]]
    assert len(scored) == 5  # epoch 1 complete
    assert sorted(p.name for p in (tmp_path / "epoch_001").iterdir()) == [
        "base", "optimizer.safetensors", "scores", "val_a", "val_b-2", "val_c_x"]
    shard = pa.parquet.read_table(tmp_path / "epoch_001" / "scores" / "shard_00004.parquet")
    assert shard.column_names == ["tov_score_a", "tov_score_b-2", "tov_score_c_x",
                                  "tov_num_tokens"]

    fits.clear()
    scored.clear()
    interrupt.update(fit=None, score=3)
    with pytest.raises(_Interrupted):  # epoch 2 trained, then its third shard
        _run(tiny_tokenizer, pool, targets, **kw)
    assert fits == ["tov_base", *vals] and len(scored) == 3
    assert scored[0] == vals  # one scorer for all targets

    fits.clear()
    scored.clear()
    interrupt.update(score=None)
    resumed = _run(tiny_tokenizer, pool, targets, **kw)
    assert fits == ["tov_base", *vals]  # epoch 3 only
    assert len(scored) == 3 + 5  # epoch 2's shards 2-4, all of epoch 3
    assert _tables_equal(resumed.scores, reference.scores)
    assert _tables_equal(resumed.selected, reference.selected)
    for name in NAMES:
        assert _tables_equal(resumed.per_target[name], reference.per_target[name])
    for key in ("selected", "from_score"):
        assert np.array_equal(resumed.overlap[key].counts, reference.overlap[key].counts)
    assert resumed.history == reference.history


def test_named_targets_changed_with_the_same_output_dir(tiny_tokenizer, pool, targets, lora,
                                                        tmp_path):
    """The manifest records every target's name (in order) and validation rows."""
    kw = {"lora": lora, "epochs": 1, "output_dir": tmp_path}
    _run(tiny_tokenizer, pool, targets, **kw)
    changed = {**targets, "c_x": targets["c_x"].select([0])}
    renamed = {("d" if name == "c_x" else name): ds for name, ds in targets.items()}
    reordered = dict(reversed(list(targets.items())))
    for other, message in ((changed, "val: changed"), (renamed, "targets"),
                           (reordered, "targets"), (targets["a"], "val")):
        with pytest.raises(storage.ManifestMismatchError, match=message):
            _run(tiny_tokenizer, pool, other, **kw)
    again = _run(tiny_tokenizer, pool, targets, **{**kw, "n": {"a": 4, "b-2": 5, "c_x": 6}})
    assert [len(again.per_target[name]) for name in NAMES] == [4, 5, 6]


@pytest.mark.parametrize(
    ("val_arg", "n", "error", "message"),
    [
        ({}, 10, ValueError, "val: give at least one target name"),
        ({"a b": "v"}, 10, ValueError, r"val: 'a b' cannot name a score column"),
        ({"": "v"}, 10, ValueError, r"val: '' cannot name a score column"),
        ({1: "v"}, 10, ValueError, r"val: 1 cannot name a score column"),
        ({"a": "v", "a_epoch_2": "v"}, 10, ValueError,
         r"val: target 'a_epoch_2' would share its score column 'tov_score_a_epoch_2' with "
         r"the epoch columns of target 'a'"),
        ({"a": "v", "b": "v"}, {"a": 4}, ValueError,
         r"n: its keys \['a'\] must be the targets of val \['a', 'b'\]"),
        ({"a": "v"}, {"a": 4, "b": 4}, ValueError, "n: its keys"),
        ("v", {"a": 4}, ValueError, "n: a mapping of per-target counts needs val as a mapping"),
        ({"a": "v", "b": "v"}, {"a": 4, "b": 31}, ValueError,
         r"n\['b'\]=31 must be in \[1, len\(pool\)=30\]"),
        ({"a": "v", "b": "v"}, {"a": 4, "b": 2.5}, ValueError, r"n\['b'\]=2.5 must be an int"),
        ({"a": "v", "b": "v"}, {"a": 4, "b": 0}, ValueError, r"n\['b'\]=0"),
        ({"a": "v", "b": "empty"}, 10, ValueError,
         "the validation set of target 'b' is empty"),
        ({"a": "v", "b": "unscored"}, 10, ValueError,
         "the validation set of target 'b' has no scored tokens"),
        ({"a": "v", "b": ["rows"]}, 10, TypeError,
         r"val\['b'\] must be a datasets.Dataset, got list"),
        ("v", 0, ValueError, r"n=0 must be in"),
    ],
)
def test_named_targets_bad_arguments(tiny_tokenizer, pool, val, val_arg, n, error, message):
    named = {"v": val, "empty": val.select([]),  # "oneword": [UNK] alone, nothing predicted
             "unscored": Dataset.from_dict({"text": ["oneword"]})}

    def resolve(v):
        return named.get(v, v) if isinstance(v, str) else v

    if isinstance(val_arg, dict):
        val_arg = {name: resolve(v) for name, v in val_arg.items()}
    else:
        val_arg = resolve(val_arg)
    model = tiny.causal_lm(tiny_tokenizer)
    with pytest.raises(error, match=message):
        trajectory.tov_select(model, tiny_tokenizer, pool, val_arg, n=n, base_size=20)
    assert not hasattr(model, "peft_config")


def test_val_update_optimizer_names_what_is_wrong(tiny_tokenizer):
    """The rule's optimizer over the named val adapter; a bad rule or "continue" without the
    base optimizer is one clear error."""
    model = tiny.causal_lm_with_adapters(tiny_tokenizer)
    rule = trajectory.val_update_optimizer
    with pytest.raises(ValueError, match="needs the base optimizer"):
        rule(model, "continue", 1e-3, base_adapter="base", val_adapter="val")
    with pytest.raises(ValueError, match="val_optimizer must be one of"):
        rule(model, "adam", 1e-3, val_adapter="val")
    assert rule(model, "fresh", 1e-3, val_adapter="val") is None
    sgd = rule(model, "sgd", 1e-3, val_adapter="val")
    assert isinstance(sgd, training.NormalizedSGD) and sgd.param_groups[0]["lr"] == 1e-3
    assert {id(p) for g in sgd.param_groups for p in g["params"]} == {
        id(p) for p in models.adapter_parameters(model, "val")}
