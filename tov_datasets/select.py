"""Length-binned Score+Random selection.

The selection corrects the bias of token-mean scores towards short samples and keeps
diversity:

1. Eligible rows are those with ``length > 0``; rows without tokens are never chosen, by
   score or at random, and their scores are ignored (they may be NaN).
2. Eligible rows are ordered by ``(length, row index)`` and cut into ``num_bins`` equal-count
   bins: bin ``b`` holds ranks ``[b * M // num_bins, (b + 1) * M // num_bins)`` of the ``M``
   eligible rows, so rows of equal length on a bin edge are split by row index.
3. The scored part ``n_s = n - n_r`` with ``n_r = floor(random_fraction * n + 0.5)`` (round half
   up) is split over the bins in proportion to bin size by largest remainder (equal remainders:
   lower bin first). Because bins hold eligible rows only and ``n_s <= M``, a quota never
   exceeds its bin, so no redistribution between bins is ever needed.
4. Each bin keeps its ``quota`` highest scores; equal scores go to the lower row index.
5. The random part draws ``n_r`` rows uniformly without replacement from the eligible rows of
   ``random_pool`` (default: all rows) not already chosen by score, as
   ``np.random.default_rng(seed).choice(candidates, n_r, replace=False)`` with ``candidates``
   in ascending order (so the order of ``random_pool`` does not matter). Too few candidates is
   a ValueError, never a silent fill.

Strata (optional, e.g. the answer label of a classification task, whose marginal a score
may skew): the scored part ``n_s`` is split over the strata in proportion to given weights
(e.g. each label's count in the validation set) by largest remainder, a stratum never past
its eligible rows (`stratum_quotas`), and steps 2-4 run inside each stratum on its own rows.
The random part ``n_r`` is split the same way over the strata's candidates (step 5's rows),
and each stratum's share is drawn uniformly without replacement: every row gets a key from
``np.random.default_rng(seed).random(N)`` and a stratum keeps its candidates of highest key
(a uniform sample). Rows of stratum -1 or of weight 0 are never chosen, by score or at
random: the whole selection keeps the weights' label shares (benchmark ``chat_labels_v4``),
so those strata must hold ``n`` eligible rows, and the random pool ``n_r`` of them besides
the scored part's (a ValueError names which).

`selection_overlap` counts the rows that named selections share (several targets' picks).

Nothing is fully sorted (a numpy sort of 10M values alone takes ~1 s): rows are binned by a
counting sort over length values in numba, each bin's threshold score comes from numpy's
partition, and one numba pass marks the rows. The numba loops are serial: they are memory
bound, and `parallel=True` was slower on the shared 2-core benchmark machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from tov_datasets import tables

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

__all__ = ["SelectionOverlap", "length_bins", "random_count", "select_by_score",
           "select_indices", "selection_overlap", "column_strata", "label_strata",
           "stratum_quotas"]

SELECTED_COLUMN = "tov_selected"
FROM_SCORE_COLUMN = "tov_from_score"  # True: chosen by score; False: by the random part

# Length values up to this bound are binned with a direct histogram over the values; larger
# ones are first replaced by their dense rank (one numpy sort of the eligible lengths).
_MAX_DIRECT_LENGTH = 1 << 22


@numba.njit(cache=True)
def _bin_rows(keys, scores, key_start, bin_start, num_bins, n_eligible):
    """Group the eligible rows (key > 0) by bin, ascending row index inside each bin.

    The (key, index) rank of a row is its key's first rank plus the rows of that key seen so
    far; its bin is the b with bin_start[b] <= rank < bin_start[b + 1].
    Returns (scores, row indices), both (n_eligible,), bin b at [bin_start[b], bin_start[b+1]).
    """
    next_rank = key_start.copy()
    pos = bin_start[:-1].copy()
    grouped_scores = np.empty(n_eligible, scores.dtype)
    grouped_rows = np.empty(n_eligible, np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        if k > 0:
            r = next_rank[k]
            next_rank[k] = r + 1
            b = ((r + 1) * num_bins - 1) // n_eligible
            p = pos[b]
            grouped_scores[p] = scores[i]
            grouped_rows[p] = i
            pos[b] = p + 1
    return grouped_scores, grouped_rows


def _grouped_by_bin(
    scores: np.ndarray, lengths: np.ndarray, num_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The equal-count length bins of the rows with length > 0, ordered by (length, row).

    lengths: int64 (N,) >= 0. Returns (scores, row indices) grouped by bin as `_bin_rows`
    gives them, and bin_start int64 (num_bins + 1,): bin b is [bin_start[b], bin_start[b+1]).
    """
    eligible = lengths > 0
    n_eligible = int(np.count_nonzero(eligible))
    if lengths.size == 0 or lengths.max() <= _MAX_DIRECT_LENGTH:
        keys = lengths
    else:
        keys = np.zeros(lengths.size, np.int64)
        keys[eligible] = np.unique(lengths[eligible], return_inverse=True)[1] + 1
    key_counts = np.bincount(keys)
    key_counts[0] = 0
    key_start = np.cumsum(key_counts) - key_counts
    bin_start = np.arange(num_bins + 1, dtype=np.int64) * n_eligible // num_bins
    grouped_scores, grouped_rows = _bin_rows(
        keys, scores, key_start, bin_start, num_bins, max(n_eligible, 1)
    )
    return grouped_scores, grouped_rows, bin_start


