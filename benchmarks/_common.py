"""Shared plumbing for benchmark scripts: timing side by side and the results JSON schema
of shared notes (benchmark, command, commit, date, machine, versions, config, summary, details).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "peft", "datasets", "numba", "pyarrow"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def commit() -> str:
    """$TOV_COMMIT if set (a copy whose .git is not the code's, e.g. on the GPU machine), else
    HEAD of this checkout."""
    if os.environ.get("TOV_COMMIT"):
        return os.environ["TOV_COMMIT"]
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_slug() -> str:
    """The CUDA device's name as a file-name part, e.g. "nvidia_h200"."""
    import torch

    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(0).lower()).strip("_")


SIZE_NAME = {False: "full", True: "reduced (--small sizes)"}


def add_size_options(ap: argparse.ArgumentParser) -> None:
    """--small / --reduced / --tiny, --threads and --out-dir, shared by the evidence scripts."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--small", action="store_true", help="smoke sizes -> *_small.json")
    g.add_argument("--reduced", action="store_true",
                   help="the --small sizes, written under the full-run file name (for when a "
                   "full run does not fit the machine; config.size says so)")
    g.add_argument("--tiny", action="store_true", help="tiny random models -> *_tiny.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")


def resolve_size(args: argparse.Namespace) -> tuple[str, str, str]:
    """Set torch's threads; return (size named in the file, size of the data to set up,
    the size recorded in the result's config)."""
    import torch

    torch.set_num_threads(args.threads)
    size = "tiny" if args.tiny else "small" if args.small else "full"
    label = SIZE_NAME[args.reduced] if size == "full" else size
    return size, "small" if args.reduced else size, label


def command() -> str:
    """The command line that ran this script, with the script relative to the repository."""
    root = Path(__file__).resolve().parent.parent
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(root)) if script.is_relative_to(root) else sys.argv[0]
    return " ".join(["python", name, *sys.argv[1:]])


def write_result(
    name: str, config: dict, summary: dict, details: dict, filename: str | None = None
) -> Path:
    """Write one result file under benchmarks/results/ atomically and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command(),
        "commit": commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "config": config,
        "summary": summary,
        "details": details,
    }
    path = RESULTS_DIR / (filename or f"{name}.json")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def time_side_by_side(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each function `repeats` times, alternating between them; return seconds per run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def print_table(rows: list[dict], title: str = "") -> None:
    """Print a list of flat dicts as an aligned text table."""
    if title:
        print(title)
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
