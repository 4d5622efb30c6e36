"""Benchmark: images per second of the naive per-sample pipeline against the recommended ones.

    python -m helpers.bench [--count 2000] [--side 256] [--size 224] [--batch-size 32] [--workers 0 1 2]
                            [--formats] [--json PATH] [--plot PATH]

Generates (once, then reuses) a data set of JPEG images with PNG masks, then, per pipeline and worker
count, loads one epoch to start the workers and warm the caches and times a second, whole epoch. Every pipeline outputs what a model needs: float ``[B, 3, size, size]``
normalised images and int64 ``[B, size, size]`` masks, with one random horizontal flip per sample
applied to image and mask alike. ``--formats`` adds the pre-decoded formats of notebook 05
(memory-mapped arrays, HDF5) and tar shards, with their disk size and time to write.

The same run measures two ceilings on all cores, and gives each pipeline's share of its own: *decode
only* (the JPEG images and PNG masks decoded by the pipeline's decoder, nothing else: no pipeline that
reads these files can beat it) and *memory only* (the bytes a pre-decoded pipeline must move per image,
read as uint8 and written as float32 image and int64 mask, at the measured memory-copy speed: no
pre-decoded pipeline can beat it). ``--json PATH`` writes every figure; ``--plot PATH`` saves a chart.
Taught in 04_dataloader_batching and 05_large_datasets.
"""

import argparse
import json
import multiprocessing
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from helpers.batching import NaiveDataset, fast_transforms, flip_batch, normalize_batch
from helpers.datasets import SegmentationDataset, read_image, read_mask
from helpers.env import usable_cores
from helpers.formats import (HDF5Dataset, MemmapDataset, ShardStream, disk_megabytes, write_hdf5,
                             write_memmap, write_shards)
from helpers.scenes import write_dataset

Batch = tuple[torch.Tensor, torch.Tensor]
PRE_DECODED = ("memmap", "hdf5")  # pipelines bounded by memory traffic; the others decode files


class Pipeline(NamedTuple):
    """How to load: a loader for a worker count, and what the main process does to each batch."""

    loader: Callable[[int], DataLoader]
    finish: Callable[[Batch], Batch]


def bench_data(count: int, side: int, root: Path | None = None) -> Path:
    """Return a folder of ``count`` generated pairs of side x side pixels, generating it if missing."""
    root = root or Path(tempfile.gettempdir()) / f"pixels_to_batches_bench_{count}x{side}"
    if len(list((root / "masks").glob("*.png"))) != count:
        print(f"generating {count} pairs of {side}x{side} px in {root} (once)...")
        write_dataset(root, count=count, val_count=0, size=(side, side))
    return root


def _loader(dataset, workers: int, **options) -> DataLoader:
    """A loader whose workers live across epochs, so a timed epoch does not include their start-up."""
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0, **options)


def _to_model(batch: Batch) -> Batch:
    return normalize_batch(batch[0]), batch[1].long()


def _flip_to_model(batch: Batch) -> Batch:
    return _to_model(flip_batch(batch[0], batch[1]))


def pipelines(root: Path, size: int, batch_size: int = 32) -> dict[str, Pipeline]:
    """The file-decoding pipelines: naive (per-sample PIL, float) and recommended (uint8 tensors)."""
    naive = NaiveDataset(root, size)
    fast = SegmentationDataset(root, transform=fast_transforms(size), mask_dtype=torch.uint8)
    shuffled = dict(batch_size=batch_size, shuffle=True, drop_last=True)
    return {"naive": Pipeline(lambda w: _loader(naive, w, **shuffled), lambda b: (b[0], b[1])),
            "recommended": Pipeline(lambda w: _loader(fast, w, **shuffled), _to_model)}


def format_pipelines(root: Path, size: int, batch_size: int, work: Path) -> dict[str, Pipeline]:
    """Write the data once in each format (printing time and disk size); return their pipelines."""
    source = SegmentationDataset(root)
    writers = {"memmap": (work / "memmap", lambda path: write_memmap(source, path, size)),
               "hdf5": (work / "data.h5", lambda path: write_hdf5(source, path, size)),
               "shards": (work / "shards", lambda path: write_shards(source, path, per_shard=256))}
    for name, (path, write) in writers.items():
        start = time.perf_counter()
        write(path)
        print(f"wrote {name:>6}: {time.perf_counter() - start:5.1f} s, {disk_megabytes(path):6.1f} MB on disk")
    memmap, hdf5 = MemmapDataset(work / "memmap"), HDF5Dataset(work / "data.h5")
    streams = ShardStream(sorted((work / "shards").glob("*.tar")), shuffle=256, transform=fast_transforms(size))
    in_batches = BatchSampler(RandomSampler(memmap), batch_size, drop_last=True)  # one read per batch
    return {
        "memmap": Pipeline(lambda w: _loader(memmap, w, sampler=in_batches, batch_size=None), _flip_to_model),
        "hdf5": Pipeline(lambda w: _loader(hdf5, w, batch_size=batch_size, shuffle=True, drop_last=True),
                         _flip_to_model),
        "shards": Pipeline(lambda w: _loader(streams, w, batch_size=batch_size), _to_model),
    }


