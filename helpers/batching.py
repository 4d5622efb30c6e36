"""From samples to batches: padding collate, batch-level conversion, and the naive pipeline to beat.

Taught in 04_dataloader_batching; ``helpers.bench`` measures these pipelines.
"""

import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms as v1
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from helpers.datasets import pair_files
from helpers.masks import IGNORE_INDEX
from helpers.transforms import SHAPES_MEAN, SHAPES_STD


class PaddedBatch(NamedTuple):
    """Images ``[B, 3, H, W]`` and masks ``[B, H, W]`` padded to the largest sample; ``size`` is each original (H, W)."""

    image: torch.Tensor
    mask: torch.Tensor
    size: torch.Tensor


def pad_collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> PaddedBatch:
    """``collate_fn`` for samples of different sizes: pad bottom and right; images with 0, masks with ignore."""
    height = max(image.shape[-2] for image, _ in samples)
    width = max(image.shape[-1] for image, _ in samples)
    images = torch.zeros(len(samples), 3, height, width, dtype=samples[0][0].dtype)
    masks = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=samples[0][1].dtype)
    for i, (image, mask) in enumerate(samples):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    sizes = torch.tensor([tuple(image.shape[-2:]) for image, _ in samples])
    return PaddedBatch(images, masks, sizes)


def batches_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of images that share one size: a ``DataLoader(batch_sampler=...)``.

    Images of different sizes then batch without padding, so every prediction is the one the image alone
    would get. Deterministic, in order of each size's first appearance (meant for evaluation).
    Taught in 06_gpu_training.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [group[start:start + batch_size] for group in groups.values()
            for start in range(0, len(group), batch_size)]


def normalize_batch(images: torch.Tensor, mean: Sequence[float] = SHAPES_MEAN,
                    std: Sequence[float] = SHAPES_STD) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` (on any device) -> float32 in [0, 1], normalised: once per batch, not per sample."""
    as_float = v2.functional.to_dtype(images, torch.float32, scale=True)
    return v2.functional.normalize(as_float, list(mean), list(std))


def fast_transforms(size: int = 224) -> v2.Compose:
    """The recommended per-sample work: resize and flip uint8 image and mask tensors, nothing more."""
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip()])


class NaiveDataset(Dataset):
    """The seed tutorials' per-sample pipeline (PIL, Resize, ToTensor, Normalize), made correct for masks.

    For comparison only (04_dataloader_batching): it returns float images and int64 masks per sample.
    """

    def __init__(self, root: Path, size: int = 224, mean: Sequence[float] = SHAPES_MEAN,
                 std: Sequence[float] = SHAPES_STD):
        pairs = pair_files(Path(root) / "images", Path(root) / "masks")
        self.image_paths = np.array([str(image) for image, _ in pairs])
        self.mask_paths = np.array([str(mask) for _, mask in pairs])
        self.size = size
        self.to_tensor = v1.Compose([v1.Resize((size, size)), v1.ToTensor(), v1.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.image_paths[index]).convert("RGB")
        mask = Image.open(self.mask_paths[index])
        if random.random() < 0.5:  # one coin for both, so they stay aligned
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.resize((self.size, self.size), Image.Resampling.NEAREST)
        return self.to_tensor(image), torch.from_numpy(np.array(mask)).long()


def flip_batch(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample of a batch left-right with probability 0.5, image and mask alike, in place.

    Per-sample randomness at batch speed, for data that arrives as whole batches (05_large_datasets).
    """
    for i in (torch.rand(len(images)) < 0.5).nonzero().flatten().tolist():
        images[i] = images[i].flip(-1)  # sample by sample: no gathered copy of the flipped ones
        masks[i] = masks[i].flip(-1)
    return images, masks
