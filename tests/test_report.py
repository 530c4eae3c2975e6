"""report.py with several named targets: the overlap matrix, a section per target with its
own score column, bins and composition tables, its plots, and stale plots removed."""

import numpy as np
import pyarrow as pa

from tov_datasets import report
from tov_datasets.select import length_bins, selection_overlap

ROWS = 90


def _scores_table(rng: np.random.Generator) -> pa.Table:
    """A named-targets scores table (a, b; 2 epochs each) of random non-zero scores."""
    epochs = {f"tov_score_{t}_epoch_{k}": rng.normal(size=ROWS).astype(np.float32)
              for t in "ab" for k in (1, 2)}
    columns = {"tov_row": np.arange(ROWS)}
    columns.update({f"tov_score_{t}": (epochs[f"tov_score_{t}_epoch_1"]
                                       + epochs[f"tov_score_{t}_epoch_2"]) / 2 for t in "ab"})
    columns["tov_num_tokens"] = rng.integers(1, 40, ROWS).astype(np.int32)
    return pa.table({**columns, **epochs})


def _selections(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"a": np.sort(rng.choice(ROWS, 20, replace=False)),
            "b": np.sort(rng.choice(ROWS, 12, replace=False))}


def test_overlap_rows_count_shared_rows():
    rng = np.random.default_rng(0)
    selections = {**_selections(rng), "c": rng.choice(ROWS, 7, replace=False)}
    rows = report.overlap_rows(selection_overlap(selections))
    for (name, *counts), first in zip(rows, selections.values(), strict=True):
        assert counts == [len(set(first.tolist()) & set(other.tolist()))
                          for other in selections.values()], name


def test_targets_report_has_the_overlap_and_a_section_per_target(tmp_path):
    rng = np.random.default_rng(1)
    scores, selections = _scores_table(rng), _selections(rng)
    groups = rng.choice(["x", "y", "z"], ROWS)
    overlap = selection_overlap(selections)
    data = report.targets_report(
        "two targets", scores, selections, overlap, counts={"pool rows": ROWS},
        sections={"Inputs": "the inputs"}, target_sections={"b": {"Extra": "b only"}},
        num_bins=3, groups=groups, group_column="topic")
    a = data.targets["a"]
    np.testing.assert_array_equal(a.scores, scores.column("tov_score_a").to_numpy())
    assert list(a.epoch_scores) == ["tov_score_a_epoch_1", "tov_score_a_epoch_2"]
    assert list(a.selections) == ["a"]
    written = report.write_report(tmp_path, data)
    text = (tmp_path / report.REPORT_NAME).read_text()
    shared = len(set(selections["a"].tolist()) & set(selections["b"].tolist()))
    assert f"| a | 20 | {shared} |\n| b | {shared} | 12 |" in text
    assert f"their union: {20 + 12 - shared} rows" in text
    section_b = text.split("## Target `b`")[1]
    assert "### Extra\n\nb only" in section_b and "### Extra" not in text.split("## Target `b`")[0]
    # the bins table of b: rows per bin and rows of b's selection per bin, recomputed
    bins = length_bins(scores.column("tov_num_tokens").to_numpy(), 3)
    table = section_b.split("### Scores per length bin")[1].split("###")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "bin" not in line]
    for b, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        b_scores = scores.column("tov_score_b").to_numpy()[bins == b].astype(np.float64)
        assert int(cells[2]) == (bins == b).sum()
        assert float(cells[3]) == float(f"{b_scores.mean():.4g}")
        assert int(cells[-1]) == (bins[selections["b"]] == b).sum()
    composition = section_b.split("### Composition by `topic`")[1].split("###")[0]
    chosen = groups[selections["b"]]
    for group in "xyz":
        assert f"| {group} | {(groups == group).sum()} |" in composition
        assert f"| {(chosen == group).sum()} | {(chosen == group).mean():.1%} |" in composition
    for key in ("bins", "composition", "agreement"):
        for name in "ab":
            path = tmp_path / report.PLOTS[key].replace(".png", f"_{name}.png")
            assert written[f"{key}_{name}"] == path and path.is_file()
            assert f"]({path.name})" in text


def test_stale_plots_of_other_targets_are_removed(tmp_path):
    rng = np.random.default_rng(2)
    scores, selections = _scores_table(rng), _selections(rng)
    (tmp_path / "score_by_length_bin_old.png").write_bytes(b"stale")
    (tmp_path / report.PLOTS["bins"]).write_bytes(b"stale")
    report.write_report(tmp_path, report.targets_report(
        "t", scores, selections, selection_overlap(selections), num_bins=3))
    plots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert plots == ["epoch_agreement_a.png", "epoch_agreement_b.png",
                     "score_by_length_bin_a.png", "score_by_length_bin_b.png"]
