"""What is this machine? Versions, device, cores, start method, JPEG decoder (taught in 00_start_here).

Also ``worker_stderr``, which catches what DataLoader workers print (04_dataloader_batching).
"""

import contextlib
import importlib.metadata
import multiprocessing
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import PIL
import torch
import torchvision

from helpers import datasets
from helpers.device import pick_device

CPU_QUOTAS = (Path("/sys/fs/cgroup/cpu.max"),  # cgroup v2: "200000 100000" (2 cores) or "max 100000"
              Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))  # v1: the quota alone, -1 for none


def cpu_quota() -> int | None:
    """Cores a container's CPU quota allows (Docker's ``--cpus``, Kubernetes limits, Binder), rounded up;
    None without a quota. The cores it may run on (affinity) can be many more: the whole host's."""
    for path in CPU_QUOTAS:
        try:
            fields = path.read_text().split()
            if path.name == "cpu.max":
                quota, period = fields[0], fields[1]
            else:  # v1 keeps the period in a file beside it
                quota, period = fields[0], path.with_name("cpu.cfs_period_us").read_text().split()[0]
            if quota in ("max", "-1"):
                return None
            return max(1, -(-int(quota) // int(period)))  # 150000 / 100000: 2 cores, partly used
        except (OSError, IndexError, ValueError, ZeroDivisionError):  # absent, or not as documented
            continue
    return None


def usable_cores() -> int:
    """Return the CPU cores this process may use: those it may run on (taskset, cpusets), at most as many
    as a container's CPU quota allows (``cpu_quota``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, cpu_quota() or cores)


def worker_start_method() -> str:
    """Return how DataLoader workers will start: ``fork``, ``spawn`` or ``forkserver``.

    Reads the default without fixing it, so ``multiprocessing.set_start_method`` still works after.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]  # the first one is the default


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # colours, in tracebacks from Python 3.13 when FORCE_COLOR is set


@contextlib.contextmanager
def worker_stderr() -> Iterator[list[str]]:
    """Catch what child processes, such as DataLoader workers, print to stderr during the block.

    Children write to file descriptor 2, which lands under a notebook cell or in the terminal that
    started Jupyter, depending on the setup. For the block it points at a temporary file instead; the
    list fills with its lines, colour codes removed, when the block ends. On Windows a spawned process
    does not inherit the redirection (multiprocessing starts it without inheriting handles), so nothing
    is caught there; nor under forkserver, whose workers are forked by a server process that keeps the
    stderr it started with. Defined for 04_dataloader_batching, which shows a spawned worker's own
    error.
    """
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)  # processes started now inherit it
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(ANSI_CODES.sub("", log.read()).splitlines())


def major_minor(version: str) -> tuple[int, int]:
    """The (major, minor) of a version such as torchvision's "0.29.1+cu130", to compare with a tuple:
    ``major_minor(torchvision.__version__) >= (0, 28)`` (00 checks the series' floor, 03 a behaviour)."""
    found = re.match(r"(\d+)\.(\d+)", version)  # "0.16rc1" and "0.16+cu128" too
    if found is None:
        raise ValueError(f"{version!r} is not a version such as 0.29.1")
    return int(found[1]), int(found[2])


def jpeg_decoder() -> str:
    """Which library decodes JPEGs for helpers.datasets: simplejpeg (libjpeg-turbo), or PIL without it."""
    if datasets.simplejpeg is not None:
        return f"simplejpeg {datasets.simplejpeg.__version__}"
    return "PIL (pip install simplejpeg: faster, and it refuses JPEG data libjpeg finds damaged)"


def optional_version(package: str, why: str) -> str:
    """The installed version of an optional package, or "not installed" and what needs it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return f"not installed ({why})"


def torchcodec_version() -> str:
    """torchcodec's version, or "not installed", and where it is too old for 06's JPEGs decoded by the GPU
    (Colab comes with torchcodec 0.11), what they need."""
    from helpers.gpu_decode import FIRST_WITH_DECODE_JPEG  # not above: helpers.gpu_decode imports this module

    version = optional_version("torchcodec", "only 06's JPEGs decoded by the GPU need it")
    if version[0].isdigit() and major_minor(version) < FIRST_WITH_DECODE_JPEG:
        needed = ".".join(map(str, FIRST_WITH_DECODE_JPEG))
        return f"{version} (too old for 06's JPEGs decoded by the GPU, which need {needed} or newer)"
    return version


def environment_report() -> dict[str, str]:
    """Return versions, device, cores, the start method DataLoader workers will use and the JPEG decoder,
    as text."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    if device.type == "cpu":  # the vector instructions torch uses: AVX2, AVX512, ... (06)
        name = f"{name or 'unknown'}, {torch.backends.cpu.get_cpu_capability()}"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "device": f"{device.type} ({name or 'unknown'})",
        "cpu cores usable": str(usable_cores()),
        "worker start method": worker_start_method(),
        "jpeg decoder": jpeg_decoder(),
        "torchcodec": torchcodec_version(),
    }


def format_report(report: dict[str, str]) -> str:
    """Return the report as aligned ``key: value`` lines, ready to print."""
    width = max(map(len, report))
    return "\n".join(f"{key:<{width}} : {value}" for key, value in report.items())
