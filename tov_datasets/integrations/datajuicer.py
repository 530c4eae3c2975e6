"""Data-Juicer filter op ``tov_filter``: keep the length-binned Score+Random selection by ToV
score.

Registered in Data-Juicer's OPERATORS on import; installed tov declares it under the
``data_juicer.ops`` entry point, so a recipe just names it::

    process:
      - tov_filter:
          model_path: path/to/model
          base_adapter: path/to/base
          val_adapter: path/to/val
          keep_ratio: 0.3

Several targets score in one forward: ``val_adapter: {code: path/to/code, math:
path/to/math}`` writes ``tov_score_code`` and ``tov_score_math`` into the stats, and the op
keeps the union of each target's selection (``n`` rows each, or ``n: {code: 300, math:
100}``; ``keep_ratio`` of the rows with tokens each).

How the selection, which needs every score, fits Data-Juicer's per-batch filter API:
``compute_stats`` writes ``tov_score`` and ``tov_num_tokens`` into each sample's stats through
`ToVScorer` (rows already holding a score keep it). `ToVFilter.run` then reads the two stats
columns once, computes the selection with `select_indices` over the whole dataset and filters
with ``process``, which keeps a row iff its index was chosen. So the op runs in Data-Juicer's
default (single-node) executor only, it is never fused with other filters, and sample tracing
does not cover its ``process``. The model is loaded lazily, once per worker process. The op's
cache fingerprint covers its arguments and the size and mtime of the model/adapter files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tov_datasets.integrations import missing_extra
from tov_datasets.pipelines import adapter_paths
from tov_datasets.scorer import NUM_TOKENS, SCORE, score_column
from tov_datasets.select import select_indices

try:
    from data_juicer.ops.base_op import OPERATORS, Filter
    from data_juicer.utils.constant import Fields
except ImportError as error:
    raise missing_extra("Data-Juicer", "datajuicer", error) from error

__all__ = ["OP_NAME", "ToVFilter"]

OP_NAME = "tov_filter"


@functools.lru_cache(maxsize=2)
def _scorer(model_path: str, tokenizer_path: str | None, base_adapter: str,
            val_adapter: str | tuple[tuple[str, str], ...],
            options: tuple[tuple[str, Any], ...]) -> Any:
    """One scorer per configuration and process (kept out of the op, which gets pickled).
    val_adapter: a directory, or (name, directory) pairs of several targets; ``options``:
    sorted (keyword, value) pairs, column_map as sorted pairs too (hashable)."""
    from tov_datasets.pipelines import make_tov_score

    kwargs = {k: dict(v) if k == "column_map" else v for k, v in options}
    targets = val_adapter if isinstance(val_adapter, str) else dict(val_adapter)
    return make_tov_score(model_path, tokenizer_path, base_adapter=base_adapter,
                          val_adapter=targets, **kwargs)


def _files_digest(*paths: str | None) -> tuple[tuple[str, int, int], ...]:
    """(file, size, mtime_ns) of every file under the local directories among `paths`."""
    return tuple(
        (str(file), stat.st_size, stat.st_mtime_ns)
        for path in paths if path is not None and os.path.isdir(path)
        for file in sorted(Path(path).rglob("*")) if file.is_file()
        for stat in (file.stat(),)
    )


@OPERATORS.register_module(OP_NAME)
class ToVFilter(Filter):
    """Keeps the Score+Random selection of ``n`` rows (or ``keep_ratio`` of the rows with
    tokens) by ToV score: per length bin the top scores, plus a uniform random part.

    model_path (required): saved model; base_adapter, val_adapter (required): peft adapter
    directories; several targets: val_adapter = {name: directory}, the union of each
    target's selection is kept (n: rows per target, or {name: rows}; keep_ratio: per
    target); tokenizer_path: default the model path. num_bins, random_fraction, seed: see
    `select_indices`. scorer_options: other `make_tov_score` keywords (transform, max_length,
    batch_size, dtype, kernel_backend, column_map). The input format is detected from the
    columns (text, prompt/completion, messages, ...); a ``text_key`` other than "text" is
    mapped to "text".
    """

    _batched_op = True
    _supported_exec_modes = ("default",)

    def __init__(
        self,
        model_path: str | None = None,
        base_adapter: str | None = None,
        val_adapter: str | Mapping[str, str] | None = None,
        n: int | Mapping[str, int] | None = None,
        keep_ratio: float | None = None,
        tokenizer_path: str | None = None,
        num_bins: int = 10,
        random_fraction: float = 0.5,
        seed: int = 0,
        scorer_options: dict | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if None in (model_path, base_adapter, val_adapter):  # Data-Juicer wants defaults
            raise ValueError(f"{OP_NAME}: model_path, base_adapter and val_adapter are required")
        if (n is None) == (keep_ratio is None):
            raise ValueError(f"{OP_NAME}: pass exactly one of n and keep_ratio")
        if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"{OP_NAME}: keep_ratio must be in (0, 1], got {keep_ratio}")
        self.model_path, self.tokenizer_path = str(model_path), tokenizer_path
        self.base_adapter, self.val_adapter = str(base_adapter), adapter_paths(val_adapter)
        targets = None if isinstance(self.val_adapter, str) else sorted(self.val_adapter)
        if isinstance(n, Mapping) and sorted(n) != targets:
            raise ValueError(f"{OP_NAME}: n names targets {sorted(n)} but val_adapter "
                             f"{targets}; give an n per val_adapter name (or one int)")
        # {target name (None: the one target): stats key of its score}
        self.score_keys = ({None: SCORE} if targets is None
                           else {t: score_column(t) for t in targets})
        self.n, self.keep_ratio = n, keep_ratio
        self.selection = {"num_bins": num_bins, "random_fraction": random_fraction, "seed": seed}
        options = dict(scorer_options or {})
        if self.text_key != "text":
            options.setdefault("column_map", {self.text_key: "text"})
        self.scorer_options = options
        # Part of Data-Juicer's cache fingerprint (the op's attributes): adapters retrained
        # into the same directories are scored again, not read from the cache.
        targets = ([self.val_adapter] if isinstance(self.val_adapter, str)
                   else list(self.val_adapter.values()))
        self.files_digest = _files_digest(self.model_path, tokenizer_path, self.base_adapter,
                                          *targets)
        self._keep: np.ndarray | None = None

    def _scorer_key(self) -> tuple[Any, ...]:
        options = tuple(sorted(
            (k, tuple(sorted(v.items())) if k == "column_map" else v)
            for k, v in self.scorer_options.items()
        ))
        targets = (self.val_adapter if isinstance(self.val_adapter, str)
                   else tuple(sorted(self.val_adapter.items())))
        return (self.model_path, self.tokenizer_path, self.base_adapter, targets, options)

    def compute_stats_batched(self, samples: dict, rank: int | None = None,
                              context: bool = False) -> dict:
        stats = samples[Fields.stats]
        todo = [i for i, stat in enumerate(stats)
                if not all(key in stat for key in self.score_keys.values())]
        if todo:
            columns = {key: [values[i] for i in todo] for key, values in samples.items()
                       if not key.startswith("__dj__")}
            new = _scorer(*self._scorer_key())(columns, rank=rank)
            for j, i in enumerate(todo):
                for key in self.score_keys.values():
                    stats[i][key] = float(new[key][j])
                stats[i][NUM_TOKENS] = int(new[NUM_TOKENS][j])
        return samples

    def process_batched(self, samples: dict, indices: list[int]) -> Iterable[bool]:
        return self._keep[np.asarray(indices)].tolist()

    def run(self, dataset: Any, *, exporter: Any = None, tracer: Any = None,
            reduce: bool = True) -> Any:
        scored = super().run(dataset, exporter=exporter, tracer=tracer, reduce=False)
        if not reduce:
            return scored
        stats = scored[Fields.stats]  # dicts: Data-Juicer stores the stats as JSON
        lengths = np.array([stat[NUM_TOKENS] for stat in stats], dtype=np.int64)
        self._keep = np.zeros(len(scored), dtype=bool)
        for target, key in self.score_keys.items():  # several: the union of their selections
            scores = np.array([stat[key] for stat in stats], dtype=np.float64)
            n = self.n[target] if isinstance(self.n, Mapping) else self.n
            if n is None:
                n = max(1, round(self.keep_ratio * np.count_nonzero(lengths)))
            self._keep[select_indices(scores, lengths, n, **self.selection)] = True
        return scored.filter(self.process, with_indices=True, num_proc=self.runtime_np(),
                             batch_size=self.batch_size, desc=f"{self._name}_process")
