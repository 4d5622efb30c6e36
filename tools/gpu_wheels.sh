#!/usr/bin/env bash
# Wheels for tools/gpu_run.sh on a GPU machine that cannot reach a package registry, fetched here
# into .whl/ (ignored by git), with the benchmark's dataset. The lent machine has Python 3.12 with
# torch 2.11, torchvision 0.26, numpy, pillow, matplotlib, h5py, tqdm, psutil and pyyaml; these are
# what the series adds:
#   torchcodec  the GPU JPEG decoder (works with torch >= 2.11)
#   webdataset, braceexpand  shards (helpers.formats, helpers.ddp_train)
#   simplejpeg  the CPU pipeline the benchmark recommends, so CPU and GPU decode compare fairly
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON_VERSION:-3.12}"
fetched=$(mktemp -d)  # .whl/ is replaced only once every wheel is here
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$fetched" \
    torchcodec==0.17.0 webdataset==1.0.2 braceexpand==0.1.7 simplejpeg==1.9.0
rm -rf .whl && mv "$fetched" .whl
# and the benchmark's dataset (2,000 pairs, 38 MB), generated here: the scenes the GPU machine would
# generate in about a minute of its time (helpers.bench and feed_stages read it with --data)
"${PYTHON:-.venv/bin/python}" -c "from pathlib import Path; from helpers.bench import bench_data
bench_data(2000, 256, Path('.whl/bench_2000x256'))"
ls -s .whl
