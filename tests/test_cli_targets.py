"""`tov select` with several named targets (--val NAME=PATH, --n N | NAME=N) end to end on the
tiny saved Llama (tests/_cli_fixtures.py): the files and columns, each target's selection
recomputed from the written scores, the union and its overlap in the report, one named
target against the plain --val run, resume, and bad input."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import _cli_fixtures as fx
from tov_datasets import cli, report
from tov_datasets.select import select_indices
from tov_datasets.storage import MANIFEST_NAME

TARGETS = {"math": 12, "music": 8}
PER_TARGET_OUTPUTS = tuple(cli.TARGET_SELECTED_FILE.format(t) for t in TARGETS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny model and pool, the math validation set and a music one."""
    root = tmp_path_factory.mktemp("targets")
    inputs = fx.make_inputs(root)
    inputs["music"] = fx.write_jsonl(root / "music.jsonl", fx.text_rows(8, 2, topics=("music",)))
    return inputs


def targets_argv(inputs, out, *extra):
    """tov select over the math and music targets (n: 12 and 8; ``extra`` last)."""
    argv = fx.select_argv(inputs, out, "--n", "math=12", "--n", "music=8", "--group-column",
                          "topic", *extra)
    i = argv.index("--val")
    argv[i + 1:i + 2] = [f"math={inputs['val']}", "--val", f"music={inputs['music']}"]
    return argv


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    """One two-target run, then a rerun on the same directory: (out, first run.json, second
    run.json, sha256 of the outputs after the first run)."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert cli.main(targets_argv(inputs, out)) == 0
    first = json.loads((out / cli.RUN_FILE).read_text())
    hashes = {name: fx.sha256(out / name) for name in (*fx.OUTPUTS, *PER_TARGET_OUTPUTS)}
    assert cli.main(targets_argv(inputs, out)) == 0
    return out, first, json.loads((out / cli.RUN_FILE).read_text()), hashes


def _rows(path) -> np.ndarray:
    return pq.read_table(path).column("tov_row").to_numpy()


def test_files_and_columns(inputs, run):
    out, first, _, _ = run
    scores = pq.read_table(out / cli.SCORES_FILE)
    assert scores.num_rows == 48
    assert scores.column_names == [
        "tov_row", "tov_score_math", "tov_score_music", "tov_num_tokens",
        "tov_score_math_epoch_1", "tov_score_math_epoch_2", "tov_score_music_epoch_1",
        "tov_score_music_epoch_2", cli.IN_BASE]
    for target in TARGETS:
        epochs = np.stack([scores.column(f"tov_score_{target}_epoch_{k}").to_numpy()
                           for k in (1, 2)])
        np.testing.assert_allclose(scores.column(f"tov_score_{target}").to_numpy(),
                                   epochs.mean(0), rtol=1e-5, atol=1e-7)
    math, music = (scores.column(f"tov_score_{t}").to_numpy() for t in TARGETS)
    assert np.abs(math - music).max() > 1e-5  # two targets, two rankings
    pool = [json.loads(line) for line in inputs["pool"].read_text().splitlines()]
    for name, n in TARGETS.items():
        table = pq.read_table(out / cli.TARGET_SELECTED_FILE.format(name))
        assert table.num_rows == n
        assert {"text", "topic", "id", "tov_row", "tov_score", "tov_from_score"} <= set(
            table.column_names)
        for row in table.to_pylist():  # the pool row it claims to be, with its target's score
            assert {k: row[k] for k in ("text", "topic", "id")} == pool[row["tov_row"]]
            assert row["tov_score"] == scores.column(f"tov_score_{name}")[row["tov_row"]].as_py()
    for name in (*fx.OUTPUTS, *PER_TARGET_OUTPUTS, report.REPORT_NAME):
        assert (out / name).is_file()
    assert set(first["sha256"]) == {*fx.OUTPUTS, *PER_TARGET_OUTPUTS}
    assert first["inputs"]["val"] == {"math": str(inputs["val"]), "music": str(inputs["music"])}
    assert first["arguments"]["n"] == TARGETS
    for plot in report.PLOTS.values():
        assert not (out / plot).exists()
        for name in TARGETS:
            assert (out / plot.replace(".png", f"_{name}.png")).is_file()


def test_each_target_selection_is_recomputed_from_the_written_scores(run):
    out, *_ = run
    scores = pq.read_table(out / cli.SCORES_FILE)
    lengths = scores.column("tov_num_tokens").to_numpy()
    base = np.flatnonzero(scores.column(cli.IN_BASE).to_numpy())
    for name, n in TARGETS.items():
        expected = select_indices(scores.column(f"tov_score_{name}").to_numpy(), lengths, n,
                                  num_bins=4, random_fraction=0.5, random_pool=base, seed=0)
        np.testing.assert_array_equal(_rows(out / cli.TARGET_SELECTED_FILE.format(name)),
                                      np.sort(expected))


def test_the_combined_selection_is_the_union_and_the_report_counts_the_overlap(run):
    out, first, _, _ = run
    chosen = {name: set(_rows(out / cli.TARGET_SELECTED_FILE.format(name)).tolist())
              for name in TARGETS}
    union = sorted(chosen["math"] | chosen["music"])
    combined = pq.read_table(out / cli.SELECTED_FILE)
    assert combined.column("tov_row").to_pylist() == union
    for row, targets in zip(union, combined.column("tov_targets").to_pylist(), strict=True):
        assert targets == [name for name in TARGETS if row in chosen[name]]
    shared = len(chosen["math"] & chosen["music"])
    text = (out / report.REPORT_NAME).read_text()
    assert f"| math | 12 | {shared} |\n| music | {shared} | 8 |" in text
    assert f"their union: {len(union)} rows" in text
    assert first["counts"]["selected by any target (union)"] == len(union)
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections.index("## Overlap of the per-target selections") < sections.index(
        "## Target `math`") < sections.index("## Target `music`")
    for name in TARGETS:
        section = text.split(f"## Target `{name}`")[1].split("\n## ")[0]
        assert "### Scores per length bin" in section and "### Composition by `topic`" in section
        assert f"| rank | tov_row | tov_score_{name} |" in section


def test_rerun_resumes_and_rewrites_the_same_files(run):
    out, first, second, hashes = run
    assert first["resumed"] is False and second["resumed"] is True
    assert second["trajectory_timings"]["train_base"] < 0.5 * first["trajectory_timings"][
        "train_base"]  # nothing trained again
    assert {name: fx.sha256(out / name) for name in hashes} == hashes


def test_a_lost_epoch_is_redone_bit_identically(inputs, run, tmp_path):
    """Resume mid-run: a copy of the finished run without its last epoch (as after a kill
    during epoch 2) finishes with the same files."""
    out, _, _, hashes = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / cli.RUN_FILE).unlink()
    manifest = copy / cli.TRAJECTORY_DIR / MANIFEST_NAME
    record = json.loads(manifest.read_text())
    record["steps"] = {k: v for k, v in record["steps"].items() if not k.startswith("epoch_2/")}
    manifest.write_text(json.dumps(record))
    shutil.rmtree(copy / cli.TRAJECTORY_DIR / "epoch_002")
    assert cli.main(targets_argv(inputs, copy)) == 0
    assert json.loads((copy / cli.RUN_FILE).read_text())["resumed"] is True
    assert {"epoch_2/train", "epoch_2/scores/0"} <= set(json.loads(manifest.read_text())["steps"])
    assert {name: fx.sha256(copy / name) for name in hashes} == hashes


@pytest.fixture(scope="module")
def plain_run(inputs, tmp_path_factory):
    """The output directory of one `tov select --val PATH` run (one unnamed target)."""
    out = tmp_path_factory.mktemp("plain") / "out"
    assert cli.main(fx.select_argv(inputs, out)) == 0
    return out


def test_one_named_target_scores_like_the_plain_val(inputs, plain_run, tmp_path):
    """--val math=PATH (K = 1, named) trains and scores exactly what --val PATH does."""
    plain, named = plain_run, tmp_path / "named"
    argv = fx.select_argv(inputs, named)
    argv[argv.index("--val") + 1] = f"math={inputs['val']}"
    assert cli.main(argv) == 0
    plain_scores = pq.read_table(plain / cli.SCORES_FILE)
    named_scores = pq.read_table(named / cli.SCORES_FILE)
    for column in ("tov_score", "tov_score_epoch_1", "tov_score_epoch_2"):
        np.testing.assert_array_equal(named_scores.column(column.replace(
            "tov_score", "tov_score_math")).to_numpy(), plain_scores.column(column).to_numpy())
    assert pq.read_table(named / "selected_math.parquet").equals(
        pq.read_table(plain / cli.SELECTED_FILE))


def without_n(argv):
    """``argv`` without its --n options."""
    return [a for i, a in enumerate(argv) if a != "--n" and (i == 0 or argv[i - 1] != "--n")]


def test_n_defaults_and_overrides(inputs, monkeypatch, tmp_path):
    """A plain --n gives every target its n (the last plain one counts); --n NAME=N
    overrides one target's."""
    seen = []
    monkeypatch.setattr(cli, "_select", lambda args, *_: seen.append(args.n))
    argv = without_n(targets_argv(inputs, tmp_path / "out"))
    for extra, expected in ((["--n", "7", "--n", "5"], 5),
                            (["--n", "5", "--n", "music=3"], {"math": 5, "music": 3}),
                            (["--n", "math=4", "--n", "music=3"], {"math": 4, "music": 3})):
        assert cli.main([*argv, *extra]) == 0
        assert seen[-1] == expected


