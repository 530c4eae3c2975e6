#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu_check.sh, on this machine, before a GPU is
# lent: the GPU image has torch/triton/transformers/peft but not this project's venv or its
# data packages, and nothing can be fetched there.
#   .gpu/wheels  datasets and the pure-Python packages it needs that the image lacks (pinned
#                versions from constraints.txt, wheels for Python 3.12)
#   .gpu/ner     the NER configuration of benchmarks/less_vs_tov.py (data + model), written
#                with --save-bundle
#   .gpu/quality_<config>  benchmarks/quality.py's configuration at --size gpu (5 seeds),
#                written by benchmarks/quality_bundle.py; all-MiniLM-L6-v2's fp16 tensors are
#                shared with .gpu/ner/model (one copy, 43 MiB, travels)
# Everything that travels (working tree + .gpu) must stay under 64 MiB; the sizes are printed.
# Only the token-classification configurations fit (QUALITY_CONFIGS, default ner_coarse_v2):
# lm_tweets and chat_long need SmolLM2-135M (93 MB as the Q4_1 GGUF, 270 MB in fp16), which
# cannot travel, and the GPU image has no copy; gpu_check.sh lists them as skipped.
# Then, with the device tool:  run "bash benchmarks/gpu_check.sh" carrying .gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUALITY_CONFIGS=${QUALITY_CONFIGS:-ner_coarse_v2}
mkdir -p .gpu/wheels
mapfile -t pins < <(grep -E '^(datasets|dill|multiprocess|fsspec)==' constraints.txt)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 -d .gpu/wheels "${pins[@]}"
rm -rf .gpu/ner
"$PY" benchmarks/less_vs_tov.py --config ner --save-bundle .gpu/ner
for config in $QUALITY_CONFIGS; do
  "$PY" benchmarks/quality_bundle.py --config "$config" --size gpu \
    --out ".gpu/quality_$config" --share-weights-from .gpu/ner/model
done
du -sh .gpu/*
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$((tree + $(du -sb .gpu | cut -f1)))
echo "travels: $((total / 1048576)) MiB of 64 MiB (working tree $((tree / 1048576)) MiB + .gpu)"
[ "$total" -le $((64 * 1048576)) ] || { echo "over 64 MiB: the device call would be refused"; exit 1; }
