"""The Triton kernels compile for a Hopper GPU (sm_90) even on a machine without one.

The CPU interpreter accepts code that the real compiler rejects (types of loop-carried
values, dot operand dtypes), so CI also compiles each kernel variant ahead of time. Runs in a
subprocess because TRITON_INTERPRET=1 (tests/conftest.py) replaces @triton.jit functions.
"""

import os
import subprocess
import sys
import textwrap

BUILD = textwrap.dedent(
    """
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)

    def build(fn, types, constexprs, aligned=(), **options):
        # aligned: arguments a real launch finds divisible by 16 (pointers to 16-byte aligned
        # memory, strides that are multiples of 16); names fn does not take are skipped
        sig = {name: types.get(name, "i32") for name in fn.arg_names}
        sig.update({name: "constexpr" for name in constexprs})
        attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
                 for name in aligned if name in fn.arg_names}
        kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target,
                                options=options)
        assert "ld.global" in kernel.asm["ptx"] or "cp.async" in kernel.asm["ptx"]
        return kernel

    def resource_usage(kernel):
        # {"REG": registers per thread, "STACK": stack bytes (register spills), ...}
        cuobjdump = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], check=True,
                                   capture_output=True, text=True).stdout
        return {k: int(v) for k, v in re.findall(r"([A-Z]+):([0-9]+)",
                                                 usage.split("Function", 1)[1])}
    """
)

PLAIN = textwrap.dedent(
    """
    from tov_kernels import logprob_delta
    from tov_kernels.logprob_delta import _paired_logprob_delta_kernel as plain

    # the logits kernel: every dtype and vector width, unit and general last stride, each
    # transform, with and without the label-error counts
    for dtype, vec in (("fp32", 4), ("bf16", 8), ("fp16", 8), ("bf16", 4)):
        for contiguous in (True, False):
            for code in (0, 1, 2) if (dtype, contiguous) == ("bf16", True) else (0,):
                for has_errors in (False, True) if code == 0 else (True,):
                    ptrs = {p: "*" + dtype for p in ("base_ptr", "val_ptr")}
                    ptrs.update(labels_ptr="*i64", done_ptr="*i32", errors_ptr="*i32",
                                **{p: "*fp32" for p in ("lse_ptr", "z_ptr", "tokens_ptr",
                                                        "mean_ptr")})
                    kernel = build(plain, ptrs, {"TRANSFORM": code, "HAS_ERRORS": has_errors,
                                                 "CONTIGUOUS": contiguous,
                                                 "TILE_R": logprob_delta.TILE_ROWS, "VEC": vec,
                                                 "BLOCK_T": logprob_delta.FINISH_BLOCK_T},
                                   aligned=[*ptrs, "V", "sb_b", "sb_t", "sv_b", "sv_t"],
                                   num_warps=logprob_delta.NUM_WARPS)
                    # full occupancy (8 blocks of 256 threads per SM) needs <= 32 registers;
                    # a 1024-token merge step took 73 and cost a fifth of the bandwidth (H200)
                    if contiguous and vec == 8:
                        registers = resource_usage(kernel)["REG"]
                        assert registers <= 32, (dtype, code, registers)

    # the multi-target logits kernel (grid (rows, chunks, 1 + K)): the same variants, the
    # base and the targets in different dtypes too (each side's stream is typed apart)
    from tov_kernels.logprob_delta import _multi_logprob_delta_kernel as multi

    for base, vals, vec in (("bf16", "bf16", 8), ("fp32", "fp32", 4), ("fp32", "bf16", 4)):
        for contiguous in (True, False):
            for code in (0, 1, 2) if contiguous else (0,):
                ptrs = {"base_ptr": "*" + base, "vals_ptr": "*" + vals}
                ptrs.update(labels_ptr="*i64", done_ptr="*i32", errors_ptr="*i32",
                            **{p: "*fp32" for p in ("lse_ptr", "z_ptr", "tokens_ptr",
                                                    "mean_ptr")})
                build(multi, ptrs, {"TRANSFORM": code, "HAS_ERRORS": code == 0,
                                    "CONTIGUOUS": contiguous,
                                    "TILE_R": logprob_delta.TILE_ROWS, "VEC": vec,
                                    "BLOCK_T": logprob_delta.FINISH_BLOCK_T},
                      aligned=[*ptrs, "V", "sb_b", "sb_t", "sv_k", "sv_b", "sv_t"],
                      num_warps=logprob_delta.NUM_WARPS)
    """
)

