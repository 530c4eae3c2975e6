"""Kill harness: SIGKILL `tov select` at many seeded points, rerun, compare bit for bit.

    python benchmarks/kill_harness.py --kills 20               # -> results/kill_harness.json
    python benchmarks/kill_harness.py --kills 20 --mode fork   # runs forked from a server

A tiny random Llama and tokenizer are saved to disk with JSONL pool and val files; `tov
select` runs on them in its own processes ("exec": a fresh interpreter per run, imports
included; "fork": forked from a server that imported everything once). Two uninterrupted
runs give the reference (they must agree); then one chain of runs on one output directory
is SIGKILLed at ``--kills`` points drawn from a seeded RNG over the reference run's work
(half spread by time, half aimed at stages: training, scoring, selection, file writes, ...;
see tests/_cli_fixtures.py), rerun after each kill and run to completion. After every kill
a run.json present must describe correct outputs; the finished scores.parquet and
selected.parquet must be bit-identical to the reference, with every pool row scored once
and n distinct rows selected. The CI version is tests/test_crash_resume.py.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_result  # noqa: E402
from tests import _cli_fixtures as fx  # noqa: E402

N = 12


def _seconds(trace: list[tuple[float, str]]) -> float:
    return trace[-1][0] - trace[0][0]


def run(args: argparse.Namespace, work: Path) -> dict:
    """The reference runs, the kill chain and what they showed."""
    inputs = fx.make_inputs(work / "inputs", args.pool_rows)
    extra = ("--epochs", str(args.epochs))
    before = fx.snapshot(*inputs.values())
    failures: list[str] = []

    def check(out: Path) -> None:
        try:
            fx.check_outputs(out, work / "reference", args.pool_rows, N)
        except AssertionError as e:
            failures.append(f"{out.name}: {e}")

    started = time.monotonic()
    with fx.Launcher(args.mode) as launcher:
        warm = fx.finish(launcher.start(work / "warm.trace",
                                        fx.select_argv(inputs, work / "warm", *extra)))
        reference = fx.finish(launcher.start(work / "reference.trace",
                                             fx.select_argv(inputs, work / "reference", *extra)))
        check(work / "warm")
        kills = fx.plan_kills(reference, args.kills, args.seed)
        chain_started = time.monotonic()
        done, runs = fx.kill_chain(launcher, kills,
                                   lambda out: fx.select_argv(inputs, out, *extra),
                                   work / "chain", reference, check)
        chain_seconds = time.monotonic() - chain_started
    landed = [k for k in done if not k.missed]
    inputs_unchanged = fx.snapshot(*inputs.values()) == before
    return {
        "summary": {
            "kills": len(landed),
            "missed (retried on a fresh directory)": len(done) - len(landed),
            "runs": runs,
            "stages hit": dict(collections.Counter(k.stage for k in landed).most_common()),
            "identical": not failures and inputs_unchanged,
            "inputs unchanged": inputs_unchanged,
            "failures": failures,
            "uninterrupted run s": round(_seconds(reference), 3),
            "first uninterrupted run s": round(_seconds(warm), 3),
            "chain s": round(chain_seconds, 1),
            "total s": round(time.monotonic() - started, 1),
        },
        "kills": [dataclasses.asdict(k) for k in done],
        "reference_trace": [(round(t - reference[0][0], 4), e) for t, e in reference],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the chain")
    parser.add_argument("--mode", choices=("exec", "fork"), default="exec",
                        help="a fresh interpreter per run, or forked from a pre-imported server")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--pool-rows", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tov-kill-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    rows = [{"#": i, "aim": k["how"], "at s": k["offset"], "aimed at": fx.stage_of(k["anchor"]),
             "landed in": k["stage"] or "-", "last event": k["last_event"] or "(finished)",
             "run s": k["seconds"]} for i, k in enumerate(result["kills"])]
    print_table(rows, f"tov select SIGKILLed {result['summary']['kills']} times ({args.mode})")
    print()
    print_table([{"": k, "value": v} for k, v in result["summary"].items()], "summary")
    config = {"kills": args.kills, "mode": args.mode, "seed": args.seed,
              "pool_rows": args.pool_rows, "epochs": args.epochs, "n": N,
              "shard_rows": fx.SHARD_ROWS, "select_options": list(fx.SELECT_OPTIONS)}
    path = write_result("kill_harness", config, result["summary"],
                        {"kills": result["kills"], "reference_trace": result["reference_trace"]})
    print(f"-> {path}")
    if not result["summary"]["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
