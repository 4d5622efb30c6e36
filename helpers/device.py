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
