"""Ray Data scoring on a local 2-CPU Ray instance equals the Dataset.map path."""

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from tests import tiny
from tov_datasets.ray import RayToVScorer, read_scores, score_parquet, select_from_scores
from tov_datasets.scorer import ToVScorer
from tov_datasets.select import select_by_score

TEXTS = [
    "the king of france was in paris",
    "a prime number is a number",
    "the river and the city",
    "hello world",
    "math theorem proof algebra geometry and number theory",
    "the team player won the game",
    "star planet energy",
    "the court and the law of the market",
    "music film song album",
    "cell gene protein",
    "yes",
    "question answer user assistant system question answer",
]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny Llama and tokenizer saved as a model directory, plus two adapter directories."""
    root = tmp_path_factory.mktemp("model")
    tok = tiny.tokenizer()
    model = tiny.causal_lm_with_adapters(tok)
    model.save_pretrained(root / "adapters")  # one directory per adapter: base/, val/
    plain = tiny.causal_lm(tok)  # same seed: the same base weights
    plain.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model", root / "adapters" / "base", root / "adapters" / "val", model, tok


def pool_dataset():
    return datasets.Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS})


def test_ray_scores_equal_dataset_map(ray_local, saved_model, tmp_path):
    model_dir, base_dir, val_dir, peft_model, tok = saved_model
    expected = pool_dataset().map(ToVScorer(peft_model, tok, batch_size=4), batched=True,
                                  batch_size=5)
    pool_path = tmp_path / "pool.parquet"
    pq.write_table(pool_dataset().data.table, pool_path)
    out = tmp_path / "scored"
    score_parquet(pool_path, out, model=str(model_dir), base_adapter=str(base_dir),
                  val_adapter=str(val_dir), batch_size=5, concurrency=2, num_cpus=0.5)
    got = read_scores(out).sort_by("id")
    # Ray's batches pad differently from Dataset.map's: float32 sums differ by ~1 ulp of a
    # log-prob, hence atol 1e-6 on scores of magnitude 1e-2..1.
    assert got.column("id").to_pylist() == list(range(len(TEXTS)))
    assert got.column("text").to_pylist() == TEXTS
    np.testing.assert_allclose(got.column("tov_score").to_numpy(),
                               np.asarray(expected["tov_score"]), rtol=1e-5, atol=1e-6)
    assert got.column("tov_num_tokens").to_pylist() == expected["tov_num_tokens"]

    selected = select_from_scores(out, 6, seed=3)
    reference = select_by_score(datasets.Dataset(read_scores(out)), 6, seed=3)
    assert selected.data.table.equals(reference.data.table)
    assert selected.num_rows == 6 and set(selected.column_names) >= {"id", "text", "tov_score"}


def test_tov_scorer_as_callable_class(ray_local, tiny_tokenizer):
    """The issue's form: map_batches(ToVScorer, fn_constructor_kwargs=...) with objects."""
    model = tiny.causal_lm_with_adapters(tiny_tokenizer)
    expected = pool_dataset().map(ToVScorer(model, tiny_tokenizer), batched=True)
    ds = ray.data.from_arrow(pool_dataset().data.table)
    scored = ds.map_batches(ToVScorer, fn_constructor_kwargs={"model": model,
                                                              "tokenizer": tiny_tokenizer},
                            batch_size=4, batch_format="numpy", concurrency=1, num_cpus=0.5)
    rows = sorted(scored.take_all(), key=lambda r: r["id"])
    np.testing.assert_allclose([r["tov_score"] for r in rows], expected["tov_score"],
                               rtol=1e-5, atol=1e-6)


def test_ray_scorer_accepts_pyarrow_and_numpy(saved_model):
    model_dir, base_dir, val_dir, _, _ = saved_model
    scorer = RayToVScorer(str(model_dir), str(base_dir), str(val_dir))
    table = pa.table({"text": TEXTS[:3]})
    out = scorer(table)
    assert isinstance(out, pa.Table) and out.column_names == ["text", "tov_score",
                                                              "tov_num_tokens"]
    out_np = scorer({"text": np.array(TEXTS[:3], dtype=object)})
    np.testing.assert_array_equal(out_np["tov_score"], out.column("tov_score").to_numpy())


def test_score_parquet_with_several_targets(ray_local, tmp_path):
    """val_adapter={name: directory}: one tov_score_<name> column per target, each equal to
    the single-target scores; select_from_scores selects per target column."""
    from tests.test_pipelines import save_tiny_model
    from tov_datasets.pipelines import make_tov_score
    from tov_datasets.scorer import score_column

    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model", more_targets=["other"])
    targets = {"val": str(val_dir), "other": str(val_dir.parent / "other")}
    pool_path = tmp_path / "pool.parquet"
    pq.write_table(pool_dataset().data.table, pool_path)
    score_parquet(pool_path, tmp_path / "scored", model=str(model_dir),
                  base_adapter=str(base_dir), val_adapter=targets, batch_size=5,
                  concurrency=1, num_cpus=0.5)
    got = read_scores(tmp_path / "scored").sort_by("id")
    assert "tov_score" not in got.column_names
    for name, directory in targets.items():
        single = make_tov_score(str(model_dir), base_adapter=str(base_dir),
                                val_adapter=directory)({"text": TEXTS})
        np.testing.assert_allclose(got.column(score_column(name)).to_numpy(),
                                   single["tov_score"], rtol=1e-5, atol=1e-6)
        selected = select_from_scores(tmp_path / "scored", 6, seed=3,
                                      score_column=score_column(name))
        reference = select_by_score(datasets.Dataset(read_scores(tmp_path / "scored")), 6,
                                    seed=3, score_column=score_column(name))
        assert selected.data.table.equals(reference.data.table)
