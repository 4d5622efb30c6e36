"""The GPU paths of notebooks 06 and 07 on an NVIDIA GPU: the same batches as on the CPU, made without
making the program wait for the GPU, reused pinned buffers never overwritten too early, JPEGs decoded by
nvJPEG into memory that queued GPU work just released still the images (pytorch/vision#9606), and 07's
launch training on nccl.
Skipped without a GPU; tools/gpu_run.sh runs them first where there is one."""

import gc

import numpy as np
import pytest
import torch
from test_datasets import save_turned_by_exif

from helpers.datasets import InMemoryDataset, SegmentationDataset, pair_files
from helpers.device_batches import DeviceBatches, augment_batch
from helpers.formats import MemmapDataset, PageLockRefused, PinnedMemmapBatches, host_mapped, write_memmap
from helpers.paths import data_dir
from helpers.training import to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHAPES = data_dir("shapes")


def busy(tensor: torch.Tensor | None = None, cycles: int = 20_000_000) -> None:
    """Queue about 10 ms of GPU time (then a write of ``tensor``), and return at once: the GPU falls
    behind the program by that much (many tiny kernels would not: the CPU launches them about as fast as
    the GPU runs them)."""
    torch.cuda._sleep(cycles)
    if tensor is not None:
        tensor.fill_(255)


@pytest.mark.parametrize("scale", [None, (0.3, 1.0)])  # pixel for pixel, and bilinear
def test_device_batches_on_the_gpu_are_the_cpu_batches_made_without_waiting_for_it(scale):
    data = InMemoryDataset(SegmentationDataset(SHAPES, split="val"))
    options = {"size": 96, "batch_size": 16, "scale": scale, "vflip_prob": 0.5, "quarter_turns": True}
    on_cpu = list(DeviceBatches(data, CPU, **options).epoch(torch.Generator().manual_seed(0)))
    on_gpu = DeviceBatches(data, CUDA, **options).epoch(torch.Generator().manual_seed(0))
    torch.cuda.set_sync_debug_mode("error")  # a hidden wait for the GPU (a blocking copy) raises
    try:
        on_gpu = list(on_gpu)
        to_device(*on_gpu[0], CUDA)  # normalised on the GPU, without waiting for it either
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (images, masks), (gpu_images, gpu_masks) in zip(on_cpu, on_gpu, strict=True):
        assert gpu_images.device.type == CUDA.type and gpu_images.dtype == torch.uint8
        assert (gpu_images.cpu().int() - images.int()).abs().max() <= 1  # float rounding, at most
        assert gpu_masks.cpu().ne(masks).float().mean() < 1e-3  # nearest: a point exactly between two


def test_pinned_memmap_batches_are_the_cpu_batches_while_the_gpu_lags_behind(tmp_path):
    write_memmap(SegmentationDataset(SHAPES, split="val"), tmp_path, 64)
    memmap = MemmapDataset(tmp_path)
    on_cpu = list(PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(0)))
    on_gpu = []
    for batch in PinnedMemmapBatches(memmap, 8, CUDA, torch.Generator().manual_seed(0)):
        on_gpu.append(batch)  # nothing read back yet: a buffer overwritten before its copy would show
        busy()  # the copy of the next batch queues behind this
    for cpu_batch, gpu_batch in zip(on_cpu, on_gpu, strict=True):  # two reused buffers, eight batches
        assert all(torch.equal(gpu.cpu(), cpu) for gpu, cpu in zip(gpu_batch, cpu_batch, strict=True))


