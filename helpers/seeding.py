"""Make random numbers repeatable (taught in 01_two_images and 03_augmentation)."""

import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (all devices); return a torch Generator seeded alike.

    Pass the generator to a DataLoader (``generator=``) so its shuffling repeats too.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS as well
    return torch.Generator().manual_seed(seed)
