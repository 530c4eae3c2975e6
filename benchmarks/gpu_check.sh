#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on an H200): the kernel tests compiled for CUDA (no
# interpreter) and the GPU kernel benchmark, which writes benchmarks/results/kernel_<gpu>.json
# and prints a short table. Runs with the machine's python3 (the GPU image has torch/triton
# preinstalled) and this checkout on PYTHONPATH; no install step.
#   bash benchmarks/gpu_check.sh            # then commit benchmarks/results/kernel_<gpu>.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0 HF_HUB_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
echo "== kernel tests on CUDA =="
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
echo "== kernel benchmark =="
timeout 150 "$PY" -m benchmarks.kernel_bench --device cuda --tokens 8192
if [ -n "${OUT:-}" ]; then cp benchmarks/results/kernel_*.json "$OUT"/ 2>/dev/null || true; fi
