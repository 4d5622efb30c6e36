"""What is this machine? Versions, device, cores and start method (taught in 00_start_here)."""

import multiprocessing
import os
import platform

import PIL
import torch
import torchvision

from helpers.device import pick_device


def usable_cores() -> int:
    """Return the CPU cores this process may use (respects container and taskset limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_start_method() -> str:
    """Return how DataLoader workers will start: ``fork``, ``spawn`` or ``forkserver``.

    Reads the default without fixing it, so ``multiprocessing.set_start_method`` still works after.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]  # the first one is the default


def environment_report() -> dict[str, str]:
    """Return versions, device, cores and the start method DataLoader workers will use, as text."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "device": f"{device.type} ({name or 'unknown'})",
        "cpu cores usable": str(usable_cores()),
        "worker start method": worker_start_method(),
    }


def format_report(report: dict[str, str]) -> str:
    """Return the report as aligned ``key: value`` lines, ready to print."""
    width = max(map(len, report))
    return "\n".join(f"{key:<{width}} : {value}" for key, value in report.items())
