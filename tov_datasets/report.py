"""report.md and PNG plots of a ToV selection, for people (used by ``tov select`` and ``tov demo``).

The report holds tables of counts, which direction of the score is better, score statistics
per length bin, the composition of each selection against the pool (by a group column), the
agreement of each epoch's scores with their mean and with the epoch before (Spearman; one
row per epoch, so it grows linearly with the epochs) and the time per stage, plus up to three
plots. A report of several named targets (`TargetsReport`) holds the overlap matrix of the
per-target selections and one section per target with those tables (and its plots, named
``<plot>_<target>.png``). Plots use matplotlib's Agg canvas
directly (no pyplot state); every file is written atomically through ``storage.atomic_write``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tov_datasets.select import SelectionOverlap, length_bins
from tov_datasets.storage import atomic_write

__all__ = [
    "PLOTS",
    "REPORT_NAME",
    "ReportData",
    "Stages",
    "TargetsReport",
    "Timer",
    "TRAJECTORY_STAGES",
    "SCORE_DIRECTION",
    "bin_rows",
    "composition_rows",
    "device_name",
    "epoch_agreement_rows",
    "example_rows",
    "markdown_table",
    "overlap_rows",
    "plot_loss_gains",
    "plot_roc",
    "plot_target_share",
    "report_data",
    "targets_report",
    "write_report",
    "write_run_json",
]

log = logging.getLogger("tov")

REPORT_NAME = "report.md"
PLOTS = {
    "bins": "score_by_length_bin.png",
    "composition": "composition.png",
    "agreement": "epoch_agreement.png",
}
MAX_GROUPS = 15  # groups shown in the composition table and plot; the rest are pooled
OTHER_GROUPS = "(other)"
_DPI = 110
_VERSIONED = ("tov", "torch", "transformers", "peft", "datasets", "pyarrow", "numpy", "numba")
SCORE, NUM_TOKENS = "tov_score", "tov_num_tokens"
SCORE_DIRECTION = (
    "Higher `tov_score` is better: it is loss(base, x) - loss(val, x), how much one pass of "
    "training on the validation set raised the model's likelihood of the row, so high scores "
    "resemble the validation set. The score part of the selection takes the highest scores "
    "of each length bin; the random part is drawn uniformly (`tov_from_score` tells them "
    "apart in selected.parquet)."
)
EXAMPLES = 5  # rows shown from the top and from the bottom of the ranking
_PREVIEW_CHARS = 160
# tov_select's timings {key: seconds}, as reports name them.
TRAJECTORY_STAGES = {
    "setup": "ToV setup", "train_base": "ToV base training", "train_val": "ToV val training",
    "score": "ToV scoring", "io": "ToV checkpoint io", "select": "selection",
}


class Timer:
    """Wall-clock seconds per named stage, summed over the blocks timed under one name:
    ``with timer("score"): ...``; ``seconds`` holds {stage: seconds} (``names``: stages
    that start at 0.0)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(names, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, timings: Mapping[str, float], names: Mapping[str, str]) -> None:
        """Add a library's per-stage timings {key: s} under the names {key: name}."""
        for key, name in names.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + float(timings.get(key, 0.0))


