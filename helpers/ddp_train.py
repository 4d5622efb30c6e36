"""Data-parallel training of the shapes U-Net, one process per device, started by torchrun (07_distributed).

    torchrun --nproc_per_node=2 -m helpers.ddp_train --shards SHARDS --out RUN

Every process (a *rank*) builds the same model, reads its own share of the data and computes gradients
on it; DistributedDataParallel averages the gradients over the ranks, so every rank takes the same step.
The backend is ``nccl`` on CUDA (one GPU per process) and ``gloo`` on the CPU; the ranks agree on it
first, and all stop if some have a GPU each and others not.

Data: ``--shards`` streams tar shards with ``webdataset`` (a folder of them, or URLs such as
``https://host/shard-{000000..000099}.tar`` or ``pipe:COMMAND``), split over ranks, then over each rank's
workers; ``--data FOLDER`` reads the image files through a ``DistributedSampler``. Each rank writes
``RUN/rank-R.json``: where it ran, what it read each epoch (sample names), its losses, the evaluation
(confusion matrices summed over the ranks with ``all_reduce``). Rank 0 alone saves ``RUN/model.pt``;
every rank then loads it and checks that it holds its own weights.
"""

import argparse
import contextlib
import functools
import gc
import hashlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import webdataset as wds
from torch import nn
from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from helpers.datasets import (
    CLUTTER,
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    SegmentationDataset,
    scan_folder,
    split_stems,
)
from helpers.formats import (
    SHARD_SUFFIXES,
    NamedSample,
    check_webdataset_order,
    check_whole_tar,
    decode_shard_sample,
    shard_url,
)
from helpers.masks import CLASSES, IGNORE_INDEX
from helpers.metrics import mean_iou
from helpers.models import UNet
from helpers.seeding import seed_everything, worker_seeding
from helpers.training import evaluate, segmentation_loss, to_device

COMMAND = "torchrun --nproc_per_node=2 -m helpers.ddp_train --shards SHARDS --out RUN"


class LaunchError(RuntimeError):
    """A launch that cannot work, with what to do instead."""


class Named(Dataset):
    """``NamedSample(image, mask, name)`` from a SegmentationDataset, named by its image's file name stem,
    as a shard's samples are: the ranks' logs say which files each read."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> NamedSample:
        image, mask = self.dataset[index]
        name = Path(self.dataset.image_paths[index]).stem
        return NamedSample(image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), name)


def launch_info() -> dict:
    """This process's place in the launch, as torchrun describes it in environment variables."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if name not in os.environ]
    if missing:
        raise LaunchError(f"it must be started by torchrun, which sets {', '.join(missing)}; "
                          f"e.g. {COMMAND}")
    return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ["LOCAL_RANK"]), "node_rank": int(os.environ.get("GROUP_RANK", 0)),
            "host": socket.gethostname()}


def is_url(spec: str) -> bool:
    """Whether a shard is named by URL (``https://...``, ``pipe:curl ...``) rather than by a path."""
    return spec.startswith("pipe:") or "://" in spec


def local_shards(folder: str | Path) -> list[Path]:
    """The shards in a local folder, by name: its tar files, compressed ones too (``SHARD_SUFFIXES``, in
    any case). Another file there is refused, named: a shard left out of the list would be skipped
    without a word (07_distributed). Hidden files, the clutter tools leave (``Thumbs.db``) and folders
    (such as a run's ``--out``) are passed over."""
    shards, others = [], []
    for path in sorted(Path(folder).iterdir()):
        shard = path.name.lower().endswith(SHARD_SUFFIXES)
        if path.name.startswith(".") or path.name in CLUTTER or (path.is_dir() and not shard):
            continue
        (shards if shard and path.is_file() else others).append(path)
    if others:
        raise ValueError(f"{folder} holds {[path.name for path in others[:4]]}, which are no shards "
                         f"({', '.join(SHARD_SUFFIXES)}): move them out of the shards folder, or write "
                         "them as shards (helpers.formats.write_shards).")
    return shards


