"""Length-binned Score+Random selection: properties against an independent reference."""

from __future__ import annotations

import math
from fractions import Fraction

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tov_datasets.select import length_bins, select_by_score, select_indices, selection_overlap

SETTINGS = settings(max_examples=80, deadline=None)


# ---------------------------------------------------------------- independent reference


def ref_bins(lengths, num_bins):
    """Eligible rows ordered by (length, index), cut into equal-count bins."""
    order = sorted(
        (i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: (lengths[i], i)
    )
    m = len(order)
    return [order[b * m // num_bins : (b + 1) * m // num_bins] for b in range(num_bins)]


def ref_quotas(bins, n_scored):
    m = sum(len(b) for b in bins)
    exact = [Fraction(n_scored * len(b), m) for b in bins]
    quotas = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(bins)), key=lambda b: (-(exact[b] - quotas[b]), b))
    for b in by_remainder[: n_scored - sum(quotas)]:
        quotas[b] += 1
    return quotas


def n_random_of(n, random_fraction):
    return math.floor(random_fraction * n + 0.5)


def reference(scores, lengths, n, num_bins, random_fraction, pool, seed):
    """Plain loops and sorts; None where too few rows are left for the random part."""
    n_random = n_random_of(n, random_fraction)
    bins = ref_bins(lengths, num_bins)
    chosen = set()
    for rows, q in zip(bins, ref_quotas(bins, n - n_random), strict=True):
        chosen.update(sorted(rows, key=lambda i: (-float(scores[i]), i))[:q])
    if n_random:
        pool = range(len(scores)) if pool is None else pool
        candidates = sorted(i for i in set(pool) if lengths[i] > 0 and i not in chosen)
        if len(candidates) < n_random:
            return None
        rng = np.random.default_rng(seed)
        picked = rng.choice(np.array(candidates, dtype=np.int64), size=n_random, replace=False)
        chosen.update(picked.tolist())
    return np.array(sorted(chosen), dtype=np.int64)


# ---------------------------------------------------------------- strategies


@st.composite
def problems(draw):
    size = draw(st.integers(1, 40))
    lengths = np.array(draw(st.lists(st.integers(0, 6), min_size=size, max_size=size)))
    n_eligible = int((lengths > 0).sum())
    assume(n_eligible > 0)
    value = st.sampled_from([-1.0, 0.0, 0.5, 2.5]) | st.floats(-1e3, 1e3, width=32)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scores = np.array(draw(st.lists(value, min_size=size, max_size=size)), dtype=dtype)
    if draw(st.booleans()):
        scores[lengths == 0] = np.nan  # ignored: rows without tokens are never chosen
    pool = draw(st.none() | st.lists(st.integers(0, size - 1), unique=True))
    return dict(
        scores=scores,
        lengths=lengths.astype(draw(st.sampled_from([np.int32, np.int64]))),
        n=draw(st.integers(1, n_eligible)),
        num_bins=draw(st.integers(1, 8)),
        random_fraction=draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1)),
        random_pool=None if pool is None else np.array(pool, dtype=np.int64),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def run(p):
    return select_indices(
        p["scores"],
        p["lengths"],
        p["n"],
        num_bins=p["num_bins"],
        random_fraction=p["random_fraction"],
        random_pool=p["random_pool"],
        seed=p["seed"],
    )


def run_ref(p):
    pool = None if p["random_pool"] is None else p["random_pool"].tolist()
    args = (p["n"], p["num_bins"], p["random_fraction"], pool, p["seed"])
    return reference(p["scores"], p["lengths"].tolist(), *args)


# ---------------------------------------------------------------- select_indices properties


