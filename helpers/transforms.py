"""Train and eval pipelines for image+mask samples, and the statistics they normalise with.

Taught in 03_augmentation; used by 04 onwards and by DataLoader workers. Every pipeline takes a
``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask`` together: geometric steps move both, photometric
steps and ``Normalize`` touch the image only, and the mask keeps its class indices and their integer type.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from helpers.masks import IGNORE_INDEX, check_fill

# Per-channel statistics of data/shapes train split, from channel_stats (a unit test recomputes them).
SHAPES_MEAN = (0.4443, 0.4267, 0.4123)
SHAPES_STD = (0.125, 0.1222, 0.1294)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's pretrained models were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomCutout(v2.Transform):
    """Blank a random square of the image and mark it ``ignore_index`` in the mask (03_augmentation).

    ``v2.RandomErasing`` would leave the mask saying "disc" where the image shows nothing.
    """

    def __init__(self, size: int = 32, p: float = 0.5, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.p, self.ignore_index = size, p, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The random draw, made once per call and shared by image and mask: the square to blank, or
        ``None`` (with probability ``1 - p``) to leave both as they are."""
        height, width = v2.query_size(flat_inputs)
        if torch.rand(()) >= self.p:
            return {"box": None}
        top = int(torch.randint(0, max(height - self.size, 0) + 1, ()))
        left = int(torch.randint(0, max(width - self.size, 0) + 1, ()))
        return {"box": (slice(top, top + self.size), slice(left, left + self.size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply the draw to one input: 0 in the image, ``ignore_index`` in the mask."""
        # v2 hands over a plain tensor only as the image: the first one, in a call that holds no Image
        if isinstance(inpt, tv_tensors.Mask):
            fill = self.ignore_index
        elif isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor:
            fill = 0
        elif isinstance(inpt, torch.Tensor):
            return inpt  # bounding boxes, key points: no rule for them
        else:  # a PIL image: left as it is, it would show pixels where the mask says ignore
            raise TypeError("RandomCutout blanks tensors, not PIL images: convert the image first "
                            "(v2.PILToTensor()), as helpers.datasets reads it.")
        if params["box"] is None:
            return inpt
        out = inpt.clone()
        out[(..., *params["box"])] = fill
        return out


class PadToAtLeast(v2.Transform):
    """Pad to at least ``size`` (an int, or (height, width)), evenly on both sides as ``v2.CenterCrop``
    pads, but the mask with ``ignore_index`` rather than 0: a centre crop larger than a sample then invents
    no background to be scored (03_augmentation)."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX):
        super().__init__()
        check_fill(ignore_index, None, "eval_transforms")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index = ignore_index

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Pad one input where it is smaller than ``size``: an image with 0, a mask with the ignore index."""
        height, width = F.get_size(inpt)
        across, down = max(0, self.size[1] - width), max(0, self.size[0] - height)
        padding = [across // 2, down // 2, across - across // 2, down - down // 2]  # left, top, right, bottom
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return F.pad(inpt, padding, fill=fill) if any(padding) else inpt


def to_model_input(mean: Sequence[float] = SHAPES_MEAN, std: Sequence[float] = SHAPES_STD) -> v2.Compose:
    """The last steps of every pipeline: image to float in [0, 1], then normalised; the mask untouched."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])


def train_transforms(size: int = 128, *, scale: tuple[float, float] | None = (0.5, 1.0),
                     hflip_prob: float = 0.5, vflip_prob: float = 0.0, quarter_turns: bool = False,
                     degrees: float = 15.0, jitter: float = 0.2, blur_prob: float = 0.0,
                     cutout_prob: float = 0.0, mean: Sequence[float] = SHAPES_MEAN,
                     std: Sequence[float] = SHAPES_STD, normalize: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> v2.Compose:
    """Random crop, flips, quarter turns, rotation (corners marked ignore), colour jitter, blur and cutout.

    ``normalize=False`` stops at uint8: the loader then carries bytes, and ``helpers.training.to_device``
    normalises whole batches on the device (04_dataloader_batching, 06_gpu_training).
    ``scale=None`` crops at the images' own scale (no resizing; smaller images padded with ignore).
    ``quarter_turns`` turns each crop by 0, 90, 180 or 270 degrees: exact, no interpolation, no corners.
    A step whose setting is 0 (or False) is left out: it would cost time and change nothing.
    ``ignore_index``: the mask value of pixels that padding, rotation and cutout invent (255, as the loss
    skips; another dataset may skip another value).
    """
    check_fill(ignore_index, None, "train_transforms")  # None: as a Dataset without one says
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
    crop = (v2.RandomCrop(size, pad_if_needed=True, fill=fill)
            if scale is None else v2.RandomResizedCrop(size, scale=scale, antialias=True))  # masks: nearest
    steps = [crop]
    if hflip_prob:
        steps.append(v2.RandomHorizontalFlip(hflip_prob))
    if vflip_prob:
        steps.append(v2.RandomVerticalFlip(vflip_prob))
    if quarter_turns:  # v2 rotates by multiples of 90 degrees with torch.rot90: exact
        steps.append(v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]))
    if degrees:
        steps.append(v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=fill))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 4))
    if blur_prob:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=blur_prob))
    if cutout_prob:
        steps.append(RandomCutout(size=size // 4, p=cutout_prob, ignore_index=ignore_index))
    return v2.Compose(steps + ([to_model_input(mean, std)] if normalize else []))


def eval_transforms(crop: int | tuple[int, int] | None = None, *, mean: Sequence[float] = SHAPES_MEAN,
                    std: Sequence[float] = SHAPES_STD, normalize: bool = True,
                    ignore_index: int = IGNORE_INDEX) -> v2.Compose:
    """Deterministic: an optional centre crop (a smaller sample padded first, its mask with
    ``ignore_index``), then float conversion and normalisation (unless ``normalize=False``)."""
    steps = [PadToAtLeast(crop, ignore_index), v2.CenterCrop(crop)] if crop else []
    if normalize:
        steps.append(to_model_input(mean, std))
    return v2.Compose(steps or [v2.Identity()])  # neither step: Compose refuses an empty list


def denormalize(image: torch.Tensor, mean: Sequence[float] = SHAPES_MEAN,
                std: Sequence[float] = SHAPES_STD) -> torch.Tensor:
    """Undo ``Normalize`` for display: ``image * std + mean``, clamped to [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, device=image.device).view(shape)
    std_t = torch.tensor(std, device=image.device).view(shape)
    return (image * std_t + mean_t).clamp(0, 1)


def channel_stats(dataset: Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a dataset's uint8 images, one image at a time.

    Streaming sums (float64) keep memory flat however large the dataset is.
    """
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for sample in dataset:
        image = sample[0].to(torch.float64).flatten(1) / 255  # [3, H*W]
        total += image.sum(dim=1)
        squares += (image**2).sum(dim=1)
        pixels += image.shape[1]
    mean = total / pixels
    std = (squares / pixels - mean**2).sqrt()
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]