def test_jpegs_decoded_by_the_gpu_into_just_released_memory_are_the_images_and_augment_alike():
    pytest.importorskip("torchcodec")
    from helpers.gpu_decode import EncodedPairs, decode_jpegs, encoded_collate

    pairs = EncodedPairs(pair_files(SHAPES / "images", SHAPES / "masks")[:32])
    batch = encoded_collate([pairs[index] for index in range(len(pairs))])
    encoded, masks = batch.encoded(), batch.masks_to(CUDA)
    expected = decode_jpegs(encoded, CPU)
    for _ in range(5):
        released = torch.zeros(expected[0].shape, dtype=torch.uint8, device=CUDA)
        busy(released)  # still being written when it is freed ...
        del released  # ... and the next image of this size gets its memory
        decoded = decode_jpegs(encoded, CUDA)
        for image, reference in zip(decoded, expected, strict=True):
            assert image.device.type == CUDA.type and image.shape == reference.shape
            assert (image.cpu().float() - reference.float()).abs().mean() < 2  # nvJPEG, not libjpeg
    def augment(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_batch(images, [mask.to(images[0].device) for mask in masks], 64,
                             torch.Generator().manual_seed(0), hflip_prob=0.5, quarter_turns=True)

    on_cpu = augment(expected)
    torch.cuda.set_sync_debug_mode("error")  # augmenting the decoded batch waits for nothing either
    try:
        on_gpu = augment(decoded)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(on_gpu[1].cpu(), on_cpu[1])  # the masks: the same draws, the same pixels
    assert (on_gpu[0].cpu().float() - on_cpu[0].float()).abs().mean() < 2


def test_a_photo_turned_by_exif_is_turned_upright_by_the_gpu_decoder_as_on_the_cpu(tmp_path):
    pytest.importorskip("torchcodec")
    from PIL import Image

    from helpers.gpu_decode import EncodedPairs, decode_jpegs

    image, mask = pair_files(SHAPES / "images", SHAPES / "masks")[0]
    turned = tmp_path / "turned.jpg"
    save_turned_by_exif(image, turned)
    encoded, _ = EncodedPairs([(turned, mask)])[0]
    on_cpu, on_gpu = (decode_jpegs([encoded], device)[0] for device in (CPU, CUDA))
    assert on_gpu.shape == on_cpu.shape == (3, *Image.open(image).size[::-1])
    assert (on_gpu.cpu().float() - on_cpu.float()).abs().mean() < 2  # nvJPEG, not libjpeg


@pytest.mark.parametrize("lagging", ["thread", "main"])
def test_batches_made_ahead_by_a_thread_reach_the_main_stream_whole_and_are_not_overwritten(lagging):
    """The thread's stream lagging: the main stream must wait for each batch on the GPU. The main stream
    lagging: a batch's memory, freed in the loop while the main stream still reads it, must not be
    handed to the thread's next batch (the fill of a later batch would show in the copy). Neither waits
    on the CPU: a hidden wait for the GPU raises in sync-debug mode "error"."""
    from helpers.device import prefetch

    cycles = 20_000_000  # about 10 ms of GPU time per batch

    def made():  # runs in the thread, on its stream
        for number in range(8):
            if lagging == "thread":
                torch.cuda._sleep(cycles)
            yield (torch.full((1 << 20,), number + 1, dtype=torch.int32, device=CUDA),)  # 0: unwritten

    copies = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (batch,) in prefetch(made(), CUDA, depth=1):
            if lagging == "main":
                torch.cuda._sleep(cycles)
            copies.append(batch.clone())  # queued on the main stream
            del batch  # freed here, while the main stream may still be reading it
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for number, copy in enumerate(copies):
        assert torch.equal(copy, torch.full_like(copy, number + 1)), number


def test_deterministic_algorithms_refuse_the_segmentation_loss_on_cuda():
    """06: torch.use_deterministic_algorithms(True) refuses cross-entropy over [B, C, H, W] on CUDA (its
    NLLLoss adds in a varying order), rather than computing it differently from run to run."""
    scores = torch.zeros(2, 4, 8, 8, device=CUDA)
    target = torch.zeros(2, 8, 8, dtype=torch.long, device=CUDA)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="nll_loss2d.*deterministic"):
            torch.nn.functional.cross_entropy(scores, target)
            torch.cuda.synchronize()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_launch_from_python_trains_its_rank_on_the_gpu_with_nccl(tmp_path):
    """07's launch without --cpu, one process for one GPU: its rank is spawned (torchrun's agent has asked
    CUDA about GPUs before starting it, so a forked rank could not use CUDA) and trains there on nccl.
    Never run on a GPU before: the launch from the kernel in 07 trains on the CPU."""
    from helpers.ddp_train import launch

    output = launch(["--data", str(SHAPES), "--out", str(tmp_path), "--epochs", "1", "--steps", "2",
                     "--workers", "0"], processes=1)
    assert "rank 0 of 1 (nccl, cuda:0)" in output


# Last: the GPU reading RAM mapped for it has not yet run on a GPU, and a fault there would fail every
# test after it in this process.
def test_memmap_gathered_by_the_gpu_from_mapped_ram_is_the_cpu_batches_and_stays_in_ram(tmp_path):
    write_memmap(SegmentationDataset(SHAPES, split="val"), tmp_path, 64)
    memmap = MemmapDataset(tmp_path)
    gc.collect()  # CUDA tensors of earlier tests, left in reference cycles, freed before counting
    allocated = torch.cuda.memory_allocated()
    try:
        images, masks = host_mapped((np.load(tmp_path / "images.npy"), np.load(tmp_path / "masks.npy")),
                                    CUDA, tmp_path)
    except PageLockRefused as error:  # a machine whose driver refuses (the benchmark: "not measured")
        pytest.skip(str(error))
    assert images.is_cuda and images.untyped_storage().nbytes() == 64 * 3 * 64 * 64
    assert torch.cuda.memory_allocated() == allocated  # nothing copied to the GPU: the bytes stay in RAM
    assert torch.equal(images[[5, 2]].view(torch.uint8).view(2, 3, 64, 64).cpu(),
                       torch.from_numpy(np.load(tmp_path / "images.npy")[[5, 2]]))
    on_cpu = list(PinnedMemmapBatches(memmap, 8, CPU, torch.Generator().manual_seed(0)))
    batches = PinnedMemmapBatches(memmap, 8, CUDA, torch.Generator().manual_seed(0), gather_on_device=True)
    for cpu_batch, gpu_batch in zip(on_cpu, batches, strict=True):
        assert all(torch.equal(gpu.cpu(), cpu) for gpu, cpu in zip(gpu_batch, cpu_batch, strict=True))
    torch.cuda.set_sync_debug_mode("error")  # the next epoch: nothing waits for the GPU
    try:
        second = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(second) == len(on_cpu) and second[0][0].is_cuda
    del batches, second  # the RAM is released once the GPU is done with it
