"""JPEGs decoded by the GPU's nvJPEG a whole batch at a time, through torchcodec (06_gpu_training, and
``python -m helpers.bench --device cuda``).

torchvision.io's decoders are deprecated since torchvision 0.29 in favour of torchcodec, whose
``decode_jpeg`` decodes a list of encoded images in one nvJPEG call on CUDA, and with libjpeg-turbo on the
CPU. torchcodec is an optional install (``requirements-gpu.txt``); only this module imports it, and only
when it decodes or checks that it loads (``why_unavailable``). Workers read the compressed bytes and decode
the PNG masks on the CPU, and pack each batch into a few tensors (``encoded_collate``); the main process
decodes each batch of JPEGs on the GPU (CUDA cannot start in forked workers).
"""

import importlib.metadata
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from helpers.datasets import (
    TOO_LARGE,
    UPRIGHT,
    check_mask_array,
    check_pixels,
    check_same_size,
    exif_orientation,
    file_bytes,
    open_image,
    orientation_metadata,
    read_mask_with_size,
)
from helpers.env import major_minor
from helpers.masks import CLASSES

PIN = "torchcodec==0.17.0"  # requirements-gpu.txt's pin (a test keeps the two equal); needs torch 2.11+
FIRST_WITH_DECODE_JPEG = (0, 16)  # Colab's runtimes come with torchcodec 0.11, which cannot decode JPEGs


def install_command() -> str:
    """The pip command that installs torchcodec built as this torch was built (06). Its compiled code
    links to torch's, and to the same CUDA: on Linux, PyPI's wheels of both are built for CUDA 13.0;
    another build of torch (CPU only, as on Colab's CPU runtime, or CUDA 12.8, as on its GPU runtime)
    needs torchcodec from that build's index at download.pytorch.org, as torchcodec's README says."""
    built_for = torch.version.cuda  # None for a CPU-only build
    on_pypi = "13.0" if sys.platform.startswith("linux") else None  # elsewhere PyPI's are CPU only
    if built_for == on_pypi:
        return f"pip install {PIN}"
    index = "cpu" if built_for is None else "cu" + built_for.replace(".", "")
    return f"pip install {PIN} --index-url https://download.pytorch.org/whl/{index}"


