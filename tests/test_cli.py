"""The `tov` command end to end on a tiny random Llama saved to disk and tiny JSONL files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from tests import tiny
from tests._cli_fixtures import text_rows as _rows
from tests._cli_fixtures import write_jsonl as _write_jsonl
from tov_datasets import cli, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SELECT = ["--n", "12", "--base-size", "24", "--epochs", "2", "--lora-rank", "2",
          "--batch-size", "8", "--max-length", "24", "--bins", "4", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny causal LM (model + tokenizer dir), a 60-row pool and an 8-row val set."""
    root = tmp_path_factory.mktemp("cli")
    tok = tiny.tokenizer()
    model_dir = root / "model"
    tiny.causal_lm(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    pool = _write_jsonl(root / "pool.jsonl", _rows(60, 0))
    val = _write_jsonl(root / "val.jsonl", _rows(8, 1, topics=("math",)))
    return {"root": root, "model": model_dir, "pool": pool, "val": val}


def _select(files, out: Path, *extra: str) -> int:
    return cli.main([
        "select", "--model", str(files["model"]), "--pool", str(files["pool"]),
        "--val", str(files["val"]), "--out", str(out), "--group-column", "topic", "--quiet",
        *SELECT, *extra,
    ])


@pytest.fixture(scope="module")
def selected_run(files):
    """One `tov select` run, then a rerun on the same directory."""
    out = files["root"] / "run"
    assert _select(files, out) == 0
    first = json.loads((out / cli.RUN_FILE).read_text())
    assert _select(files, out) == 0
    second = json.loads((out / cli.RUN_FILE).read_text())
    return out, first, second


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_select_writes_consistent_outputs(files, selected_run):
    out, run, _ = selected_run
    pool = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    selected = pq.read_table(out / cli.SELECTED_FILE).to_pylist()
    assert len(selected) == 12
    for row in selected:  # every selected row is the pool row it claims to be
        assert {k: row[k] for k in ("text", "topic", "id")} == pool[row["tov_row"]]
    scores = pq.read_table(out / cli.SCORES_FILE)
    assert scores.num_rows == 60
    assert {"tov_row", "tov_score", "tov_num_tokens", "tov_score_epoch_1", "tov_score_epoch_2",
            cli.IN_BASE} <= set(scores.column_names)
    epochs = np.stack([scores.column(f"tov_score_epoch_{k}").to_numpy() for k in (1, 2)])
    np.testing.assert_allclose(scores.column("tov_score").to_numpy(), epochs.mean(0),
                               rtol=1e-5, atol=1e-7)
    assert scores.column(cli.IN_BASE).to_numpy().sum() == 24
    by_row = {r["tov_row"]: r["tov_score"] for r in scores.to_pylist()}
    assert all(by_row[r["tov_row"]] == pytest.approx(r["tov_score"]) for r in selected)
    for name in report.PLOTS.values():
        _check_png(out / name)
    text = (out / report.REPORT_NAME).read_text()
    for heading in ("## Summary", "## Composition by `topic`", "## Scores per length bin",
                    "## Agreement between epochs", "## Time per stage"):
        assert heading in text
    assert run["command"] == "select" and run["arguments"]["n"] == 12
    assert run["counts"]["selected (n)"] == 12 and run["device"].startswith("cpu")
    assert {"torch", "transformers", "peft", "datasets", "python"} <= set(run["versions"])
    assert run["disk_bytes"]["trajectory"] > 0
    assert {"load model", "ToV base training", "ToV scoring", "report"} <= set(run["timings"])
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temp files left behind


def test_rerun_resumes_from_the_trajectory(selected_run):
    out, first, second = selected_run
    assert not first["resumed"] and second["resumed"]
    assert first["trajectory_timings"]["train_base"] > 0 and first["trajectory_timings"]["score"]
    for stage in ("train_base", "train_val", "score"):
        assert second["trajectory_timings"][stage] == 0.0
    assert second["history"] == first["history"]
    manifest = json.loads((out / cli.TRAJECTORY_DIR / "manifest.json").read_text())
    assert {"epoch_1/train", "epoch_2/train"} <= set(manifest["steps"])


def test_select_only_reproduces_and_reselects(files, selected_run, tmp_path):
    out = selected_run[0]
    selected = pq.read_table(out / cli.SELECTED_FILE)
    again = tmp_path / "again.parquet"
    args = ["select-only", "--scores", str(out / cli.SCORES_FILE), "--bins", "4", "--quiet"]
    assert cli.main([*args, "--n", "12", "--out", str(again)]) == 0
    assert pq.read_table(again).column("tov_row").to_pylist() == \
        selected.column("tov_row").to_pylist()
    rows = tmp_path / "rows.parquet"
    assert cli.main([*args, "--n", "20", "--pool", str(files["pool"]), "--out", str(rows)]) == 0
    table = pq.read_table(rows)
    assert table.num_rows == 20 and {"text", "topic", "tov_score"} <= set(table.column_names)
    pool = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    assert [pool[r]["id"] for r in table.column("tov_row").to_pylist()] == \
        table.column("id").to_pylist()


def test_score_with_saved_adapters(files, tmp_path):
    model = tiny.causal_lm_with_adapters(tiny.tokenizer())
    for name in ("base", "val"):
        model.save_pretrained(tmp_path / "adapters", selected_adapters=[name])
    out = tmp_path / "scores.parquet"
    assert cli.main([
        "score", "--model", str(files["model"]), "--pool", str(files["pool"]),
        "--base-adapter", str(tmp_path / "adapters" / "base"),
        "--val-adapter", str(tmp_path / "adapters" / "val"), "--out", str(out), "--quiet",
    ]) == 0
    scores = pq.read_table(out)
    assert scores.column_names == ["tov_row", "tov_score", "tov_num_tokens"]
    assert scores.column("tov_row").to_pylist() == list(range(60))
    values = scores.column("tov_score").to_numpy()
    assert np.isfinite(values).all() and np.abs(values).max() > 0


def test_score_along_the_trajectory(files, tmp_path):
    out = tmp_path / "scores.parquet"
    assert cli.main([
        "score", "--model", str(files["model"]), "--pool", str(files["pool"]),
        "--val", str(files["val"]), "--out", str(out), "--base-size", "24", "--epochs", "1",
        "--lora-rank", "2", "--max-length", "24", "--quiet",
    ]) == 0
    scores = pq.read_table(out)
    assert scores.num_rows == 60 and "tov_score_epoch_1" in scores.column_names


def _ner_rows(count: int, seed: int, labels=tiny.NER_LABELS) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"tokens": rng.choice(tiny.WORDS, size=n).tolist(),
         "ner_tags": rng.choice(labels, size=n).tolist()}
        for n in rng.integers(2, 12, size=count)
    ]


