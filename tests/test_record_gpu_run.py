"""tools/record_gpu_run.py: what tools/gpu_run.sh wrote on a GPU machine becomes results files, no figure
retyped; and gpu_run.sh itself, its commands stood in for, as no GPU is here."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import record_gpu_run  # noqa: E402


def test_a_gpu_run_becomes_a_results_file_of_06s_figures_and_the_nccl_launch(tmp_path):
    first, second, results = tmp_path / "call-1", tmp_path / "call-2", tmp_path / "results"
    for folder in (first, second, results):
        folder.mkdir()
    (results / "gpu_training_runs.json").write_text('{"about": "runs", "runs": {}}\n')
    machine = ("date: 2026-12-04T10:00:00Z\ngpu: NVIDIA H200, 143771 MiB, 580.159.04\n"
               "cpu: 16 cores, Intel Xeon\npython 3.12.3 | torch 2.11.0+cu130 | torchcodec 0.17.0\n")
    (first / "machine.txt").write_text(machine)
    (first / "bench_cuda.json").write_text('{"command": "python -m helpers.bench"}')
    (first / "bench_stages.json").write_text('{"command": "python tools/feed_stages.py"}')
    (second / "machine.txt").write_text(machine)
    values = {"timings": {"(None, False)": 6.54, "(torch.bfloat16, True)": 7.81}, "AMP": None,
              "CHANNELS_LAST": False, "WORKERS": 4, "EPOCHS": 25, "train_seconds": 6.04, "val_miou": 0.8916,
              "shares": {"('memory', 4)": [0.2211, 2900.4]}, "fed": {"(b) resident": [0.031, 2400.2]},
              "copy_ms": {"pinned": 0.0241}}
    (second / "06_figures.json").write_text(json.dumps(values))
    rank = {"rank": 0, "world_size": 1, "backend": "nccl", "device": "cuda:0", "seconds": 4.21,
            "epochs": [{"steps": 32}, {"steps": 32}], "eval": {"mean_iou": 0.5123},
            "checkpoint_matches": True}
    (second / "rank-0.json").write_text(json.dumps(rank))

    run = record_gpu_run.record("h200", [first, second], results)
    assert (results / "bench_h200.json").read_text() == '{"command": "python -m helpers.bench"}'
    assert (results / "stages_h200.json").read_text() == '{"command": "python tools/feed_stages.py"}'
    assert run["machine"] == "one NVIDIA H200, 16 cores, Intel Xeon host" and run["date"] == "2026-12-04"
    assert run["versions"].startswith("python 3.12.3, torch 2.11.0")
    assert run["figures"] == {
        "float32 contiguous step (ms)": 6.5, "bfloat16 channels_last step (ms)": 7.8,
        "kept": "float32, contiguous, 4 loader workers", "25 epochs, validation included (s)": 6.0,
        "mean IoU over objects": 0.892, "waiting for data, samples in memory, 4 workers (%)": 22,
        "images trained per second, samples in memory, 4 workers": 2900,
        "(b) resident: waiting for data (%)": 3.1, "(b) resident: images trained per second": 2400,
        "one uint8 batch to the GPU from pinned memory (ms)": 0.024,
        "helpers.ddp_train launch": "1 ranks, nccl on cuda:0",
        "helpers.ddp_train steps per epoch, rank by rank": [[32, 32]],
        "helpers.ddp_train seconds (rank 0)": 4.2, "helpers.ddp_train mean IoU after its epochs": 0.512,
        "helpers.ddp_train checkpoint the same on every rank": True}
    assert json.loads((results / "gpu_training_runs.json").read_text())["runs"]["h200"] == run


def test_it_rewrites_the_results_file_as_it_is_kept(tmp_path):
    kept = (ROOT / "results" / "gpu_training_runs.json").read_text()
    assert record_gpu_run.dumps(json.loads(kept)) == kept  # no reformatting of the other runs
    empty = tmp_path / "out"
    empty.mkdir()
    run = subprocess.run([sys.executable, "tools/record_gpu_run.py", "h200_2", str(empty)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "nothing to record" in run.stderr


def test_a_run_cut_short_after_its_benchmark_keeps_the_benchmark(tmp_path):
    """06 and the launch did not finish: the benchmark is recorded, and no run of 06 is made up; a run of
    06 stopped part way is recorded as far as it went, and says so."""
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir(), results.mkdir()
    (out / "bench_cuda.json").write_text('{"pipelines": {}}')
    assert record_gpu_run.record("h200_2", [out], results) == {}
    assert (results / "bench_h200_2.json").read_text() == '{"pipelines": {}}'
    (out / "06_figures.json").write_text('{"after cell": 12, "EPOCHS": 25, "train_seconds": 6.04}')
    (out / "machine.txt").write_text("date: 2026-12-04T10:00:00Z\ngpu: NVIDIA H200\ncpu: 16 cores\n"
                                     "python 3.12.3\n")
    (results / "gpu_training_runs.json").write_text('{"about": "runs", "runs": {}}\n')
    figures = record_gpu_run.record("h200_2", [out], results, replace=True)["figures"]
    cells = len(record_gpu_run.code_cells(record_gpu_run.LESSON))
    assert figures == {"25 epochs, validation included (s)": 6.0,
                       "06 stopped after code cell": f"12 of {cells}"}


def test_a_name_already_recorded_is_refused_unless_replaced(tmp_path):
    """A new H100 run called h100 would change the run that 06 and the README's table check."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench_cuda.json").write_text('{"command": "python -m helpers.bench"}')
    for name in ("h100", "h200"):  # refused before anything is written
        with pytest.raises(SystemExit, match=f"already in bench_{name}.json, gpu_training_runs.json, which"):
            record_gpu_run.record(name, [out])
    compiled = tmp_path / "results"
    compiled.mkdir()
    (compiled / "stages_h100_2.json").write_text("{}")
    with pytest.raises(SystemExit, match="already in stages_h100_2.json, which"):
        record_gpu_run.record("h100_2", [out], compiled)
    (compiled / "compile_runs.json").write_text('{"about": "runs", "runs": {"h100": {}}}\n')
    with pytest.raises(SystemExit, match="already in compile_runs.json"):
        record_gpu_run.record("h100", [out], compiled)
    (out / "bench_cuda.json").unlink()
    (out / "compile_check.json").write_text(json.dumps({"figures": {"compiled training step (ms)": 5.0}}))
    assert record_gpu_run.record("h100", [out], compiled, replace=True) == {}
    assert json.loads((compiled / "compile_runs.json").read_text())["runs"]["h100"]["figures"]


