"""The Triton kernels compile for a Hopper GPU (sm_90) even on a machine without one.

The CPU interpreter accepts code that the real compiler rejects (types of loop-carried
values, dot operand dtypes), so CI also compiles each kernel variant ahead of time. Runs in a
subprocess because TRITON_INTERPRET=1 (tests/conftest.py) replaces @triton.jit functions.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tov_kernels.linear_logprob_delta import _merge_partials_kernel as merge
    from tov_kernels.linear_logprob_delta import _paired_linear_partials_kernel as linear
    from tov_kernels import logprob_delta
    from tov_kernels.logprob_delta import _paired_logprob_delta_kernel as plain

    target = GPUTarget("cuda", 90, 32)
    PARTIALS = ("mb", "sb", "zb", "mv", "sv", "zv")

    def build(fn, types, constexprs, aligned=(), **options):
        # aligned: arguments a real launch finds divisible by 16 (pointers to 16-byte aligned
        # memory, strides that are multiples of 16)
        sig = {name: types.get(name, "i32") for name in fn.arg_names}
        sig.update({name: "constexpr" for name in constexprs})
        attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
        kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target,
                                options=options)
        assert "ld.global" in kernel.asm["ptx"]
        return kernel

    for dtype in ("fp32", "bf16", "fp16"):
        ptrs = {p: "*" + dtype for p in ("hb_ptr", "hv_ptr", "w_ptr", "bias_ptr")}
        ptrs.update(labels_ptr="*i64", **{f"{k}_ptr": "*fp32" for k in PARTIALS})
        for has_bias in (False, True) if dtype == "bf16" else (True,):
            build(linear, ptrs, {"HAS_BIAS": has_bias, "IEEE": dtype == "fp32",
                                 "UPCAST": False, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64},
                  num_warps=4, num_stages=2)
    for code in (0, 1, 2):
        build(merge, {"labels_ptr": "*i64", "out_ptr": "*fp32",
                      **{f"{k}_ptr": "*fp32" for k in PARTIALS}},
              {"TRANSFORM": code, "BLOCK": 256}, num_warps=4)
        # an integer argument equal to 1 is specialised into a constant: one split
        build(merge, {"labels_ptr": "*i64", "out_ptr": "*fp32", "num_splits": "constexpr",
                      **{f"{k}_ptr": "*fp32" for k in PARTIALS}},
              {"TRANSFORM": code, "BLOCK": 256, "num_splits": 1}, num_warps=4)
    def registers(kernel):
        cuobjdump = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], check=True,
                                   capture_output=True, text=True).stdout
        return int(re.search(r"REG:([0-9]+)", usage).group(1))

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
                        assert registers(kernel) <= 32, (dtype, code, registers(kernel))
    print("compiled")
    """
)


def test_kernels_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("compiled")
