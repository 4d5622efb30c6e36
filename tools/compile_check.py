"""What ``torch.compile`` costs and saves for 06's model on this machine ("Would torch.compile help?").

    python tools/compile_check.py [--device cpu|cuda] [--record NAME [--results PATH]]

Trains 06's U-Net on one batch of 06's size (16 crops of 128 x 128; random pixels, as only the time
counts), eager and compiled: the compiled model's first step compiles it, then both are timed as 06's
timing cell times them (best of three rounds of a few steps). Then the compiled model evaluates one batch
once in ``eval()`` mode, which compiles it again. ``--record NAME`` adds the figures as the run NAME of
``results/compile_runs.json``, which 06 prints (or of the file ``--results`` names: tools/gpu_run.sh's
``compile`` step writes OUT/compile_runs.json, which tools/record_gpu_run.py adds). Compiling needs a C++
compiler on a CPU and takes a while: about a minute in all on a 2-core CPU.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from binder_check import cpu_name  # tools/, beside this file

from helpers.bench import machine
from helpers.masks import CLASSES
from helpers.models import UNet
from helpers.training import evaluate, train_one_epoch

RESULTS = Path(__file__).resolve().parent.parent / "results" / "compile_runs.json"
ABOUT = ("torch.compile against eager training for notebook 06's model, by tools/compile_check.py. "
         "Each run names its machine, date, versions and command.")


NOISE = 0.05  # step times of one setting differ by a few % from run to run on a shared machine


def steps_to_pay_back(compile_seconds: float, eager_ms: float, compiled_ms: float) -> int | None:
    """Training steps after which compiling has saved the time it took, or None where a compiled step is
    not faster by more than NOISE (a smaller difference may be the machine's drift, not the compiler)."""
    saved_ms = eager_ms - compiled_ms
    return math.ceil(compile_seconds * 1000 / saved_ms) if saved_ms > NOISE * eager_ms else None


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


def first_step(model: torch.nn.Module, batch: tuple, device: torch.device) -> float:
    """Seconds of one training step: the first of a compiled model compiles it."""
    start = time.perf_counter()
    ms_per_step(model, batch, device, steps=1, rounds=1)
    return time.perf_counter() - start


def measure(device: torch.device, compile_fn=torch.compile, steps: int = 5) -> dict[str, object]:
    """The figures, by name: eager and compiled step times, the compiling, and the steps to pay it back."""
    torch.manual_seed(0)
    batch = (torch.randint(0, 256, (16, 3, 128, 128), dtype=torch.uint8),
             torch.randint(0, len(CLASSES), (16, 128, 128), dtype=torch.uint8))
    net = UNet(num_classes=len(CLASSES), widths=(16, 32, 64), downscale=4).to(device)  # 06's make_model
    first_eager = first_step(net, batch, device)  # a warm-up, and what a first step costs uncompiled
    eager_ms = ms_per_step(net, batch, device, steps)
    compiled = compile_fn(net)
    compiling = first_step(compiled, batch, device) - first_eager
    compiled_ms = ms_per_step(compiled, batch, device, steps)
    start = time.perf_counter()
    evaluate(compiled, [batch], device, len(CLASSES))  # eval() mode: compiled again
    evaluating = time.perf_counter() - start
    torch._dynamo.reset()  # forget the compiled code, as a new kernel would: inductor's cache stays
    from_cache = first_step(compile_fn(net), batch, device) - first_eager
    payback = steps_to_pay_back(compiling, eager_ms, compiled_ms)
    return {"eager training step (ms)": round(eager_ms, 1),
            "compiled training step (ms)": round(compiled_ms, 1),
            "compiling, in the first training step (s)": round(compiling, 1),
            "compiling again, for the first evaluation batch (s)": round(evaluating, 1),
            "compiling in a new run, from inductor's cache of this one (s)": round(from_cache, 1),
            "training steps until compiling pays back": payback or f"never: no step {NOISE:.0%} faster"}

def record(name: str, run: dict, path: Path | None = None) -> None:
    """Add (or replace) the run ``name`` of ``path``, results/compile_runs.json unless named."""
    path = path or RESULTS
    results = json.loads(path.read_text()) if path.exists() else {"about": ABOUT, "runs": {}}
    results["runs"][name] = run
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", metavar="NAME", help=f"add the run NAME to results/{RESULTS.name}")
    parser.add_argument("--results", type=Path, help="add it to this file instead")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cache = tempfile.mkdtemp(prefix="compile_check_")  # an empty cache: a first compile, as a learner's
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ["TRITON_CACHE_DIR"] = cache
    about = machine(device)
    cpu = f"{about['cores']}-core {cpu_name()} ({platform.machine()}, {about['cpu capability']})"
    where = f"one {about['gpu']}, {cpu} host" if "gpu" in about else f"{cpu} CPU, no GPU"
    print(f"06's model on {device}: {where}, torch {torch.__version__}", flush=True)
    figures = measure(device)
    for key, value in figures.items():
        print(f"  {key}: {value}")
    run = {"machine": where, "date": about["date"],
           "versions": f"Python {about['python']}, torch {about['torch']}",
           "command": " ".join(["python tools/compile_check.py", *(sys.argv[1:] if argv is None else argv)]),
           "figures": figures}
    if args.record:
        record(args.record, run, args.results)
    shutil.rmtree(cache, ignore_errors=True)
    return run


if __name__ == "__main__":
    main()