def shard_urls(spec: str) -> list[str]:
    """The shards to read: those of a local folder (``local_shards``), or URLs with {000..099} ranges
    expanded."""
    if is_url(spec):
        return wds.shardlists.expand_urls(spec)
    return [shard_url(path) for path in local_shards(spec)]


def data_problem(args: argparse.Namespace, world_size: int) -> str | None:
    """What is wrong with the data as this rank sees it, or None."""
    source = str(args.shards or args.data)
    if not is_url(source) and not Path(source).is_dir():
        return (f"{source} is missing on this node: every node needs the data at the same path "
                "(copy it there, or give --shards as URLs)")
    if args.val_data and not args.val_data.is_dir():
        return f"{args.val_data} is missing on this node: --val-data must be at the same path on every node"
    if args.shards:
        try:
            shards, workers = shard_urls(source), max(1, args.workers)
        except ValueError as error:  # a file there that is no shard
            return str(error)
        if len(shards) < world_size * workers:
            return (f"{len(shards)} shards in {source} for {world_size} processes x {workers} workers: "
                    f"every reader needs a shard of its own; write at least {world_size * workers} "
                    "(helpers.formats.write_shards(per_shard=...)) or start fewer")
        local, files = [] if is_url(source) else local_shards(source), {}
        for shard in local:  # a shard cut short reads without an error
            try:
                files[shard] = check_whole_tar(shard)
                check_webdataset_order(shard, files[shard])  # webdataset skips or halves the rest, silently
            except ValueError as error:
                return str(error)
            except OSError as error:  # unreadable here (permissions): this rank alone would fail
                return f"Cannot read {shard}: {error.strerror or error}"
        if problem := copied_sample(files):
            return problem
    return split_problem(args, world_size)


def split_problem(args: argparse.Namespace, world_size: int) -> str | None:
    """What is wrong with the split lists, before any training: a list missing or naming a missing pair,
    or fewer training samples than processes (DistributedSampler would give each rank none; 07)."""
    try:
        if args.data:
            train = SegmentationDataset(args.data, split="train")
            if len(train) < world_size:
                return (f"{len(train)} training samples in {args.data} for {world_size} processes: each "
                        "process needs at least one; start fewer")
        if args.data or args.val_data:
            SegmentationDataset(args.data or args.val_data, split="val")
    except (OSError, ValueError) as error:
        return str(error)
    return None


def left_out_every_epoch(args: argparse.Namespace, world_size: int) -> str | None:
    """With ``--no-shuffle``, which training samples no epoch trains: DistributedSampler(drop_last=True)
    leaves out the last ``len % world_size`` samples in file order, the same ones every epoch (07)."""
    if args.shuffle or not args.data:
        return None
    stems = [Path(image).stem for image in SegmentationDataset(args.data, split="train").image_paths]
    sampler = DistributedSampler(stems, num_replicas=world_size, rank=0, shuffle=False, drop_last=True)
    left = stems[sampler.total_size:]  # the samples it deals out are the first total_size
    if not left:
        return None
    return (f"--no-shuffle: {len(stems)} training samples do not divide over {world_size} processes, so "
            f"no epoch trains the last {len(left)} in file order ({', '.join(left)}). Shuffle, or give "
            f"train.txt a multiple of {world_size} samples.")


def copied_sample(shards: dict[Path, list[tuple[str, int]]]) -> str | None:
    """A sample found in two shards with the same files of the same sizes, as in a copy of a shard saved
    beside it ("shard-00001 (1).tar"): each epoch would train it twice. ``shards``: each shard's files, as
    ``check_whole_tar`` lists them. A sample is named as webdataset names it, by its file names up to the
    first dot; two different samples that share a name are not a copy, and both train (07_distributed)."""
    found: dict[tuple[str, frozenset], Path] = {}
    for shard, files in shards.items():
        samples: dict[str, set[tuple[str, int]]] = {}
        for name, size in files:
            key, suffix = wds.tariterators.base_plus_ext(name)
            if key is not None:  # webdataset passes over a file with no extension, as it reads
                samples.setdefault(key, set()).add((suffix.lower(), size))
        for key, parts in samples.items():
            first = found.setdefault((key, frozenset(parts)), shard)
            if first != shard:
                return (f"Sample {key!r} is in two shards, {first} and {shard}, the same files of the same "
                        "sizes: a copy of a shard would train its samples twice each epoch. Remove the copy.")
    return None


