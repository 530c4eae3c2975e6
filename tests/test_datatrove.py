"""examples/datatrove_pipeline.py end to end on a tiny saved model with LocalPipelineExecutor
(2 tasks in 2 worker processes, which get the steps pickled): every document scored once with
the scores of ToVScorer, and the selected documents are those of select_by_score on the same
scores. Workers start by "fork" (they reuse the test's imports: ~4 s, not ~60 s)."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from tests import tiny
from tests.test_pipelines import save_tiny_model
from tov_datasets.integrations.datatrove import ToVScoreStep, ToVSelectFilter, selected_ids
from tov_datasets.pipelines import make_tov_score
from tov_datasets.scorer import NUM_TOKENS, SCORE
from tov_datasets.select import select_by_score

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "datatrove_pipeline.py"
N = 9


def _example():
    spec = importlib.util.spec_from_file_location("datatrove_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_input(folder: Path) -> dict[str, str]:
    """Two Parquet shards of random texts (some empty or one word): {id: text}."""
    rng = random.Random(0)
    texts = {f"doc{i:02d}": " ".join(rng.choices(tiny.WORDS, k=rng.choice([0, 1, 3, 6, 12])))
             for i in range(30)}
    folder.mkdir()
    items = list(texts.items())
    for shard in range(2):
        rows = items[shard::2]
        pq.write_table(pa.table({"id": [i for i, _ in rows], "text": [t for _, t in rows]}),
                       folder / f"part{shard}.parquet")
    return {i: t for i, t in texts.items() if t}  # datatrove readers skip empty texts


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))


def test_example_pipeline_selects_like_select_by_score(tmp_path):
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model")
    texts = _write_input(tmp_path / "input")
    work = tmp_path / "work"
    _example().build(tmp_path / "input", work, N, model=model_dir, base_adapter=base_dir,
                     val_adapter=val_dir, tasks=2, start_method="fork", torch_threads=1).run()

    scored = _read(work / "scores")
    ids = scored.column("id").to_pylist()
    assert sorted(ids) == sorted(texts)  # each document scored once, by one of the two tasks
    metadata = scored.column("metadata").combine_chunks()
    ds = Dataset.from_dict({
        "id": ids,
        SCORE: metadata.field(SCORE).to_numpy(),
        NUM_TOKENS: metadata.field(NUM_TOKENS).to_numpy(),
    })
    reference = make_tov_score(model_dir, base_adapter=base_dir, val_adapter=val_dir)(
        {"text": [texts[i] for i in ids]})
    np.testing.assert_allclose(ds[SCORE], reference[SCORE], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds[NUM_TOKENS], reference[NUM_TOKENS])

    expected = select_by_score(ds, N)["id"]
    assert sorted(_read(work / "selected").column("id").to_pylist()) == sorted(expected)
    assert selected_ids(work / "scores", N) == frozenset(expected)


def test_expanded_metadata_and_errors(tmp_path):
    (tmp_path / "scores").mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"],
                             SCORE: [0.1, 0.3, 0.2], NUM_TOKENS: [2, 0, 2]}),
                   tmp_path / "scores" / "0.parquet")
    assert selected_ids(tmp_path / "scores", 1, num_bins=1, random_fraction=0) == {"c"}
    with pytest.raises(ValueError, match="exceeds the 2 eligible rows"):
        selected_ids(tmp_path / "scores", 3)
    with pytest.raises(ValueError, match="run the scoring pass first"):
        ToVSelectFilter(tmp_path / "missing", 1).filter(None)
    pq.write_table(pq.read_table(tmp_path / "scores" / "0.parquet"),
                   tmp_path / "scores" / "1.parquet")
    with pytest.raises(ValueError, match="not unique"):
        selected_ids(tmp_path / "scores", 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ToVScoreStep("m", "b", "v", batch_size=0)


def test_several_targets_score_once_and_select_per_target(tmp_path):
    """val_adapter={name: directory}: each Document gets tov_score_<name> for every target,
    equal to the single-target scores; selected_ids selects by the column it is given."""
    from datatrove.data import Document

    from tov_datasets.scorer import score_column

    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model", more_targets=["other"])
    targets = {"val": str(val_dir), "other": str(val_dir.parent / "other")}
    texts = _write_input(tmp_path / "input")
    step = ToVScoreStep(str(model_dir), str(base_dir), targets, batch_size=7)
    docs = list(step.run(Document(text=t, id=i) for i, t in texts.items()))
    assert [d.id for d in docs] == list(texts)
    columns = {"id": list(texts)}
    for name, directory in targets.items():
        column = score_column(name)
        reference = make_tov_score(model_dir, base_adapter=base_dir, val_adapter=directory)(
            {"text": list(texts.values())})
        got = np.array([d.metadata[column] for d in docs])
        np.testing.assert_allclose(got, reference[SCORE], rtol=1e-5, atol=1e-6)
        assert [d.metadata[NUM_TOKENS] for d in docs] == list(reference[NUM_TOKENS])
        columns[column] = got
    assert SCORE not in docs[0].metadata
    columns[NUM_TOKENS] = [d.metadata[NUM_TOKENS] for d in docs]
    (tmp_path / "scores").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "scores" / "0.parquet")
    ds = Dataset.from_dict(columns)
    for name in targets:
        expected = select_by_score(ds, N, score_column=score_column(name))["id"]
        assert selected_ids(tmp_path / "scores", N, score_column=score_column(name)) == set(
            expected)
    with pytest.raises(ValueError, match="tov_score_other"):
        selected_ids(tmp_path / "scores", N)  # no tov_score: the error names the columns
