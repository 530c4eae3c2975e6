#!/usr/bin/env bash
# One prepared GPU check (at most 7 minutes on an H200 by default), run on the GPU machine with
# its own python3 (torch, triton, transformers and peft preinstalled) and this checkout on
# PYTHONPATH. Each step has its own time limit, most valuable first:
#   1. the kernel tests, Triton compiled (tests/test_kernels*.py, tests/test_*logprob_delta.py)
#   2. the CUDA end-to-end tests (scorer, trajectory: tests/test_cuda.py)
#   3. the kernel benchmark at 8192 tokens -> benchmarks/results/kernel_<gpu>.json
#   4. the kernel benchmark at 1024 tokens -> benchmarks/results/kernel_<gpu>_1024tokens.json
# With GPU_EXTRA=1, afterwards (several more minutes):
#   5. ToV vs LESS speed and storage   -> benchmarks/results/less_vs_tov_ner_<gpu>.json
#      (NER configuration from .gpu/ner, made here by benchmarks/gpu_prepare.sh)
#   6. quality <config> (gpu size)     -> benchmarks/results/quality_<config>_gpu.json, for
#      each bundle .gpu/quality_<config> (token classification only: the causal-LM
#      configurations need SmolLM2, which cannot travel; they are listed as skipped). Limit
#      QUALITY_LIMIT s (default 300). A run cut short leaves
#      benchmarks/results/.quality_<config>_gpu.progress.json, copied to $OUT: put it in
#      .gpu/progress/ here and run again with QUALITY_ONLY=1 (steps 1-5 skipped, limit 540 s);
#      the run resumes after the last finished (seed, method).
# The other steps still run if one fails; the table at the end gives each step's status.
# Results (and the log) are copied to $OUT when it is set.
#   TOV_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_check.sh             # kernels only
#   bash benchmarks/gpu_prepare.sh                                  # on the CPU machine, then
#   GPU_EXTRA=1 TOV_COMMIT=... bash benchmarks/gpu_check.sh         # there, carrying .gpu
#   QUALITY_ONLY=1 TOV_COMMIT=... bash benchmarks/gpu_check.sh      # resume step 6 only
# (TOV_COMMIT names the code in the results: the .git copied to the device can be stale.)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
source benchmarks/_gpu_steps.sh  # (the script runs from the repository root)
gpu_environment .gpu/wheels
: >"$LOG"
print_versions 1 torch triton transformers peft datasets pyarrow numba || exit 1
MARK=$(mktemp)  # results written after this are this run's

if [ -z "${QUALITY_ONLY:-}" ]; then
  step "kernel tests" 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels*.py \
    tests/test_*logprob_delta.py
  step "end-to-end tests" 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
  step "kernel benchmark, 8192 tokens" 110 "$PY" -m benchmarks.kernel_bench --device cuda \
    --tokens 8192
  step "kernel benchmark, 1024 tokens" 80 "$PY" -m benchmarks.kernel_bench --device cuda \
    --tokens 1024
  if [ -n "${GPU_EXTRA:-}" ] && [ -d .gpu/ner ]; then
    step "ToV vs LESS (NER)" 270 "$PY" benchmarks/less_vs_tov.py --config ner --bundle .gpu/ner \
      --device cuda --repeats 2
  fi
fi
if [ -n "${GPU_EXTRA:-}${QUALITY_ONLY:-}" ]; then
  QUALITY_LIMIT=${QUALITY_LIMIT:-$([ -n "${QUALITY_ONLY:-}" ] && echo 540 || echo 300)}
  for bundle in .gpu/quality_*/; do
    [ -f "$bundle/meta.json" ] || continue  # .gpu/quality_lm: benchmarks/gpu_quality_lm.sh
    config=$(basename "$bundle"); config=${config#quality_}
    progress=.quality_${config}_gpu.progress.json
    if [ -f ".gpu/progress/$progress" ] && [ ! -f "benchmarks/results/$progress" ]; then
      cp ".gpu/progress/$progress" benchmarks/results/
    fi
    step "quality $config (gpu size)" "$QUALITY_LIMIT" "$PY" benchmarks/quality.py \
      --config "$config" --size gpu --bundle "$bundle" --device cuda --threads 8
  done
  for config in $("$PY" -c 'from benchmarks.quality_configs import CONFIGS
print(*[c.name for c in CONFIGS.values() if c.task == "causal_lm"])'); do
    skip "quality $config" skipped "needs SmolLM2 in parts: benchmarks/gpu_quality_lm.sh"
  done
fi

summary
if [ -n "${OUT:-}" ]; then
  find benchmarks/results -maxdepth 1 -type f -newer "$MARK" \
    \( -name '*.json' -o -name '*.md' -o -name '*.png' \) -exec cp {} "$OUT"/ \;
fi
exit $FAILED
