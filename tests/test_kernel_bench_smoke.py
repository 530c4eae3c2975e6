"""benchmarks/kernel_bench.py runs end to end at a tiny size and writes the result schema."""

import json
import sys

from benchmarks import kernel_bench
from benchmarks._common import RESULTS_DIR


def test_kernel_bench_cpu_smoke(monkeypatch):
    name = "kernel_smoke_test.json"
    monkeypatch.setattr(sys, "argv", ["kernel_bench.py", "--tokens", "16", "--vocab", "300", "257",
                                      "--repeats", "1", "--threads", "1", "--output", name])
    try:
        kernel_bench.main()
        record = json.loads((RESULTS_DIR / name).read_text())
    finally:
        (RESULTS_DIR / name).unlink(missing_ok=True)
    assert record["benchmark"] == "kernel_bench"
    for key in ("commit", "date", "machine", "versions", "config", "details"):
        assert key in record
    for vocab in ("300", "257"):  # timings of both vocabularies, then their memory
        assert record["summary"][f"time_ratio_vs_naive_v{vocab}"] > 0
        assert record["details"][f"v{vocab}"]["max_abs_diff"] < 1e-4
        assert len(record["details"][f"v{vocab}"]["extra_peak_bytes"]["naive"]) == 3
