"""Memory-mapped batches for a GPU (helpers.formats.PinnedMemmapBatches), gathered by the CPU into
reused buffers or by the device from RAM mapped for it: the samples asked for, flipped with their masks,
every sample once per epoch, reproducible, and the same batches either way."""

import contextlib
import sys
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from helpers import formats
from helpers.datasets import SegmentationDataset
from helpers.formats import MemmapDataset, PinnedMemmapBatches, write_memmap
from helpers.paths import data_dir

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def memmap(tmp_path_factory) -> MemmapDataset:
    folder = tmp_path_factory.mktemp("memmap")
    write_memmap(SegmentationDataset(data_dir("shapes"), split="val"), folder, 32)
    return MemmapDataset(folder)


@pytest.mark.parametrize("gather_on_device", [False, True])
def test_batches_hold_every_sample_once_flipped_with_its_mask(memmap, gather_on_device):
    batches = PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(0),
                                  gather_on_device=gather_on_device)
    seen, flipped = [], 0
    for images, masks in batches:
        assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32) and images.dtype == torch.uint8
        for image, mask in zip(images, masks, strict=True):
            number = next(i for i in range(len(memmap)) if torch.equal(memmap[i].mask, mask)
                          or torch.equal(memmap[i].mask.flip(-1), mask))
            plain = memmap[number]
            same = torch.equal(plain.image, image) and torch.equal(plain.mask, mask)
            mirrored = torch.equal(plain.image.flip(-1), image) and torch.equal(plain.mask.flip(-1), mask)
            assert same or mirrored, f"sample {number}: image and mask not the stored pair, flipped alike"
            flipped += mirrored and not same
            seen.append(number)
    assert len(batches) == 8 and sorted(seen) == list(range(64))  # one epoch: every sample once
    assert 10 < flipped < 54  # about half

    def first(seed: int) -> torch.Tensor:
        return next(iter(PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(seed),
                                             gather_on_device=gather_on_device)))[0]

    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))


@pytest.mark.parametrize("size", [32, 17])  # 17: a sample's bytes are odd, gathered byte by byte
def test_gathered_on_the_device_or_the_host_the_batches_are_the_same(tmp_path, size):
    write_memmap(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, size)
    memmap = MemmapDataset(tmp_path)
    ways = [PinnedMemmapBatches(memmap, 16, CPU, torch.Generator().manual_seed(1), gather_on_device=way)
            for way in (False, True)]
    for _ in range(2):  # the second epoch reuses what the first mapped
        for host, device in zip(*ways, strict=True):
            assert device[0].shape == (16, 3, size, size) and device[1].shape == (16, size, size)
            assert torch.equal(host[0], device[0]) and torch.equal(host[1], device[1])


def test_gathering_on_the_device_refuses_a_map_larger_than_half_the_free_memory(tmp_path, monkeypatch):
    memory = namedtuple("memory", "available")
    monkeypatch.setattr(formats.psutil, "virtual_memory", lambda: memory(available=3 * 2**30))
    formats.check_page_lockable(3 * 2**29, tmp_path)  # half of it exactly: fine
    with pytest.raises(MemoryError, match=r"map in .* is 1\.5 GiB, more than half of the 3\.0 GiB.*"
                                          r"gather_on_device=False\), which reads each batch from the map"):
        formats.check_page_lockable(3 * 2**29 + 1, tmp_path)  # one byte more


def test_a_gpu_that_refuses_to_page_lock_the_map_is_named_and_its_error_cleared(memmap, monkeypatch):
    """Without a GPU, the refusal is simulated: cudaHostRegister returns CUDA error 801. The error must
    be read (so reset) before the exception, or torch would report it at its next unrelated launch."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "cudart", lambda: SimpleNamespace(
        cudaHostRegister=lambda pointer, nbytes, flags: calls.append(("register", flags)) or 801))
    monkeypatch.setattr(formats, "_clear_cuda_error", lambda index: calls.append(("cleared", index)))
    with pytest.raises(formats.PageLockRefused, match=r"page-lock the map in .*memmap.*801.*"
                                                      r"gather_on_device=False"):
        memmap[0]  # opens the map; host_mapped reads writable arrays, as PinnedMemmapBatches gives
        formats.host_mapped(tuple(array.copy() for array in memmap.arrays), torch.device("cuda"),
                            memmap.folder)
    assert calls == [("register", 1 | 2), ("cleared", 0)]  # portable and mapped, then cleared


def test_clearing_the_error_makes_one_launch_and_swallows_what_it_reports(monkeypatch):
    launches = []

    def launch(*size, device):
        launches.append(device)
        raise RuntimeError("CUDA error: part or all of the requested memory range is already mapped")

    monkeypatch.setattr(torch, "zeros", launch)
    formats._clear_cuda_error(1)  # reports nothing: the error was the refusal's, already named
    assert launches == [torch.device("cuda", 1)]


def test_fewer_samples_than_a_batch_are_refused_rather_than_an_empty_epoch(memmap):
    with pytest.raises(ValueError, match=rf"^{len(memmap)} samples in .* make no whole batch of "
                                         rf"{len(memmap) + 1}: use a smaller batch_size\.$"):
        PinnedMemmapBatches(memmap, len(memmap) + 1, torch.device("cpu"))


def test_the_files_are_mapped_once_not_each_epoch(memmap, monkeypatch):
    """A map made afresh each epoch takes a page fault for each page it touches again; the epochs are
    still different orders."""
    maps = []
    monkeypatch.setattr(memmap, "maps",
                        lambda mode="r": maps.append(mode) or MemmapDataset.maps(memmap, mode))
    batches = PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(0))
    epochs = [torch.cat([masks for _, masks in batches]) for _ in range(3)]
    assert maps == ["c"] and not torch.equal(epochs[0], epochs[1])


@pytest.mark.skipif(sys.platform == "win32", reason="Windows refuses to replace or delete a mapped file")
def test_files_written_again_between_epochs_are_mapped_again_and_checked(tmp_path):
    """Kept maps would go on reading the old files, or the first samples of longer ones, without a word."""
    import pickle

    import numpy as np

    write_memmap(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, 16)
    memmap = MemmapDataset(tmp_path)
    batches = PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(0))
    assert sum(int(masks.sum()) for _, masks in batches) > 0
    assert len(pickle.dumps(batches)) < 20_000  # the maps stay behind: a copy maps the files itself
    masks = np.load(tmp_path / "masks.npy")
    np.save(tmp_path / "masks.npy", np.zeros_like(masks))  # the same shapes: read as they are now
    assert sum(int(masks.sum()) for _, masks in batches) == 0
    for name in ("images.npy", "masks.npy"):  # twice the samples, in place
        np.save(tmp_path / name, np.concatenate([np.load(tmp_path / name)] * 2))
    with pytest.raises(ValueError, match=r"changed after the dataset read it"):
        next(iter(batches))
    (tmp_path / "masks.npy").unlink()
    with pytest.raises(ValueError, match=r"masks\.npy is gone since this process mapped it: it was moved or "
                                         r"deleted while in use\. Write it again with write_memmap"):
        next(iter(batches))