@SETTINGS
@given(problems())
def test_matches_reference(p):
    expected = run_ref(p)
    if expected is None:
        with pytest.raises(ValueError, match="random part needs"):
            run(p)
    else:
        np.testing.assert_array_equal(run(p), expected)


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_properties(p, shuffler):
    assume(run_ref(p) is not None)
    idx = run(p)
    n, lengths, scores = p["n"], p["lengths"], p["scores"]
    assert idx.dtype == np.int64 and idx.shape == (n,)
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert np.all(lengths[idx] > 0)
    np.testing.assert_array_equal(run(p), idx)  # deterministic
    if p["random_pool"] is not None:  # the order of the pool does not matter
        shuffled = p["random_pool"].copy()
        shuffler.shuffle(shuffled)
        np.testing.assert_array_equal(run({**p, "random_pool": shuffled}), idx)

    n_random = n_random_of(n, p["random_fraction"])
    n_scored = n - n_random
    scored = set()
    if n_scored:
        scored = set(run({**p, "n": n_scored, "random_fraction": 0.0}).tolist())
    assert scored <= set(idx.tolist())
    random_part = set(idx.tolist()) - scored
    assert len(random_part) == n_random
    if p["random_pool"] is not None:
        assert random_part <= set(p["random_pool"].tolist())

    bins = ref_bins(lengths.tolist(), p["num_bins"])
    for rows, quota in zip(bins, ref_quotas(bins, n_scored), strict=True):
        taken = [i for i in rows if i in scored]
        left = [i for i in rows if i not in scored]
        assert len(taken) == quota
        if taken and left:
            low = min(scores[i] for i in taken)
            assert low >= max(scores[i] for i in left)
            # equal scores at the threshold go to the lower row index
            assert max(i for i in taken if scores[i] == low) < min(
                [i for i in left if scores[i] == low], default=len(scores)
            )


def test_plain_top_n():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 50, 2000).astype(np.float32)  # many ties
    lengths = rng.integers(1, 300, 2000)
    idx = select_indices(scores, lengths, 321, num_bins=1, random_fraction=0.0)
    np.testing.assert_array_equal(idx, np.sort(np.argsort(-scores, kind="stable")[:321]))


def test_larger_input_matches_reference():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=20_000).round(2)
    lengths = rng.integers(0, 400, 20_000)
    pool = rng.permutation(20_000)[:9000]
    for bins, frac in [(10, 0.5), (7, 0.3), (1, 0.0)]:
        idx = select_indices(
            scores, lengths, 6001, num_bins=bins, random_fraction=frac, random_pool=pool, seed=3
        )
        expected = reference(scores, lengths.tolist(), 6001, bins, frac, pool.tolist(), 3)
        np.testing.assert_array_equal(idx, expected)


def test_bins_correct_short_sample_bias():
    lengths = np.repeat(np.arange(1, 101), 10)  # 1000 rows, 100 per decile
    scores = -lengths.astype(np.float64)  # plain top-n would take only the shortest rows
    idx = select_indices(scores, lengths, 200, random_fraction=0.0)
    np.testing.assert_array_equal(np.bincount((lengths[idx] - 1) // 10), np.full(10, 20))


def test_huge_lengths_bin_like_small_ones():
    rng = np.random.default_rng(2)
    scores = rng.random(3000)
    lengths = rng.integers(0, 30, 3000)
    idx = select_indices(scores, lengths, 500, num_bins=6, seed=4)
    huge = np.where(lengths > 0, lengths * 10**12 + 7, 0)
    np.testing.assert_array_equal(select_indices(scores, huge, 500, num_bins=6, seed=4), idx)


def test_zero_length_rows_never_chosen():
    lengths = np.array([0, 3, 0, 2, 5, 0, 1])
    scores = np.array([np.nan, 1.0, np.inf, 0.0, 2.0, 9.0, 1.0])
    idx = select_indices(scores, lengths, 4, random_fraction=1.0, random_pool=np.arange(7))
    np.testing.assert_array_equal(idx, [1, 3, 4, 6])


def test_random_pool_too_small():
    scores, lengths = np.arange(10.0), np.ones(10, dtype=np.int64)
    with pytest.raises(ValueError, match="random_pool has only 1 eligible"):
        select_indices(scores, lengths, 4, random_fraction=0.5, random_pool=np.array([9, 0]))


# ---------------------------------------------------------------- bad input


GOOD = dict(scores=np.arange(6.0), lengths=np.array([1, 2, 0, 3, 4, 5]))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(n=0), "n must be >= 1"),
        (dict(n=-3), "n must be >= 1"),
        (dict(n=2.0), "n must be an integer"),
        (dict(n=6), "n=6 exceeds the 5 eligible rows"),
        (dict(scores=np.array([0, 1, np.nan, 3, 4, 5.0])), None),  # NaN at a length-0 row: ok
        (dict(scores=np.array([0, np.nan, 2, 3, 4, 5.0])), r"NaN or inf at rows \[1\]"),
        (dict(scores=np.array([0, 1, 2, -np.inf, 4, 5.0])), r"NaN or inf at rows \[3\]"),
        (dict(scores=np.arange(5.0)), "differ in size: 5 scores, 6 lengths"),
        (dict(scores=np.array(["a"] * 6)), "scores must be real numbers"),
        (dict(lengths=np.array([1, -2, 0, 3, 4, 5])), r"negative at rows \[1\]"),
        (dict(lengths=np.ones(6)), "lengths must be integer"),
        (dict(lengths=np.ones((6, 1), dtype=int)), "must be 1-D"),
        (dict(num_bins=0), "num_bins must be >= 1"),
        (dict(random_fraction=1.5), r"random_fraction must be in \[0, 1\]"),
        (dict(random_fraction=-0.1), r"random_fraction must be in \[0, 1\]"),
        (dict(random_fraction=float("nan")), r"random_fraction must be in \[0, 1\]"),
        (dict(random_pool=np.array([0, 6])), r"out of range \[0, 6\): \[6\]"),
        (dict(random_pool=np.array([-1, 2])), r"out of range \[0, 6\): \[-1\]"),
        (dict(random_pool=np.array([1, 3, 1])), r"duplicated indices: \[1\]"),
        (dict(random_pool=np.array([0.0, 1.0])), "random_pool must be a 1-D array of integer"),
    ],
)
def test_bad_input(change, match):
    kwargs = {**GOOD, "n": 2, **change}
    if match is None:
        assert select_indices(**kwargs).size == 2
    else:
        with pytest.raises(ValueError, match=match):
            select_indices(**kwargs)


