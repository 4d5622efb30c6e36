"""Image + mask pairs from disk, paired by file name, with errors that say what to fix.

Taught in 02_segmentation_masks; used by every later notebook and by DataLoader workers.
"""

import io
import threading
import unicodedata
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from helpers.masks import CLASSES

try:  # libjpeg-turbo called directly: the same pixels as PIL, in about half the time (04_dataloader_batching)
    import simplejpeg
except ImportError:  # not installed (e.g. Colab before `pip install -r requirements.txt`): PIL decodes
    simplejpeg = None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".png",)  # lossless only: JPEG compression invents mask values
CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "Icon\r"}  # made by tools, not data
ORIENTATION = 0x0112  # the EXIF tag that says how to turn a photo upright
MASK_CHECK_BYTES = 2**26  # check_mask_array reads stored masks this many bytes at a time (64 MiB)


class Sample(NamedTuple):
    """One training example: ``image`` uint8 ``[3, H, W]`` and ``mask`` ``[H, W]`` of class indices, int64
    unless the dataset stores another integer type (``mask_dtype``, the pre-decoded formats' uint8); or a
    whole batch, as a collate function or a list of indices gives."""

    image: tv_tensors.Image
    mask: tv_tensors.Mask


def scan_folder(folder: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[tuple[Path, str]]]:
    """Map file stem -> path for ``folder``, skipping clutter (``CLUTTER``, and hidden files with no image
    suffix in their name); also every unexpected file, with what to do."""
    if not folder.is_dir():
        voc = "" if not (folder.parent / "SegmentationClass").is_dir() else (
            " It holds Pascal VOC's folders: link JPEGImages as images and SegmentationClass as masks, move "
            "out the images without a mask, and copy ImageSets/Segmentation/*.txt beside them as split lists "
            "(README, Is my own data ready?).")
        raise FileNotFoundError(f"No folder {folder}: expected image+mask pairs in images/ and masks/.{voc}")
    files: dict[str, Path] = {}
    problems: list[tuple[Path, str]] = []
    for path in sorted(folder.iterdir()):
        # ._name: macOS resource forks; other hidden files (.localized, .gitkeep) unless named like data
        lower = path.name.lower()
        hidden = lower.startswith(".") and not any(suffix in lower for suffix in IMAGE_SUFFIXES)
        if path.name in CLUTTER or path.name.startswith("._") or hidden:
            continue
        named = path.suffix.lower() in suffixes  # named like an image (or a mask) this folder holds
        if lower.endswith(".icloud"):  # .NAME.jpg.icloud: iCloud Drive kept only the name
            problems.append((path, f"{path} stands for {path.name[:-7].lstrip('.')!r}, which iCloud Drive "
                             "has not downloaded to this Mac: download it (Finder: Download Now), or move it "
                             "out."))
        elif named and path.is_dir():
            problems.append((path, f"{path} is a folder, not an image: move it out of {folder}."))
        elif named and not path.exists():
            problems.append((path, f"{path} is a link to {path.readlink()}, which does not exist: copy the "
                             "file there, or remove the link."))
        elif path.is_dir():  # splits kept in folders: images/train/, masks/train/
            problems.append((path, f"{path} is a folder: the helpers read the files in {folder} itself, not "
                             "in folders below it. For splits kept in folders (images/train, masks/train), "
                             "give each split a folder of its own holding images/ and masks/, or move the "
                             "files up and list each split's names in a split list (train.txt, val.txt) "
                             "beside images/ and masks/."))
        elif path.suffix.lower() in IMAGE_SUFFIXES and not named:  # a mask saved as JPEG
            problems.append((path, f"Mask {path} is a JPEG file: masks must be PNG, since JPEG changes "
                             "their values at every edge. Export it again as PNG from the original class "
                             "indices, then move this file out."))
        elif not named or not path.is_file():
            problems.append((path, f"Unexpected {path.name!r} in {folder}: only {', '.join(suffixes)} files "
                             "belong here (masks must be PNG: JPEG would change their values). Move it out."))
        elif path.stem in files:
            problems.append((path, f"{folder} has two files named {path.stem!r}: {files[path.stem].name} and "
                             f"{path.name}. Keep one, so each name pairs with exactly one file."))
        else:
            files[path.stem] = path
    return files, problems


