"""Choose where tensors and models live (taught in 00_start_here and 06_gpu_training)."""

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``torch.device(prefer)`` if given, else CUDA if available, then Apple's MPS, then CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type to try on ``device``: bfloat16 where supported, else float16
    (06_gpu_training).

    bfloat16 keeps float32's range, so it needs no gradient scaler; float16 does (``torch.amp.GradScaler``).
    Whether either is *faster* depends on the hardware: measure before you keep it.
    """
    if device.type == "cuda":
        # in hardware only (compute capability 8.0, Ampere, and newer): a T4 merely emulates bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "mps":
        return torch.float16  # the type MPS autocast has supported longest
    return torch.bfloat16  # CPUs: bfloat16 is the type CPU autocast is built for


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor``, on the CPU, copied to ``device`` without making the program wait (06_gpu_training).

    A plain ``tensor.to("cuda")`` waits until the GPU has finished everything already queued, so the
    CPU cannot prepare the next batch meanwhile. From page-locked (pinned) memory the copy is queued
    like any other GPU work instead; torch keeps the pinned memory until the copy has read it.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
