"""Benchmark: images per second of the naive per-sample pipeline against the recommended ones.

    python -m helpers.bench [--count 2000] [--side 256] [--size 224] [--batch-size 32] [--workers 0 1 2]
                            [--epochs 3] [--formats] [--device cpu|cuda] [--json PATH] [--plot PATH]

Generates (once, then reuses) a dataset of JPEG images with PNG masks, then, per pipeline and worker
count, loads one epoch to start the workers and warm the caches and times ``--epochs`` more, keeping
the best. Every pipeline delivers what a model needs, on ``--device``: float ``[B, 3, size, size]``
normalised images and int64 ``[B, size, size]`` masks, with one random horizontal flip per sample
applied to image and mask alike. ``--formats`` adds the pre-decoded formats of notebook 05
(memory-mapped arrays, HDF5) and tar shards, with their disk size and time to write.

The same run first measures two ceilings on all cores, and gives each pipeline's share of its own: *decode
only* (the JPEG images and PNG masks decoded by the pipeline's decoder, nothing else: no pipeline that
reads these files can beat it) and *memory only* (the bytes a pre-decoded pipeline must move per image,
read as uint8 and written as float32 image and int64 mask, at the measured memory-copy speed: no
pre-decoded pipeline can beat it). ``--json PATH`` writes every figure; ``--plot PATH`` saves a chart.

With ``--device cuda`` the memory map at 0 workers gathers into reused pinned buffers and flips on the
GPU; *memmap, gpu gathers* reads the map once into RAM mapped for the GPU, which gathers each batch
itself (the same at every worker count: it has none), held to the *link only* ceiling (uint8 batches at
the measured speed to the GPU); and, where torchcodec can decode (requirements-gpu.txt), a *gpu decode*
pipeline decodes the JPEGs on the GPU, measured against a third ceiling: *gpu decode only*. Two variants
follow it: *gpu decode, masks stored*, whose workers read the masks decoded once (``write_masks``)
instead of decoding PNGs, and *gpu decode, read ahead*, the same with each batch received from the
workers by a background thread while the main process decodes the last (``prefetch``). CPU runs are
unchanged.
Taught in 04_dataloader_batching, 05_large_datasets and 06_gpu_training.
"""

import argparse
import gc
import io
import json
import multiprocessing
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
import torchvision.transforms as v1
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from helpers.batching import flip_batch, flip_collate
from helpers.datasets import SegmentationDataset, decode_image, pair_files, read_mask
from helpers.device import prefetch, upload
from helpers.env import usable_cores
from helpers.formats import (
    HDF5Dataset,
    MemmapDataset,
    PageLockRefused,
    PinnedMemmapBatches,
    ShardStream,
    disk_megabytes,
    write_hdf5,
    write_memmap,
    write_shards,
)
from helpers.gpu_decode import (
    EncodedBatch,
    EncodedPairs,
    decode_jpegs,
    encoded_collate,
    why_unavailable,
    write_masks,
)
from helpers.progress import progress_bar
from helpers.scenes import write_dataset
from helpers.training import to_device
from helpers.transforms import SHAPES_MEAN, SHAPES_STD

Batch = tuple[torch.Tensor, torch.Tensor]
GPU_STORED = "gpu decode, masks stored"  # JPEGs decoded by the GPU, masks read decoded (write_masks)
GPU_AHEAD = "gpu decode, read ahead"  # the same, each batch received by a thread while the last decodes
GPU_GATHERS = "memmap, gpu gathers"  # the map in RAM mapped for the GPU, which gathers each batch itself
PRE_DECODED = ("memmap", "hdf5", GPU_GATHERS)  # pipelines bounded by memory traffic; the others decode
CPU = torch.device("cpu")
# shards the format benchmark writes, sizes one pair apart at most: 1, 2, 3, 4, 6, 8, 12, 16 or 24 workers
# each get as many, so no worker reads a shard more than the others while they wait for it at the end of an
# epoch (a worker's samples then differ from another's by at most one per shard)
SHARDS = 48


