"""Benchmark: images per second of the naive per-sample pipeline against the recommended ones.

    python -m helpers.bench [--count 2000] [--side 256] [--size 224] [--batch-size 32] [--workers 0 1 2]
                            [--formats]

Generates (once, then reuses) a data set of JPEG images with PNG masks, then, per pipeline and worker
count, loads one epoch to start the workers and warm the caches and times a second, whole epoch. Every pipeline outputs what a model needs: float ``[B, 3, size, size]``
normalised images and int64 ``[B, size, size]`` masks, with one random horizontal flip per sample
applied to image and mask alike. ``--formats`` adds the pre-decoded formats of notebook 05
(memory-mapped arrays, HDF5) and tar shards, with their disk size and time to write.
Taught in 04_dataloader_batching and 05_large_datasets.
"""

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from helpers.batching import NaiveDataset, fast_transforms, flip_batch, normalize_batch
from helpers.datasets import SegmentationDataset
from helpers.env import usable_cores
from helpers.formats import (HDF5Dataset, MemmapDataset, ShardStream, disk_megabytes, write_hdf5,
                             write_memmap, write_shards)
from helpers.scenes import write_dataset

Batch = tuple[torch.Tensor, torch.Tensor]


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
    print(f"{'pipeline':>12}" + "".join(f"{w:>9} w" for w in args.workers) + "   (images per second)")
    for name, speeds in results.items():
        print(f"{name:>12}" + "".join(f"{speeds[w]:11.0f}" for w in args.workers))
    naive = max(results["naive"].values())
    best = max((name for name in results if name != "naive"), key=lambda n: max(results[n].values()))
    workers = max(results[best], key=results[best].get)
    print(f"best speed-up: {results[best][workers] / naive:.2f}x ({best} with {workers} workers over naive "
          f"with {max(results['naive'], key=results['naive'].get)} workers)")
    return results


if __name__ == "__main__":
    main()