def test_select_token_classification(tmp_path):
    tok = tiny.tokenizer()
    tiny.token_classifier(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    pool = _write_jsonl(tmp_path / "pool.jsonl", _ner_rows(40, 0))
    val = _write_jsonl(tmp_path / "val.jsonl", _ner_rows(6, 1))
    out = tmp_path / "out"
    assert cli.main([
        "select", "--model", str(tmp_path / "model"), "--pool", str(pool), "--val", str(val),
        "--out", str(out), "--n", "8", "--base-size", "16", "--epochs", "1", "--quiet",
    ]) == 0
    selected = pq.read_table(out / cli.SELECTED_FILE)
    assert selected.num_rows == 8 and "ner_tags" in selected.column_names


def test_ner_labels_come_from_the_data_when_the_model_lacks_them(tmp_path):
    import datasets

    tok = tiny.tokenizer()
    tiny.token_classifier(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = datasets.Dataset.from_list(_ner_rows(5, 0, labels=["O", "B-city"]))
    model, _ = cli.load_model(str(tmp_path / "model"), data=(data,))
    assert model.config.id2label == {0: "B-city", 1: "O"}
    assert model.classifier.out_features == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--pool": "missing.jsonl"}, "no such file"),
        ({"--model": "./missing-dir"}, "no such directory"),
        ({"--group-column": "nope"}, "no column 'nope'"),
        ({"--n": "0"}, "n=0"),
        ({"--pool": "bad.jsonl"}, "cannot tell the input format"),
        ({"--pool": "broken.jsonl"}, "cannot read pool"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, change, message):
    _write_jsonl(tmp_path / "bad.jsonl", [{"body": "math"}])
    (tmp_path / "broken.jsonl").write_text('{"text": "math"\n')
    args = {"--model": str(files["model"]), "--pool": str(files["pool"]),
            "--val": str(files["val"]), "--out": str(tmp_path / "out"),
            "--group-column": "topic", "--n": "12"}
    args.update({k: (str(tmp_path / v) if k == "--pool" else v) for k, v in change.items()})
    argv = ["select", "--quiet", *[x for kv in args.items() for x in kv], "--base-size", "24"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tov select: error:") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_holdout_fraction_reports_the_check_and_refuses_too_few_rows(files, tmp_path, capsys):
    """--holdout-fraction 0.25 keeps 2 of the 8 validation rows out of the val updates; the
    AUC of those rows against the pool is in select's report.md and run.json, and in score's
    log; a share that leaves no row to train on exits 2 before training, naming the flag."""
    out = tmp_path / "out"
    assert _select(files, out, "--holdout-fraction", "0.25") == 0
    line = json.loads((out / cli.RUN_FILE).read_text())["counts"]["held-out check"]
    assert re.fullmatch(r"AUC (0|1)\.\d{3} of 2 validation rows kept out of the val updates "
                        r"against 60 pool rows .*", line)
    assert line in (out / "report.md").read_text()
    capsys.readouterr()
    assert cli.main([
        "score", "--model", str(files["model"]), "--pool", str(files["pool"]),
        "--val", str(files["val"]), "--out", str(tmp_path / "scores.parquet"),
        "--holdout-fraction", "0.25", *SELECT[2:-4], *SELECT[-2:],  # no --n, --bins
    ]) == 0
    assert f"held-out check: {line}" in capsys.readouterr().err  # the same run's check
    assert _select(files, tmp_path / "none", "--holdout-fraction", "0.95") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("tov select: error: --holdout-fraction=0.95 holds out all 8 rows of the "
                   "validation set, leaving none for the val update; lower --holdout-fraction "
                   "or pass more validation rows")
    assert not (tmp_path / "none" / cli.RUN_FILE).exists()


def test_scored_only_above_takes_the_whole_pick_by_score_where_the_check_passes(
        files, tmp_path, capsys):
    """--scored-only-above 0 (every AUC passes): all 12 rows by score, said in run.json;
    rerun into the same --out with a threshold above the check's AUC: the trajectory is
    reused and the pick keeps its 6 random rows; without --holdout-fraction, or outside
    [0, 1], it exits 2 naming the flag before anything is loaded."""
    out = tmp_path / "out"
    assert _select(files, out, "--holdout-fraction", "0.25", "--scored-only-above", "0") == 0
    counts = json.loads((out / cli.RUN_FILE).read_text())["counts"]
    assert (counts["selected by score"], counts["selected at random"]) == (12, 0)
    assert counts["held-out check"].endswith(
        "; >= --scored-only-above 0.0: the whole pick by score")
    auc = float(counts["held-out check"].split()[1])
    assert auc < 1
    assert _select(files, out, "--holdout-fraction", "0.25", "--scored-only-above", "1") == 0
    counts = json.loads((out / cli.RUN_FILE).read_text())["counts"]
    assert (counts["selected by score"], counts["selected at random"]) == (6, 6)
    assert counts["resumed"] == "yes"
    assert counts["held-out check"].endswith(
        "; < --scored-only-above 1.0: the pick keeps its random part")
    capsys.readouterr()
    for extra, message in (
            (["--scored-only-above", "0.9"],
             "--scored-only-above=0.9 reads the held-out check: pass --holdout-fraction > 0 "
             "with it (e.g. --holdout-fraction 0.2)"),
            (["--holdout-fraction", "0.25", "--scored-only-above", "1.5"],
             "--scored-only-above=1.5 must be in [0, 1] (an AUC)")):
        assert _select(files, tmp_path / "bad", *extra) == 2
        assert capsys.readouterr().err.strip() == f"tov select: error: {message}"
        assert not (tmp_path / "bad").exists()


def test_changed_arguments_on_rerun_exit_2(files, selected_run, capsys):
    out = selected_run[0]
    assert _select(files, out, "--seed", "1") == 2
    assert "holds a run made with other options (--seed: 0 -> 1)" in capsys.readouterr().err


def test_select_only_bad_input(tmp_path, capsys):
    assert cli.main(["select-only", "--scores", str(tmp_path / "none.parquet"), "--n", "3",
                     "--out", str(tmp_path / "o.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["select-only", "--scores", "s.parquet", "--n", "3", "--out", "o.csv"]) == 2
    assert "*.parquet" in capsys.readouterr().err


def test_load_data_reads_every_input_kind(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(_rows(5, 0))
    ds.to_parquet(tmp_path / "p.parquet")
    ds.to_json(tmp_path / "j.jsonl")
    ds.save_to_disk(tmp_path / "disk")
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(tmp_path / "dict")
    arrow = next((tmp_path / "disk").glob("*.arrow"))
    for spec in ("p.parquet", "j.jsonl", "disk", "dict/train", arrow.relative_to(tmp_path)):
        assert cli.load_data(str(tmp_path / spec))["text"] == ds["text"], spec
    (tmp_path / "t.csv").write_text("text\nmath\n")
    for spec, message in [("dict", "several splits"), ("t.csv", "unknown file type"),
                          ("no/such/dataset", "cannot read")]:
        with pytest.raises(cli.CliError, match=message):
            cli.load_data(str(tmp_path / spec) if spec != "no/such/dataset" else spec)


def test_console_script_help():
    script = Path(sys.executable).parent / "tov"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("select", "score", "select-only", "demo"):
        assert command in done.stdout


class _Recorded(Exception):
    pass


@pytest.mark.parametrize("command", ["select", "score"])
@pytest.mark.parametrize("flag", [[], ["--val-optimizer", "continue"], ["--val-optimizer", "sgd"]])
def test_val_optimizer_reaches_tov_select(files, tmp_path, monkeypatch, command, flag):
    from tov_datasets import trajectory

    seen = {}

    def recording_tov_select(*args, **kwargs):
        seen.update(kwargs)
        raise _Recorded

    monkeypatch.setattr(trajectory, "tov_select", recording_tov_select)
    out = tmp_path / ("out" if command == "select" else "scores.parquet")
    argv = [command, "--model", str(files["model"]), "--pool", str(files["pool"]),
            "--val", str(files["val"]), "--out", str(out), "--quiet", *flag]
    # the CLI turns the exception into its one-line failure; the call was recorded first
    assert cli.main(argv + (["--n", "12"] if command == "select" else [])) != 0
    assert seen["val_optimizer"] == (flag[1] if flag else trajectory.DEFAULT_VAL_OPTIMIZER)
    assert seen["holdout_fraction"] == 0.0


def test_val_optimizer_choices_match_the_library(capsys):
    from tov_datasets import trajectory

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("select", "score"):
        action = next(a for a in sub.choices[command]._actions if a.dest == "val_optimizer")
        assert tuple(action.choices) == trajectory.VAL_OPTIMIZERS and action.help
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["select", "--model", "m", "--pool", "p", "--val", "v", "--out", "o",
                           "--n", "1", "--val-optimizer", "adam"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'adam'" in capsys.readouterr().err


def test_transform_choices_and_default_match_the_library():
    from tov_datasets import scorer, trajectory
    from tov_kernels._checks import TRANSFORMS

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("select", "score"):
        action = next(a for a in sub.choices[command]._actions if a.dest == "transform")
        assert sorted(action.choices) == sorted(TRANSFORMS)
        assert action.default == scorer.DEFAULT_TRANSFORM == trajectory.ToVConfig().transform


# ------------------------------------------------------------------ hardening (issue 14)
def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


def test_all_defaults_on_a_60_row_pool_finish_bounded(files, tmp_path, capsys):
    """No options but --n: base set = the 60 rows, epochs = min(round(16384 / 60), 8) = 8,
    LoRA rank from the hidden size (32 -> the floor 8); run.json written, disk bounded, the
    agreement table one row per epoch."""
    from tov_datasets.models import RANK_BOUNDS
    from tov_datasets.storage import directory_bytes

    out = tmp_path / "out"
    code, err = _run(["select", "--quiet", "--model", str(files["model"]), "--pool",
                      str(files["pool"]), "--val", str(files["val"]), "--n", "10", "--out",
                      str(out)], capsys)
    assert code == 0, err
    run = json.loads((out / cli.RUN_FILE).read_text())
    assert len(run["history"]) == 8 and run["counts"]["epochs"] == 8
    assert run["counts"]["LoRA rank"] == RANK_BOUNDS[0] and run["counts"]["length bins"] == 10
    assert directory_bytes(out) < 8 * 2**20  # 8 epochs of rank-8 adapters on a tiny model
    text = (out / report.REPORT_NAME).read_text()
    agreement = text.split("## Agreement between epochs (Spearman)")[1].split("##")[0]
    assert agreement.count("tov_score_epoch_") == 8


def test_resume_is_keyed_on_content_not_spelling(files, tmp_path, capsys, monkeypatch):
    """A run started with a relative --model path resumes with the absolute path, another
    spelling of it and a copy of the model folder elsewhere (the same files)."""
    import shutil

    monkeypatch.chdir(files["model"].parent)
    out = tmp_path / "out"
    argv = ["select", "--quiet", "--pool", str(files["pool"]), "--val", str(files["val"]),
            "--out", str(out), *SELECT]
    assert _run([*argv, "--model", files["model"].name], capsys)[0] == 0
    copy = tmp_path / "copied_model"
    shutil.copytree(files["model"], copy)
    for model in (str(files["model"].resolve()), str(copy), f"./{files['model'].name}/"):
        code, err = _run([*argv, "--model", model], capsys)
        assert code == 0, err
        run = json.loads((out / cli.RUN_FILE).read_text())
        assert run["resumed"] and run["trajectory_timings"]["train_base"] == 0.0
        assert run["inputs"]["model"] == str(Path(model).resolve())


def test_selected_rows_say_whether_score_or_random_picked_them(files, selected_run):
    """tov_from_score: True exactly for the rows of the score part (the same selection with
    no random part and n - n_random rows), False for the random part."""
    from tov_datasets.select import random_count, select_indices

    out = selected_run[0]
    selected = pq.read_table(out / cli.SELECTED_FILE)
    scores = pq.read_table(out / cli.SCORES_FILE)
    n_scored = 12 - random_count(12, 0.5)
    by_score = select_indices(scores.column("tov_score").to_numpy(),
                              scores.column("tov_num_tokens").to_numpy(), n_scored, num_bins=4,
                              random_fraction=0)
    from_score = selected.column("tov_from_score").to_numpy(zero_copy_only=False)
    rows = selected.column("tov_row").to_numpy()
    assert from_score.sum() == n_scored
    assert sorted(rows[from_score]) == sorted(by_score)
    in_base = scores.column(cli.IN_BASE).to_numpy()
    assert in_base[rows[~from_score]].all()  # the random part comes from the base set


def test_report_names_inputs_direction_and_examples(files, selected_run):
    out = selected_run[0]
    text = (out / report.REPORT_NAME).read_text()
    for expected in ("## Inputs", str(files["model"].resolve()), str(files["pool"].resolve()),
                     str(files["val"].resolve()), "Higher `tov_score` is better",
                     "## Top and bottom of the ranking", "| selected by score | 6 |",
                     "| selected at random | 6 |"):
        assert expected in text, expected
    examples = text.split("## Top and bottom of the ranking")[1].split("##")[0]
    table = [line.split(" | ") for line in examples.strip().splitlines()[2:]]
    assert len(table) == 2 * report.EXAMPLES
    pool = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    for cells in table:  # each example shows its pool row's text
        assert pool[int(cells[1])]["text"][:40] in cells[5]
    scores = [float(cells[2]) for cells in table]
    assert scores == sorted(scores, reverse=True)


def test_epoch_agreement_rows_match_pandas_spearman():
    """Against an independent reference (pandas' Spearman), on random scores with ties and
    rows without tokens (left out)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, 200)
    epochs = {f"tov_score_epoch_{k}": np.round(rng.normal(size=200), 1) for k in (1, 2, 3)}
    mean = np.mean(list(epochs.values()), axis=0)
    data = report.ReportData("t", mean, lengths, {"ToV": np.arange(3)}, epoch_scores=epochs)
    rows = report.epoch_agreement_rows(data)
    frame = pd.DataFrame({**epochs, "mean": mean})[lengths > 0]
    names = list(epochs)
    spearman = frame.corr(method="spearman")
    for k, (name, vs_mean, vs_previous) in enumerate(rows):
        assert name == names[k]
        assert vs_mean == pytest.approx(spearman.loc[name, "mean"])
        if k == 0:
            assert np.isnan(vs_previous)
        else:
            assert vs_previous == pytest.approx(spearman.loc[name, names[k - 1]])


def test_example_rows_take_the_top_and_bottom_of_rows_with_tokens():
    scores = np.array([0.5, 9.0, -3.0, 2.0, 7.0, -1.0, 4.0], np.float32)
    lengths = np.array([1, 0, 2, 3, 1, 1, 2])
    rows = report.example_rows(scores, lengths, lambda r: f"row {r}\nnext line",
                               np.array([4, 2]), np.array([True, False]), count=2)
    assert [r[1] for r in rows] == [4, 6, 5, 2]  # row 1 has no tokens
    assert [r[0] for r in rows] == [1, 2, 5, 6]
    assert [r[4] for r in rows] == ["score", "-", "-", "random"]
    assert rows[0][5] == "row 4 next line"
    assert len(report.example_rows(scores, lengths, str, np.array([4]), np.array([True]),
                                   count=5)) == 6  # fewer rows than 2 * count: each once


def test_outputs_follow_the_umask_and_stale_plots_go(files, tmp_path, capsys):
    """Files get 0o666 & ~umask (not mkstemp's 0o600); a rerun without --group-column
    removes the composition plot of the earlier run."""
    import os

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert _select(files, out, "--epochs", "1") == 0
        for name in (cli.SELECTED_FILE, cli.SCORES_FILE, cli.RUN_FILE, report.REPORT_NAME,
                     "trajectory/manifest.json"):
            assert (out / name).stat().st_mode & 0o777 == 0o644, name
        assert (out / "trajectory" / "epoch_001" / "base").stat().st_mode & 0o777 == 0o755
        assert (out / report.PLOTS["composition"]).is_file()
        argv = ["select", "--quiet", "--model", str(files["model"]), "--pool",
                str(files["pool"]), "--val", str(files["val"]), "--out", str(out), *SELECT,
                "--epochs", "1"]
        assert _run(argv, capsys)[0] == 0
        assert not (out / report.PLOTS["composition"]).exists()
        assert "## Composition" not in (out / report.REPORT_NAME).read_text()
    finally:
        os.umask(old)


def test_warnings_for_likely_mistakes(files, tmp_path, capsys):
    """The same adapter as base and val (every score 0) and a val set in another format
    than the pool: one warning line each, the command still runs."""
    model = tiny.causal_lm_with_adapters(tiny.tokenizer())
    model.save_pretrained(tmp_path / "adapters", selected_adapters=["base"])
    base = str(tmp_path / "adapters" / "base")
    out = tmp_path / "scores.parquet"
    code, err = _run(["score", "--quiet", "--model", str(files["model"]), "--pool",
                      str(files["pool"]), "--base-adapter", base, "--val-adapter", base,
                      "--out", str(out)], capsys)
    assert code == 0 and "hold the same weights: every score will be 0" in err
    assert "\n" not in err
    assert (pq.read_table(out).column("tov_score").to_numpy() == 0).all()
    val = _write_jsonl(tmp_path / "val.jsonl",
                       [{"prompt": "math", "completion": r["text"]} for r in _rows(6, 1)])
    code, err = _run(["select", "--quiet", "--model", str(files["model"]), "--pool",
                      str(files["pool"]), "--val", str(val), "--out", str(tmp_path / "o"),
                      *SELECT, "--epochs", "1"], capsys)
    assert code == 0
    assert "the pool is in the text format but --val in the prompt_completion format" in err
    assert "\n" not in err


def test_version_and_help_list_the_outputs(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"tov {version('tov')}"
    with pytest.raises(SystemExit):
        cli.main(["select", "--help"])
    text = capsys.readouterr().out
    for name in (cli.SELECTED_FILE, cli.SCORES_FILE, cli.RUN_FILE, report.REPORT_NAME,
                 "tov_from_score", "clamped to [1, 8]", "clamped to [8, 256]"):
        assert name in " ".join(text.split()), name


def _by_score_column(path: Path, column: str) -> list:
    table = pq.read_table(path)
    keep = table.column("tov_from_score").to_pylist()
    return [v for v, k in zip(table.column(column).to_pylist(), keep, strict=True) if k]


def test_stratify_column_keeps_the_validation_sets_label_shares(files, selected_run,
                                                                  tmp_path, capsys):
    """The validation set is all "math": every row chosen by score and every row drawn at
    random is "math" (select and select-only --val); select-only without --val keeps the
    pool's even shares in both parts."""
    out = tmp_path / "strata"
    assert _select(files, out, "--stratify-column", "topic") == 0
    assert _by_score_column(out / cli.SELECTED_FILE, "topic") == ["math"] * 6
    assert pq.read_table(out / cli.SELECTED_FILE).column("topic").to_pylist() == ["math"] * 12
    counts = json.loads((out / cli.RUN_FILE).read_text())["counts"]
    assert counts["label strata"] == "topic: both parts in the validation set's label shares"
    assert "| label strata | topic: both parts" in (out / report.REPORT_NAME).read_text()
    scores = str(selected_run[0] / cli.SCORES_FILE)
    args = ["select-only", "--scores", scores, "--n", "12", "--bins", "4", "--quiet",
            "--pool", str(files["pool"]), "--stratify-column", "topic"]
    assert cli.main([*args, "--val", str(files["val"]), "--out", str(tmp_path / "a.parquet")]) == 0
    assert _by_score_column(tmp_path / "a.parquet", "topic") == ["math"] * 6
    assert pq.read_table(tmp_path / "a.parquet").column("topic").to_pylist() == ["math"] * 12
    assert cli.main([*args, "--out", str(tmp_path / "b.parquet")]) == 0
    shares = sorted(_by_score_column(tmp_path / "b.parquet", "topic"))
    assert shares == ["law", "law", "math", "math", "music", "music"]
    whole = sorted(pq.read_table(tmp_path / "b.parquet").column("topic").to_pylist())
    assert whole == ["law"] * 4 + ["math"] * 4 + ["music"] * 4
    assert "tov_stratum" not in pq.read_table(tmp_path / "b.parquet").column_names
    other = _write_jsonl(tmp_path / "other.jsonl", _rows(4, 2, topics=("chess",)))
    plain = ["select-only", "--scores", scores, "--n", "12", "--quiet", "--out",
             str(tmp_path / "c.parquet")]
    for argv, message in [
        ([*plain, "--pool", str(files["pool"]), "--val", str(files["val"])],
         "--val weighs the labels of --stratify-column"),
        ([*plain, "--stratify-column", "topic"], "--stratify-column needs --pool"),
        ([*plain, "--pool", str(files["pool"]), "--stratify-column", "nope"],
         "--stratify-column nope: --pool"),
        ([*plain, "--pool", str(files["pool"]), "--stratify-column", "topic", "--val",
          str(other)], "--stratify-column topic: the selection needs n=12 rows but the "
         "strata of weight > 0 hold only 0 eligible rows (length > 0), and every row chosen, "
         "by score or at random, lies in one; pass a smaller --n, or a --val with more"),
        ([*args, "--val", str(files["val"]), "--n", "20", "--out", str(tmp_path / "c.parquet")],
         "--stratify-column topic: the random part needs 10 rows but the strata of weight > 0 "
         "hold only "),
        ([*args, "--val", str(files["val"]), "--n", "20", "--out", str(tmp_path / "c.parquet")],
         "of the base set (tov_in_base) not already chosen by score; pass --random-from-all, "
         "a smaller --n, a smaller --random-fraction, or a --val with more of the pool's labels"),
    ]:
        code, err = _run(argv, capsys)
        assert code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "c.parquet").exists()
    code, err = _run(["select", "--model", str(files["model"]), "--pool", str(files["pool"]),
                      "--val", str(other), "--out", str(tmp_path / "d"), "--quiet", *SELECT,
                      "--stratify-column", "topic"], capsys)
    assert code == 2 and err.count("\n") == 0 and (
        "--stratify-column topic: the labels of the validation set hold 0 pool rows, fewer "
        "than the 12 selected (every row chosen, by score or at random, has one of them); "
        "lower --n") in err, err
    code, err = _run(["select", "--model", str(files["model"]), "--pool", str(files["pool"]),
                      "--val", str(files["val"]), "--out", str(tmp_path / "d"), "--quiet",
                      *SELECT, "--stratify-column", "topic", "--base-size", "8"], capsys)
    assert code == 2 and err.count("\n") == 0 and re.search(
        r"--stratify-column topic: the labels of the validation set hold \d rows of the base "
        r"set \(--base-size=8\), fewer than the 6 drawn at random from it; raise "
        "--base-size, or lower --n or --random-fraction", err), err
    assert not (tmp_path / "d").exists()
    args_all = [*args, "--val", str(files["val"]), "--n", "20", "--random-from-all"]
    assert cli.main([*args_all, "--out", str(tmp_path / "e.parquet")]) == 0
    assert pq.read_table(tmp_path / "e.parquet").column("topic").to_pylist() == ["math"] * 20


def test_a_selection_short_of_labelled_base_rows_keeps_the_trajectory(files, tmp_path, capsys):
    """12 labelled rows, 7 of them in U (base set of 24, seed 0): the checks before training
    pass (12 >= n, 7 >= the 6 random rows), but the rows chosen by score take labelled rows of
    U, so the random part finds too few: one line naming the flags and the kept trajectory;
    the rerun with --random-fraction 0 selects from it without retraining."""
    from tov_datasets.trajectory import draw_base_set

    base = draw_base_set(60, 24, 0)
    labelled = set(base[:7].tolist()) | set(np.setdiff1d(np.arange(60), base)[:5].tolist())
    pool = _write_jsonl(tmp_path / "pool.jsonl", [
        {**row, "lab": "yes" if i in labelled else "no"} for i, row in enumerate(_rows(60, 0))])
    val = _write_jsonl(tmp_path / "val.jsonl", [{**row, "lab": "yes"} for row in _rows(8, 1)])
    out = tmp_path / "out"
    argv = ["select", "--model", str(files["model"]), "--pool", str(pool), "--val", str(val),
            "--out", str(out), "--quiet", *SELECT, "--stratify-column", "lab"]
    code, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert ("--stratify-column lab: the random part needs 6 rows but the strata of weight > 0 "
            "hold only") in err, err
    assert ("of the base set not already chosen by score; pass a larger --base-size, a "
            "smaller --n, a smaller --random-fraction, or a --val with more of the pool's "
            f"labels; the trajectory is kept in --out {out}: rerun with a smaller --n or "
            "--random-fraction to select again without retraining") in err, err
    adapters = {p: p.stat().st_mtime_ns for p in (out / cli.TRAJECTORY_DIR).rglob("*")
                if p.suffix == ".safetensors"}
    assert adapters and not (out / cli.RUN_FILE).exists()
    assert cli.main([*argv, "--random-fraction", "0"]) == 0
    assert json.loads((out / cli.RUN_FILE).read_text())["counts"]["resumed"] == "yes"
    for path, mtime in adapters.items():  # the trained adapters were read, not rewritten
        assert path.stat().st_mtime_ns == mtime, path
    selected = pq.read_table(out / cli.SELECTED_FILE)
    assert sorted(selected.column("id").to_pylist()) == sorted(labelled)


def test_a_random_part_short_of_base_rows_after_training_names_the_flags(files, tmp_path,
                                                                         capsys):
    """No strata: the checks before training pass (10 random rows <= a base set of 10), but
    the rows chosen by score take rows of U, so the random part finds too few: one line in
    flags naming the kept trajectory, not the library's words."""
    out = tmp_path / "out"
    code, err = _run(["select", "--model", str(files["model"]), "--pool", str(files["pool"]),
                      "--val", str(files["val"]), "--out", str(out), "--quiet", *SELECT,
                      "--n", "20", "--base-size", "10"], capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert "random part needs 10 rows but the base set has only" in err, err
    assert ("not already chosen by score; pass a larger --base-size, a smaller --n or a "
            f"smaller --random-fraction; the trajectory is kept in --out {out}: rerun with a "
            "smaller --n or --random-fraction to select again without retraining") in err, err
    assert "random_pool" not in err
