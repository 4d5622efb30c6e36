#!/usr/bin/env bash
# The GPU check of "Feed the GPU", prepared to run on a machine with an NVIDIA GPU, from the repository
# root. On an H200 an earlier version (06, the benchmark and the launch) took about 5.5 minutes. Each step
# has a time limit, 590 s in all (and 5 s more each to stop one that ignores it), and the steps run in the
# order of what is still unmeasured: a run cut short by a 10-minute limit on the whole loses the last ones
# (the benchmark measures its ceilings first, and its JSON keeps each pipeline as it ends). BENCH_ARGS
# replaces the benchmark's worker counts and epochs ("--workers 0 4 12 --epochs 2" unless set). To run the
# steps in two calls:
#
#     bash tools/gpu_run.sh OUT [STEP ...]           # steps: tests bench 06 ddp 01 (default: all, in order)
#     bash tools/gpu_run.sh "$OUT" tests bench        # then: bash tools/gpu_run.sh "$OUT2" 06 ddp 01
#
# One more step runs only where named, as it does not fit in the 590 s: compile (150 s), what torch.compile
# costs and saves for 06's model (tools/compile_check.py), e.g. bash tools/gpu_run.sh "$OUT" compile.
#
# Where the machine cannot reach a package registry (the lent GPU machine: Python 3.12, torch 2.11),
# first run tools/gpu_wheels.sh where it can, and carry .whl/ along: they are installed from there, and
# the benchmark reads the dataset generated beside them.
# Elsewhere install requirements-gpu.txt first. Every step runs even if one before it failed; the exit
# status says whether all passed. Where only a few files come back from the machine (OUT holds about a
# dozen), write elsewhere and name in GPU_RUN_PACK a tarball in the folder that comes back (here
# RETURNED): it is packed again after every step, so a run stopped by a time limit still returns what
# its finished steps wrote. Then unpack it (tar -xzf gpu.tgz):
#     GPU_RUN_PACK=RETURNED/gpu.tgz bash tools/gpu_run.sh /tmp/gpu
# It writes into the folder OUT:
#   machine.txt              the GPU (nvidia-smi), the CPU, the date, Python and package versions
#   status.txt               each step: passed, failed, or stopped by its time limit
#   tests.log                the unit tests of the GPU paths (tests/test_cuda.py and the CPU tests beside)
#   bench_cuda.json, .log    python -m helpers.bench --formats --device cuda (gpu decode, pinned memmap)
#   bench_stages.json, .log  tools/feed_stages.py: the memory map's and gpu decode's stages, the first
#                            alone, then with each next one
#   06_gpu_training.log      notebook 06 run as a script on the GPU: its three ways to feed the device
#   06_figures.json          the values 06 computed (timings, shares, fed, val_miou, ...), after each cell
#   ddp_nccl.log, rank-*.json  helpers.ddp_train on nccl, one process per GPU, with --sync-bn
#   01_two_images.log        notebook 01 as a script on the GPU: its asserts (the colour shortcut the
#                            two-image model learns) checked where CUDA rounds differently
#   compile_check.log, .json  the step compile, where named: tools/compile_check.py's run
# Then, where the repository is: python tools/record_gpu_run.py NAME OUT [OUT ...] (results/README.md).
set -uo pipefail
out=${1:?name a folder for the results}
shift
pack=${GPU_RUN_PACK:-}
if [[ -n $pack ]]; then  # a tarball inside OUT would pack itself; OUT holding the repository, .whl/ too
    out_path=$(realpath -m "$out")
    if [[ $(realpath -m "$pack") == "$out_path"/* || $PWD == "$out_path" || $PWD == "$out_path"/* ]]; then
        echo "GPU_RUN_PACK goes outside OUT, and OUT outside the repository: /tmp/gpu, say"
        exit 1
    fi
fi
steps=" ${*:-tests bench 06 ddp 01} "
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then  # no registry here: the wheels tools/gpu_wheels.sh fetched
    "$python" -m pip install -q --no-index --no-deps --target /tmp/gpu_run_site .whl/*.whl || exit
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_run_site"
fi
"$python" -c "import torchcodec, webdataset" || {
    echo "missing packages: pip install -r requirements-gpu.txt, or carry .whl/ (tools/gpu_wheels.sh)"
    exit 1
}
data=()  # the benchmark's dataset, where tools/gpu_wheels.sh generated it beforehand
[[ -d .whl/bench_2000x256/masks ]] && data=(--data .whl/bench_2000x256)
failed=()
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, go on if it fails
    local name=$1 seconds=$2; shift 2
    [[ $steps == *" ${name%%_*} "* ]] || return 0
    echo "== $name: $*"
    timeout -k 5 "$seconds" "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    case $status in  # in OUT too, as the log of a step stopped by its limit ends without a word
        0) echo "$name: passed" ;;
        124 | 137) echo "$name: stopped by its limit of $seconds s" ;;
        *) echo "$name: failed (exit status $status)" ;;
    esac >> "$out/status.txt"
    [[ $status == 0 ]] || failed+=("$name")
    packed
}
packed() {  # OUT as a tarball at GPU_RUN_PACK, where set, replaced whole
    [[ -z $pack ]] && return 0
    tar -czf "$pack.part" -C "$(dirname "$out")" "$(basename "$out")" && mv "$pack.part" "$pack"
}
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
    echo "cpu: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
    "$python" -c "import platform, torch, torchvision, torchcodec
print('python', platform.python_version(), '| torch', torch.__version__, '| torchvision',
      torchvision.__version__, '| torchcodec', torchcodec.__version__, '| cuda', torch.version.cuda)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
packed
gpus=$(nvidia-smi --list-gpus | wc -l)
# test_cuda.py last, and its GPU gather from mapped RAM last in it: never run on a GPU yet, and a fault there
# would fail every test after it in the process
step tests 80 "$python" -m pytest -v --tb=short -p no:cacheprovider -o addopts= tests/test_device.py \
    tests/test_gpu_decode.py tests/test_device_batches.py tests/test_pinned_memmap.py \
    tests/test_bench_gpu.py tests/test_cuda.py
# shellcheck disable=SC2086
step bench_cuda 255 "$python" -m helpers.bench --formats --device cuda ${BENCH_ARGS:---workers 0 4 12 \
    --epochs 2} ${data[@]+"${data[@]}"} --json "$out/bench_cuda.json"
step bench_stages 75 "$python" tools/feed_stages.py --device cuda ${data[@]+"${data[@]}"} \
    --json "$out/bench_stages.json"  # where the benchmark's GPU time goes
step 06_gpu_training 120 "$python" tools/notebook_script.py notebooks/06_gpu_training.ipynb \
    --figures "$out/06_figures.json"
[[ $steps == *" ddp "* ]] && rm -rf /tmp/gpu_run_ddp  # no ranks' files from an earlier run
step ddp_nccl 30 "$python" -m torch.distributed.run --standalone --nproc-per-node "$gpus" \
    -m helpers.ddp_train --data data/shapes --out /tmp/gpu_run_ddp --epochs 2 --sync-bn --workers 2
[[ $steps == *" ddp "* ]] && cp /tmp/gpu_run_ddp/rank-*.json "$out/" 2>/dev/null && packed
step 01_two_images 30 "$python" tools/notebook_script.py notebooks/01_two_images.ipynb
step compile_check 150 "$python" tools/compile_check.py --device cuda --json "$out/compile_check.json"
if [ ${#failed[@]} -gt 0 ]; then echo "failed: ${failed[*]}"; exit 1; fi
echo "all passed"