def list_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map file stem -> path for ``folder``; skip OS and Jupyter clutter, refuse anything unexpected."""
    files, problems = scan_folder(folder, suffixes)
    if problems:
        raise ValueError(problems[0][1])
    return files


NO_IMAGES = "No images in {image_dir}: expected files such as 0001.jpg, each with a mask {masks}/0001.png."
PAIR_FIX = "Each image needs a mask with the same name: add the missing files or move the unpaired ones out."


def unpaired(images: dict[str, Path], masks: dict[str, Path]) -> tuple[list[Path], list[Path]]:
    """Images that have no mask of the same name, and masks that have no image, each sorted by name."""
    return ([images[stem] for stem in sorted(images.keys() - masks.keys())],
            [masks[stem] for stem in sorted(masks.keys() - images.keys())])


def spelled_apart(names: list[str], others: list[str]) -> str:
    """A hint where some of ``names`` differ from some of ``others`` only in how Unicode spells them (an
    accent as a character of its own or within its letter) or in upper and lower case, or ""
    (02_segmentation_masks)."""
    def nfc(name: str) -> str:
        return unicodedata.normalize("NFC", name)

    hints = []
    if same := {nfc(name) for name in names} & {nfc(other) for other in others}:
        hints.append(f" {sorted(same)[:3]} look alike but are spelled apart in Unicode (an accent as its own "
                     "character, as macOS writes names, or within the letter): rename them so that both "
                     "are written alike.")
    by_lower: dict[str, list[str]] = {}
    for other in others:
        by_lower.setdefault(nfc(other).lower(), []).append(other)
    cased = sorted((name, other) for name in names for other in by_lower.get(nfc(name).lower(), [])
                   if nfc(name) != nfc(other))
    if cased:
        hints.append(f" {', '.join(f'{a!r} and {b!r}' for a, b in cased[:3])} differ only in upper and lower "
                     "case, which Windows and macOS overlook in a file name and the pairing does not: rename "
                     "them so that both are written alike.")
    return "".join(hints)


def pair_files(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair ``image_dir/NAME.jpg`` with ``mask_dir/NAME.png`` by NAME, never by list order."""
    images, masks = list_files(image_dir, IMAGE_SUFFIXES), list_files(mask_dir, MASK_SUFFIXES)
    if not images:
        raise FileNotFoundError(NO_IMAGES.format(image_dir=image_dir, masks=mask_dir.name))
    no_mask, no_image = unpaired(images, masks)
    if no_mask or no_image:
        raise ValueError(
            f"Unpaired files: {len(no_mask)} image(s) in {image_dir} have no mask "
            f"{[path.name for path in no_mask][:5]}, {len(no_image)} mask(s) in {mask_dir} have no "
            f"image {[path.name for path in no_image][:5]}. {PAIR_FIX}"
            + spelled_apart([path.stem for path in no_mask], [path.stem for path in no_image]))
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def split_stems(split_file: Path) -> list[str]:
    """The stems a split list names, in its order: blank lines, stray spaces, Windows line ends and a byte
    order mark do not count (02_segmentation_masks)."""
    try:
        lines = split_file.read_text(encoding="utf-8-sig").splitlines()  # -sig: drops the BOM Notepad writes
    except UnicodeDecodeError:
        raise ValueError(f"{split_file} is not UTF-8 text: save it again as UTF-8 (Windows PowerShell 5's > "
                         "writes UTF-16; use Set-Content -Encoding utf8).") from None
    return [line.strip() for line in lines if line.strip()]


def read_split(pairs: list[tuple[Path, Path]], split_file: Path) -> list[tuple[Path, Path]]:
    """Keep the pairs whose stems ``split_file`` lists (one per line), in the file's order."""
    if not split_file.is_file():
        raise FileNotFoundError(f"No split file {split_file}: expected one file name stem per line.")
    by_stem = {image.stem: (image, mask) for image, mask in pairs}
    stems = split_stems(split_file)
    unknown = [stem for stem in stems if stem not in by_stem]
    if unknown:
        raise ValueError(f"{split_file} lists {unknown[:5]}, which have no image+mask pair: list each pair's "
                         "file name stem (0001, not 0001.jpg), or add the files."
                         + spelled_apart(unknown, list(by_stem)))
    twice = sorted(stem for stem, count in Counter(stems).items() if count > 1)
    if twice or not stems:
        problem = f"lists {twice[:5]} more than once" if twice else "lists no file"
        raise ValueError(f"{split_file} {problem}: write each stem of the split once, one per line.")
    return [by_stem[stem] for stem in stems]


TOO_LARGE = ("Pillow treats images this large as a possible decompression bomb (it warns above "
             "PIL.Image.MAX_IMAGE_PIXELS and refuses above twice it; this series refuses both). If you "
             "trust it, shrink it to the size you train at, or raise PIL.Image.MAX_IMAGE_PIXELS in a "
             "module your DataLoader workers import too.")


def file_bytes(path: Path | BinaryIO, what: str) -> bytes:
    """A file's bytes (or an open file's); a file gone since the dataset listed it says so, as ``what``."""
    try:
        return path.read() if hasattr(path, "read") else Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} was listed when the dataset was built and is gone now: put "
                                "it back, or build the dataset again.") from None


TURNED = (5, 6, 7, 8)  # EXIF orientations that swap height and width
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,  # per EXIF orientation,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,  # as ImageOps.exif_transpose
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # 16-bit, 32-bit and float grey: not 8-bit


class ImageRefused(ValueError):
    """An image file refused with a message of its own, which names the file and the fix."""


