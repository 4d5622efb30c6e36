#!/usr/bin/env bash
# The GPU check of "Feed the GPU", prepared to run once on a machine with an NVIDIA GPU, from the
# repository root, within about 10 minutes:
#
#     bash tools/gpu_run.sh OUT
#
# It writes into the folder OUT:
#   gpu.csv                  what the GPU is (nvidia-smi)
#   bench_cuda.json, .log    python -m helpers.bench --formats --device cuda (gpu decode, pinned memmap)
#   06_gpu_training.ipynb    notebook 06 run on the GPU: its three ways to feed the device, measured
#   ddp_nccl/                helpers.ddp_train on nccl, one process per GPU, with --sync-bn
# Copy what the lessons quote into results/ (machine, date, versions, command), as results/README.md says.
set -euo pipefail
out=${1:?name a folder for the results}
mkdir -p "$out"
python -m pip install -q -r requirements-gpu.txt
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv"
gpus=$(nvidia-smi --list-gpus | wc -l)
timeout 300 python -m helpers.bench --formats --device cuda --workers 0 4 8 \
    --json "$out/bench_cuda.json" | tee "$out/bench_cuda.log"
timeout 200 jupyter nbconvert --to notebook --execute notebooks/06_gpu_training.ipynb \
    --output-dir "$out" --ExecutePreprocessor.timeout=190
timeout 120 python -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m helpers.ddp_train \
    --data data/shapes --out "$out/ddp_nccl" --epochs 2 --sync-bn --workers 2 | tee "$out/ddp_nccl.log"
