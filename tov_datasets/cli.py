"""The ``tov`` command: ``select``, ``score``, ``select-only`` and ``demo``.

Every command calls the library's public functions; each stage is one function. Outputs are
written atomically (``storage``); bad input (missing files, unknown columns, mismatched
arguments on a resumed run) ends with a one-line message and exit code 2.

``tov select`` holds a lock on its output directory, writes ``run.json`` last and removes it
before rewriting the other outputs: a directory without ``run.json`` holds an unfinished run
(rerun the command to finish it; finished trajectory steps are kept).

``tov select`` takes one validation set (``--val PATH``) or several named targets (``--val
NAME=PATH`` each, ``--n N`` or ``--n NAME=N`` each): one base trajectory for all of them,
a selection per target (``selected_<NAME>.parquet``) and their union (``selected.parquet``).

Every command refuses an output that is, contains or lies inside one of its inputs before
doing any work; every failure is one line on stderr (exit 2; Ctrl-C: exit 130) naming CLI
options, not library arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tov")

TRAJECTORY_DIR = "trajectory"  # tov_select's resumable state inside the output directory
SELECTED_FILE = "selected.parquet"
TARGET_SELECTED_FILE = "selected_{}.parquet"  # named targets: each one's selection
SCORES_FILE = "scores.parquet"
RUN_FILE = "run.json"
IN_BASE = "tov_in_base"  # scores.parquet: whether the row is in the base set U
POOL_DIGEST_KEY = b"tov_pool_sha256"  # scores.parquet metadata: content digest of the pool
EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
DEFAULT_BINS = 10
# Library argument names (trajectory manifest keys) -> the CLI options that set them.
OPTION_NAMES = {
    "base_size": "--base-size", "epochs": "--epochs", "lr": "--lr", "seed": "--seed",
    "variant": "--variant", "transform": "--transform", "batch_size": "--batch-size",
    "max_length": "--max-length", "lora": "--lora-rank", "val_optimizer": "--val-optimizer",
    "holdout_fraction": "--holdout-fraction",
    "start_adapter": "",  # drawn from --seed, --lora-rank and --model: shown through them
    "model_class": "--model", "model_config": "--model", "model_weights": "--model",
    "tokenizer": "--model (tokenizer)", "pool": "--pool (content)", "val": "--val (content)",
    "targets": "--val (names)",
}
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
_DTYPES = ("float32", "bfloat16", "float16")


class CliError(Exception):
    """Bad input: reported as one line, exit code 2."""


# ------------------------------------------------------------------------ loading inputs
def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(_DATA_SUFFIXES + (".gguf",))


def load_data(spec: str, what: str = "data") -> Any:
    """A ``datasets.Dataset`` with at least one row from a JSONL/JSON, Parquet or Arrow file,
    a ``save_to_disk`` directory, or a hub dataset ``NAME`` / ``NAME:SPLIT`` (default split:
    train)."""
    dataset = _read_data(spec, what)
    if len(dataset) == 0:
        raise CliError(f"{what} {spec} has no rows")
    return dataset


def _read_data(spec: str, what: str) -> Any:
    import datasets

    path = Path(spec).expanduser()
    datasets_logger = logging.getLogger("datasets")  # it logs read errors we report ourselves
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        if path.is_file():
            if path.stat().st_size == 0:
                raise CliError(f"{what} {spec} has no rows (empty file)")
            suffix = path.suffix.lower()
            if suffix in (".jsonl", ".json"):
                return datasets.Dataset.from_json(str(path))
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                if pq.ParquetFile(path).metadata.num_rows == 0:  # datasets fails obscurely
                    raise CliError(f"{what} {spec} has no rows")
                return datasets.Dataset.from_parquet(str(path))
            if suffix == ".arrow":
                return datasets.Dataset.from_file(str(path))
            raise CliError(f"{what} {spec}: unknown file type; use .jsonl, .parquet or .arrow")
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                raise CliError(
                    f"{what} {spec} holds several splits {sorted(loaded)}; pass one, e.g. "
                    f"{path / next(iter(loaded))}"
                )
            return loaded
        if _looks_like_path(spec):
            raise CliError(f"{what} {spec}: no such file or directory")
        name, _, split = spec.partition(":")
        return datasets.load_dataset(name, split=split or "train")
    except CliError:
        raise
    except Exception as e:  # malformed files and unreachable hub names are bad input
        raise CliError(f"cannot read {what} {spec}: {_one_line(e.__cause__ or e)}") from e
    finally:
        datasets_logger.setLevel(level)


def _model_source(spec: str) -> str:
    """The path or hub name of a model argument, checked: a ``.gguf`` file, a directory with
    a config.json, or a name that does not look like a path."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CliError(f"model {spec}: no such file")
        return str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(
                f"model {spec} has no config.json; pass a transformers model directory "
                "(config.json, weights and tokenizer, as save_pretrained writes) or a .gguf file"
            )
        return str(path)
    if path.exists():
        raise CliError(f"model {spec} is a file; pass a model directory or a .gguf file")
    if _looks_like_path(spec):
        raise CliError(f"model {spec}: no such directory")
    return spec


def _model_error(spec: str, error: Exception) -> CliError:
    """A one-line error for a model that does not load: a hub name that could not be
    fetched reads as a missing local directory too (the usual cause: a mistyped path)."""
    if not Path(spec).expanduser().exists():
        return CliError(
            f"model {spec}: no such directory, and no hub model of that name could be loaded "
            "(mistyped path, or no network)"
        )
    detail = _one_line(error)
    return CliError(f"cannot load model {spec}: {detail[:300]}{'...' if len(detail) > 300 else ''}")


def _ner_labels(*datasets_: Any) -> list[str] | None:
    """The sorted string tags of NER datasets (tokens + ner_tags), or None if not NER/strings."""
    import pyarrow.compute as pc

    from tov_datasets.formats import detect_format

    tags: set[Any] = set()
    for ds in datasets_:
        if detect_format(ds.column_names) != "ner":
            return None
        tags.update(pc.unique(pc.list_flatten(_table(ds).column("ner_tags"))).to_pylist())
    return sorted(tags) if all(isinstance(t, str) for t in tags) else None


