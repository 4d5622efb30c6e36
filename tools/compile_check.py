"""What ``torch.compile`` costs and saves for 06's model on this machine ("Would torch.compile help?").

    python tools/compile_check.py [--device cpu|cuda] [--record NAME] [--json PATH]

Trains 06's U-Net (float32, contiguous) on one batch of 06's size (16 crops of 128 x 128; random
pixels, as only the time counts), eager and compiled, timed as 06's timing cell times them (best of three
rounds of a few steps). The compiling is what a compiled model's first call takes beyond a warm eager
one: in its first training step, then in its first evaluation, in ``eval()`` mode and at a second image
size (06 validates nine), which compile it again. The compiler starts from an empty cache on disk, as
on a fresh machine; a new process then compiles the same model from the cache this one filled.
``--record NAME`` adds the figures as the run NAME of ``results/compile_runs.json``, which 06 prints;
``--json PATH`` writes the run alone (tools/gpu_run.sh's step ``compile``, which
tools/record_gpu_run.py then adds). Compiling needs a C++ compiler on a CPU and takes a while: about a
minute in all on a 2-core CPU.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from binder_check import cpu_name  # tools/, beside this file
from record_gpu_run import add_run

from helpers.bench import machine
from helpers.masks import CLASSES
from helpers.models import UNet
from helpers.training import evaluate, train_one_epoch

RESULTS = Path(__file__).resolve().parent.parent / "results" / "compile_runs.json"


NOISE = 0.05  # step times of one setting differ by a few % from run to run on a shared machine


def steps_to_pay_back(compile_seconds: float, eager_ms: float, compiled_ms: float) -> int | None:
    """Training steps after which compiling has saved the time it took, or None where a compiled step is
    not faster by more than NOISE (a smaller difference may be the machine's drift, not the compiler)."""
    saved_ms = eager_ms - compiled_ms
    return math.ceil(compile_seconds * 1000 / saved_ms) if saved_ms > NOISE * eager_ms else None


SIZES = ((128, 128), (160, 192))  # 06's training crops; then a second size, as 06 validates nine


def model_and_batches(device: torch.device) -> tuple[torch.nn.Module, list[tuple]]:
    """06's model (its make_model), in float32 and contiguous, and a batch of 16 at each of SIZES."""
    torch.manual_seed(0)
    net = UNet(num_classes=len(CLASSES), widths=(16, 32, 64), downscale=4).to(device)
    batches = [(torch.randint(0, 256, (16, 3, *size), dtype=torch.uint8),
                torch.randint(0, len(CLASSES), (16, *size), dtype=torch.uint8)) for size in SIZES]
    return net, batches


def ms_per_step(model: torch.nn.Module, batch: tuple, device: torch.device, steps: int = 5,
                rounds: int = 3) -> float:
    """Milliseconds per training step: the best of ``rounds`` timings of ``steps`` steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        train_one_epoch(model, [batch] * steps, optimizer, device)  # ends with .item(): waits
        timings.append((time.perf_counter() - start) / steps * 1000)
    return min(timings)


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()  # evaluate and train_one_epoch end with .item(): they wait for the device
    return time.perf_counter() - start


def measure(device: torch.device, compile_fn=torch.compile, steps: int = 5) -> dict[str, object]:
    """The figures, by name: eager and compiled step times, the compiling (what a first call takes
    beyond a warm eager one), and the steps that pay it back."""
    net, batches = model_and_batches(device)

    def evaluation(model: torch.nn.Module) -> float:
        return seconds(lambda: evaluate(model, batches, device, len(CLASSES)))

    ms_per_step(net, batches[0], device, steps=1, rounds=1)  # warm-up: first calls set up the library
    evaluation(net)
    eager_ms, eager_evaluation = ms_per_step(net, batches[0], device, steps), evaluation(net)
    compiled = compile_fn(net)
    compiling = (ms_per_step(compiled, batches[0], device, steps=1, rounds=1) - eager_ms) / 1000
    compiled_ms = ms_per_step(compiled, batches[0], device, steps)
    evaluating = evaluation(compiled) - eager_evaluation  # eval() mode, then a second size: compiled again
    payback = steps_to_pay_back(compiling + evaluating, eager_ms, compiled_ms)
    return {"eager training step, float32, contiguous (ms)": round(eager_ms, 1),
            "compiled training step (ms)": round(compiled_ms, 1),
            "compiling, in the first training step (s)": round(compiling, 1),
            f"compiling, in the first evaluation at {len(SIZES)} image sizes (s)": round(evaluating, 1),
            "training steps until compiling pays back":
                payback if payback is not None else f"never: no step {NOISE:.0%} faster"}


def compiling_in_a_new_process(device: torch.device) -> float:
    """Seconds a new process spends compiling the model for its first training step, with the compiler's
    cache on disk that this one filled (its folder is in the environment)."""
    done = subprocess.run([sys.executable, __file__, "--device", str(device), "--first-step"],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", metavar="NAME", help=f"add the run NAME to results/{RESULTS.name}")
    parser.add_argument("--replace", action="store_true", help="with --record: overwrite a run of that name")
    parser.add_argument("--json", type=Path, help="write the run alone to this file")
    parser.add_argument("--first-step", action="store_true", help=argparse.SUPPRESS)  # the new process
    args = parser.parse_args(argv)
    if args.record and not args.replace and args.record in json.loads(RESULTS.read_text())["runs"]:
        parser.error(f"results/{RESULTS.name} already holds a run called {args.record}, which 06 may print: "
                     "record this one under a new name, or pass --replace")
    device = torch.device(args.device)
    if args.first_step:  # print only what the first compiled step takes beyond a warm eager one
        net, batches = model_and_batches(device)
        warm_ms = ms_per_step(net, batches[0], device, steps=1, rounds=2)  # the first round warms up
        print((ms_per_step(torch.compile(net), batches[0], device, steps=1, rounds=1) - warm_ms) / 1000)
        return {}
    about = machine(device)
    cpu = f"{about['cores']}-core {cpu_name()} ({about['processor']}, {about['cpu capability']})"
    where = f"one {about['gpu']}, {cpu} host" if "gpu" in about else f"{cpu} CPU, no GPU"
    print(f"06's model on {device}: {where}, torch {torch.__version__}", flush=True)
    # ignore_cleanup_errors: Windows refuses to delete the compiled kernels this process has loaded
    with (tempfile.TemporaryDirectory(prefix="compile_check_", ignore_cleanup_errors=True) as cache,
          mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache})):
        figures = measure(device)  # from an empty cache, as a first compile on a machine is
        from_cache = compiling_in_a_new_process(device)
    figures["compiling in a new process, from the cache of the first (s)"] = round(from_cache, 1)
    for key, value in figures.items():
        print(f"  {key}: {value}")
    run = {"machine": where, "date": about["date"],
           "versions": f"Python {about['python']}, torch {about['torch']}",
           "command": " ".join(["python tools/compile_check.py", *(sys.argv[1:] if argv is None else argv)]),
           "figures": figures}
    if args.record:
        add_run(RESULTS, args.record, run)
    if args.json:
        args.json.write_text(json.dumps(run, indent=1, ensure_ascii=False) + "\n")
    return run


if __name__ == "__main__":
    main()
