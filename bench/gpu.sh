#!/usr/bin/env bash
# GPU benchmark, one script, no downloads: materializes sana-1600m-1024 (real size, random bf16
# weights) and measures diffusers vs our stages in-process (with and without torch.compile), then
# the served app over HTTP on the same GPU; then the same in-process rows for SANA-Sprint 1.6B
# (2 steps, SanaSprintPipeline) and SANA-1.5 1.6B and 4.8B. Results land in bench/results/*.json.
#   bash bench/gpu.sh [CHECKPOINT_DIR] [SCRATCH_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:-/tmp/sana-1600m-1024}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -f "$ckpt/model_index.json" ] || python -m serve.cli materialize sana-1600m-1024 "$ckpt"
python -m bench.gpu --checkpoint "$ckpt" --out bench/results/gpu.json
python -m bench.gpu --checkpoint "$ckpt" --compile --out bench/results/gpu-compile.json
python -m bench.compare --checkpoint "$ckpt" --device cuda --sizes 1024x1024 --requests 16 \
  --out bench/results/compare-gpu.json
scratch="${2:-/tmp}"
for arch in sana-sprint-1600m-1024 sana-1.5-1600m-1024 sana-1.5-4800m-1024; do
  dir="$scratch/$arch"
  [ -f "$dir/model_index.json" ] || python -m serve.cli materialize "$arch" "$dir"
  python -m bench.gpu --checkpoint "$dir" --out "bench/results/gpu-$arch.json"
done
