r"""ToV selection of n documents with datatrove, in two passes (LocalPipelineExecutor).

    python examples/datatrove_pipeline.py --input data/ --work out/ -n 1000 \
        --model path/to/model --base-adapter path/to/base --val-adapter path/to/val

data/ holds Parquet files with "text" and "id" columns (datatrove's JsonlReader also works,
with `pip install datatrove[io]`). Pass 1 writes out/scores/*.parquet: every document with
``tov_score`` and ``tov_num_tokens`` in its metadata. Pass 2 (which waits for pass 1) reads
the scores of all shards, selects n with `select_indices` and writes the chosen documents to
out/selected/. Logs and stats go to out/logs/. A rerun skips the tasks already completed.
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


def build(
    input_folder: str | Path,
    work_dir: str | Path,
    n: int,
    *,
    model: str | Path,
    base_adapter: str | Path,
    val_adapter: str | Path,
    tasks: int = 2,
    start_method: str = "forkserver",
    seed: int = 0,
    torch_threads: int | None = None,
    scorer_options: Mapping[str, Any] | None = None,
) -> LocalPipelineExecutor:
    """The selection executor; running it runs the scoring executor first (``depends``).
    start_method: how worker processes start ("fork" reuses the parent's imports)."""
    work = Path(work_dir)
    executor = {"tasks": tasks, "start_method": start_method}
    score = LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(input_folder)),
            ToVScoreStep(str(model), str(base_adapter), str(val_adapter),
                         torch_threads=torch_threads, scorer_options=scorer_options),
            ParquetWriter(str(work / "scores")),
        ],
        logging_dir=str(work / "logs" / "score"),
        **executor,
    )
    return LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(work / "scores")),
            ToVSelectFilter(str(work / "scores"), n, seed=seed),
            ParquetWriter(str(work / "selected")),
        ],
        logging_dir=str(work / "logs" / "select"),
        depends=score,
        **executor,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of Parquet files (text, id)")
    parser.add_argument("--work", required=True, help="output folder")
    parser.add_argument("-n", type=int, required=True, help="documents to keep")
    parser.add_argument("--model", required=True, help="saved model (and tokenizer) folder")
    parser.add_argument("--base-adapter", required=True, help="peft adapter folder")
    parser.add_argument("--val-adapter", required=True, help="peft adapter folder")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args(argv)
    build(
        args.input, args.work, args.n, model=args.model, base_adapter=args.base_adapter,
        val_adapter=args.val_adapter, tasks=args.tasks, seed=args.seed,
        torch_threads=args.torch_threads,
    ).run()


if __name__ == "__main__":
    main()
