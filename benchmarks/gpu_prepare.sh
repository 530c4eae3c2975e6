#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu_check.sh, on this machine, before a GPU is
# lent: the GPU image has torch/triton/transformers/peft but not this project's venv or its
# data packages, and nothing can be fetched there.
#   .gpu/wheels  datasets and the pure-Python packages it needs that the image lacks (pinned
#                versions from constraints.txt, wheels for Python 3.12)
#   .gpu/ner     the NER configuration of benchmarks/less_vs_tov.py (data + model), written
#                with --save-bundle
# Then, with the device tool:  run "bash benchmarks/gpu_check.sh" carrying .gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .gpu/wheels
mapfile -t pins < <(grep -E '^(datasets|dill|multiprocess|fsspec)==' constraints.txt)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 -d .gpu/wheels "${pins[@]}"
rm -rf .gpu/ner
"$PY" benchmarks/less_vs_tov.py --config ner --save-bundle .gpu/ner
du -sh .gpu/wheels .gpu/ner
