"""Paired log-prob-delta kernels vs the naive path (two log_softmax + gather + mask + mean).

CPU: time and extra peak memory of the chunked torch path vs naive, at B*T = 2048 tokens and
V = 49152 / 128256, median of repeats measured alternately in one run -> kernel_cpu.json.
CUDA (bf16, triton.testing.do_bench): the logits kernel's bandwidth on the bytes it actually
reads (rows with a scored label) against a device-to-device copy of as many bytes, measured
side by side, with and without the host-side label check; and the fused hidden-states head
against a bare matmul of the same (2N, H) x (H, V) shape (both adapters' rows stacked), at
each hidden size, for the default path and every variant `fused_head_variants` finds
-> kernel_<gpu>.json (8192 tokens) or kernel_<gpu>_<tokens>tokens.json.

    python benchmarks/kernel_bench.py [--repeats 5] [--vocab 49152 128256] [--tokens 2048]
    python benchmarks/kernel_bench.py --device cuda --tokens 8192 [--hidden 576 4096]
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


def logits_inputs(tokens: int, vocab: int, dtype, device):
    """Two (2, tokens/2, vocab) logits tensors and labels whose first eighth of each sample is
    a prompt that is not scored (ignore_index)."""
    gen = torch.Generator(device=device).manual_seed(0)
    B, T = 2, tokens // 2
    lb = torch.randn(B, T, vocab, generator=gen, device=device, dtype=dtype) * 3
    lv = lb + torch.randn(B, T, vocab, generator=gen, device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (B, T), generator=gen, device=device)
    labels[:, : T // 8] = -100
    return lb, lv, labels


def hidden_inputs(tokens: int, vocab: int, hidden: int, dtype, device):
    """Hidden states of both adapters (2, tokens/2, hidden) and an output projection (vocab,
    hidden)."""
    gen = torch.Generator(device=device).manual_seed(1)
    hb = torch.randn(2, tokens // 2, hidden, generator=gen, device=device, dtype=dtype)
    hv = hb + 0.1 * torch.randn(hb.shape, generator=gen, device=device, dtype=dtype)
    weight = torch.randn(vocab, hidden, generator=gen, device=device, dtype=dtype) / hidden**0.5
    return hb, hv, weight


def cpu_functions(args, vocab: int) -> dict:
    """The two CPU paths on one vocabulary's inputs, by name."""
    lb, lv, labels = logits_inputs(args.tokens, vocab, torch.float32, "cpu")
    return {
        "naive": lambda: naive_delta(lb, lv, labels),
        "torch_path": lambda: paired_logprob_delta(lb, lv, labels, backend="torch"),
    }


def cpu_times(args, vocab: int) -> tuple[dict, dict, dict]:
    """One vocabulary's timings -> (table row, summary entries, details)."""
    fns = cpu_functions(args, vocab)
    err = float((fns["torch_path"]() - fns["naive"]()).abs().max())
    times = time_side_by_side(fns, repeats=args.repeats)
    t_ratio = median(times["torch_path"]) / median(times["naive"])
    row = {"vocab": vocab, "naive_s": median(times["naive"]),
           "ours_s": median(times["torch_path"]), "time_ratio": t_ratio}
    return (row, {f"time_ratio_vs_naive_v{vocab}": round(t_ratio, 4)},
            {"seconds": times, "max_abs_diff": err})


def cpu_memory(args, vocab: int) -> tuple[dict, dict, dict]:
    """One vocabulary's extra peak memory -> (table columns, summary entries, details)."""
    mem = {k: [extra_peak_bytes_cpu(fn) for _ in range(3)]
           for k, fn in cpu_functions(args, vocab).items()}
    m_ratio = min(mem["torch_path"]) / max(min(mem["naive"]), 1)
    row = {"naive_extra_MiB": min(mem["naive"]) / 2**20,
           "ours_extra_MiB": min(mem["torch_path"]) / 2**20, "mem_ratio": m_ratio}
    return (row, {f"extra_mem_ratio_vs_naive_v{vocab}": round(m_ratio, 5)},
            {"extra_peak_bytes": mem})