def data_seen(args: argparse.Namespace) -> str:
    """What this rank will read, in short (file count and a digest of names and sizes), so that ranks on
    several machines can check they all see the same: the shards, or the pairs and split lists of
    ``--data``, and ``--val-data``'s, listed as ``SegmentationDataset`` lists them (clutter left out), a
    split list by the stems it lists, in order: their order is the samples' order (07_distributed)."""
    files: list[Path] = []  # shards given as URLs: the same URLs on every node, the same shards
    try:
        if args.shards and not is_url(str(args.shards)):
            files = local_shards(args.shards)
        for folder in (folder for folder in (args.data, getattr(args, "val_data", None)) if folder):
            splits = (folder / f"{split}.txt" for split in ("train", "val"))
            files += [*scan_folder(folder / "images", IMAGE_SUFFIXES)[0].values(),
                      *scan_folder(folder / "masks", MASK_SUFFIXES)[0].values(),
                      *(split for split in splits if split.is_file())]
        listing = "\n".join(f"{path.parent.name}/{path.name} " + (
            " ".join(split_stems(path)) if path.suffix == ".txt" else str(path.stat().st_size))
            for path in files)
    except (OSError, ValueError) as error:
        return f"unreadable ({error})"
    return f"{len(files)} files, {hashlib.sha256(listing.encode()).hexdigest()[:12]}"


def check_everywhere(problem: str | None, seen: str = "") -> None:
    """Collective: every rank reports its problem or None, and all raise the same error if any has one,
    rather than one rank failing while the others wait for it forever; likewise if the ranks do not all
    see the same data (``data_seen``), which would read some samples twice and others never."""
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (socket.gethostname(), problem, seen))
    found = [f"rank {rank} on {host}: {problem}" for rank, (host, problem, _) in enumerate(reports)
             if problem]
    if found:
        raise LaunchError("; ".join(found))
    if len({seen for _, _, seen in reports}) > 1:
        views = ", ".join(f"rank {rank} on {host}: {seen}" for rank, (host, _, seen) in enumerate(reports))
        raise LaunchError(f"The ranks do not see the same data ({views}): every node needs the same files "
                          "at the same path.")


def agree_on_device(store: dist.Store, rank: int, world_size: int, cuda: bool) -> None:
    """Collective, before the process group exists (its backend must be the same on every rank): every
    rank says through the launch's store whether it has a GPU of its own, and all raise the same error,
    naming the ranks without one, if some have one and some not. Else some would start ``nccl`` and the
    others ``gloo``, and wait for each other until the timeout (07_distributed). In a static launch's
    store the answers of an attempt before a restart remain; they are the same machines' answers."""
    store = dist.PrefixStore("ddp_train/cuda", store)
    store.set(str(rank), f"{int(cuda)} {socket.gethostname()}")
    store.wait([str(other) for other in range(world_size)])
    reports = [store.get(str(other)).decode().split(" ", 1) for other in range(world_size)]
    without = [f"rank {other} on {host}" for other, (has, host) in enumerate(reports) if has == "0"]
    if 0 < len(without) < world_size:
        raise LaunchError(f"{', '.join(without)}: fewer GPUs than processes on its node, while the other "
                          "ranks each have a GPU of their own. nccl needs one GPU per process on every "
                          "node: start as many processes on each node as it has GPUs (--nproc_per_node), "
                          "or train on the CPU everywhere (--cpu).")