class Stages(Timer):
    """A `Timer` that logs each stage: ``with stages("load model"): ...``."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("%s ...", name)
        try:
            with super().__call__(name):
                yield
        finally:
            log.info("%s: %.1f s", name, self.seconds[name])


@dataclass
class ReportData:
    """What a report shows; arrays have one entry per pool row (N,).

    scores: the (epoch-averaged) ToV score; lengths: scored tokens per row;
    epoch_scores: {column name: per-epoch scores}; selections: {name: selected row indices},
    the first one is the ToV selection; groups: a label per row for the composition
    (``group_column`` names it); counts: free-form {label: value} summary rows;
    timings: {stage: seconds}; sections: extra markdown sections {heading: body} shown after
    the summary.
    """

    title: str
    scores: np.ndarray
    lengths: np.ndarray
    selections: Mapping[str, np.ndarray]
    epoch_scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    num_bins: int = 10
    groups: np.ndarray | None = None
    group_column: str | None = None
    counts: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    sections: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TargetsReport:
    """What a report of several named targets shows: a summary, the overlap of the
    per-target selections, then one section per target.

    targets: {name: the target's `ReportData`} (its scores, lengths, selections with its
    own first, epoch scores, groups; its ``sections`` become subsections); overlap: shared
    rows between the per-target selections (`select.selection_overlap`); from_score: the
    same for their score-chosen parts, or None; counts, timings, sections: as in
    `ReportData`.
    """

    title: str
    targets: Mapping[str, ReportData]
    overlap: SelectionOverlap
    from_score: SelectionOverlap | None = None
    counts: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    sections: Mapping[str, str] = field(default_factory=dict)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bin_rows(data: ReportData) -> list[list[Any]]:
    """Per length bin: token range, rows, score mean/std/min/median/max, rows per selection."""
    bins = length_bins(data.lengths, data.num_bins)
    masks = {name: _mask(idx, bins.size) for name, idx in data.selections.items()}
    rows = []
    for b in range(data.num_bins):
        in_bin = bins == b
        if not in_bin.any():
            continue
        s = data.scores[in_bin].astype(np.float64)
        lengths = data.lengths[in_bin]
        rows.append([
            b, f"{lengths.min()}-{lengths.max()}", int(in_bin.sum()), s.mean(), s.std(),
            s.min(), float(np.median(s)), s.max(),
            *(int((mask & in_bin).sum()) for mask in masks.values()),
        ])
    return rows


def _mask(indices: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return mask


def _top_groups(groups: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group labels as strings with all but the MAX_GROUPS largest pooled, and their order
    (largest first)."""
    labels = np.asarray([str(g) for g in groups], dtype=object)
    names, counts = np.unique(labels, return_counts=True)
    order = [str(names[i]) for i in np.lexsort((names, -counts))]
    if len(order) > MAX_GROUPS:
        keep = set(order[: MAX_GROUPS - 1])
        labels = np.where(np.isin(labels, list(keep)), labels, OTHER_GROUPS)
        order = order[: MAX_GROUPS - 1] + [OTHER_GROUPS]
    return labels, order


def composition_rows(data: ReportData) -> list[list[Any]]:
    """Per group: pool count and share, then count and share of each selection."""
    labels, order = _top_groups(data.groups)
    selected = {name: labels[np.asarray(idx, dtype=np.int64)] for name, idx in
                data.selections.items()}
    rows = []
    for group in order:
        pool = int((labels == group).sum())
        row: list[Any] = [group, pool, f"{pool / labels.size:.1%}"]
        for chosen in selected.values():
            count = int((chosen == group).sum())
            row += [count, f"{count / max(chosen.size, 1):.1%}"]
        rows.append(row)
    return rows


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    import pandas as pd

    return pd.Series(values).rank(method="average").to_numpy()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def epoch_agreement_rows(data: ReportData) -> list[list[Any]]:
    """Per epoch k (over the rows with tokens): Spearman of its scores with the mean score,
    and with epoch k-1's (nan for the first). One row per epoch: O(L) correlations."""
    eligible = np.asarray(data.lengths) > 0
    mean = _ranks(np.asarray(data.scores)[eligible])
    rows, previous = [], None
    for name, values in data.epoch_scores.items():
        ranks = _ranks(np.asarray(values)[eligible])
        rows.append([name, _correlation(ranks, mean),
                     float("nan") if previous is None else _correlation(ranks, previous)])
        previous = ranks
    return rows


def overlap_rows(overlap: SelectionOverlap) -> list[list[Any]]:
    """The K x K shared-row counts, one row per selection: its name, then the rows it
    shares with each selection (the diagonal: its size)."""
    return [[name, *map(int, overlap.counts[i])] for i, name in enumerate(overlap.names)]


def _preview(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _PREVIEW_CHARS else line[: _PREVIEW_CHARS - 3] + "..."


def example_rows(
    scores: np.ndarray,
    lengths: np.ndarray,
    text_of: Any,
    selected: np.ndarray,
    from_score: np.ndarray,
    count: int = EXAMPLES,
) -> list[list[Any]]:
    """The ``count`` highest- and lowest-scored rows with tokens: rank, row, score, tokens,
    how it was selected ("score", "random" or "-") and a one-line preview ``text_of(row)``.
    selected: (n,) selected row indices; from_score: (n,) bool, True if picked by score."""
    eligible = np.flatnonzero(np.asarray(lengths) > 0)
    order = eligible[np.argsort(-np.asarray(scores, np.float64)[eligible], kind="stable")]
    picked = dict(zip(np.asarray(selected).tolist(),
                      np.where(np.asarray(from_score), "score", "random").tolist(), strict=True))
    ranks = list(range(min(count, order.size)))
    ranks += [r for r in range(max(order.size - count, 0), order.size) if r >= count]
    return [[rank + 1, int(order[rank]), float(scores[order[rank]]),
             int(lengths[order[rank]]), picked.get(int(order[rank]), "-"),
             _preview(text_of(int(order[rank])))] for rank in ranks]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))


