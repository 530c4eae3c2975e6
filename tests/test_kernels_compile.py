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
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tov_kernels.linear_logprob_delta import _merge_partials_kernel as merge
    from tov_kernels.linear_logprob_delta import _paired_linear_partials_kernel as linear
    from tov_kernels.logprob_delta import _paired_logprob_delta_kernel as plain

    target = GPUTarget("cuda", 90, 32)
    PARTIALS = ("mb", "sb", "zb", "mv", "sv", "zv")

    def build(fn, types, constexprs, **options):
        sig = {name: types.get(name, "i32") for name in fn.arg_names}
        sig.update({name: "constexpr" for name in constexprs})
        kernel = triton.compile(ASTSource(fn, sig, constexprs), target=target, options=options)
        assert "ld.global" in kernel.asm["ptx"]

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
    # the logits kernel: every dtype and vector width, unit and general last stride, each
    # transform, with and without the label-error counts
    for dtype, vec in (("fp32", 4), ("bf16", 8), ("fp16", 8), ("bf16", 4)):
        for contiguous in (True, False):
            for code in (0, 1, 2) if (dtype, contiguous) == ("bf16", True) else (0,):
                for has_errors in (False, True) if code == 0 else (True,):
                    build(plain, {"base_ptr": "*" + dtype, "val_ptr": "*" + dtype,
                                  "labels_ptr": "*i64", "lse_ptr": "*fp32", "z_ptr": "*fp32",
                                  "done_ptr": "*i32", "tokens_ptr": "*fp32",
                                  "mean_ptr": "*fp32", "errors_ptr": "*i32"},
                          {"TRANSFORM": code, "HAS_ERRORS": has_errors,
                           "CONTIGUOUS": contiguous, "TILE_R": 256, "VEC": vec,
                           "BLOCK_T": 1024}, num_warps=8)
    print("compiled")
    """
)


def test_kernels_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("compiled")
