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
#      LM_CONFIGS, default chat_labels lm_tweets_v2:
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
LM_CONFIGS=${LM_CONFIGS:-chat_labels lm_tweets_v2}
LM_SIZE=${LM_SIZE:-full}
METHODS=${METHODS:-tov,maxunc,embedding,length,less}
PREP_LIMIT=${PREP_LIMIT:-120}
BUDGET=${BUDGET:-540}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the whole script on the CPU machine
THREADS=${THREADS:-8}
FORCE=${FORCE:+--force}  # FORCE=1: run the methods even if the premise gate fails
LOG=${OUT:-/tmp}/gpu_quality_lm.log
WHEELS=${WHEELS:-.gpu/wheels}  # datasets, gguf, ... (call 1 brought them; the machine kept them)
source benchmarks/_gpu_steps.sh  # (the script runs from the repository root)
gpu_environment "$WHEELS"
print_versions 0 torch transformers peft datasets gguf
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
      skip "quality $config ($LM_SIZE)" "no time" "not started: ${limit}s left"
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

summary
exit $FAILED
