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
#      each with its own limit: LM_LIMIT s if set, else an equal share of what remains of
#      BUDGET s (default 540) for the configurations still to run; results ->
#      benchmarks/results/quality_<c>_gpu.{json,md}). Results, progress files and the log are
#      copied to $OUT. Give the device call a timeout_s of BUDGET + 40.
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
PREP_LIMIT=${PREP_LIMIT:-120}
BUDGET=${BUDGET:-540}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the whole script on the CPU machine
THREADS=${THREADS:-8}
FORCE=${FORCE:+--force}  # FORCE=1: run the methods even if the premise gate fails
LOG=${OUT:-/tmp}/gpu_quality_lm.log
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TOV_COMMIT=${TOV_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
WHEELS=${WHEELS:-.gpu/wheels}  # datasets, gguf, ... (call 1 brought them; the machine kept them)
if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/tov-site "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/tov-site"
fi

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
  read -ra configs <<< "$LM_CONFIGS"
  stem_size=$([ "$LM_SIZE" = full ] || echo "_$LM_SIZE")  # quality.py's file names
  for i in "${!configs[@]}"; do
    config=${configs[$i]}
    limit=${LM_LIMIT:-$(( (BUDGET - SECONDS) / (${#configs[@]} - i) ))}
    stem=quality_${config}_gpu$stem_size
    for f in "$BUNDLES"/progress/*"$stem".progress.json; do
      # a progress file brought back from an earlier call; kept if this machine has one
      [ -f "$f" ] && [ ! -f "benchmarks/results/.$stem.progress.json" ] \
        && cp "$f" "benchmarks/results/.$stem.progress.json"
    done
    if [ "$limit" -lt 30 ]; then  # (timeout 0 would mean no limit)
      echo "== quality $config == not started: ${limit}s left" | tee -a "$LOG"
      STEPS+=("quality $config ($LM_SIZE)"); SECONDS_TAKEN+=(0); STATUS+=("no time")
      continue
    fi
    step "quality $config ($LM_SIZE)" "$limit" "$PY" benchmarks/quality.py \
      --config "$config" --size "$LM_SIZE" --bundle "$BUNDLES/$config" --device "$DEVICE" \
      --methods "$METHODS" --tag gpu --threads "$THREADS" $FORCE
    if [ -n "${OUT:-}" ]; then
      for f in "benchmarks/results/$stem.json" "benchmarks/results/$stem.md"; do
        [ -f "$f" ] && cp "$f" "$OUT"/
      done
      f=benchmarks/results/.$stem.progress.json
      [ -f "$f" ] && cp "$f" "$OUT/$stem.progress.json"
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