# The fused head: every config of the table and every candidate in bf16, specialised as
# the launcher does for a model with H a multiple of 16 (unit hidden-dimension strides;
# 16-aligned pointers, H, V, N, sample and token strides), with and without bias; for the
# first config also an uneven K tail, fp16 and fp32 (IEEE dots). Then the cuBLAS-chunked
# path's reduction kernel and the finish kernel for each transform. bf16 tiles must run on
# Hopper tensor cores (wgmma) fed by an asynchronous copy pipeline (cp.async).
LINEAR = textwrap.dedent(
    """
    from tov_kernels import linear_logprob_delta as lld

    UNIT = ("s_hb_h", "s_hv_h", "s_w_h")
    ALIGNED = ("hb_ptr", "hv_ptr", "w_ptr", "bias_ptr", "max_ptr", "sum_ptr", "N", "V", "H",
               "s_hb_b", "s_hb_t", "s_hv_k", "s_hv_b", "s_hv_t", "s_w_v")
    tiles = [c for c in lld.measured_configs() if c != lld.CUBLAS_CHUNKED]
    assert tiles and lld.INTERPRETER_CONFIG not in tiles

    def tile_kernel(config, dtype, has_bias=False, even_k=True):
        types = {p: "*" + dtype for p in ("hb_ptr", "hv_ptr", "w_ptr", "bias_ptr")}
        types.update(max_ptr="*fp32", sum_ptr="*fp32")
        constexprs = {"HAS_BIAS": has_bias, "IEEE": dtype == "fp32", "UPCAST": False,
                      "EVEN_K": even_k, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                      "BLOCK_K": config.block_k, "GROUP_M": config.group_m,
                      **{s: 1 for s in UNIT}}
        kernel = build(lld._lse_tiles_kernel, types, constexprs, ALIGNED,
                       num_warps=config.num_warps, num_stages=config.num_stages)
        if dtype != "fp32":
            ptx = kernel.asm["ptx"]
            assert "wgmma.mma_async" in ptx and "cp.async" in ptx, (config, dtype)
            usage = resource_usage(kernel)
            assert usage["STACK"] == usage["LOCAL"] == 0, (config.name, usage)  # no spills

    for i, config in enumerate(tiles):
        for has_bias in (False, True):
            tile_kernel(config, "bf16", has_bias)
        if i == 0:
            tile_kernel(config, "bf16", even_k=False)
            tile_kernel(config, "fp16", True)
            tile_kernel(config, "fp32", True)
    build(lld._chunk_lse_kernel, {"logits_ptr": "*fp32", "max_ptr": "*fp32",
                                  "sum_ptr": "*fp32"}, {"BLOCK_V": lld.CHUNK_LSE_BLOCK},
          ("logits_ptr", "max_ptr", "sum_ptr", "width"), num_warps=4)
    for dtype in ("bf16", "fp32"):
        for code in (0, 1, 2):
            for has_bias in (False, True) if code == 0 else (False,):
                types = {p: "*" + dtype for p in ("hb_ptr", "hv_ptr", "w_ptr", "bias_ptr")}
                types.update(labels_ptr="*i64", max_ptr="*fp32", sum_ptr="*fp32",
                             out_ptr="*fp32")
                build(lld._finish_kernel, types,
                      {"HAS_BIAS": has_bias, "TRANSFORM": code, "BLOCK_R": lld.FINISH_ROWS,
                       "BLOCK_T": lld.FINISH_TILES, "BLOCK_H": lld.FINISH_HIDDEN,
                       **{s: 1 for s in UNIT}}, ALIGNED + ("labels_ptr", "out_ptr"),
                      num_warps=lld.FINISH_WARPS)
    """
)


def _compile(*parts: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    script = "\n".join((BUILD, *parts, 'print("compiled")'))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("compiled")


def test_logits_kernel_compiles_for_sm90():
    _compile(PLAIN)


def test_fused_head_compiles_for_sm90():
    _compile(LINEAR)
