"""Every Dataset in helpers/ gives the same samples through 2 workers, spawned or forkserver's, as with none.

``fork`` (Linux up to Python 3.13) copies the parent process, so almost anything works in its workers.
``spawn`` (macOS, Windows) and ``forkserver`` (Linux from Python 3.14) pickle the dataset into each
worker: a class defined in ``__main__`` or an open file handle breaks there, and under forkserver on Linux
a DataLoader worker fails to start from about 246 tensors (one file descriptor each), with "Invalid
argument" or "too many fds". Each Dataset is read here under both, the shard streams under one (PICKLING).
"""

import bisect
import io
import multiprocessing
import pickle
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from helpers.datasets import InMemoryDataset, Sample, SegmentationDataset
from helpers.ddp_train import Named
from helpers.formats import (
    HDF5Dataset,
    MemmapDataset,
    ShardStream,
    decode_shard_sample,
    shard_url,
    write_hdf5,
    write_memmap,
    write_shards,
)
from helpers.gpu_decode import EncodedPairs, write_masks
from helpers.paths import data_dir

METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
# The streams' tests need one of them: both pickle the stream into each worker and send its shared epoch
# the same way, and forkserver's environment (set when its server started) is the stricter for the rank.
# Where there is one, forkserver: its workers start in a fraction of a second (its server imported torch
# once: conftest.py), spawned ones in seconds.
PICKLING = METHODS[-1]
SIZE = 32  # side of the pre-decoded formats


@pytest.fixture(scope="module")
def files() -> SegmentationDataset:
    """Twelve validation pairs of data/shapes, of several sizes."""
    dataset = SegmentationDataset(data_dir("shapes"), split="val")
    dataset.image_paths, dataset.mask_paths = dataset.image_paths[:12], dataset.mask_paths[:12]
    return dataset


