"""Decoded samples kept on the device, cropped, flipped and turned there a whole batch at a time
(taught in 06_gpu_training).

The per-sample pipeline ``train_transforms(size, scale=..., hflip_prob=..., vflip_prob=...,
quarter_turns=True, degrees=0, jitter=0, normalize=False)`` runs in the loader, one sample at a time, on the
CPU. ``DeviceBatches`` does that work for a whole batch with a few tensor operations on the device that
trains: one random draw per sample, the same for its image and its mask. Each output pixel is looked up in
the stored pixels, so a crop at the images' own scale, a flip and a quarter turn are exact, pixel for pixel
the same as v2's; a scaled crop samples the image bilinearly without antialiasing and the mask at the
nearest pixel centre (v2's ``NEAREST_EXACT``, where ``train_transforms`` uses ``NEAREST``): close to v2's
output, not equal, and the same in distribution (tests/test_device_batches.py). Pixels outside an image (a
crop larger than the image) are 0 in the image and ``ignore_index`` (255 unless given) in the mask, as
``train_transforms`` pads them.
"""

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from helpers.datasets import InMemoryDataset, check_stored_sample
from helpers.device import upload
from helpers.masks import IGNORE_INDEX, check_fill


@dataclass
class Draws:
    """One batch's random choices, one per sample: which sample, the crop box and its flips and turn."""

    index: torch.Tensor  # [B] sample indices
    top: torch.Tensor  # [B] float: the crop box's top edge, in image pixels
    left: torch.Tensor  # [B]
    height: torch.Tensor  # [B] float: the crop box's size, in image pixels
    width: torch.Tensor  # [B]
    hflip: torch.Tensor  # [B] bool
    vflip: torch.Tensor  # [B] bool
    turns: torch.Tensor  # [B] quarter turns counter-clockwise, 0 to 3


def draw(sizes: torch.Tensor, size: int, generator: torch.Generator, *, scale: tuple[float, float] | None,
         hflip_prob: float, vflip_prob: float, quarter_turns: bool) -> Draws:
    """Random crop boxes, flips and turns for images of ``sizes`` ([B, 2], height and width), on the CPU.

    ``scale=None``: a ``size`` x ``size`` box at a uniform position (as ``v2.RandomCrop`` with
    ``pad_if_needed=True``, which pads a smaller image). Otherwise a box covering a ``scale`` share of the
    image's area with an aspect ratio between 3/4 and 4/3, inside the image (as ``v2.RandomResizedCrop``,
    without its retries).
    """
    count = len(sizes)
    heights, widths = sizes[:, 0].double(), sizes[:, 1].double()
    if scale is None:
        box_h = box_w = torch.full((count,), float(size), dtype=torch.float64)
    else:
        uniform = torch.empty(2, count, dtype=torch.float64)
        area = heights * widths * uniform[0].uniform_(*scale, generator=generator)
        log_ratio = uniform[1].uniform_(-0.2877, 0.2877, generator=generator)  # ratio 3/4 to 4/3
        box_w = (area * log_ratio.exp()).sqrt().clamp(max=widths).round().clamp(min=1)
        box_h = (area / log_ratio.exp()).sqrt().clamp(max=heights).round().clamp(min=1)
    # an integer corner, uniform over the positions that keep the box inside the image, or, when the image
    # is the smaller one, the image inside the box (as v2.RandomCrop(pad_if_needed=True) pads)
    spare_h, spare_w = heights - box_h, widths - box_w
    top = spare_h.clamp(max=0) + (torch.rand(count, generator=generator, dtype=torch.float64)
                                  * (spare_h.abs() + 1)).floor()
    left = spare_w.clamp(max=0) + (torch.rand(count, generator=generator, dtype=torch.float64)
                                   * (spare_w.abs() + 1)).floor()
    hflip = torch.rand(count, generator=generator) < hflip_prob
    vflip = torch.rand(count, generator=generator) < vflip_prob
    turns = (torch.randint(0, 4, (count,), generator=generator) if quarter_turns
             else torch.zeros(count, dtype=torch.int64))
    return Draws(torch.zeros(count, dtype=torch.int64), top, left, box_h, box_w, hflip, vflip, turns)