def test_a_compile_check_on_the_gpu_becomes_a_run_of_compile_runs(tmp_path):
    """gpu_run.sh's step compile, in a call of its own: tools/compile_check.py --json wrote its run, which
    is filed under NAME and described from machine.txt, as the run of 06 is."""
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir(), results.mkdir()
    (results / "compile_runs.json").write_text('{"about": "runs", "runs": {"avx2_cpu": {"date": "x"}}}\n')
    (out / "compile_check.json").write_text(json.dumps({
        "machine": "one NVIDIA H100, 16-core Xeon host", "date": "2026-12-07", "versions": "torch 2.11",
        "command": "python tools/compile_check.py --device cuda",
        "figures": {"compiled training step (ms)": 5.0}}))
    (out / "machine.txt").write_text("date: 2026-12-07T10:00:00Z\ngpu: NVIDIA H100 80GB HBM3, 81559 MiB\n"
                                     "cpu: 16 cores, Intel Xeon\npython 3.12.3 | torch 2.11.0+cu130\n")
    assert record_gpu_run.record("h100", [out], results) == {}  # no run of 06 in this call
    runs = json.loads((results / "compile_runs.json").read_text())["runs"]
    assert runs["avx2_cpu"] == {"date": "x"} and list(runs) == ["avx2_cpu", "h100"]
    assert runs["h100"] == {"machine": "one NVIDIA H100 80GB HBM3, 16 cores, Intel Xeon host",
                            "date": "2026-12-07", "versions": "python 3.12.3, torch 2.11.0+cu130",
                            "command": "python tools/compile_check.py --device cuda",
                            "figures": {"compiled training step (ms)": 5.0}}


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform != "linux", reason="the GPU machine's shell")
def test_gpu_run_packs_what_each_step_left_and_says_which_was_stopped(tmp_path):
    """Only a few files come back from the lent machine, and none that a command stopped by the call's
    limit had yet to pack: gpu_run.sh packs OUT after every step, each step's end in status.txt."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python").write_text('#!/bin/sh\ncase "$*" in *helpers.bench*) exit 124;; esac\n')
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: a stand-in'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(stubs / "python"),
           "GPU_RUN_PACK": str(tmp_path / "back" / "gpu.tgz")}
    (tmp_path / "back").mkdir()
    command = ["bash", "tools/gpu_run.sh", str(tmp_path / "gpu"), "tests", "bench", "06"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "failed: bench_cuda" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "gpu" / "status.txt").read_text().splitlines() == [
        "tests: passed", "bench_cuda: stopped by its limit of 255 s", "bench_stages: passed",
        "06_gpu_training: passed"]
    with tarfile.open(tmp_path / "back" / "gpu.tgz") as packed:
        assert {"gpu/machine.txt", "gpu/status.txt", "gpu/06_gpu_training.log"} <= set(packed.getnames())
    inside = {**env, "GPU_RUN_PACK": str(tmp_path / "gpu" / "gpu.tgz")}  # it would pack itself
    run = subprocess.run(command, cwd=ROOT, env=inside, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "GPU_RUN_PACK goes outside OUT" in run.stdout
