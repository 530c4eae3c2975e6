"""Paired log-prob-delta kernels vs the naive path (two log_softmax + gather + mask + mean).

CPU: time and extra peak memory of the chunked torch path vs naive, at B*T = 2048 tokens and
V = 49152 / 128256, median of repeats measured alternately in one run -> kernel_cpu.json.
CUDA: achieved read bandwidth vs a device-to-device copy, speed-up over naive eager, and the
fused-linear kernel's time vs the bare matmul of both hidden-state sets -> kernel_<gpu>.json.

    python benchmarks/kernel_bench.py [--repeats 5] [--vocab 49152 128256] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    gpu_slug,
    median,
    print_table,
    time_side_by_side,
    write_result,
)
from tov_kernels import paired_linear_logprob_delta, paired_logprob_delta  # noqa: E402


def naive_delta(logits_base, logits_val, labels, ignore_index=-100):
    """The path the kernels replace: two full float32 log_softmax tensors."""
    lp_b = torch.log_softmax(logits_base.float(), dim=-1)
    lp_v = torch.log_softmax(logits_val.float(), dim=-1)
    keep = labels != ignore_index
    y = torch.where(keep, labels, 0).unsqueeze(-1)
    delta = (lp_v.gather(-1, y) - lp_b.gather(-1, y)).squeeze(-1) * keep
    return delta.sum(1) / keep.sum(1).clamp(min=1)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mmap_large_allocations() -> None:
    """Make glibc serve every block >= 64 KiB by mmap (fixed threshold), so freed tensors
    leave the resident set and the high-water mark sees each call's own allocations."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)


def extra_peak_bytes_cpu(fn) -> int:
    """Peak resident memory above the level before fn(), via VmHWM reset (clear_refs 5)."""
    _mmap_large_allocations()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) * 1024