def train_loader(args: argparse.Namespace, epoch: int, rank: int) -> DataLoader:
    """This rank's loader for one epoch; the epoch changes the shuffle, as ``set_epoch`` does."""
    size = (args.size, args.size)
    seed = args.seed + 1000 * epoch + rank  # other draws per rank, worker and epoch
    if args.workers == 0:  # the loader reads in this process: seed its draws as a worker's would be
        seed_everything(seed)
    seeds = worker_seeding(seed)
    if args.shards:
        urls = shard_urls(args.shards)
        stream = (wds.WebDataset(urls, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                                 shardshuffle=len(urls) if args.shuffle else False,
                                 seed=args.seed + epoch, empty_check=False)
                  .shuffle(args.buffer if args.shuffle else 0, seed=args.seed + epoch)
                  .map(partial(decode_shard_sample, size=size, num_classes=args.num_classes,
                               ignore_index=args.ignore_index)))
        return DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers, **seeds)
    dataset = Named(SegmentationDataset(args.data, split="train", size=size, mask_dtype=torch.uint8,
                                        num_classes=args.num_classes, ignore_index=args.ignore_index))
    sampler = DistributedSampler(dataset, shuffle=args.shuffle, seed=args.seed, drop_last=True)
    sampler.set_epoch(epoch)  # without it, every epoch repeats the first one's order
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      **seeds)


def build_model(norm: str = "batch", num_classes: int = len(CLASSES)) -> UNet:
    """The small U-Net every launch trains: two levels of 8 and 16 channels, at full size."""
    return UNet(num_classes=num_classes, widths=(8, 16), norm=norm)


def skipped_value(args: argparse.Namespace) -> int:
    """The mask value the loss and the metrics skip: ``--ignore-index``, or the series' 255 (padding)."""
    return IGNORE_INDEX if args.ignore_index is None else args.ignore_index