def plot_bins(data: ReportData, path: Path) -> Path:
    """Box plot of the scores in each length bin, with the rows of the ToV selection on top."""
    bins = length_bins(data.lengths, data.num_bins)
    used = [b for b in range(data.num_bins) if (bins == b).any()]
    fig = _figure(max(6.0, 0.7 * len(used) + 2), 4.2)
    ax = fig.add_subplot()
    ax.boxplot([data.scores[bins == b] for b in used], positions=range(len(used)),
               showfliers=False)
    name, idx = next(iter(data.selections.items()))
    idx = np.asarray(idx, dtype=np.int64)
    idx = idx[bins[idx] >= 0]
    position = {b: i for i, b in enumerate(used)}
    xs = np.array([position[b] for b in bins[idx]], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, xs.size)
    ax.scatter(xs + jitter, data.scores[idx], s=8, alpha=0.6, color="tab:red",
               label=f"selected ({name})")
    labels = [f"{data.lengths[bins == b].min()}-{data.lengths[bins == b].max()}" for b in used]
    ax.set_xticks(range(len(used)), labels, rotation=30)
    ax.set_xlabel("length bin (scored tokens)")
    ax.set_ylabel("ToV score")
    ax.set_title("Score distribution per length bin")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_composition(data: ReportData, path: Path) -> Path:
    """Horizontal bars: share of each group in the pool and in each selection."""
    labels, order = _top_groups(data.groups)
    series = {"pool": labels}
    series.update({name: labels[np.asarray(idx, dtype=np.int64)] for name, idx in
                   data.selections.items()})
    fig = _figure(7.0, 1.2 + 0.35 * len(order) * max(1, len(series) / 2))
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    y = np.arange(len(order))
    for k, (name, values) in enumerate(series.items()):
        shares = [(values == g).sum() / max(values.size, 1) for g in order]
        ax.barh(y + k * height, shares, height=height, label=name)
    ax.set_yticks(y + height * (len(series) - 1) / 2, order)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(_percent())
    ax.set_xlabel("share of rows")
    ax.set_title(f"Composition by {data.group_column or 'group'}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def plot_agreement(data: ReportData, path: Path) -> Path:
    """Spearman of each epoch's scores with the mean and with the epoch before, by epoch (a
    fixed-size figure, whatever the number of epochs)."""
    rows = epoch_agreement_rows(data)
    epochs = np.arange(1, len(rows) + 1)
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(epochs, [r[1] for r in rows], marker="o", label="vs mean score")
    ax.plot(epochs, [r[2] for r in rows], marker="s", label="vs previous epoch")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Spearman")
    ax.set_title("Per-epoch score agreement")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_target_share(shares: Mapping[str, Mapping[str, float]], pool_share: float,
                      topic: str, path: Path) -> Path:
    """Target share of the pool and of each selection as bars, each bar stacked from its
    parts ({selection: {part: share of the selection's rows}}, e.g. ToV's scored half and
    random half), with lines at the pool's share and at 3x it."""
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    names = list(shares)
    colours = {}
    for i, name in enumerate(names):
        bottom = 0.0
        for part, share in shares[name].items():
            label = part or "target rows"
            colour = colours.setdefault(label, f"C{len(colours)}")
            ax.bar(i, share, bottom=bottom, color=colour)
            bottom += share
        ax.text(i, bottom, f"{bottom:.0%}", ha="center", va="bottom", fontsize="small")
    handles = [_patch(c, label) for label, c in colours.items()]
    for level, style in ((pool_share, ":"), (3 * pool_share, "--")):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1)
    ax.set_xticks(range(len(names)), names)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"share of {topic} rows")
    ax.set_title(f"Target share ({topic}); dotted: pool, dashed: 3x pool")
    ax.legend(handles=handles, loc="upper left", fontsize="small")
    return _save(fig, path)


