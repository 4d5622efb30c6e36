"""Where the time of the benchmark's GPU pipelines goes: each stage timed alone, then with the next.

    python tools/feed_stages.py [--device cuda] [--count 2000] [--side 256] [--size 224] [--workers 4 12]

For the memory map at 0 workers (``PinnedMemmapBatches``): the gather alone, from the map into a pinned
buffer, at 1, 4 and all of torch's threads, and from a map made afresh each epoch (the page faults of
touching its pages again); then the whole iterator (gather, copy to the device, flip);
then with ``to_device``'s conversion; then the same two with each batch gathered by the device from the
map read into RAM mapped for it (``gather_on_device=True``). For the GPU-decoding pipeline
(``helpers.bench``'s *gpu decode*): the loader alone (workers reading the JPEG bytes and decoding the
masks, or, for *masks stored*, reading them decoded by ``write_masks``), then with ``decode_jpegs``,
then the whole pipeline, at each worker count; and the whole of *read ahead* (masks stored, each batch
received by a background thread while the main process decodes the last). A stage that is fast alone
and slow in company is waiting for the stage beside it. Milliseconds per batch of 32, the best of three
epochs. Runs on the CPU too (``--device cpu``), where nothing is pinned. ``--json PATH`` writes every
stage's milliseconds, with the machine and the command; tools/gpu_run.sh runs it on a GPU
(bench_stages.log and .json).
"""

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from helpers.bench import bench_data, gpu_decode_pipeline, machine
from helpers.datasets import SegmentationDataset, pair_files
from helpers.formats import MemmapDataset, PageLockRefused, PinnedMemmapBatches, write_memmap
from helpers.gpu_decode import decode_jpegs, why_unavailable, write_masks
from helpers.training import to_device

BATCH = 32


def per_batch(times: dict[str, float], label: str, batches: Callable[[], Iterable], device: torch.device,
              epochs: int = 3) -> None:
    """Print, and keep in ``times``, the best milliseconds per batch of ``epochs`` passes of ``batches()``."""
    best = float("inf")
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, count = time.perf_counter(), 0
        for _ in batches():
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / count)
    times[label] = best * 1e3
    print(f"{label:>46}: {best * 1e3:7.3f} ms per batch of {BATCH} ({BATCH / best:8.0f} images/s)",
          flush=True)


def memmap_stages(root: Path, size: int, device: torch.device, work: Path) -> dict[str, float]:
    """The memory map's stages, at 0 workers: milliseconds per batch, by stage."""
    times = {}
    write_memmap(SegmentationDataset(root), work, size)

    def mapped() -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(np.load(work / name, mmap_mode="c"))
                     for name in ("images.npy", "masks.npy"))

    kept = mapped()
    buffers = [torch.empty(BATCH, *array.shape[1:], dtype=torch.uint8) for array in kept]
    if device.type == "cuda":
        buffers = [buffer.pin_memory() for buffer in buffers]
    order = torch.randperm(len(kept[0]))

    def gather(arrays: tuple[torch.Tensor, torch.Tensor]) -> Iterable[int]:
        for first in range(0, len(order) - BATCH + 1, BATCH):
            for array, buffer in zip(arrays, buffers, strict=True):
                torch.index_select(array, 0, order[first:first + BATCH], out=buffer)
            yield first

    threads = torch.get_num_threads()
    for count in sorted({1, min(4, threads), threads}):
        torch.set_num_threads(count)
        per_batch(times, f"memmap: gather into pinned, {count} threads", lambda: gather(kept), device)
    torch.set_num_threads(threads)  # the same from a map made each epoch: its pages fault in again
    per_batch(times, f"memmap: gather into pinned, {threads} threads, mapped each epoch",
              lambda: gather(mapped()), device)
    batches = PinnedMemmapBatches(MemmapDataset(work), BATCH, device)
    per_batch(times, "memmap: gather, copy and flip", lambda: iter(batches), device)
    per_batch(times, "memmap: the same and to_device",
              lambda: (to_device(*batch, device) for batch in batches), device)
    return times


