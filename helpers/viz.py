"""Show images side by side, whatever form they are in (taught in 01_two_images)."""

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

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