# ---------------------------------------------------------------- select_by_score


def make_dataset(size=400, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 40, size).astype(np.int32)
    return datasets.Dataset.from_dict(
        {
            "id": np.arange(size),
            "text": [f"row {i}" for i in range(size)],
            "input_ids": [list(range(k)) for k in lengths],
            "tov_score": rng.normal(size=size).astype(np.float32),
            "tov_num_tokens": lengths,
        }
    )


def col(ds, name):
    return ds.flatten_indices().data.column(name).to_numpy()


def assert_rows(out, ds, idx):
    assert out._indices is None
    assert out.column_names == ds.column_names
    assert out.features == ds.features
    assert out.data.table.equals(ds.select(idx).flatten_indices().data.table)


def test_select_by_score_flat_and_matches_select_indices():
    ds = make_dataset()
    before = ds.data.table.to_pydict(), ds._fingerprint
    pool = np.arange(0, 400, 3)
    out = select_by_score(ds, 120, random_pool=pool, seed=5)
    idx = select_indices(
        col(ds, "tov_score"), col(ds, "tov_num_tokens"), 120, random_pool=pool, seed=5
    )
    assert_rows(out, ds, idx)
    np.testing.assert_array_equal(col(out, "id"), idx)
    assert (ds.data.table.to_pydict(), ds._fingerprint) == before  # input unchanged
    again = select_by_score(ds, 120, random_pool=pool, seed=5)
    assert again._fingerprint == out._fingerprint  # deterministic, so caches can be reused
    fingerprints = {
        select_by_score(ds, 120, random_pool=pool, seed=6)._fingerprint,
        select_by_score(ds, 120, random_pool=pool, seed=5, keep_all=True)._fingerprint,
        out._fingerprint,
        ds._fingerprint,
    }
    assert len(fingerprints) == 4


def test_select_by_score_through_indices_mapping():
    base = make_dataset()
    ds = base.shuffle(seed=1).select(range(300))  # rows reached through an indices mapping
    assert ds._indices is not None
    flat = ds.flatten_indices()
    pool = np.arange(100, 300)
    out = select_by_score(ds, 90, random_pool=pool, seed=2)
    assert_rows(
        out,
        flat,
        select_indices(
            col(flat, "tov_score"), col(flat, "tov_num_tokens"), 90, random_pool=pool, seed=2
        ),
    )
    assert out.data.table.equals(select_by_score(flat, 90, random_pool=pool, seed=2).data.table)
    assert ds._indices is not None and len(ds) == 300  # input unchanged