def bench_cpu(args) -> None:
    """Every vocabulary's timings first, under the default allocator; then the memory
    measurements, whose fixed mmap threshold (`_mmap_large_allocations`, for the
    high-water mark) would make every later allocation of a large block fault its pages
    afresh and so distort any timing after it."""
    torch.set_num_threads(args.threads)
    rows, summary, details = {}, {}, {}
    for measure in (cpu_times, cpu_memory):
        for vocab in args.vocab:
            row, s, d = measure(args, vocab)
            rows.setdefault(vocab, {}).update(row)
            summary.update(s)
            details.setdefault(f"v{vocab}", {}).update(d)
    rows = list(rows.values())
    summary["time_ratio_vs_naive"] = max(v for k, v in summary.items() if k.startswith("time_"))
    summary["extra_mem_ratio_vs_naive"] = max(
        v for k, v in summary.items() if k.startswith("extra_mem"))
    config = {"tokens": args.tokens, "vocab": args.vocab, "dtype": "float32",
              "threads": args.threads, "repeats": args.repeats,
              "memory": "resident-set high-water mark above the pre-call level (VmHWM reset)"}
    path = write_result("kernel_bench", config, summary, details, filename=args.output)
    print_table(rows, f"CPU, {args.tokens} tokens, fp32 logits, {args.threads} thread(s)")
    print(f"wrote {path}")


def fused_head_variants(hb, hv, weight, labels) -> dict[str, object]:
    """Callables computing the fused head, by name: "default" (the public function) and, when
    `tov_kernels.linear_logprob_delta` provides `benchmark_variants(hb, hv, weight, labels)`
    (one zero-argument callable per entry of its measured config table and its cuBLAS-chunked
    fallback), each of those: the hook through which every config gets timed."""
    from tov_kernels import linear_logprob_delta

    variants = {"default": lambda: paired_linear_logprob_delta(hb, hv, weight, labels)}
    table = getattr(linear_logprob_delta, "benchmark_variants", None)
    if table is not None:
        variants.update(table(hb, hv, weight, labels))
    return variants


