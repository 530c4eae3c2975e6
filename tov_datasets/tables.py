"""Arrow views of a ``datasets.Dataset``: its rows as a flat pyarrow Table and its row map.

A dataset made by ``select``/``filter``/``shuffle`` reads its rows through an indices
mapping (a private attribute of `datasets`); this is the one place that reads it. Imports
neither torch nor datasets (cheap for pipeline workers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["flat_table", "row_map"]


def row_map(dataset: Any) -> np.ndarray | None:
    """Row i of ``dataset`` is row ``row_map[i]`` of its Arrow table (int64 (N,)); None when
    there is no indices mapping (row i is row i)."""
    indices = dataset._indices
    return None if indices is None else indices.column(0).to_numpy()


def flat_table(dataset: Any) -> Any:
    """The rows of ``dataset`` as seen by the user (through any indices mapping), as a
    pyarrow Table (one ``take``; no copy without a mapping)."""
    table = dataset.data.table
    rows = row_map(dataset)
    return table if rows is None else table.take(rows)
