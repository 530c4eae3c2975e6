"""ToVScorer against a reference of two plain forwards per sample (float64 log-softmax), with
label masks built here, independently of tov_datasets.formats (the tiny tokenizer maps one
word to one token, so positions are known by construction)."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, load_from_disk
from datasets.fingerprint import Hasher

from tests import tiny
from tov_datasets import models
from tov_datasets.models import check_adapter_names, forward_with_adapter_names
from tov_datasets.scorer import ToVScorer

TRANSFORMS = {"identity": lambda d: d, "abs": np.abs, "relu": lambda d: np.maximum(d, 0.0)}
MAX_LENGTH = 9
EOS, START, END = "<|im_end|>", "<|im_start|>", "<|im_end|>"

TEXTS = [
    "hello world paris is the capital of france",
    "the king",
    "math number theorem prime proof algebra geometry river city king war music film game",
    "a",
    "",
    "song album company market",
]
PROMPTS = [("question hello", " yes paris"), ("king", ""), ("the river is in", " paris"),
           ("a b c d e f g h", " long answer of music film"), ("", " hello world")]
CHATS = [
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes paris"}],
    [{"role": "system", "content": "math"}, {"role": "user", "content": "prime number"},
     {"role": "assistant", "content": "theorem proof"}, {"role": "user", "content": "yes"},
     {"role": "assistant", "content": "no"}],
    [{"role": "user", "content": "king"}, {"role": "assistant", "content": ""}],
]
NER = [
    (["paris", "is", "a", "city"], ["B-geo-loc", "O", "O", "O"]),
    (["king", "of", "france", "and", "london", "the", "city", "of", "paris", "was"],
     ["B-person", "O", "B-geo-loc", "O", "B-geo-loc", "O", "O", "O", "B-geo-loc", "O"]),
    ([], []),
    (["hello"], ["O"]),
]


def _ids(tok, words):
    return tok.convert_tokens_to_ids(list(words))


def causal_case(fmt, tok):
    """(dataset rows, [(ids, [(position t, target y)])]) with y predicted at position t - 1."""
    if fmt == "text":
        rows = {"text": TEXTS}
        refs = [(_ids(tok, t.split()), None) for t in TEXTS]
        refs = [(ids, [(t, ids[t]) for t in range(1, len(ids))]) for ids, _ in refs]
    elif fmt == "prompt_completion":
        rows = {"prompt": [p for p, _ in PROMPTS], "completion": [c for _, c in PROMPTS]}
        refs = []
        for p, c in PROMPTS:
            ids = _ids(tok, p.split() + (c.split() + [EOS] if c else []))
            refs.append((ids, [(t, ids[t]) for t in range(max(1, len(p.split())), len(ids))]))
    elif fmt == "messages":
        rows = {"messages": CHATS}
        refs = []
        for chat in CHATS:
            words, scored = [], []
            for m in chat:
                words += [START, m["role"]]
                if m["role"] == "assistant" and m["content"]:
                    scored += range(len(words), len(words) + len(m["content"].split()) + 1)
                words += m["content"].split() + [END]
            ids = _ids(tok, words)
            refs.append((ids, [(t, ids[t]) for t in scored]))
    else:  # pre-tokenised: labels given directly (may differ from input_ids)
        input_ids = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]
        labels = [[5, -100, 7, 30, 9, -100], [-100, -100], [-100] * 3 + list(range(30, 38))]
        rows = {"input_ids": input_ids, "labels": labels}
        refs = [(ids, [(t, y) for t, y in enumerate(lab) if t >= 1 and y != -100])
                for ids, lab in zip(input_ids, labels, strict=True)]
    return rows, refs


def ner_case(fmt, tok):
    label2id = {k: i for i, k in enumerate(tiny.NER_LABELS)}
    if fmt == "ner":
        rows = {"tokens": [w for w, _ in NER], "ner_tags": [t for _, t in NER]}
        refs = [(_ids(tok, w), [(t, label2id[g]) for t, g in enumerate(tags)])
                for w, tags in NER]
    else:
        rows = {"input_ids": [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]],
                "labels": [[1, -100, 0], [0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 1]]}
        refs = [(ids, [(t, y) for t, y in enumerate(lab) if y != -100])
                for ids, lab in zip(rows["input_ids"], rows["labels"], strict=True)]
    return rows, refs


@torch.no_grad()
def reference_deltas(model, refs, causal: bool, max_length: int | None, val: str = "val"):
    """Per sample, float64 log p_val(y) - log p_base(y) at its scored positions, from two
    separate forwards (set_adapter base, then the adapter ``val``), one sample at a time."""
    out = []
    active = model.active_adapter
    for ids, scored in refs:
        ids = ids[:max_length] if max_length else ids
        scored = [(t, y) for t, y in scored if t < len(ids)]
        if not scored:
            out.append(np.zeros(0))
            continue
        logp = {}
        for adapter in ("base", val):
            model.set_adapter(adapter)
            x = torch.tensor([ids], device=next(model.parameters()).device)
            logits = model(input_ids=x).logits[0].double()
            logp[adapter] = logits.log_softmax(-1)
        shift = 1 if causal else 0
        out.append(np.array([float(logp[val][t - shift, y] - logp["base"][t - shift, y])
                             for t, y in scored]))
    model.set_adapter(active)
    return out


def expected(deltas, transform):
    f = TRANSFORMS[transform]
    scores = [float(f(d).mean()) if d.size else 0.0 for d in deltas]
    return np.array(scores), np.array([d.size for d in deltas])


def check_scores(got, deltas, transform, column="tov_score"):
    """The scorer's float32 scores against the float64 reference. The model's float32 logits
    differ between a padded batch and a lone row by a few ulps of a log-prob (~5e-7 at
    |log p| ~ 4, the tiny models' vocabulary of 69; by CPU: 2e-7 seen on one Intel Xeon), so
    atol 1e-6; the deltas themselves are ~0.1, so a wrong position or label shows."""
    scores, counts = expected(deltas, transform)
    np.testing.assert_array_equal(np.asarray(got["tov_num_tokens"]), counts)
    np.testing.assert_allclose(np.asarray(got[column]), scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(
    "task,fmt",
    [("causal_lm", f) for f in ("text", "prompt_completion", "messages", "tokens")]
    + [("token_classification", f) for f in ("ner", "tokens")],
)
def test_map_matches_two_plain_forwards(task, fmt, side, tiny_causal_lm, tiny_token_classifier):
    tok = tiny.tokenizer()
    tok.padding_side = side
    causal = task == "causal_lm"
    model = tiny_causal_lm if causal else tiny_token_classifier
    rows, refs = (causal_case if causal else ner_case)(fmt, tok)
    ds = Dataset.from_dict(rows)
    deltas = reference_deltas(model, refs, causal, MAX_LENGTH)
    assert any(len(ids) > MAX_LENGTH for ids, _ in refs)
    for transform in TRANSFORMS:
        scorer = ToVScorer(model, tok, transform=transform, max_length=MAX_LENGTH, batch_size=2)
        out = ds.map(scorer, batched=True, batch_size=4)
        assert out.features["tov_score"].dtype == "float32"
        assert out.features["tov_num_tokens"].dtype == "int32"
        check_scores(out, deltas, transform)


def test_lora_on_lm_head_uses_full_logits(tiny_tokenizer):
    model = tiny.with_adapters(tiny.causal_lm(tiny_tokenizer), ["q_proj", "lm_head"], "CAUSAL_LM")
    scorer = ToVScorer(model, tiny_tokenizer, transform="abs", batch_size=4)
    assert scorer._head is None
    rows, refs = causal_case("text", tiny_tokenizer)
    check_scores(scorer(rows), reference_deltas(model, refs, True, None), "abs")


@pytest.fixture
def text_scorer(tiny_causal_lm, tiny_tokenizer):
    return ToVScorer(tiny_causal_lm, tiny_tokenizer, batch_size=3)


def test_ray_numpy_and_arrow_batches(text_scorer):
    ds = Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))})
    want = ds.map(text_scorer, batched=True)
    table = text_scorer(ds.data.table.combine_chunks())
    assert isinstance(table, pa.Table)
    assert table.column_names == ["text", "id", "tov_score", "tov_num_tokens"]
    assert table.schema.field("tov_score").type == pa.float32()
    np.testing.assert_array_equal(table.column("tov_score").to_numpy(), want["tov_score"])
    batch = {"text": np.array(TEXTS, dtype=object), "id": np.arange(len(TEXTS))}
    got = text_scorer(batch)
    assert list(got) == ["text", "id", "tov_score", "tov_num_tokens"]
    assert got["tov_score"].dtype == np.float32 and got["tov_num_tokens"].dtype == np.int32
    np.testing.assert_array_equal(got["tov_score"], want["tov_score"])


def test_with_rank_and_real_pickling(text_scorer):
    ds = Dataset.from_dict({"text": TEXTS})
    want = ds.map(text_scorer, batched=True)["tov_score"][:]
    assert ds.map(text_scorer, batched=True, with_rank=True)["tov_score"][:] == want
    # two workers split the rows, so micro-batches (and padding) differ: float32 noise only
    in_workers = ds.map(text_scorer, batched=True, num_proc=2)["tov_score"][:]
    np.testing.assert_allclose(in_workers, want, rtol=1e-5, atol=1e-7)
    clone = pickle.loads(pickle.dumps(text_scorer))
    assert clone.model is not text_scorer.model
    np.testing.assert_array_equal(clone({"text": TEXTS})["tov_score"], want)


def hashed_bytes(scorer) -> int:
    """Bytes that datasets' Hasher digests for the scorer (what `Hasher.hash` serialises)."""
    from datasets.utils._dill import dumps

    return len(dumps(scorer))


def test_fingerprint_cheap_stable_and_tracks_adapters(text_scorer):
    first = Hasher.hash(text_scorer)
    weights = sum(p.numel() * p.element_size() for p in text_scorer.model.parameters())
    assert hashed_bytes(text_scorer) < min(4096, weights // 4)  # a digest, not the weights
    assert Hasher.hash(text_scorer) == first
    model = text_scorer.model
    for adapter in ("base", "val"):
        param = next(p for n, p in model.named_parameters() if f"lora_B.{adapter}." in n)
        with torch.no_grad():
            param[0, 0] += 1e-3
        changed = Hasher.hash(text_scorer)
        assert changed != first
        first = changed
    other = ToVScorer(model, text_scorer.tokenizer, transform="relu", batch_size=3)
    assert Hasher.hash(other) != first


def test_fingerprint_is_the_same_in_another_process(text_scorer):
    code = (
        "from tests import tiny; from tov_datasets.scorer import ToVScorer; "
        "tok = tiny.tokenizer(); "
        "print(ToVScorer(tiny.causal_lm_with_adapters(tok), tok, batch_size=3).fingerprint())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                         capture_output=True, text=True)
    assert out.stdout.split()[-1] == text_scorer.fingerprint()


def test_map_twice_uses_the_cache(text_scorer, tmp_path):
    Dataset.from_dict({"text": TEXTS}).save_to_disk(tmp_path / "ds")
    ds = load_from_disk(tmp_path / "ds")
    first = ds.map(text_scorer, batched=True)

    def fail(_samples):
        raise AssertionError("scored again instead of reading the cache")

    text_scorer._score_encoded = fail
    second = ds.map(text_scorer, batched=True)
    assert second.cache_files == first.cache_files
    assert second["tov_score"][:] == first["tov_score"][:]


def test_plain_model_with_adapter_directories(tiny_causal_lm, tiny_tokenizer, tmp_path):
    tiny_causal_lm.save_pretrained(tmp_path)  # one sub-directory per adapter
    rows = {"text": TEXTS}
    want = ToVScorer(tiny_causal_lm, tiny_tokenizer)(rows)
    plain = tiny.causal_lm(tiny_tokenizer)
    scorer = ToVScorer(plain, tiny_tokenizer, base_adapter=str(tmp_path / "base"),
                       val_adapter=str(tmp_path / "val"))
    np.testing.assert_allclose(scorer(rows)["tov_score"], want["tov_score"], rtol=1e-6)
    with pytest.raises(ValueError, match="not a peft model"):
        ToVScorer(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer)


def test_scoring_restores_mode_and_active_adapter(tiny_causal_lm, tiny_tokenizer):
    tiny_causal_lm.set_adapter("val")
    tiny_causal_lm.train()
    ToVScorer(tiny_causal_lm, tiny_tokenizer)({"text": TEXTS})
    assert tiny_causal_lm.training and tiny_causal_lm.active_adapter == "val"
    assert all(m.training for m in tiny_causal_lm.modules())


def test_sign_after_training_val_adapter(tiny_causal_lm, tiny_tokenizer):
    target = "the king of france was in paris with the music of the city"
    near = "the king of france was in paris with the music of a city"
    unrelated = "prime number theorem proof algebra geometry star planet energy"
    model = tiny_causal_lm
    model.set_adapter("val")  # only the active adapter is trainable
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([tiny_tokenizer(target)["input_ids"]])
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores = ToVScorer(model, tiny_tokenizer)({"text": [near, unrelated]})["tov_score"]
    assert scores[0] > scores[1] and scores[0] > 0


def test_bad_inputs(tiny_causal_lm, tiny_tokenizer):
    scorer = ToVScorer(tiny_causal_lm, tiny_tokenizer)
    with pytest.raises(ValueError, match="prompt\\+completion"):
        scorer({"question": ["hello"]})
    out = scorer({"prompt": ["hello", "king"], "completion": ["", " yes"]})
    assert out["tov_score"][0] == 0.0 and out["tov_num_tokens"][0] == 0
    assert out["tov_num_tokens"][1] == 2 and np.isfinite(out["tov_score"]).all()
    out = scorer({"text": ["", "hello"]})
    assert out["tov_score"].tolist() == [0.0, 0.0] and out["tov_num_tokens"].tolist() == [0, 0]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_length must be >= 1"):
            ToVScorer(tiny_causal_lm, tiny_tokenizer, max_length=bad)
    with pytest.raises(ValueError, match=r"no adapter 'other'.*\['base', 'val'\]"):
        ToVScorer(tiny_causal_lm, tiny_tokenizer, val_adapter="other")
    with pytest.raises(ValueError, match="causal LM"):
        ToVScorer(tiny.with_adapters(tiny.causal_lm(tiny_tokenizer).model, ["q_proj"],
                                     "FEATURE_EXTRACTION"), tiny_tokenizer)


def test_tokenizer_without_pad_token(tiny_causal_lm, tiny_tokenizer):
    tok = tiny.tokenizer(pad=False)
    out = ToVScorer(tiny_causal_lm, tok, batch_size=4)({"text": TEXTS})
    assert tok.pad_token is None
    want = ToVScorer(tiny_causal_lm, tiny_tokenizer, batch_size=4)({"text": TEXTS})
    np.testing.assert_array_equal(out["tov_score"], want["tov_score"])


def test_adapter_names_guard_keeps_the_model_usable(text_scorer):
    ids = torch.tensor([_ids(text_scorer.tokenizer, ["hello", "world"])] * 2)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        forward_with_adapter_names(text_scorer.model, {"input_ids": ids}, ["base", "val", "val"])
    check_adapter_names(["base", "val"], 2)
    model = text_scorer.model.eval()
    with torch.no_grad():
        model(input_ids=ids, adapter_names=["base", "val"])
        model(input_ids=ids)


@pytest.mark.slow
def test_real_smollm2_matches_two_plain_forwards():
    from peft import LoraConfig, get_peft_model

    from tov_datasets import assets

    try:
        model, tok = assets.load_demo_model()
    except assets.AssetNotInstalledError as err:
        pytest.skip(str(err))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg, adapter_name="base")
    model.add_adapter("val", cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 1e-2)
    model.eval()
    texts = ["The capital of France is Paris.", "Photosynthesis turns light into chemical energy "
             "stored in sugars, releasing oxygen as a by-product.", "Hi", "1 2 3 4 5 6 7 8 9 10"]
    prompts = ["Question: what is 2+2? Answer:", "Translate to French: cat ->"]
    completions = [" 4", " chat"]
    refs = []
    for text in texts:
        ids = tok(text)["input_ids"]
        refs.append((ids, [(t, ids[t]) for t in range(1, len(ids))]))
    for p, c in zip(prompts, completions, strict=True):
        n = len(tok(p)["input_ids"])
        ids = tok(p + c)["input_ids"] + [tok.eos_token_id]
        refs.append((ids, [(t, ids[t]) for t in range(n, len(ids))]))
    deltas = reference_deltas(model, refs, True, None)
    scorer = ToVScorer(model, tok, transform="abs", batch_size=4)
    assert scorer._head is not None  # tied embeddings: the hidden-state path
    got = scorer({"text": texts})
    more = scorer({"prompt": prompts, "completion": completions})
    got = {k: np.concatenate([got[k], more[k]]) for k in got}
    scores, counts = expected(deltas, "abs")
    np.testing.assert_array_equal(got["tov_num_tokens"], counts)
    # float32 log-softmax over 49k logits of magnitude ~20: ~1e-6 absolute error per token
    np.testing.assert_allclose(got["tov_score"], scores, rtol=1e-4, atol=1e-5)
    assert hashed_bytes(scorer) < 4096  # not the 135M weights: map() does not hash them


def test_labels_outside_the_vocabulary_raise_after_the_batch(text_scorer):
    """Pre-tokenised labels outside the model's vocabulary: one clear ValueError once the
    batch's scores are on the host (the kernels count them on the device, no extra sync)."""
    good = {"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, 7, 8]]}
    scores, _ = text_scorer.score_columns(good)
    assert np.isfinite(scores).all() and scores[0] != 0.0
    bad = {"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, 10**6, 8]]}
    with pytest.raises(ValueError, match=r"neither ignore_index nor inside \[0, V\)"):
        text_scorer.score_columns(bad)


# ------------------------------------------------------------------ several targets
TARGETS = ["val_c", "val", "val-b"]  # not in creation order: columns follow this list


def _lm_head_lora(tok):
    """A causal LM with LoRA on lm_head too: the scorer takes the full-logits path."""
    return tiny.with_adapters(tiny.causal_lm(tok), ["q_proj", "lm_head"], "CAUSAL_LM")


MODELS = {
    "causal_lm": tiny.causal_lm_with_adapters,
    "causal_lm_logits": _lm_head_lora,
    "token_classification": tiny.token_classifier_with_adapters,
}


def _case(kind, tok):
    if kind == "token_classification":
        return ner_case("ner", tok)
    return causal_case("prompt_completion" if kind == "causal_lm" else "text", tok)


@pytest.mark.parametrize("kind", list(MODELS))
def test_one_target_list_is_bit_identical_to_the_single_target_scorer(kind, tiny_tokenizer):
    model = MODELS[kind](tiny_tokenizer)
    rows, _ = _case(kind, tiny_tokenizer)
    ds = Dataset.from_dict(rows)
    for transform in ("identity", "abs"):
        options = {"transform": transform, "max_length": MAX_LENGTH, "batch_size": 2}
        single = ToVScorer(model, tiny_tokenizer, **options)
        listed = ToVScorer(model, tiny_tokenizer, val_adapter=["val"], **options)
        assert (single._head is None) == (kind != "causal_lm")
        assert listed.columns == ["tov_score_val", "tov_num_tokens"]
        want = ds.map(single, batched=True, batch_size=4)
        got = ds.map(listed, batched=True, batch_size=4)
        assert got.column_names == [*rows, "tov_score_val", "tov_num_tokens"]
        assert got.features["tov_score_val"].dtype == "float32"
        np.testing.assert_array_equal(got["tov_score_val"][:], want["tov_score"][:])
        np.testing.assert_array_equal(got["tov_num_tokens"][:], want["tov_num_tokens"][:])
        scores, counts = listed.score_columns(rows)
        assert scores.shape == (1, len(counts)) and scores.dtype == np.float32
        np.testing.assert_array_equal(scores[0], single.score_columns(rows)[0])


@pytest.mark.parametrize("kind", list(MODELS))
def test_three_targets_in_one_forward_match_separate_references(kind, tiny_tokenizer,
                                                                monkeypatch):
    model = tiny.add_adapters(MODELS[kind](tiny_tokenizer), ["val_c", "val-b"])
    rows, refs = _case(kind, tiny_tokenizer)
    causal = kind != "token_classification"
    deltas = {t: reference_deltas(model, refs, causal, MAX_LENGTH, val=t) for t in TARGETS}
    assert not np.allclose(np.concatenate(deltas["val"]), np.concatenate(deltas["val_c"]))
    forwards = []
    real_forward = models.forward_with_adapter_names

    def counted(model_, inputs, adapter_names):
        forwards.append(list(adapter_names))
        return real_forward(model_, inputs, adapter_names)

    monkeypatch.setattr(models, "forward_with_adapter_names", counted)
    for transform in ("identity", "abs"):
        scorer = ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS, transform=transform,
                           max_length=MAX_LENGTH, batch_size=2)
        forwards.clear()
        out = Dataset.from_dict(rows).map(scorer, batched=True, batch_size=4)
        assert out.column_names == [*rows, *(f"tov_score_{t}" for t in TARGETS),
                                    "tov_num_tokens"]
        for target in TARGETS:
            assert out.features[f"tov_score_{target}"].dtype == "float32"
            check_scores(out, deltas[target], transform, f"tov_score_{target}")
        # one forward per micro-batch of B samples: (1 + K) x B rows, base rows first
        scored = int(np.count_nonzero(out["tov_num_tokens"][:]))
        assert sum(len(names) for names in forwards) == (1 + len(TARGETS)) * scored
        for names in forwards:
            B = len(names) // (1 + len(TARGETS))
            assert names == [a for a in ["base", *TARGETS] for _ in range(B)]


@pytest.mark.parametrize("fused", [True, False])
def test_three_targets_share_the_base_rows_in_one_kernel_call(fused, tiny_causal_lm,
                                                             tiny_tokenizer, monkeypatch):
    """K >= 2: one multi-target kernel call per micro-batch on the base rows and a (K, B,
    ...) view of the targets' rows, no single-target call; the scores equal K single-target
    scorers' (float rounding: the multi kernel reuses the base's log-sum-exp)."""
    from tov_datasets import scorer as scorer_module

    model = tiny.add_adapters(tiny_causal_lm, ["val_c", "val-b"])
    name = "paired_linear_logprob_delta" if fused else "paired_logprob_delta"
    calls = []

    def spy(function):
        def counted(base, vals, *args, **kwargs):
            calls.append((function.__name__, tuple(base.shape), tuple(vals.shape)))
            return function(base, vals, *args, **kwargs)
        return counted

    for function in (name, name + "_multi"):
        monkeypatch.setattr(scorer_module, function, spy(getattr(scorer_module, function)))
    scorer = ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS, batch_size=3)
    if not fused:
        scorer._head = None  # the logits path of a causal LM without the fused head
    scores, counts = scorer.score_columns({"text": TEXTS})
    batches = -(-int(np.count_nonzero(counts)) // 3)
    assert [c[0] for c in calls] == [name + "_multi"] * batches
    assert all(vals[:2] == (len(TARGETS), base[0]) and vals[2:] == base[1:]
               for _, base, vals in calls)
    for k, target in enumerate(TARGETS):
        single = ToVScorer(model, tiny_tokenizer, val_adapter=target, batch_size=3)
        if not fused:
            single._head = None
        np.testing.assert_allclose(scores[k], single.score_columns({"text": TEXTS})[0],
                                   rtol=0, atol=1e-6)


def test_three_targets_in_ray_numpy_and_arrow_batches(tiny_causal_lm, tiny_tokenizer):
    model = tiny.add_adapters(tiny_causal_lm, ["val_c", "val-b"])
    scorer = ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS, batch_size=3)
    new = [f"tov_score_{t}" for t in TARGETS] + ["tov_num_tokens"]
    ds = Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))})
    want = ds.map(scorer, batched=True)
    table = scorer(ds.data.table.combine_chunks())
    assert table.column_names == ["text", "id", *new]
    batch = scorer({"text": np.array(TEXTS, dtype=object), "id": np.arange(len(TEXTS))})
    assert list(batch) == ["text", "id", *new]
    for column in new:
        np.testing.assert_array_equal(table.column(column).to_numpy(), want[column][:])
        np.testing.assert_array_equal(batch[column], want[column][:])
    assert table.schema.field(new[0]).type == pa.float32()
    nothing_scored = scorer({"text": ["", "hello"]})  # no forward at all
    assert [nothing_scored[c].tolist() for c in new] == [[0.0, 0.0]] * 3 + [[0, 0]]