def evaluate_everywhere(model: nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """Each rank scores every world_size-th validation image (no padding, no duplicates); all_reduce
    sums the confusion matrices and the image counts, so every rank gets the whole split's result."""
    folder = args.data or args.val_data
    if folder is None:
        return {}
    val = SegmentationDataset(folder, split="val", size=(args.size, args.size), num_classes=args.num_classes,
                              ignore_index=args.ignore_index)
    mine = Subset(val, range(dist.get_rank(), len(val), dist.get_world_size()))
    confusion = evaluate(model, DataLoader(mine, batch_size=1), device, args.num_classes,
                         ignore_index=skipped_value(args)).confusion
    confusion, count = confusion.to(device), torch.tensor(len(mine), device=device)
    dist.all_reduce(confusion)
    dist.all_reduce(count)
    return {"images": int(count), "confusion": confusion.tolist(), "mean_iou": mean_iou(confusion.cpu())}


def save_and_check(model: nn.Module, path: Path, device: torch.device) -> bool:
    """Rank 0 saves the weights; after a barrier every rank loads them and compares with its own."""
    if dist.get_rank() == 0:
        temporary = path.with_suffix(".tmp")
        torch.save(model.state_dict(), temporary)
        temporary.replace(path)  # whole or not at all
    dist.barrier()  # nobody reads before rank 0 has written
    loaded = torch.load(path, map_location=device, weights_only=True)
    return all(torch.equal(loaded[name], value) for name, value in model.state_dict().items())


def train_epoch(ddp: DistributedDataParallel, batches: Iterable, optimizer: torch.optim.Optimizer,
                device: torch.device, steps: int = 0, stop_together: bool = False,
                ignore_index: int = IGNORE_INDEX) -> tuple[list, list]:
    """One epoch of this rank's batches (at most ``steps``; 0: all); returns sample names and losses.

    Ranks may have different numbers of batches. ``join`` lets a rank that has run out answer the
    others' gradient all-reduces, so the last steps run on fewer ranks. It cannot answer other
    collectives of the forward pass, such as SyncBatchNorm's: then (``stop_together``) every rank
    stops when the first runs out, as DDP's ``throw_on_early_termination`` signals it, instead of
    waiting forever for the rank that left.
    """
    names, losses = [], []
    try:
        with ddp.join(throw_on_early_termination=stop_together):
            for images, masks, batch_names in batches:
                if steps and len(losses) == steps:
                    break
                images, masks = to_device(images, masks, device)
                loss = segmentation_loss(ddp(images), masks, ignore_index=ignore_index)  # cross-entropy
                optimizer.zero_grad()
                loss.backward()  # DDP averages the gradients over the ranks here
                optimizer.step()
                names += list(batch_names)
                losses.append(loss.item())
    except RuntimeError as error:  # "... exhausted inputs": raised on every rank at the same step
        if not (stop_together and "exhausted" in str(error)):
            raise
    return names, losses


# What a rank made (its DDP wrapper, or run_script's script's globals), kept until its process ends: by then
# gloo's thread has long let go of every tensor. Torn down earlier, the DDP wrapper's last reference to a
# gloo process group destroys the group while holding Python's lock, and waits for the group's thread, which
# may still need that lock to let go of the last collective's tensors: a deadlock, seen with torch 2.11 on
# Python 3.13 in 07's launches, even after a closing barrier (gdb: ~Reducer -> ~ProcessGroupGloo joining
# pt_gloo_runloop, itself waiting for the GIL to decref a tensor; pytorch/pytorch#56297).
KEPT_UNTIL_EXIT: list = []


def run(args: argparse.Namespace) -> dict:
    """Train, save and evaluate as one rank of the launch; return what this rank logged."""
    where = launch_info()
    # one GPU per process, or none: nccl cannot put two ranks on one GPU. Windows builds have no nccl
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cuda = (not args.cpu and torch.cuda.is_available() and dist.is_nccl_available()
            and torch.cuda.device_count() >= processes_here)
    without_libuv_on_windows()
    store, rank, world_size = next(dist.rendezvous("env://"))  # where the ranks meet, as torchrun said
    agree_on_device(store, rank, world_size, cuda)
    if args.sync_bn and not cuda:
        raise LaunchError("--sync-bn needs one GPU per process: PyTorch refuses to train SyncBatchNorm on "
                          "the CPU")
    if not args.cpu and not cuda and torch.cuda.is_available() and where["local_rank"] == 0:
        why = (f"This node has {torch.cuda.device_count()} GPU(s) for {processes_here} processes, and nccl "
               "needs one GPU per process" if dist.is_nccl_available() else
               "This build of torch has no nccl, which Windows builds lack")
        warnings.warn(f"{why}: training on the CPU (--cpu chooses it without this warning)", stacklevel=2)
    if "OMP_NUM_THREADS" in os.environ:  # torchrun sets 1 per process; a forked rank must apply it itself
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    device = torch.device("cuda", where["local_rank"]) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"  # the same on every rank: agree_on_device checked
    # device_id binds the rank to its GPU: NCCL connects at once, and barrier() knows the device to use
    store.set_timeout(default_pg_nccl_timeout if cuda else default_pg_timeout)  # as init_process_group
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,  # does with
                            world_size=world_size, device_id=device if cuda else None)  # its own store
    try:
        check_everywhere(data_problem(args, where["world_size"]), data_seen(args))
        if where["rank"] == 0 and (left := left_out_every_epoch(args, world_size)):
            warnings.warn(left, stacklevel=2)
        torch.manual_seed(args.seed)  # the same starting weights on every rank (DDP also broadcasts rank 0's)
        model = build_model(args.norm, args.num_classes)
        if args.sync_bn:  # SyncBatchNorm: batch statistics over all ranks (CUDA only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        KEPT_UNTIL_EXIT.append(ddp)  # never torn down while gloo's thread may still hold its tensors
        optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr)
        log = {**where, "backend": backend, "device": str(device), "epochs": []}
        start = time.perf_counter()
        for epoch in range(args.epochs):
            ddp.train()
            names, losses = train_epoch(ddp, train_loader(args, epoch, where["rank"]), optimizer, device,
                                        steps=args.steps, stop_together=args.sync_bn,
                                        ignore_index=skipped_value(args))
            log["epochs"].append({"names": names, "steps": len(losses), "loss": losses})
        log["seconds"] = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)  # saved first: a bad validation file loses no training
        log["checkpoint_matches"] = save_and_check(model, args.out / "model.pt", device)
        log["eval"] = evaluate_everywhere(model, args, device)
        dist.barrier()  # every rank is done with the group before any leaves it
        (args.out / f"rank-{where['rank']}.json").write_text(json.dumps(log))
        return log
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them), from ``argv`` or ``sys.argv``."""
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m helpers.ddp_train",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", help="a folder of tar shards (helpers.formats.write_shards), or URLs")
    source.add_argument("--data", type=Path, help="a folder of images/ and masks/ with train.txt, val.txt")
    parser.add_argument("--val-data", type=Path, default=None, help="with --shards: where val.txt is")
    parser.add_argument("--out", type=Path, required=True, help="where the ranks write their logs and model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="stop each epoch after this many (0: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="per process: the global batch is N x this")
    parser.add_argument("--size", type=int, default=64, help="images and masks resized to size x size")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--buffer", type=int, default=64, help="shuffle buffer of the shard stream")
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="read in file order")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--norm", choices=["batch", "group"], default="batch")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm over the ranks (CUDA)")
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU even where there are GPUs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=len(CLASSES), metavar="N",
                        help=f"mask values 0..N-1 are classes (default {len(CLASSES)}: the shapes')")
    parser.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                        help="a mask value that means 'no label here', e.g. 255 (default: none)")
    args = parser.parse_args(argv)
    if not 2 <= args.num_classes <= IGNORE_INDEX:  # 255 pads crops: it cannot be a class
        parser.error(f"--num-classes must be 2 (background and one class) to {IGNORE_INDEX}")
    if args.ignore_index is not None and not args.num_classes <= args.ignore_index <= 255:
        parser.error(f"--ignore-index must be a value {args.num_classes}..255, outside the classes "
                     f"0..{args.num_classes - 1}")
    if args.val_data and not args.shards:
        parser.error("--val-data goes with --shards: with --data, val.txt is in that folder")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one rank of the training that torchrun started: 0 when it trained, 2 after saying what is wrong
    with the launch (other errors are raised, and torchrun names the rank)."""
    warnings.filterwarnings("ignore", category=ResourceWarning)  # webdataset leaves tar files to the GC
    try:
        log = run(parse_args(argv))
    except LaunchError as error:
        print(f"helpers.ddp_train: {error}", file=sys.stderr)
        return 2
    if log["rank"] == 0:
        steps = [epoch["steps"] for epoch in log["epochs"]]
        score = f", mean IoU {log['eval']['mean_iou']:.3f}" if log["eval"] else ""
        print(f"rank 0 of {log['world_size']} ({log['backend']}, {log['device']}): steps per epoch {steps}, "
              f"{log['seconds']:.1f} s{score}")
    return 0


