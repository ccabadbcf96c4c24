#!/usr/bin/env bash
# The CUDA path end to end on one GPU: train (spiral, mnist-unet), resume, sample, info; throughput figures.
# Usage: benchmarks/gpu_check.sh OUTDIR [MNIST_SOURCE_DIR]   (run from the repository root)
# Needs a Python with torch (CUDA), safetensors, tqdm, matplotlib, scipy, pillow; the package is used from src/.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUTDIR [MNIST_SOURCE_DIR]}
source_dir=${2:-}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} DDPM_DATA=${DDPM_DATA:-/tmp/ddpm-data} PYTHONUNBUFFERED=1
ddpm() { python3 -m ddpm "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
ddpm data fetch mnist ${source_dir:+--source "$source_dir"} --no-apt

run=/tmp/gpu-runs; rm -rf "$run"
# 2-D spiral on CUDA (the preset's recipe, unchanged).
ddpm train spiral --out $run/spiral --set device=cuda > "$out/spiral.out" 2> "$out/spiral.log"
# The MNIST UNet: a short run, then a resume to a larger step count, in the automatic precision (bf16 here).
ddpm train mnist-unet --out $run/unet --max-steps 300 --set batch_size=256 --set sample_every=0 \
  > "$out/unet_300.out" 2> "$out/unet.log"
ddpm train mnist-unet --out $run/unet --max-steps 600 --set batch_size=256 --set sample_every=0 \
  > "$out/unet_600.out" 2>> "$out/unet.log"
# The same in fp32, for the precision comparison.
ddpm train mnist-unet --out $run/unet32 --max-steps 300 --set batch_size=256 --set sample_every=0 \
  --set precision=fp32 > "$out/unet_fp32.out" 2> "$out/unet32.log"
ddpm sample $run/unet --n 64 --out "$out/grid.png" --gif "$out/reverse.gif" --steps 100
ddpm info $run/unet --json | tail -n 1 > "$out/info.json"
tail -n 3 $run/unet/metrics.csv $run/unet32/metrics.csv | tee "$out/metrics_tail.txt"
echo "gpu check: ok"
