"""Show images side by side, whatever form they are in (01_two_images), and masks on them (02)."""

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import draw_segmentation_masks

from helpers.masks import IGNORE_COLOUR, IGNORE_INDEX, PALETTE, Palette, check_palette_covers, index_to_colour

ImageLike = Image.Image | torch.Tensor | np.ndarray


def to_numpy_image(image: ImageLike) -> np.ndarray:
    """Return an HWC (or HW) array matplotlib can show, from a PIL image, a CHW tensor or an array.

    Tensors must be uint8 (0-255) or float in [0, 1]: undo ``Normalize`` before showing.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image)
    array = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.as_tensor(image)
    if array.ndim == 3 and isinstance(image, torch.Tensor):
        array = array.permute(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"Cannot show an image of shape {tuple(image.shape)}: expected CHW or HWC.")
    if array.is_floating_point():
        low, high = array.min().item(), array.max().item()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"Float image values span [{low:.2f}, {high:.2f}], not [0, 1]: "
                             "undo Normalize (x * std + mean) before showing it.")
        return array.clamp(0, 1).numpy()
    if array.dtype != torch.uint8:
        raise TypeError(f"Cannot show a {array.dtype} image: convert it to uint8 or float in [0, 1].")
    return array.numpy()


def show_grid(images: Sequence[ImageLike] | torch.Tensor, titles: Sequence[str] | None = None,
              ncols: int = 4, size: float = 3.0) -> Figure:
    """Draw images (PIL, tensors, arrays, or a ``[B, C, H, W]`` batch) in a grid; return the figure."""
    images = list(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"Got {len(titles)} titles for {len(images)} images.")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)  # ceiling division
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            array = to_numpy_image(images[i])
            if array.ndim == 2:  # grayscale: fix the range so dark images stay dark
                ax.imshow(array, cmap="gray", vmin=0, vmax=255 if array.dtype == np.uint8 else 1)
            else:
                ax.imshow(array)
            ax.set_title(titles[i] if titles else "", fontsize=10)
    fig.tight_layout()
    return fig


def overlay(image: torch.Tensor, mask: torch.Tensor, *, alpha: float = 0.5,
            palette: Palette = PALETTE) -> torch.Tensor:
    """Return the uint8 image ``[3, H, W]`` with each object class painted in its palette colour.

    Background (class 0) is left as it is; ``IGNORE_INDEX`` pixels are painted white. A class that
    ``palette`` has no colour for is refused, not left unpainted.
    """
    check_palette_covers(mask, palette)
    if image.is_floating_point():
        image = (image * 255).round().to(torch.uint8)
    labels = list(range(1, len(palette))) + [IGNORE_INDEX]
    layers = torch.stack([mask == label for label in labels])  # [K, H, W] bool
    colours = [tuple(palette[label]) for label in labels[:-1]] + [IGNORE_COLOUR]
    return draw_segmentation_masks(image.as_subclass(torch.Tensor), layers, alpha=alpha, colors=colours)


def show_pairs(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], titles: Sequence[str] | None = None,
               size: float = 2.2, palette: Palette = PALETTE) -> Figure:
    """Draw one row per (image, mask) pair: the image, the mask in colour (``palette``: one colour per
    class), and the overlay."""
    panels, names = [], []
    for i, (image, mask) in enumerate(pairs):
        panels += [image, index_to_colour(mask, palette), overlay(image, mask, palette=palette)]
        prefix = f"{titles[i]}: " if titles else ""
        names += [f"{prefix}image", f"{prefix}mask", f"{prefix}overlay"]
    return show_grid(panels, titles=names, ncols=3, size=size)


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an "s" unless there is one: "1 worker", "2 workers" (04)."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