def without_libuv_on_windows() -> None:
    """On Windows, have torch's rendezvous make its TCPStores without libuv, which PyTorch's Windows wheels
    lack: there torchrun itself stops with "use_libuv was requested but PyTorch was build without libuv
    support" (pytorch/pytorch#148283; 07_distributed). Called in each agent and rank, before they meet."""
    if sys.platform != "win32":
        return
    for name in ("torch.distributed.elastic.rendezvous.static_tcp_rendezvous",  # the agents' store
                 "torch.distributed.rendezvous"):  # the ranks' clients (torch.distributed.rendezvous
        module = importlib.import_module(name)  # itself is a function of the same name)
        module.TCPStore = functools.partial(dist.TCPStore, use_libuv=False)


def run_script(path: str, *argv: str) -> int:
    """One rank running a script, as ``torchrun --run-path SCRIPT ARGV`` runs it: in this interpreter.

    What the script made (its model, its DDP wrapper) is kept until the rank's process ends, not torn
    down after it: tearing it down can hang (``KEPT_UNTIL_EXIT`` says why).
    """
    if "OMP_NUM_THREADS" in os.environ:  # as in run(): a forked rank applies it itself
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    without_libuv_on_windows()
    sys.argv = [path, *argv]  # as torch.distributed.run.run_script_path does
    KEPT_UNTIL_EXIT.append(runpy.run_path(path, run_name="__main__"))
    return 0


