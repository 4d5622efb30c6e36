"""helpers.memory: this process's memory in MiB, and a Dataset that reports a worker's own (05)."""

import math
import platform
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.memory import NameTable, release_freed, rss_mb, uss_mb


@pytest.mark.parametrize("measure", [rss_mb, uss_mb])
def test_memory_grows_by_the_megabytes_this_process_fills(measure):
    before = measure()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page written
    grown = measure() - before
    assert before > 10 and 62 < grown < 66, grown  # in MiB (2**20 bytes), not MB (67.1), bytes or kB
    del block


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc_trim: other allocators left as they are")
def test_after_release_freed_memory_allocated_again_shows_in_rss_again():
    """05 measures an eager dataset's RSS growth: run again, it grew by nothing, glibc reusing unseen what
    the first run freed. 320 pairs of 05's sizes, beside small tensors kept (the heap stays fragmented)."""
    kept = []

    def pairs() -> list:
        return [(torch.ones(3, 128, 128, dtype=torch.uint8), torch.ones(128, 128, dtype=torch.int64),
                 kept.append(torch.ones(10))) for _ in range(320)]  # 55 MiB

    held = pairs()
    del held
    release_freed()
    before = rss_mb()
    held = pairs()
    assert rss_mb() - before > 40 and len(held) == 320


def test_name_table_reads_a_name_per_sample_and_reports_every_nth():
    table = NameTable(np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]), every=2)
    assert len(table) == 5
    readings = [table[index] for index in range(5)]
    assert [math.isnan(reading) for reading in readings] == [False, True, False, True, False]
    assert all(reading > 10 for reading in readings[::2])  # this process's own megabytes
    with pytest.raises(IndexError):
        table[5]  # it reads the name: past the end there is none


@pytest.mark.skipif(sys.platform != "linux", reason="forks a process that has loaded torch: safe on Linux")
def test_a_forked_worker_owns_little_of_what_it_shares_with_its_parent():
    """USS counts only the pages a process holds alone: a forked worker shares most of its parent's."""
    loader = DataLoader(NameTable(np.array(["a.jpg"]), every=1), batch_size=None, num_workers=1,
                        multiprocessing_context="fork")
    (worker_uss,) = list(loader)
    assert 0 < worker_uss < rss_mb() / 4  # a few MiB of a few hundred
