#!/usr/bin/env bash
# The causal-LM quality configurations on the GPU machine (its own python3: torch, triton,
# transformers, peft; this checkout on PYTHONPATH). SmolLM2-135M-Instruct (94 MiB as the GGUF)
# cannot travel in one call, so benchmarks/gpu_prepare.sh cuts it in two and the run takes
# three device calls to one warm machine, which keeps what earlier calls left:
#   1. carry .gpu/wheels .gpu/smollm2/part-a .gpu/smollm2/gguf.json (any command: the kernel
#      check, say; the files only need to arrive)
#   2. carry .gpu/smollm2/part-b:  SMOLLM2_ONLY=1 bash benchmarks/gpu_quality_lm.sh
#      (installs the wheels, joins and checks the parts, dequantises SmolLM2 into the tov
#      cache: ~1 minute)
#   3. carry .gpu/quality_lm:      TOV_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_quality_lm.sh
#      (the same first steps, instant when call 2 did them; then for each configuration of
#      LM_CONFIGS, default lm_tweets_v2 chat_long:
#        quality.py --config <c> --size LM_SIZE --bundle .gpu/quality_lm/<c> --device cuda
#          --methods METHODS --tag gpu
#      with its own limit LM_LIMIT s (default 240), results -> benchmarks/results/
#      quality_<c>_gpu.{json,md}). Results, progress files and the log are copied to $OUT.
# A run cut short leaves its progress file (copied to $OUT as quality_<c>_gpu.progress.json):
# on a machine still warm a rerun resumes after the last finished (seed, method); on a fresh
# one, put the file into .gpu/quality_lm/progress/ here (any name it came back with) and
# carry the three calls again.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
BUNDLES=${BUNDLES:-.gpu/quality_lm}
PARTS=${PARTS:-.gpu/smollm2}
LM_CONFIGS=${LM_CONFIGS:-lm_tweets_v2 chat_long}
LM_SIZE=${LM_SIZE:-full}
METHODS=${METHODS:-tov,maxunc,embedding,length,less}
PREP_LIMIT=${PREP_LIMIT:-150}
LM_LIMIT=${LM_LIMIT:-240}
LOG=${OUT:-/tmp}/gpu_quality_lm.log
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TOV_COMMIT=${TOV_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -d .gpu/wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/tov-site .gpu/wheels/*.whl
fi
[ -d /tmp/tov-site ] && export PYTHONPATH="$PYTHONPATH:/tmp/tov-site"

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

"$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib.metadata as md
import torch
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
for name in ("torch", "transformers", "peft", "datasets", "gguf"):
    try:
        print(name, md.version(name), end="; ")
    except md.PackageNotFoundError:
        print(name, "MISSING", end="; ")
print()
PYEOF
step "SmolLM2 (join $PARTS, dequantise)" "$PREP_LIMIT" \
  "$PY" benchmarks/quality_bundle.py --assemble-gguf "$PARTS"

if [ -z "${SMOLLM2_ONLY:-}" ]; then
  for config in $LM_CONFIGS; do
    for f in "$BUNDLES"/progress/*quality_"${config}"_gpu*progress.json; do
      # a progress file brought back from an earlier call; kept if this machine has one
      [ -f "$f" ] && [ ! -f "benchmarks/results/.quality_${config}_gpu.progress.json" ] \
        && cp "$f" "benchmarks/results/.quality_${config}_gpu.progress.json"
    done
    step "quality $config ($LM_SIZE)" "$LM_LIMIT" "$PY" benchmarks/quality.py \
      --config "$config" --size "$LM_SIZE" --bundle "$BUNDLES/$config" --device cuda \
      --methods "$METHODS" --tag gpu --threads 8
    if [ -n "${OUT:-}" ]; then
      for f in benchmarks/results/quality_"${config}"_gpu*.json \
               benchmarks/results/quality_"${config}"_gpu*.md; do
        [ -f "$f" ] && cp "$f" "$OUT"/
      done
      for f in benchmarks/results/.quality_"${config}"_gpu*.progress.json; do
        [ -f "$f" ] && name=$(basename "$f") && cp "$f" "$OUT/${name#.}"
      done
    fi
  done
fi

echo "== summary ==" | tee -a "$LOG"
failed=0
for i in "${!STEPS[@]}"; do
  printf '%-44s %-12s %5ss\n' "${STEPS[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}" | tee -a "$LOG"
  [ "${STATUS[$i]}" = ok ] || failed=1
done
exit $failed
