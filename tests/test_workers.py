"""Every Dataset in helpers/ gives the same samples through 2 workers under spawn and forkserver as with none.

``fork`` (Linux up to Python 3.13) copies the parent process, so almost anything works in its workers.
``spawn`` (macOS, Windows) and ``forkserver`` (Linux from Python 3.14) pickle the dataset into each
worker: a class defined in ``__main__`` or an open file handle breaks there, and under forkserver on Linux
more than 256 tensors (one file descriptor each) fail with "too many fds". Each Dataset is read here under
both.
"""

import multiprocessing
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from helpers.datasets import InMemoryDataset, Sample, SegmentationDataset
from helpers.formats import (HDF5Dataset, MemmapDataset, ShardStream, write_hdf5, write_memmap,
                             write_shards)
from helpers.paths import data_dir

METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
SIZE = 32  # side of the pre-decoded formats
# Workers started by this test's forkserver fork from a server that has imported these already, which
# saves each worker the imports; what crosses to the worker (the pickled dataset) is unchanged.
multiprocessing.set_forkserver_preload(["torch", "torchvision", "helpers.formats"])


@pytest.fixture(scope="module")
def files() -> SegmentationDataset:
    """Twelve validation pairs of data/shapes, of several sizes."""
    dataset = SegmentationDataset(data_dir("shapes"), split="val")
    dataset.image_paths, dataset.mask_paths = dataset.image_paths[:12], dataset.mask_paths[:12]
    return dataset


@pytest.fixture(scope="module")
def datasets(files, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("formats")
    write_memmap(files, folder / "memmap", SIZE)
    write_hdf5(files, folder / "data.h5", SIZE)
    shards = write_shards(files, folder / "shards", per_shard=4)
    return {"SegmentationDataset": files, "InMemoryDataset": InMemoryDataset(files, v2.CenterCrop(100)),
            "MemmapDataset": MemmapDataset(folder / "memmap"), "HDF5Dataset": HDF5Dataset(folder / "data.h5"),
            "ShardStream": ShardStream(shards)}


def read_all(dataset, **loader_options) -> list[Sample]:
    """Every sample of one epoch, one at a time (``batch_size=None``: samples of any size)."""
    return list(DataLoader(dataset, batch_size=None, **loader_options))


def as_counter(samples: list[Sample]) -> Counter:
    return Counter((s.image.numpy().tobytes(), s.mask.numpy().tobytes()) for s in samples)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["SegmentationDataset", "InMemoryDataset", "MemmapDataset", "HDF5Dataset",
                                  "ShardStream"])
def test_two_workers_give_what_no_workers_give(datasets, name, method):
    dataset = datasets[name]
    expected = read_all(dataset)
    got = read_all(dataset, num_workers=2, multiprocessing_context=method)
    assert len(got) == len(expected) == 12
    if name == "ShardStream":  # each worker streams its own shards, so the order interleaves
        assert as_counter(got) == as_counter(expected)
    else:
        assert all(torch.equal(g.image, e.image) and torch.equal(g.mask, e.mask) for g, e in zip(got, expected))


def numbered_samples(count: int) -> list[Sample]:
    """``count`` tiny samples of varying size, each carrying its own number in its pixels."""
    samples = []
    for i in range(count):
        height, width = 2 + i % 3, 3 + i % 5
        image = torch.tensor([i % 256, i // 256, 7], dtype=torch.uint8)[:, None, None].expand(3, height, width)
        samples.append(Sample(tv_tensors.Image(image.clone()), tv_tensors.Mask(torch.full((height, width), i % 4))))
    return samples


@pytest.mark.parametrize("method", METHODS)
def test_a_large_in_memory_dataset_reaches_workers_whole(method):
    samples = numbered_samples(2000)
    dataset = InMemoryDataset(samples)
    tensors = [value for value in vars(dataset).values() if isinstance(value, torch.Tensor)]
    assert len(tensors) <= 4  # a few big arrays, whatever the number of samples: a handle each
    got = read_all(dataset, num_workers=2, multiprocessing_context=method)
    assert len(got) == 2000
    for want, sample in zip(samples, got):
        assert torch.equal(sample.image, want.image) and torch.equal(sample.mask, want.mask)
        assert sample.mask.dtype == torch.int64


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def save_as_0_255(path: Path) -> None:
    objects = np.array(Image.open(path)) > 0
    Image.fromarray(objects.astype(np.uint8) * 255).save(path)  # a binary mask stored as 0 and 255


@pytest.mark.parametrize("damage, folder, message", [(truncate, "images", "Cannot read image"),
                                                     (save_as_0_255, "masks", r"has values \[255\] outside")])
def test_an_error_in_a_worker_names_the_file(files, tmp_path, damage, folder, message):
    for sub, paths in (("images", files.image_paths[:4]), ("masks", files.mask_paths[:4])):
        (tmp_path / sub).mkdir()
        for path in map(Path, paths):
            shutil.copy(path, tmp_path / sub / path.name)
    damaged = sorted((tmp_path / folder).iterdir())[3]
    damage(damaged)
    loader = DataLoader(SegmentationDataset(tmp_path), batch_size=None, num_workers=2,
                        multiprocessing_context=METHODS[-1])
    with pytest.raises(ValueError, match=message) as error:
        list(loader)
    assert "in DataLoader worker process" in str(error.value)
    assert str(tmp_path / folder / damaged.name) in str(error.value)  # the whole path, as the worker saw it
