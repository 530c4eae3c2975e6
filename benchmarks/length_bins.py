"""Where a quality configuration's target rows fall in the selection's equal-count length
bins (`tov_datasets.select.length_bins` over each pool row's scored-token count, as
`tov_select` bins them). Data and tokenizer only: nothing is trained or scored.

A target confined to a few bins can fill only those bins' share of the scored picks, however
well it is scored (README, "Selection quality", chat_long).

    python benchmarks/length_bins.py --config chat_long   # -> results/length_bins_chat_long.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks import _common, quality  # noqa: E402
from benchmarks.baselines._util import encode  # noqa: E402
from tov_datasets.formats import num_scored  # noqa: E402
from tov_datasets.models import infer_task  # noqa: E402
from tov_datasets.select import length_bins  # noqa: E402


def bin_occupancy(lengths: np.ndarray, is_target: np.ndarray, num_bins: int) -> dict[str, Any]:
    """Target rows per length bin (int list of num_bins), the bins holding any, and the
    [min, median, max] scored-token length of target and other rows."""
    bins = length_bins(lengths, num_bins)
    per_bin = np.bincount(bins[is_target & (bins >= 0)], minlength=num_bins)
    spread = [0, 50, 100]
    return {"target_rows_per_bin": per_bin.tolist(),
            "bins_with_targets": int(np.count_nonzero(per_bin)),
            "target_length_min_median_max": np.percentile(lengths[is_target], spread).tolist(),
            "other_length_min_median_max": np.percentile(lengths[~is_target], spread).tolist()}


def seed_occupancy(config: quality.Config, size: str, seed: int, num_bins: int,
                   models: dict[str, Any]) -> dict[str, Any]:
    s = quality.setup(config, size, seed, models)
    task = infer_task(s.model)
    lengths = np.array([num_scored(x, task) for x in encode(s.model, s.pool, s.tokenizer,
                                                             s.sizes.max_length)])
    return {"seed": seed, **bin_occupancy(lengths, s.is_target, num_bins)}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(quality.CONFIGS), required=True)
    ap.add_argument("--size", choices=["small", "full", "gpu"], default="full")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (tests)")
    ap.add_argument("--bins", type=int, default=10, help="tov_select's num_bins (default 10)")
    a = ap.parse_args(argv)
    config, size = quality.CONFIGS[a.config], "tiny" if a.tiny else a.size
    sizes = quality.TINY_SIZES if a.tiny else config.sizes[size]
    models: dict[str, Any] = {}
    per_seed = [seed_occupancy(config, size, seed, a.bins, models)
                for seed in sizes.seed_list()]
    summary = {"max_bins_with_targets": max(r["bins_with_targets"] for r in per_seed),
               "min_bins_with_targets": min(r["bins_with_targets"] for r in per_seed)}
    stem = "_".join(x for x in ("length_bins", a.config, "" if size == "full" else size) if x)
    path = _common.write_result("length_bins", {"config": a.config, "size": size,
                                                "bins": a.bins}, summary,
                                {"per_seed": per_seed}, filename=f"{stem}.json")
    _common.print_table([{"seed": r["seed"], "bins with targets": r["bins_with_targets"],
                          "targets per bin": " ".join(map(str, r["target_rows_per_bin"])),
                          "target median": r["target_length_min_median_max"][1],
                          "other median": r["other_length_min_median_max"][1]}
                         for r in per_seed], f"length bins, {a.config} ({size})")
    return path


if __name__ == "__main__":
    main()
