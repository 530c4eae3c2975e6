#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on an H200), run on the GPU machine with its own
# python3 (torch, triton, transformers and peft preinstalled) and this checkout on PYTHONPATH:
#   1. the kernel tests and the CUDA end-to-end tests (scorer, trajectory), Triton compiled;
#   2. the kernel benchmark            -> benchmarks/results/kernel_<gpu>.json
#   3. ToV vs LESS speed and storage   -> benchmarks/results/less_vs_tov_ner_<gpu>.json
#      (NER configuration from .gpu/ner, made here by benchmarks/gpu_prepare.sh)
# Each step has its own time limit and the others still run if one fails; the table at the
# end gives each step's status. Results (and the log) are copied to $OUT when it is set.
#   bash benchmarks/gpu_prepare.sh                                   # on the CPU machine
#   TOV_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_check.sh    # there, carrying .gpu
# (TOV_COMMIT names the code in the results: the .git copied to the device can be stale.)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TOV_COMMIT=${TOV_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -d .gpu/wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/tov-site .gpu/wheels/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/tov-site"
fi
"$PY" - <<'PYEOF' 2>&1 | tee "$LOG" || exit 1
import importlib.metadata as md
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0))
for name in ("torch", "triton", "transformers", "peft", "datasets", "pyarrow", "numba"):
    try:
        print(name, md.version(name), end="; ")
    except md.PackageNotFoundError:
        print(name, "MISSING", end="; ")
print()
PYEOF

MARK=$(mktemp)  # results written after this are this run's
declare -a STEPS=() STATUS=() SECONDS_TAKEN=()
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name ==" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  STEPS+=("$name"); SECONDS_TAKEN+=($((SECONDS - start)))
  if [ "$rc" = 0 ]; then STATUS+=(ok); elif [ "$rc" = 124 ]; then STATUS+=(timeout); \
  else STATUS+=("failed ($rc)"); fi
}

step "kernel tests" 110 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
step "end-to-end tests" 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step "kernel benchmark" 90 "$PY" -m benchmarks.kernel_bench --device cuda --tokens 8192
if [ -d .gpu/ner ]; then
  step "ToV vs LESS (NER)" 270 "$PY" benchmarks/less_vs_tov.py --config ner --bundle .gpu/ner \
    --device cuda --repeats 2
fi

echo "== summary ==" | tee -a "$LOG"
failed=0
for i in "${!STEPS[@]}"; do
  printf '%-20s %-12s %5ss\n' "${STEPS[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}" | tee -a "$LOG"
  [ "${STATUS[$i]}" = ok ] || failed=1
done
if [ -n "${OUT:-}" ]; then
  find benchmarks/results -maxdepth 1 -type f -newer "$MARK" \
    \( -name '*.json' -o -name '*.md' -o -name '*.png' \) -exec cp {} "$OUT"/ \;
fi
exit $failed