@pytest.mark.parametrize("change, message", [
    (["--val", "math=x.jsonl"], "--val: names ['math'] appear more than once"),
    (["--val", "other=missing.jsonl"], "--val other=missing.jsonl: no such file or directory"),
    (["--val", "other="], "--val other=: give the path after '='"),
    (["--val", "a.b=x.jsonl"], "--val: 'a.b' cannot name a score column"),
    (["--n", "art=3"], "--n names ['art', 'math', 'music'] but --val names ['math', 'music']"),
    (["--n", "math=3"], "--n math=N is given twice"),
    (["--n", "math=x"], "--n math=x: give a whole number N"),
    (["--n", "music=0"], "--n music=0 must be >= 1"),
    (["--n", "music=49"], "--n music=49 exceeds the pool's 48 rows"),
])
def test_bad_targets_exit_2_naming_the_flag(inputs, tmp_path, capsys, change, message):
    argv = [*without_n(targets_argv(inputs, tmp_path / "out")), "--n", "math=12", *change]
    if "music=" not in " ".join(change):
        argv += ["--n", "music=8"]
    code, err = fx.run_cli(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("tov select: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_unnamed_and_unmatched_combinations_exit_2(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    plain = fx.select_argv(inputs, out)
    cases = {
        "--val: name each of several validation sets": [*plain, "--val", str(inputs["music"])],
        "--n NAME=N names targets, but --val gives one unnamed": [*plain, "--n", "math=3"],
        "--n names ['math'] but --val names ['math', 'music']": [
            *without_n(targets_argv(inputs, out)), "--n", "math=3"],
    }
    for message, argv in cases.items():
        code, err = fx.run_cli(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_name_that_clashes_with_epoch_columns_is_refused(inputs, tmp_path, capsys):
    """tov_select's own rule (a name may not be another's plus _epoch_K) reads as --val."""
    argv = targets_argv(inputs, tmp_path / "out")
    argv[argv.index(f"music={inputs['music']}")] = f"math_epoch_1={inputs['music']}"
    code, err = fx.run_cli(without_n(argv) + ["--n", "5"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("tov select: error: --val: target 'math_epoch_1' would share")
    assert not (tmp_path / "out" / cli.RUN_FILE).exists()


def test_an_output_that_is_a_target_input_is_refused(inputs, capsys):
    snapshot = fx.snapshot(inputs["music"].parent)
    for out, how in ((inputs["music"], "is"), (inputs["music"].parent, "contains")):
        code, err = fx.run_cli(targets_argv(inputs, out), capsys)
        assert code == 2 and f"--out {out} {how} --" in err
    code, err = fx.run_cli(targets_argv(inputs, inputs["music"]), capsys)
    assert f"is --val music {inputs['music']}" in err
    assert fx.snapshot(inputs["music"].parent) == snapshot


def test_select_only_selects_for_one_target(inputs, run, tmp_path, capsys):
    out, *_ = run
    scores = str(out / cli.SCORES_FILE)
    again = tmp_path / "math.parquet"
    argv = ["select-only", "--quiet", "--scores", scores, "--n", "12", "--bins", "4"]
    assert cli.main([*argv, "--target", "math", "--out", str(again),
                     "--pool", str(inputs["pool"])]) == 0
    expected = pq.read_table(out / "selected_math.parquet")
    got = pq.read_table(again)
    assert got.column("tov_row").equals(expected.column("tov_row"))
    assert got.column("tov_from_score").equals(expected.column("tov_from_score"))
    assert got.column("text").equals(expected.column("text"))
    for extra, message in ((["--target", "art"], "--target art: "), ([], "pass --target NAME")):
        code, err = fx.run_cli([*argv, *extra, "--out", str(tmp_path / "o.parquet")], capsys)
        assert code == 2 and message in err and "['math', 'music']" in err


def test_a_path_holding_an_equals_sign_is_one_validation_set(tmp_path, monkeypatch):
    import argparse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=0.1.jsonl").write_text("{}\n")
    args = argparse.Namespace(val=["lr=0.1.jsonl"], n=["3"])
    cli._parse_targets(args)
    assert args.val == "lr=0.1.jsonl" and args.n == 3
    args = argparse.Namespace(val=["lr=0.1.jsonl", "b=data/b.jsonl"], n=["3"])
    with pytest.raises(cli.CliError, match="--val: name each of several"):
        cli._parse_targets(args)


def test_score_with_several_saved_val_adapters(inputs, tmp_path, capsys):
    """tov score --val-adapter NAME=DIR (repeated): a tov_score_NAME column per target,
    each equal to the one-adapter tov score of that directory."""
    from tests.test_pipelines import save_tiny_model

    _, base, val = save_tiny_model(tmp_path / "saved", more_targets=["other"])
    targets = {"val": val, "other": val.parent / "other"}
    argv = ["score", "--quiet", "--model", str(inputs["model"]), "--pool", str(inputs["pool"]),
            "--base-adapter", str(base)]
    out = tmp_path / "scores.parquet"
    assert cli.main([*argv, *(a for name, path in targets.items()
                              for a in ("--val-adapter", f"{name}={path}")),
                     "--out", str(out)]) == 0
    got = pq.read_table(out)
    assert got.column_names == ["tov_row", "tov_score_val", "tov_score_other",
                                "tov_num_tokens"]
    for name, path in targets.items():
        single = tmp_path / f"{name}.parquet"
        assert cli.main([*argv, "--val-adapter", str(path), "--out", str(single)]) == 0
        expected = pq.read_table(single)
        np.testing.assert_allclose(got.column(f"tov_score_{name}").to_numpy(),
                                   expected.column("tov_score").to_numpy(), rtol=1e-5, atol=1e-6)
        assert got.column("tov_num_tokens").equals(expected.column("tov_num_tokens"))
    code, err = fx.run_cli([*argv, "--val-adapter", str(val), "--val-adapter", str(val),
                            "--out", str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "--val-adapter: name each of several adapters" in err
    code, err = fx.run_cli([*argv, "--val-adapter", f"x={tmp_path / 'none'}",
                            "--out", str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "adapter" in err and "no such" in err


def score_argv(inputs, out, *vals):
    """tov score along the trajectory with the options of the tiny `tov select` runs (less
    its selection options --n and --bins), one --val per entry of ``vals``."""
    options = list(fx.SELECT_OPTIONS)
    for flag in ("--n", "--bins"):
        i = options.index(flag)
        del options[i:i + 2]
    return ["score", "--quiet", "--model", str(inputs["model"]), "--pool", str(inputs["pool"]),
            *(a for val in vals for a in ("--val", val)), "--out", str(out), *options]


def test_score_along_the_trajectory_of_several_targets_resumes(inputs, run, tmp_path,
                                                               monkeypatch):
    """tov score --val NAME=PATH (K = 2) writes the scores.parquet tov select writes for the
    same targets and seed (every target's mean and per-epoch columns), bit for bit; a
    rerun on its --state-dir trains nothing again, and one that lost its last epoch trains
    only that epoch; both write the same file."""
    from tov_datasets import trajectory

    trained = []
    train_base = trajectory._train_base
    monkeypatch.setattr(trajectory, "_train_base",
                        lambda run, k: (trained.append(k), train_base(run, k))[1])
    out, state = tmp_path / "scores.parquet", tmp_path / "state"
    argv = [*score_argv(inputs, out, f"math={inputs['val']}", f"music={inputs['music']}"),
            "--state-dir", str(state)]
    assert cli.main(argv) == 0
    expected = run[0] / cli.SCORES_FILE
    assert pq.read_table(out).equals(pq.read_table(expected))
    assert pq.read_table(out).column_names == pq.read_table(expected).column_names
    assert fx.sha256(out) == fx.sha256(expected)
    assert trained == [1, 2]
    out.unlink()
    assert cli.main(argv) == 0
    assert trained == [1, 2] and fx.sha256(out) == fx.sha256(expected)
    manifest = state / MANIFEST_NAME
    record = json.loads(manifest.read_text())
    record["steps"] = {k: v for k, v in record["steps"].items() if not k.startswith("epoch_2/")}
    manifest.write_text(json.dumps(record))
    shutil.rmtree(state / "epoch_002")
    assert cli.main(argv) == 0
    assert trained == [1, 2, 2] and fx.sha256(out) == fx.sha256(expected)


def test_score_along_the_trajectory_with_a_plain_val_is_unchanged(inputs, plain_run, tmp_path):
    """A plain --val PATH: tov_score and tov_score_epoch_K, the bytes of tov select's
    scores.parquet for the same run."""
    out = tmp_path / "scores.parquet"
    assert cli.main(score_argv(inputs, out, str(inputs["val"]))) == 0
    assert pq.read_table(out).column_names == [
        "tov_row", "tov_score", "tov_num_tokens", "tov_score_epoch_1", "tov_score_epoch_2",
        cli.IN_BASE]
    assert fx.sha256(out) == fx.sha256(plain_run / cli.SCORES_FILE)


@pytest.mark.parametrize("vals, message", [
    (["math={val}", "math={music}"], "--val: names ['math'] appear more than once"),
    (["math={val}", "a.b={music}"], "--val: 'a.b' cannot name a score column"),
    (["math={val}", "other=missing.jsonl"],
     "--val other=missing.jsonl: no such file or directory"),
    (["math={val}", "other="], "--val other=: give the path after '='"),
    (["{val}", "{music}"], "--val: name each of several validation sets"),
    (["math={val}", "math_epoch_1={music}"], "--val: target 'math_epoch_1' would share"),
])
def test_score_with_bad_targets_exits_2_naming_val(inputs, tmp_path, capsys, vals, message):
    out = tmp_path / "scores.parquet"
    argv = score_argv(inputs, out, *(v.format(**inputs) for v in vals))
    code, err = fx.run_cli(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("tov score: error: ") and message in err
    assert not out.exists()


def test_score_state_dir_holding_a_target_input_is_refused(inputs, tmp_path, capsys):
    """--state-dir (or --out) that is or holds a named --val file: refused, the file kept."""
    snapshot = fx.snapshot(inputs["music"].parent)
    vals = (f"math={inputs['val']}", f"music={inputs['music']}")
    out = tmp_path / "scores.parquet"
    state = inputs["music"].parent
    code, err = fx.run_cli([*score_argv(inputs, out, *vals), "--state-dir", str(state)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--state-dir {state} contains --" in err
    code, err = fx.run_cli([*score_argv(inputs, out, *vals), "--state-dir", str(inputs["music"])],
                           capsys)
    assert code == 2 and f"--state-dir {inputs['music']} is --val music" in err
    assert fx.snapshot(inputs["music"].parent) == snapshot and not out.exists()


def test_holdout_check_per_target_in_the_run_record(inputs, tmp_path):
    """--holdout-fraction with two targets: one check line per target in run.json and
    report.md, each counting that target's held-out rows (2 of math's 8, 2 of music's 8)."""
    out = tmp_path / "out"
    assert cli.main(targets_argv(inputs, out, "--holdout-fraction", "0.25")) == 0
    counts = json.loads((out / cli.RUN_FILE).read_text())["counts"]
    text = (out / "report.md").read_text()
    for name in TARGETS:
        line = counts[f"held-out check ({name})"]
        assert " of 2 validation rows kept out of the val updates against 48 pool rows" in line
        assert 0 <= float(line.split()[1]) <= 1 and line in text
    assert "held-out check" not in counts
