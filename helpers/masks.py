"""Classes, colours and mask conversions for the shapes dataset (taught in 02_segmentation_masks).

This module is the one place where class names, class indices and display colours are defined.
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

CLASSES = ("background", "disc", "square", "triangle")  # mask value i means CLASSES[i]
Palette = Sequence[tuple[int, int, int]]  # one (red, green, blue) per class, class 0 first
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))  # display colour of each class
IGNORE_INDEX = 255  # "no label here": padding, rotation corners, cut-outs; losses and metrics skip it
IGNORE_COLOUR = (255, 255, 255)


def check_fill(ignore_index: int | None, dtype: torch.dtype | None, who: str) -> None:
    """Raise unless ``ignore_index`` is a value that masks of ``dtype`` hold (any int where ``dtype`` is
    None): the mask value of the pixels padding and cutting invent (03_augmentation). None would fill
    them with background, and -1 would be written 255 into uint8 masks."""
    if ignore_index is None:
        raise ValueError(f"{who} needs a mask value for the pixels it invents: the ignore index the loss "
                         "skips (255 unless your masks use another), not None.")
    if dtype is not None and not dtype.is_floating_point:
        low, high = torch.iinfo(dtype).min, torch.iinfo(dtype).max
        if not low <= ignore_index <= high:
            raise ValueError(f"{who}: ignore_index {ignore_index} does not fit {dtype} masks ({low}..{high});"
                             " pick a value they hold, such as 255.")


def palette_bytes() -> list[int]:
    """Return a 768-value PIL palette: the class colours, then IGNORE_INDEX in white, the rest black."""
    flat = [0] * 768
    for index, colour in enumerate(PALETTE):
        flat[3 * index: 3 * index + 3] = colour
    flat[3 * IGNORE_INDEX: 3 * IGNORE_INDEX + 3] = IGNORE_COLOUR
    return flat


def to_palette_image(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """Return an ``[H, W]`` class-index mask as a palette (``P`` mode) PIL image, ready to save as PNG."""
    array = np.asarray(mask, dtype=np.uint8)
    image = Image.fromarray(array, mode="L").convert("P")
    image.putpalette(palette_bytes())
    return image


def colour_to_index(colours: torch.Tensor, palette: Palette = PALETTE, *,
                    name: str = "mask") -> tv_tensors.Mask:
    """Turn a colour-coded ``[3, H, W]`` uint8 mask into class indices ``[H, W]`` (int64).

    Every pixel must have exactly one palette colour; anything else (anti-aliased edges, JPEG noise)
    raises ValueError naming ``name``, the unknown colours and how many pixels have each.
    """
    table = torch.tensor(palette, dtype=torch.uint8)  # [K, 3]
    hits = (colours.permute(1, 2, 0)[:, :, None, :] == table).all(dim=-1)  # [H, W, K]
    unknown = ~hits.any(dim=-1)
    if unknown.any():
        found, counts = colours.permute(1, 2, 0)[unknown].unique(dim=0, return_counts=True)
        worst = [f"{tuple(c.tolist())} x{n}" for c, n in zip(found, counts)][:5]
        raise ValueError(f"{name}: {int(unknown.sum())} pixels have colours outside the palette, e.g. "
                         f"{', '.join(worst)}. Export the mask without anti-aliasing, as PNG, not JPEG.")
    return tv_tensors.Mask(hits.to(torch.uint8).argmax(dim=-1))


def index_to_colour(mask: torch.Tensor, palette: Palette = PALETTE) -> torch.Tensor:
    """Turn an ``[H, W]`` class-index mask into a ``[3, H, W]`` uint8 colour picture (ignore: white).
    Refuses a class that ``palette`` has no colour for, rather than draw it as background."""
    check_palette_covers(mask, palette)
    table = torch.zeros(256, 3, dtype=torch.uint8)
    table[: len(palette)] = torch.tensor(palette, dtype=torch.uint8)
    table[IGNORE_INDEX] = torch.tensor(IGNORE_COLOUR, dtype=torch.uint8)
    return table[mask.long()].permute(2, 0, 1)


def check_palette_covers(mask: torch.Tensor, palette: Palette) -> None:
    """Raise unless ``palette`` has a colour for every class in ``mask`` (``IGNORE_INDEX`` aside): a mask
    of another dataset, with more classes than the shapes' four, needs a palette of its own (02)."""
    if mask.is_floating_point():
        raise ValueError(f"The mask holds {mask.dtype} values: class indices are integers (a mask resized "
                         "with smooth interpolation, or converted with ToDtype(scale=True)?)")
    low, high = mask.aminmax() if mask.numel() else (0, 0)  # one cheap pass; the values only when wrong
    if 0 <= low and high < len(palette):
        return
    beyond = [v for v in mask.unique().tolist() if not 0 <= v < len(palette) and v != IGNORE_INDEX]
    if beyond:
        raise ValueError(f"The mask has classes {beyond[:8]}, but the palette has colours for 0.."
                         f"{len(palette) - 1} only: pass palette=, a list with one (R, G, B) per class.")


def foreground(mask: torch.Tensor) -> torch.Tensor:
    """Return the binary foreground mask (any object class) of a class-index mask, as bool."""
    return (mask > 0) & (mask != IGNORE_INDEX)