def copy_seconds(n_bytes: int, bench) -> float:
    """Time of a device-to-device copy of n_bytes."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src))


def logits_case(args, vocab: int, bench, bench_graph) -> tuple[dict, dict, dict]:
    """The logits kernel at one vocabulary size -> (table row, summary entries, details)."""
    lb, lv, labels = logits_inputs(args.tokens, vocab, torch.bfloat16, "cuda")
    scored_rows = int((labels != -100).sum())
    read_bytes = 2 * scored_rows * vocab * lb.element_size() + labels.numel() * 8
    errors = torch.zeros(labels.shape[0], dtype=torch.int32, device="cuda")
    t_copy = copy_seconds(read_bytes, bench)
    t_ours = bench(lambda: paired_logprob_delta(lb, lv, labels, label_errors=errors))
    t_graph = bench_graph(lambda: paired_logprob_delta(lb, lv, labels, label_errors=errors))
    t_checked = bench(lambda: paired_logprob_delta(lb, lv, labels))
    t_naive = bench(lambda: naive_delta(lb, lv, labels))
    copy_bw = 2 * read_bytes / t_copy  # a copy reads and writes each byte
    ours_bw = read_bytes / t_ours
    graph_fraction = (read_bytes / t_graph) / copy_bw
    mem_ours = extra_peak_bytes_cuda(
        lambda: paired_logprob_delta(lb, lv, labels, label_errors=errors))
    mem_naive = extra_peak_bytes_cuda(lambda: naive_delta(lb, lv, labels))
    summary = {f"bandwidth_fraction_of_copy_v{vocab}": round(ours_bw / copy_bw, 4),
               f"graph_bandwidth_fraction_of_copy_v{vocab}": round(graph_fraction, 4),
               f"speedup_vs_naive_v{vocab}": round(t_naive / t_ours, 4)}
    details = {"copy_s": t_copy, "ours_s": t_ours, "ours_with_label_check_s": t_checked,
               "ours_graph_s": t_graph,
               "naive_s": t_naive, "read_bytes": read_bytes, "scored_rows": scored_rows,
               "copy_GBps": copy_bw / 1e9, "ours_GBps": ours_bw / 1e9,
               "extra_bytes_ours": mem_ours, "extra_bytes_naive": mem_naive}
    row = {"vocab": vocab, "ours_us": t_ours * 1e6, "checked_us": t_checked * 1e6,
           "naive_us": t_naive * 1e6, "GB/s": ours_bw / 1e9, "copy_GB/s": copy_bw / 1e9,
           "bw_frac": ours_bw / copy_bw, "graph_us": t_graph * 1e6,
           "graph_bw_frac": graph_fraction, "speedup": t_naive / t_ours}
    return row, summary, details


def fused_case(args, vocab: int, hidden: int, bench) -> tuple[dict, dict, dict]:
    """The fused head at one (vocab, hidden) against the bare matmul of both row sets."""
    hb, hv, weight = hidden_inputs(args.tokens, vocab, hidden, torch.bfloat16, "cuda")
    labels = torch.randint(0, vocab, hb.shape[:2], device="cuda")
    labels[:, : hb.shape[1] // 8] = -100
    stacked = torch.cat([hb, hv]).reshape(-1, hidden)  # (2N, H)
    t_matmul = bench(lambda: stacked @ weight.T)
    times = {name: bench(fn) for name, fn in fused_head_variants(hb, hv, weight,
                                                                 labels).items()}
    key = f"v{vocab}_h{hidden}"
    summary = {f"fused_linear_time_ratio_vs_matmul_{key}": round(times["default"] / t_matmul, 4)}
    details = {"matmul_s": t_matmul, **{f"fused_{k}_s": v for k, v in times.items()}}
    row = {"vocab": vocab, "hidden": hidden, "matmul_us": t_matmul * 1e6,
           **{f"{k}_us": v * 1e6 for k, v in times.items()},
           "default/matmul": times["default"] / t_matmul}
    return row, summary, details


def bench_cuda(args) -> None:
    from triton.testing import do_bench, do_bench_cudagraph

    def bench(fn) -> float:
        """Median seconds of fn (L2 flushed between calls), host launch cost included."""
        return do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median") / 1e3

    def bench_graph(fn) -> float:
        """Median seconds of fn replayed from a CUDA graph: device time, no host cost."""
        return do_bench_cudagraph(fn, rep=args.rep_ms, return_mode="median") / 1e3

    logit_rows, fused_rows, summary, details = [], [], {}, {}
    for vocab in args.vocab:
        row, s, d = logits_case(args, vocab, bench, bench_graph)
        logit_rows.append(row)
        summary.update(s)
        details[f"v{vocab}"] = d
        torch.cuda.empty_cache()
        for hidden in args.hidden:
            row, s, d = fused_case(args, vocab, hidden, bench)
            fused_rows.append(row)
            summary.update(s)
            details[f"v{vocab}_h{hidden}"] = d
            torch.cuda.empty_cache()
    for key in ("bandwidth_fraction_of_copy", "graph_bandwidth_fraction_of_copy",
                "speedup_vs_naive"):
        summary[key] = min(v for k, v in summary.items() if k.startswith(key + "_"))
    summary["fused_linear_time_ratio_vs_matmul"] = max(
        v for k, v in summary.items() if k.startswith("fused_linear_time_ratio_vs_matmul_"))
    gpu = gpu_slug()
    config = {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
              "dtype": "bfloat16", "timer": "triton.testing.do_bench (median, L2 flushed)",
              "read_bytes": "both logits rows of every scored token + the labels; ignored "
                            "rows are not read",
              "copy": "device-to-device copy of read_bytes (reads and writes each byte)",
              "graph": "our call replayed from a CUDA graph (do_bench_cudagraph): the device's "
                       "time without the host's launch cost, against the same copy bandwidth "
                       "(a copy captured in a graph measured 1.5x slower on the H200)",
              "ours": "paired_logprob_delta with label_errors (no host sync); "
                      "ours_with_label_check: the default host-side label check",
              "matmul": "both hidden-state sets stacked, (2*tokens, H) @ (H, V)"}
    filename = args.output or (f"kernel_{gpu}.json" if args.tokens == 8192
                               else f"kernel_{gpu}_{args.tokens}tokens.json")
    path = write_result("kernel_bench", config, summary, details, filename=filename)
    title = f"{torch.cuda.get_device_name(0)}, {args.tokens} tokens, bf16"
    print_table(logit_rows, f"{title}: logits kernel")
    print_table(fused_rows, f"{title}: fused head")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=None,
                   help="B*T token positions (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    p.add_argument("--hidden", type=int, nargs="+", default=[576, 4096],
                   help="hidden sizes of the fused head (CUDA only)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-ms", type=float, default=10, help="do_bench warm-up (CUDA)")
    p.add_argument("--rep-ms", type=float, default=40, help="do_bench repetitions (CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--output", default=None, help="results file name (default per device)")
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        args.tokens = args.tokens or 8192
        bench_cuda(args)
    else:
        args.tokens = args.tokens or 2048
        args.output = args.output or "kernel_cpu.json"
        bench_cpu(args)


if __name__ == "__main__":
    main()
