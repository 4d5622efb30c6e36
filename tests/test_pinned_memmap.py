"""Memory-mapped batches gathered into reused buffers for a GPU (helpers.formats.PinnedMemmapBatches):
the samples asked for, flipped with their masks, every sample once per epoch, reproducible."""

import torch

from helpers.datasets import SegmentationDataset
from helpers.formats import MemmapDataset, PinnedMemmapBatches, write_memmap
from helpers.paths import data_dir


def test_batches_hold_every_sample_once_flipped_with_its_mask(tmp_path):
    source = SegmentationDataset(data_dir("shapes"), split="val")
    write_memmap(source, tmp_path / "memmap", 32)
    memmap = MemmapDataset(tmp_path / "memmap")
    batches = PinnedMemmapBatches(memmap, 8, torch.device("cpu"), torch.Generator().manual_seed(0))
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
        return next(iter(PinnedMemmapBatches(memmap, 8, torch.device("cpu"),
                                             torch.Generator().manual_seed(seed))))[0]

    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))