@pytest.mark.parametrize("mapped", [False, True])
def test_keep_all(mapped):
    ds = make_dataset()
    if mapped:
        ds = ds.select(np.arange(399, -1, -1))
    out = select_by_score(ds, 100, num_bins=4, keep_all=True)
    flat = ds.flatten_indices() if mapped else ds
    idx = select_indices(col(flat, "tov_score"), col(flat, "tov_num_tokens"), 100, num_bins=4)
    assert out._indices is None and len(out) == len(ds)
    assert out.column_names == ds.column_names + ["tov_selected"]
    assert out.features["tov_selected"] == datasets.Value("bool")
    np.testing.assert_array_equal(np.flatnonzero(col(out, "tov_selected")), idx)
    assert out.remove_columns("tov_selected").data.table.equals(flat.data.table)
    again = select_by_score(out, 50, num_bins=4, keep_all=True)  # replaces, never duplicates
    assert again.column_names == out.column_names
    assert sum(col(again, "tov_selected")) == 50
    assert "tov_selected" not in ds.column_names and "tov_selected" not in ds.features


@pytest.mark.parametrize("keep_all", [False, True])
def test_round_trip(tmp_path, keep_all):
    out = select_by_score(make_dataset(), 77, keep_all=keep_all)
    out.to_parquet(tmp_path / "sel.parquet")
    assert pq.read_table(tmp_path / "sel.parquet").equals(out.data.table)
    back = datasets.Dataset.from_parquet(
        str(tmp_path / "sel.parquet"), cache_dir=str(tmp_path / "cache")
    )
    assert back.features == out.features and back.to_dict() == out.to_dict()
    out.save_to_disk(tmp_path / "saved")
    back = datasets.load_from_disk(str(tmp_path / "saved"))
    assert back.features == out.features and back.data.table.equals(out.data.table)


def test_select_by_score_bad_input():
    ds = make_dataset()
    with pytest.raises(ValueError, match=r"no column \['score'\]; columns present: \['id'"):
        select_by_score(ds, 10, score_column="score")
    with pytest.raises(ValueError, match="n=1000 exceeds"):
        select_by_score(ds, 1000)
    with_null = datasets.Dataset.from_dict({"tov_score": [1.0, None], "tov_num_tokens": [1, 2]})
    with pytest.raises(ValueError, match="'tov_score' has 1 nulls"):
        select_by_score(with_null, 1)


