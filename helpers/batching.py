"""From samples to batches: padding collate, same-size batches, and work done per batch, not per sample.

Taught in 04_dataloader_batching; ``helpers.bench`` measures the pipelines built from them.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import default_collate

from helpers.datasets import Sample, check_mask_fits
from helpers.device import upload
from helpers.masks import IGNORE_INDEX, check_fill
from helpers.transforms import SHAPES_MEAN, SHAPES_STD


class PaddedBatch(NamedTuple):
    """Images ``[B, 3, H, W]`` and masks ``[B, H, W]`` padded to the largest sample; ``size`` is each
    original (H, W)."""

    image: torch.Tensor
    mask: torch.Tensor
    size: torch.Tensor


def pad_collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
                ignore_index: int = IGNORE_INDEX) -> PaddedBatch:
    """``collate_fn`` for samples of different sizes: pad bottom and right; images with 0, masks with
    ``ignore_index`` (another than 255: ``functools.partial(pad_collate, ignore_index=...)``)."""
    for i, (image, mask) in enumerate(samples):  # a smaller mask would be padded with ignore, silently
        check_mask_fits(image, mask, f"Sample {i} of the batch")
    check_fill(ignore_index, samples[0][1].dtype, "pad_collate")
    height = max(image.shape[-2] for image, _ in samples)
    width = max(image.shape[-1] for image, _ in samples)
    images = torch.zeros(len(samples), 3, height, width, dtype=samples[0][0].dtype)
    masks = torch.full((len(samples), height, width), ignore_index, dtype=samples[0][1].dtype)
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
    """uint8 ``[B, 3, H, W]`` (on any device) -> float32 ``(image / 255 - mean) / std``, once per batch.

    One conversion to float, then a multiply and an add in place: several times cheaper per image than
    ``ToTensor`` and ``Normalize`` sample by sample (04_dataloader_batching measures it), and on a GPU
    it runs there, after the 4x smaller uint8 batch has crossed.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_batch takes uint8 images (0..255), not {images.dtype}: a float batch "
                        "may be normalised already, or scaled to 0..1 (ToTensor); keep batches uint8 up to "
                        "here (04_dataloader_batching).")
    shape = (1, -1, 1, 1)  # made on the CPU and queued to the device: torch.tensor(device=...) would wait
    scale = upload(torch.tensor([1 / (255 * s) for s in std]), images.device).view(shape)
    shift = upload(torch.tensor([-m / s for m, s in zip(mean, std)]), images.device).view(shape)
    return images.to(torch.float32).mul_(scale).add_(shift)


def flip_batch(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample of a batch left-right with probability 0.5, image and mask alike, in place.

    Per-sample randomness at batch speed, for data that arrives as whole batches (04, 05_large_datasets).
    The draws come from torch's global generator, which the loader seeds in each worker (03).
    """
    for i in (torch.rand(len(images)) < 0.5).nonzero().flatten().tolist():
        images[i] = images[i].flip(-1)  # sample by sample: no gathered copy of the flipped ones
        masks[i] = masks[i].flip(-1)
    return images, masks


def flip_collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Sample:
    """``collate_fn`` for samples of one size: stack them, then ``flip_batch``. Runs in the workers.

    The recommended pipeline of 04_dataloader_batching: uint8 images and masks, one random
    horizontal flip per sample, whole batches at a time.
    """
    for i, (image, mask) in enumerate(samples):  # a transposed mask would be flipped on the other axis
        check_mask_fits(image, mask, f"Sample {i} of the batch")
    sizes = sorted({tuple(image.shape[-2:]) for image, _ in samples})
    if len(sizes) > 1:  # in a worker, stacking them may fail with "Trying to resize storage", no sizes named
        raise ValueError(f"flip_collate stacks samples of one size, but this batch holds {sizes[:4]} (HxW): "
                         "give the dataset size=(height, width), or batch them with pad_collate.")
    images, masks = default_collate(samples)
    return Sample(*flip_batch(images, masks))
