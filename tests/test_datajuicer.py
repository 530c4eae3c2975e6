"""examples/datajuicer_recipe.yaml through Data-Juicer's DefaultExecutor on a tiny saved model:
the exported rows are those of select_by_score on ToVScorer's scores, with the scores in the
stats. Data-Juicer pins dill 0.3.8, so it lives in its own venv: `make datajuicer-test`."""

from pathlib import Path

import pytest

pytest.importorskip("data_juicer", reason="Data-Juicer has its own venv: make datajuicer-test")

import jsonlines  # noqa: E402
import yaml  # noqa: E402
from data_juicer.config import init_configs  # noqa: E402
from data_juicer.core import DefaultExecutor  # noqa: E402
from datasets import Dataset  # noqa: E402

from tests.test_pipelines import TEXTS, save_tiny_model  # noqa: E402
from tov_datasets.integrations.datajuicer import OP_NAME, ToVFilter  # noqa: E402
from tov_datasets.pipelines import make_tov_score  # noqa: E402
from tov_datasets.scorer import NUM_TOKENS, SCORE  # noqa: E402
from tov_datasets.select import select_by_score  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "datajuicer_recipe.yaml"


def test_recipe_selects_like_select_by_score(tmp_path):
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model")
    rows = [{"id": f"r{i}", "text": f"{text} {extra}".strip()}
            for i, (text, extra) in enumerate((t, e) for e in ("", "the city") for t in TEXTS)]
    with jsonlines.open(tmp_path / "pool.jsonl", "w") as writer:
        writer.write_all(rows)
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(dataset_path=str(tmp_path / "pool.jsonl"), work_dir=str(tmp_path / "work"),
                  export_path=str(tmp_path / "out" / "selected.jsonl"), open_monitor=False)
    op = recipe["process"][0][OP_NAME]
    op.update(model_path=str(model_dir), base_adapter=str(base_dir), val_adapter=str(val_dir),
              keep_ratio=0.5, batch_size=4, scorer_options={"batch_size": 3})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    DefaultExecutor(init_configs(["--config", str(tmp_path / "recipe.yaml")])).run()

    with jsonlines.open(tmp_path / "out" / "selected.jsonl") as reader:
        got = list(reader)
    scored = Dataset.from_list(rows).map(
        make_tov_score(model_dir, base_adapter=base_dir, val_adapter=val_dir, batch_size=3),
        batched=True, batch_size=4)
    eligible = sum(n > 0 for n in scored[NUM_TOKENS])
    expected = select_by_score(scored, round(0.5 * eligible))
    assert [r["id"] for r in got] == expected["id"]
    stats = [r["__dj__stats__"] for r in got]
    assert [s[SCORE] for s in stats] == pytest.approx(expected[SCORE], rel=1e-6)
    assert [s[NUM_TOKENS] for s in stats] == expected[NUM_TOKENS]


def test_several_targets_keep_the_union_of_their_selections(tmp_path):
    """val_adapter={name: directory}, n={name: rows}: every target's score in the stats, and
    the exported rows are the union of select_by_score per target column."""
    from tov_datasets.scorer import score_column

    model_dir, base_dir, val_dir = save_tiny_model(tmp_path / "model", more_targets=["other"])
    targets = {"val": str(val_dir), "other": str(val_dir.parent / "other")}
    quotas = {"val": 4, "other": 3}
    rows = [{"id": f"r{i}", "text": f"{text} the city {i % 3 * 'king '}".strip()}
            for i, text in enumerate(TEXTS * 2)]
    with jsonlines.open(tmp_path / "pool.jsonl", "w") as writer:
        writer.write_all(rows)
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(dataset_path=str(tmp_path / "pool.jsonl"), work_dir=str(tmp_path / "work"),
                  export_path=str(tmp_path / "out" / "selected.jsonl"), open_monitor=False)
    recipe["process"][0][OP_NAME] = {"model_path": str(model_dir), "base_adapter": str(base_dir),
                                     "val_adapter": targets, "n": quotas,
                                     "random_fraction": 0.0, "num_bins": 2}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    DefaultExecutor(init_configs(["--config", str(tmp_path / "recipe.yaml")])).run()

    with jsonlines.open(tmp_path / "out" / "selected.jsonl") as reader:
        got = list(reader)
    expected = set()
    for name, directory in targets.items():
        scored = Dataset.from_list(rows).map(
            make_tov_score(model_dir, base_adapter=base_dir, val_adapter=directory),
            batched=True)
        chosen = select_by_score(scored, quotas[name], random_fraction=0.0, num_bins=2)
        expected.update(chosen["id"])
        by_id = dict(zip(scored["id"], scored[SCORE], strict=True))
        assert [r["__dj__stats__"][score_column(name)] for r in got] == pytest.approx(
            [by_id[r["id"]] for r in got], rel=1e-5, abs=1e-6)
    assert sorted(r["id"] for r in got) == sorted(expected)
    assert max(quotas.values()) < len(got) <= sum(quotas.values())  # targets differ


def test_fingerprint_follows_the_adapter_files(tmp_path):
    model_dir, base_dir, val_dir = save_tiny_model(tmp_path)
    paths = {"model_path": str(model_dir), "base_adapter": str(base_dir),
             "val_adapter": str(val_dir)}
    before = ToVFilter(**paths, n=3)._fingerprint_bytes()
    assert ToVFilter(**paths, n=3)._fingerprint_bytes() == before
    with open(val_dir / "adapter_model.safetensors", "ab") as f:
        f.write(b" ")
    assert ToVFilter(**paths, n=3)._fingerprint_bytes() != before


def test_arguments_are_checked():
    paths = {"model_path": "m", "base_adapter": "b", "val_adapter": "v"}
    targets = {**paths, "val_adapter": {"a": "va", "b": "vb"}}
    for kwargs in ({"n": 3}, {**paths}, {**paths, "n": 3, "keep_ratio": 0.5},
                   {**paths, "keep_ratio": 1.5}, {**targets, "n": {"a": 3}},
                   {**paths, "n": {"a": 3}}):
        with pytest.raises(ValueError, match=OP_NAME):
            ToVFilter(**kwargs)