def device_gather_stages(work: Path, device: torch.device) -> dict[str, float]:
    """The memory map in ``work`` gathered by the device from RAM mapped for it: milliseconds per batch.
    Measured last: never yet run on a GPU, and a fault there would end the process."""
    times = {}
    gathered = PinnedMemmapBatches(MemmapDataset(work), BATCH, device, gather_on_device=True)
    try:
        for _ in gathered:  # reads the map into RAM mapped for the device, once
            pass
    except (MemoryError, PageLockRefused, RuntimeError) as error:  # too large to page-lock, refused, or
        # a CUDA error in the GPU's reads of the mapped RAM
        print(f"device gathers: not measured: {error}", flush=True)
        return times
    per_batch(times, "device gathers: gather and flip", lambda: iter(gathered), device)
    per_batch(times, "device gathers: the same and to_device",
              lambda: (to_device(*batch, device) for batch in gathered), device)
    return times


def gpu_decode_stages(root: Path, size: int, device: torch.device, workers: list[int],
                      work: Path) -> dict[str, float]:
    """The GPU-decoding pipeline's stages at each worker count, with the masks decoded by the workers and
    with the masks stored decoded (``write_masks``), and the latter read ahead by a thread (the whole
    pipeline only): milliseconds per batch, by stage."""
    times = {}
    pairs = pair_files(root / "images", root / "masks")
    write_masks(pairs, work / "masks", (size, size))
    pipelines = {"gpu decode": gpu_decode_pipeline(root, size, BATCH, device),
                 "masks stored": gpu_decode_pipeline(root, size, BATCH, device, work / "masks"),
                 "read ahead": gpu_decode_pipeline(root, size, BATCH, device, work / "masks", ahead=True)}
    threads = torch.get_num_threads()
    for count in workers:
        torch.set_num_threads(max(1, threads - count))  # as helpers.bench leaves the main process
        for label, pipeline in pipelines.items():
            loader = pipeline.loader(count)
            for _ in loader:  # starts the workers
                pass
            stages = {"loader alone": lambda loader=loader: iter(loader),
                      "loader and decode_jpegs": lambda loader=loader: (decode_jpegs(batch.encoded(), device)
                                                                        for batch in loader),
                      "whole pipeline": lambda loader=loader, pipeline=pipeline: (pipeline.finish(batch)
                                                                                  for batch in loader)}
            for name, batches in stages.items():
                if label == "read ahead" and name != "whole pipeline":  # its stages are masks stored's
                    continue
                per_batch(times, f"{label}: {name}, {count} workers", batches, device)
    torch.set_num_threads(threads)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--count", type=int, default=2000, help="image+mask pairs (the benchmark's)")
    parser.add_argument("--side", type=int, default=256, help="side of the stored square images")
    parser.add_argument("--size", type=int, default=224, help="side of the images fed to the model")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 12], help="for gpu decode")
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated dataset")
    parser.add_argument("--json", type=Path, default=None, help="write the milliseconds per batch here")
    args = parser.parse_args(argv)
    if args.count < BATCH:
        parser.error(f"--count must be at least one batch ({BATCH})")
    device = torch.device(args.device)
    root = bench_data(args.count, args.side, args.data)
    print(f"{args.count} pairs {args.side}x{args.side} -> {args.size} px on {device}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")

    command = " ".join(["python tools/feed_stages.py", *(sys.argv[1:] if argv is None else argv)])

    def write(times: dict[str, float]) -> None:  # a results file: what ran, where, each stage's ms per batch
        if args.json:  # replaced whole: a run killed keeps the stages it measured
            part = args.json.with_name(args.json.name + ".part")
            part.write_text(json.dumps({
                "command": command, "machine": machine(device),
                "settings": {k: str(v) for k, v in vars(args).items()}, "batch_size": BATCH,
                "ms_per_batch": times}, indent=2))
            part.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="pixels_to_batches_stages_") as work:
        times = memmap_stages(root, args.size, device, Path(work) / "memmap")
        if (why_not := why_unavailable()) is None:
            times |= gpu_decode_stages(root, args.size, device, args.workers, Path(work))
        else:
            print(f"no gpu decode stages: {why_not}")
        write(times)  # before the stages that have never run on a GPU: a fault there keeps these
        times |= device_gather_stages(Path(work) / "memmap", device)
        write(times)


if __name__ == "__main__":
    main()
