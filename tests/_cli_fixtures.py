"""Shared helpers for the CLI robustness tests and the kill harness.

- inputs: a tiny random Llama + word-level tokenizer saved with ``save_pretrained`` and
  small JSONL pool/val files (`make_inputs`), `snapshot` (mtime + sha256 of files, to prove
  inputs are never modified) and `run_cli` (exit code + one-line stderr);
- tracing: `traced` wraps a few library functions so that a run appends one line per event
  (stage start, trajectory step check/record, epoch training, file write, selection) to a
  trace file, unbuffered, so the file is complete up to the instant of a SIGKILL. `tov` runs
  with tracing on and score shards of SHARD_ROWS rows in their own processes (`Launcher`):
  ``python -m tests._cli_fixtures TRACE SHARD_ROWS tov-arguments...`` per run ("exec"), or
  forked from ``python -m tests._cli_fixtures --serve``, which imported everything once
  ("fork": the ~5-20 s of imports per run are saved);
- the kill harness: `plan_kills` draws kill points from a seeded RNG over an uninterrupted
  run's trace, `kill_chain` SIGKILLs a run at each point in turn, rerunning on the same
  output directory, then runs it to completion; `check_outputs` compares a finished output
  directory with the uninterrupted one.

Kill points: half are times drawn one per equal slice of the uninterrupted run's work (from
its first event after the imports to its end); the other half go through `KILL_STAGES` in
turn (base training, val training, scoring, selection, file writes, ...: short steps are hit
too), each a random event of that stage with a uniform delay inside the first half of the
event's duration. All draws come from one seeded RNG. Each kill point becomes (anchor event,
delay). The run SIGKILLs itself (`KillPlan`): ``delay`` seconds after it logs the trigger
(the anchor, or the first later event of the reference trace if the anchor's step is
already done), or, if that step ends first, just before it logs its next event. So a kill
always lands in the trigger's step, however fast or loaded the machine is (a kill sent from
outside, polling the trace, landed a step or two late on a slow machine), and what a rerun
finds on disk does not depend on timing. The module-level imports are light: an "exec" run
logs "start" before torch is imported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ("math", "music", "law")
# `tov select` options of the tiny runs: 2 epochs of 24 base rows, rank-2 LoRA, on the CPU
# (bit-identical reruns; on CUDA only with deterministic algorithms).
SELECT_OPTIONS = ("--n", "12", "--base-size", "24", "--epochs", "2", "--lora-rank", "2",
                  "--batch-size", "8", "--max-length", "24", "--bins", "4", "--lr", "1e-3",
                  "--device", "cpu")
SHARD_ROWS = 16  # rows per score shard in traced runs: several shards per epoch
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OUTPUTS = ("scores.parquet", "selected.parquet")


# ---------------------------------------------------------------------------- inputs
def text_rows(count: int, seed: int, topics: Sequence[str] = TOPICS) -> list[dict[str, Any]]:
    """``count`` rows {"text", "topic", "id"} of random tiny-vocabulary words."""
    from tests import tiny

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        topic = topics[i % len(topics)]
        words = rng.choice(tiny.WORDS, size=int(rng.integers(3, 20)))
        rows.append({"text": f"{topic} " + " ".join(words), "topic": topic, "id": i})
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_inputs(root: Path, pool_rows: int = 48) -> dict[str, Path]:
    """A saved tiny causal LM (model + tokenizer directory), a pool and an 8-row val set."""
    from tests import tiny

    root.mkdir(parents=True, exist_ok=True)
    tok = tiny.tokenizer()
    tiny.causal_lm(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {
        "model": root / "model",
        "pool": write_jsonl(root / "pool.jsonl", text_rows(pool_rows, 0)),
        "val": write_jsonl(root / "val.jsonl", text_rows(8, 1, topics=("math",))),
    }


def select_argv(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``tov select`` arguments for the tiny inputs (``extra`` last, so it may override)."""
    return ["select", "--quiet", "--model", str(inputs["model"]), "--pool", str(inputs["pool"]),
            "--val", str(inputs["val"]), "--out", str(out), *SELECT_OPTIONS, *extra]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*paths: Path) -> dict[str, tuple[int, str]]:
    """{file: (mtime_ns, sha256)} of the given files and of every file under directories."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return {str(f): (f.stat().st_mtime_ns, sha256(f)) for f in files if f.is_file()}


def run_cli(argv: Sequence[str], capsys: Any) -> tuple[int, str]:
    """(exit code, stderr) of ``tov`` run in this process."""
    from tov_datasets import cli

    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------------------- tracing
@dataclass
class KillPlan:
    """When a traced run SIGKILLs itself: ``delay`` seconds after it logs one of
    ``triggers``, or just before its next event (or its exit) if that comes first."""

    triggers: list[str]
    delay: float


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Tracer:
    """Appends "<monotonic seconds>\\t<event>" lines to a file with one unbuffered write each;
    with a `KillPlan`, SIGKILLs its process as the plan says. A lock keeps the timer's kill
    and an event's line apart: the last line is always the trigger's step."""

    def __init__(self, path: Path, kill: KillPlan | None = None):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.kill, self.armed = kill, False
        self.lock = threading.Lock()

    def __call__(self, event: str) -> None:
        with self.lock:
            self.end_of_step()
            os.write(self.fd, f"{time.monotonic():.6f}\t{event}\n".encode())
            if self.kill is not None and event in self.kill.triggers:
                self.armed = True
                timer = threading.Timer(self.kill.delay, self._timer)
                timer.daemon = True  # a run that fails is not held open by it
                timer.start()

    def end_of_step(self) -> None:
        """The logged step is over: a kill still pending lands now."""
        if self.armed:
            _sigkill_self()

    def _timer(self) -> None:
        with self.lock:
            _sigkill_self()

    def close(self) -> None:
        os.close(self.fd)

    @classmethod
    def once(cls, path: Path, event: str) -> None:
        tracer = cls(path)
        tracer(event)
        tracer.close()


def read_trace(path: Path) -> list[tuple[float, str]]:
    """The (time, event) lines of a trace file (a missing file: none)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(float(t), e) for t, e in (line.split("\t", 1) for line in lines if "\t" in line)]