def _patch(colour: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def plot_loss_gains(losses: Mapping[str, float], gains: Mapping[str, tuple[float, float]],
                    reference: str, path: Path) -> Path:
    """Left: target test loss per model. Right: each model's gain over ``reference`` in %
    ({name: (mean, standard error)}) with +-2 s.e. error bars."""
    fig = _figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    names = list(losses)
    values = [losses[k] for k in names]
    left.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize="small")
    low = min(values)
    left.set_ylim(low - 0.15 * (max(values) - low + 1e-9) - 0.05, max(values) * 1.02)
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("target test loss (mean over test rows)")
    left.set_title("Target test loss")
    gain_names = list(gains)
    means = [gains[k][0] for k in gain_names]
    errors = [2 * gains[k][1] for k in gain_names]
    right.bar(range(len(gain_names)), means, yerr=errors, capsize=6,
              color=[f"C{names.index(k)}" if k in names else "grey" for k in gain_names])
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(range(len(gain_names)), gain_names)
    right.set_ylabel(f"loss lowered vs {reference} (%, paired over test rows)")
    right.set_title(f"Gain over {reference} (+-2 s.e.)")
    return _save(fig, path)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, label: str, path: Path) -> Path:
    """ROC curve of a score for the positive rows, with the chance diagonal."""
    fig = _figure(4.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, drawstyle="default", label=f"{label} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (AUC 0.50)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Ranking quality of the raw score")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _score_parts(data: ReportData, level: str) -> list[str]:
    """The sections, composition, length-bin and epoch-agreement parts of one target, with
    headings at ``level`` ("##" or "###")."""
    parts = []
    for heading, body in data.sections.items():
        parts += [f"{level} {heading}", body]
    names = list(data.selections)
    if data.groups is not None:
        headers = [data.group_column or "group", "pool", "pool share"]
        for name in names:
            headers += [name, f"{name} share"]
        parts += [f"{level} Composition by `{data.group_column}`",
                  markdown_table(headers, composition_rows(data))]
    parts += [
        f"{level} Scores per length bin",
        "Equal-count bins of the rows with scored tokens, as the selection cuts them; the last "
        "columns count the rows each selection takes from the bin.",
        markdown_table(["bin", "tokens", "rows", "mean", "std", "min", "median", "max", *names],
                       bin_rows(data)),
    ]
    if data.epoch_scores:
        parts += [f"{level} Agreement between epochs (Spearman)",
                  markdown_table(["epoch", "vs mean score", "vs previous epoch"],
                                 epoch_agreement_rows(data))]
    return parts


def _summary_parts(title: str, counts: Mapping[str, Any], direction: str) -> list[str]:
    return [f"# {title}", "## Summary",
            markdown_table(["", "value"], [[k, v] for k, v in counts.items()]), direction]


def _closing_parts(timings: Mapping[str, float], plots: Mapping[str, Path]) -> list[str]:
    """Time per stage and the plots."""
    parts = []
    if timings:
        total = sum(timings.values())
        rows = [[stage, f"{seconds:.1f}", f"{seconds / total:.0%}" if total else "-"]
                for stage, seconds in timings.items()]
        parts += ["## Time per stage (s)", markdown_table(["stage", "seconds", "share"],
                                                          [*rows, ["total", f"{total:.1f}", ""]])]
    return parts + ["## Plots", *(f"![{key}]({p.name})" for key, p in plots.items())]


def _markdown(data: ReportData, plots: Mapping[str, Path]) -> str:
    parts = [*_summary_parts(data.title, data.counts, SCORE_DIRECTION),
             *_score_parts(data, "##"), *_closing_parts(data.timings, plots)]
    return "\n\n".join(parts) + "\n"


def _overlap_table(overlap: SelectionOverlap) -> str:
    return markdown_table(["", *overlap.names], overlap_rows(overlap))


def _targets_markdown(data: TargetsReport, plots: Mapping[str, Path]) -> str:
    direction = SCORE_DIRECTION.replace("`tov_score`", "`tov_score_<target>`").replace(
        "selected.parquet", "each selected_<target>.parquet")
    parts = [*_summary_parts(data.title, data.counts, direction)]
    for heading, body in data.sections.items():
        parts += [f"## {heading}", body]
    parts += [
        "## Overlap of the per-target selections",
        "Rows each pair of targets' selections share (the diagonal: each selection's size). "
        f"The combined selection is their union: {data.overlap.union} rows.",
        _overlap_table(data.overlap),
    ]
    if data.from_score is not None:
        parts += ["The same for the parts chosen by score (without the random parts): "
                  f"{data.from_score.union} rows in their union.", _overlap_table(data.from_score)]
    for name, target in data.targets.items():
        parts += [f"## Target `{name}`", *_score_parts(target, "###")]
    return "\n\n".join([*parts, *_closing_parts(data.timings, plots)]) + "\n"


