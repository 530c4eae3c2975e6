"""benchmarks/kernel_bench.py runs end to end at a tiny size and writes the result schema."""

import json
import sys

from benchmarks import kernel_bench
from benchmarks._common import RESULTS_DIR


def test_kernel_bench_cpu_smoke(monkeypatch):
    name = "kernel_smoke_test.json"
    monkeypatch.setattr(sys, "argv", ["kernel_bench.py", "--tokens", "16", "--vocab", "300",
                                      "--repeats", "1", "--threads", "1", "--output", name])
    try:
        kernel_bench.main()
        record = json.loads((RESULTS_DIR / name).read_text())
    finally:
        (RESULTS_DIR / name).unlink(missing_ok=True)
    assert record["benchmark"] == "kernel_bench"
    for key in ("commit", "date", "machine", "versions", "config", "details"):
        assert key in record
    assert record["summary"]["time_ratio_vs_naive_v300"] > 0
    assert record["details"]["v300"]["max_abs_diff"] < 1e-4