def why_unavailable() -> str | None:
    """None where torchcodec can decode JPEGs here (06's way (c)); otherwise why not, and the command
    that fixes it: not installed, too old for ``decode_jpeg``, or built for another torch or CUDA."""
    try:
        version = importlib.metadata.version("torchcodec")
    except importlib.metadata.PackageNotFoundError:
        return f"torchcodec is not installed: {install_command()}"
    if major_minor(version) < FIRST_WITH_DECODE_JPEG:  # not imported: an upgrade works without a restart
        first = ".".join(map(str, FIRST_WITH_DECODE_JPEG))
        return (f"torchcodec {version} is installed, which cannot decode JPEGs (decode_jpeg came in "
                f"{first}): {install_command()}")
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401  (loads torchcodec's compiled code)
    except Exception as error:  # built for another torch or CUDA than this one
        return (f"torchcodec {version} is installed but does not load with torch {torch.__version__} "
                f"({type(error).__name__}: {error}); install its build for this torch: {install_command()}")
    return None


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode 1-D uint8 tensors of JPEG bytes into [3, H, W] uint8 RGB images on ``device``, in one call.

    torchcodec decodes on the CPU, or with nvJPEG on CUDA; for another device (Apple's MPS) it decodes on
    the CPU, and the images are copied there. Photos are turned upright by their EXIF orientation. On CUDA
    it first waits on the host for the work already queued on the current stream: nvJPEG's batched
    hardware decoder has been seen writing into memory that queued kernels were still reading (on H100;
    pytorch/vision#9606). torchcodec 0.17 waits for its own decode to finish before it returns; whether
    it orders the decode after work queued before it is not documented, and this wait costs little.
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception as error:  # not installed, too old, or built for another torch: say which
        raise ImportError(why_unavailable() or str(error)) from error
    target = device
    if device.type not in ("cpu", "cuda"):  # torchcodec sends any other device to nvJPEG, which refuses it
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    try:
        images = decode_jpeg(list(encoded), mode="RGB", device=device)
    except RuntimeError as error:  # the decoder names no file: find which ones fail, one at a time
        bad = [i for i, data in enumerate(encoded) if not decodes(decode_jpeg, data, device)]
        raise ValueError(f"The JPEGs at positions {bad[:8]} of this batch of {len(encoded)} cannot be "
                         f"decoded ({error}): damaged or cut short. Run python -m helpers.doctor on the data "
                         "folder to name them, then export them again or remove them and their masks."
                         ) from None
    return images if target == device else [image.to(target) for image in images]


def decodes(decode_jpeg: Callable, data: torch.Tensor, device: torch.device) -> bool:
    """Whether torchcodec's ``decode_jpeg`` decodes this one JPEG without an error."""
    try:
        decode_jpeg(data, mode="RGB", device=device)
    except RuntimeError:
        return False
    return True


def write_masks(pairs: list[tuple[Path, Path]], folder: Path, size: tuple[int, int], *,
                num_classes: int = len(CLASSES), ignore_index: int | None = None) -> None:
    """Decode every pair's mask once, checked (values 0..num_classes-1 and ``ignore_index``) and resized
    to ``size`` (height, width) by nearest neighbour, into ``folder/masks.npy`` ([N, H, W] uint8), with
    each mask's own (height, width) in ``sizes.npy`` and the masks' file names and a CRC-32 of each file's
    bytes in ``names.txt``: ``EncodedPairs(pairs, masks=folder)`` then reads them instead of decoding a PNG
    per sample, which costs the workers more than reading the JPEG, and refuses them once a mask file has
    changed (read, not decoded, to check)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("masks.npy", "sizes.npy", "names.txt"):  # an older copy must not pass for this one
        (folder / name).unlink(missing_ok=True)
    partial = folder / "masks.partial.npy"
    masks = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(pairs), *size))
    sizes = np.zeros((len(pairs), 2), dtype=np.int64)
    try:
        for row, (_, path) in enumerate(pairs):
            mask, sizes[row] = read_mask_with_size(Path(path), num_classes, ignore_index, torch.uint8, size)
            masks[row] = mask.numpy()
        masks.flush()
    except BaseException:  # a bad mask: its error names it, and no half-written file stays behind
        del masks
        partial.unlink(missing_ok=True)
        raise
    del masks
    np.save(folder / "sizes.npy", sizes)
    names = "".join(f"{mask_crc(Path(path))} {Path(path).name}\n" for _, path in pairs)
    (folder / "names.txt").write_text(names, encoding="utf-8")  # any language's file names, on any system
    partial.replace(folder / "masks.npy")


def mask_crc(path: Path) -> str:
    """A mask file's CRC-32, as ``write_masks`` stores it beside the decoded mask (06_gpu_training)."""
    return f"{zlib.crc32(file_bytes(path, 'Mask')):08x}"


class EncodedPairs(Dataset):
    """Pairs of (JPEG bytes as a 1-D uint8 tensor, mask decoded on the CPU as uint8 [H, W]) for
    ``decode_jpegs``: the loader's workers read files and decode the masks, never the JPEGs. Mask values
    are checked as ``SegmentationDataset`` checks them (``num_classes``, ``ignore_index``). ``mask_size``
    (height, width) resizes masks by nearest neighbour. ``masks``, a folder ``write_masks`` wrote for these
    pairs, gives the masks already decoded instead, their values checked once, here. Each JPEG's header is
    read (no pixels): its size, turned upright, must be its mask's. torchcodec turns a photo upright by its
    EXIF orientation, on the CPU and the GPU alike, but does not read XMP metadata, so a photo turned by
    XMP alone is refused (PIL, and so ``SegmentationDataset``, turns it). torchcodec has no strict mode:
    damaged compressed data that libjpeg only warns about decodes into wrong pixels, so check a folder
    first with ``python -m helpers.doctor``."""

    def __init__(self, pairs: list[tuple[Path, Path]], mask_size: tuple[int, int] | None = None,
                 masks: Path | None = None, *, num_classes: int = len(CLASSES),
                 ignore_index: int | None = None):
        # NumPy arrays, not lists: workers then share them instead of copying (notebook 05)
        self.images = np.array([str(image) for image, _ in pairs])
        self.masks = np.array([str(mask) for _, mask in pairs])
        self.mask_size, self.decoded, self.arrays = mask_size, masks, None
        self.num_classes, self.ignore_index = num_classes, ignore_index  # as SegmentationDataset's
        if masks is not None:
            self.mask_size = self._check_decoded(Path(masks), mask_size)

    def _check_decoded(self, folder: Path, mask_size: tuple[int, int] | None) -> tuple[int, int]:
        """The size of the masks ``write_masks`` stored in ``folder``, once they are these pairs' masks."""
        try:
            lines = (folder / "names.txt").read_text("utf-8").splitlines()
            masks = np.load(folder / "masks.npy", mmap_mode="r")
            counts = (len(masks), len(np.load(folder / "sizes.npy", mmap_mode="r")), len(lines))
            stored = tuple(masks.shape[1:])
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read the decoded masks in {folder}: {error}. "
                             "Write them again with write_masks.") from None
        if not all(re.fullmatch(r"[0-9a-f]{8} .+", line) for line in lines):
            raise ValueError(f"{folder / 'names.txt'} has no CRC-32 before each name: an older write_masks "
                             "wrote it. Write them again with write_masks.")
        crcs, names = [line[:8] for line in lines], [line[9:] for line in lines]  # "crc name" per line
        if len(set(counts)) > 1:
            raise ValueError(f"{folder} holds {counts[0]} masks, {counts[1]} sizes and {counts[2]} names: "
                             "it is incomplete or mixed. Write them again with write_masks.")
        ours = [Path(mask).name for mask in self.masks]
        if names != ours:
            where = next((i for i, pair in enumerate(zip(names, ours)) if pair[0] != pair[1]),
                         min(len(names), len(ours)))
            raise ValueError(f"{folder} holds the masks of other files: {len(names)} masks for {len(ours)} "
                             f"pairs, first difference at pair {where}. Write them again with write_masks "
                             "for these pairs, in this order.")
        if mask_size is not None and tuple(mask_size) != stored:
            raise ValueError(f"The masks in {folder} are {stored} (HxW), not mask_size {tuple(mask_size)}: "
                             "write them again at that size, or leave mask_size out.")
        changed = next((mask for mask, crc in zip(self.masks, crcs) if mask_crc(Path(mask)) != crc), None)
        if changed is not None:
            raise ValueError(f"{changed} has changed since write_masks stored it in {folder}: write them "
                             "again with write_masks.")
        # write_masks checked them against its own classes: these may be fewer, or have no ignore_index
        check_mask_array(masks, folder / "masks.npy", self.num_classes, self.ignore_index)
        return stored

    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": None}  # a worker maps the file itself

    def __len__(self) -> int:
        return len(self.images)

    def _mask(self, index: int, mask_path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """The mask, at ``mask_size`` when given, and its own size: decoded now, or read as decoded."""
        if self.decoded is None:
            mask, size = read_mask_with_size(mask_path, self.num_classes, self.ignore_index, torch.uint8,
                                             self.mask_size)
            return mask.as_subclass(torch.Tensor), size
        if self.arrays is None:
            self.arrays = (np.load(Path(self.decoded) / "masks.npy", mmap_mode="r"),
                           np.load(Path(self.decoded) / "sizes.npy"))
        masks, sizes = self.arrays
        return torch.from_numpy(np.array(masks[index])), (int(sizes[index][0]), int(sizes[index][1]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask_path = str(self.images[index]), Path(self.masks[index])
        data = file_bytes(Path(image), "Image")
        if not data.startswith(b"\xff\xd8"):
            raise ValueError(f"{image} is not a JPEG file (it does not start with FF D8); "
                             "convert it to JPEG, or load it with SegmentationDataset instead.")
        try:
            with open_image(data, image) as file:  # the header: size and metadata
                check_pixels(file, image, "image")
                upright, orientation = (file.height, file.width), exif_orientation(file, image)
                written_in = orientation_metadata(file)  # torchcodec reads EXIF alone
        except Image.DecompressionBombError as error:  # over twice MAX_IMAGE_PIXELS: Pillow refuses it
            raise ValueError(f"Cannot read image {image}: {error} {TOO_LARGE}") from None
        except (OSError, SyntaxError) as error:
            raise ValueError(f"Cannot read image {image}: {error}. The file is damaged or not an image: "
                             "export it again, or remove it and its mask.") from None
        if orientation in UPRIGHT and written_in == "XMP":
            raise ValueError(f"Image {image} is turned upright by its XMP metadata (orientation {orientation}"
                             "), which torchcodec does not read: it would decode the photo as stored, "
                             "not as its mask was drawn. Save it upright (python -m helpers.doctor lists "
                             "every turned file and its turn), or read it with SegmentationDataset.")
        if orientation in (5, 6, 7, 8):  # a quarter turn: upright, height and width swap
            upright = upright[::-1]
        mask, mask_size = self._mask(index, mask_path)
        check_same_size(upright, mask_size, Path(image), mask_path)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), mask


class EncodedBatch(NamedTuple):
    """A batch as ``encoded_collate`` packs it: four tensors, however many samples. A DataLoader passes
    each tensor between processes on its own (in shared memory; on Linux with a file descriptor each), so
    a batch held as one small tensor per sample is slow for the main process to receive."""

    jpegs: torch.Tensor  # every image's JPEG bytes, end to end (1-D uint8)
    lengths: torch.Tensor  # [B]: each image's number of bytes
    masks: torch.Tensor  # every mask's pixels, end to end (1-D uint8)
    sizes: torch.Tensor  # [B, 2]: each mask's (height, width)

    def encoded(self) -> list[torch.Tensor]:
        """Each image's bytes, as views of ``jpegs`` (no copy), for ``decode_jpegs``."""
        return list(self.jpegs.split(self.lengths.tolist()))

    def masks_to(self, device: torch.device) -> list[torch.Tensor]:
        """Each mask as [H, W] on ``device``, copied there in one piece (without waiting, when pinned)."""
        flat = self.masks.to(device, non_blocking=True)
        return [mask.view(height, width) for mask, (height, width)
                in zip(flat.split(self.sizes.prod(1).tolist()), self.sizes.tolist(), strict=True)]


def encoded_collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> EncodedBatch:
    """Pack ``EncodedPairs`` samples into one ``EncodedBatch``: the JPEG bytes end to end, the masks end
    to end, and the lengths and sizes to take them apart again. Masks may differ in size."""
    images, masks = [image for image, _ in samples], [mask for _, mask in samples]
    return EncodedBatch(torch.cat(images), torch.tensor([len(image) for image in images]),
                        torch.cat([mask.flatten() for mask in masks]),
                        torch.tensor([tuple(mask.shape) for mask in masks]).view(-1, 2))
