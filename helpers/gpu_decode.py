"""JPEGs decoded by the GPU's nvJPEG a whole batch at a time, through torchcodec (06_gpu_training, and
``python -m helpers.bench --device cuda``).

torchvision.io's decoders are deprecated since torchvision 0.29 in favour of torchcodec, whose
``decode_jpeg`` decodes a list of encoded images in one nvJPEG call on CUDA, and with libjpeg-turbo on the
CPU. torchcodec is an optional install (``requirements-gpu.txt``); only this module imports it, and only
when it decodes. Workers read the compressed bytes and decode the PNG masks on the CPU, and pack each
batch into a few tensors (``encoded_collate``); the main process decodes each batch of JPEGs on the GPU
(CUDA cannot start in forked workers).
"""

from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from helpers.datasets import UPRIGHT, InMemoryFile, check_same_size, exif_orientation, read_mask_with_size
from helpers.masks import CLASSES

INSTALL = "pip install torchcodec==0.17.0 (requirements-gpu.txt pins it; it works with torch 2.11 or newer)"


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode 1-D uint8 tensors of JPEG bytes into [3, H, W] uint8 RGB images on ``device``, in one call.

    On CUDA it first waits on the host for the work already queued on the current stream: nvJPEG's
    batched hardware decoder has been seen writing into memory that queued kernels were still reading
    (on H100; pytorch/vision#9606, meta-pytorch/torchcodec#1634), and only a host wait prevents it.
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError as error:
        raise ImportError(f"Decoding JPEGs with torchcodec needs it installed: {INSTALL}") from error
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return decode_jpeg(list(encoded), mode="RGB", device=device)


class EncodedPairs(Dataset):
    """Pairs of (JPEG bytes as a 1-D uint8 tensor, mask decoded on the CPU as uint8 [H, W]) for
    ``decode_jpegs``: the loader's workers read files and decode the masks, never the JPEGs. ``mask_size``
    (height, width) resizes masks by nearest neighbour. Each JPEG's header is read (no pixels): its size
    must be its mask's, and a photo stored turned (EXIF or XMP orientation) is refused, since nvJPEG gives
    the pixels as stored, not upright as ``SegmentationDataset`` reads them."""

    def __init__(self, pairs: list[tuple[Path, Path]], mask_size: tuple[int, int] | None = None):
        self.images = [str(image) for image, _ in pairs]
        self.masks = [str(mask) for _, mask in pairs]
        self.mask_size = mask_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask_path = self.images[index], Path(self.masks[index])
        data = Path(image).read_bytes()
        if not data.startswith(b"\xff\xd8"):
            raise ValueError(f"{image} is not a JPEG file (it does not start with FF D8); "
                             "convert it to JPEG, or load it with SegmentationDataset instead.")
        try:
            with Image.open(InMemoryFile(data, image)) as file:  # the header: size and metadata
                stored, orientation = (file.height, file.width), exif_orientation(file, image)
        except (OSError, SyntaxError) as error:
            raise ValueError(f"Cannot read image {image}: {error}. The file is damaged or not an image: "
                             "export it again, or remove it and its mask.") from None
        if orientation in UPRIGHT:
            raise ValueError(f"Image {image} is stored turned (orientation {orientation} in its metadata), "
                             "and the GPU decoder gives its pixels as stored, not upright. Save it upright "
                             "(python -m helpers.doctor lists every such file and the turn), or read the "
                             "data set with SegmentationDataset, which turns it.")
        mask, mask_size = read_mask_with_size(mask_path, len(CLASSES), None, torch.uint8, self.mask_size)
        check_same_size(stored, mask_size, Path(image), mask_path)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), mask.as_subclass(torch.Tensor)


class EncodedBatch(NamedTuple):
    """A batch as ``encoded_collate`` packs it: four tensors, however many samples. A DataLoader passes
    each tensor between processes on its own (in shared memory, with a file descriptor each), so a batch
    held as 32 small tensors costs the main process more than decoding it on the GPU."""

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