def uneven_shards_note(workers: list[int]) -> str | None:
    """What to say when some worker counts do not divide SHARDS (05): their shards pipeline waits at the
    end of every epoch for the workers that got one shard more, so it measures that wait too."""
    uneven = [count for count in workers if count and SHARDS % count]
    if not uneven:
        return None
    even = [count for count in range(1, max(workers) + 1) if SHARDS % count == 0]
    return (f"note: {SHARDS} shards do not divide among {', '.join(map(str, uneven))} workers, so the "
            "shards pipeline also measures workers waiting for the one with a shard more; for an even "
            f"split pass --workers {' '.join(map(str, [0, *even]))}")


def worker_counts(cores: int) -> list[int]:
    """The worker counts worth timing on ``cores`` cores: none, one, the powers of two below ``cores``, and
    ``cores`` (04_dataloader_batching): a few on any machine, where every count from 0 would be dozens of
    runs of several epochs each on a many-core one."""
    return sorted({0, cores} | {2**power for power in range(cores.bit_length()) if 2**power < cores})


class Pipeline(NamedTuple):
    """How to load: a loader for a worker count, and what the main process does to each batch."""

    loader: Callable[[int], Iterable[Batch]]  # a DataLoader, or one read ahead by a thread
    finish: Callable[[Batch], Batch]


def milliseconds(call: Callable[[], object], repeats: int = 10, rounds: int = 3,
                 device: torch.device | None = None) -> float:
    """Milliseconds per ``call()``: the mean over ``repeats`` calls, best of ``rounds`` (03 to 06).

    The best round is the least disturbed by whatever else the machine was doing. Work queued on a GPU
    (CUDA or MPS) runs after the call that queued it returns: name the ``device``, and each round starts
    once the GPU has done what was queued before it, and ends once it has done what the round queued."""

    def wait_for_device() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device is not None and device.type == "mps":
            torch.mps.synchronize()

    times = []
    for _ in range(rounds):
        wait_for_device()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        wait_for_device()
        times.append((time.perf_counter() - start) / repeats * 1000)
    return min(times)


def bench_data(count: int, side: int, root: Path | None = None) -> Path:
    """Return a folder of ``count`` generated pairs of side x side pixels, generating it if missing."""
    root = root or Path(tempfile.gettempdir()) / f"pixels_to_batches_bench_{count}x{side}"
    if len(list((root / "masks").glob("*.png"))) != count:
        print(f"generating {count} pairs of {side}x{side} px in {root} (once)...")
        write_dataset(root, count=count, val_count=0, size=(side, side))
    return root


class NaiveDataset(Dataset):
    """The per-sample pipeline of most tutorials (PIL, Resize, ToTensor, Normalize), made correct for masks.

    The baseline the benchmark measures the others against, and nothing else: float images and int64
    masks per sample, one coin flip for both.
    """

    def __init__(self, root: Path, size: int = 224):
        pairs = pair_files(Path(root) / "images", Path(root) / "masks")
        self.image_paths = np.array([str(image) for image, _ in pairs])
        self.mask_paths = np.array([str(mask) for _, mask in pairs])
        self.size = size
        self.to_tensor = v1.Compose([v1.Resize((size, size)), v1.ToTensor(),
                                     v1.Normalize(SHAPES_MEAN, SHAPES_STD)])

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.image_paths[index]).convert("RGB")
        mask = Image.open(self.mask_paths[index])
        if random.random() < 0.5:  # one coin for both, so they stay aligned
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.resize((self.size, self.size), Image.Resampling.NEAREST)
        return self.to_tensor(image), torch.from_numpy(np.array(mask)).long()


def _loader(dataset, workers: int, device: torch.device, **options) -> DataLoader:
    """A loader whose workers live across epochs, so a timed epoch does not include their start-up."""
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda", **options)