def test_fingerprint_tracks_every_target(tiny_causal_lm, tiny_tokenizer):
    model = tiny.add_adapters(tiny_causal_lm, ["val_c", "val-b"])
    scorer = ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS)
    first = Hasher.hash(scorer)
    assert hashed_bytes(scorer) < 4096
    assert Hasher.hash(ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS)) == first
    seen = {first}
    for adapter in ["base", *TARGETS]:
        param = next(p for n, p in model.named_parameters() if f"lora_B.{adapter}." in n)
        with torch.no_grad():
            param[0, 0] += 1e-3
        seen.add(Hasher.hash(scorer))
    for targets in (TARGETS[::-1], TARGETS[:2], ["val"]):
        seen.add(Hasher.hash(ToVScorer(model, tiny_tokenizer, val_adapter=targets)))
    seen.add(Hasher.hash(ToVScorer(model, tiny_tokenizer)))  # "val": column tov_score
    assert len(seen) == 1 + 4 + 3 + 1


def test_targets_from_adapter_directories(tiny_causal_lm, tiny_tokenizer, tmp_path):
    model = tiny.add_adapters(tiny_causal_lm, ["val_c"])
    model.save_pretrained(tmp_path)  # one sub-directory per adapter
    want = ToVScorer(model, tiny_tokenizer, val_adapter=["val_c", "val"])({"text": TEXTS})
    scorer = ToVScorer(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer,
                       base_adapter=tmp_path / "base",
                       val_adapter={"a": tmp_path / "val_c", "b": tmp_path / "val"})
    assert scorer.targets == ["a", "b"] and scorer.base_adapter == "base"
    got = scorer({"text": TEXTS})
    for new, old in (("a", "val_c"), ("b", "val")):
        np.testing.assert_allclose(got[f"tov_score_{new}"], want[f"tov_score_{old}"],
                                   rtol=1e-6)