def numbered_samples(count: int) -> list[Sample]:
    """``count`` tiny samples of varying size, each carrying its own number in its pixels."""
    samples = []
    for i in range(count):
        height, width = 2 + i % 3, 3 + i % 5
        pixel = torch.tensor([i % 256, i // 256, 7], dtype=torch.uint8)
        image = pixel[:, None, None].repeat(1, height, width)
        mask = torch.full((height, width), i % 4)
        samples.append(Sample(tv_tensors.Image(image), tv_tensors.Mask(mask)))
    return samples


@pytest.fixture(scope="module")
def many() -> InMemoryDataset:
    """2,000 samples in memory: as a tensor each, far more than a forkserver worker can receive (~250)."""
    return InMemoryDataset(numbered_samples(2000))


@pytest.fixture(scope="module")
def datasets(files, many, tmp_path_factory) -> dict[str, Dataset]:
    """Each Dataset of helpers/ over the same twelve pairs, and every 200th sample of the 2,000 in memory
    (each worker still receives all 2,000: the Subset holds the whole dataset). EncodedPairs (06's way (c))
    gives JPEG bytes and a mask, with masks decoded or stored decoded."""
    folder = tmp_path_factory.mktemp("formats")
    write_memmap(files, folder / "memmap", SIZE)
    write_hdf5(files, folder / "data.h5", SIZE)
    pairs = list(zip(files.image_paths, files.mask_paths, strict=True))
    write_masks(pairs, folder / "masks", (SIZE, SIZE))
    return {"SegmentationDataset": files, "InMemoryDataset": InMemoryDataset(files, v2.CenterCrop(100)),
            "InMemoryDataset of 2,000": Subset(many, range(0, 2000, 200)),
            "MemmapDataset": MemmapDataset(folder / "memmap"), "HDF5Dataset": HDF5Dataset(folder / "data.h5"),
            "ddp_train.Named": Named(files), "EncodedPairs": EncodedPairs(pairs),
            "EncodedPairs, masks stored": EncodedPairs(pairs, masks=folder / "masks")}


def read_all(dataset, **loader_options) -> list[Sample]:
    """Every sample of one epoch, one at a time (``batch_size=None``: samples of any size)."""
    return list(DataLoader(dataset, batch_size=None, **loader_options))


def tensors_sent(obj: object) -> int:
    """How many tensors pickling ``obj`` sends along, as a spawned or forkserver worker receives it (on
    Linux, a file descriptor for each one's storage). Counts them without copying their bytes."""
    seen: list[torch.Tensor] = []

    class Counting(pickle.Pickler):
        def persistent_id(self, value: object) -> int | None:
            if isinstance(value, torch.Tensor):
                seen.append(value)
                return len(seen)  # a reference in place of the tensor
            return None

    Counting(io.BytesIO()).dump(obj)
    return len(seen)


def test_in_memory_data_is_a_few_big_tensors(many):
    assert tensors_sent(numbered_samples(5)) == 10  # the count finds tensors in lists: image and mask each
    assert tensors_sent(many) <= 4  # whatever the number of samples: a file descriptor each under forkserver


@pytest.mark.parametrize("method", METHODS)
def test_every_dataset_gives_through_two_workers_what_it_gives_alone(datasets, method):
    """One loader over all of them, so that each start method starts its (slow to spawn) workers once."""
    names, together = list(datasets), ConcatDataset(list(datasets.values()))
    got = read_all(together, num_workers=2, multiprocessing_context=method)
    assert len(got) == len(together) == 7 * 12 + 10
    for index, (sample, want) in enumerate(zip(got, read_all(together))):  # image first, mask second
        name = names[bisect.bisect_right(together.cumulative_sizes, index)]
        assert torch.equal(sample[0], want[0]), f"{name}: {index}"
        assert torch.equal(sample[1], want[1]), f"{name}: {index}"
        assert sample[1].dtype == want[1].dtype, name


def as_counter(samples: list[Sample]) -> Counter:
    """The samples' contents, in any order."""
    return Counter((s.image.numpy().tobytes(), s.mask.numpy().tobytes()) for s in samples)


def test_shard_streams_give_through_two_workers_what_they_give_alone(files, tmp_path):
    """The series' ShardStream (05) and the webdataset pipeline of helpers.ddp_train (07)."""
    shards = write_shards(files, tmp_path, per_shard=4)
    webdataset = (wds.WebDataset([shard_url(shard) for shard in shards], shardshuffle=False,
                                 empty_check=False).map(decode_shard_sample))
    for stream in (ShardStream(shards), webdataset):
        got, want = read_all(stream, num_workers=2, multiprocessing_context=PICKLING), read_all(stream)
        assert len(got) == len(want) == 12
        assert as_counter(got) == as_counter(want)  # each worker streams its own shards: orders interleave


def test_set_epoch_reaches_persistent_workers(files, tmp_path):
    """persistent_workers=True keeps each worker's copy of the stream from the first epoch: set_epoch in
    the main process must still change what they read (ShardStream keeps the epoch in shared memory)."""
    shards = write_shards(files, tmp_path, per_shard=1)  # 12 shards of one pair: the order is the shards'

    def order(loader: DataLoader) -> list[bytes]:
        return [sample.mask.numpy().tobytes() for sample in loader]

    stream = ShardStream(shards, shuffle=1, seed=0)  # a buffer of 1: samples in shard order
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True,
                        multiprocessing_context=PICKLING)
    first = order(loader)
    stream.set_epoch(1)
    second = order(loader)  # the same workers, still alive
    fresh = ShardStream(shards, shuffle=1, seed=0)
    fresh.set_epoch(1)
    assert second != first and second == order(DataLoader(fresh, batch_size=None, num_workers=2,
                                                           multiprocessing_context=PICKLING))


def test_workers_of_a_rank_read_only_that_ranks_shards(files, tmp_path, monkeypatch):
    """A spawned or forkserver worker has no process group: it finds its rank in torchrun's variables."""
    shards = write_shards(files, tmp_path, per_shard=3)  # 4 shards of 3 pairs
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them for rank 1 of 2
    stream = ShardStream(shards)
    got, mine = read_all(stream, num_workers=2, multiprocessing_context=PICKLING), read_all(stream)
    monkeypatch.setenv("RANK", "0")
    others = read_all(ShardStream(shards))
    assert len(got) == len(others) == 6  # rank 1's two shards, with workers as without; not rank 0's
    assert as_counter(got) == as_counter(mine) and not as_counter(got) & as_counter(others)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def save_as_0_255(path: Path) -> None:
    objects = np.array(Image.open(path)) > 0
    Image.fromarray(objects.astype(np.uint8) * 255).save(path)  # a binary mask stored as 0 and 255


@pytest.mark.parametrize("damage, folder, message", [(truncate, "images", "Cannot read image"),
                                                     (save_as_0_255, "masks", "holds only 0 and 255")])
def test_an_error_in_a_worker_names_the_file(files, tmp_path, damage, folder, message):
    for sub, paths in (("images", files.image_paths[:4]), ("masks", files.mask_paths[:4])):
        (tmp_path / sub).mkdir()
        for path in map(Path, paths):
            shutil.copy(path, tmp_path / sub / path.name)
    damaged = sorted((tmp_path / folder).iterdir())[3]
    damage(damaged)
    loader = DataLoader(SegmentationDataset(tmp_path), batch_size=None, num_workers=2,
                        multiprocessing_context=PICKLING)
    batches = iter(loader)
    with pytest.raises(ValueError, match=message) as error:
        list(batches)
    text = str(error.value)
    batches._shutdown_workers()  # the traceback keeps the iterator alive: without this its workers are
    # reaped later, while another loader runs, after two 5-second timeouts
    assert "in DataLoader worker process" in text
    assert str(tmp_path / folder / damaged.name) in text  # the whole path, as the worker saw it


@pytest.mark.skipif("forkserver" not in METHODS
                    or torch.multiprocessing.get_sharing_strategy() != "file_descriptor",
                    reason="the limit of Linux's forkserver, where each storage travels as a descriptor")
def test_forkserver_refuses_a_few_too_many_tensors_with_valueerror_or_oserror(monkeypatch):
    """00's section on descriptors, and the stand-in of its Exercise 1: forkserver sends its four
    descriptors and one per storage in one message. From 252 tensors forkserver's own count refuses them,
    with ValueError; Linux carries at most 253 (SCM_MAX_FD), so 250 make ``start()`` raise OSError (up to
    Python 3.13 the forkserver stops too: a later start starts a new one). Last in this file: the new
    server imports nothing, which starts it in a fraction of a second and would slow later workers."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")

    def start(count: int) -> int | None:
        worker = context.Process(args=([torch.zeros(2) for _ in range(count)],))
        worker.start()
        worker.join(timeout=60)
        return worker.exitcode

    with pytest.raises(ValueError, match="too many fds"):
        start(252)
    assert start(249) == 0  # 4 + 249 = 253 descriptors: the most one message carries (a DataLoader adds 4)
    with pytest.raises(OSError, match="Invalid argument"):
        start(250)
    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", [])  # a new server imports nothing
    for _ in range(100):  # up to 3.13 the forkserver stopped with the refused message: start a new one
        try:
            assert start(0) == 0
            break
        except (OSError, EOFError):  # refused or cut off by the old one as it stops: wait, try again
            time.sleep(0.1)
    else:
        pytest.fail("no new forkserver")
