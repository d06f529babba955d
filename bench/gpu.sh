#!/usr/bin/env bash
# GPU benchmark, one script, no downloads: materializes sana-1600m-1024 (real size, random bf16
# weights) and measures diffusers vs our stages in-process (with and without torch.compile), then
# the served app over HTTP on the same GPU. Results land in bench/results/*.json.
#   bash bench/gpu.sh [CHECKPOINT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:-/tmp/sana-1600m-1024}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -f "$ckpt/model_index.json" ] || python -m serve.cli materialize sana-1600m-1024 "$ckpt"
python -m bench.gpu --checkpoint "$ckpt" --out bench/results/gpu.json
python -m bench.gpu --checkpoint "$ckpt" --compile --out bench/results/gpu-compile.json
python -m bench.compare --checkpoint "$ckpt" --device cuda --sizes 1024x1024 --requests 16 \
  --out bench/results/compare-gpu.json
