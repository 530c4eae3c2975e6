"""The ``tov`` command: ``select``, ``score``, ``select-only`` and ``demo``.

Every command calls the library's public functions; each stage is one function. Outputs are
written atomically (``storage``); bad input (missing files, unknown columns, mismatched
arguments on a resumed run) ends with a one-line message and exit code 2.

``tov select`` holds a lock on its output directory, writes ``run.json`` last and removes it
before rewriting the other outputs: a directory without ``run.json`` holds an unfinished run
(rerun the command to finish it; finished trajectory steps are kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tov")

TRAJECTORY_DIR = "trajectory"  # tov_select's resumable state inside the output directory
SELECTED_FILE = "selected.parquet"
SCORES_FILE = "scores.parquet"
RUN_FILE = "run.json"
IN_BASE = "tov_in_base"  # scores.parquet: whether the row is in the base set U
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


def _model_source(spec: str) -> tuple[str, dict[str, Any]]:
    """(path or hub name, extra from_pretrained kwargs) of a model argument."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CliError(f"model {spec}: no such file")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    if _looks_like_path(spec):
        raise CliError(f"model {spec}: no such directory")
    return spec, {}


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
    """(model, tokenizer) from a local directory, a ``.gguf`` file or a hub name.

    A causal LM unless the config is a token classifier or ``data`` is NER (tokens +
    ner_tags) with string tags; then the label set comes from the data unless the model
    already knows every tag (a new classification head is initialised). The tokenizer gets
    its EOS as pad token if it has none.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    source, extra = _model_source(spec)
    extra["trust_remote_code"] = trust_remote_code
    try:
        config = AutoConfig.from_pretrained(source, **extra)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as e:
        raise CliError(f"cannot load model {spec}: {_one_line(e)}") from e
    architectures = getattr(config, "architectures", None) or []
    labels = _ner_labels(*data) if data else None
    kwargs: dict[str, Any] = {**extra, "dtype": getattr(torch, dtype)}
    if labels is not None or any(a.endswith("ForTokenClassification") for a in architectures):
        auto = AutoModelForTokenClassification
        known = set(getattr(config, "label2id", {}) or {})
        if labels is not None and not set(labels) <= known:
            kwargs.update(
                num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
            )
    else:
        auto = AutoModelForCausalLM
    model = auto.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _check_columns(ds: Any, what: str, extra: Sequence[str] = ()) -> None:
    """The columns of one input format, of one value type and without nulls (rows of
    another format), and ``extra``."""
    from tov_datasets.formats import FORMATS, detect_format

    needed = FORMATS[detect_format(ds.column_names)]
    for column in needed:
        if type(ds.features[column]).__name__ == "Json":  # datasets >= 5: mixed value types
            raise CliError(
                f"{what}: column {column!r} mixes value types (e.g. strings and numbers); "
                "every row needs the same type"
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
    return path


def _check_out_dir(out: Path) -> None:
    """``tov select --out``: a new or empty directory, or one holding a tov select run
    (resumed; another run's arguments are refused by the trajectory manifest)."""
    from tov_datasets.storage import LOCK_NAME, is_temp_name

    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; pass a directory")
    if not out.is_dir() or (out / TRAJECTORY_DIR).is_dir() or (out / RUN_FILE).is_file():
        return
    other = sorted(p.name for p in out.iterdir()
                   if p.name != LOCK_NAME and not is_temp_name(p.name))
    if other:
        raise CliError(
            f"--out {out} holds files that are not a tov select run ({', '.join(other[:3])}); "
            "pass a new or empty directory"
        )


_POSITIVE_OPTIONS = ("n", "bins", "batch_size", "max_length", "epochs", "base_size", "lora_rank")


def _check_numbers(args: argparse.Namespace) -> None:
    """Numeric options in range, before anything is loaded."""
    for name in _POSITIVE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')}={value} must be >= 1")
    fraction = getattr(args, "random_fraction", None)
    if fraction is not None and not 0 <= fraction <= 1:
        raise CliError(f"--random-fraction={fraction} must be in [0, 1]")
    lr = getattr(args, "lr", None)
    if lr is not None and not lr > 0:
        raise CliError(f"--lr={lr} must be > 0")


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
    from tov_datasets.training import default_lora_config, infer_task

    return None if rank is None else default_lora_config(infer_task(model), rank, model=model)


def _scores_table(result: Any) -> Any:
    """result.scores with the base-set membership column (what select-only needs)."""
    import pyarrow as pa

    table = _table(result.scores)
    in_base = np.zeros(table.num_rows, dtype=bool)
    in_base[result.base_indices] = True
    return table.append_column(IN_BASE, pa.array(in_base))


def cmd_select(args: argparse.Namespace) -> None:
    """Score the pool with ToV along a short trajectory, select n rows, write the report."""
    from tov_datasets.report import Stages
    from tov_datasets.storage import locked, remove_temp_files

    out = Path(args.out).expanduser()
    _check_out_dir(out)
    stages = Stages()
    with stages("load data"):
        pool, val = load_data(args.pool, "pool"), load_data(args.val, "val")
        group = [args.group_column] if args.group_column else []
        _check_columns(pool, "pool", group)
        _check_columns(val, "val")
    with stages("load model"):
        model, tokenizer = load_model(
            args.model, data=(pool, val), trust_remote_code=args.trust_remote_code,
            dtype=args.dtype, device=args.device,
        )
    with locked(out):  # one tov select per directory; so temp files here are a killed run's
        remove_temp_files(out, recursive=False)
        _select(args, out, pool, val, model, tokenizer, stages)


def _select(args: argparse.Namespace, out: Path, pool: Any, val: Any, model: Any,
            tokenizer: Any, stages: Any) -> None:
    """The trajectory (resumed from ``out``), then the outputs, ``run.json`` last."""
    from tov_datasets.report import (
        TRAJECTORY_STAGES,
        device_name,
        report_data,
        write_report,
        write_run_json,
    )
    from tov_datasets.storage import directory_bytes, sha256_file, write_parquet
    from tov_datasets.trajectory import ROW, tov_select

    resumed = (out / TRAJECTORY_DIR / "manifest.json").is_file()
    result = tov_select(
        model, tokenizer, pool, val, n=args.n, base_size=min(args.base_size, len(pool)),
        epochs=args.epochs, lr=args.lr, variant=args.variant, lora=_lora(model, args.lora_rank),
        transform=args.transform, num_bins=args.bins, random_fraction=args.random_fraction,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
        output_dir=out / TRAJECTORY_DIR, progress=progress_factory(args.quiet),
    )
    stages.add(result.timings, TRAJECTORY_STAGES)
    (out / RUN_FILE).unlink(missing_ok=True)  # from here on the directory is unfinished
    with stages("write outputs"):
        scores = _scores_table(result)
        write_parquet(out / SELECTED_FILE, _table(result.selected))
        write_parquet(out / SCORES_FILE, scores)
    selected = _table(result.selected).column(ROW).to_numpy()
    counts = {
        "pool rows": len(pool), "validation rows": len(val), "base set rows": len(
            result.base_indices), "epochs": len(result.history), "selected (n)": len(selected),
        "random fraction": args.random_fraction, "length bins": args.bins,
        "resumed": "yes" if resumed else "no",
    }
    with stages("report"):
        groups = np.asarray(pool[args.group_column]) if args.group_column else None
        write_report(out, report_data(
            f"ToV selection: {len(selected)} of {len(pool)} rows", scores, {"ToV": selected},
            num_bins=args.bins, groups=groups, group_column=args.group_column, counts=counts,
            timings=stages.seconds,
        ))
    write_run_json(
        out / RUN_FILE, command="select", arguments=_arguments(args), timings=stages.seconds,
        trajectory_timings=result.timings, history=result.history, resumed=resumed,
        counts=counts, device=device_name(model),
        disk_bytes={"trajectory": result.disk_bytes, "total": directory_bytes(out)},
        sha256={name: sha256_file(out / name) for name in (SELECTED_FILE, SCORES_FILE)},
    )
    log.info("selected %d of %d rows -> %s", len(selected), len(pool), out / SELECTED_FILE)


# ------------------------------------------------------------------------ tov score
def _adapter_scorer(args: argparse.Namespace, model: Any, tokenizer: Any) -> Any:
    """A ToVScorer over the saved adapters; unreadable or unfitting ones are bad input, and
    so are adapters without safetensors weights (peft would unpickle adapter_model.bin)."""
    from safetensors import SafetensorError

    from tov_datasets.scorer import ToVScorer
    from tov_datasets.storage import ADAPTER_WEIGHTS

    for adapter in (args.base_adapter, args.val_adapter):
        if not (Path(adapter) / ADAPTER_WEIGHTS).is_file():
            raise CliError(
                f"adapter {adapter} has no {ADAPTER_WEIGHTS}; tov loads adapters only as "
                "safetensors (peft: save_pretrained(..., safe_serialization=True))"
            )
    try:
        return ToVScorer(
            model, tokenizer, base_adapter=args.base_adapter, val_adapter=args.val_adapter,
            transform=args.transform, max_length=args.max_length, batch_size=args.batch_size,
        )
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        detail = _one_line(e)
        raise CliError(
            f"cannot load adapters {args.base_adapter} and {args.val_adapter} into "
            f"{args.model}: {detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from e


def cmd_score(args: argparse.Namespace) -> None:
    """Scores only: with two saved adapters (ToVScorer), or along the ToV trajectory (--val)."""
    import pyarrow as pa

    from tov_datasets.storage import write_parquet

    out = _parquet_out(args.out)
    adapters = (args.base_adapter, args.val_adapter)
    if (args.val is None) == (None in adapters):
        raise CliError("pass either --base-adapter and --val-adapter, or --val (not both)")
    pool = load_data(args.pool, "pool")
    _check_columns(pool, "pool")
    val = load_data(args.val, "val") if args.val else None
    model, tokenizer = load_model(
        args.model, data=(pool,), trust_remote_code=args.trust_remote_code, dtype=args.dtype,
        device=args.device,
    )
    if val is None:
        for adapter in adapters:
            if not Path(adapter).is_dir():
                raise CliError(f"adapter {adapter}: no such directory")
        from tov_datasets.scorer import NUM_TOKENS, SCORE
        from tov_datasets.trajectory import ROW

        scorer = _adapter_scorer(args, model, tokenizer)
        scored = pool.map(scorer, batched=True, desc="score", keep_in_memory=True)
        table = _table(scored.select_columns([SCORE, NUM_TOKENS]))
        table = table.add_column(0, ROW, pa.array(np.arange(len(pool), dtype=np.int64)))
    else:
        from tov_datasets.trajectory import tov_select

        _check_columns(val, "val")
        result = tov_select(  # the selection (n=1, no random part) is discarded
            model, tokenizer, pool, val, n=1, base_size=min(args.base_size, len(pool)),
            epochs=args.epochs, lr=args.lr, variant=args.variant,
            lora=_lora(model, args.lora_rank), transform=args.transform, random_fraction=0.0,
            batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
            output_dir=args.state_dir, progress=progress_factory(args.quiet),
        )
        table = _scores_table(result)
    write_parquet(out, table)
    log.info("scored %d rows -> %s", len(pool), out)


# ------------------------------------------------------------------------ tov select-only
def cmd_select_only(args: argparse.Namespace) -> None:
    """Re-select from a scores file: the score rows, or with --pool the pool rows."""
    import datasets

    from tov_datasets.select import select_by_score
    from tov_datasets.storage import read_parquet, write_parquet
    from tov_datasets.trajectory import ROW

    out = _parquet_out(args.out)
    path = Path(args.scores).expanduser()
    if not path.is_file():
        raise CliError(f"scores {args.scores}: no such file")
    try:
        scores = read_parquet(path)
    except Exception as e:
        raise CliError(f"cannot read scores {args.scores}: {_one_line(e)}") from e
    random_pool = None
    if IN_BASE in scores.column_names and not args.random_from_all:
        random_pool = np.flatnonzero(scores.column(IN_BASE).to_numpy())
    chosen = _table(select_by_score(
        datasets.Dataset(scores), args.n, num_bins=args.bins,
        random_fraction=args.random_fraction, random_pool=random_pool, seed=args.seed,
    ))
    if args.pool:
        pool = load_data(args.pool, "pool")
        if len(pool) != scores.num_rows:
            raise CliError(
                f"pool has {len(pool)} rows but {args.scores} scores {scores.num_rows}; pass "
                "the pool that was scored"
            )
        rows = _table(pool.select(chosen.column(ROW).to_numpy()))
        for name in chosen.column_names:
            if name not in rows.column_names:
                rows = rows.append_column(name, chosen.column(name))
        chosen = rows
    write_parquet(out, chosen)
    log.info("selected %d of %d rows -> %s", chosen.num_rows, scores.num_rows, out)


# ------------------------------------------------------------------------ tov demo
def cmd_demo(args: argparse.Namespace) -> None:
    """The offline demo: ToV vs random selection on Wikipedia summaries with SmolLM2."""
    from tov_datasets import demo

    config = (demo.SMALL if args.small else demo.DEFAULT).replace(topic=args.topic,
                                                                   seed=args.seed)
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
                   help="F applied to each token's log-prob delta")
    p.add_argument("--max-length", type=int,
                   help="truncate samples to this many tokens (default: the model's maximum)")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch size")


def _add_trajectory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-size", type=int, default=4096,
                   help="rows of the random base set U; at most the pool's rows")
    p.add_argument("--epochs", type=int, help="trajectory epochs L (default: 16384/base-size)")
    p.add_argument("--variant", choices=("interleaved", "parallel"), default="interleaved",
                   help="each epoch the base continues from the val adapter, or from itself")
    p.add_argument("--lora-rank", type=int,
                   help="LoRA rank (default: 256 causal LM, 1 token classification)")
    p.add_argument("--lr", type=float, default=2e-4, help="base learning rate (val: lr/10)")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="rows to select")
    p.add_argument("--bins", type=int, default=10, help="equal-count length bins")
    p.add_argument("--random-fraction", type=float, default=0.5,
                   help="share of n drawn uniformly at random")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tov`` command."""
    parser = argparse.ArgumentParser(
        prog="tov", description="Train-on-Validation data selection with forward passes.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = lambda name, text: commands.add_parser(
        name, help=text, description=text,
        formatter_class=_HelpFormatter,
    )
    data_help = "JSONL, Parquet, Arrow file, save_to_disk directory or hub NAME[:SPLIT]"

    p = add("select", "score a pool with ToV and select n rows")
    _add_model_options(p)
    p.add_argument("--pool", required=True, help=f"candidate samples: {data_help}")
    p.add_argument("--val", required=True, help=f"validation samples: {data_help}")
    p.add_argument("--out", required=True, help="output directory (rerun to resume)")
    p.add_argument("--group-column", help="pool column for the composition table and plot")
    _add_trajectory_options(p)
    _add_selection_options(p)
    p.set_defaults(func=cmd_select)

    p = add("score", "ToV scores only (no selection)")
    _add_model_options(p)
    p.add_argument("--pool", required=True, help=f"samples to score: {data_help}")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--base-adapter", help="saved peft adapter directory of the base model")
    p.add_argument("--val-adapter", help="saved peft adapter directory after val training")
    p.add_argument("--val", help=f"instead of adapters: run the ToV trajectory ({data_help})")
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
    _add_selection_options(p)
    p.set_defaults(func=cmd_select_only)

    p = add("demo", "offline demo: ToV vs random on Wikipedia summaries")
    p.add_argument("--topic", default="Mathematics", help="target topic of the demo")
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
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s tov: %(message)s", "%H:%M:%S"))
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tov`` command; returns the exit code (2: bad input)."""
    from tov_datasets.storage import ManifestMismatchError, OutputInUseError

    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        _check_numbers(args)
        args.func(args)
    except (CliError, ManifestMismatchError, OutputInUseError, FileNotFoundError,
            ValueError) as e:
        print(f"tov {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