def _reference_length_bins(lengths: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-count bins of the rows with length > 0 by (length, row), written directly:
    bin b holds ranks [b * m // B, (b + 1) * m // B)."""
    eligible = np.flatnonzero(lengths > 0)
    order = eligible[np.argsort(lengths[eligible], kind="stable")]
    bins = np.full(lengths.size, -1, dtype=np.int64)
    for b in range(num_bins):
        bins[order[b * order.size // num_bins : (b + 1) * order.size // num_bins]] = b
    return bins


@pytest.mark.parametrize("num_bins", [1, 3, 10])
def test_length_bins_are_the_bins_select_cuts(num_bins):
    """`length_bins` (what the report shows) equals a direct reference, and a per-bin top
    with random_fraction=0 takes its quota inside each of those bins."""
    rng = np.random.default_rng(num_bins)
    for lengths in (rng.integers(0, 6, 97), rng.integers(0, 1 << 23, 50) * 3):
        want = _reference_length_bins(lengths, num_bins)
        np.testing.assert_array_equal(length_bins(lengths, num_bins), want)
        scores = rng.normal(size=lengths.size)
        eligible = int((lengths > 0).sum())
        n = eligible // 2
        chosen = select_indices(scores, lengths, n, num_bins=num_bins, random_fraction=0)
        for b in range(num_bins):
            rows = np.flatnonzero(want == b)
            taken = np.intersect1d(chosen, rows)
            assert taken.size in (n * rows.size // eligible, n * rows.size // eligible + 1)
            top = rows[np.argsort(-scores[rows], kind="stable")][: taken.size]
            np.testing.assert_array_equal(np.sort(top), taken)


def test_selection_overlap_matches_sets():
    """Shared-row counts of K random selections (various sizes, orders, dtypes, one empty)
    against Python set intersections."""
    rng = np.random.default_rng(5)
    for k in (1, 2, 5):
        dtypes = (np.int64, np.int32, np.uint16)
        selections = {f"t{i}": rng.permutation(rng.choice(200, rng.integers(0, 60),
                                                          replace=False)).astype(dtypes[i % 3])
                      for i in range(k)}
        selections[f"t{k}"] = np.empty(0, np.int64)
        sets = {name: set(rows.tolist()) for name, rows in selections.items()}
        overlap = selection_overlap(selections)
        assert overlap.names == tuple(selections)
        assert overlap.counts.dtype == np.int64
        assert overlap.counts.tolist() == [[len(sets[a] & sets[b]) for b in sets] for a in sets]
        assert overlap.union == len(set().union(*sets.values()))
        assert overlap.as_dict() == {a: {b: len(sets[a] & sets[b]) for b in sets} for a in sets}


@pytest.mark.parametrize(
    ("selections", "match"),
    [
        ({}, "at least one named selection"),
        ({"a": np.array([[1, 2]])}, r"selections\['a'\] must be a 1-D array"),
        ({"a": np.array([1.0, 2.0])}, r"selections\['a'\] must be a 1-D array of integer"),
        ({"a": [1, 2], "b": [3, -1]}, r"selections\['b'\] has negative row indices"),
        ({"a": [1, 2, 1]}, r"selections\['a'\] holds a row more than once"),
    ],
)
def test_selection_overlap_bad_input(selections, match):
    with pytest.raises(ValueError, match=match):
        selection_overlap(selections)


# ---------------------------------------------------------------- strata


def ref_stratum_quotas(total, weights, sizes):
    """Exact fractions: largest remainder over the open strata; a stratum whose share
    reaches its size is taken whole and the split is redone over the others."""
    quotas, open_ = [0] * len(weights), [w > 0 for w in weights]
    while total:
        w_open = sum(w for w, o in zip(weights, open_, strict=True) if o)
        exact = [Fraction(total * w, w_open) if o else Fraction(0)
                 for w, o in zip(weights, open_, strict=True)]
        share = [math.floor(x) for x in exact]
        order = sorted(range(len(weights)), key=lambda k: (-(exact[k] - share[k]), k))
        for k in order[: total - sum(share)]:
            share[k] += 1
        full = [k for k in range(len(weights)) if open_[k] and share[k] >= sizes[k]]
        if not full:
            return [q + s for q, s in zip(quotas, share, strict=True)]
        for k in full:
            quotas[k], open_[k] = sizes[k], False
            total -= sizes[k]
    return quotas


def reference_strata(scores, lengths, n, num_bins, random_fraction, pool, seed, strata,
                     weights):
    """Per stratum, the length-binned top of its own rows; then the random part split over
    the strata the same way, each stratum's share its free rows of highest uniform key
    (``default_rng(seed).random(N)``). None where the strata hold too few rows."""
    n_random = n_random_of(n, random_fraction)
    size = len(weights) if weights is not None else max(strata, default=-1) + 1
    members = [[i for i in range(len(strata)) if strata[i] == k] for k in range(size)]
    sizes = [sum(1 for i in rows if lengths[i] > 0) for rows in members]
    weights = sizes if weights is None else weights

    def quotas(total, sizes):
        if sum(s for s, w in zip(sizes, weights, strict=True) if w > 0) < total:
            return None
        return ref_stratum_quotas(total, weights, sizes)

    scored = quotas(n - n_random, sizes)
    if scored is None:
        return None
    chosen = set()
    for rows, quota in zip(members, scored, strict=True):
        if quota:
            sub = reference(scores[rows], [lengths[i] for i in rows], quota, num_bins, 0.0,
                            None, seed)
            chosen.update(rows[j] for j in sub)
    if n_random:
        pool = set(range(len(scores)) if pool is None else pool)
        free = [[i for i in rows if i in pool and lengths[i] > 0 and i not in chosen]
                for rows in members]
        drawn = quotas(n_random, [len(rows) for rows in free])
        if drawn is None:
            return None
        keys = np.random.default_rng(seed).random(len(scores)).tolist()
        for rows, quota in zip(free, drawn, strict=True):
            chosen.update(sorted(rows, key=lambda i: (-keys[i], i))[:quota])
    return np.array(sorted(chosen), dtype=np.int64)


@st.composite
def stratified_problems(draw):
    p = draw(problems())
    size = p["scores"].size
    k = draw(st.integers(1, 4))
    p["strata"] = np.array(draw(st.lists(st.integers(-1, k - 1), min_size=size,
                                         max_size=size)), dtype=np.int64)
    p["stratum_weights"] = draw(st.none() | st.lists(st.integers(0, 5), min_size=k,
                                                      max_size=k).map(np.array))
    return p


@SETTINGS
@given(stratified_problems())
def test_strata_match_reference(p):
    weights = p["stratum_weights"]
    pool = None if p["random_pool"] is None else p["random_pool"].tolist()
    expected = reference_strata(p["scores"], p["lengths"].tolist(), p["n"], p["num_bins"],
                                p["random_fraction"], pool, p["seed"], p["strata"].tolist(),
                                None if weights is None else weights.tolist())

    def go():
        return select_indices(p["scores"], p["lengths"], p["n"], num_bins=p["num_bins"],
                              random_fraction=p["random_fraction"],
                              random_pool=p["random_pool"], seed=p["seed"],
                              strata=p["strata"], stratum_weights=weights)

    if expected is None:
        with pytest.raises(ValueError, match="selection needs|random part needs"):
            go()
    else:
        np.testing.assert_array_equal(go(), expected)


@SETTINGS
@given(problems())
def test_one_stratum_keeps_the_plain_scored_part(p):
    """All rows in one stratum: the scored part is the plain selection's; the random part
    draws the same number of rows from the same candidates (by its own keyed draw)."""
    assume(run_ref(p) is not None)
    strata = np.zeros(p["scores"].size, np.int64)
    got = select_indices(p["scores"], p["lengths"], p["n"], num_bins=p["num_bins"],
                         random_fraction=p["random_fraction"], random_pool=p["random_pool"],
                         seed=p["seed"], strata=strata)
    n_random = n_random_of(p["n"], p["random_fraction"])
    scored = (set(run({**p, "n": p["n"] - n_random, "random_fraction": 0.0}).tolist())
              if p["n"] > n_random else set())
    assert scored <= set(got.tolist()) and got.size == p["n"]
    pool = set(range(strata.size) if p["random_pool"] is None else p["random_pool"].tolist())
    assert set(got.tolist()) - scored <= pool


def test_stratified_random_part_is_uniform_within_each_stratum():
    """Over many seeds every free row of a stratum is drawn equally often: stratum 0 (4
    free rows of 5 after the scored part) gets 1 random row, stratum 1 (4 free rows in the
    random pool) gets 2."""
    lengths = np.full(12, 3)
    scores = np.arange(12, dtype=np.float64)
    strata = np.array([0] * 5 + [1] * 7)
    pool = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11])
    counts = np.zeros(12)
    trials = 3000
    for seed in range(trials):
        idx = select_indices(scores, lengths, 6, num_bins=1, random_pool=pool, seed=seed,
                             strata=strata, stratum_weights=np.array([1, 2]))
        counts[idx] += 1
    # scored: 3 rows as 1:2 -> row 4 (stratum 0's top), rows 10, 11 (stratum 1's top two)
    np.testing.assert_array_equal(counts[[4, 10, 11]], trials)
    assert counts[5] == 0  # stratum 1 row outside the random pool
    # random: 3 rows as 1:2 -> 1 of rows 0-3 (each 1/4), 2 of rows 6-9 (each 1/2)
    np.testing.assert_allclose(counts[:4] / trials, 0.25, atol=0.04)
    np.testing.assert_allclose(counts[6:10] / trials, 0.5, atol=0.04)


def test_stratum_quotas_cap_and_resplit():
    from tov_datasets.select import stratum_quotas

    # shares 6/2/2 of 10; stratum 0 holds 3 rows, so it is taken whole and 7 split 1:1
    np.testing.assert_array_equal(
        stratum_quotas(10, np.array([3, 1, 1]), np.array([3, 50, 50])), [3, 4, 3])
    np.testing.assert_array_equal(
        stratum_quotas(5, np.array([0, 2, 2]), np.array([9, 9, 9])), [0, 3, 2])
    with pytest.raises(ValueError, match="scored part needs 5 rows but the strata of weight"):
        stratum_quotas(5, np.array([1, 0]), np.array([4, 9]))
    with pytest.raises(ValueError, match="random part needs 5 rows .* of random_pool not "
                                         "already chosen by score; pass a larger random_pool"):
        stratum_quotas(5, np.array([1, 0]), np.array([4, 9]), "random part")


def test_select_by_score_stratified_like_validation():
    rng = np.random.default_rng(7)
    ds = make_dataset(600, seed=3)
    labels = rng.choice(["a", "b", "c", "d"], size=600)
    ds = ds.add_column("label", labels.tolist())
    val = datasets.Dataset.from_dict({"label": ["a"] * 6 + ["b"] * 3 + ["c"] * 1})
    out = select_by_score(ds, 80, stratify_by_column="label", stratify_like=val,
                          random_fraction=0.5, seed=2, mark_from_score=True)
    scored = np.asarray(out["label"])[np.asarray(out["tov_from_score"])]
    assert sorted(scored.tolist()) == ["a"] * 24 + ["b"] * 12 + ["c"] * 4  # 40 as 6:3:1
    # the random part in the same quotas: the whole pick keeps the validation shares
    assert sorted(out["label"]) == ["a"] * 48 + ["b"] * 24 + ["c"] * 8
    ids = col(out, "id")
    eligible = col(ds, "tov_num_tokens") > 0
    for label in "abc":  # within a label: its top scores over its own length bins
        rows = np.flatnonzero(labels == label)
        sub = select_indices(col(ds, "tov_score")[rows], col(ds, "tov_num_tokens")[rows],
                             int((scored == label).sum()), random_fraction=0.0)
        assert set(rows[sub]) <= set(ids)
    assert eligible[ids].all()
    # without stratify_like the labels keep their shares of the dataset itself
    plain = select_by_score(ds, 80, stratify_by_column="label", random_fraction=0.0)
    codes = np.unique(labels, return_inverse=True)[1]
    expected = ref_stratum_quotas(80, np.bincount(codes).tolist(),
                                  np.bincount(codes[eligible]).tolist())
    got = np.unique(np.asarray(plain["label"]), return_inverse=True)[1]
    assert np.bincount(got, minlength=4).tolist() == expected


@pytest.mark.parametrize("kwargs, match", [
    (dict(stratify_by_column="nope"), "stratify_by_column='nope': dataset has no such"),
    (dict(stratify_like=datasets.Dataset.from_dict({"x": [1]})),
     "stratify_like needs stratify_by_column"),
    (dict(stratify_by_column="label", stratify_like=datasets.Dataset.from_dict({"x": [1]})),
     "stratify_like has no such column"),
    (dict(stratify_by_column="input_ids"), "'input_ids': it holds (ndarray|list) values"),
    (dict(stratify_by_column="label", stratify_like=datasets.Dataset.from_dict({"label": [1]})),
     "'label': its labels are of several types"),
    (dict(stratify_by_column="label",
          stratify_like=datasets.Dataset.from_dict({"label": ["a", None]})),
     "'label': column 'label' has 1 nulls"),
    (dict(stratify_by_column="label",
          stratify_like=datasets.Dataset.from_dict({"label": ["zzz"]})),
     r"the selection needs n=10 rows but the strata of weight > 0 hold only 0 eligible rows "
     r"\(length > 0\), and every row chosen, by score or at random, lies in one"),
])
def test_select_by_score_strata_bad_input(kwargs, match):
    ds = make_dataset(40).add_column("label", ["a", "b"] * 20)
    with pytest.raises(ValueError, match=match):
        select_by_score(ds, 10, **kwargs)


@pytest.mark.parametrize("change, match", [
    (dict(strata=np.zeros(5, np.int64)), "one integer stratum id per row"),
    (dict(strata=np.zeros(6)), "one integer stratum id per row"),
    (dict(strata=np.array([0, 1, -2, 0, 1, 0])), "strata must be >= -1"),
    (dict(strata=np.array([0, 1, 2, 0, 1, 0]), stratum_weights=np.array([1, 1])),
     "strata has id 2 but stratum_weights only 2"),
    (dict(strata=np.zeros(6, np.int64), stratum_weights=np.array([-1])), "must be >= 0"),
    (dict(strata=np.zeros(6, np.int64), stratum_weights=np.array([0.5])), "integer counts"),
    (dict(stratum_weights=np.array([1])), "stratum_weights needs strata"),
])
def test_strata_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        select_indices(**{**GOOD, "n": 2, "random_fraction": 0.0, **change})