# (row, column) in the crop of output pixel (i, j) after k quarter turns (torch.rot90): each is
# ci * i + cj * j + c0 * (size - 1), with these (ci, cj, c0)
TURNED = torch.tensor([[[1, 0, 0], [0, 1, 0]], [[0, 1, 0], [-1, 0, 1]],
                       [[-1, 0, 1], [0, -1, 1]], [[0, -1, 1], [1, 0, 0]]])


def placement(draws: Draws) -> torch.Tensor:
    """The draws as one int64 tensor [B, 2, 5], on the CPU: for the rows, then the columns, of each sample
    (ci, cj, c0, corner, box side). Crop, then horizontal flip, vertical flip and turn, in the order of
    ``train_transforms``, traced back from the output pixel."""
    coefficients = TURNED[draws.turns].clone()  # [B, 2 (row, column), 3 (ci, cj, c0)]
    for axis, flipped in ((0, draws.vflip), (1, draws.hflip)):  # a flip maps x to (size - 1) - x
        flip = coefficients[flipped, axis]
        coefficients[flipped, axis] = torch.stack([-flip[:, 0], -flip[:, 1], 1 - flip[:, 2]], dim=1)
    corner = torch.stack([draws.top, draws.left], 1).long().unsqueeze(-1)  # whole pixels, as drawn
    side = torch.stack([draws.height, draws.width], 1).long().unsqueeze(-1)
    return torch.cat([coefficients, corner, side], 2)


