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


def _check_example_run(work: Path, texts: dict[str, str], model_dir: Path, base_dir: Path,
                       targets: dict[str, Path], selected_by: str,
                       scorer_options: dict | None = None) -> None:
    """Each document scored once with, per score column (``targets``: {column: val adapter
    directory}), the scores of make_tov_score (with ``scorer_options``); the selected
    documents are select_by_score's by the column ``selected_by``."""
    scored = _read(work / "scores")
    ids = scored.column("id").to_pylist()
    assert sorted(ids) == sorted(texts)  # each document scored once, by one of the two tasks
    metadata = scored.column("metadata").combine_chunks()
    assert sorted(c for c in metadata.type.names if c.startswith(SCORE)) == sorted(targets)
    ds = Dataset.from_dict({"id": ids, NUM_TOKENS: metadata.field(NUM_TOKENS).to_numpy(),
                           **{column: metadata.field(column).to_numpy() for column in targets}})
    for column, val_dir in targets.items():
        reference = make_tov_score(model_dir, base_adapter=base_dir, val_adapter=val_dir,
                                   **(scorer_options or {}))({"text": [texts[i] for i in ids]})
        np.testing.assert_allclose(ds[column], reference[SCORE], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ds[NUM_TOKENS], reference[NUM_TOKENS])

    expected = select_by_score(ds, N, score_column=selected_by)["id"]
    assert sorted(_read(work / "selected").column("id").to_pylist()) == sorted(expected)
    assert selected_ids(work / "scores", N, score_column=selected_by) == frozenset(expected)


def test_example_pipeline_selects_like_select_by_score(tmp_path):
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model")
    texts = _write_input(tmp_path / "input")
    work = tmp_path / "work"
    _example().build(tmp_path / "input", work, N, model=model_dir, base_adapter=base_dir,
                     val_adapter=val_dir, tasks=2, start_method="fork", torch_threads=1).run()
    _check_example_run(work, texts, model_dir, base_dir, {SCORE: val_dir}, SCORE)


def test_example_pipeline_with_several_targets_selects_for_the_target(tmp_path):
    """val_adapter={name: directory}: every target's column, the selection by --target's.
    The signed score (scorer_options, passed to each worker's scorer, pinned whatever the
    default F): under F = abs these two tiny random adapters rank the rows alike (|delta|
    follows the row more than the adapter: rank correlation 0.92 against 0.31 signed), so
    their selections coincide and could not tell the targets apart."""
    from tov_datasets.scorer import score_column

    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model", more_targets=["other"])
    targets = {"val": val_dir, "other": val_dir.parent / "other"}
    texts = _write_input(tmp_path / "input")
    work = tmp_path / "work"
    options = {"transform": "identity"}
    _example().build(tmp_path / "input", work, N, model=model_dir, base_adapter=base_dir,
                     val_adapter=targets, target="other", tasks=2, start_method="fork",
                     torch_threads=1, scorer_options=options).run()
    _check_example_run(work, texts, model_dir, base_dir,
                       {score_column(name): path for name, path in targets.items()},
                       score_column("other"), options)
    assert selected_ids(work / "scores", N, score_column=score_column("val")) != selected_ids(
        work / "scores", N, score_column=score_column("other"))  # the target decides


def test_example_command_line_val_adapters_and_target(tmp_path, monkeypatch, capsys):
    """--val-adapter DIR (today's run), NAME=DIR each with --target NAME; wrong combinations
    end with argparse's one-line usage error (exit 2) naming the option."""
    example = _example()
    calls = []

    class Executor:
        def run(self):
            calls[-1]["ran"] = True

    def build(*args, **options):
        calls.append(options)
        return Executor()

    monkeypatch.setattr(example, "build", build)
    (tmp_path / "a=b").mkdir()
    common = ["--input", "in", "--work", "w", "-n", "3", "--model", "m", "--base-adapter", "b"]
    example.main([*common, "--val-adapter", "v"])
    assert calls[-1]["val_adapter"] == "v" and calls[-1]["target"] is None
    assert calls[-1]["ran"]
    example.main([*common, "--val-adapter", str(tmp_path / "a=b")])  # a directory named a=b
    assert calls[-1]["val_adapter"] == str(tmp_path / "a=b")
    example.main([*common, "--val-adapter", "code=c", "--val-adapter", "math=m",
                  "--target", "math"])
    assert calls[-1]["val_adapter"] == {"code": "c", "math": "m"}
    assert calls[-1]["target"] == "math"
    assert example.selected_column(calls[-1]["val_adapter"], "math") == "tov_score_math"
    assert example.selected_column({"code": "c"}, None) == "tov_score_code"
    assert example.selected_column("v", None) == SCORE
    count = len(calls)
    for extra, message in (
        (["--val-adapter", "v", "--val-adapter", "w"], "name each of several adapters"),
        (["--val-adapter", "code=c", "--val-adapter", "v"], "name each of several adapters"),
        (["--val-adapter", "code="], "name each of several adapters"),
        (["--val-adapter", "a=c", "--val-adapter", "a=d", "--target", "a"],
         "--val-adapter: names ['a'] appear more than once"),
        (["--val-adapter", "a.b=c", "--val-adapter", "d=e", "--target", "d"],
         "--val-adapter: 'a.b' cannot name a score column"),
        (["--val-adapter", "a=c", "--val-adapter", "d=e"],
         "several targets ['a', 'd']: name the one to select for (--target)"),
        (["--val-adapter", "a=c", "--val-adapter", "d=e", "--target", "x"],
         "target 'x' is not one of the targets ['a', 'd']"),
        (["--val-adapter", "v", "--target", "x"], "target 'x': name the adapters"),
    ):
        with pytest.raises(SystemExit) as done:
            example.main([*common, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and message in err[-1], err
    assert len(calls) == count  # nothing built


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