def test_bad_target_arguments(tiny_causal_lm, tiny_tokenizer):
    model = tiny.add_adapters(tiny_causal_lm, ["val_c"])
    bad = [
        ([], "val_adapter: give at least one"),
        (["val", "val_c", "val"], r"val_adapter: names \['val'\] appear more than once"),
        (["val", "base"], "val_adapter: 'base' is the base adapter"),
        (["val", "other"], r"val_adapter: the model has no adapter 'other'; it has \['base'"),
        (["val.c"], "val_adapter: 'val.c' cannot name a score column; use letters, digits"),
        (["a b"], "cannot name a score column"),
        ([""], "cannot name a score column"),
        ([3], "val_adapter: 3 cannot name a score column"),
        ({"val": "some/dir"}, "a peft model takes the names of its adapters"),
    ]
    for val_adapter, message in bad:
        with pytest.raises(ValueError, match=message):
            ToVScorer(model, tiny_tokenizer, val_adapter=val_adapter)
    with pytest.raises(ValueError, match="val_adapter: 'base' is the base adapter"):
        ToVScorer(model, tiny_tokenizer, val_adapter="base")
    with pytest.raises(ValueError, match="base_adapter: the model has no adapter 'x'"):
        ToVScorer(model, tiny_tokenizer, base_adapter="x", val_adapter=["val"])
    with pytest.raises(ValueError, match=r"with a plain model give .*\{name: adapter dir"):
        ToVScorer(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, val_adapter=["val"])
    with pytest.raises(ValueError, match="val_adapter: 'base' is the base adapter"):
        ToVScorer(tiny.causal_lm(tiny_tokenizer), tiny_tokenizer, val_adapter={"base": "d"})


def test_three_targets_raise_on_labels_outside_the_vocabulary(tiny_causal_lm, tiny_tokenizer):
    model = tiny.add_adapters(tiny_causal_lm, ["val_c", "val-b"])
    scorer = ToVScorer(model, tiny_tokenizer, val_adapter=TARGETS)
    scores, _ = scorer.score_columns({"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, 7, 8]]})
    assert scores.shape == (3, 1) and np.all(scores != 0.0)
    with pytest.raises(ValueError, match=r"neither ignore_index nor inside \[0, V\)"):
        scorer.score_columns({"input_ids": [[5, 6, 7, 8]], "labels": [[5, 6, 10**6, 8]]})
