# Shared by benchmarks/gpu_check.sh and benchmarks/gpu_quality_lm.sh (sourced, not run):
# steps with their own time limit, logged to $LOG, and the closing status table.
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

skip() {  # skip NAME STATUS REASON: a step not run, with the status the table shows
  echo "== $1 == $2: $3" | tee -a "$LOG"
  STEPS+=("$1"); SECONDS_TAKEN+=(0); STATUS+=("$2")
}

summary() {  # prints the table; sets FAILED=1 unless every step is ok or skipped
  echo "== summary ==" | tee -a "$LOG"
  FAILED=0
  for i in "${!STEPS[@]}"; do
    printf '%-44s %-12s %5ss\n' "${STEPS[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}" \
      | tee -a "$LOG"
    case "${STATUS[$i]}" in ok|skipped) ;; *) FAILED=1 ;; esac
  done
}

gpu_environment() {  # gpu_environment WHEELS_DIR: imports from this checkout, offline, the
  # commit named in results, and the carried wheels (datasets, gguf, ...) installed if present
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  export TOV_COMMIT=${TOV_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
  if [ -d "$1" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/tov-site "$1"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/tov-site"
  fi
}

print_versions() {  # print_versions NEED_CUDA(0/1) PACKAGE...: the device and versions, to $LOG
  "$PY" - "$@" <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as md
import sys

import torch

if sys.argv[1] == "1":
    assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
for name in sys.argv[2:]:
    try:
        print(name, md.version(name), end="; ")
    except md.PackageNotFoundError:
        print(name, "MISSING", end="; ")
print()
PYEOF
}