def source_points(placed: torch.Tensor, size: int, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output pixel of each sample, the (row, column) it comes from in the stored image
    ([B, size, size] each, on ``placed``'s device): int64 when every box is ``size`` x ``size``
    (``exact``), else float, at pixel centres as ``align_corners=False``."""
    dtype = torch.int64 if exact else torch.float32
    placed = placed.to(dtype).view(-1, 2, 5, 1, 1)
    i = torch.arange(size, device=placed.device, dtype=dtype).view(size, 1)
    crop = placed[:, :, 0] * i + placed[:, :, 1] * i.view(1, size) + placed[:, :, 2] * (size - 1)
    if exact:  # at the images' own scale each output pixel is one stored pixel
        return (placed[:, :, 3] + crop).unbind(1)
    return (placed[:, :, 3] + (crop + 0.5) * (placed[:, :, 4] / size) - 0.5).unbind(1)


def pixel_indices(placed: torch.Tensor, start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """``source_points``' exact case as indices among all stored pixels ([B, size, size] int64), for boxes
    inside their images that start at ``start`` and are ``width`` wide ([B] each). A point is affine in
    the output pixel (i, j): the index is worked out per sample and spread over the batch in one addition,
    one pass over the batch where the points and their index take about ten."""
    placed = placed.view(-1, 2, 5)
    first = placed[:, :, 3] + placed[:, :, 2] * (size - 1)  # [B, 2]: where output pixel (0, 0) comes from
    base = start + first[:, 0] * width + first[:, 1]
    down = placed[:, 0, 0] * width + placed[:, 1, 0]  # one output row down, in stored pixels
    right = placed[:, 0, 1] * width + placed[:, 1, 1]  # one output column right
    i = torch.arange(size, device=placed.device)
    return (base.view(-1, 1) + down.view(-1, 1) * i).view(-1, size, 1) + (right.view(-1, 1) * i).unsqueeze(1)


def rows_at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an int64 ``index`` of non-negative row numbers, of any shape but 0-d: the rows
    of ``table`` it names, gathered by ``index_select``, which on a CPU is about three times as fast as
    indexing with a tensor."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def check_options(size: int, batch_size: int, scale: tuple[float, float] | None, hflip_prob: float,
                  vflip_prob: float) -> None:
    """Raise, naming the option, unless each is in its range: batches that are all padding, or flips
    drawn at a probability of 1.5, would train without a word."""
    for name, value in (("size", size), ("batch_size", batch_size)):
        try:
            whole = not isinstance(value, bool) and operator.index(value) >= 1  # numpy and torch ints too
        except TypeError:
            whole = False
        if not whole:
            raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}.")
    for name, value in (("hflip_prob", hflip_prob), ("vflip_prob", vflip_prob)):
        if not 0 <= value <= 1:  # NaN fails too
            raise ValueError(f"{name} is a probability, from 0 to 1, not {value!r}.")
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale is (smallest, largest) share of the image's area, 0 < smallest <= largest "
                         f"<= 1, not {scale!r}.")


class DeviceBatches:
    """The decoded samples of an ``InMemoryDataset``, moved to ``device`` once, served as augmented uint8
    batches made there: ``for images, masks in DeviceBatches(...).epoch(generator)``."""

    def __init__(self, data: InMemoryDataset | SimpleNamespace, device: torch.device, size: int,
                 batch_size: int, *,
                 scale: tuple[float, float] | None = None, hflip_prob: float = 0.5, vflip_prob: float = 0.0,
                 quarter_turns: bool = False, drop_last: bool = True, ignore_index: int = IGNORE_INDEX):
        if data.shapes[:, 0].ne(3).any():
            raise ValueError("DeviceBatches needs RGB images (3 channels); convert the dataset first.")
        check_options(size, batch_size, scale, hflip_prob, vflip_prob)
        if len(data.shapes) < (batch_size if drop_last else 1):  # checked before the upload
            fix = " with drop_last=True: use a smaller batch_size, or drop_last=False" if drop_last else ""
            raise ValueError(f"{len(data.shapes)} samples make no batch of {batch_size}{fix}.")
        check_fill(ignore_index, data.masks.dtype, "DeviceBatches")  # before the upload
        self.images = data.images.to(device)  # flat uint8, each image channels last
        self.masks = data.masks.to(device)
        self.shapes, self.starts = upload(data.shapes, device), upload(data.starts, device)  # no wait
        self.sizes = data.shapes[:, 1:]  # on the CPU, for the draws
        self.device, self.size, self.batch_size, self.drop_last = device, size, batch_size, drop_last
        self.ignore_index = ignore_index  # the mask value outside an image
        self.options = {"scale": scale, "hflip_prob": hflip_prob, "vflip_prob": vflip_prob,
                        "quarter_turns": quarter_turns}

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.sizes), self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in a random order: (images [B, 3, size, size], masks [B, size, size]), uint8 images
        and masks in the dtype ``InMemoryDataset`` stored (uint8 where the classes fit).

        The whole epoch is drawn at its start and copied to the device in one piece: making a batch then
        queues a few operations on the device, and copies nothing."""
        order = torch.randperm(len(self.sizes), generator=generator)[:len(self) * self.batch_size]
        draws = draw(self.sizes[order], self.size, generator, **self.options)
        draws.index = order
        plan, exact, within = self.plan(draws)
        for first in range(0, len(order), self.batch_size):
            part = slice(first, first + self.batch_size)  # each batch takes the fastest path it can
            yield self.make(plan[part], bool(exact[part].all()), bool(within[part].all()))

    def batch(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch these draws describe: image pixels bilinear (exact at the images' own scale), mask
        pixels nearest, 0 and ``ignore_index`` outside the image."""
        plan, exact, within = self.plan(draws)
        return self.make(plan, bool(exact.all()), bool(within.all()))

    def plan(self, draws: Draws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The draws on the device as one int64 tensor [B, 11] (each sample's index, then its
        ``placement``), and per sample whether its box is ``size`` x ``size`` and whether it is inside its
        image (both known on the CPU, so that no batch waits for the device to tell)."""
        sizes = self.sizes[draws.index]
        exact = draws.height.eq(self.size) & draws.width.eq(self.size)
        within = ((draws.top >= 0) & (draws.left >= 0) & (draws.top + draws.height <= sizes[:, 0])
                  & (draws.left + draws.width <= sizes[:, 1]))
        plan = torch.cat([draws.index.view(-1, 1), placement(draws).flatten(1)], 1)
        return upload(plan, self.device), exact, within

    def make(self, plan: torch.Tensor, exact: bool, within: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of a slice of ``plan`` (see ``plan``), made on the device."""
        index = plan[:, 0].view(-1, 1, 1)
        height, width, start = self.shapes[index, 1], self.shapes[index, 2], self.starts[index]
        pixels = self.images.view(-1, 3)  # one row of three channels per pixel
        if within and exact:  # the common case, and the cheapest: one gather each
            near = pixel_indices(plan[:, 1:], start.view(-1), width.view(-1), self.size)
            return rows_at(pixels, near).permute(0, 3, 1, 2), rows_at(self.masks, near)
        rows, cols = source_points(plan[:, 1:], self.size, exact)

        def pixel(r: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            return start + (r.clamp(min=0) * width + c.clamp(min=0)).clamp(max=height * width - 1), inside

        near, inside = pixel(rows.round().long(), cols.round().long())  # nearest: for the mask
        masks = torch.where(inside, rows_at(self.masks, near), self.ignore_index).to(self.masks.dtype)
        if exact:  # each point is a pixel
            return (rows_at(pixels, near) * inside.unsqueeze(-1)).permute(0, 3, 1, 2), masks
        # bilinear: the four neighbours, weighted; points within half a pixel of the edge take the edge
        rows = torch.minimum(rows.clamp(min=0), height - 1.0)
        cols = torch.minimum(cols.clamp(min=0), width - 1.0)
        top, left = rows.floor(), cols.floor()
        images = torch.zeros(len(plan), self.size, self.size, 3, device=self.device)
        for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
            weight = (1 - (rows - top - dr).abs()) * (1 - (cols - left - dc).abs())
            where, ok = pixel(top.long() + dr, left.long() + dc)
            images += (weight * ok * inside).unsqueeze(-1) * rows_at(pixels, where).float()
        return images.round().clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2), masks


def augment_batch(images: list[torch.Tensor], masks: list[torch.Tensor], size: int,
                  generator: torch.Generator,
                  **options: tuple[float, float] | float | bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop, flip and turn one batch of images ``[3, H, W]`` and masks ``[H, W]`` of any sizes that are
    already on their device (just decoded by the GPU, for example: ``helpers.gpu_decode``), as
    ``DeviceBatches`` does; ``options`` as ``DeviceBatches`` takes them. Returns uint8 images and the masks
    in the dtype they came in."""
    if not images:
        raise ValueError("augment_batch was given no images: a batch needs at least one sample.")
    if len(images) != len(masks):
        raise ValueError(f"augment_batch was given images and masks of different counts ({len(images)} and "
                         f"{len(masks)}): one mask per image, in the same order.")
    for position, (image, mask) in enumerate(zip(images, masks, strict=True)):
        check_stored_sample(image, mask, f"Sample {position} of the batch", 3)
    shapes = torch.tensor([tuple(image.shape) for image in images])
    packed = SimpleNamespace(images=torch.cat([image.permute(1, 2, 0).flatten() for image in images]),
                             masks=torch.cat([mask.flatten() for mask in masks]), shapes=shapes,
                             starts=torch.cat([torch.zeros(1, dtype=torch.int64),
                                               shapes[:, 1:].prod(1).cumsum(0)]))
    batches = DeviceBatches(packed, images[0].device, size, len(images), **options)
    draws = draw(batches.sizes, size, generator, **batches.options)
    draws.index = torch.arange(len(images))
    return batches.batch(draws)
