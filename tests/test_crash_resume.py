"""Crash safety of `tov select`: SIGKILLed runs resume to bit-identical outputs, and damaged
or half-written files are detected and exactly their steps redone.

The kill chain runs `tov select` (tiny random Llama saved to disk, 48-row JSONL pool, 2
epochs, score shards of 16 rows) as processes forked from a pre-imported server
(`tests._cli_fixtures.Launcher`), SIGKILLs one at each of 14 seeded kill points spread over
the run (`plan_kills`; a run kills itself inside the aimed step, `KillPlan`), reruns on the
same directory each time and compares the finished outputs with an uninterrupted run.
``benchmarks/kill_harness.py`` is the long version.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _cli_fixtures as fx
from tov_datasets import cli

POOL_ROWS = 48
N = 12
KILLS = 14
# The stages half of the kill points are aimed at (the other half are spread by time).
AIMED_AT = {"base training", "val training", "scoring", "selection", "checkpoint write",
            "score shard write", "output write"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fx.make_inputs(tmp_path_factory.mktemp("crash") / "inputs", POOL_ROWS)


@pytest.fixture(scope="module")
def launcher():
    with fx.Launcher("fork") as launcher:
        yield launcher


@pytest.fixture(scope="module")
def reference(inputs, launcher, tmp_path_factory):
    """An uninterrupted traced run (after a first run that loads the lazy imports into the
    fork server, which must give the same outputs): its output directory and trace."""
    root = tmp_path_factory.mktemp("reference")
    fx.finish(launcher.start(root / "warm.trace", fx.select_argv(inputs, root / "warm")))
    trace = fx.finish(launcher.start(root / "ref.trace", fx.select_argv(inputs, root / "ref")))
    fx.check_outputs(root / "warm", root / "ref", POOL_ROWS, N)
    return root / "ref", trace


def _check(reference_dir: Path):
    return lambda out: fx.check_outputs(out, reference_dir, POOL_ROWS, N)


def test_sigkill_at_14_points_then_resume_is_bit_identical(inputs, launcher, reference,
                                                           tmp_path):
    reference_dir, trace = reference
    before = fx.snapshot(*inputs.values())
    kills = fx.plan_kills(trace, KILLS, seed=0)
    done, runs = fx.kill_chain(launcher, kills, lambda out: fx.select_argv(inputs, out),
                               tmp_path, trace, _check(reference_dir))
    landed = [k for k in done if not k.missed]
    assert len(landed) == KILLS >= 10 and runs == len(done) + 1
    assert {fx.stage_of(k.anchor) for k in kills} >= AIMED_AT
    # a kill lands in its trigger's step on any machine (fx.KillPlan): every aimed stage is hit
    assert all(k.stage == fx.stage_of(k.trigger) for k in landed)
    assert {k.stage for k in landed} >= AIMED_AT, [k.stage for k in landed]
    assert fx.snapshot(*inputs.values()) == before  # inputs never modified


def _rerun(inputs, out: Path, trace: Path) -> list[str]:
    """`tov select` on ``out`` in this process, traced; its events."""
    with fx.traced(trace, out):
        assert cli.main(fx.select_argv(inputs, out)) == 0
    return [event for _, event in fx.read_trace(trace)]


def _damage(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))


def _training(k: int) -> list[str]:
    """The events of training epoch k and saving its checkpoint."""
    saved = [f"write trajectory/epoch_{k:03d}/{name}"
             for name in ("base", "val", "optimizer.safetensors")]
    return [f"epoch_{k}/train base", f"epoch_{k}/train val", *saved]


def _scoring(k: int, shards: range = range(3)) -> list[str]:
    """The events of scoring (and saving) shards of epoch k."""
    return [f"write trajectory/epoch_{k:03d}/scores/shard_{i:05d}.parquet" for i in shards]


@pytest.mark.parametrize(
    ("damage", "redone"),
    [
        ({"trajectory/epoch_001/scores/shard_00001.parquet": "corrupt"},
         _scoring(1, range(1, 2))),
        ({"trajectory/epoch_002/val/adapter_model.safetensors": "corrupt"},
         _training(2) + _scoring(2)),
        ({"trajectory/epoch_001/optimizer.safetensors": "corrupt"},
         _training(1) + _scoring(1) + _training(2) + _scoring(2)),
        ({"trajectory/epoch_002/base/adapter_model.safetensors":
          "trajectory/epoch_002/val/adapter_model.safetensors"}, _training(2) + _scoring(2)),
        ({"trajectory/epoch_002/scores/shard_00002.parquet": "delete"},
         _scoring(2, range(2, 3))),
        ({"selected.parquet": "corrupt", "run.json": "delete"}, []),
        ({"trajectory/epoch_001/scores/.shard_00000.parquet.tmp-x1": "half",
          "trajectory/epoch_002/.base.tmp-x2/adapter_model.safetensors": "half",
          ".selected.parquet.tmp-x3": "half"}, []),
    ],
    ids=["shard", "last-adapter", "first-optimizer", "swapped-adapter", "missing-shard",
         "outputs", "temp-files"],
)
def test_damaged_or_half_written_files_redo_exactly_their_steps(inputs, reference, tmp_path,
                                                                damage, redone):
    """Corrupt (half zeroed), deleted, swapped (a file replaced by another one) or
    half-written temporary files: the rerun redoes the damaged step and the steps that
    depend on it (later epochs, that epoch's shards), rewrites the outputs, removes the
    temporary files and ends bit-identical to the uninterrupted run."""
    reference_dir, _ = reference
    out = tmp_path / "out"
    shutil.copytree(reference_dir, out)
    for name, how in damage.items():
        path = out / name
        if how == "corrupt":
            _damage(path)
        elif how == "delete":
            path.unlink()
        elif how == "half":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"PAR1 half-written")
        else:
            shutil.copyfile(out / how, path)
    events = _rerun(inputs, out, tmp_path / "rerun.trace")
    trajectory_work = [e for e in events if e.startswith(("write trajectory/", "epoch_"))]
    assert trajectory_work == redone
    fx.check_outputs(out, reference_dir, POOL_ROWS, N)


def test_manifest_arguments_are_the_same_in_every_process():
    """LoraConfig.target_modules is a set, whose order follows the hash seed: a rerun in a
    new process must still see the same manifest arguments (it raised before)."""
    code = ("from tov_datasets import storage; m = storage.Manifest('.', {'t': set("
            "'q_proj k_proj v_proj o_proj up_proj down_proj gate_proj'.split())}); "
            "print(str(set(m.args['t'])), m.args_hash)")
    outputs = [
        subprocess.run([sys.executable, "-c", code], cwd=fx.ROOT, check=True, text=True,
                       capture_output=True,
                       env={**os.environ, **fx.CHILD_ENV, "PYTHONHASHSEED": seed},
                       ).stdout.rsplit(" ", 1)
        for seed in ("1", "2")
    ]
    assert outputs[0][0] != outputs[1][0]  # the set's own order differs between the two
    assert outputs[0][1] == outputs[1][1]