def images_per_second(pipeline: Pipeline, workers: int, label: str = "", progress: bool = True) -> float:
    """Images per second over one whole epoch, after a first epoch that starts workers and warms caches."""
    loader = pipeline.loader(workers)
    for batch in loader:  # warm-up epoch: not timed
        pipeline.finish(batch)
    start, images = time.perf_counter(), 0
    for batch in tqdm(loader, desc=f"{label:>11}, {workers} workers", leave=False, disable=not progress):
        image, mask = pipeline.finish(batch)
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        images += len(image)
    return images / (time.perf_counter() - start)


def _decode_pair(paths: tuple[str, str]) -> int:
    """Decode one image and its mask with the pipelines' decoders, and nothing else."""
    return read_image(Path(paths[0])).numel() + read_mask(Path(paths[1])).numel()


def decode_ceiling(root: Path, processes: int) -> float:
    """Pairs per second that decoding alone reaches in ``processes`` processes: no file pipeline beats it."""
    dataset = SegmentationDataset(root)
    pairs = list(zip(dataset.image_paths.tolist(), dataset.mask_paths.tolist()))
    # spawned, single-threaded processes, as DataLoader workers are: a forked copy of a process whose
    # torch thread pool is running can hang in its first torch call
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(_decode_pair, pairs[:processes]))  # start the processes before the clock does
        start = time.perf_counter()
        list(pool.map(_decode_pair, pairs, chunksize=max(1, len(pairs) // (8 * processes))))
        return len(pairs) / (time.perf_counter() - start)


def copy_bandwidth(megabytes: int = 256, repeats: int = 3) -> float:
    """Bytes per second (read plus written) of a large copy with all of torch's threads."""
    source = torch.ones(megabytes * 2**20, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page first
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * repeats / (time.perf_counter() - start)


def bytes_per_image(size: int) -> int:
    """Bytes a pre-decoded pipeline moves per image: uint8 image and mask in, float32 and int64 out."""
    pixels = size * size
    return (3 + 1) * pixels + (3 * 4 + 8) * pixels


def ceilings(root: Path, size: int, processes: int) -> dict[str, float]:
    """Images per second of the two ceilings, measured now, on ``processes`` cores."""
    bandwidth = copy_bandwidth()
    return {"decode only": decode_ceiling(root, processes), "memory only": bandwidth / bytes_per_image(size),
            "copy GB/s": bandwidth / 1e9}


def shares(results: dict[str, dict[int, float]], limits: dict[str, float]) -> dict[str, float]:
    """Each pipeline's best speed as a share of its ceiling (memory for pre-decoded, decoding for files)."""
    return {name: max(speeds.values()) / limits["memory only" if name in PRE_DECODED else "decode only"]
            for name, speeds in results.items()}


def machine() -> dict[str, str]:
    """What the figures were measured on, for --json."""
    return {"platform": platform.platform(terse=True), "processor": platform.machine(),
            "cpu capability": torch.backends.cpu.get_cpu_capability(), "cores": str(usable_cores()),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}


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
    print(f"{'ceiling':>12}{limits['decode only']:11.0f}   decode only: JPEG + PNG decoded on all cores")
    print(f"{'':>12}{limits['memory only']:11.0f}   memory only: a pre-decoded pipeline's bytes at "
          f"{limits['copy GB/s']:.1f} GB/s")
    print(f"{'pipeline':>12}" + "".join(f"{w:>9} w" for w in workers) + "   (images per second)")
    for name, share in shares(results, limits).items():
        ceiling = "memory" if name in PRE_DECODED else "decode"
        speeds = "".join(f"{results[name][w]:11.0f}" for w in workers)
        print(f"{name:>12}{speeds}   {share:4.0%} of the {ceiling} ceiling")


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    """Run the benchmark, print a table, and as the last line the best speed-up over naive."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="image+mask pairs in the data set")
    parser.add_argument("--side", type=int, default=256, help="side of the stored square images")
    parser.add_argument("--size", type=int, default=224, help="side of the images fed to the model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=list(range(usable_cores() + 1)),
                        help="worker counts to try (default: 0 to the number of cores)")
    parser.add_argument("--formats", action="store_true", help="also memory-mapped arrays, HDF5, shards")
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated data set")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="save a chart to this PNG file")
    args = parser.parse_args(argv)
    root = bench_data(args.count, args.side, args.data)
    print(f"{args.count} JPEG images {args.side}x{args.side} -> float 3x{args.size}x{args.size} + int64 "
          f"mask, batch {args.batch_size}, {usable_cores()} cores, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="pixels_to_batches_formats_"))
    try:
        chosen = pipelines(root, args.size, args.batch_size)
        if args.formats:
            chosen |= format_pipelines(root, args.size, args.batch_size, work)
        results = {name: {w: images_per_second(p, w, label=name) for w in args.workers}
                   for name, p in chosen.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limits = ceilings(root, args.size, usable_cores())
    print_table(results, limits, args.workers)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}, "ceilings": limits,
            "pipelines": results, "shares": shares(results, limits)}, indent=2))
    if args.plot:
        plot(results, limits, args.plot)
    naive = max(results["naive"].values())
    best = max((name for name in results if name != "naive"), key=lambda n: max(results[n].values()))
    workers = max(results[best], key=results[best].get)
    print(f"best speed-up: {results[best][workers] / naive:.2f}x ({best} with {workers} workers over naive "
          f"with {max(results['naive'], key=results['naive'].get)} workers)")
    return results


if __name__ == "__main__":
    main()
