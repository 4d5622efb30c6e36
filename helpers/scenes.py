"""Make the shapes dataset: discs, squares and triangles of photo-textured materials on real textures.

Deterministic: sample ``i`` of seed ``s`` is the same bytes on every machine with the pinned Pillow,
so ``python -m helpers.scenes`` regenerates ``data/shapes`` exactly, and makes thousands more the same way
(``helpers.bench`` does, for its 2,000). 02_segmentation_masks introduces the dataset; 06_gpu_training
says how to make more.
"""

import argparse
import colorsys
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from helpers.masks import CLASSES, to_palette_image
from helpers.paths import data_dir

SIDES = (128, 144, 160)  # image widths and heights; all divisible by 16 for a U-Net
SCALE = 2  # draw at twice the size, then shrink: smooth edges in the image, exact labels in the mask
BACKGROUNDS = ("textures/grass.png", "textures/gravel.png", "textures/brick.png")
# Each class has its own material, as real classes do (roads are grey, leaves green): a photo texture
# and a range of hues (0-1). Shape still matters where hues overlap and under shadows.
MATERIALS = {1: ("two_images/cat.jpg", (0.95, 1.12)),     # disc: fur, reds to yellows
             2: ("two_images/coffee.jpg", (0.22, 0.45)),  # square: coffee, greens
             3: ("two_images/cat.jpg", (0.55, 0.78))}     # triangle: fur, blues to violets


@lru_cache(maxsize=None)
def _load(relative: str, mode: str) -> Image.Image:
    """Read a source photo once per process (callers crop it, never change it)."""
    with Image.open(data_dir(relative)) as image:
        return image.convert(mode)


def _random_crop(rng: np.random.Generator, source: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Return a crop of ``source`` with ``size``'s aspect ratio, random scale and place, resized to size."""
    scale = rng.uniform(0.4, 1.0) * min(source.width / size[0], source.height / size[1])
    w, h = int(size[0] * scale), int(size[1] * scale)
    x, y = int(rng.integers(0, source.width - w + 1)), int(rng.integers(0, source.height - h + 1))
    return source.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BILINEAR)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A grayscale texture crop, coloured between a dark and a light muted colour."""
    texture = _load(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], "L")
    dark = _colour(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.05, 0.4))
    light = _colour(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.55, 1.0))
    return ImageOps.colorize(_random_crop(rng, texture, size), dark, light)


def _colour(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """An RGB colour (0-255) from hue, saturation and value (each 0-1, hue wraps around)."""
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _outline(rng: np.random.Generator, label: int, centre: np.ndarray, radius: float) -> list[tuple]:
    """Corner points of a rotated shape: a disc is a 48-gon (a slightly squashed circle)."""
    corners = {1: 48, 2: 4, 3: 3}[label]
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, corners, endpoint=False)
    squash = rng.uniform(0.8, 1.0) if label == 1 else 1.0
    points = np.stack([np.cos(angles), squash * np.sin(angles)], axis=1) * radius + centre
    return [tuple(p) for p in points.round(2).tolist()]


def _fill(rng: np.random.Generator, label: int, size: tuple[int, int]) -> Image.Image:
    """The class's photo texture, tinted with a colour from the class's hue range."""
    source, (low, high) = MATERIALS[label]
    photo = _random_crop(rng, _load(source, "RGB"), size)
    tint = _colour(rng.uniform(low, high), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    return Image.blend(photo, Image.new("RGB", size, tint), float(rng.uniform(0.4, 0.7)))


def render_scene(index: int, *, seed: int = 0,
                 size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """Return sample ``index`` of dataset ``seed``: an RGB image and its palette mask of class indices.

    ``size`` (height, width) fixes the size; by default it is drawn from SIDES.
    """
    rng = np.random.default_rng([seed, index])
    width, height = (int(s) for s in rng.choice(SIDES, size=2))  # drawn always: same stream either way
    height, width = size or (height, width)
    big = (width * SCALE, height * SCALE)
    image, mask = _background(rng, big), Image.new("L", big, 0)
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(1, len(CLASSES)))
        radius = rng.uniform(0.12, 0.24) * min(big) * {1: 1.0, 2: 1.1, 3: 1.3}[label]  # similar areas
        centre = rng.uniform(0.1, 0.9, 2) * big
        shape = Image.new("L", big, 0)
        ImageDraw.Draw(shape).polygon(_outline(rng, label, centre, radius), fill=255)
        shadow = shape.filter(ImageFilter.GaussianBlur(4)).point(lambda v: v * 0.6)
        image.paste((0, 0, 0), (6, 6), shadow)  # a soft shadow below and right: not part of the object
        image.paste(_fill(rng, label, big), (0, 0), shape)
        mask.paste(label, (0, 0), shape)
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    mask = mask.resize((width, height), Image.Resampling.NEAREST)  # never blend class indices
    return image, to_palette_image(np.asarray(mask))


def write_dataset(root: Path, *, count: int = 320, val_count: int = 64, seed: int = 0,
                  size: tuple[int, int] | None = None) -> None:
    """Write ``count`` pairs as ``images/NNNN.jpg`` + ``masks/NNNN.png``, the last ``val_count`` in val.txt.

    ``size`` (height, width) gives every pair that size instead of SIDES.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    stems = [f"{i:04d}" for i in range(1, count + 1)]
    for i, stem in enumerate(stems, start=1):
        image, mask = render_scene(i, seed=seed, size=size)
        image.save(root / "images" / f"{stem}.jpg", quality=90)
        mask.save(root / "masks" / f"{stem}.png", optimize=True)
    # newline="\n": the same bytes on Windows, which would write \r\n
    (root / "train.txt").write_text("\n".join(stems[: count - val_count]) + "\n", newline="\n")
    (root / "val.txt").write_text("\n".join(stems[count - val_count:]) + "\n", newline="\n")


def main() -> None:
    """Command line:
    ``python -m helpers.scenes [--out DIR] [--count N] [--val-count N] [--seed S] [--side PX]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: data/shapes)")
    parser.add_argument("--count", type=int, default=320, help="number of image+mask pairs")
    parser.add_argument("--val-count", type=int, default=64, help="how many of them go to val.txt")
    parser.add_argument("--seed", type=int, default=0, help="another seed gives another dataset")
    parser.add_argument("--side", type=int, default=None,
                        help="square images of this side (default: 128-160)")
    args = parser.parse_args()
    out = args.out or data_dir("shapes")
    size = (args.side, args.side) if args.side else None
    write_dataset(out, count=args.count, val_count=args.val_count, seed=args.seed, size=size)
    print(f"wrote {args.count} pairs to {out}")


if __name__ == "__main__":
    main()