class InMemoryFile(io.BytesIO):
    """A file's bytes held in memory (a member of a tar shard), named in error messages as ``name``."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def open_image(data: bytes, path: Path | BinaryIO | str) -> Image.Image:
    """``Image.open`` on a file's bytes, named ``path`` in errors. In the main thread, the warnings Pillow
    gives as it opens the file (a JPEG's EXIF cut short, which it reads as far as it can) are warned again
    with the file's name, and its DecompressionBombWarning is dropped: ``check_pixels`` refuses such an
    image, naming it. Elsewhere (``helpers.device.prefetch``'s thread) Pillow warns as it does: catching
    warnings would catch other threads' too."""
    if threading.current_thread() is not threading.main_thread():
        return Image.open(InMemoryFile(data, str(path)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        file = Image.open(InMemoryFile(data, str(path)))
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            continue  # check_pixels refuses the image, naming it
        lost = (" The orientation may be lost with it: check that the image reads upright, or strip its "
                "metadata.") if "EXIF" in str(warning.message) else ""
        warnings.warn(f"{str(warning.message).strip()} ({path}){lost}", warning.category, stacklevel=3)
    return file


def check_pixels(file: Image.Image, path: Path | BinaryIO, what: str) -> None:
    """Refuse an opened image over PIL.Image.MAX_IMAGE_PIXELS, where Pillow only warns (without the file's
    name) until twice the limit."""
    limit, pixels = Image.MAX_IMAGE_PIXELS, file.width * file.height
    if limit is not None and pixels > limit:
        raise ImageRefused(f"Cannot read {what} {path}: its {pixels} pixels exceed the limit of {limit}, "
                           f"which could be a decompression bomb. {TOO_LARGE}")


def check_png(data: bytes) -> None:
    """Check the checksum of every chunk of a PNG file's bytes up to its end chunk (IEND, which holds
    nothing), as Pillow's ``verify()`` does, without opening the file a second time. Pillow does not check
    them as it decodes, so a damaged byte in the compressed pixels can decode to wrong values that still
    look like classes."""
    view, start = memoryview(data), 8  # after the 8-byte signature: chunks of length, type, data, CRC
    while start + 12 <= len(data):
        kind = bytes(view[start + 4:start + 8])
        if kind == b"IEND":
            return
        end = start + 12 + int.from_bytes(view[start:start + 4], "big")
        if end > len(data):
            raise OSError(f"truncated PNG file (its {kind!r} chunk is cut short)")
        if zlib.crc32(view[start + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            raise SyntaxError(f"broken PNG file (bad checksum in its {kind!r} chunk)")
        start = end
    raise OSError("truncated PNG file (it has no IEND chunk)")


def reduced_size(size: tuple[int, int], min_size: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) a JPEG of ``size`` decodes to at the smallest of 1, 1/2, 1/4, 1/8 scale that keeps
    at least ``min_size``. Only these scales are fast: libjpeg-turbo's others (such as 7/8) are slower than
    decoding at full size and resizing."""
    height, width = size
    for factor in (8, 4, 2):
        low_h, low_w = -(-height // factor), -(-width // factor)  # libjpeg rounds up
        if min_size is not None and low_h >= min_size[0] and low_w >= min_size[1]:
            return low_h, low_w
    return height, width


def decode_image(path: Path | BinaryIO,
                 min_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image file to uint8 RGB ``[3, H, W]``, upright by its EXIF orientation; also its full
    (height, width).

    ``min_size`` (height, width): a JPEG may then decode at 1/2, 1/4 or 1/8 scale, the smallest that is
    still at least ``min_size`` (far fewer pixels to decode; 04_dataloader_batching measures it). Other
    formats decode at full size. A truncated or damaged file raises instead of coming back half grey.
    """
    data = file_bytes(path, "Image")
    try:
        # a JPEG without EXIF or XMP orientation has nothing to turn: libjpeg-turbo decodes it from the bytes
        if (simplejpeg is not None and data[:3] == b"\xff\xd8\xff" and b"Exif\x00\x00" not in data
                and b"tiff:Orientation" not in data):  # nor XMP's orientation
            try:
                height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            except ValueError:  # damaged: PIL below says how, in plainer words
                colorspace = None
            limit = Image.MAX_IMAGE_PIXELS  # None: the decompression-bomb check is switched off
            if colorspace in ("Gray", "YCbCr", "RGB") and (limit is None or height * width <= limit):
                try:
                    return _decode_jpeg(data, (height, width), min_size), (height, width)
                except ValueError:
                    pass  # damaged: PIL below says how
        with open_image(data, path) as file:  # checks the size against MAX_IMAGE_PIXELS
            check_pixels(file, path, "image")
            if file.format == "PNG":
                check_png(data)
            orientation = exif_orientation(file, path)
            width, height = file.size[::-1] if orientation in TURNED else file.size
            if simplejpeg is not None and file.format == "JPEG" and file.mode in ("RGB", "L"):
                stored_min = min_size[::-1] if min_size is not None and orientation in TURNED else min_size
                return _decode_jpeg(data, (file.height, file.width), stored_min, orientation), (height, width)
            if simplejpeg is not None and file.format == "JPEG" and file.mode == "CMYK":
                simplejpeg.decode_jpeg(data, "CMYK")  # strict: damage libjpeg only warns about raises
            if min_size is not None and file.format == "JPEG":  # PIL's own reduced decoding
                low_h, low_w = min_size[::-1] if orientation in TURNED else min_size  # as stored
                file.draft("RGB", (low_w, low_h))  # picks 1/2, 1/4 or 1/8 likewise
            if file.mode in WIDE_GREY:
                file = eight_bit_grey(file, path)
            if orientation in UPRIGHT:  # stored sideways or mirrored; EXIF's other tags are not needed
                file = file.transpose(UPRIGHT[orientation])
            file = without_alpha(file, path)
            array = np.array(file if file.mode == "RGB" else file.convert("RGB"))
    except ImageRefused:
        raise
    except Image.DecompressionBombError as error:
        raise ValueError(f"Cannot read image {path}: {error} {TOO_LARGE}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read image {path}: {error}. The file is damaged or not an image: "
                         "export it again, or remove it and its mask.") from None
    return torch.from_numpy(array).permute(2, 0, 1), (height, width)


def without_alpha(file: Image.Image, path: Path | BinaryIO) -> Image.Image:
    """An opened image with an alpha channel, or a palette or colour marked transparent, where every pixel
    is opaque: ready for ``convert("RGB")``, which drops the alpha. Other images as they are. Refuse it
    where some pixels are transparent: as RGB they would show whatever colour the file stores under them,
    often black, and a model would learn it as part of the picture. Notebook 01 shows the modes."""
    if not file.has_transparency_data:
        return file
    mode = file.mode  # with an alpha band (RGBA, LA, PA, ...), or a palette or colour marked transparent
    alpha = next((band for band in file.getbands() if band in "Aa"), None)
    if alpha is None:  # through RGBA: straight to RGB Pillow warns for some palettes
        file, alpha = file.convert("RGBA"), "A"
    if file.getchannel(alpha).getextrema()[0] < 255:
        raise ImageRefused(
            f"Image {path} has transparent pixels ({mode} mode with transparency), which RGB cannot "
            "hold: they would show whatever colour the file stores under them. Flatten it onto the "
            "background you mean and save it as RGB, e.g. Image.alpha_composite(Image.new(\"RGBA\", "
            "image.size, \"white\"), image.convert(\"RGBA\")).convert(\"RGB\").")
    return file


def eight_bit_grey(file: Image.Image, path: Path | BinaryIO) -> Image.Image:
    """A 16- or 32-bit grey image as 8-bit grey (mode L) where every value is in 0..255; otherwise, and
    for float grey, refused: PIL's conversion to RGB would clip every value above 255 to white."""
    array = np.array(file)
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if file.mode == "F" or low < 0 or high > 255:
        raise ImageRefused(
            f"Image {path} has {file.mode} pixels (16-bit, 32-bit or float grey) from {low} to {high}, which "
            "8-bit RGB cannot hold as they are: converting would clip or round them. Scale every image of "
            "the dataset to 0..255 by the same window (12-bit data: 0..4095 divided by 16; CT: one window "
            "of Hounsfield units), not each by its own range, which would give one tissue other values in "
            "each image, and save them again (e.g. as PNG in mode L).")
    grey = Image.fromarray(array.astype(np.uint8))
    if isinstance(file.info.get("transparency"), int) and file.info["transparency"] <= 255:
        grey.info["transparency"] = file.info["transparency"]  # a value marked transparent: checked next
    return grey


def exif_orientation(file: Image.Image, path: Path | BinaryIO) -> int:
    """The EXIF orientation of an opened image: 1, upright, when it has none, and for a TIFF, which Pillow
    opens already upright (its size swapped, its pixels turned as they load). Damaged EXIF raises, naming
    the file."""
    if file.format == "TIFF":
        return 1
    try:  # EXIF in JPEG, PNG and WebP, or XMP's tiff:Orientation, as PIL reads them
        return file.getexif().get(ORIENTATION, 1)
    except OSError:  # the file itself is cut short (a PNG's EXIF may follow its pixels): not the metadata
        raise
    except Exception as error:  # PIL's EXIF parser raises struct.error, TypeError, ... on damaged metadata
        raise ImageRefused(f"Cannot read image {path}: its EXIF metadata is damaged ({type(error).__name__}: "
                           f"{error}). Export it again, or strip its metadata.") from None


def orientation_metadata(file: Image.Image) -> str | None:
    """Where an opened image's orientation is written: "EXIF", "XMP" when XMP alone holds it, or None when
    there is none to apply (``exif_orientation`` gives 1). PIL's ``getexif`` reads EXIF first, then XMP;
    torchcodec reads EXIF alone. Notebook 01 teaches the turn; ``helpers.doctor`` and
    ``helpers.gpu_decode`` name where it was written."""
    if file.format == "TIFF" or ORIENTATION not in file.getexif():  # getexif also reads a PNG's late EXIF
        return None
    raw = file.info.get("exif")
    if raw is None and "Raw profile type exif" in file.info:  # ImageMagick's PNG text chunk, as PIL reads it
        raw = bytes.fromhex("".join(file.info["Raw profile type exif"].split("\n")[3:]))
    in_exif = Image.Exif()
    in_exif.load(raw or b"")  # the EXIF block alone, without PIL's XMP fallback
    return "EXIF" if ORIENTATION in in_exif else "XMP"


def _decode_jpeg(data: bytes, size: tuple[int, int], min_size: tuple[int, int] | None,
                 orientation: int = 1) -> torch.Tensor:
    """libjpeg-turbo through simplejpeg: the pixels PIL would give, about twice as fast, as ``[3, H, W]``;
    ``size`` and ``min_size`` as stored. Turned upright by PIL when the EXIF ``orientation`` says so (PIL
    turns whole pixels at once, faster than torch's flips of a ``[3, H, W]`` view)."""
    low_h, low_w = reduced_size(size, min_size)
    pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=low_h, min_width=low_w)
    if orientation in UPRIGHT:
        pixels = np.array(Image.fromarray(pixels).transpose(UPRIGHT[orientation]))
    return torch.from_numpy(pixels).permute(2, 0, 1)


def read_image(path: Path | BinaryIO) -> tv_tensors.Image:
    """Decode an image file to uint8 RGB ``[3, H, W]``, turned upright by its EXIF orientation.

    PIL opens it (torchvision.io's decoders are deprecated since torchvision 0.29) and checks it; JPEGs
    are decoded by libjpeg-turbo through ``simplejpeg`` when it is installed. Errors name the file.
    """
    return tv_tensors.Image(decode_image(path)[0])


MASK_MODES = ("P", "L", "1", "I;16", "I;16L", "I;16B", "I")  # 8-, 1-, 16-bit (I: 16-bit in older Pillow)
# Pillow spreads 2- and 4-bit grey levels over 0..255 as it reads them (level x 85, x 17): a mask of
# classes 0..3 that an optimiser (oxipng, pngcrush) stored in 2 bits would read as 0, 85, 170 and 255
LOW_BIT_GREY = {"L;2": 85, "L;4": 17}


def is_grey(file: Image.Image) -> bool:
    """Whether every pixel of an opened colour image has red, green and blue alike, and no transparency:
    a grey mask saved as RGB (02_segmentation_masks). A damaged file raises, as reading it would."""
    if "A" in file.mode and file.getchannel("A").getextrema()[0] < 255:  # transparency may be a class
        return False
    pixels = np.asarray(file.convert("RGB"))
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def mask_array(file: Image.Image, path: Path | BinaryIO) -> np.ndarray:
    """The class indices of an opened (not yet loaded) mask file: uint8 for 8-, 4-, 2- and 1-bit modes,
    int32 for 16-bit ones (and mode ``I``)."""
    if file.mode not in MASK_MODES:
        if file.mode in ("LA", "La"):
            fix = "If its grey levels are the classes, save it without the alpha channel (mode L)"
        elif is_grey(file):
            fix = ("Its pixels are grey (red, green and blue alike): if the grey levels are the classes, "
                   "save it with one channel, Image.open(path).convert('L').save(path)")
        else:
            fix = ("If its classes are colours, turn them into class indices and save those as PNG: mask "
                   "= helpers.masks.colour_to_index(pil_to_tensor(Image.open(path).convert('RGB')), "
                   "palette=[one (R, G, B) per class, in class order]), with pil_to_tensor from "
                   "torchvision.transforms.v2.functional; then Image.fromarray(mask.numpy().astype(np.uint8))"
                   ".save(path) (keep the original)")
        raise ValueError(f"Mask {path} has mode {file.mode}, not class indices ({', '.join(MASK_MODES)} "
                         f"mode). {fix}.")
    tiles = getattr(file, "tile", [])  # how a file's pixels are to be read (an image made in memory has none)
    spread = LOW_BIT_GREY.get(tiles[0][3]) if file.mode == "L" and len(tiles) == 1 else None
    array = np.array(file)
    if spread:  # the levels as stored
        return (array // spread).astype(np.uint8)
    return array.astype(np.uint8 if array.dtype.itemsize == 1 else np.int32, copy=False)


LISTED = 8  # values outside the classes named in a message; the rest are counted
THRESHOLD = "Image.fromarray((np.array(Image.open(path)) >= 128).astype(np.uint8)).save(path)"
BLACK_AND_WHITE = ("Mask {path} holds only {values}: black and white. Where white marks the objects "
                   "(every mask is like it, or this one was exported wrongly), give them their class index "
                   f"and save it again as PNG: for one class, {THRESHOLD} (it overwrites the file: keep the "
                   "original), and count 2 classes (num_classes=2). Where other masks hold classes beside "
                   "{white}, {white} means 'no label here': declare it (ignore_index={white}; python -m "
                   "helpers.doctor FOLDER --ignore-index {white} checks them all), and this mask has no "
                   "object at all.")
BLURRED = ("Mask {path} has values {listed} outside the classes 0..{last}, yet nearly all of its pixels are "
           "close to 0 or to 255: a black-and-white mask saved as JPEG, or resized smoothly, at some point, "
           "which blurred its edges. Export it again as PNG from the original if you can; otherwise give "
           f"the objects class 1 by a threshold, {THRESHOLD} (the edges stay approximate; keep the "
           "original).")
STORED_BLACK_AND_WHITE = ("{path} holds masks with values {listed} outside the classes 0..{last}, and nearly "
                          "all of their pixels are close to 0 or to 255: black-and-white masks, whose 255 "
                          "most likely marks the objects. Give the objects their class index in the mask "
                          "files (python -m helpers.doctor FOLDER says how), and write it again.")
OTHER_CLASSES = ("Mask {path} has values {listed} outside the classes 0..{last}. If your dataset has these "
                 "classes, say so: num_classes=N (mask values 0..N-1) and ignore_index for a value that "
                 "marks pixels to skip, such as 255 (python -m helpers.doctor FOLDER --num-classes N "
                 "--ignore-index 255 checks every mask). Otherwise: a mask saved as JPEG or resized with "
                 "smooth interpolation invents values; save masks as PNG and resize them with "
                 "nearest-neighbour.")


def check_mask_values(mask: torch.Tensor, path: Path | BinaryIO, num_classes: int,
                      ignore_index: int | None) -> None:
    """Raise, listing the values, if ``mask`` holds anything but 0..num_classes-1 and ``ignore_index``."""
    low, high = mask.aminmax()  # one cheap pass; the values are counted only when wrong
    if high < num_classes and low >= 0:
        return
    values, counts = mask.unique(return_counts=True)
    check_value_counts(dict(zip(values.tolist(), counts.tolist())), path, num_classes, ignore_index)


def check_value_counts(pixels: dict[int, int], path: Path | str, num_classes: int, ignore_index: int | None,
                       stored: bool = False) -> None:
    """Raise as ``check_mask_values`` does, from a mask's pixels per value; the message says what the values
    look like: a black-and-white mask (only 0 and 255, or 65535 in 16 bits), one blurred by JPEG or smooth
    resizing, or another dataset's classes (02_segmentation_masks). ``stored``: the pixels of many masks
    stored decoded in ``path`` (a memory map, an HDF5 dataset), to be fixed in their files."""
    bad = sorted(v for v in pixels if not 0 <= v < num_classes and v != ignore_index)
    if not bad:
        return
    listed = f"{bad[:LISTED]}{f' and {len(bad) - LISTED} more' if len(bad) > LISTED else ''}"
    white = max(pixels)
    black_and_white = white in (255, 65535) and set(pixels) <= {0, white}
    if stored and (black_and_white or looks_blurred(pixels, num_classes, ignore_index)):
        message = STORED_BLACK_AND_WHITE
    elif black_and_white:
        message = BLACK_AND_WHITE
    elif looks_blurred(pixels, num_classes, ignore_index):
        message = BLURRED
    else:
        message = OTHER_CLASSES
    raise ValueError(message.format(path=path, listed=listed, last=num_classes - 1, white=white,
                                    values=" and ".join(map(str, sorted(pixels)))))


def looks_blurred(pixels: dict[int, int], num_classes: int, ignore_index: int | None) -> bool:
    """Whether a mask's pixels per value look like a black-and-white mask gone through JPEG or smooth
    resizing: a flat white (one value holds most of the pixels near white) with a rim of other values
    near it, outside the classes, and few pixels in between (02_segmentation_masks)."""
    total = sum(pixels.values())
    near_white = [n for v, n in pixels.items() if 224 <= v <= 255 and v >= num_classes and v != ignore_index]
    white = sorted(near_white, reverse=True)
    between = sum(n for v, n in pixels.items() if 32 <= v < 224)
    return (len(white) >= 2 and white[0] >= 0.8 * sum(white) and sum(white) >= 0.01 * total
            and between <= 0.05 * total)


def check_mask_array(masks: np.ndarray, path: Path | str, num_classes: int, ignore_index: int | None) -> None:
    """Raise as ``check_mask_values`` does, naming ``path``, unless uint8 masks ``[N, H, W]`` stored
    decoded (a memory map or an HDF5 dataset, read 64 MiB at a time) hold only 0..num_classes-1 and
    ``ignore_index``; one pass, when a dataset opens them (05_large_datasets, 06_gpu_training)."""
    if masks.dtype != np.uint8:
        raise ValueError(f"{path} holds {masks.dtype} masks, not uint8 class indices: write it again.")
    if len(masks) == 0:
        raise ValueError(f"{path} holds no masks: write it again from a dataset with samples in it.")
    rows = max(1, MASK_CHECK_BYTES // max(1, masks[0].size))
    counts = np.zeros(256, np.int64)
    for start in range(0, len(masks), rows):
        chunk = np.asarray(masks[start:start + rows])
        if chunk.max() >= num_classes:  # rare: count the values only where one is out of range
            counts += np.bincount(chunk.ravel(), minlength=256)
    if counts.any():  # pixels per value of the chunks that hold a value out of range
        pixels = {int(value): int(counts[value]) for value in np.flatnonzero(counts)}
        check_value_counts(pixels, path, num_classes, ignore_index, stored=True)


def read_mask(path: Path | BinaryIO, num_classes: int = len(CLASSES), ignore_index: int | None = None,
              dtype: torch.dtype = torch.int64, size: tuple[int, int] | None = None) -> tv_tensors.Mask:
    """Read a PNG of class indices (``P``, ``L``, ``1``, or 16-bit: ``I;16``, ``I`` in older Pillow) as
    ``[H, W]`` ``dtype``.

    Values must be below ``num_classes``, or equal ``ignore_index`` if the files use one. ``size``
    (height, width): resized by nearest neighbour after the values are checked at full size.
    """
    return tv_tensors.Mask(read_mask_with_size(path, num_classes, ignore_index, dtype, size)[0])


def read_mask_with_size(path: Path | BinaryIO, num_classes: int, ignore_index: int | None, dtype: torch.dtype,
                        size: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """A mask's class indices, checked at full size and then resized to ``size`` by nearest neighbour;
    also its full (height, width)."""
    if torch.iinfo(dtype).max < max(num_classes - 1, ignore_index or 0):
        largest = max(num_classes - 1, ignore_index or 0)
        raise ValueError(f"{dtype} cannot hold class {largest}: use torch.int64.")
    data = file_bytes(path, "Mask")
    try:
        with open_image(data, path) as file:
            if file.format != "PNG":  # named .png, but JPEG's compression would have invented values
                why = "stored losslessly" if file.format in ("JPEG", "MPO") else "PNG files"
                raise ValueError(f"Mask {path} is a {file.format} file, not a PNG: masks must be {why}. "
                                 "Export it again as PNG from the original class indices.")
            check_pixels(file, path, "mask")
            check_png(data)
            full, array = file.size[::-1], mask_array(file, path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"Cannot read mask {path}: {error} {TOO_LARGE}") from None
    except ImageRefused:
        raise
    except (OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read mask {path}: {error}. Export it again as PNG.") from None
    mask = torch.from_numpy(array)
    check_mask_values(mask, path, num_classes, ignore_index)
    if size is not None and tuple(size) != full:
        mask = nearest_resize(mask, size)  # not PIL's nearest: it breaks ties between pixels differently
    return mask.to(dtype), full


def check_same_size(image_size: tuple[int, int], mask_size: tuple[int, int], image_path: Path | BinaryIO,
                    mask_path: Path | BinaryIO, exif_hint: bool = True) -> None:
    """Raise, naming both files, unless image and mask have the same (height, width). ``exif_hint``: where
    the sizes are each other's swapped, say that EXIF may be why (the doctor, which knows, says it itself)."""
    if tuple(image_size) != tuple(mask_size):
        swapped = exif_hint and tuple(image_size) == tuple(mask_size)[::-1]
        turned = (" Its height and width are the image's swapped: if the image is a photo with an EXIF "
                  "orientation, the mask was drawn on it as stored, sideways, and python -m helpers.doctor "
                  "FOLDER says how to turn the mask.") if swapped else ""
        raise ValueError(
            f"Image {image_path} is {image_size[0]} high and {image_size[1]} wide but its mask {mask_path} "
            f"is {mask_size[0]} high and {mask_size[1]} wide: a mask must match its image pixel for pixel. "
            f"Export the mask again at the image's size.{turned}")


def nearest_resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a mask ``[H, W]`` to ``size`` (height, width) by nearest neighbour: each output pixel copies the
    input pixel under its centre, so values are never invented and pixel centres stay aligned (04)."""
    (height, width), array = mask.shape, mask.numpy()
    rows = (2 * np.arange(size[0]) + 1) * height // (2 * size[0])  # centre of output row i, in input rows
    cols = (2 * np.arange(size[1]) + 1) * width // (2 * size[1])
    return torch.from_numpy(array.take(rows, 0).take(cols, 1))  # NumPy's take: 5x faster than torch indexing


def read_pair(image_path: Path | BinaryIO, mask_path: Path | BinaryIO, size: tuple[int, int] | None = None,
              num_classes: int = len(CLASSES), ignore_index: int | None = None,
              mask_dtype: torch.dtype = torch.int64) -> Sample:
    """Read an image and its mask, checked to match pixel for pixel; optionally both resized to ``size``.

    With ``size`` (height, width), a large JPEG decodes at reduced scale (``decode_image``) and is resized
    smoothly (bilinear, antialiased); the mask is resized from its full size by ``nearest_resize``, so
    both cover the same scene. Taught in 04_dataloader_batching.
    """
    image, image_size = decode_image(image_path, size)
    mask, mask_size = read_mask_with_size(mask_path, num_classes, ignore_index, mask_dtype, size)
    check_same_size(image_size, mask_size, image_path, mask_path)
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.resize(image, list(size), antialias=True)
    return Sample(tv_tensors.Image(image), tv_tensors.Mask(mask))


class SegmentationDataset(Dataset):
    """Pairs ``root/images/NAME.jpg`` with ``root/masks/NAME.png``; optionally only those in
    ``root/<split>.txt``.

    Returns ``Sample(image, mask)``; ``transform(image, mask)`` (a v2 transform) moves both together.
    ``size`` (height, width) resizes every pair first, decoding JPEGs at reduced scale when they are large
    (``read_pair``). Masks are int64, what losses want; ``mask_dtype=torch.uint8`` sends them 8x lighter
    from workers.
    """

    def __init__(self, root: Path, split: str | None = None, transform: Callable | None = None,
                 num_classes: int = len(CLASSES), ignore_index: int | None = None,
                 mask_dtype: torch.dtype = torch.int64, size: tuple[int, int] | None = None):
        pairs = pair_files(Path(root) / "images", Path(root) / "masks")
        if split is not None:
            pairs = read_split(pairs, Path(root) / f"{split}.txt")
        # NumPy arrays, not lists of Paths: workers then share them instead of copying (notebook 05)
        self.image_paths = np.array([str(image) for image, _ in pairs])
        self.mask_paths = np.array([str(mask) for _, mask in pairs])
        self.transform, self.num_classes, self.ignore_index = transform, num_classes, ignore_index
        self.mask_dtype, self.size = mask_dtype, size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Sample:
        image, mask = read_pair(Path(self.image_paths[index]), Path(self.mask_paths[index]), self.size,
                                self.num_classes, self.ignore_index, self.mask_dtype)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return Sample(image, mask)


def check_mask_fits(image: torch.Tensor, mask: torch.Tensor, where: str) -> None:
    """Raise unless ``mask`` holds one class per pixel of ``image`` ([H, W], or [1, H, W]): where samples
    are stored flat, end to end, a mask of another size would be read as other pixels' (06_gpu_training)."""
    height, width = image.shape[-2:]
    if tuple(mask.shape[-2:]) != (height, width) or mask.numel() != height * width:
        raise ValueError(f"{where} has a mask of {tuple(mask.shape)} for an image of {(height, width)} "
                         "(height, width): give each image a mask of its own size, [H, W].")
    if mask.is_floating_point():  # stored as integers, 1.7 would become class 1 without a word
        raise ValueError(f"{where} has a {mask.dtype} mask: class indices are integers (a mask resized "
                         "with smooth interpolation, or converted to float along with its image?)")


def check_stored_sample(image: torch.Tensor, mask: torch.Tensor, where: str, channels: int) -> None:
    """Raise unless a sample can be stored flat, end to end with the others (06_gpu_training): a uint8
    image of ``channels`` channels, as decoded, and an integer mask of its size (``check_mask_fits``)."""
    if image.ndim != 3 or image.shape[0] != channels:
        raise ValueError(f"{where} has an image of {tuple(image.shape)}, not [{channels}, H, W]: convert "
                         "every image to one mode (RGB) first.")
    check_mask_fits(image, mask, where)
    if image.dtype != torch.uint8:
        raise ValueError(f"{where} has a {image.dtype} image: samples are kept as decoded, uint8 0..255. "
                         "Give the dataset without ToDtype or Normalize; batches are normalised later.")


class InMemoryDataset(Dataset):
    """Every sample of ``dataset`` read and decoded once, then kept in memory; ``transform`` runs on
    each access.

    For datasets that fit in RAM (the shapes train split decodes to about 20 MiB): an epoch then reads no
    files and decodes nothing; only the random transforms are left. The pixels live in two big tensors
    (all images, all masks) plus each sample's shape and start, not one tensor per sample: a DataLoader
    worker started by spawn or forkserver then receives four tensors, whatever the number of samples.
    (Under forkserver, Linux's default from Python 3.14, each tensor travels as a file descriptor, and
    one message carries fewer than 256 of them: from about 245 tensors a worker fails to start, with "too
    many fds" or, just below, "Invalid argument". Spawn passes them as descriptors the worker inherits
    as it starts, with no such limit.) Taught in 06_gpu_training.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None = None):
        samples = [dataset[index] for index in range(len(dataset))]
        if not samples:
            raise ValueError("InMemoryDataset was given a dataset with no samples: check its folder and "
                             "split.")
        first = samples[0][0]  # every sample as many channels as the first: they are stored end to end
        channels = first.shape[0] if first.ndim == 3 else 3
        for index, (image, mask) in enumerate(samples):
            check_stored_sample(image, mask, f"Sample {index} of the dataset", channels)
        self.shapes = torch.tensor([image.shape for image, _ in samples])  # [N, 3]: channels, height, width
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), self.shapes[:, 1:].prod(1).cumsum(0)])
        # uint8, all pixels of all images, channels last as PIL decodes them: each image comes back in the
        # memory layout it had (the same numbers, and the same speed, as reading it from disk)
        self.images = torch.cat([image.permute(1, 2, 0).flatten() for image, _ in samples])
        masks = torch.cat([mask.flatten() for _, mask in samples])
        self.mask_dtype = masks.dtype  # what __getitem__ gives back; stored as uint8 when the values fit
        self.masks = masks.to(torch.uint8) if 0 <= masks.min() and masks.max() <= 255 else masks
        self.transform = transform

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> Sample:
        channels, height, width = self.shapes[index].tolist()
        start, end = self.starts[index].item(), self.starts[index + 1].item()
        pixels = self.images[start * channels:end * channels].view(height, width, channels)
        image = tv_tensors.Image(pixels.permute(2, 0, 1).clone())  # clone: a transform may write to it
        mask = tv_tensors.Mask(self.masks[start:end].view(height, width).to(self.mask_dtype, copy=True))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return Sample(image, mask)

    def sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each image, before ``transform``."""
        return [(height, width) for _, height, width in self.shapes.tolist()]