def length_bins(lengths: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin id int64 (N,) per row as `select_indices` cuts them (equal-count bins of the rows
    with length > 0, ordered by (length, row index)); -1 for rows without tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    _, grouped_rows, bin_start = _grouped_by_bin(
        np.zeros(lengths.size, np.float64), lengths, num_bins
    )
    bins = np.full(lengths.size, -1, dtype=np.int64)
    bins[grouped_rows] = np.repeat(np.arange(num_bins, dtype=np.int64), np.diff(bin_start))
    return bins


def _thresholds(grouped_scores: np.ndarray, bin_start: np.ndarray, quotas: np.ndarray):
    """Per bin, the quotas[b]-th highest score and how many rows equal to it to take.

    A bin taken whole gets threshold -inf and no ties. Returns (float64 (B,), int64 (B,)).
    """
    thresholds = np.full(quotas.size, -np.inf)
    ties = np.zeros(quotas.size, np.int64)
    sizes = np.diff(bin_start)
    for b in np.flatnonzero((quotas > 0) & (quotas < sizes)):
        k = sizes[b] - quotas[b]
        segment = grouped_scores[bin_start[b] : bin_start[b + 1]].copy()
        segment.partition(k)  # every score above segment[k] now lies in segment[k + 1:]
        thresholds[b] = segment[k]
        ties[b] = quotas[b] - np.count_nonzero(segment[k + 1 :] > segment[k])
    return thresholds, ties


@numba.njit(cache=True)
def _mark_top(grouped_scores, grouped_rows, bin_start, quotas, thresholds, ties, mask):
    """Set mask[row] for rows above their bin's threshold and its first ties[b] equal rows."""
    for b in range(quotas.shape[0]):
        if quotas[b] == 0:
            continue
        threshold = thresholds[b]
        n_ties = ties[b]
        for j in range(bin_start[b], bin_start[b + 1]):
            v = grouped_scores[j]
            if v > threshold:
                mask[grouped_rows[j]] = True
            elif v == threshold and n_ties > 0:
                mask[grouped_rows[j]] = True
                n_ties -= 1


def _largest_remainder(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split `total` over bins in proportion to `sizes` (int64) by largest remainder."""
    m = int(sizes.sum())
    if m == 0:
        return np.zeros_like(sizes)
    scaled = sizes * np.int64(total)
    quotas = scaled // m
    remainders = scaled % m
    short = total - int(quotas.sum())
    order = np.lexsort((np.arange(sizes.size), -remainders))
    quotas[order[:short]] += 1
    return quotas


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _pool_mask(random_pool: object, num_rows: int) -> np.ndarray:
    pool = np.asarray(random_pool)
    if pool.ndim != 1 or (pool.size and not np.issubdtype(pool.dtype, np.integer)):
        raise ValueError(
            f"random_pool must be a 1-D array of integer row indices, got dtype {pool.dtype} "
            f"and shape {pool.shape}"
        )
    if pool.size and (pool.min() < 0 or pool.max() >= num_rows):
        bad = pool[(pool < 0) | (pool >= num_rows)][:5].tolist()
        raise ValueError(
            f"random_pool has indices out of range [0, {num_rows}): {bad}; pass row indices "
            "of the scored data (no negative indices)"
        )
    counts = np.bincount(pool.astype(np.int64, copy=False), minlength=num_rows)
    if pool.size and counts.max() > 1:
        raise ValueError(
            f"random_pool has duplicated indices: {np.flatnonzero(counts > 1)[:5].tolist()}; "
            "pass each row at most once (e.g. np.unique(pool))"
        )
    return counts.astype(bool)


def _mark_scored(scores: np.ndarray, lengths: np.ndarray, n_scored: int, num_bins: int,
                 mask: np.ndarray) -> None:
    """Set mask (N,) bool at the scored part: the top scores of each length bin (steps 2-4)."""
    grouped_scores, grouped_rows, bin_start = _grouped_by_bin(scores, lengths, num_bins)
    quotas = _largest_remainder(n_scored, np.diff(bin_start))
    thresholds, ties = _thresholds(grouped_scores, bin_start, quotas)
    _mark_top(grouped_scores, grouped_rows, bin_start, quotas, thresholds, ties, mask)


def _checked_strata(strata: object, stratum_weights: object, lengths: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """strata as int64 (N,) in [-1, S) and the weights as int64 (S,) (default: each
    stratum's eligible rows). Raises ValueError naming what is wrong."""
    strata = np.asarray(strata)
    if strata.shape != lengths.shape or (strata.size and not np.issubdtype(strata.dtype,
                                                                           np.integer)):
        raise ValueError(f"strata must be one integer stratum id per row, shape "
                         f"{lengths.shape}; got dtype {strata.dtype} and shape {strata.shape}")
    strata = strata.astype(np.int64, copy=False)
    if strata.size and strata.min() < -1:
        raise ValueError(f"strata must be >= -1 (-1: no stratum), got {strata.min()}")
    if stratum_weights is None:
        size = int(strata.max()) + 1 if strata.size else 0
        return strata, np.bincount(strata[(lengths > 0) & (strata >= 0)], minlength=size)
    weights = np.asarray(stratum_weights)
    if weights.ndim != 1 or (weights.size and not np.issubdtype(weights.dtype, np.integer)):
        raise ValueError(f"stratum_weights must be a 1-D array of integer counts, got dtype "
                         f"{weights.dtype} and shape {weights.shape}")
    if weights.size and weights.min() < 0:
        raise ValueError(f"stratum_weights must be >= 0, got {weights.min()}")
    if strata.size and strata.max() >= weights.size:
        raise ValueError(f"strata has id {strata.max()} but stratum_weights only "
                         f"{weights.size} entries; give one weight per stratum id")
    return strata, weights.astype(np.int64, copy=False)


# What each part of a selection splits over the strata counts, and how to get more of it.
_STRATUM_ROWS = {
    "scored part": ("eligible rows (length > 0)",
                    "pass a smaller n, a larger random_fraction, or weights for more strata"),
    "random part": ("eligible rows (length > 0) of random_pool not already chosen by score",
                    "pass a larger random_pool, a smaller n, a smaller random_fraction, or "
                    "weights for more strata"),
}


def stratum_quotas(total: int, weights: np.ndarray, sizes: np.ndarray,
                   part: str = "scored part") -> np.ndarray:
    """Split `total` rows over strata in proportion to `weights` (int64 (S,) >= 0) by largest
    remainder, none above its `sizes` (int64 (S,)): a stratum whose share reaches its size is
    taken whole and the rest is split again over the others. Raises ValueError when the
    strata of weight > 0 hold fewer than `total` rows, naming `part` of the selection
    ("scored part" or "random part")."""
    quotas = np.zeros(weights.size, np.int64)
    open_ = weights > 0
    capacity = int(sizes[open_].sum())
    if capacity < total:
        rows, fix = _STRATUM_ROWS[part]
        raise ValueError(f"the {part} needs {total} rows but the strata of weight > 0 hold "
                         f"only {capacity} {rows}; {fix}")
    left = total
    while left:
        share = _largest_remainder(left, np.where(open_, weights, 0))
        full = open_ & (share >= sizes)
        if not full.any():
            return quotas + share
        quotas[full] = sizes[full]
        left -= int(sizes[full].sum())
        open_ &= ~full
    return quotas


def _check_strata_hold(n: int, strata: np.ndarray, weights: np.ndarray,
                       eligible: np.ndarray) -> None:
    """Raise ValueError unless the strata of weight > 0 hold ``n`` eligible rows: with
    strata every chosen row, by score or at random, lies in one."""
    in_stratum = eligible & (strata >= 0)
    held = int(np.count_nonzero(weights[strata[in_stratum]] > 0))
    if held < n:
        raise ValueError(
            f"the selection needs n={n} rows but the strata of weight > 0 hold only {held} "
            "eligible rows (length > 0), and every row chosen, by score or at random, lies "
            "in one; pass a smaller n, or weights for more strata"
        )


def _mark_strata(keys: np.ndarray, lengths: np.ndarray, total: int, num_bins: int,
                 strata: np.ndarray, weights: np.ndarray, allowed: np.ndarray, part: str,
                 mask: np.ndarray) -> None:
    """Mark in ``mask`` the rows of `part` ("scored part" or "random part"): ``total`` rows
    split over the strata (`stratum_quotas`), each stratum's quota being its ``allowed``
    rows (bool (N,)) of highest ``keys`` (N,) in ``num_bins`` length bins (`_mark_scored`)."""
    strata = np.where(allowed, strata, -1)
    sizes = np.bincount(strata[strata >= 0], minlength=weights.size)
    quotas = stratum_quotas(total, weights, sizes, part)
    order = np.argsort(strata, kind="stable")  # rows grouped by stratum, ascending in each
    start = np.searchsorted(strata[order], np.arange(weights.size + 1))
    for k in np.flatnonzero(quotas):
        rows = order[start[k]:start[k + 1]]
        chosen = np.zeros(rows.size, dtype=bool)
        _mark_scored(keys[rows], lengths[rows], int(quotas[k]), num_bins, chosen)
        mask[rows[chosen]] = True


def random_count(n: int, random_fraction: float) -> int:
    """Rows of the random part of a selection of ``n``: floor(random_fraction * n + 0.5)."""
    return int(np.floor(float(random_fraction) * n + 0.5))


def _checked(
    scores: np.ndarray, lengths: np.ndarray, n: int, num_bins: int, random_fraction: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The inputs of `select_indices`, checked: scores float32/float64 (N,), lengths int64
    (N,), n and num_bins as ints. Raises ValueError naming what is wrong."""
    scores = np.asarray(scores)
    lengths = np.asarray(lengths)
    if scores.ndim != 1 or lengths.ndim != 1:
        raise ValueError(
            f"scores and lengths must be 1-D, got shapes {scores.shape} and {lengths.shape}"
        )
    if scores.shape != lengths.shape:
        raise ValueError(
            f"scores and lengths differ in size: {scores.size} scores, {lengths.size} lengths; "
            "pass one score and one length per row"
        )
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"lengths must be integer token counts, got dtype {lengths.dtype}; "
            "cast them with .astype(np.int64)"
        )
    n = _check_int("n", n, 1)
    num_bins = _check_int("num_bins", num_bins, 1)
    if not 0.0 <= float(random_fraction) <= 1.0:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")

    lengths = lengths.astype(np.int64, copy=False)
    eligible = lengths > 0
    n_eligible = int(np.count_nonzero(eligible))
    if n_eligible != lengths.size and (lengths < 0).any():
        bad = np.flatnonzero(lengths < 0)[:5].tolist()
        raise ValueError(f"lengths must be >= 0; negative at rows {bad}")
    if scores.dtype != np.float32:
        scores = scores.astype(np.float64)
    finite = np.isfinite(scores)
    if not finite.all() and (eligible & ~finite).any():
        bad = np.flatnonzero(eligible & ~finite)[:5].tolist()
        raise ValueError(
            f"scores must be finite where length > 0; NaN or inf at rows {bad}; drop or "
            "rescore those rows (rows with length 0 may have any score)"
        )
    if n > n_eligible:
        raise ValueError(
            f"n={n} exceeds the {n_eligible} eligible rows (length > 0) of {lengths.size}; "
            f"ask for at most {n_eligible}"
        )
    return scores, lengths, n, num_bins


def select_indices(
    scores: np.ndarray,
    lengths: np.ndarray,
    n: int,
    *,
    num_bins: int = 10,
    random_fraction: float = 0.5,
    random_pool: np.ndarray | None = None,
    seed: int = 0,
    strata: np.ndarray | None = None,
    stratum_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Choose `n` rows: length-binned top scores plus a uniform random part (module doc).

    scores: (N,) real, finite where length > 0 (higher is better).
    lengths: (N,) integer token counts >= 0; rows with length 0 are never chosen.
    random_pool: (P,) distinct row indices in [0, N) the random part is drawn from.
    strata: (N,) integer stratum id per row in [0, S), -1 for none (e.g. the answer label):
    both parts are split over the strata (`stratum_quotas`); each stratum's scored share is
    chosen as above within its own rows (its own length bins), its random share uniformly
    from its rows in random_pool not chosen by score. Rows of stratum -1 or of weight 0 are
    never chosen.
    stratum_weights: (S,) integer weights >= 0 of the split (e.g. each label's count in the
    validation set); default: each stratum's eligible rows.
    seed: the random part's seed (an int, or anything ``np.random.default_rng`` takes).
    Returns (n,) int64 row indices, sorted ascending. Same inputs and seed, same result;
    ``num_bins=1, random_fraction=0`` is the plain top-n (ties: lower index first).
    """
    scores, lengths, n, num_bins = _checked(scores, lengths, n, num_bins, random_fraction)
    num_rows = scores.size
    eligible = lengths > 0
    pool = None if random_pool is None else _pool_mask(random_pool, num_rows)

    n_random = random_count(n, random_fraction)
    n_scored = n - n_random
    mask = np.zeros(num_rows, dtype=bool)
    if strata is None:
        if stratum_weights is not None:
            raise ValueError("stratum_weights needs strata: pass strata= too")
        if n_scored:
            _mark_scored(scores, lengths, n_scored, num_bins, mask)
    else:
        strata, weights = _checked_strata(strata, stratum_weights, lengths)
        _check_strata_hold(n, strata, weights, eligible)
        _mark_strata(scores, lengths, n_scored, num_bins, strata, weights, eligible,
                     "scored part", mask)
    if n_random:
        free = eligible & ~mask if pool is None else eligible & ~mask & pool
        if strata is None:
            _mark_random(free, n_random, seed, mask)
        else:
            keys = np.random.default_rng(seed).random(num_rows)
            _mark_strata(keys, lengths, n_random, 1, strata, weights, free, "random part", mask)
    return np.flatnonzero(mask).astype(np.int64, copy=False)


def _mark_random(free: np.ndarray, n_random: int, seed: object, mask: np.ndarray) -> None:
    """Mark in ``mask`` ``n_random`` of the ``free`` rows (bool (N,)) uniformly without
    replacement (module doc, step 5)."""
    candidates = np.flatnonzero(free)
    if candidates.size < n_random:
        raise ValueError(
            f"random part needs {n_random} rows but random_pool has only "
            f"{candidates.size} eligible rows (length > 0) not already chosen by score; "
            "pass a larger random_pool, a smaller n or a smaller random_fraction"
        )
    rng = np.random.default_rng(seed)
    mask[rng.choice(candidates, size=n_random, replace=False)] = True


def _put_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    """``table`` with the bool column ``name`` set to ``values`` (replaced or appended)."""
    import pyarrow as pa

    column = pa.array(values, type=pa.bool_())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _column(dataset: datasets.Dataset, name: str, row_map: np.ndarray | None) -> np.ndarray:
    column = dataset.data.column(name)
    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} nulls; fill or drop them")
    values = column.to_numpy()
    return values if row_map is None else values[row_map]


def column_strata(dataset: datasets.Dataset, column: str | None,
                  like: datasets.Dataset | None = None,
                  names: tuple[str, str] = ("dataset", "stratify_like")) -> dict[str, np.ndarray]:
    """`select_indices`' strata keywords (``strata``, ``stratum_weights``) from the label
    column `column` of `dataset` (rows as the user sees them), weighted by the labels' counts
    in `like` (default: in `dataset`); {} without a column. Raises ValueError starting
    ``stratify_by_column=<column>:`` where a dataset (called by its ``names``) lacks it."""
    return _strata(dataset, tables.row_map(dataset), column, like, names)


def _strata(dataset: datasets.Dataset, row_map: np.ndarray | None, column: str | None,
            like: datasets.Dataset | None, names: tuple[str, str]) -> dict[str, np.ndarray]:
    if column is None:
        if like is not None:
            raise ValueError("stratify_like needs stratify_by_column: name the label column")
        return {}
    for data, arg in zip((dataset, like), names, strict=True):
        if data is not None and column not in data.column_names:
            raise ValueError(f"stratify_by_column={column!r}: {arg} has no such column; "
                             f"its columns: {data.column_names}")
    prefix = f"stratify_by_column={column!r}: "
    try:
        values = _column(dataset, column, row_map)
        like_values = values if like is None else _column(like, column, tables.row_map(like))
    except ValueError as e:  # nulls
        raise ValueError(prefix + str(e)) from e
    for v in (values, like_values):
        if v.dtype == object and v.size and not np.isscalar(v[0]):
            raise ValueError(f"{prefix}it holds {type(v[0]).__name__} values; give a column "
                             "of scalar labels (str or int)")
    try:
        strata, weights = label_strata(values, like_values)
    except TypeError as e:  # labels of several types
        raise ValueError(f"{prefix}its labels are of several types ({e}); give labels of one "
                         "type (str or int) in every dataset") from e
    return {"strata": strata, "stratum_weights": weights}


def label_strata(labels: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`select_indices`' strata from scalar ``labels`` (N,): the stratum id int64 (N,) of each
    row's label, and the weights int64 (S,): each label's count in ``like`` (M,) (e.g. the
    validation set's labels; 0 for labels it lacks)."""
    values, inverse = np.unique(np.concatenate([labels, like]), return_inverse=True)
    n = len(labels)
    return (inverse[:n].astype(np.int64),
            np.bincount(inverse[n:], minlength=values.size).astype(np.int64))


def select_by_score(
    dataset: datasets.Dataset,
    n: int,
    *,
    score_column: str = "tov_score",
    length_column: str = "tov_num_tokens",
    num_bins: int = 10,
    random_fraction: float = 0.5,
    random_pool: np.ndarray | None = None,
    seed: int = 0,
    keep_all: bool = False,
    mark_from_score: bool = False,
    stratify_by_column: str | None = None,
    stratify_like: datasets.Dataset | None = None,
) -> datasets.Dataset:
    """Select `n` rows of `dataset` with :func:`select_indices` on two of its columns.

    ``stratify_by_column``: a column of scalar labels (e.g. a classification answer); the
    scored part and the random part each keep each label's share of ``stratify_like`` (a
    dataset with that column, e.g. the validation set; labels it lacks get no rows) or,
    without it, of ``dataset`` itself: the top scores within each label, and a uniform draw
    within each label.

    Returns a new flat in-memory dataset (no indices mapping, all columns, rows in ascending
    order); with ``keep_all=True`` all rows plus a bool column ``tov_selected`` (replaced if
    present); with ``mark_from_score=True`` (and not ``keep_all``) a bool column
    ``tov_from_score``: True for the rows chosen by score, False for the random part
    (replaced if present). `random_pool` holds row indices of `dataset` as seen by the user.
    The input dataset is not modified.
    """
    import datasets
    import xxhash

    missing = [c for c in (score_column, length_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset has no column {missing}; columns present: {dataset.column_names}; "
            "pass score_column= / length_column="
        )
    row_map = tables.row_map(dataset)
    scores = _column(dataset, score_column, row_map)
    lengths = _column(dataset, length_column, row_map)
    strata = _strata(dataset, row_map, stratify_by_column, stratify_like,
                     ("dataset", "stratify_like"))
    idx = select_indices(scores, lengths, n, num_bins=num_bins, random_fraction=random_fraction,
                         random_pool=random_pool, seed=seed, **strata)
    table = dataset.data.table
    info = dataset.info.copy()
    if keep_all:
        if row_map is not None:
            table = table.take(row_map)
        selected = np.zeros(len(dataset), dtype=bool)
        selected[idx] = True
        table = _put_column(table, SELECTED_COLUMN, selected)
        info.features[SELECTED_COLUMN] = datasets.Value("bool")
    else:
        table = table.take(idx if row_map is None else row_map[idx])
        if mark_from_score:
            n_scored = n - random_count(n, random_fraction)
            by_score = (  # the scored part alone: the same bins, quotas and thresholds
                select_indices(scores, lengths, n_scored, num_bins=num_bins, random_fraction=0,
                               **strata)
                if n_scored else np.empty(0, np.int64)
            )
            table = _put_column(table, FROM_SCORE_COLUMN, np.isin(idx, by_score))
            info.features[FROM_SCORE_COLUMN] = datasets.Value("bool")
    # xxhash: a datasets dependency
    digest = xxhash.xxh64(f"{dataset._fingerprint}:{keep_all}:{mark_from_score}".encode())
    digest.update(idx.tobytes())  # deterministic, and no hashing of the whole table
    return datasets.Dataset(table, info=info, split=dataset.split, fingerprint=digest.hexdigest())


@dataclass(frozen=True, eq=False)  # eq=False: == on the counts array is ambiguous
class SelectionOverlap:
    """How much named selections share.

    names: the selections' names, in the order given. counts: int64 (K, K), symmetric:
    ``counts[i, j]`` = rows in both selection ``names[i]`` and ``names[j]``; the diagonal
    holds each selection's size. union: rows in at least one selection.
    """

    names: tuple[str, ...]
    counts: np.ndarray
    union: int

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{name_i: {name_j: counts[i, j]}}`` (plain ints, e.g. for JSON)."""
        return {a: {b: int(self.counts[i, j]) for j, b in enumerate(self.names)}
                for i, a in enumerate(self.names)}


def selection_overlap(selections: Mapping[str, np.ndarray]) -> SelectionOverlap:
    """The shared-row counts of K >= 1 named selections, each a 1-D array of distinct
    non-negative integer row indices (any order)."""
    if not selections:
        raise ValueError("selections: give at least one named selection")
    names = tuple(selections)
    arrays = []
    for name in names:
        rows = np.asarray(selections[name])
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(
                f"selections[{name!r}] must be a 1-D array of integer row indices, got dtype "
                f"{rows.dtype} and shape {rows.shape}"
            )
        rows = rows.astype(np.int64, copy=False)
        if rows.size and rows.min() < 0:
            raise ValueError(f"selections[{name!r}] has negative row indices")
        if np.unique(rows).size != rows.size:
            raise ValueError(f"selections[{name!r}] holds a row more than once")
        arrays.append(rows)
    union, column = np.unique(np.concatenate(arrays), return_inverse=True)
    member = np.zeros((len(names), union.size), dtype=np.int64)
    member[np.repeat(np.arange(len(names)), [a.size for a in arrays]), column] = 1
    return SelectionOverlap(names=names, counts=member @ member.T, union=int(union.size))