def output_to(log: str) -> None:
    """Send this process's output, Python's and C++'s, to the files ``LOG.out`` and ``LOG.err``, which
    ``launch`` reads (07_distributed)."""
    for fd, suffix in ((1, ".out"), (2, ".err")):
        with open(log + suffix, "w", encoding="utf-8") as file:
            os.dup2(file.fileno(), fd)
    # print() writes to sys.stdout, which in a notebook is the kernel's, not a file: point it here too
    sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8", closefd=False) for fd in (1, 2))


RANKS_WRITE_OWN_LOGS = sys.platform == "win32"  # spawned there, ranks do not inherit the agent's log files
RANKS_START = "fork" if sys.platform == "linux" else "spawn"  # how launch starts agents and ranks


def ranks_start(argv: list[str], script: str | None, processes: int) -> str:
    """How ``launch`` starts agents and ranks (07_distributed): ``RANKS_START``, or spawn where a rank may
    use CUDA: a script, or ``main`` without ``--cpu`` and with a GPU per process, as ``run`` decides.
    torchrun's agent asks CUDA whether there is a GPU (``LaunchConfig``) before it starts its ranks, and
    a process forked after that cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess").
    torchrun itself spawns its ranks. (``device_count`` asks NVML, which leaves this process forkable.)"""
    gpus = torch.cuda.device_count()
    may_use_cuda = gpus > 0 if script is not None else "--cpu" not in argv and gpus >= processes
    return "spawn" if may_use_cuda else RANKS_START


def rank_log(log: str, local_rank: int) -> str:
    """Where rank ``local_rank`` of the node whose log is ``log`` writes its own output (``rank``)."""
    return f"{log}-rank-{local_rank}"


def rank(log: str | None, script: str | None, *argv: str) -> int:
    """One rank that ``launch`` started: ``main(argv)``, or ``run_script(script, *argv)`` (07_distributed).

    With ``log``, the rank first sends its own output (``print``, warnings, torch's C++ messages) to
    ``LOG-rank-N.out`` and ``.err`` (N its local rank), which ``launch`` reads after the node's. On
    Windows it must: a spawned process does not inherit the files its agent's output went to, so what the
    ranks print would be lost. (A rank's traceback reaches the agent, which writes it to the node's.)"""
    if log is not None:
        output_to(rank_log(log, int(os.environ["LOCAL_RANK"])))
    return main(list(argv)) if script is None else run_script(script, *argv)


def agent(argv: list[str], processes: int, nodes: int, node_rank: int, port: int, log: str,
          method: str, script: str | None, own_logs: bool) -> None:
    """One node's launcher: torchrun's own elastic agent, starting ranks that run ``main`` (or a script);
    with ``own_logs`` each rank writes its output to files of its own (``rank``)."""
    output_to(log)  # what the agent and its ranks print (where they inherit it)
    multiprocessing.set_start_method(method, force=True)  # the ranks' DataLoader workers start so too
    gc.freeze()  # the ranks' garbage collector leaves the objects they inherit alone: no copies
    without_libuv_on_windows()
    if processes > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: one thread per process
    config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=processes, run_id="notebook",
                          rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{port}",
                          rdzv_configs={"rank": node_rank}, max_restarts=0, monitor_interval=0.1,
                          start_method=method)
    codes = elastic_launch(config, rank)(log if own_logs else None, script, *argv)
    sys.exit(max(codes.values()))