def _written(out: Path) -> Callable[..., str | None]:
    """The event of an atomic write: "write <path under out>" (manifest saves are left out:
    the step events stand for them)."""

    def event(path: Any, *_: Any) -> str | None:
        path = Path(path).resolve()
        if path.name == "manifest.json":
            return None
        return f"write {path.relative_to(out.resolve()).as_posix()}"

    return event


@contextlib.contextmanager
def traced(trace: Path, out: Path, shard_rows: int = SHARD_ROWS,
           kill: KillPlan | None = None) -> Iterator[None]:
    """Within the block, runs log their events to ``trace`` (module doc), the trajectory
    writes score shards of ``shard_rows`` rows and the process is SIGKILLed as ``kill``
    says (at the latest when the block ends). The library is restored on exit."""
    from tov_datasets import report, storage, trajectory

    tracer = Tracer(trace, kill)

    def patch(owner: Any, name: str, label: Callable[..., str | None]) -> tuple:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            event = label(*args, **kwargs)
            if event:
                tracer(event)
            return original(*args, **kwargs)

        return owner, name, wrapper

    written = _written(out)
    patches = [
        patch(report.Stages, "__call__", lambda self, name: f"stage {name}"),
        patch(storage.Manifest, "__enter__", lambda self: "open manifest"),
        patch(storage.Manifest, "verify", lambda self, step: f"begin {step}"),
        patch(storage.Manifest, "record", lambda self, step, *a, **k: f"end {step}"),
        patch(trajectory, "_train_base", lambda run, k: f"epoch_{k}/train base"),
        patch(trajectory, "_train_val", lambda run, k: f"epoch_{k}/train val"),
        patch(trajectory, "select_by_score", lambda *a, **k: "select"),
        patch(storage, "atomic_write", written),
        patch(storage, "atomic_write_dir", written),
        patch(report, "atomic_write", written),
        (trajectory, "SHARD_ROWS", shard_rows),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
        tracer.end_of_step()
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        tracer.close()


def stage_of(event: str) -> str:
    """The stage a run is in after logging ``event`` (until its next event)."""
    rules = (
        (r"start$", "imports"),
        (r"stage load ", "loading data and model"),
        (r"open manifest$", "trajectory setup"),
        (r"begin epoch_\d+/train$", "resume check / checkpoint load"),
        (r"epoch_\d+/train base$", "base training"),
        (r"epoch_\d+/train val$", "val training"),
        (r"write trajectory/epoch_\d+/(base|val|optimizer)", "checkpoint write"),
        (r"begin epoch_\d+/scores/", "scoring"),
        (r"write trajectory/epoch_\d+/scores/", "score shard write"),
        (r"end ", "manifest record"),
        (r"select$", "selection"),
        (r"(stage write outputs|write \w+\.parquet)$", "output write"),
        (r"(stage report|write .*\.(md|png))$", "report write"),
        (r"write run\.json$", "run.json write"),
        (r"exit$", "exit"),
    )
    return next((stage for pattern, stage in rules if re.match(pattern, event)), "other")


def _import_tov() -> Any:
    """The imports of a `tov` run (torch on one thread) and select's numba code compiled."""
    import torch

    from tov_datasets import cli, select

    torch.set_num_threads(1)
    select.select_indices(np.ones(4, np.float32), np.ones(4, np.int64), 2, num_bins=2)
    return cli


def traced_tov(trace: Path, shard_rows: int, argv: Sequence[str],
               kill: KillPlan | None = None) -> int:
    """``tov argv`` with tracing: "start" first (before the imports), "exit" last."""
    Tracer.once(trace, "start")
    cli = _import_tov()
    out = Path(argv[list(argv).index("--out") + 1])
    with traced(trace, out, shard_rows, kill):
        code = cli.main(list(argv))
    Tracer.once(trace, "exit")
    return code


def _forked_run(request: dict[str, Any], modules: Path) -> None:
    """The child of the fork server: the run, then the modules it imported, then exit."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        kill = KillPlan(**request["kill"]) if request["kill"] else None
        code = traced_tov(Path(request["trace"]), request["shard_rows"], request["argv"], kill)
        modules.write_text("\n".join(sys.modules))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    """The fork server: import once, then per request line {"trace", "shard_rows", "argv",
    "kill", "log"} fork a traced `tov` run (stdout/stderr to "log"), answer {"pid"}, reap it and
    answer {"status"} (the exit code, -signal if killed). The modules a finished run
    imported lazily are then imported here, so that later runs start with them (imports
    only: no thread pools are started before a fork)."""
    import importlib

    _import_tov()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        modules = Path(request["log"]).with_suffix(".modules")
        pid = os.fork()
        if pid == 0:
            _forked_run(request, modules)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        if modules.exists():
            for name in modules.read_text().split():
                if name not in sys.modules and name != "__main__":
                    with contextlib.suppress(Exception):
                        importlib.import_module(name)
            modules.unlink()
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


def main(argv: Sequence[str]) -> int:
    """``--serve`` (`_serve`) or ``TRACE SHARD_ROWS tov-arguments...`` (`traced_tov`; a
    `KillPlan` as JSON in $TOV_TEST_KILL_PLAN)."""
    if list(argv) == ["--serve"]:
        _serve()
        return 0
    plan = os.environ.get("TOV_TEST_KILL_PLAN")
    kill = KillPlan(**json.loads(plan)) if plan else None
    return traced_tov(Path(argv[0]), int(argv[1]), argv[2:], kill)


class Run:
    """One traced `tov` process: ``pid``, ``trace``, ``wait()`` (exit code, or -9 after
    SIGKILL) and ``log()`` (its stdout + stderr)."""

    def __init__(self, pid: int, trace: Path, log: Path, status: Callable[[], int]):
        self.pid, self.trace, self._log, self._status = pid, trace, log, status
        self.code: int | None = None

    def wait(self) -> int:
        if self.code is None:
            self.code = self._status()
        return self.code

    def log(self) -> str:
        return self._log.read_text() if self._log.exists() else ""


class Launcher:
    """Starts traced `tov` runs as processes. ``mode="exec"``: a fresh interpreter per run
    (``python -m tests._cli_fixtures``, imports included, ~5-20 s each here); ``"fork"``:
    forked from one server process that imported everything once (a run costs its work
    only). Either way each run is its own process, killed with SIGKILL."""

    def __init__(self, mode: str = "fork"):
        if mode not in ("exec", "fork"):
            raise ValueError(f"mode={mode!r}; expected 'exec' or 'fork'")
        self.mode = mode
        self.env = {**os.environ, **CHILD_ENV}
        self.server: subprocess.Popen | None = None
        if mode == "fork":
            self.server = subprocess.Popen(
                [sys.executable, "-m", "tests._cli_fixtures", "--serve"], cwd=ROOT,
                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            self.messages: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, daemon=True).start()
            self._message("ready", timeout=600)

    def _read(self) -> None:
        assert self.server is not None and self.server.stdout is not None
        for line in self.server.stdout:
            self.messages.put(json.loads(line))
        self.messages.put({"closed": True})

    def _message(self, key: str, timeout: float | None = None) -> Any:
        message = self.messages.get(timeout=timeout)
        if key not in message:
            raise RuntimeError(f"the fork server sent {message}, expected {key!r}")
        return message[key]

    def start(self, trace: Path, argv: Sequence[str], kill: KillPlan | None = None) -> Run:
        log = trace.with_suffix(".out")
        plan = asdict(kill) if kill else None
        if self.server is None:
            command = [sys.executable, "-m", "tests._cli_fixtures", str(trace),
                       str(SHARD_ROWS), *argv]
            env = {**self.env, "TOV_TEST_KILL_PLAN": json.dumps(plan) if plan else ""}
            with open(log, "w") as f:
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=f)
            return Run(proc.pid, trace, log, proc.wait)
        assert self.server.stdin is not None
        request = {"trace": str(trace), "shard_rows": SHARD_ROWS, "argv": list(argv),
                   "kill": plan, "log": str(log)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        pid = self._message("pid", timeout=60)
        return Run(pid, trace, log, lambda: self._message("status"))

    def close(self) -> None:
        if self.server is not None:
            self.server.communicate(timeout=60)  # stdin closed: the server ends
            self.server = None

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- kill harness
@dataclass
class Kill:
    """One planned SIGKILL and, once done, where it landed."""

    anchor: str  # reference event the delay counts from
    delay: float  # seconds after the anchor (or the first later event)
    offset: float  # seconds into the reference run's work (for ordering and reports)
    how: str  # "time" (one per slice of the run) or "stage" (an event of a KILL_STAGES entry)
    run: int = -1  # which process of the chain it killed
    trigger: str = ""  # the event the delay counted from in that process
    last_event: str = ""  # the last event the killed process logged
    stage: str = ""  # stage_of(last_event)
    seconds: float = 0.0  # wall time of the killed process
    missed: bool = False  # the process finished before the kill could land


# The stages the "stage" half of the kill points goes through, in this order.
KILL_STAGES = ("base training", "val training", "scoring", "selection", "checkpoint write",
               "score shard write", "output write", "manifest record", "run.json write",
               "report write", "trajectory setup", "loading data and model")


def plan_kills(reference: list[tuple[float, str]], count: int, seed: int) -> list[Kill]:
    """``count`` kill points over the work of an uninterrupted run's trace (module doc), in
    the order they occur."""
    rng = np.random.default_rng(seed)
    events = [(t, e) for t, e in reference if e not in ("start", "exit")]
    end = next(t for t, e in reference if e == "exit")
    begin = events[0][0]
    times = [t - begin for t, _ in events]
    gaps = [b - a for a, b in zip(times, [*times[1:], end - begin], strict=True)]
    kills = []
    by_time = count - count // 2
    for i in range(by_time):  # one per slice of the work
        offset = float(rng.uniform(i, i + 1) * (end - begin) / by_time)
        j = int(np.searchsorted(times, offset, side="right")) - 1
        kills.append(Kill(events[j][1], offset - times[j], offset, "time"))
    stages = [stage_of(e) for _, e in events]
    wanted = [s for s in KILL_STAGES if s in stages]
    for stage in (wanted * count)[: count // 2]:  # a random event of each stage in turn
        j = int(rng.choice([i for i, s in enumerate(stages) if s == stage]))
        delay = float(rng.uniform(0, gaps[j] / 2))  # early in it: runs vary in speed
        kills.append(Kill(events[j][1], delay, times[j] + delay, "stage"))
    return sorted(kills, key=lambda k: k.offset)


def _kill_plan(kill: Kill, reference: list[tuple[float, str]]) -> KillPlan:
    """The run's `KillPlan` for ``kill``: its triggers are the anchor and every later event
    of the reference trace."""
    events = [event for _, event in reference]
    return KillPlan(events[events.index(kill.anchor):], kill.delay)


def finish(run: Run) -> list[tuple[float, str]]:
    """Wait for ``run`` to succeed; its trace."""
    code = run.wait()
    if code != 0:
        raise RuntimeError(f"tov exited {code}: {run.log().strip()[-3000:]}")
    return read_trace(run.trace)


def kill_chain(launcher: Launcher, kills: list[Kill], argv: Callable[[Path], list[str]],
               work: Path, reference: list[tuple[float, str]],
               check: Callable[[Path], None]) -> tuple[list[Kill], int]:
    """Run ``tov argv(out)``, SIGKILLing one run per planned kill and rerunning on the same
    output directory ``out`` (under ``work``), then once more to completion. After each
    kill, a run.json present must describe finished, correct outputs (``check(out)``). A
    kill that misses (the run logged no trigger and finished) is checked, recorded with
    ``missed`` and retried with no delay on a fresh output directory. Returns the kills
    (filled in, missed attempts included) and the number of runs."""
    work.mkdir(parents=True, exist_ok=True)
    done: list[Kill] = []
    runs, chains = 0, 0
    out = work / "out_0"
    for kill in kills:
        while True:
            started = time.monotonic()
            plan = _kill_plan(kill, reference)
            run = launcher.start(work / f"run_{runs:03d}.trace", argv(out), plan)
            code = run.wait()
            kill.run, kill.seconds = runs, time.monotonic() - started
            runs += 1
            if code == -signal.SIGKILL:
                events = [event for _, event in read_trace(run.trace)]
                kill.trigger = next(e for e in events if e in plan.triggers)
                kill.last_event = events[-1]
                kill.stage = stage_of(kill.last_event)
                done.append(kill)
                if (out / "run.json").exists():
                    check(out)
                break
            finish(run)
            check(out)
            done.append(Kill(**{**asdict(kill), "missed": True}))
            chains += 1
            out = work / f"out_{chains}"
            kill.delay = 0.0
    finish(launcher.start(work / f"run_{runs:03d}.trace", argv(out)))
    check(out)
    return done, runs + 1


def check_outputs(out: Path, reference: Path, pool_rows: int, n: int) -> None:
    """``out`` holds a finished `tov select` run identical to ``reference``: bit-identical
    scores and selection (files and tables), every pool row scored once, n distinct rows
    selected, the selected rows are the pool rows they claim to be, run.json's checksums
    hold and no temporary file is left."""
    import pyarrow.parquet as pq

    run = json.loads((out / "run.json").read_text())
    for name in OUTPUTS:
        assert sha256(out / name) == sha256(reference / name) == run["sha256"][name], name
        assert pq.read_table(out / name).equals(pq.read_table(reference / name)), name
    scores = pq.read_table(out / "scores.parquet")
    assert scores.column("tov_row").to_pylist() == list(range(pool_rows))
    selected = pq.read_table(out / "selected.parquet")
    rows = selected.column("tov_row").to_pylist()
    assert len(rows) == len(set(rows)) == n and rows == sorted(rows)
    assert selected.column("id").to_pylist() == rows  # the pool's "id" is its row index
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
