"""The GPU paths of notebook 06 on an NVIDIA GPU: the same batches as on the CPU, and JPEGs decoded by
nvJPEG right after other GPU work (pytorch/vision#9606) still the images. Skipped without a GPU;
tools/gpu_run.sh runs them first where there is one."""

import pytest
import torch

from helpers.datasets import InMemoryDataset, SegmentationDataset, pair_files
from helpers.device_batches import DeviceBatches
from helpers.formats import MemmapDataset, PinnedMemmapBatches, write_memmap
from helpers.paths import data_dir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHAPES = data_dir("shapes")


@pytest.mark.parametrize("scale", [None, (0.3, 1.0)])  # pixel for pixel, and bilinear
def test_device_batches_on_the_gpu_are_the_batches_made_on_the_cpu(scale):
    data = InMemoryDataset(SegmentationDataset(SHAPES, split="val"))
    options = {"size": 96, "batch_size": 16, "scale": scale, "vflip_prob": 0.5, "quarter_turns": True}
    on_cpu, on_gpu = (DeviceBatches(data, device, **options).epoch(torch.Generator().manual_seed(0))
                      for device in (CPU, CUDA))
    for (images, masks), (gpu_images, gpu_masks) in zip(on_cpu, on_gpu, strict=True):
        assert gpu_images.device.type == CUDA.type and gpu_images.dtype == torch.uint8
        assert (gpu_images.cpu().int() - images.int()).abs().max() <= 1  # float rounding, at most
        assert gpu_masks.cpu().ne(masks).float().mean() < 1e-3  # nearest: a point exactly between two


def test_pinned_memmap_batches_on_the_gpu_are_the_batches_made_on_the_cpu(tmp_path):
    write_memmap(SegmentationDataset(SHAPES, split="val"), tmp_path, 64)
    memmap = MemmapDataset(tmp_path)
    on_cpu, on_gpu = (PinnedMemmapBatches(memmap, 8, device, torch.Generator().manual_seed(0))
                      for device in (CPU, CUDA))
    for cpu_batch, gpu_batch in zip(on_cpu, on_gpu, strict=True):  # two reused buffers, eight batches
        assert all(torch.equal(gpu.cpu(), cpu) for gpu, cpu in zip(gpu_batch, cpu_batch, strict=True))


def test_jpegs_decoded_by_the_gpu_after_other_gpu_work_are_the_images():
    pytest.importorskip("torchcodec")
    from helpers.gpu_decode import EncodedPairs, decode_jpegs, encoded_collate

    pairs = EncodedPairs(pair_files(SHAPES / "images", SHAPES / "masks")[:32])
    encoded, _ = encoded_collate([pairs[index] for index in range(len(pairs))])
    expected = decode_jpegs(encoded, CPU)
    busy = torch.randn(4096, 4096, device=CUDA)
    for _ in range(5):
        busy = busy @ busy / 64  # GPU work still queued when the decoding starts
        decoded = decode_jpegs(encoded, CUDA)
        for image, reference in zip(decoded, expected, strict=True):
            assert image.device.type == CUDA.type and image.shape == reference.shape
            assert (image.cpu().float() - reference.float()).abs().mean() < 2  # nvJPEG, not libjpeg