def stop(processes: list) -> None:
    """Terminate those still running (an interrupted cell), wait for them, then kill what they started
    that still runs: on Windows, terminating a process runs none of its handlers, so its agents and
    ranks would go on training without it."""
    for process in processes:
        if process.is_alive():
            try:
                started = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:  # it ended meanwhile (on Windows psutil no longer finds it)
                started = []
            process.terminate()
            process.join()
            for child in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def run_agents(argv: list[str], processes: int, nodes: int, port: int, logs: str, method: str,
               script: str | None, own_logs: bool) -> None:
    """In a fresh process (no threads, no CUDA): start one agent per node of this machine and wait."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: stop the agents (finally)
    gc.freeze()  # forked agents and ranks: their garbage collector leaves inherited objects alone
    context = multiprocessing.get_context(method)
    agents = [context.Process(target=agent, args=(argv, processes, nodes, node, port,
                                                  os.path.join(logs, f"node-{node}"), method, script,
                                                  own_logs))
              for node in range(nodes)]
    for process in agents:
        process.start()
    try:
        running = list(agents)
        while running and not any(process.exitcode for process in agents):  # one failed: stop all
            ended = multiprocessing.connection.wait([process.sentinel for process in running])
            running = [process for process in running if process.sentinel not in ended]
    finally:
        stop(agents)
    sys.exit(next((process.exitcode for process in agents if process.exitcode), 0))


def read_logs(names: list[str], suffix: str) -> str:
    """The files ``NAME + suffix`` that exist, one after the other (``launch``)."""
    return "".join(Path(name + suffix).read_text(encoding="utf-8", errors="replace") for name in names
                   if Path(name + suffix).exists())


def launch(argv: list[str], processes: int = 2, nodes: int = 1, script: str | Path | None = None,
           own_logs: bool = RANKS_WRITE_OWN_LOGS) -> str:
    """Train as ``torchrun --nnodes=NODES --nproc_per_node=PROCESSES -m helpers.ddp_train ARGV`` would,
    on this machine, from Python; return what the ranks printed. Taught in 07_distributed.

    With ``script``, the ranks run that file instead, as ``torchrun --run-path SCRIPT ARGV`` would.

    ``torchrun`` is a Python process that imports torch, and each rank it starts imports torch again:
    with a notebook's kernel, close to Binder's 2 GB. This starts one fresh process, which forks one
    agent per node (the function torchrun calls, ``elastic_launch``, with a static rendezvous on
    127.0.0.1), and each agent forks its ranks: they all share one import of torch, copied only where
    they write to it (on Linux, where the ranks train on the CPU; elsewhere they are spawned, as
    ``ranks_start`` decides). The kernel itself is never forked: its threads (OpenMP's among them) do not
    survive a fork, and a rank could hang in a torch operation.
    ``own_logs`` (on Windows, where it must): each rank writes what it prints to files of its own.
    """
    with socket.socket() as free:  # node 0 listens here for the others
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # ignore_cleanup_errors: on Windows a rank that outlived its agent may hold its log open
    with tempfile.TemporaryDirectory(prefix="launch_", ignore_cleanup_errors=True) as logs:
        launcher = multiprocessing.get_context("spawn").Process(
            target=run_agents, args=(argv, processes, nodes, port, logs, ranks_start(argv, script, processes),
                                     None if script is None else str(Path(script).resolve()), own_logs))
        launcher.start()
        try:
            launcher.join()
        finally:
            stop([launcher])
        ranks = {node: [rank_log(node, local) for local in range(processes)]  # where ranks wrote their own
                 for node in (os.path.join(logs, f"node-{index}") for index in range(nodes))}
        output = read_logs([name for node in ranks for name in (node, *ranks[node])], ".out")
        # the agent's report (which rank failed, its traceback) last, so that the message below keeps it
        errors = read_logs([name for node in ranks for name in (*ranks[node], node)], ".err")
    if launcher.exitcode:
        raise RuntimeError(f"the launch failed (exit code {launcher.exitcode}):\n"
                           f"{errors[-3000:]}{output[-1000:]}")
    return output.strip()


if __name__ == "__main__":  # a rank that torchrun started
    code = main()
    # It ends without the interpreter's teardown, as a forked rank of launch does: torn down, gloo's threads
    # ended 3 launches of 64 (2-core CPU) with "terminate called without an active exception" (SIGABRT),
    # after the rank had trained and written its log, and torchrun reported the launch as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
