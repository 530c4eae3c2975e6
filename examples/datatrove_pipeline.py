r"""ToV selection of n documents with datatrove, in two passes (LocalPipelineExecutor).

    python examples/datatrove_pipeline.py --input data/ --work out/ -n 1000 \
        --model path/to/model --base-adapter path/to/base --val-adapter path/to/val

data/ holds Parquet files with "text" and "id" columns (datatrove's JsonlReader also works,
with `pip install datatrove[io]`). Pass 1 writes out/scores/*.parquet: every document with
``tov_score`` and ``tov_num_tokens`` in its metadata. Pass 2 (which waits for pass 1) reads
the scores of all shards, selects n with `select_indices` and writes the chosen documents to
out/selected/. Logs and stats go to out/logs/. A rerun skips the tasks already completed.

Several targets: ``--val-adapter NAME=DIR`` each (scored in one forward, ``tov_score_NAME``
each in the metadata) and ``--target NAME``, the target pass 2 selects for:

    python examples/datatrove_pipeline.py --input data/ --work out/ -n 1000 \
        --model path/to/model --base-adapter path/to/base \
        --val-adapter code=path/to/code --val-adapter math=path/to/math --target code
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter

from tov_datasets.integrations.datatrove import ToVScoreStep, ToVSelectFilter
from tov_datasets.scorer import SCORE, check_target_names, score_column


def build(
    input_folder: str | Path,
    work_dir: str | Path,
    n: int,
    *,
    model: str | Path,
    base_adapter: str | Path,
    val_adapter: str | Path | Mapping[str, str | Path],
    target: str | None = None,
    tasks: int = 2,
    start_method: str = "forkserver",
    seed: int = 0,
    torch_threads: int | None = None,
    scorer_options: Mapping[str, Any] | None = None,
) -> LocalPipelineExecutor:
    """The selection executor; running it runs the scoring executor first (``depends``).
    val_adapter: one adapter directory, or {target name: directory} for several targets;
    target: then the one selected for (default: the only one). start_method: how worker
    processes start ("fork" reuses the parent's imports)."""
    work = Path(work_dir)
    column = selected_column(val_adapter, target)
    executor = {"tasks": tasks, "start_method": start_method}
    score = LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(input_folder)),
            ToVScoreStep(str(model), str(base_adapter), val_adapter,
                         torch_threads=torch_threads, scorer_options=scorer_options),
            ParquetWriter(str(work / "scores")),
        ],
        logging_dir=str(work / "logs" / "score"),
        **executor,
    )
    return LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(work / "scores")),
            ToVSelectFilter(str(work / "scores"), n, seed=seed, score_column=column),
            ParquetWriter(str(work / "selected")),
        ],
        logging_dir=str(work / "logs" / "select"),
        depends=score,
        **executor,
    )


def selected_column(val_adapter: str | Path | Mapping[str, str | Path],
                    target: str | None) -> str:
    """The score column pass 2 selects by: ``tov_score`` for one unnamed adapter, else
    ``tov_score_<target>`` (``target`` may be left out when one target is named)."""
    if not isinstance(val_adapter, Mapping):
        if target is not None:
            raise ValueError(f"target {target!r}: name the adapters ({{name: directory}}) to "
                             "select for one of them")
        return SCORE
    names = check_target_names(list(val_adapter), "val_adapter")
    if target is None and len(names) == 1:
        target = names[0]
    if target is None:
        raise ValueError(f"several targets {names}: name the one to select for (--target)")
    if target not in names:
        raise ValueError(f"target {target!r} is not one of the targets {names}")
    return score_column(target)


def val_adapters(values: Sequence[str]) -> str | dict[str, str]:
    """``--val-adapter`` values: one DIR as given, or {NAME: DIR} from ``NAME=DIR`` each (an
    existing directory whose name holds '=' is a DIR)."""
    specs = [(None, value) if "=" not in value or Path(value).is_dir()
             else tuple(value.split("=", 1)) for value in values]
    if len(specs) == 1 and specs[0][0] is None:
        return values[0]
    if any(name is None or not directory for name, directory in specs):
        raise ValueError("name each of several adapters: --val-adapter NAME=DIR ...")
    check_target_names([name for name, _ in specs], "--val-adapter")
    return dict(specs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of Parquet files (text, id)")
    parser.add_argument("--work", required=True, help="output folder")
    parser.add_argument("-n", type=int, required=True, help="documents to keep")
    parser.add_argument("--model", required=True, help="saved model (and tokenizer) folder")
    parser.add_argument("--base-adapter", required=True, help="peft adapter folder")
    parser.add_argument("--val-adapter", required=True, action="append",
                        metavar="DIR | NAME=DIR",
                        help="peft adapter folder; several targets: NAME=DIR each (repeat)")
    parser.add_argument("--target", help="several targets: the NAME to select for (its "
                                         "column tov_score_NAME)")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        val_adapter = val_adapters(args.val_adapter)
        selected_column(val_adapter, args.target)
    except ValueError as e:
        parser.error(str(e))
    build(
        args.input, args.work, args.n, model=args.model, base_adapter=args.base_adapter,
        val_adapter=val_adapter, target=args.target, tasks=args.tasks, seed=args.seed,
        torch_threads=args.torch_threads,
    ).run()


if __name__ == "__main__":
    main()