def report_data(
    title: str,
    scores: Any,
    selections: Mapping[str, np.ndarray],
    *,
    target: str | None = None,
    **options: Any,
) -> ReportData:
    """`ReportData` from a pyarrow scores table (``tov_score``, ``tov_num_tokens`` and the
    ``tov_score_epoch_k`` columns; the named ``target``: ``tov_score_<target>`` and
    ``tov_score_<target>_epoch_k``); ``options`` are the other `ReportData` fields."""
    score = SCORE if target is None else f"{SCORE}_{target}"
    column = lambda name: scores.column(name).to_numpy()
    epochs = {c: column(c) for c in scores.column_names if c.startswith(f"{score}_epoch_")}
    return ReportData(title=title, scores=column(score), lengths=column(NUM_TOKENS),
                      selections=selections, epoch_scores=epochs, **options)


def targets_report(
    title: str,
    scores: Any,
    selections: Mapping[str, np.ndarray],
    overlap: SelectionOverlap,
    *,
    from_score: SelectionOverlap | None = None,
    counts: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    sections: Mapping[str, str] | None = None,
    target_sections: Mapping[str, Mapping[str, str]] | None = None,
    **options: Any,
) -> TargetsReport:
    """`TargetsReport` from a pyarrow scores table of named targets (``tov_score_<name>``,
    ``tov_num_tokens``, ``tov_score_<name>_epoch_k``) and each target's selection
    ({name: row indices}); target_sections: {name: its subsections}; ``options``: the
    per-target `ReportData` fields (num_bins, groups, group_column)."""
    targets = {
        name: report_data(name, scores, {name: rows}, target=name,
                          sections=(target_sections or {}).get(name, {}), **options)
        for name, rows in selections.items()
    }
    return TargetsReport(title=title, targets=targets, overlap=overlap, from_score=from_score,
                         counts=counts or {}, timings=timings or {}, sections=sections or {})


def _plots(data: ReportData, out_dir: Path, suffix: str = "") -> dict[str, Path]:
    """Draw one target's plots as ``<plot><suffix>.png``: {key<suffix>: path}. The
    composition plot only with ``data.groups``, the agreement plot only with epoch scores."""
    path = lambda key: out_dir / PLOTS[key].replace(".png", f"{suffix}.png")
    plots = {f"bins{suffix}": plot_bins(data, path("bins"))}
    if data.groups is not None:
        plots[f"composition{suffix}"] = plot_composition(data, path("composition"))
    if data.epoch_scores:
        plots[f"agreement{suffix}"] = plot_agreement(data, path("agreement"))
    return plots


def write_report(out_dir: str | Path, data: ReportData | TargetsReport) -> dict[str, Path]:
    """Write report.md and the plots into ``out_dir``; returns {name: path} of each file.

    The composition plot is drawn only when ``data.groups`` is given, the agreement plot
    only with per-epoch scores; several targets (`TargetsReport`): each target's plots as
    ``<plot>_<target>.png``. A plot not drawn is removed (an earlier report's would be
    stale).
    """
    out_dir = Path(out_dir)
    if isinstance(data, TargetsReport):
        plots = {key: path for name, target in data.targets.items()
                 for key, path in _plots(target, out_dir, f"_{name}").items()}
        text = _targets_markdown(data, plots)
    else:
        plots = _plots(data, out_dir)
        text = _markdown(data, plots)
    drawn = {path.name for path in plots.values()}
    for name in PLOTS.values():
        for stale in (out_dir / name, *out_dir.glob(name.replace(".png", "_*.png"))):
            if stale.name not in drawn:
                stale.unlink(missing_ok=True)
    report = atomic_write(out_dir / REPORT_NAME, lambda tmp: tmp.write_text(text))
    return {"report": report, **plots}


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def device_name(model: Any) -> str:
    """Where a model runs, e.g. "cpu (2 threads)" or "cuda:0 (NVIDIA H200)"."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device} ({threads} thread{'s' if threads != 1 else ''})"


def write_run_json(path: str | Path, **record: Any) -> Path:
    """run.json: ``record`` plus package versions and the finishing time, atomically."""
    content = {**record, "versions": _versions(),
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(content, indent=1, sort_keys=True, default=str) + "\n"
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))
