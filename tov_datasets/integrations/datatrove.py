"""datatrove steps: ToV-score Documents, and keep the Score+Random selection of n of them.

The selection needs the scores of every shard, so a pipeline takes two passes (runnable in
examples/datatrove_pipeline.py):

1. score:  reader -> ToVScoreStep(model, base_adapter, val_adapter) -> ParquetWriter(scores)
2. select: ParquetReader(scores) -> ToVSelectFilter(scores, n) -> any writer

`ToVScoreStep` holds paths only (steps are pickled to the workers) and loads the model once
per task; it adds ``tov_score`` and ``tov_num_tokens`` to each Document's metadata. Several
targets (``val_adapter={name: directory}``) are scored in one forward into
``tov_score_<name>``; a `ToVSelectFilter` per target (``score_column="tov_score_<name>"``)
selects for it.
`ToVSelectFilter` reads the id, score and token count of every document under the scores
folder (files in sorted order, rows in file order), runs `select_indices` once per task and
keeps the chosen ids: the rows `select_by_score` picks from those shards concatenated in that
order. Document ids must be unique across the shards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from tov_datasets.integrations import missing_extra
from tov_datasets.pipelines import adapter_paths
from tov_datasets.scorer import NUM_TOKENS, SCORE
from tov_datasets.select import select_indices

try:
    from datatrove.data import Document, DocumentsPipeline
    from datatrove.io import DataFolderLike, get_datafolder
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.writers.disk_base import DiskWriter
    from datatrove.utils.batching import batched
except ImportError as error:
    raise missing_extra("datatrove", "datatrove", error) from error

__all__ = ["ToVScoreStep", "ToVSelectFilter", "selected_ids"]


class ToVScoreStep(PipelineStep):
    """Adds ``tov_score`` and ``tov_num_tokens`` to the metadata of each Document.

    model: path of the saved model; base_adapter, val_adapter: peft adapter directories;
    several targets: val_adapter = {name: directory}, one ``tov_score_<name>`` each (all
    scored in one forward); tokenizer: its path (default: the model path). batch_size:
    documents scored together (sorted by length inside). torch_threads: torch threads per
    task (default: torch's). scorer_options: other `make_tov_score` keywords, e.g.
    {"batch_size": 16, "dtype": "bfloat16", "max_length": 2048}. On a CUDA machine, task
    ``rank`` scores on cuda:(rank % device count).
    """

    name = "🎯 ToV score"
    type = "🔢 - SCORER"

    def __init__(
        self,
        model: str,
        base_adapter: str,
        val_adapter: str | Mapping[str, str],
        *,
        tokenizer: str | None = None,
        batch_size: int = 256,
        torch_threads: int | None = None,
        scorer_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = str(model)
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.base_adapter, self.val_adapter = str(base_adapter), adapter_paths(val_adapter)
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self.scorer_options = dict(scorer_options or {})

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import torch

        from tov_datasets.pipelines import make_tov_score

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        scorer = make_tov_score(
            self.model, self.tokenizer, base_adapter=self.base_adapter,
            val_adapter=self.val_adapter, **self.scorer_options,
        )
        for batch in batched(data or (), self.batch_size):
            with self.track_time("batch"):
                new = scorer({"text": [doc.text for doc in batch]}, rank=rank)
            scores = [new[column] for column in scorer.columns[:-1]]
            for i, doc in enumerate(batch):
                for column, values in zip(scorer.columns[:-1], scores, strict=True):
                    doc.metadata[column] = float(values[i])
                count = int(new[NUM_TOKENS][i])
                doc.metadata[NUM_TOKENS] = count
                self.stat_update(NUM_TOKENS, value=count)
                yield doc


def _folder(folder: DataFolderLike | os.PathLike[str]) -> Any:
    return get_datafolder(os.fspath(folder) if isinstance(folder, os.PathLike) else folder)


def selected_ids(
    scores_folder: DataFolderLike | os.PathLike[str],
    n: int,
    *,
    num_bins: int = 10,
    random_fraction: float = 0.5,
    seed: int = 0,
    glob_pattern: str = "*.parquet",
    score_column: str = SCORE,
) -> frozenset[str]:
    """The ids `select_indices` chooses among the Parquet shards of `scores_folder` (written
    by a ParquetWriter after `ToVScoreStep`, with or without ``expand_metadata``), by
    ``score_column`` (one target of several: ``tov_score_<name>``)."""
    folder = _folder(scores_folder)
    files = folder.list_files(glob_pattern=glob_pattern)
    if not files:
        raise ValueError(f"no {glob_pattern} files under {folder.path}: run the scoring pass first")
    dataset = pads.dataset(files, format="parquet", filesystem=folder)
    expanded = NUM_TOKENS in dataset.schema.names
    present = (dataset.schema.names if expanded
               else [field.name for field in dataset.schema.field("metadata").type])
    if score_column not in present:
        scored = sorted(c for c in present if c.startswith(SCORE))
        raise ValueError(f"the scores under {folder.path} have no {score_column!r}; score "
                         f"columns: {scored}; pass score_column=")
    columns = {
        key: pc.field(key) if expanded or key == "id" else pc.field("metadata", key)
        for key in ("id", score_column, NUM_TOKENS)
    }
    table = pa.concat_tables(
        fragment.to_table(columns=columns) for fragment in dataset.get_fragments()
    )
    ids = table.column("id").to_numpy(zero_copy_only=False)
    if len(set(ids)) != len(ids):
        raise ValueError(f"document ids under {folder.path} are not unique; give each an id")
    chosen = select_indices(
        table.column(score_column).to_numpy(), table.column(NUM_TOKENS).to_numpy().astype(np.int64),
        n, num_bins=num_bins, random_fraction=random_fraction, seed=seed,
    )
    return frozenset(ids[chosen].tolist())


class ToVSelectFilter(BaseFilter):
    """Keeps the documents among the Score+Random selection of `n` over all scored shards of
    `scores_folder` by ``score_column`` (see `selected_ids`; computed once per task, on its
    first document)."""

    name = "🎯 ToV select"

    def __init__(
        self,
        scores_folder: DataFolderLike | os.PathLike[str],
        n: int,
        *,
        num_bins: int = 10,
        random_fraction: float = 0.5,
        seed: int = 0,
        glob_pattern: str = "*.parquet",
        score_column: str = SCORE,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer)
        self.scores_folder = _folder(scores_folder)
        self.n = n
        self.options = {"num_bins": num_bins, "random_fraction": random_fraction, "seed": seed,
                        "glob_pattern": glob_pattern, "score_column": score_column}
        self._selected: frozenset[str] | None = None

    def filter(self, doc: Document) -> bool:
        if self._selected is None:
            self._selected = selected_ids(self.scores_folder, self.n, **self.options)
        return doc.id in self._selected