def extra_peak_bytes_cuda(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def inputs(tokens: int, vocab: int, hidden: int, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    B = 2
    T = tokens // B
    lb = torch.randn(B, T, vocab, generator=gen, device=device, dtype=dtype) * 3
    lv = lb + torch.randn(B, T, vocab, generator=gen, device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (B, T), generator=gen, device=device)
    labels[:, : T // 8] = -100  # a prompt part that is not scored
    hb = torch.randn(B, T, hidden, generator=gen, device=device, dtype=dtype)
    hv = hb + 0.1 * torch.randn(B, T, hidden, generator=gen, device=device, dtype=dtype)
    weight = torch.randn(vocab, hidden, generator=gen, device=device, dtype=dtype) / hidden**0.5
    return lb, lv, labels, hb, hv, weight


def cpu_case(args, vocab: int) -> tuple[dict, dict, dict]:
    """One vocabulary size on CPU -> (table row, summary entries, details)."""
    lb, lv, labels, *_ = inputs(args.tokens, vocab, args.hidden, torch.float32, "cpu")
    fns = {
        "naive": lambda: naive_delta(lb, lv, labels),
        "torch_path": lambda: paired_logprob_delta(lb, lv, labels, backend="torch"),
    }
    err = float((fns["torch_path"]() - fns["naive"]()).abs().max())
    times = time_side_by_side(fns, repeats=args.repeats)
    mem = {k: [extra_peak_bytes_cpu(fn) for _ in range(3)] for k, fn in fns.items()}
    t_ratio = median(times["torch_path"]) / median(times["naive"])
    m_ratio = min(mem["torch_path"]) / max(min(mem["naive"]), 1)
    summary = {f"time_ratio_vs_naive_v{vocab}": round(t_ratio, 4),
               f"extra_mem_ratio_vs_naive_v{vocab}": round(m_ratio, 5)}
    details = {"seconds": times, "extra_peak_bytes": mem, "max_abs_diff": err}
    row = {"vocab": vocab, "naive_s": median(times["naive"]),
           "ours_s": median(times["torch_path"]), "time_ratio": t_ratio,
           "naive_extra_MiB": min(mem["naive"]) / 2**20,
           "ours_extra_MiB": min(mem["torch_path"]) / 2**20, "mem_ratio": m_ratio}
    return row, summary, details


def bench_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    rows, summary, details = [], {}, {}
    for vocab in args.vocab:
        row, s, d = cpu_case(args, vocab)
        rows.append(row)
        summary.update(s)
        details[f"v{vocab}"] = d
    summary["time_ratio_vs_naive"] = max(v for k, v in summary.items() if k.startswith("time_"))
    summary["extra_mem_ratio_vs_naive"] = max(
        v for k, v in summary.items() if k.startswith("extra_mem"))
    config = {"tokens": args.tokens, "vocab": args.vocab, "dtype": "float32",
              "threads": args.threads, "repeats": args.repeats,
              "memory": "resident-set high-water mark above the pre-call level (VmHWM reset)"}
    path = write_result("kernel_bench", config, summary, details, filename=args.output)
    print_table(rows, f"CPU, {args.tokens} tokens, fp32 logits, {args.threads} thread(s)")
    print(f"wrote {path}")


def cuda_case(args, vocab: int) -> tuple[dict, dict, dict]:
    """One vocabulary size on CUDA (bf16) -> (table row, summary entries, details)."""
    from triton.testing import do_bench

    from tov_kernels.linear_logprob_delta import linear_logprob_delta_tokens, num_splits

    lb, lv, labels, hb, hv, weight = inputs(args.tokens, vocab, args.hidden, torch.bfloat16,
                                            "cuda")
    read_bytes = 2 * lb.numel() * lb.element_size()
    src = torch.empty(2 * lb.numel(), dtype=lb.dtype, device="cuda")
    dst = torch.empty_like(src)
    t_copy = do_bench(lambda: dst.copy_(src)) / 1e3
    t_ours = do_bench(lambda: paired_logprob_delta(lb, lv, labels)) / 1e3
    t_naive = do_bench(lambda: naive_delta(lb, lv, labels)) / 1e3
    h2 = torch.cat([hb, hv]).reshape(-1, hb.shape[-1])
    t_matmul = do_bench(lambda: h2 @ weight.T) / 1e3
    t_linear = do_bench(lambda: paired_linear_logprob_delta(hb, hv, weight, labels)) / 1e3
    t_one_split = do_bench(lambda: linear_logprob_delta_tokens(
        hb, hv, weight, None, labels, 0, -100, splits=1)) / 1e3
    copy_bw = 2 * read_bytes / t_copy  # a copy reads and writes each byte
    ours_bw = read_bytes / t_ours
    mem_ours = extra_peak_bytes_cuda(lambda: paired_logprob_delta(lb, lv, labels))
    mem_naive = extra_peak_bytes_cuda(lambda: naive_delta(lb, lv, labels))
    summary = {f"bandwidth_fraction_of_copy_v{vocab}": round(ours_bw / copy_bw, 4),
               f"speedup_vs_naive_v{vocab}": round(t_naive / t_ours, 4),
               f"fused_linear_time_ratio_vs_matmul_v{vocab}": round(t_linear / t_matmul, 4),
               f"fused_linear_split_speedup_v{vocab}": round(t_one_split / t_linear, 4)}
    details = {"copy_s": t_copy, "ours_s": t_ours, "naive_s": t_naive, "matmul_s": t_matmul,
               "fused_linear_s": t_linear, "fused_linear_one_split_s": t_one_split,
               "vocabulary_splits": num_splits(hb.shape[0] * hb.shape[1], vocab, 64, hb.device),
               "copy_GBps": copy_bw / 1e9,
               "ours_GBps": ours_bw / 1e9, "extra_bytes_ours": mem_ours,
               "extra_bytes_naive": mem_naive}
    row = {"vocab": vocab, "ours_ms": t_ours * 1e3, "naive_ms": t_naive * 1e3,
           "GB/s": ours_bw / 1e9, "copy_GB/s": copy_bw / 1e9, "bw_frac": ours_bw / copy_bw,
           "speedup": t_naive / t_ours, "linear_ms": t_linear * 1e3,
           "matmul_ms": t_matmul * 1e3, "linear/matmul": t_linear / t_matmul,
           "1split_ms": t_one_split * 1e3}
    return row, summary, details


def bench_cuda(args) -> None:
    rows, summary, details = [], {}, {}
    for vocab in args.vocab:
        row, s, d = cuda_case(args, vocab)
        rows.append(row)
        summary.update(s)
        details[f"v{vocab}"] = d
        torch.cuda.empty_cache()
    for key in ("bandwidth_fraction_of_copy", "speedup_vs_naive"):
        summary[key] = min(v for k, v in summary.items() if k.startswith(key + "_"))
    summary["fused_linear_time_ratio_vs_matmul"] = max(
        v for k, v in summary.items() if k.startswith("fused_linear_time_ratio_vs_matmul_"))
    gpu = gpu_slug()
    config = {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
              "dtype": "bfloat16", "timer": "triton.testing.do_bench",
              "matmul": "both hidden-state sets (2*tokens rows) @ weight.T"}
    path = write_result("kernel_bench", config, summary, details,
                        filename=args.output or f"kernel_{gpu}.json")
    print_table(rows, f"{torch.cuda.get_device_name(0)}, {args.tokens} tokens, bf16")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048, help="B*T token positions")
    p.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--output", default=None, help="results file name (default per device)")
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        bench_cuda(args)
    else:
        args.output = args.output or "kernel_cpu.json"
        bench_cpu(args)


if __name__ == "__main__":
    main()
