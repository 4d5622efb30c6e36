"""Measure memory: this process's, and each DataLoader worker's own (taught in 05_large_datasets)."""

import ctypes
import gc
import math
import sys

import numpy as np
import psutil
from torch.utils.data import Dataset


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def release_freed() -> None:
    """Collect garbage and hand the memory freed so far back to the system, so that the RSS measured next
    grows with what is allocated next, also when a cell runs again (05_large_datasets).

    On Linux, glibc keeps freed memory for its next allocations, unseen by RSS, unless ``malloc_trim``
    returns it; other systems' allocators are left as they are.
    """
    gc.collect()
    if sys.platform == "linux":
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # a C library without malloc_trim (musl, as on Alpine)
            pass


def uss_mb() -> float:
    """Memory only this process holds (not shared with its parent), in MiB."""
    return psutil.Process().memory_full_info().uss / 2**20


class NameTable(Dataset):
    """Many file names, read one per sample; every ``every``-th sample returns this worker's USS in MiB.

    Makes the copy-on-read trap visible: with forked workers, a Python list of names is copied into each
    worker page by page as it is read, while a NumPy array of names stays shared. Other samples return
    NaN; use ``batch_size=every`` so each batch starts with a reading.
    """

    def __init__(self, names: list[str] | np.ndarray, every: int = 1000):
        self.names, self.every = names, every

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> float:
        self.names[index]  # what any Dataset does with its names
        return uss_mb() if index % self.every == 0 else math.nan
