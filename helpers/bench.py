"""Benchmark: images per second of the naive per-sample pipeline against the recommended one.

    python -m helpers.bench [--count 2000] [--side 256] [--size 224] [--batch-size 32] [--workers 0 1 2]

Generates (once, then reuses) a data set of JPEG images with PNG masks, then loads one epoch per
pipeline and worker count. Both pipelines output what a model needs: float ``[B, 3, size, size]``
normalised images and int64 ``[B, size, size]`` masks, with one random horizontal flip per sample
applied to image and mask alike. Taught in 04_dataloader_batching.
"""

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from helpers.batching import NaiveDataset, fast_transforms, normalize_batch
from helpers.datasets import SegmentationDataset
from helpers.env import usable_cores
from helpers.scenes import write_dataset

Batch = tuple[torch.Tensor, torch.Tensor]


def bench_data(count: int, side: int, root: Path | None = None) -> Path:
    """Return a folder of ``count`` generated pairs of side x side pixels, generating it if missing."""
    root = root or Path(tempfile.gettempdir()) / f"pixels_to_batches_bench_{count}x{side}"
    if len(list((root / "masks").glob("*.png"))) != count:
        print(f"generating {count} pairs of {side}x{side} px in {root} (once)...")
        write_dataset(root, count=count, val_count=0, size=(side, side))
    return root


def pipelines(root: Path, size: int) -> dict[str, tuple[Dataset, Callable[[Batch], Batch]]]:
    """Each pipeline: a dataset, and what the main process does to each batch before the model."""
    def naive_finish(batch: Batch) -> Batch:
        return batch[0], batch[1]

    def fast_finish(batch: Batch) -> Batch:
        return normalize_batch(batch[0]), batch[1].long()

    return {"naive": (NaiveDataset(root, size), naive_finish),
            "recommended": (SegmentationDataset(root, transform=fast_transforms(size), mask_dtype=torch.uint8),
                            fast_finish)}


def images_per_second(dataset: Dataset, finish: Callable[[Batch], Batch], *, batch_size: int,
                      workers: int, label: str = "", progress: bool = True) -> float:
    """Load one shuffled epoch; return images per second after the first batch (worker start-up)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=False)
    batches: Iterable[Batch] = tqdm(loader, desc=f"{label:>11}, {workers} workers", leave=False,
                                    disable=not progress)
    start, images = None, 0
    for batch in batches:
        image, mask = finish(batch)
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        if start is None:
            start = time.perf_counter()  # from the first batch on: start-up is not throughput
        else:
            images += len(image)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    """Run the benchmark, print a table, and as the last line the best speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="image+mask pairs in the data set")
    parser.add_argument("--side", type=int, default=256, help="side of the stored square images")
    parser.add_argument("--size", type=int, default=224, help="side of the images fed to the model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=list(range(usable_cores() + 1)),
                        help="worker counts to try (default: 0 to the number of cores)")
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated data set")
    args = parser.parse_args(argv)
    root = bench_data(args.count, args.side, args.data)
    print(f"{args.count} JPEG images {args.side}x{args.side} -> float 3x{args.size}x{args.size} + int64 "
          f"mask, batch {args.batch_size}, {usable_cores()} cores, torch {torch.__version__}")
    results: dict[str, dict[int, float]] = {}
    for name, (dataset, finish) in pipelines(root, args.size).items():
        results[name] = {w: images_per_second(dataset, finish, batch_size=args.batch_size, workers=w,
                                              label=name) for w in args.workers}
    print(f"{'pipeline':>12}" + "".join(f"{w:>9} w" for w in args.workers) + "   (images per second)")
    for name, speeds in results.items():
        print(f"{name:>12}" + "".join(f"{speeds[w]:11.0f}" for w in args.workers))
    best = {name: max(speeds, key=speeds.get) for name, speeds in results.items()}
    ratio = results["recommended"][best["recommended"]] / results["naive"][best["naive"]]
    print(f"best speed-up: {ratio:.2f}x (recommended with {best['recommended']} workers over naive with "
          f"{best['naive']} workers)")
    return results


if __name__ == "__main__":
    main()
