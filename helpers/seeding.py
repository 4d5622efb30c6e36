"""Make random numbers repeatable, in this process and in DataLoader workers.

Taught in 01_two_images (seed_everything) and 03_augmentation (workers).
"""

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (all devices); return a torch Generator seeded alike.

    Pass the generator to a DataLoader (``generator=``) so its shuffling repeats too.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS as well
    return torch.Generator().manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: give this DataLoader worker its own reproducible random streams.

    PyTorch seeds ``random``, NumPy's global state and torch in each worker already (tests/test_seeding.py
    checks it); a NumPy Generator the dataset keeps as ``.rng`` it cannot know of, and that would be the
    same copy in every worker, every epoch: this re-seeds it.
    """
    seed = torch.initial_seed() % 2**32  # differs per worker and epoch; set by the loader's generator
    dataset = get_worker_info().dataset
    if isinstance(getattr(dataset, "rng", None), np.random.Generator):
        dataset.rng = np.random.default_rng(seed)


def worker_seeding(seed: int = 0) -> dict[str, Any]:
    """DataLoader keyword arguments that make shuffling and augmentation in workers repeat run to run."""
    return {"worker_init_fn": seed_worker, "generator": torch.Generator().manual_seed(seed)}


class RandomDraws(Dataset):
    """``length`` samples of (index, worker id, a draw from ``self.rng``): makes worker seeding visible.

    ``self.rng`` is created once, in ``__init__``, like many augmentation libraries' generators.
    """

    def __init__(self, length: int = 8, seed: int = 0):
        self.length, self.rng = length, np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        info = get_worker_info()
        return index, (info.id if info else -1), int(self.rng.integers(1000))