def pipelines(root: Path, size: int, batch_size: int = 32, device: torch.device = CPU
              ) -> dict[str, Pipeline]:
    """The file-decoding pipelines: naive (per-sample PIL, float) and recommended (04_dataloader_batching).

    Recommended: ``SegmentationDataset(size=...)`` decodes with libjpeg-turbo, at reduced scale when the
    JPEGs are large, and resizes in the workers; ``flip_collate`` flips whole uint8 batches there;
    ``to_device`` normalises each batch on the device.
    """
    naive = NaiveDataset(root, size)
    recommended = SegmentationDataset(root, size=(size, size), mask_dtype=torch.uint8)
    shuffled = dict(batch_size=batch_size, shuffle=True, drop_last=True)
    return {"naive": Pipeline(lambda w: _loader(naive, w, device, **shuffled),
                              lambda b: to_device(*b, device)),
            "recommended": Pipeline(lambda w: _loader(recommended, w, device, collate_fn=flip_collate,
                                                      **shuffled),
                                    lambda b: to_device(*b, device))}


def format_pipelines(root: Path, size: int, batch_size: int, work: Path,
                     device: torch.device = CPU) -> dict[str, Pipeline]:
    """Write the data once in each format (printing time and disk size); return their pipelines (05)."""
    source = SegmentationDataset(root)
    writers = {"memmap": (work / "memmap", lambda path: write_memmap(source, path, size)),
               "hdf5": (work / "data.h5", lambda path: write_hdf5(source, path, size)),
               "shards": (work / "shards", lambda path: write_shards(source, path, shards=SHARDS))}
    for name, (path, write) in writers.items():
        start = time.perf_counter()
        write(path)
        seconds = time.perf_counter() - start
        print(f"wrote {name:>6}: {seconds:5.1f} s, {disk_megabytes(path):6.1f} MiB on disk")
    memmap, hdf5 = MemmapDataset(work / "memmap"), HDF5Dataset(work / "data.h5")
    streams = ShardStream(sorted((work / "shards").glob("*.tar")), shuffle=256, size=(size, size),
                          mask_dtype=torch.uint8)
    in_batches = BatchSampler(RandomSampler(memmap), batch_size, drop_last=True)  # one read per batch

    def flip_to_device(batch: Batch) -> Batch:
        return to_device(*flip_batch(*batch), device)

    def memmap_loader(workers: int):
        if workers == 0 and device.type == "cuda":  # gathered into reused pinned buffers, flipped there
            return PinnedMemmapBatches(memmap, batch_size, device)
        return _loader(memmap, workers, device, sampler=in_batches, batch_size=None)

    chosen = {
        "memmap": Pipeline(memmap_loader,
                           lambda b: to_device(*b, device) if b[0].is_cuda else flip_to_device(b)),
        "hdf5": Pipeline(lambda w: _loader(hdf5, w, device, sampler=in_batches, batch_size=None),
                         flip_to_device),
        "shards": Pipeline(lambda w: _loader(streams, w, device, batch_size=batch_size,
                                             collate_fn=flip_collate),
                           lambda b: to_device(*b, device)),
    }
    if device.type == "cuda":  # the map read into RAM mapped for the GPU, which gathers (no workers)
        gathered = PinnedMemmapBatches(memmap, batch_size, device, gather_on_device=True)
        chosen[GPU_GATHERS] = Pipeline(lambda workers: gathered, lambda b: to_device(*b, device))
    return chosen


