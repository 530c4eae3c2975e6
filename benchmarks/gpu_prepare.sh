#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu_check.sh and benchmarks/gpu_quality_lm.sh, on
# this machine, before a GPU is lent: the GPU image has torch/triton/transformers/peft but not
# this project's venv or its data packages, and nothing can be fetched there.
#   .gpu/wheels  datasets, gguf and the pure-Python packages they need that the image lacks
#                (pinned versions from constraints.txt, wheels for Python 3.12)
#   .gpu/ner     the NER configuration of benchmarks/less_vs_tov.py (data + model), written
#                with --save-bundle
#   .gpu/quality_<config>  benchmarks/quality.py's configuration at --size gpu (5 seeds),
#                written by benchmarks/quality_bundle.py; all-MiniLM-L6-v2's fp16 tensors are
#                shared with .gpu/ner/model (one copy, 43 MiB, travels)
#   .gpu/smollm2/{part-a,part-b,gguf.json}  SmolLM2-135M-Instruct's Q4_1 GGUF (94 MiB) in two
#                parts of 47 MiB, for the causal-LM configurations
#   .gpu/quality_lm/<config>  the causal-LM configurations LM_CONFIGS at size LM_SIZE (default
#                chat_labels lm_tweets_v2, full: the CPU size), one MiniLM copy in the first,
#                lent to the others
# What one device call carries (working tree + the paths it names) must stay under 64 MiB; the
# sizes of each call are printed. GPU_EXTRA=1 gpu_check.sh: .gpu/wheels .gpu/ner .gpu/quality_<c>.
# The causal-LM configurations take three calls to one warm machine (it keeps what earlier
# calls left): 1. .gpu/wheels .gpu/smollm2/part-a .gpu/smollm2/gguf.json (with any command, e.g.
# the kernel check); 2. .gpu/smollm2/part-b with "SMOLLM2_ONLY=1 bash
# benchmarks/gpu_quality_lm.sh" (joins the parts, dequantises); 3. .gpu/quality_lm with "bash
# benchmarks/gpu_quality_lm.sh". LM_ONLY=1 skips .gpu/ner and the NER bundles.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUALITY_CONFIGS=${QUALITY_CONFIGS:-ner_coarse_v3}
LM_CONFIGS=${LM_CONFIGS-chat_labels lm_tweets_v2}
LM_SIZE=${LM_SIZE:-full}
mkdir -p .gpu/wheels
mapfile -t pins < <(grep -E '^(datasets|dill|multiprocess|fsspec|gguf)==' constraints.txt)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 -d .gpu/wheels "${pins[@]}"
if [ -z "${LM_ONLY:-}" ]; then
  rm -rf .gpu/ner
  "$PY" benchmarks/less_vs_tov.py --config ner --save-bundle .gpu/ner
  for config in $QUALITY_CONFIGS; do
    "$PY" benchmarks/quality_bundle.py --config "$config" --size gpu \
      --out ".gpu/quality_$config" --share-weights-from .gpu/ner/model
  done
fi
if [ -n "$LM_CONFIGS" ]; then
  "$PY" benchmarks/quality_bundle.py --split-gguf .gpu/smollm2
  rm -rf .gpu/quality_lm
  lender=()
  for config in $LM_CONFIGS; do  # one process each: chat_long's builder holds ~5 GB
    "$PY" benchmarks/quality_bundle.py --config "$config" --size "$LM_SIZE" \
      --out ".gpu/quality_lm/$config" --gguf-parts .gpu/smollm2 "${lender[@]}"
    [ ${#lender[@]} -gt 0 ] || lender=(--share-weights-from ".gpu/quality_lm/$config/models/minilm")
  done
fi
du -sh .gpu/* .gpu/smollm2/* 2>/dev/null || true
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
over=0
call() {  # call NAME PATH...: the working tree and the existing PATHs must fit 64 MiB
  local name=$1 paths=() total
  shift
  for p in "$@"; do [ -e "$p" ] && paths+=("$p"); done
  [ ${#paths[@]} -gt 0 ] || return 0
  total=$((tree + $(du -scb "${paths[@]}" | tail -1 | cut -f1)))
  echo "call $name carries ${paths[*]}: $((total / 1048576)) MiB of 64 (working tree" \
    "$((tree / 1048576)) MiB)"
  [ "$total" -le $((64 * 1048576)) ] || { echo "  over 64 MiB: the call would be refused"; over=1; }
}
ner_bundles=()
for config in $QUALITY_CONFIGS; do ner_bundles+=(".gpu/quality_$config"); done
call "gpu_check (GPU_EXTRA=1)" .gpu/wheels .gpu/ner "${ner_bundles[@]}"
call "lm 1/3" .gpu/wheels .gpu/smollm2/part-a .gpu/smollm2/gguf.json
call "lm 2/3" .gpu/smollm2/part-b
call "lm 3/3" .gpu/quality_lm
exit $over