def load_model(
    spec: str,
    *,
    data: Sequence[Any] = (),
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory, a ``.gguf`` file or a hub name, by
    `models.load_model` and `models.load_tokenizer`: a causal LM unless the config is a token
    classifier or ``data`` is NER (tokens + ner_tags) with string tags (then the label set
    comes from the data unless the model already knows every tag); EOS pads if the tokenizer
    has no pad token. On CUDA when there is one, unless ``device`` says otherwise."""
    import torch

    from tov_datasets import models

    source = _model_source(spec)
    labels = _ner_labels(*data) if data else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = models.load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = models.load_model(
            source, getattr(torch, dtype), labels=labels, default_task="causal_lm",
            device=device, trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:  # e.g. a directory without weights
        raise _model_error(spec, e) from e
    return model, tokenizer


def _value_kind(arrow_type: Any) -> str:
    """"string", "list of KIND", "number", "struct", ... of a pyarrow type."""
    import pyarrow as pa

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list of {_value_kind(arrow_type.value_type)}"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_struct(arrow_type):
        return "struct"
    return str(arrow_type)


# The value kinds each format column accepts.
_COLUMN_KINDS: dict[str, tuple[str, ...]] = {
    "text": ("string",),
    "prompt": ("string", "list of struct"), "completion": ("string", "list of struct"),
    "messages": ("list of struct",),
    "tokens": ("list of string",), "ner_tags": ("list of string", "list of number"),
    "input_ids": ("list of number",), "labels": ("list of number",),
}


def _check_columns(ds: Any, what: str, extra: Sequence[str] = ()) -> str:
    """The columns of one input format, of one value type, of the kind the format reads and
    without nulls (rows of another format), and ``extra``; returns the format's name."""
    from tov_datasets.formats import FORMATS, accepted_columns, detect_format

    try:
        name = detect_format(ds.column_names)
    except ValueError as e:  # its hint names the API's column_map
        raise CliError(
            f"{what}: cannot tell the input format from columns {sorted(ds.column_names)}; "
            f"accepted formats need columns: {accepted_columns()}; rename a column of the file"
        ) from e
    needed = FORMATS[name]
    for column in needed:
        if type(ds.features[column]).__name__ == "Json":  # datasets >= 5: mixed value types
            raise CliError(
                f"{what}: column {column!r} mixes value types (e.g. strings and numbers); "
                "every row needs the same type"
            )
        kind = _value_kind(ds.data.schema.field(column).type)
        allowed = _COLUMN_KINDS.get(column)
        if allowed is not None and kind not in allowed and kind != "null":
            raise CliError(
                f"{what}: column {column!r} holds {kind} values; the {name} format needs "
                f"{' or '.join(allowed)}"
            )
        nulls = ds.data.column(column).null_count
        if nulls:
            raise CliError(
                f"{what}: {nulls} of {len(ds)} rows have no {column!r} (null); every row needs "
                f"{' + '.join(needed)} (are several formats mixed in one file?)"
            )
    missing = [c for c in extra if c not in ds.column_names]
    if missing:
        raise CliError(f"{what} has no column {missing[0]!r}; columns: {ds.column_names}")
    return name


def _check_same_format(pool_format: str, val_format: str) -> None:
    """A validation set in another format than the pool is allowed, but rarely meant: say so."""
    if pool_format != val_format:
        log.warning("the pool is in the %s format but --val in the %s format; the scores "
                    "compare losses computed differently (pass the same format to both)",
                    pool_format, val_format)


# ------------------------------------------------------------------------ outputs
def _table(ds: Any) -> Any:
    """A ``datasets.Dataset``'s rows (through any indices mapping) as a pyarrow Table."""
    return ds.with_format("arrow")[:]


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _parquet_out(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.suffix != ".parquet":
        raise CliError(f"--out {spec}: the output is Parquet; name it *.parquet")
    if path.is_dir():
        raise CliError(f"--out {spec} is a directory; the output is a Parquet file")
    _check_writable(path, "--out")
    return path


def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing folder above ``path`` is a writable directory."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{flag} {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CliError(f"{flag} {path}: cannot write in {parent} (permission denied)")
            return


def _local_path(spec: str | None) -> Path | None:
    """The resolved path of an input given as a local file or directory (None: a hub name,
    or not given)."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return path.resolve() if path.exists() else None


def _overlaps(a: Path, b: Path) -> bool:
    """Whether one of two resolved paths is, contains or lies inside the other."""
    return a == b or a in b.parents or b in a.parents or (
        a.exists() and b.exists() and os.path.samefile(a, b))


def _flag_values(args: argparse.Namespace, flags: Sequence[str]) -> list[tuple[str, str]]:
    """(option as shown, value) of each given option among ``flags``; a {name: value}
    option (``--val NAME=PATH``) gives one pair per name, shown as ``--val NAME``."""
    found = []
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if isinstance(value, Mapping):
            found += [(f"{flag} {name}", spec) for name, spec in value.items()]
        elif value is not None:
            found.append((flag, value))
    return found


def _check_outputs_apart(args: argparse.Namespace, outputs: Sequence[str],
                         inputs: Sequence[str]) -> None:
    """Refuse, before any work, an output (option names in ``outputs``) that is, contains or
    lies inside an input (``inputs``) or another output: writing it could destroy the input."""
    outs = [(f, Path(v).expanduser().resolve()) for f, v in _flag_values(args, outputs)]
    ins = [(f, p) for f, v in _flag_values(args, inputs) if (p := _local_path(v)) is not None]
    for i, (out_flag, out) in enumerate(outs):
        for in_flag, path in ins + outs[i + 1:]:
            if _overlaps(out, path):
                how = ("is" if out == path else "contains" if out in path.parents
                       else "lies inside")
                raise CliError(
                    f"{out_flag} {out} {how} {in_flag} {path}; writing there could destroy "
                    f"it: pass another {out_flag}"
                )


def _check_out_dir(out: Path) -> None:
    """``tov select --out``: a new or empty directory, or one holding a tov select run
    (resumed; another run's arguments are refused by the trajectory manifest)."""
    from tov_datasets.storage import LOCK_NAME, is_temp_name

    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; pass a directory")
    _check_writable(out, "--out")
    if not out.is_dir() or (out / TRAJECTORY_DIR).is_dir() or (out / RUN_FILE).is_file():
        return
    other = sorted(p.name for p in out.iterdir()
                   if p.name != LOCK_NAME and not is_temp_name(p.name))
    if other:
        raise CliError(
            f"--out {out} holds files that are not a tov select run ({', '.join(other[:3])}); "
            "pass a new or empty directory"
        )


_POSITIVE_OPTIONS = ("bins", "batch_size", "max_length", "epochs", "base_size", "lora_rank")


def _split_named(value: str) -> tuple[str | None, str]:
    """``NAME=VALUE`` -> (NAME, VALUE); anything else, or an existing path that holds a
    ``=``, -> (None, value)."""
    name, sep, rest = value.partition("=")
    if not sep or Path(value).expanduser().exists():
        return None, value
    return name, rest


def _named_specs(flag: str, values: Sequence[str], what: str) -> str | dict[str, str]:
    """A repeatable input option: one plain ``PATH`` as given, or {target name: PATH} from
    ``NAME=PATH`` each (names checked, paths that look like paths must exist)."""
    from tov_datasets.scorer import check_target_names

    specs = [_split_named(v) for v in values]
    if len(specs) == 1 and specs[0][0] is None:
        return specs[0][1]
    if any(name is None for name, _ in specs):
        raise CliError(f"{flag}: name each of several {what}: {flag} NAME=PATH {flag} "
                       "NAME=PATH ...")
    try:
        check_target_names([name for name, _ in specs], flag)
    except ValueError as e:
        raise CliError(str(e)) from e
    for name, spec in specs:
        if not spec:
            raise CliError(f"{flag} {name}=: give the path after '=' (NAME=PATH)")
        if _looks_like_path(spec) and not Path(spec).expanduser().exists():
            raise CliError(f"{flag} {name}={spec}: no such file or directory")
    return dict(specs)


def _parse_targets(args: argparse.Namespace) -> None:
    """``tov select``'s repeatable ``--val`` and ``--n``, checked before anything loads:
    ``args.val`` becomes one spec (a plain ``--val PATH``) or {target name: spec}
    (``--val NAME=PATH`` each); ``args.n`` an int (``--n N``; repeated, the last counts)
    or {target name: n} (``--n NAME=N`` per target; a plain ``--n N`` gives the rest)."""
    args.val = _named_specs("--val", args.val, "validation sets")
    default, per_target = None, {}
    for value in args.n:
        name, count = _split_named(value)
        try:
            number = int(count)
        except ValueError as e:
            raise CliError(f"--n {value}: give a whole number N, or NAME=N for one "
                           "target") from e
        if name is None:
            default = number  # a plain --n: the last one given counts, as for any option
        elif name in per_target:
            raise CliError(f"--n {name}=N is given twice; give one --n NAME=N per target")
        else:
            per_target[name] = number
    if not per_target:
        args.n = default
        return
    if not isinstance(args.val, Mapping):
        raise CliError("--n NAME=N names targets, but --val gives one unnamed validation "
                       "set; pass --n N (or name the validation sets, --val NAME=PATH)")
    unknown = sorted(set(per_target) - set(args.val))
    missing = [] if default is not None else sorted(set(args.val) - set(per_target))
    if unknown or missing:
        raise CliError(
            f"--n names {sorted(per_target)} but --val names {sorted(args.val)}: give --n "
            "NAME=N for each --val NAME, or --n N for the targets not named"
        )
    args.n = {name: per_target.get(name, default) for name in args.val}


def _parse_score_targets(args: argparse.Namespace) -> None:
    """``tov score``'s repeatable ``--val`` and ``--val-adapter``, checked before anything
    loads: each one spec (a plain PATH or DIR) or {target name: spec} (`_named_specs`)."""
    if args.val is not None:
        args.val = _named_specs("--val", args.val, "validation sets")
    if args.val_adapter is not None:
        args.val_adapter = _named_specs("--val-adapter", args.val_adapter, "adapters")


def _n_items(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(``--n`` as shown, value) per target: [("--n=12", 12)], or ("--n a=12", 12) each."""
    if isinstance(args.n, Mapping):
        return [(f"--n {name}={n}", n) for name, n in args.n.items()]
    return [(f"--n={args.n}", args.n)]


def _check_numbers(args: argparse.Namespace) -> None:
    """Numeric options in range, before anything is loaded."""
    for name in _POSITIVE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')}={value} must be >= 1")
    if getattr(args, "n", None) is not None:
        for shown, n in _n_items(args):
            if n < 1:
                raise CliError(f"{shown} must be >= 1")
    fraction = getattr(args, "random_fraction", None)
    if fraction is not None and not 0 <= fraction <= 1:
        raise CliError(f"--random-fraction={fraction} must be in [0, 1]")
    holdout = getattr(args, "holdout_fraction", None)
    if holdout is not None and not 0 <= holdout < 1:
        raise CliError(f"--holdout-fraction={holdout} must be in [0, 1) (0: no held-out check)")
    threshold = getattr(args, "scored_only_above", None)
    if threshold is not None and not 0 <= threshold <= 1:
        raise CliError(f"--scored-only-above={threshold} must be in [0, 1] (an AUC)")
    if threshold is not None and not holdout:
        raise CliError(f"--scored-only-above={threshold} reads the held-out check: pass "
                       "--holdout-fraction > 0 with it (e.g. --holdout-fraction 0.2)")
    lr = getattr(args, "lr", None)
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise CliError(f"--lr={lr} must be > 0 and finite")


def _check_device(spec: str | None) -> None:
    """``--device`` names a device torch can use here (tried with an empty tensor)."""
    if spec is None:
        return
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise CliError(f"--device {spec}: unknown device; pass e.g. cpu, cuda or cuda:0") from e
    try:
        torch.empty(0, device=device)
    except Exception as e:  # CUDA on a CPU-only build or without a GPU, a missing index, ...
        raise CliError(
            f"--device {spec} is not usable here ({_one_line(e)}); pass e.g. cpu or cuda:0"
        ) from e


def _check_pool_size(args: argparse.Namespace, rows: int, what: str = "the pool's") -> None:
    """Selection options that must fit the pool's ``rows`` (after loading it); the default
    ``--bins`` becomes at most ``rows``."""
    from tov_datasets.select import random_count

    if args.bins is None:
        args.bins = min(DEFAULT_BINS, rows)
    elif args.bins > rows:
        raise CliError(f"--bins={args.bins} exceeds {what} {rows} rows; use at most {rows}")
    base_size = min(getattr(args, "base_size", rows), rows)
    for shown, n in _n_items(args):
        if n > rows:
            raise CliError(f"{shown} exceeds {what} {rows} rows; use at most {rows}")
        n_random = random_count(n, args.random_fraction)
        if n_random > base_size:
            raise CliError(
                f"the random part ({n_random} of {shown}) is drawn from the base set of "
                f"{base_size} rows (--base-size); raise --base-size or lower --n or "
                "--random-fraction"
            )


def progress_factory(quiet: bool) -> Callable[..., Any] | None:
    """tqdm bars for the library's ``progress=`` hooks (rate and ETA), or None if quiet."""
    if quiet:
        return None
    from tqdm import tqdm

    def factory(*, total: int, desc: str) -> Any:
        unit = "sample" if desc.startswith("score") else "step"
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    return factory


# ------------------------------------------------------------------------ tov select
def _lora(model: Any, rank: int | None) -> Any:
    from tov_datasets.models import default_lora_config, infer_task

    return None if rank is None else default_lora_config(infer_task(model), rank, model=model)


def _lora_rank(model: Any, rank: int | None) -> int:
    """The LoRA rank a run uses: ``--lora-rank``, else `models.default_lora_rank`."""
    from tov_datasets.models import default_lora_rank

    return rank if rank is not None else default_lora_rank(model)


def _with_pool_digest(table: Any, digest: str) -> Any:
    """A scores table carrying the content digest of the pool it scores (schema metadata)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          POOL_DIGEST_KEY: digest.encode()})


def _scores_table(result: Any, pool_digest: str) -> Any:
    """result.scores with the base-set membership column (what select-only needs) and the
    pool's digest."""
    import pyarrow as pa

    table = _table(result.scores)
    in_base = np.zeros(table.num_rows, dtype=bool)
    in_base[result.base_indices] = True
    return _with_pool_digest(table.append_column(IN_BASE, pa.array(in_base)), pool_digest)


def _trajectory(args: argparse.Namespace, flag: str, shown: Path, state_dir: Path | None,
                model: Any, tokenizer: Any, pool: Any, val: Any, **selection: Any) -> Any:
    """`tov_select` with the trajectory options of ``args``, resuming from ``state_dir``; a
    state directory of another run is reported in CLI terms (``flag`` ``shown``)."""
    from tov_datasets.storage import ManifestMismatchError, describe_changes
    from tov_datasets.trajectory import tov_select

    try:
        return tov_select(
            model, tokenizer, pool, val, base_size=min(args.base_size, len(pool)),
            epochs=args.epochs, lr=args.lr, variant=args.variant,
            val_optimizer=args.val_optimizer, holdout_fraction=args.holdout_fraction,
            lora=_lora(model, args.lora_rank), transform=args.transform,
            batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
            output_dir=state_dir, progress=progress_factory(args.quiet), **selection,
        )
    except ManifestMismatchError as e:
        if not e.changes:
            raise CliError(f"{flag} {shown}: {_one_line(e).replace('output_dir', flag)}") from e
        raise CliError(
            f"{flag} {shown} holds a run made with other options "
            f"({describe_changes(e.changes, OPTION_NAMES)}); rerun with the same options to "
            f"resume, or pass another {flag}"
        ) from e
    except ValueError as e:  # tov_select's checks of the target names and label strata
        if str(e).startswith(STRATA_ARG):
            raise _strata_error(e, args.stratify_column) from e
        if _too_few_rows(e):  # the final selection, after the trajectory
            column = getattr(args, "stratify_column", None)
            text = str(_strata_error(e, column)) if column else _in_flags(e)
            raise CliError(f"{text}; the trajectory is kept in {flag} {shown}: rerun with a "
                           "smaller --n or --random-fraction to select again without "
                           "retraining") from e
        if str(e).startswith("holdout_fraction="):
            raise CliError(_one_line(e).replace("holdout_fraction", "--holdout-fraction")) from e
        if not str(e).startswith("val: "):
            raise
        raise CliError(f"--{_one_line(e)}") from e


def _holdout_summary(result: Any, num_pool_rows: int, threshold: float | None = None
                     ) -> dict[str, str]:
    """{"held-out check[ (NAME)]": one line} per target of a run with --holdout-fraction
    (empty without): the AUC of its held-out validation rows against the pool, and with
    --scored-only-above (``threshold``) what it decided for the target's pick."""
    if result.holdout is None:
        return {}
    checks = result.holdout if isinstance(result.holdout, Mapping) else {None: result.holdout}
    return {
        "held-out check" + ("" if name is None else f" ({name})"):
            f"AUC {check.auc:.3f} of {len(check.rows)} validation rows kept out of the val "
            f"updates against {num_pool_rows} pool rows (1: all above the pool, 0.5: the "
            "score does not tell the target from the pool)" + _switch_note(check.auc, threshold)
        for name, check in checks.items()
    }


def _switch_note(auc: float, threshold: float | None) -> str:
    """What --scored-only-above decided for a target whose held-out check read ``auc``
    (empty without the option)."""
    if threshold is None:
        return ""
    if auc >= threshold:
        return f"; >= --scored-only-above {threshold}: the whole pick by score"
    return f"; < --scored-only-above {threshold}: the pick keeps its random part"


def _log_holdout(result: Any, num_pool_rows: int, threshold: float | None = None) -> None:
    """Log each line of `_holdout_summary` (nothing without --holdout-fraction)."""
    for key, line in _holdout_summary(result, num_pool_rows, threshold).items():
        log.info("%s: %s", key, line)


STRATA_ARG = "stratify_by_column="


# How select's and select-only's random part is drawn, for a library message about it.
RANDOM_FROM_BASE = (("of random_pool", "of the base set"),
                    ("random_pool has only", "the base set has only"),
                    ("a larger random_pool", "a larger --base-size"))


def _too_few_rows(e: ValueError) -> bool:
    """Whether a `select_indices` message says a part of the selection found too few rows."""
    return any(words in str(e) for words in ("part needs", "selection needs"))


def _in_flags(e: ValueError, random_pool: tuple[tuple[str, str], ...] = RANDOM_FROM_BASE
              ) -> str:
    """A library message in CLI terms (``random_pool``: the library's words about the random
    part's pool and the CLI's for them)."""
    text = _one_line(e)
    for arg, flag in (*random_pool, ("random_fraction", "--random-fraction"),
                      ("base_size", "--base-size"), ("lower n", "lower --n"),
                      ("a smaller n", "a smaller --n"), ("stratify_like", "--val"),
                      ("weights for more strata", "a --val with more of the pool's labels")):
        text = text.replace(arg, flag)
    return text


def _strata_error(e: ValueError, column: str,
                  random_pool: tuple[tuple[str, str], ...] = RANDOM_FROM_BASE) -> CliError:
    """A library message about the label strata of ``column`` in CLI terms."""
    text = _in_flags(e, random_pool).removeprefix(f"{STRATA_ARG}{column!r}: ")
    return CliError(f"--stratify-column {column}: {text}")


def _preview_text(row: Mapping[str, Any], data_format: str) -> str:
    """What a person reads of one pool row in the report."""
    if data_format == "text":
        return str(row["text"])
    if data_format == "prompt_completion":
        return f"{row['prompt']} -> {row['completion']}"
    if data_format == "messages":
        return " | ".join(f"{m.get('role')}: {m.get('content')}" for m in row["messages"])
    if data_format == "ner":
        return " ".join(map(str, row["tokens"]))
    return f"{len(row['input_ids'])} token ids"


def _inputs_record(args: argparse.Namespace, names: Sequence[str], **digests: Any
                   ) -> dict[str, Any]:
    """{option: resolved path (or hub name)} of the inputs ({name: ...} for named targets),
    plus content digests."""
    resolved = lambda spec: str(path) if (path := _local_path(spec)) is not None else spec
    record: dict[str, Any] = {}
    for name in names:
        spec = getattr(args, name)
        if isinstance(spec, Mapping):
            record[name] = {target: resolved(v) for target, v in spec.items()}
        elif spec is not None:
            record[name] = resolved(spec)
    return {**record, **digests}


def _validation_sets(args: argparse.Namespace, pool_format: str) -> Any:
    """--val loaded and checked: one Dataset, or {target name: Dataset}."""
    specs = args.val if isinstance(args.val, Mapping) else {None: args.val}
    loaded = {}
    for name, spec in specs.items():
        what = "val" if name is None else f"--val {name}"
        loaded[name] = load_data(spec, what)
        _check_same_format(pool_format, _check_columns(loaded[name], what))
    return loaded if isinstance(args.val, Mapping) else loaded[None]


def cmd_select(args: argparse.Namespace) -> None:
    """Score the pool with ToV along a short trajectory, select n rows (named targets: n
    rows per target, and their union), write the report."""
    from tov_datasets.report import Stages
    from tov_datasets.storage import locked, remove_temp_files

    out = Path(args.out).expanduser()
    _check_outputs_apart(args, ["--out"], ["--pool", "--val", "--model"])
    _check_out_dir(out)
    _check_device(args.device)
    stages = Stages()
    with stages("load data"):
        pool = load_data(args.pool, "pool")
        group = [args.group_column] if args.group_column else []
        pool_format = _check_columns(pool, "pool", group)
        val = _validation_sets(args, pool_format)
        _check_pool_size(args, len(pool))
    with stages("load model"):
        vals = list(val.values()) if isinstance(val, Mapping) else [val]
        model, tokenizer = load_model(
            args.model, data=(pool, *vals), trust_remote_code=args.trust_remote_code,
            dtype=args.dtype, device=args.device,
        )
    with locked(out):  # one tov select per directory; so temp files here are a killed run's
        remove_temp_files(out, recursive=False)
        _select(args, out, pool, pool_format, val, model, tokenizer, stages)


def _has_finished_steps(state_dir: Path) -> bool:
    """Whether a trajectory directory records finished steps (a rerun resumes from them)."""
    from tov_datasets.storage import MANIFEST_NAME

    try:
        return bool(json.loads((state_dir / MANIFEST_NAME).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _chosen(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, chosen by score) of a selection table: int64 (n,), bool (n,)."""
    from tov_datasets.select import FROM_SCORE_COLUMN
    from tov_datasets.trajectory import ROW

    return (table.column(ROW).to_numpy(),
            table.column(FROM_SCORE_COLUMN).to_numpy(zero_copy_only=False))


def _select_counts(args: argparse.Namespace, pool: Any, val: Any, model: Any, result: Any,
                   chosen: Mapping[str | None, tuple[np.ndarray, np.ndarray]], resumed: bool,
                   ) -> dict[str, Any]:
    """The summary of a ``tov select`` run (report.md, run.json); chosen: {target name
    (None: one validation set): (selected rows, chosen by score)}."""
    named = isinstance(val, Mapping)
    counts: dict[str, Any] = {"pool rows": len(pool)}
    if named:
        counts.update({f"validation rows ({name})": len(ds) for name, ds in val.items()})
    else:
        counts["validation rows"] = len(val)
    counts.update({"base set rows": len(result.base_indices), "epochs": len(result.history),
                   "LoRA rank": _lora_rank(model, args.lora_rank)})
    for name, (rows, from_score) in chosen.items():
        target = "" if name is None else f" for {name}"
        counts.update({f"selected{target} (n)": len(rows),
                       f"selected{target} by score": int(from_score.sum()),
                       f"selected{target} at random": int((~from_score).sum())})
    if named:
        counts["selected by any target (union)"] = len(result.selected)
    counts.update({"random fraction": args.random_fraction, "length bins": args.bins})
    counts.update(_holdout_summary(result, len(pool), args.scored_only_above))
    if args.stratify_column:
        counts["label strata"] = (f"{args.stratify_column}: both parts in the validation "
                                  "set's label shares")
    counts["resumed"] = "yes" if resumed else "no"
    return counts


def _select(args: argparse.Namespace, out: Path, pool: Any, pool_format: str, val: Any,
            model: Any, tokenizer: Any, stages: Any) -> None:
    """The trajectory (resumed from ``out``), then the outputs, ``run.json`` last."""
    from tov_datasets.report import TRAJECTORY_STAGES, device_name, write_run_json
    from tov_datasets.storage import dataset_digest, directory_bytes, sha256_file, write_parquet

    resumed = _has_finished_steps(out / TRAJECTORY_DIR)
    result = _trajectory(args, "--out", out, out / TRAJECTORY_DIR, model, tokenizer, pool, val,
                         n=args.n, num_bins=args.bins, random_fraction=args.random_fraction,
                         scored_only_above=args.scored_only_above,
                         stratify_by_column=args.stratify_column)
    stages.add(result.timings, TRAJECTORY_STAGES)
    (out / RUN_FILE).unlink(missing_ok=True)  # from here on the directory is unfinished
    named = isinstance(val, Mapping)
    val_digest = ({name: dataset_digest(ds) for name, ds in val.items()} if named
                  else dataset_digest(val))
    inputs = _inputs_record(args, ("model", "pool", "val"), pool_sha256=dataset_digest(pool),
                            val_sha256=val_digest)
    files = {SELECTED_FILE: _table(result.selected)}
    files.update({TARGET_SELECTED_FILE.format(name): _table(selection)
                  for name, selection in (result.per_target or {}).items()})
    with stages("write outputs"):
        scores = _scores_table(result, inputs["pool_sha256"])
        for name, table in files.items():
            write_parquet(out / name, table)
        write_parquet(out / SCORES_FILE, scores)
    if named:
        chosen = {name: _chosen(files[TARGET_SELECTED_FILE.format(name)]) for name in val}
    else:
        chosen = {None: _chosen(files[SELECTED_FILE])}
    counts = _select_counts(args, pool, val, model, result, chosen, resumed)
    with stages("report"):
        _select_report(args, out, pool, pool_format, val, inputs, scores, chosen, result,
                       counts, stages)
    write_run_json(
        out / RUN_FILE, command="select", arguments=_arguments(args), inputs=inputs,
        timings=stages.seconds, trajectory_timings=result.timings, history=result.history,
        resumed=resumed, counts=counts, device=device_name(model),
        disk_bytes={"trajectory": result.disk_bytes, "total": directory_bytes(out)},
        sha256={name: sha256_file(out / name) for name in (*files, SCORES_FILE)},
    )
    _log_holdout(result, len(pool), args.scored_only_above)
    log.info("selected %d of %d rows -> %s", files[SELECTED_FILE].num_rows, len(pool),
             out / SELECTED_FILE)


def _select_report(args: argparse.Namespace, out: Path, pool: Any, pool_format: str, val: Any,
                   inputs: Mapping[str, Any], scores: Any,
                   chosen: Mapping[str | None, tuple[np.ndarray, np.ndarray]], result: Any,
                   counts: Mapping[str, Any], stages: Any) -> None:
    """report.md of a ``tov select`` run: inputs, counts, the ranking's ends, bins, plots;
    named targets: the overlap of their selections and a section per target.
    chosen: {target name (None: one validation set): (selected rows, chosen by score)}."""
    from tov_datasets.report import (
        example_rows,
        markdown_table,
        report_data,
        targets_report,
        write_report,
    )
    from tov_datasets.scorer import NUM_TOKENS, SCORE, score_column

    groups = np.asarray(pool[args.group_column]) if args.group_column else None
    named = isinstance(val, Mapping)
    vals = ([[f"--val {name}", inputs["val"][name], len(ds)] for name, ds in val.items()]
            if named else [["--val", inputs["val"], len(val)]])
    inputs_table = markdown_table(["input", "path or name", "rows"], [
        ["--model", inputs["model"], "-"], ["--pool", inputs["pool"], len(pool)], *vals])
    examples = {}
    for name, (rows, from_score) in chosen.items():
        column = SCORE if name is None else score_column(name)
        examples[name] = markdown_table(
            ["rank", "tov_row", column, "tokens", "selected", "text"],
            example_rows(scores.column(column).to_numpy(), scores.column(NUM_TOKENS).to_numpy(),
                         lambda row: _preview_text(pool[row], pool_format), rows, from_score))
    options = {"num_bins": args.bins, "groups": groups, "group_column": args.group_column}
    if not named:
        rows = chosen[None][0]
        write_report(out, report_data(
            f"ToV selection: {len(rows)} of {len(pool)} rows", scores, {"ToV": rows},
            counts=counts, timings=stages.seconds, sections={
                "Inputs": inputs_table, "Top and bottom of the ranking": examples[None]},
            **options,
        ))
        return
    write_report(out, targets_report(
        f"ToV selection for {len(chosen)} targets: {counts['selected by any target (union)']} "
        f"of {len(pool)} rows", scores, {name: rows for name, (rows, _) in chosen.items()},
        result.overlap["selected"], from_score=result.overlap["from_score"], counts=counts,
        timings=stages.seconds, sections={"Inputs": inputs_table},
        target_sections={name: {"Top and bottom of the ranking": table}
                         for name, table in examples.items()},
        **options,
    ))


# ------------------------------------------------------------------------ tov score
def _adapter_scorer(args: argparse.Namespace, model: Any, tokenizer: Any) -> Any:
    """A ToVScorer over the saved adapters; unreadable or unfitting ones are bad input, and
    so are adapters without safetensors weights (peft would unpickle adapter_model.bin)."""
    from safetensors import SafetensorError

    from tov_datasets.scorer import ToVScorer
    from tov_datasets.storage import ADAPTER_WEIGHTS, sha256_file

    targets = _flag_values(args, ["--val-adapter"])
    for adapter in (args.base_adapter, *(spec for _, spec in targets)):
        if not (Path(adapter) / ADAPTER_WEIGHTS).is_file():
            raise CliError(
                f"adapter {adapter} has no {ADAPTER_WEIGHTS}; tov loads adapters only as "
                "safetensors (peft: save_pretrained(..., safe_serialization=True))"
            )
    base = sha256_file(Path(args.base_adapter) / ADAPTER_WEIGHTS)
    for flag, adapter in targets:
        if sha256_file(Path(adapter) / ADAPTER_WEIGHTS) == base:
            log.warning("--base-adapter and %s hold the same weights: every score will be 0 "
                        "(pass the adapter trained on the validation set as --val-adapter)",
                        flag)
    try:
        return ToVScorer(
            model, tokenizer, base_adapter=args.base_adapter, val_adapter=args.val_adapter,
            transform=args.transform, max_length=args.max_length, batch_size=args.batch_size,
        )
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        detail = _one_line(e)
        shown = " and ".join([args.base_adapter, *(spec for _, spec in targets)])
        raise CliError(
            f"cannot load adapters {shown} into "
            f"{args.model}: {detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from e


def cmd_score(args: argparse.Namespace) -> None:
    """Scores only: with saved adapters (ToVScorer), or along the ToV trajectory (--val; named
    targets: each target's mean and per-epoch columns, as in tov select's scores.parquet)."""
    import pyarrow as pa

    from tov_datasets.storage import dataset_digest, write_parquet

    out = _parquet_out(args.out)
    _check_outputs_apart(args, ["--out", "--state-dir"],
                         ["--pool", "--val", "--model", "--base-adapter", "--val-adapter"])
    adapters = (args.base_adapter, args.val_adapter)
    if (args.val is None) == (None in adapters):
        raise CliError("pass either --base-adapter and --val-adapter, or --val (not both)")
    if args.state_dir is not None and args.val is None:
        raise CliError("--state-dir goes with --val (the trajectory's resumable state)")
    _check_device(args.device)
    pool = load_data(args.pool, "pool")
    pool_format = _check_columns(pool, "pool")
    val = _validation_sets(args, pool_format) if args.val is not None else None
    if val is None:
        for _, adapter in _flag_values(args, ["--base-adapter", "--val-adapter"]):
            if not Path(adapter).is_dir():
                raise CliError(f"adapter {adapter}: no such directory")
    vals = [] if val is None else list(val.values()) if isinstance(val, Mapping) else [val]
    model, tokenizer = load_model(
        args.model, data=(pool, *vals), trust_remote_code=args.trust_remote_code,
        dtype=args.dtype, device=args.device,
    )
    digest = dataset_digest(pool)
    if val is None:
        from tov_datasets.trajectory import ROW

        scorer = _adapter_scorer(args, model, tokenizer)
        scored = pool.map(scorer, batched=True, desc="score", keep_in_memory=True)
        table = _table(scored.select_columns(scorer.columns))
        table = table.add_column(0, ROW, pa.array(np.arange(len(pool), dtype=np.int64)))
        table = _with_pool_digest(table, digest)
    else:
        state = Path(args.state_dir).expanduser() if args.state_dir else None
        result = _trajectory(  # the selection (n=1, no random part) is discarded
            args, "--state-dir", state, state, model, tokenizer, pool, val, n=1,
            random_fraction=0.0,
        )
        table = _scores_table(result, digest)
        _log_holdout(result, len(pool))
    write_parquet(out, table)
    log.info("scored %d rows -> %s", len(pool), out)


# ------------------------------------------------------------------------ tov select-only
def _recorded_pool_digest(path: Path, scores: Any) -> str | None:
    """The digest of the pool a scores file scored: its metadata, else the run.json beside
    it (a `tov select` output directory); None if neither records one."""
    recorded = (scores.schema.metadata or {}).get(POOL_DIGEST_KEY)
    if recorded is not None:
        return recorded.decode()
    run = path.parent / RUN_FILE
    try:
        return json.loads(run.read_text())["inputs"]["pool_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_scored_pool(args: argparse.Namespace, path: Path, scores: Any, pool: Any) -> None:
    """``--pool`` is the pool the scores file scored: same content digest (when recorded),
    else at least the same number of rows."""
    from tov_datasets.storage import dataset_digest

    if len(pool) != scores.num_rows:
        raise CliError(
            f"--pool {args.pool} has {len(pool)} rows but {args.scores} scores "
            f"{scores.num_rows}; pass the pool that was scored"
        )
    recorded = _recorded_pool_digest(path, scores)
    if recorded is None:
        log.warning("%s records no pool digest; only the row count of --pool was checked",
                    args.scores)
    elif recorded != dataset_digest(pool):
        raise CliError(
            f"--pool {args.pool} is not the pool {args.scores} scored (same row count, other "
            "content); pass the pool that was scored"
        )


def _score_column(args: argparse.Namespace, columns: Sequence[str]) -> str:
    """The score column select-only selects by: ``tov_score``, or with ``--target NAME``
    (a scores file of several targets) ``tov_score_NAME``."""
    from tov_datasets.scorer import SCORE, score_column

    targets = [c.removeprefix(f"{SCORE}_") for c in columns
               if c.startswith(f"{SCORE}_") and "_epoch_" not in c]
    if args.target is None:
        if SCORE not in columns and targets:
            raise CliError(f"--scores {args.scores} holds the scores of targets {targets}; "
                           "pass --target NAME")
        return SCORE
    if score_column(args.target) not in columns:
        raise CliError(f"--target {args.target}: {args.scores} has no column "
                       f"{score_column(args.target)!r}; its targets: {targets or 'none'}")
    return score_column(args.target)


STRATA_COLUMN = "tov_stratum"  # select-only: the --stratify-column labels beside the scores


def _renamed(data: Any, column: str, name: str) -> Any:
    """``data`` with ``column`` renamed ``name``; a missing column is a CliError (--val)."""
    if column not in data.column_names:
        raise CliError(f"--stratify-column {column}: --val has no such column; its columns: "
                       f"{data.column_names}")
    return data.select_columns([column]).rename_column(column, name)


def cmd_select_only(args: argparse.Namespace) -> None:
    """Re-select from a scores file: the score rows, or with --pool the pool rows."""
    import datasets

    from tov_datasets.select import random_count, select_by_score
    from tov_datasets.storage import read_parquet, write_parquet
    from tov_datasets.trajectory import ROW

    out = _parquet_out(args.out)
    _check_outputs_apart(args, ["--out"], ["--scores", "--pool", "--val"])
    if args.stratify_column and not args.pool:
        raise CliError("--stratify-column needs --pool: the pool that was scored holds the "
                       "labels")
    if args.val and not args.stratify_column:
        raise CliError("--val weighs the labels of --stratify-column; pass both, or neither")
    path = Path(args.scores).expanduser()
    if not path.is_file():
        raise CliError(f"scores {args.scores}: no such file")
    try:
        scores = read_parquet(path)
    except Exception as e:
        raise CliError(f"cannot read scores {args.scores}: {_one_line(e)}") from e
    _check_pool_size(args, scores.num_rows, f"{args.scores}'s")
    pool = None
    if args.pool:
        pool = load_data(args.pool, "pool")
        _check_scored_pool(args, path, scores, pool)
    score = _score_column(args, scores.column_names)
    random_pool = None
    if IN_BASE in scores.column_names and not args.random_from_all:
        random_pool = np.flatnonzero(scores.column(IN_BASE).to_numpy())
    strata: dict[str, Any] = {}
    if args.stratify_column:
        if args.stratify_column not in pool.column_names:
            raise CliError(f"--stratify-column {args.stratify_column}: --pool {args.pool} has "
                           f"no such column; its columns: {pool.column_names}")
        labels = pool.select_columns([args.stratify_column]).select(
            scores.column(ROW).to_numpy())
        scores = scores.append_column(STRATA_COLUMN, _table(labels).column(0))
        strata = {"stratify_by_column": STRATA_COLUMN, "stratify_like": None if not args.val
                  else _renamed(load_data(args.val, "val"), args.stratify_column,
                                STRATA_COLUMN)}
    try:
        chosen = _table(select_by_score(
            datasets.Dataset(scores), args.n, score_column=score, num_bins=args.bins,
            random_fraction=args.random_fraction, random_pool=random_pool, seed=args.seed,
            mark_from_score=True, **strata,
        ))
        if strata:
            chosen = chosen.drop_columns([STRATA_COLUMN])
    except ValueError as e:
        if strata and (str(e).startswith(STRATA_ARG) or _too_few_rows(e)):
            drawn_from = ((("of random_pool", f"of the base set ({IN_BASE})"),
                           ("a larger random_pool", "--random-from-all"))
                          if random_pool is not None else
                          (("of random_pool ", ""), ("a larger random_pool, ", "")))
            raise _strata_error(ValueError(str(e).replace(STRATA_COLUMN, args.stratify_column)),
                                args.stratify_column, drawn_from) from e
        if random_pool is None or "random_pool" not in str(e):
            raise
        raise CliError(
            f"the random part ({random_count(args.n, args.random_fraction)} rows) is drawn "
            f"from the {random_pool.size} base-set rows ({IN_BASE}) not chosen by score, and "
            "too few of them have tokens; pass --random-from-all, or a smaller --n or "
            "--random-fraction"
        ) from e
    if pool is not None:
        rows = _table(pool.select(chosen.column(ROW).to_numpy()))
        for name in chosen.column_names:
            if name not in rows.column_names:
                rows = rows.append_column(name, chosen.column(name))
        chosen = rows
    write_parquet(out, chosen)
    log.info("selected %d of %d rows -> %s", chosen.num_rows, scores.num_rows, out)


# ------------------------------------------------------------------------ tov demo
def cmd_demo(args: argparse.Namespace) -> None:
    """The offline demo: ToV vs random selection with SmolLM2 (tweets among Wikipedia and
    BBC News text, or a Wikipedia topic among the others)."""
    from tov_datasets import demo

    config = demo.config_for(args.small, args.topic, args.seed)
    out = Path(args.out or ("tov-demo-small" if args.small else "tov-demo")).expanduser()
    if args.gate:
        demo.run_gate(config, out, progress=progress_factory(args.quiet))
    else:
        demo.run(config, out, progress=progress_factory(args.quiet))


# ------------------------------------------------------------------------ parser
def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="local model directory, .gguf file or hub name")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the model's repository (off by default)")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="model weights dtype")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--transform", choices=("identity", "abs", "relu"), default="identity",
                   help="F applied to each token's log-prob delta (default identity: the "
                   "README's chat_labels_v2; abs for token classification: ner_coarse_v8/v9)")
    p.add_argument("--max-length", type=int,
                   help="truncate samples to this many tokens (default: the model's maximum)")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch size")


def _add_trajectory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-size", type=int, default=4096,
                   help="rows of the random base set U; at most the pool's rows")
    p.add_argument("--epochs", type=int, help=(
        "trajectory epochs L (default: round(16384 / base set rows), clamped to [1, 8]: the "
        "paper's trajectories are a few epochs; more on a small pool average the scores over "
        "near-identical adapters at the cost of one training + scoring pass each)"))
    p.add_argument("--variant", choices=("interleaved", "parallel"), default="interleaved",
                   help="each epoch the base continues from the val adapter, or from itself")
    p.add_argument("--lora-rank", type=int, help=(
        "LoRA rank (default: scales with the model: the largest power of two <= hidden size "
        "/ 16, clamped to [8, 256]; e.g. 4096 -> 256, 576 -> 32, 384 -> 16)"))
    p.add_argument("--lr", type=float, default=2e-4, help="base learning rate (val: lr/10)")
    p.add_argument("--val-optimizer", choices=("fresh", "continue", "sgd"), default="fresh",
                   help="the val update: fresh (default) = a new AdamW each epoch (steps ~ "
                   "lr*sign(g)); sgd = normalised gradient steps lr*g/rms(g); "
                   "continue = AdamW from a copy of the base optimizer's moments")
    p.add_argument("--holdout-fraction", type=float, default=0.0, help=(
        "share of each validation set kept out of the val updates and scored with the pool: "
        "reports the AUC of those rows against the pool, i.e. whether the score recognises the "
        "target (0.5: it does not); the val updates see the rest only. Default 0: off"))
    p.add_argument("--seed", type=int, default=0, help="random seed")


def _add_selection_options(p: argparse.ArgumentParser, targets: bool = False) -> None:
    if targets:  # tov select: an n per named target, checked by _parse_targets
        p.add_argument("--n", action="append", required=True, metavar="N | NAME=N",
                       help="rows to select (named targets: for each); NAME=N: for the "
                            "--val NAME target")
    else:
        p.add_argument("--n", type=int, required=True, help="rows to select")
    p.add_argument("--bins", type=int, help=(
        f"equal-count length bins (default: {DEFAULT_BINS}, or the pool's rows if fewer)"))
    p.add_argument("--random-fraction", type=float, default=0.5,
                   help="share of n drawn uniformly at random")
    p.add_argument("--stratify-column", metavar="COLUMN", help=(
        "a column of scalar labels (e.g. a classification task's answer) in the pool and "
        "the validation set: the rows chosen by score and those drawn at random each keep "
        "each label's share of the validation set, top scores and a uniform draw within "
        "each label (select-only: of --val, else of the pool)"))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends an option's default to its help where it has one; the description and
    epilog are shown as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


SELECT_FILES = f"""files written in --out:
  {SELECTED_FILE}  the n selected pool rows, with tov_row (row in the pool), tov_score,
                    tov_num_tokens, tov_score_epoch_K and tov_from_score (True: chosen
                    by score, False: by the random part)
  {SCORES_FILE}    every pool row: tov_row, tov_score (mean over epochs; higher is
                    better), tov_num_tokens, tov_score_epoch_K, {IN_BASE}
  report.md         inputs, summary, scores per length bin, agreement between epochs,
                    top and bottom of the ranking, time per stage; with the plots
                    score_by_length_bin.png, epoch_agreement.png (and composition.png
                    with --group-column)
  {RUN_FILE}          options, inputs (resolved paths, content digests), versions,
                    timings, disk use; written last: without it the run is unfinished
  {TRAJECTORY_DIR}/       the resumable state (adapters and score shards of each epoch)

several targets (--val NAME=PATH each; --n N for each, or --n NAME=N each):
  {TARGET_SELECTED_FILE.format("NAME")}  each target's n rows, as {SELECTED_FILE} above
  {SELECTED_FILE}  their union (a row chosen by several targets once), with tov_targets
                    (the targets that chose it) and every target's scores
  {SCORES_FILE}    tov_score_NAME and tov_score_NAME_epoch_K per target
  report.md         the overlap of the targets' selections and a section per target
                    (plots: <plot>_NAME.png)
  e.g. tov select --model M --pool pool.jsonl --val code=code.jsonl --val math=math.jsonl
       --n code=300 --n math=100 --out run/"""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tov")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tov`` command (one declaration per subcommand and option,
    kept in one function so that the whole command line reads in one place)."""
    parser = argparse.ArgumentParser(
        prog="tov", description="Train-on-Validation data selection with forward passes.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = lambda name, text, epilog=None: commands.add_parser(
        name, help=text, description=text, epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    data_help = "JSONL, Parquet, Arrow file, save_to_disk directory or hub NAME[:SPLIT]"

    p = add("select", "score a pool with ToV and select n rows", SELECT_FILES)
    _add_model_options(p)
    p.add_argument("--pool", required=True, help=f"candidate samples: {data_help}")
    p.add_argument("--val", required=True, action="append", metavar="PATH | NAME=PATH",
                   help=f"validation samples: {data_help}; several targets: NAME=PATH each "
                        "(repeat --val; NAME: letters, digits, _ and -)")
    p.add_argument("--out", required=True, help="output directory (rerun to resume)")
    p.add_argument("--group-column", help="pool column for the composition table and plot")
    _add_trajectory_options(p)
    _add_selection_options(p, targets=True)
    p.add_argument("--scored-only-above", type=float, metavar="AUC", help=(
        "with --holdout-fraction: a target whose held-out check reads an AUC >= this takes "
        "its whole pick by score (no random part); below it, --random-fraction applies. "
        "Default: --random-fraction always"))
    p.set_defaults(func=cmd_select)

    p = add("score", "ToV scores only (no selection)",
            f"writes --out: {SCORES_FILE}'s columns (tov_row, tov_score, tov_num_tokens; with "
            f"--val also\nthe per-epoch scores and {IN_BASE}; the pool's content digest in "
            "its metadata);\n--state-dir: the trajectory (as in tov select). Several "
            "targets: --val NAME=PATH each\n(one trajectory; tov_score_NAME and "
            "tov_score_NAME_epoch_K per target, as in tov select),\nor saved adapters "
            "--val-adapter NAME=DIR each, scored in one forward: tov_score_NAME per\ntarget "
            "instead of tov_score.")
    _add_model_options(p)
    p.add_argument("--pool", required=True, help=f"samples to score: {data_help}")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--base-adapter", help="saved peft adapter directory of the base model")
    p.add_argument("--val-adapter", action="append", metavar="DIR | NAME=DIR",
                   help="saved peft adapter directory after val training; several targets: "
                        "NAME=DIR each (repeat; columns tov_score_NAME)")
    p.add_argument("--val", action="append", metavar="PATH | NAME=PATH",
                   help=f"instead of adapters: run the ToV trajectory ({data_help}); several "
                        "targets: NAME=PATH each (repeat; columns tov_score_NAME and "
                        "tov_score_NAME_epoch_K)")
    p.add_argument("--state-dir", help="with --val: directory to resume the trajectory from")
    _add_trajectory_options(p)
    p.set_defaults(func=cmd_score)

    p = add("select-only", "select again from an existing scores file")
    p.add_argument("--scores", required=True, help="scores.parquet of tov select or tov score")
    p.add_argument("--pool", help="the scored pool: output its rows instead of score rows")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--random-from-all", action="store_true",
                   help=f"draw the random part from all rows, not only those with {IN_BASE}")
    p.add_argument("--target", help="scores of several targets: select for this one (its "
                                    "column tov_score_TARGET)")
    p.add_argument("--val", help="with --stratify-column: the validation set whose label "
                                 f"shares the rows chosen by score keep ({data_help})")
    _add_selection_options(p)
    p.set_defaults(func=cmd_select_only)

    p = add("demo", "offline demo: ToV vs random, tweets among Wikipedia and BBC News text")
    p.add_argument("--topic", help="a Wikipedia topic (e.g. Mathematics) as the target "
                                   "instead of tweets, among the summaries of the other topics")
    p.add_argument("--small", action="store_true", help="a small, fast version (for CI)")
    p.add_argument("--out", help="output directory (default: ./tov-demo or ./tov-demo-small)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--gate", action="store_true",
                   help="instead of the demo, its premise gate: oracle vs random over 3 seeds "
                        "and fine-tune budgets (--out/gate.json)")
    p.set_defaults(func=cmd_demo)
    for sub in commands.choices.values():
        sub.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="no progress bars or logging")
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _configure_logging(quiet: bool) -> None:
    """The "tov" logger to stderr; --quiet: warnings only, and no library progress bars.
    Libraries' FutureWarnings (deprecations meant for developers) are not shown."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    if quiet:
        import datasets

        from tov_datasets import models

        datasets.disable_progress_bars()
        models.quiet_progress_bars()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s tov: %(message)s", "%H:%M:%S"))
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tov`` command; returns the exit code (2: bad input or any other failure,
    130: interrupted)."""
    from tov_datasets.storage import ManifestMismatchError, OutputInUseError

    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        if args.command == "select":
            _parse_targets(args)
        elif args.command == "score":
            _parse_score_targets(args)
        _check_numbers(args)
        args.func(args)
    except KeyboardInterrupt:
        resumable = args.command in ("select", "demo") or getattr(args, "state_dir", None)
        hint = "; rerun the same command to resume" if resumable else ""
        start = "" if args.quiet else "\n"  # after a progress bar's unfinished line
        print(f"{start}tov {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, ManifestMismatchError, OutputInUseError, FileNotFoundError,
            ValueError) as e:
        print(f"tov {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # anything else, still one line (TOV_DEBUG=1: the traceback)
        if os.environ.get("TOV_DEBUG"):
            raise
        print(f"tov {args.command}: error: {type(e).__name__}: {_one_line(e)[:500]} (set "
              "TOV_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