class ReadAhead:
    """A loader whose batches a background thread receives from the workers (``prefetch``), a pass per
    epoch, while the main process decodes the batch before."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return prefetch(self.loader, self.device)

    def __len__(self) -> int:
        return len(self.loader)


def gpu_decode_pipeline(root: Path, size: int, batch_size: int, device: torch.device,
                        masks: Path | None = None, ahead: bool = False) -> Pipeline:
    """JPEGs decoded by the GPU (nvJPEG through torchcodec; 06's way (c)): workers read the bytes and
    decode and resize the PNG masks, or read them decoded from ``masks`` (a folder ``write_masks`` wrote);
    the main process decodes each batch of JPEGs on ``device``, resizes and flips it there. ``ahead``: a
    background thread receives each batch from the workers (``ReadAhead``), so that the main process
    only decodes. Runs on the CPU too (torchcodec's CPU decoder), which the tests use."""
    pairs = pair_files(Path(root) / "images", Path(root) / "masks")
    dataset = EncodedPairs(pairs, mask_size=None if masks else (size, size), masks=masks)

    def finish(batch: EncodedBatch) -> Batch:
        images = torch.stack(decode_jpegs(batch.encoded(), device))
        if images.shape[-2:] != (size, size):  # bilinear with antialias, as the recommended pipeline
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                     antialias=True).round_().clamp_(0, 255).byte()
        masks = batch.masks.to(device, non_blocking=True).view(-1, size, size)  # all of mask_size
        flip = upload(torch.rand(len(images)) < 0.5, device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return to_device(images, torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks), device)

    def loader(workers: int) -> DataLoader | ReadAhead:
        batches = _loader(dataset, workers, device, batch_size=batch_size, shuffle=True, drop_last=True,
                          collate_fn=encoded_collate)
        return ReadAhead(batches, device) if ahead else batches

    return Pipeline(loader, finish)


def gpu_decode_pipelines(root: Path, size: int, batch_size: int, device: torch.device,
                         work: Path) -> dict[str, Pipeline]:
    """*gpu decode*, *gpu decode, masks stored* and *gpu decode, read ahead*, the masks stored decoded in
    ``work`` (``write_masks``) first: what ``--device cuda`` adds where torchcodec can decode."""
    start = time.perf_counter()  # the masks decoded once, for the workers to read, not decode
    write_masks(pair_files(root / "images", root / "masks"), work / "masks", (size, size))
    print(f"wrote  masks: {time.perf_counter() - start:5.1f} s, "
          f"{disk_megabytes(work / 'masks'):6.1f} MiB on disk")
    return {"gpu decode": gpu_decode_pipeline(root, size, batch_size, device),
            GPU_STORED: gpu_decode_pipeline(root, size, batch_size, device, work / "masks"),
            GPU_AHEAD: gpu_decode_pipeline(root, size, batch_size, device, work / "masks", ahead=True)}


def gpu_decode_ceiling(root: Path, device: torch.device, batch_size: int = 32, rounds: int = 3) -> float:
    """JPEGs per second that ``decode_jpegs`` reaches on ``device`` in batches, the bytes already in memory
    and nothing else done: no GPU-decoding pipeline beats it (the masks are decoded by the CPU)."""
    encoded = [EncodedPairs([pair])[0][0] for pair in pair_files(Path(root) / "images", Path(root) / "masks")]
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]
    decode_jpegs(batches[0], device)  # warm-up: the decoder's first call sets it up
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            decode_jpegs(batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, len(encoded) / (time.perf_counter() - start))
    return best


