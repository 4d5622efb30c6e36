"""A small U-Net for semantic segmentation (taught in 06_gpu_training).

The encoder halves the size and doubles the channels at each level; the decoder doubles the size back
and concatenates the encoder's features of the same size ("skip connections"), so fine edges survive.
"""

from collections.abc import Sequence

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``"batch"``: BatchNorm, statistics over the batch; ``"group"``: GroupNorm with one group, statistics
    over each sample alone, so a sample's output does not depend on the others in its batch (07)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be 'batch' or 'group', not {kind!r}")


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation (batch norm by default) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # the norm has the bias
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Images ``[B, in_channels, H, W]`` -> class scores (logits) ``[B, num_classes, H, W]``.

    ``widths`` are the channels of each level. ``downscale=2`` runs the network on the image shrunk to half
    its height and width (a quarter of the work) and scales the class scores back up, so the output
    still matches the input. H and W must be divisible by ``factor``: 8 for four levels, 16 with downscale 2.
    ``norm="group"`` replaces batch norm by a per-sample norm (``norm_layer``).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4, widths: Sequence[int] = (16, 32, 64, 128),
                 downscale: int = 1, norm: str = "batch"):
        super().__init__()
        self.downscale = downscale
        self.encoder = nn.ModuleList(
            [DoubleConv(c_in, c_out, norm) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)])
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(deep, shallow, 2, stride=2)
             for deep, shallow in zip(widths[:0:-1], widths[-2::-1])])
        self.decoder = nn.ModuleList(
            [DoubleConv(2 * shallow, shallow, norm) for shallow in widths[-2::-1]])
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.factor = downscale * 2 ** (len(widths) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) ``[B, num_classes, H, W]`` for normalised images ``[B, 3, H, W]`` whose
        height and width ``self.factor`` divides (06_gpu_training pads them in its Exercise 2)."""
        if images.shape[-2] % self.factor or images.shape[-1] % self.factor:
            raise ValueError(f"UNet input is {images.shape[-2]}x{images.shape[-1]} (HxW); both must be "
                             f"divisible by {self.factor}. Crop or pad the images "
                             "(e.g. eval_transforms(crop=...)).")
        skips = []
        x = nn.functional.avg_pool2d(images, self.downscale) if self.downscale > 1 else images
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([upsample(x), skip], dim=1))
        logits = self.head(x)
        if self.downscale > 1:  # smooth class scores, scaled up: edges land between the coarse pixels
            logits = nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear")
        return logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable numbers in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
