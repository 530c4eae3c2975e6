"""Ray Data integration, for pools that outgrow one machine (optional extra ``tov[ray]``).

Scoring is embarrassingly parallel, so it runs as a Ray Data ``map_batches`` stage; selection
needs every score at once, so it runs afterwards on the gathered scores (a few bytes a row):

    import ray
    from tov_datasets.ray import RayToVScorer, select_from_scores

    pool = ray.data.read_parquet("s3://bucket/pool/")
    scored = pool.map_batches(
        RayToVScorer, fn_constructor_kwargs={"model": "path/or/hub-name",
        "base_adapter": "adapters/base", "val_adapter": "adapters/val"},
        batch_size=256, batch_format="pyarrow", num_gpus=1, concurrency=8)
    scored.write_parquet("s3://bucket/scored/")
    selected = select_from_scores("s3://bucket/scored/", n=50_000)

Several targets score in one forward: ``"val_adapter": {"code": "adapters/code", "math":
"adapters/math"}`` writes ``tov_score_code`` and ``tov_score_math``; select per target with
``select_from_scores(path, n, score_column="tov_score_code")``.

`tov_datasets.ToVScorer` itself also works as the callable class when the model object is
small enough to ship through Ray's object store (``fn_constructor_kwargs={"model":
peft_model, "tokenizer": tokenizer}``); `RayToVScorer` loads the model inside each actor
from a path instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.dataset as pads

from tov_datasets.pipelines import make_tov_score
from tov_datasets.select import select_by_score

try:
    import ray
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tov_datasets.ray needs Ray Data: pip install 'tov[ray]' (or 'ray[data]')"
    ) from e


class RayToVScorer:
    """Callable class for ``map_batches``: loads the model, its tokenizer and both adapters
    once per Ray actor, then scores each batch with `ToVScorer` (numpy or pyarrow batches).

    model: a saved model directory or hub name (`tov_datasets.load_model`); base_adapter /
    val_adapter: adapter directories saved by peft (safetensors); several targets:
    val_adapter = {name: directory} (columns ``tov_score_<name>``). The model goes to the GPU
    Ray assigned to the actor, if any. Other keyword arguments go to ToVScorer.
    """

    def __init__(self, model: str, base_adapter: str, val_adapter: str | Mapping[str, str], *,
                 dtype: str | None = None, **scorer_kwargs: Any) -> None:
        import torch

        scorer_kwargs.setdefault("device", "cuda" if torch.cuda.is_available() else None)
        self.scorer = make_tov_score(model, base_adapter=base_adapter, val_adapter=val_adapter,
                                     dtype=dtype, **scorer_kwargs)

    def __call__(self, batch: Any) -> Any:
        return self.scorer(batch)


def score_parquet(pool: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  model: str, base_adapter: str, val_adapter: str | Mapping[str, str],
                  batch_size: int = 64,
                  concurrency: int = 1, num_gpus: float = 0, num_cpus: float = 1,
                  **scorer_kwargs: Any) -> None:
    """Score a Parquet pool (file or directory) into a Parquet scores directory holding every
    pool column plus ``tov_score`` (several targets, val_adapter = {name: directory}: one
    ``tov_score_<name>`` each) and ``tov_num_tokens``, in pool order.

    concurrency scorer actors each reserve num_gpus GPUs and num_cpus CPUs; leave CPUs free
    for Ray's read and write tasks (concurrency * num_cpus below the cluster's CPUs), or the
    pipeline waits forever for a CPU.
    """
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_parquet(os.fspath(pool))
    scored = ds.map_batches(
        RayToVScorer,
        fn_constructor_kwargs={"model": model, "base_adapter": base_adapter,
                               "val_adapter": val_adapter, **scorer_kwargs},
        batch_size=batch_size, batch_format="pyarrow", concurrency=concurrency,
        num_gpus=num_gpus, num_cpus=num_cpus,
    )
    scored.write_parquet(os.fspath(output))


def read_scores(path: str | os.PathLike[str]) -> pa.Table:
    """The gathered scores of `score_parquet` (or any Parquet file/directory) as one table, in
    file-name order (Ray names its output files in block order)."""
    return pads.dataset(os.fspath(path), format="parquet").to_table()


def select_from_scores(path: str | os.PathLike[str], n: int, **select_kwargs: Any,
                       ) -> datasets.Dataset:
    """`select_by_score` over gathered Parquet scores: a flat Dataset of the chosen rows.
    One target of a multi-target scoring: ``score_column="tov_score_<name>"``; the scores
    hold every pool column, so ``stratify_by_column=`` (with ``stratify_like=val``) works."""
    return select_by_score(datasets.Dataset(read_scores(path)), n, **select_kwargs)