def images_per_second(pipeline: Pipeline, workers: int, label: str = "", progress: bool = True,
                      epochs: int = 1) -> float:
    """Images per second over a whole epoch (the best of ``epochs``), after a first epoch that starts the
    workers and warms the caches. The best, not the mean: on a shared machine, other work only slows down.

    While workers decode, the main process keeps only the cores they leave (at least one) for its torch
    threads, which convert the batches: idle threads would otherwise spin on the cores the workers need
    (on 2 cores, two threads cost the recommended pipeline a fifth to a quarter of its speed).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - workers))
    try:
        loader = pipeline.loader(workers)
        for batch in loader:  # warm-up epoch: not timed
            image, _ = pipeline.finish(batch)
        if image.is_cuda:
            torch.cuda.synchronize()  # the warm-up's last work is not counted in the first timed epoch
        speeds = []
        for _ in range(epochs):
            start, images = time.perf_counter(), 0
            for batch in progress_bar(loader, desc=f"{label:>11}, {workers} workers", leave=False,
                                      disable=not progress):
                image, mask = pipeline.finish(batch)
                assert image.dtype == torch.float32 and mask.dtype == torch.int64
                images += len(image)
            if image.is_cuda:
                torch.cuda.synchronize()  # the last batch's copy and conversion are done
            speeds.append(images / (time.perf_counter() - start))
        return max(speeds)
    finally:
        torch.set_num_threads(threads)


def _decode_pair(paths: tuple[str, str, int]) -> int:
    """Decode one pair as the recommended pipeline does (the JPEG at the reduced scale ``size`` allows, the
    mask checked and sampled to ``size``), and nothing else."""
    size = (paths[2], paths[2])
    image, _ = decode_image(Path(paths[0]), size)
    return image.numel() + read_mask(Path(paths[1]), dtype=torch.uint8, size=size).numel()


def _ready(barrier, threads: int) -> None:
    """Initialise a ceiling process: one torch thread, as a DataLoader worker has; wait for the others."""
    torch.set_num_threads(threads)
    barrier.wait()


def _decode_here(pairs: list[tuple[str, str, int]]) -> float:
    """Pairs per second decoded by this process on one torch thread, as one DataLoader worker decodes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _decode_pair(pairs[0])  # warm the caches, as the pool does
        start = time.perf_counter()
        for pair in pairs:
            _decode_pair(pair)
        return len(pairs) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def decode_ceiling(root: Path, processes: int, size: int) -> float:
    """Pairs per second that decoding alone reaches in ``processes`` processes: no file pipeline beats it."""
    dataset = SegmentationDataset(root)
    paths = zip(dataset.image_paths.tolist(), dataset.mask_paths.tolist())
    pairs = [(image, mask, size) for image, mask in paths]
    pairs *= -(-1000 * processes // len(pairs))  # about 1,000 pairs per process: long enough to time
    if processes == 1:  # one core (Binder): decode here, on one thread, rather than start a process
        return _decode_here(pairs)
    # spawned, single-threaded processes, as DataLoader workers are: a forked copy of a process whose
    # torch thread pool is running can hang in its first torch call
    context = multiprocessing.get_context("spawn")
    if sys.platform == "win32":  # Windows waits on at most 61 processes of a pool
        processes = min(processes, 61)
    barrier = context.Barrier(processes)  # the clock starts once every process has started
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_ready,
                             initargs=(barrier, 1)) as pool:
        list(pool.map(_decode_pair, pairs[:processes]))
        start = time.perf_counter()
        list(pool.map(_decode_pair, pairs, chunksize=max(1, len(pairs) // (8 * processes))))
        return len(pairs) / (time.perf_counter() - start)


def copy_bandwidth(megabytes: int = 128, repeats: int = 3) -> float:
    """Bytes per second (read plus written) of a large copy with all of torch's threads (2 x 128 MiB by
    default: far beyond any CPU cache, and small enough for Binder's memory)."""
    source = torch.ones(megabytes * 2**20, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page first
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * repeats / (time.perf_counter() - start)


def host_to_device_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of copies from pinned memory to ``device``, the fastest way a batch gets there."""
    source = torch.ones(megabytes * 2**20, dtype=torch.uint8).pin_memory()
    source.to(device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        source.to(device, non_blocking=True)
    torch.cuda.synchronize(device)
    return source.numel() * repeats / (time.perf_counter() - start)


def bytes_per_image(size: int, device: torch.device = CPU) -> int:
    """Bytes a pre-decoded pipeline moves per image in CPU memory: uint8 image and mask in, and out
    float32 image and int64 mask (on a CPU) or the same uint8 gathered into a batch (for a GPU)."""
    pixels = size * size
    return (3 + 1) * pixels + ((3 * 4 + 8) * pixels if device.type == "cpu" else (3 + 1) * pixels)


def ceilings(root: Path, size: int, processes: int, device: torch.device = CPU) -> dict[str, float]:
    """Images per second of the two ceilings, measured now, on ``processes`` cores (and the link to a GPU)."""
    bandwidth = copy_bandwidth()
    limits = {"decode only": decode_ceiling(root, processes, size),
              "memory only": bandwidth / bytes_per_image(size, device), "copy GB/s": bandwidth / 1e9}
    if device.type == "cuda":  # the uint8 batch must also cross to the GPU
        link = host_to_device_bandwidth(device)
        limits |= {"memory only": min(limits["memory only"], link / ((3 + 1) * size * size)),
                   "host to device GB/s": link / 1e9, "link only": link / ((3 + 1) * size * size)}
    return limits


def ceiling_of(name: str, limits: dict[str, float]) -> str:
    """Which ceiling a pipeline is held to: the GPU's decoder for gpu decode, the link for a batch the GPU
    gathers from RAM (the CPU copies nothing), memory for the other pre-decoded ones, else decoding."""
    if name.startswith("gpu decode"):
        return "gpu decode only"
    if name == GPU_GATHERS and "link only" in limits:
        return "link only"
    return "memory only" if name in PRE_DECODED else "decode only"


def shares(results: dict[str, dict[int, float]], limits: dict[str, float]) -> dict[str, float]:
    """Each pipeline's best speed as a share of its ceiling (``ceiling_of``)."""
    return {name: max(speeds.values()) / limits[ceiling_of(name, limits)] for name, speeds in results.items()}


def machine(device: torch.device) -> dict[str, str]:
    """What the figures were measured on, and when, for --json."""
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "platform": platform.platform(terse=True),
            "processor": platform.machine(), "cpu capability": torch.backends.cpu.get_cpu_capability(),
            "cores": str(usable_cores()), **gpu, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def plot(results: dict[str, dict[int, float]], limits: dict[str, float], path: Path) -> None:
    """Save a bar chart: each pipeline's best images per second, with both ceilings as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    figure, axes = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    axes.barh(names, [max(results[n].values()) for n in names], color="tab:blue")
    for (label, value), colour in zip(list(limits.items())[:2], ("tab:red", "tab:green")):
        axes.axvline(value, color=colour, linestyle="--", label=f"{label} ceiling")
    axes.set(xlabel="images per second (best worker count)", xscale="log", xlim=(10, None))
    axes.invert_yaxis()
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_table(results: dict[str, dict[int, float]], limits: dict[str, float], workers: list[int]) -> None:
    """The ceilings, then each pipeline per worker count with its share of its ceiling."""
    width = max(12, *(len(name) for name in results))
    print(f"{'ceiling':>{width}}{limits['decode only']:11.0f}   decode only: JPEG + PNG decoded on all cores")
    link = f", {limits['host to device GB/s']:.1f} GB/s to the GPU" if "host to device GB/s" in limits else ""
    print(f"{'':>{width}}{limits['memory only']:11.0f}   memory only: a pre-decoded pipeline's bytes at "
          f"{limits['copy GB/s']:.1f} GB/s{link}")
    if "link only" in limits:
        print(f"{'':>{width}}{limits['link only']:11.0f}   link only: uint8 batches at "
              f"{limits['host to device GB/s']:.1f} GB/s to the GPU, nothing copied on the CPU")
    if "gpu decode only" in limits:
        print(f"{'':>{width}}{limits['gpu decode only']:11.0f}   gpu decode only: JPEGs decoded by the GPU, "
              "bytes in memory")
    print(f"{'pipeline':>{width}}" + "".join(f"{w:>9} w" for w in workers) + "   (images per second)")
    for name, share in shares(results, limits).items():
        ceiling = ceiling_of(name, limits).removesuffix(" only")
        speeds = "".join(f"{results[name][w]:11.0f}" for w in workers)
        print(f"{name:>{width}}{speeds}   {share:4.0%} of the {ceiling} ceiling")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them), from ``argv`` or ``sys.argv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="image+mask pairs in the dataset")
    parser.add_argument("--side", type=int, default=256, help="side of the stored square images")
    parser.add_argument("--size", type=int, default=224, help="side of the images fed to the model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=worker_counts(usable_cores()),
                        help="worker counts to try (default here: %(default)s, from worker_counts)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement; the best counts")
    parser.add_argument("--formats", action="store_true", help="also memory-mapped arrays, HDF5, shards")
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated dataset")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="save a chart to this PNG file")
    parser.add_argument("--device", type=torch.device, default="cpu", help="where batches are delivered: "
                        "cpu or cuda (pinned memory, non_blocking copies, uint8 normalised on the GPU)")
    return parser.parse_args(argv)


def chosen_pipelines(args: argparse.Namespace, root: Path, work: Path, limits: dict[str, float]
                     ) -> dict[str, Pipeline]:
    """The pipelines the options ask for, in the table's order; adds the GPU decode ceiling to ``limits``
    when the gpu decode pipelines are among them."""
    device = args.device
    chosen = pipelines(root, args.size, args.batch_size, device)
    if args.formats:
        chosen |= format_pipelines(root, args.size, args.batch_size, work, device)
    if device.type == "cuda" and (why_not := why_unavailable()) is None:
        chosen |= gpu_decode_pipelines(root, args.size, args.batch_size, device, work)
    elif device.type == "cuda":
        print(f"no gpu decode pipeline: {why_not}")
    if "gpu decode" in chosen:
        limits["gpu decode only"] = gpu_decode_ceiling(root, device, args.batch_size)
    return chosen


def measure(chosen: dict[str, Pipeline], workers: list[int], epochs: int,
            save: Callable[[dict[str, dict[int, float]]], None]) -> dict[str, dict[int, float]]:
    """Images per second of each pipeline at each worker count, each printed and saved as it ends (a run
    cut short keeps them): the pipelines compared on a GPU first, the newest last."""
    results = {}
    first = ("gpu decode", GPU_STORED, GPU_AHEAD, "recommended")
    for name in sorted(chosen, key=lambda name: (name not in first, name == GPU_GATHERS)):
        try:
            results[name] = {w: images_per_second(chosen[name], w, label=name, epochs=epochs)
                             for w in workers}
        except (MemoryError, PageLockRefused) as error:  # the map must fit in half the RAM, and the GPU
            # must accept it page-locked (host_mapped clears the CUDA error a refusal leaves)
            if name != GPU_GATHERS:
                raise
            print(f"{name}: not measured: {error}", flush=True)
            continue
        print(f"{name}: " + ", ".join(f"{speed:,.0f} with {w}" for w, speed in results[name].items())
              + " workers (images/s)", flush=True)
        save(results)
    return {name: results[name] for name in chosen if name in results}  # the table's order


def save_json(args: argparse.Namespace, command: str, results: dict[str, dict[int, float]],
              limits: dict[str, float]) -> None:
    """--json: every figure so far, replacing the file whole (a run killed keeps the last it wrote)."""
    if not args.json:
        return
    unfinished = args.json.with_name(args.json.name + ".part")
    unfinished.write_text(json.dumps({
        "command": command, "machine": machine(args.device),
        "settings": {k: str(v) for k, v in vars(args).items()}, "ceilings": limits, "pipelines": results,
        "shares": shares(results, limits) if limits else {}}, indent=2))
    unfinished.replace(args.json)


def speedup_line(results: dict[str, dict[int, float]]) -> str:
    """The benchmark's last line: the fastest pipeline's best speed over naive's best."""
    naive = max(results["naive"].values())
    best = max((name for name in results if name != "naive"), key=lambda n: max(results[n].values()))
    workers = max(results[best], key=results[best].get)
    return (f"best speed-up: {results[best][workers] / naive:.2f}x ({best} with {workers} workers over naive "
            f"with {max(results['naive'], key=results['naive'].get)} workers)")


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    """Run the benchmark, print a table, and as the last line the best speed-up over naive."""
    args = parse_args(argv)
    command = " ".join(["python -m helpers.bench", *(sys.argv[1:] if argv is None else argv)])
    root = bench_data(args.count, args.side, args.data)
    print(f"{args.count} JPEG images {args.side}x{args.side} -> float 3x{args.size}x{args.size} + int64 mask "
          f"on {args.device}, batch {args.batch_size}, {usable_cores()} cores, torch {torch.__version__}")
    if args.formats and (note := uneven_shards_note(args.workers)):
        print(note)
    work = Path(tempfile.mkdtemp(prefix="pixels_to_batches_formats_"))
    chosen: dict[str, Pipeline] = {}
    try:
        limits = ceilings(root, args.size, usable_cores(), args.device)  # first: a run cut short keeps them
        chosen |= chosen_pipelines(args, root, work, limits)
        results = measure(chosen, args.workers, args.epochs, partial(save_json, args, command, limits=limits))
    finally:
        chosen.clear()  # let go of the open maps and files first (a traceback keeps the dict): Windows
        gc.collect()  # cannot delete them
        shutil.rmtree(work, ignore_errors=True)
    print_table(results, limits, args.workers)
    save_json(args, command, results, limits)
    if args.plot:
        plot(results, limits, args.plot)
    print(speedup_line(results))
    return results


if __name__ == "__main__":
    if isinstance(sys.stdout, io.TextIOWrapper):  # not in Jupyter's %run, nor under pythonw
        # a path the console's code page cannot show (Windows, output to a file) is printed escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    main()
