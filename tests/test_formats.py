"""Each format gives back exactly what was written, in workers too, and shards split cleanly."""

import functools
import gzip
import io
import pickle
import re
import shutil
import sys
from collections import Counter
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from torchvision.transforms import v2

from helpers.datasets import SegmentationDataset, check_mask_array
from helpers.formats import (
    HDF5Dataset,
    MemmapDataset,
    PinnedMemmapBatches,
    ShardStream,
    check_whole_tar,
    copied_shard,
    decode_shard_sample,
    shard_url,
    write_hdf5,
    write_memmap,
    write_shards,
)
from helpers.paths import data_dir

SIZE = 32


WINDOWS_KEEPS_MAPPED = pytest.mark.skipif(sys.platform == "win32", reason="Windows refuses to cut short, "
                                          "replace or delete a file that is mapped")


@pytest.fixture(scope="module")
def source_dataset():
    dataset = SegmentationDataset(data_dir("shapes"), split="val")
    dataset.image_paths, dataset.mask_paths = dataset.image_paths[:20], dataset.mask_paths[:20]
    return dataset


def expected(dataset, i):
    image, mask = v2.Resize((SIZE, SIZE), antialias=True)(*dataset[i])
    return image, mask.to(torch.uint8)


def test_memmap_round_trip_single_and_batched(tmp_path, source_dataset):
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    dataset = MemmapDataset(tmp_path / "mm")
    assert len(dataset) == 20
    dataset[0]
    assert all(isinstance(array, np.memmap) for array in dataset.arrays)  # mapped, not read into memory
    for i in (0, 7, 19):
        image, mask = dataset[i]
        want_image, want_mask = expected(source_dataset, i)
        assert torch.equal(image, want_image) and torch.equal(mask, want_mask)
    batch = dataset[[5, 2, 9]]  # a list reads a whole batch, in the order asked
    assert batch.image.shape == (3, 3, SIZE, SIZE)
    for row, i in enumerate([5, 2, 9]):
        assert torch.equal(batch.image[row], dataset[i].image)
        assert torch.equal(batch.mask[row], dataset[i].mask)


def test_memmap_batches_through_a_loader_with_workers(tmp_path, source_dataset):
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    dataset = MemmapDataset(tmp_path / "mm")
    dataset[0]  # open the map here first: the workers must not inherit it through pickling
    assert pickle.loads(pickle.dumps(dataset)).arrays is None
    sampler = BatchSampler(SequentialSampler(dataset), batch_size=8, drop_last=False)
    batches = list(DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=2))
    assert [len(b.image) for b in batches] == [8, 8, 4]
    assert torch.equal(torch.cat([b.mask for b in batches]), dataset[list(range(20))].mask)


def test_hdf5_round_trip(tmp_path, source_dataset):
    import h5py

    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    dataset = HDF5Dataset(tmp_path / "data.h5")
    assert len(dataset) == 20
    with h5py.File(tmp_path / "data.h5") as file:  # a chunk per sample: reading one reads no other
        assert file["images"].chunks == (1, 3, SIZE, SIZE) and file["masks"].chunks == (1, SIZE, SIZE)
        assert file["images"].dtype == file["masks"].dtype == np.uint8
    dataset[0]  # opens a handle in this process; workers must not use it (the test below, test_workers.py)
    assert pickle.loads(pickle.dumps(dataset)).file is None
    for i in (0, 13):
        assert torch.equal(dataset[i].image, expected(source_dataset, i)[0])
        assert torch.equal(dataset[i].mask, expected(source_dataset, i)[1])
    dataset.close()
    assert dataset.file is None and torch.equal(dataset[13].image, expected(source_dataset, 13)[0])
    batch = dataset[[13, 0, 7]]  # a list reads a whole batch into one array, in the order asked
    for row, i in enumerate([13, 0, 7]):
        assert torch.equal(batch.image[row], dataset[i].image)
        assert torch.equal(batch.mask[row], dataset[i].mask)


class HandleReport(HDF5Dataset):
    """Each sample with the HDF5 identifier of the handle that read it."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return super().__getitem__(index).image, self.file.id.id


@pytest.mark.skipif(sys.platform != "linux", reason="fork: Linux only here")
def test_a_forked_worker_reads_hdf5_through_a_handle_of_its_own(tmp_path, source_dataset):
    """Under fork nothing is pickled: the worker inherits the handle this process opened, and must open
    another (HDF5 does not support one handle in two processes)."""
    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    dataset = HandleReport(tmp_path / "data.h5")
    here = dataset[0][1]  # this process's handle, open before the fork
    loader = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="fork")
    worker = [handle for _, handle in loader]
    assert len(worker) == 20 and len(set(worker)) == 1 and worker[0] != here
    assert dataset[1][1] == here  # and this process keeps its own


def test_writing_shards_again_leaves_none_of_the_earlier_ones(tmp_path, source_dataset):
    """A folder read whole (ShardStream of its *.tar, ddp_train --shards) must hold one write's shards."""
    write_shards(source_dataset, tmp_path, per_shard=3)  # 7 shards
    (tmp_path / "notes.tar.txt").write_text("kept")
    again = write_shards(source_dataset, tmp_path, per_shard=10)
    assert sorted(tmp_path.glob("shard-*.tar")) == again and len(again) == 2
    assert (tmp_path / "notes.tar.txt").is_file()  # only the shards a write makes


def test_shards_round_trip_without_re_encoding(tmp_path, source_dataset):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=6)
    assert len(shards) == 4
    samples = list(ShardStream(shards))
    assert len(samples) == 20
    for i in (0, 19):
        assert torch.equal(samples[i].image, source_dataset[i].image)
        assert torch.equal(samples[i].mask, source_dataset[i].mask)


def test_shards_by_count_differ_by_one_pair_at_most_and_keep_the_order(tmp_path, source_dataset):
    import tarfile

    shards = write_shards(source_dataset, tmp_path / "shards", shards=6)  # 20 pairs: 3 or 4 in each
    sizes = []
    for path in shards:
        with tarfile.open(path) as tar:
            sizes.append(len(tar.getnames()) // 2)
    assert len(shards) == 6 and sum(sizes) == 20 and max(sizes) - min(sizes) <= 1
    samples = list(ShardStream(shards))
    assert torch.equal(samples[19].mask, source_dataset[19].mask)
    # never an empty shard; the folder may be a str, as in the README's one-line command
    assert len(write_shards(source_dataset, str(tmp_path / "more"), shards=50)) == 20


def test_shards_hold_no_pax_header_per_file(tmp_path, source_dataset):
    import tarfile

    path = write_shards(source_dataset, tmp_path / "shards", per_shard=20)[0]
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert all(not member.pax_headers for member in members)  # whole seconds: no 1 KB extra per file
    assert {(member.uid, member.gid, member.uname, member.gname) for member in members} == {(0, 0, "", "")}
    payload = sum(512 + -(-member.size // 512) * 512 for member in members)  # header, padded data
    assert path.stat().st_size <= payload + 2 * 512 + tarfile.RECORDSIZE  # end blocks, last record


def test_shard_url_names_a_windows_path_so_that_webdataset_opens_it_as_a_file(monkeypatch):
    """webdataset reads every shard name as a URL: to it a Windows path has the scheme c, which it cannot
    open. shard_url's file: URL it opens as the path itself (07)."""
    from webdataset.cache import StreamingOpen

    windows = PureWindowsPath(r"C:\data\shards\shard-00000.tar")
    with pytest.raises(ValueError, match="no gopen handler"):
        list(StreamingOpen()([str(windows)]))
    opened = []
    monkeypatch.setattr("webdataset.cache.open", lambda path, mode: opened.append(path), raising=False)
    list(StreamingOpen()([shard_url(windows)]))
    assert opened == ["C:/data/shards/shard-00000.tar"]


def test_shard_url_keeps_a_network_path_whole_and_refuses_what_a_url_would_cut_off(monkeypatch):
    from webdataset.cache import StreamingOpen

    opened = []
    monkeypatch.setattr("webdataset.cache.open", lambda path, mode: opened.append(path), raising=False)
    list(StreamingOpen()([shard_url(PureWindowsPath(r"\\server\share\shard-00000.tar"))]))
    assert opened == ["//server/share/shard-00000.tar"]  # not a host "server" and a path /share/...
    for extended in (r"\\?\C:\data\shard-00000.tar", r"\\?\UNC\server\share\shard-00000.tar"):
        with pytest.raises(ValueError, match="extended-length path.*Move the shards to a shorter path"):
            shard_url(PureWindowsPath(extended))
    for folder in ("project #2", "what?"):
        with pytest.raises(ValueError, match="'#' or '\\?' in a name as part of a URL. Move the shards"):
            shard_url(Path(folder) / "shard-00000.tar")
    assert shard_url("shards/shard-00000.tar") == "file:shards/shard-00000.tar"  # a str, as a Path


def test_shards_record_no_owner_so_no_large_id_or_foreign_name_adds_a_header(tmp_path):
    """A managed Mac's user id (2**21 or more) or a name that is not ASCII needs a PAX header of 1 KB;
    write_shards records no owner at all."""
    import tarfile

    from helpers.formats import _whole_seconds

    info = tarfile.TarInfo("0001.jpg")
    info.uid, info.gid, info.uname, info.gname, info.mtime = 1234567890, 1234567890, "zoë", "staff", 1.5
    assert len(info.tobuf(tarfile.PAX_FORMAT)) > 512  # as tarfile would write it
    assert len(_whole_seconds(info).tobuf(tarfile.PAX_FORMAT)) == 512  # one plain header


def test_writing_over_a_file_still_open_says_to_let_go_of_it(tmp_path, source_dataset, monkeypatch):
    """Windows refuses to remove a file that is mapped or open, such as one a MemmapDataset has read."""
    def refuse(path, missing_ok=False):
        raise PermissionError(13, "The process cannot access the file")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(PermissionError, match=r"images\.npy: it is still open .*its DataLoader and sampler"
                       r".*gc\.collect\(\), or restart the kernel"):
        write_memmap(source_dataset, tmp_path, 32)
    with pytest.raises(PermissionError, match=r"data\.h5: it is still open"):
        write_hdf5(source_dataset, tmp_path / "data.h5", 32)


def test_shard_stream_applies_its_transform_to_image_and_mask_of_every_sample(tmp_path, source_dataset):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=6)
    plain = list(ShardStream(shards))
    light = list(ShardStream(shards, mask_dtype=torch.uint8))  # 8x fewer bytes to hand between processes
    assert {s.mask.dtype for s in plain} == {torch.int64} and {s.mask.dtype for s in light} == {torch.uint8}
    assert all(torch.equal(s.mask, t.mask.long()) for s, t in zip(plain, light))
    flipped = list(ShardStream(shards, transform=v2.RandomHorizontalFlip(p=1.0)))
    assert len(flipped) == len(plain) == 20
    assert not any(torch.equal(s.image, s.image.flip(-1)) for s in plain)  # a flip shows in every image
    for sample, original in zip(flipped, plain):
        assert torch.equal(sample.image, original.image.flip(-1))
        assert torch.equal(sample.mask, original.mask.flip(-1))


@pytest.mark.parametrize("shuffle", [0, 8])
def test_every_sample_once_per_epoch_across_workers(tmp_path, source_dataset, shuffle):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=5)
    stream = ShardStream(shards, shuffle=shuffle)
    seen = Counter()
    for sample in DataLoader(stream, batch_size=None, num_workers=2):  # native sizes differ: no batching
        seen[tuple(sample.mask.flatten()[:64].tolist()) + (int(sample.mask.sum()),)] += 1
    want = Counter(tuple(s.mask.flatten()[:64].tolist()) + (int(s.mask.sum()),) for s in source_dataset)
    assert seen == want


def test_shuffling_changes_the_order_but_not_the_content(tmp_path, source_dataset):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=5)
    plain = [int(s.mask.sum()) for s in ShardStream(shards)]
    shuffled = [int(s.mask.sum()) for s in ShardStream(shards, shuffle=8, seed=1)]
    assert shuffled != plain and sorted(shuffled) == sorted(plain)
    (whole,) = write_shards(source_dataset, tmp_path / "one", per_shard=len(source_dataset))
    plain = [int(s.mask.sum()) for s in ShardStream([whole])]  # one shard: only the buffer can shuffle
    shuffled = [int(s.mask.sum()) for s in ShardStream([whole], shuffle=8, seed=1)]
    assert shuffled != plain and sorted(shuffled) == sorted(plain)
    stream = ShardStream(shards, shuffle=8, seed=1)
    first = stream.my_shards()
    stream.set_epoch(1)  # a new epoch: the shards in another order
    assert stream.my_shards() != first and sorted(stream.my_shards()) == sorted(first)


def test_unpaired_files_in_a_shard_are_named(tmp_path, source_dataset):
    import tarfile

    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(Path(source_dataset.image_paths[0]), arcname="0001.jpg")
    with pytest.raises(ValueError, match=r"bad.tar has unpaired or stray files \['0001.jpg'\]: a shard "
                                         r"holds, for each NAME, an image and NAME.png, and nothing else"):
        list(ShardStream([tmp_path / "bad.tar"]))


def test_a_stray_file_in_a_shard_is_named_not_skipped(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(first_pair(source_dataset), tmp_path / "shards")
    stem = Path(source_dataset.image_paths[0]).stem
    info = tarfile.TarInfo(f"{stem}.txt")
    with pytest.raises(ValueError, match=rf"bad.tar has unpaired or stray files \['{stem}.txt'\]"):
        list(ShardStream([repack(shard, tmp_path / "bad.tar", extra=[(info, b"notes")])]))


def test_a_shard_of_files_in_a_dotted_folder_is_read_as_webdataset_reads_it(tmp_path, source_dataset):
    """webdataset ends a sample's name at the first dot after the last /: v1.0/0001.jpg is v1.0/0001."""
    import tarfile

    (shard,) = write_shards(first_pair(source_dataset), tmp_path / "shards")
    with tarfile.open(shard) as tar, tarfile.open(tmp_path / "foldered.tar", "w") as out:
        for member in tar:
            data = tar.extractfile(member)
            member.name = f"v1.0/{member.name}"
            out.addfile(member, data)
    (expected,), (sample,) = ShardStream([shard]), ShardStream([tmp_path / "foldered.tar"])
    assert torch.equal(sample.image, expected.image) and torch.equal(sample.mask, expected.mask)


def test_distributed_ranks_read_disjoint_shards_that_cover_all(tmp_path, source_dataset, monkeypatch):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=3)  # 7 shards
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        per_rank.append(ShardStream(shards, shuffle=4, seed=3).my_shards())
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(shards)
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)  # no process group yet:
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for every rank
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        assert ShardStream(shards, shuffle=4, seed=3).my_shards() == per_rank[rank]


def test_every_rank_splits_the_shards_in_name_order_whatever_order_it_lists_them_in(
        tmp_path, source_dataset, monkeypatch):
    """Two nodes that glob the same folder may list it in two orders: each would read half of its own."""
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=3)  # 7 shards
    assert ShardStream(shards[::-1]).shards == shards
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = []
    for rank, listed in [(0, shards), (1, shards[::-1])]:
        monkeypatch.setenv("RANK", str(rank))
        per_rank.append(ShardStream(listed, shuffle=4, seed=3).my_shards())
    assert sorted(per_rank[0] + per_rank[1]) == shards  # each shard read once, by one rank


def test_a_shard_listed_twice_is_refused_by_name(tmp_path, source_dataset, monkeypatch):
    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=5)
    with pytest.raises(ValueError, match=r"shard-00001\.tar is listed 2 times among the shards: its samples "
                                         r"would be read as many times each epoch\. List each shard once\."):
        ShardStream([*shards, str(shards[1])])  # a str and a Path of one file
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"shard-00001\.tar is listed 2 times"):
        ShardStream([*shards, Path("shards/../shards/shard-00001.tar")])  # another path to it
    for shard in shards:  # the same shards compressed, as a dataset may be downloaded
        (tmp_path / f"{shard.name}.gz").write_bytes(gzip.compress(shard.read_bytes(), mtime=0))
    for suffix in (".tar", ".tar.gz"):  # a download saved twice, beside the first
        folder = tmp_path / "shards" if suffix == ".tar" else tmp_path
        shutil.copy(folder / f"shard-00001{suffix}", folder / f"shard-00001 (1){suffix}")
        with pytest.raises(ValueError, match=rf"shard-00001 \(1\){suffix} and \S*shard-00001{suffix} are "
                                             "the same size and begin with the same bytes: a copy"):
            ShardStream(sorted(folder.glob(f"*{suffix}")))


def test_a_copied_shard_is_found_past_empty_and_damaged_ones(tmp_path, source_dataset):
    """Shards too short to be a tar, or of zeros only, are refused when read, not taken for copies of
    each other; the check goes on past them."""
    (shard,) = write_shards(source_dataset, tmp_path, per_shard=20)
    for name, data in [("a-empty.tar", bytes(10240)), ("b-empty.tar", bytes(10240)),
                       ("c-cut.tar", b"not a tar"), ("d-cut.tar", b"not a tar"),
                       ("shard-00000 (1).tar", shard.read_bytes())]:
        (tmp_path / name).write_bytes(data)
    shards = sorted(tmp_path.glob("*.tar"))  # the copy before its shard: " (1)" sorts before ".tar"
    assert copied_shard(shards).startswith(f"{tmp_path / 'shard-00000 (1).tar'} and {shard} are the same")
    assert copied_shard(shards[:-1]) is None


def test_a_stream_sent_to_a_worker_keeps_its_rank_and_its_workers_split_the_rank_s_shards(
        tmp_path, source_dataset, monkeypatch):
    """A worker reads the rank the stream was pickled under (a forkserver's environment may predate the
    launch), then takes every num_workers-th of that rank's shards."""
    from types import SimpleNamespace

    shards = write_shards(source_dataset, tmp_path / "shards", per_shard=3)  # 7 shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sent = pickle.loads(pickle.dumps(ShardStream(shards)))  # as a worker receives it
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert sent.my_shards() == shards[1::2]
    for worker in (0, 1):  # 1 and 5, then 3: every second of the rank's own
        monkeypatch.setattr("helpers.formats.get_worker_info",
                            lambda worker=worker: SimpleNamespace(id=worker, num_workers=2))
        assert sent.my_shards() == shards[1::2][worker::2]


def test_an_empty_shard_is_named(tmp_path):
    import tarfile

    tarfile.open(tmp_path / "empty.tar", "w").close()
    with pytest.raises(ValueError, match=r"empty.tar holds no samples: copy or write the shard again"):
        list(ShardStream([tmp_path / "empty.tar"]))


def test_a_shard_sample_without_its_mask_is_named():
    with pytest.raises(ValueError, match=r"shard-00003\.tar: sample '0042' has \['jpg'\]"):
        decode_shard_sample({"__key__": "0042", "__url__": "shard-00003.tar", "jpg": b""})
    with pytest.raises(ValueError, match=r"sample 'img' has \['1.jpg', 'jpg', 'png'\]: webdataset ends a "
                                         r"sample's name at its first dot.*Rename them without the dot"):
        decode_shard_sample({"__key__": "img", "jpg": b"", "png": b"", "1.jpg": b""})  # img.1.jpg as well
    with pytest.raises(ValueError, match=r"sample '0042' has \['jpg', 'png', 'txt'\]: .*and nothing else"):
        decode_shard_sample({"__key__": "0042", "jpg": b"", "png": b"", "txt": b""})  # a stray 0042.txt
    image = (data_dir("shapes") / "images" / "0001.jpg").read_bytes()
    mask = (data_dir("shapes") / "masks" / "0001.png").read_bytes()
    got, label, name = decode_shard_sample({"__key__": "0001", "jpg": image, "png": mask}, size=(32, 32))
    assert got.shape == (3, 32, 32) and label.shape == (32, 32) and label.dtype == torch.uint8
    assert name == "0001" and type(got) is torch.Tensor
    with pytest.raises(ValueError, match=r"^a shard: sample '0001': Cannot read image 0001.jpg: .*damaged"):
        decode_shard_sample({"__key__": "0001", "jpg": b"not a JPEG", "png": mask})


def test_disk_megabytes_counts_a_file_or_a_folder(tmp_path):
    from helpers.formats import disk_megabytes

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"\0" * 2**20)
    (tmp_path / "sub" / "b.bin").write_bytes(b"\0" * 2**19)
    assert disk_megabytes(tmp_path / "a.bin") == 1.0 and disk_megabytes(tmp_path) == 1.5


def test_a_write_that_stops_half_way_leaves_nothing_a_reader_takes_for_whole(tmp_path, source_dataset):

    write_memmap(source_dataset, tmp_path / "mm", SIZE)  # an older, whole copy
    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    broken = SegmentationDataset(data_dir("shapes"), split="val")
    broken.mask_paths = [*source_dataset.mask_paths[:3], str(tmp_path / "missing.png")]
    broken.image_paths = source_dataset.image_paths[:4]
    for write, path in [(write_memmap, tmp_path / "mm"), (write_hdf5, tmp_path / "data.h5")]:
        with pytest.raises(FileNotFoundError, match="missing.png was listed"):
            write(broken, path, SIZE)
        reader = MemmapDataset if write is write_memmap else HDF5Dataset
        with pytest.raises(ValueError,
                           match=rf"^Cannot (map|read) {re.escape(str(path))}.*again with {write.__name__}"):
            reader(path)
    assert not list((tmp_path / "mm").iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["mm"]


def test_a_write_whose_second_map_cannot_be_made_leaves_no_partial_file(tmp_path, source_dataset,
                                                                      monkeypatch):
    maps = []

    def open_memmap(path, *args, **kwargs):  # the masks' map fails, as on a full disk
        if maps:
            raise OSError(28, "No space left on device")
        maps.append(path)  # the path: a map kept here would keep the file open (Windows refuses to delete it)
        return real(path, *args, **kwargs)

    real = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)
    with pytest.raises(OSError, match="No space left"):
        write_memmap(source_dataset, tmp_path / "mm", SIZE)
    assert maps and not list((tmp_path / "mm").iterdir())


def test_arrays_that_do_not_pair_up_are_refused(tmp_path):
    import h5py

    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", np.zeros((6, 3, 8, 8), np.uint8))
    np.save(tmp_path / "mm" / "masks.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"mm: images \(6, 3, 8, 8\) and masks \(4, 8, 8\) do not pair up"):
        MemmapDataset(tmp_path / "mm")
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["images"], file["masks"] = np.zeros((4, 3, 16, 16), np.uint8), np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"data.h5: images \(4, 3, 16, 16\) and masks \(4, 8, 8\) do not"):
        HDF5Dataset(tmp_path / "data.h5")
    with h5py.File(tmp_path / "data.h5", "w") as file:  # the same size, one mask short
        file["images"], file["masks"] = np.zeros((4, 3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"data.h5: images \(4, 3, 8, 8\) and masks \(3, 8, 8\) do not"):
        HDF5Dataset(tmp_path / "data.h5")


@pytest.mark.parametrize("images, masks, refused", [
    (np.zeros((4, 3, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8),
     r"images\S* holds float32 \(4, 3, 8, 8\), not the uint8 images \[N, 3, H, W\] \(RGB\)"),
    (np.zeros((4, 1, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8),
     r"images\S* holds uint8 \(4, 1, 8, 8\), not the uint8 images \[N, 3, H, W\] \(RGB\)"),
    (np.zeros((4, 3, 8, 8), np.uint8), np.full((4, 8, 8), 300, np.int64),
     r"masks\S* holds int64 \(4, 8, 8\), not the uint8 masks \[N, H, W\]"),
], ids=["float images", "one channel", "int64 masks"])
def test_arrays_other_than_what_the_writers_write_are_refused_by_name(tmp_path, images, masks, refused):
    """Hand-made files (floats 0..1, 16-bit class ids, grey images) would be read as if uint8 RGB."""
    import h5py

    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "images.npy", images)
    np.save(tmp_path / "mm" / "masks.npy", masks)
    with pytest.raises(ValueError, match=rf"mm.{refused} that write_memmap writes: write it again with "):
        MemmapDataset(tmp_path / "mm")
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["images"], file["masks"] = images, masks
    with pytest.raises(ValueError, match=rf"data.h5:{refused} that write_hdf5 writes: write it again with "):
        HDF5Dataset(tmp_path / "data.h5")


def test_hand_made_masks_are_checked_against_the_classes_once(tmp_path, monkeypatch):
    """0/255 masks saved by hand would reach the loss with every object pixel ignored (255)."""
    import h5py

    (tmp_path / "mm").mkdir()
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:, 2:5, 2:5] = 255
    np.save(tmp_path / "mm" / "images.npy", np.zeros((4, 3, 8, 8), np.uint8))
    np.save(tmp_path / "mm" / "masks.npy", masks)
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["images"], file["masks"] = np.zeros((4, 3, 8, 8), np.uint8), masks
    for make, name in ((MemmapDataset, r"mm[/\\]masks\.npy"), (HDF5Dataset, r"data\.h5:masks")):
        where = tmp_path / ("mm" if make is MemmapDataset else "data.h5")
        with pytest.raises(ValueError, match=rf"^.*{name} holds masks with values \[255\] outside the "
                                             r"classes 0\.\.3, .* black-and-white masks, whose 255 most "
                                             r"likely marks the objects\. Give the objects their class"):
            make(where)
        assert int(make(where, ignore_index=255)[0].mask.max()) == 255  # declared: read as it is
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[0, 0, 0], masks[2, 0, 0] = 4, 9  # class 4 of 0..3 in the first chunk read, 9 in the last
    np.save(tmp_path / "mm" / "masks.npy", masks)
    monkeypatch.setattr("helpers.datasets.MASK_CHECK_BYTES", 2 * 8 * 8)  # two masks per chunk
    with pytest.raises(ValueError, match=r"masks\.npy has values \[4, 9\] outside the classes 0\.\.3"):
        MemmapDataset(tmp_path / "mm")
    reads = []

    class Noted:  # the same masks, noting each part read
        dtype = masks.dtype

        def __len__(self) -> int:
            return len(masks)

        def __getitem__(self, part):
            reads.append(part)
            return masks[part]

    with pytest.raises(ValueError, match=r"^Mask m has values \[4, 9\]"):
        check_mask_array(Noted(), "m", 4, None)
    assert reads[1:] == [slice(0, 2), slice(2, 4)]  # after a look at the first: two masks at a time
    np.save(tmp_path / "mm" / "images.npy", np.zeros((0, 3, 8, 8), np.uint8))
    np.save(tmp_path / "mm" / "masks.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"masks\.npy holds no masks: write it again"):
        MemmapDataset(tmp_path / "mm")  # a loader over it would yield nothing, without a word


def test_an_hdf5_file_that_holds_a_group_for_its_images_is_named(tmp_path):
    import h5py

    with h5py.File(tmp_path / "data.h5", "w") as file:  # another tool's layout: an array per image
        file.create_group("images")["0001"] = np.zeros((3, 8, 8), np.uint8)
        file["masks"] = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"data.h5:images is a Group, not an array\. Write it again with "
                                         r"write_hdf5, which writes uint8 images \[N, 3, H, W\]"):
        HDF5Dataset(tmp_path / "data.h5")


def test_files_cut_short_after_the_dataset_was_made_are_named_when_read(tmp_path, source_dataset):
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    memmap, hdf5 = MemmapDataset(tmp_path / "mm"), HDF5Dataset(tmp_path / "data.h5")  # nothing open yet
    for path in (tmp_path / "mm" / "images.npy", tmp_path / "data.h5"):
        path.write_bytes(path.read_bytes()[:-3000])  # an interrupted copy, read by a worker
    cut = r"^Cannot map .*images\.npy: .*Write the folder again with write_memmap"
    with pytest.raises(ValueError, match=cut):
        memmap[0]
    with pytest.raises(ValueError, match=cut):
        next(iter(PinnedMemmapBatches(memmap, 4, torch.device("cpu"))))
    with pytest.raises(ValueError, match=r"^Cannot read .*data\.h5: .*Write it again with write_hdf5"):
        hdf5[0]


@WINDOWS_KEEPS_MAPPED
@pytest.mark.parametrize("reader", ["dataset", "batches gathered on the host",
                                    "batches gathered on the device"])
def test_a_file_cut_short_while_mapped_is_named_instead_of_ending_the_process(tmp_path, source_dataset,
                                                                              reader):
    """Read past the end of a mapped file, and the system ends the process (SIGBUS: in a worker, "Bus
    error", which reads as a shared-memory problem). A copy over the file while training reads it."""
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    memmap = MemmapDataset(tmp_path / "mm")
    if reader == "dataset":
        memmap[0]  # mapped in this process
        read_again = functools.partial(memmap.__getitem__, len(memmap) - 1)
    else:  # on the CPU, both gathers read each batch from the map
        batches = iter(PinnedMemmapBatches(memmap, 2, torch.device("cpu"),
                                           gather_on_device=reader.endswith("device")))
        next(batches)
        read_again = functools.partial(next, batches)
    path = tmp_path / "mm" / "images.npy"
    with open(path, "r+b") as file:  # the same file, shorter: the map still covers its old length
        file.truncate(path.stat().st_size // 2)
    with pytest.raises(ValueError, match=r"images\.npy is shorter than when this process mapped it: it was "
                                         r"overwritten or cut short while in use\. Write it again"):
        read_again()


@WINDOWS_KEEPS_MAPPED
def test_files_written_again_while_mapped_are_mapped_again_at_the_next_read(tmp_path, source_dataset):
    """A process keeps its map: without a look at the files before each read it would go on reading the
    old ones, or the first samples of longer ones written in place, without a word."""
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    memmap = MemmapDataset(tmp_path / "mm")
    first = memmap[0].mask  # mapped in this process
    masks = np.load(tmp_path / "mm" / "masks.npy")
    np.save(tmp_path / "mm" / "masks.npy", (masks + 1) % 4)  # the same shapes, other classes
    assert torch.equal(memmap[0].mask, (first + 1) % 4)
    for name in ("images.npy", "masks.npy"):  # twice the samples, written in place
        np.save(tmp_path / "mm" / name, np.concatenate([np.load(tmp_path / "mm" / name)] * 2))
    with pytest.raises(ValueError, match=r"mm changed after the dataset read it: images \(40, 3, 32, 32\)"):
        memmap[0]


def test_files_written_again_with_other_shapes_after_the_dataset_was_made_are_refused(tmp_path,
                                                                                    source_dataset):
    """A cell that writes the files again, on fewer samples: the old dataset would read them in part."""
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    memmap, hdf5 = MemmapDataset(tmp_path / "mm"), HDF5Dataset(tmp_path / "data.h5")
    write_memmap(first_pair(source_dataset), tmp_path / "mm", SIZE)
    write_hdf5(first_pair(source_dataset), tmp_path / "data.h5", SIZE)
    changed = (r"changed after the dataset read it: images \(1, 3, 32, 32\) and masks \(1, 32, 32\) now, "
               r"\(20, 3, 32, 32\) and \(20, 32, 32\) then\. Write it with write_\w+, then make the "
               r"dataset \(and its DataLoader\) again")
    for read in (lambda: memmap[0], lambda: next(iter(PinnedMemmapBatches(memmap, 1, torch.device("cpu"))))):
        with pytest.raises(ValueError, match=rf"mm {changed}"):
            read()
    with pytest.raises(ValueError, match=rf"data.h5 {changed}"):
        hdf5[0]


def test_a_damaged_npy_header_is_named_with_what_to_do_and_no_offer_of_pickles(tmp_path, source_dataset):
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    path = tmp_path / "mm" / "images.npy"
    data = path.read_bytes()
    path.write_bytes(b"XXXXXX" + data[6:])  # numpy would take it for a pickle, and offer allow_pickle=True
    with pytest.raises(ValueError, match=r"images\.npy is not a \.npy file numpy can map \(its header is "
                                         r"damaged\): write it again with write_memmap\.$"):
        MemmapDataset(tmp_path / "mm")
    path.write_bytes(data + bytes(3 * 3 * SIZE * SIZE))  # 3 images more than the header counts
    with pytest.raises(ValueError, match=r"images\.npy holds 9,216 bytes more than its header describes "
                                         r"\(a damaged header, or data added at its end\): write it again"):
        MemmapDataset(tmp_path / "mm")


def test_masks_with_classes_beyond_uint8_are_refused_not_wrapped(tmp_path):
    from PIL import Image

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.full((8, 8), 256, np.uint16)).save(tmp_path / "masks" / "a.png")  # 16-bit: class 256
    wide = SegmentationDataset(tmp_path, num_classes=257)
    with pytest.raises(ValueError, match=r"^Mask .*a.png has class 256, but these files store masks as "
                                         r"uint8 \(0\.\.255\): at most 256 classes, an ignore value"):
        write_memmap(wide, tmp_path / "mm", 8)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "masks" / "a.png")  # 255 fits
    write_memmap(SegmentationDataset(tmp_path, num_classes=256), tmp_path / "mm", 8)
    mask = MemmapDataset(tmp_path / "mm", num_classes=256)[0][1]
    assert mask.dtype == torch.uint8 and int(mask.min()) == 255


@pytest.mark.parametrize("index", [np.int64(2), torch.tensor(2)], ids=["numpy", "0-d tensor"])
def test_numpy_integers_and_0d_tensors_index_one_sample(tmp_path, source_dataset, index):
    write_memmap(source_dataset, tmp_path / "mm", SIZE)
    write_hdf5(source_dataset, tmp_path / "data.h5", SIZE)
    for dataset in (MemmapDataset(tmp_path / "mm"), HDF5Dataset(tmp_path / "data.h5")):
        sample = dataset[index]  # as Subset passes them from np.flatnonzero(...) or torch.randperm(...)
        assert sample.image.shape == (3, SIZE, SIZE) and sample.image.is_contiguous()
        assert torch.equal(sample.image, dataset[2].image) and sample.image.numpy().flags.writeable
        assert dataset[index.reshape(1)].image.shape == (1, 3, SIZE, SIZE)  # a batch of one stays a batch
        for wrong in (torch.tensor(True), 2.7, "2", [1.7], torch.tensor([True, False])):
            with pytest.raises(TypeError, match="^Index a dataset with an int or a list of ints, not "):
                dataset[wrong]  # not read as sample 1 or 2


def test_a_shard_cut_short_between_two_files_is_refused(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(source_dataset, tmp_path / "shards", per_shard=20)
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        cut = [member.offset for member in tar][10]  # where the 6th pair starts: a block boundary
    shard.write_bytes(data[:cut])
    with tarfile.open(shard) as tar:
        assert len(tar.getmembers()) == 10  # tarfile itself reads the first 5 pairs without a complaint
    with pytest.raises(ValueError, match=r"shard-00000.tar does not end as a tar file does: it was cut"):
        list(ShardStream([shard]))


def test_shard_errors_name_the_shard_and_the_file_and_folder_entries_are_skipped(tmp_path, source_dataset):
    import io
    import tarfile

    image, mask = Path(source_dataset.image_paths[0]), Path(source_dataset.mask_paths[0])
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        folder = tarfile.TarInfo("shapes")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # what `tar cf bad.tar shapes/` starts with
        tar.add(image, arcname="0001.jpg")
        info = tarfile.TarInfo("0001.png")
        info.size = 10
        tar.addfile(info, io.BytesIO(mask.read_bytes()[:10]))  # a mask cut short
    with pytest.raises(ValueError, match=r"^Cannot read mask .*bad.tar:0001.png: "):
        list(ShardStream([tmp_path / "bad.tar"]))
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        info = tarfile.TarInfo("0002.jpg")  # not an image: named as PIL names a file, not <BytesIO at 0x...>
        info.size = 10
        tar.addfile(info, io.BytesIO(b"not a jpg!"))
        tar.add(mask, arcname="0002.png")
    with pytest.raises(ValueError, match=r"^Cannot read image .*bad.tar:0002.jpg: cannot identify image file "
                                         r".*bad.tar:0002.jpg\. The file is damaged"):
        list(ShardStream([tmp_path / "bad.tar"]))
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(image, arcname="README")
    with pytest.raises(ValueError, match=r"bad.tar holds 'README', which has no extension: a shard holds "):
        list(ShardStream([tmp_path / "bad.tar"]))
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(image, arcname="img.0001.jpg")  # webdataset: sample "img", file "0001.jpg"
    with pytest.raises(ValueError, match=r"bad.tar holds 'img.0001.jpg', with a dot before its extension: "
                                         r"webdataset \(notebook 07\) ends a sample's name at its first "
                                         r"dot.*Rename it"):
        list(ShardStream([tmp_path / "bad.tar"]))


def test_png_images_and_dotted_names_are_refused_by_write_shards_and_jpeg_spellings_become_jpg(
        tmp_path, source_dataset):
    import shutil
    import tarfile

    for folder in ("images", "masks"):
        (tmp_path / "src" / folder).mkdir(parents=True)
    shutil.copy(source_dataset.image_paths[0], tmp_path / "src" / "images" / "a.JPEG")
    shutil.copy(source_dataset.mask_paths[0], tmp_path / "src" / "masks" / "a.PNG")
    (shard,) = write_shards(SegmentationDataset(tmp_path / "src"), tmp_path / "shards")
    with tarfile.open(shard) as tar:
        assert tar.getnames() == ["a.jpg", "a.png"]  # the names ShardStream and webdataset read
    Path(tmp_path / "src" / "images" / "a.JPEG").unlink()
    shutil.copy(source_dataset.mask_paths[0], tmp_path / "src" / "images" / "a.png")  # a PNG image
    with pytest.raises(ValueError, match=r"^1 image\(s\) are PNGs, e.g. .*a.png: a shard holds NAME.jpg"):
        write_shards(SegmentationDataset(tmp_path / "src"), tmp_path / "shards")
    Path(tmp_path / "src" / "images" / "a.png").rename(tmp_path / "src" / "images" / "a.1.jpg")
    shutil.copy(source_dataset.image_paths[0], tmp_path / "src" / "images" / "a.1.jpg")  # a JPEG again
    Path(tmp_path / "src" / "masks" / "a.PNG").rename(tmp_path / "src" / "masks" / "a.1.png")
    with pytest.raises(ValueError, match=r"^1 image\(s\) have a dot before the extension, e.g. .*a\.1\.jpg: "
                                         r"webdataset .* up to the first dot.*Rename them and their masks"):
        write_shards(SegmentationDataset(tmp_path / "src"), tmp_path / "shards")


def test_fewer_shards_than_ranks_are_refused(tmp_path, source_dataset, monkeypatch):
    shards = write_shards(source_dataset, tmp_path / "shards", shards=3)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")  # would get no shard, stop first, and leave the others waiting
    with pytest.raises(ValueError, match=r"^3 shards cannot feed 4 ranks: write at least one per rank "
                                         r"\(write_shards\(shards=4\)\)"):
        ShardStream(shards).my_shards()


def test_shard_streams_take_the_classes_and_ignore_index_of_the_data(tmp_path):
    from PIL import Image

    for folder in ("images", "masks"):
        (tmp_path / "src" / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "images" / "a.jpg")
    mask = np.full((8, 8), 5, np.uint8)
    mask[0] = 255
    Image.fromarray(mask).save(tmp_path / "src" / "masks" / "a.png")  # six classes, and 255 for "ignore"
    shards = write_shards(SegmentationDataset(tmp_path / "src", num_classes=6, ignore_index=255),
                          tmp_path / "shards")
    with pytest.raises(ValueError, match=r"a.png has values \[5, 255\] outside the classes 0..3"):
        list(ShardStream(shards))
    (sample,) = ShardStream(shards, num_classes=6, ignore_index=255)
    assert torch.equal(sample.mask, torch.from_numpy(mask).long())


def first_pair(dataset):
    """``dataset`` cut to its first image+mask pair."""
    import copy

    one = copy.copy(dataset)
    one.image_paths, one.mask_paths = dataset.image_paths[:1], dataset.mask_paths[:1]
    return one


def repack(shard, path, mode="w", extra=()):
    """Copy ``shard``'s members into a new tar at ``path`` (``mode`` "w:gz" compresses), then ``extra``:
    (TarInfo, bytes or None) pairs."""
    import io
    import tarfile

    with tarfile.open(shard) as tar, tarfile.open(path, mode) as out:
        for member in tar:
            out.addfile(member, tar.extractfile(member))
        for info, data in extra:
            info.size = len(data or b"")
            out.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("mode", ["gz", "bz2", "xz"])
def test_compressed_shards_are_read_whole_and_damaged_ones_are_named(tmp_path, source_dataset, mode):
    (shard,) = write_shards(source_dataset, tmp_path / "shards", shards=1)
    packed = repack(shard, tmp_path / f"shard.tar.{mode}", f"w:{mode}")
    plain, unpacked = ([sample.mask for sample in ShardStream([path])] for path in (shard, packed))
    assert len(unpacked) == len(plain) == len(source_dataset) and all(map(torch.equal, plain, unpacked))
    data = packed.read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    said = ("cut as a tar file: file could not be opened" if mode == "bz2" else  # its first block, cut
            "cut does not end as a tar file does: it was cut short")  # the decompressor's EOFError
    with pytest.raises(ValueError, match=rf"(?s){said}.*Copy or write the shard"):
        list(ShardStream([tmp_path / "cut"]))
    if mode == "gz":  # the checksum at the end, which tarfile alone never reads
        (tmp_path / "crc").write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])
        with pytest.raises(ValueError, match=r"^Cannot read .*crc as a tar file: CRC check failed"):
            list(ShardStream([tmp_path / "crc"]))


def test_a_compressed_shard_whose_writing_stopped_between_files_is_refused(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(source_dataset, tmp_path / "shards", shards=1)
    with tarfile.open(shard) as tar, open(tmp_path / "stopped.tar.gz", "wb") as file:
        packed = tarfile.open(fileobj=file, mode="w:gz")
        for member in tar.getmembers()[:6]:
            packed.addfile(member, tar.extractfile(member))
        packed.fileobj.close()  # a whole gzip stream, but without tar's end blocks: as after Ctrl-C
    assert len(tarfile.open(tmp_path / "stopped.tar.gz").getmembers()) == 6  # tarfile finds no fault
    with pytest.raises(ValueError, match=r"stopped.tar.gz does not end as a tar file does: it was cut short"):
        list(ShardStream([tmp_path / "stopped.tar.gz"]))


def test_shards_cut_inside_a_header_or_zero_filled_are_refused(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(source_dataset, tmp_path / "shards", shards=1)
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        cut = [member.offset for member in tar][10]  # where the 6th pair's header starts
    for name, damaged, message in [
        ("cut", data[:cut + 100], "does not end as a tar file does: it was cut short"),
        ("zeros", data[:cut] + bytes(2**21), r"ends in [\d,]+ bytes of zeros, far more than tar's end"),
        ("empty", bytes(10240), "holds no samples"),  # a download that never started, preallocated
    ]:
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"{name} {message}"):
            list(ShardStream([tmp_path / name]))


@pytest.mark.parametrize("content, message", [(b"", "does not end as a tar file does: it was cut short"),
                                              (b"<html>Not Found" * 40, "is not a tar file: it starts with"),
                                              (bytes(10240), "is a tar file that holds no files")],
                         ids=["empty", "web page", "a tar of nothing"])
def test_the_preflight_refuses_files_that_are_no_tar(tmp_path, content, message):
    from helpers.formats import check_whole_tar

    (tmp_path / "shard.tar").write_bytes(content)
    with pytest.raises(ValueError, match=rf"shard.tar {message}"):
        check_whole_tar(tmp_path / "shard.tar")


def test_tars_joined_with_cat_are_refused_not_read_half(tmp_path, source_dataset):
    first, second = write_shards(source_dataset, tmp_path / "shards", shards=2)
    (tmp_path / "joined.tar").write_bytes(first.read_bytes() + second.read_bytes())
    for read in (lambda path: list(ShardStream([path])), check_whole_tar):  # ddp_train's preflight too
        with pytest.raises(ValueError, match=r"joined.tar holds more after its end blocks \(tars joined "
                                             r"with cat, or a damaged header\): those samples would be"):
            read(tmp_path / "joined.tar")


def test_the_preflight_refuses_a_shard_with_a_damaged_header_inside(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(source_dataset, tmp_path / "shards")
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[2].offset  # its header's first byte, in its name
    data = bytearray(shard.read_bytes())
    data[third] ^= 1  # the header's checksum no longer matches: tarfile stops there, quietly
    (tmp_path / "damaged.tar").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.tar holds more after its end blocks"):
        check_whole_tar(tmp_path / "damaged.tar")


def test_shards_compressed_in_a_way_tarfile_cannot_read_say_so(tmp_path):
    (tmp_path / "shard.tar.lz4").write_bytes(b"\x04\x22\x4d\x18" + bytes(100))  # zstd: read from 3.14
    with pytest.raises(ValueError, match=r"shard.tar.lz4 is compressed with lz4, which Python's tarfile "
                                         r"cannot read: decompress it \(lz4 -d\)"):
        list(ShardStream([tmp_path / "shard.tar.lz4"]))


def test_links_in_a_shard_are_read_or_refused_never_skipped(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(first_pair(source_dataset), tmp_path / "shards")
    stem = Path(source_dataset.image_paths[0]).stem
    inside = []
    for kind, suffix in [(tarfile.LNKTYPE, "jpg"), (tarfile.SYMTYPE, "png")]:  # b.* link to the first pair
        inside.append((tarfile.TarInfo(f"b.{suffix}"), None))
        inside[-1][0].type, inside[-1][0].linkname = kind, f"{stem}.{suffix}"
    first, second = ShardStream([repack(shard, tmp_path / "links.tar", extra=inside)])
    assert torch.equal(first.image, second.image) and torch.equal(first.mask, second.mask)
    for kind, target, fix in [(tarfile.SYMTYPE, "/data/b.png", r"tar -h \(--dereference\)"),
                              (tarfile.LNKTYPE, "data/b.png", "tar --hard-dereference"),
                              (tarfile.SYMTYPE, "b.png", r"tar -h")]:  # a link to itself: a loop
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = kind, target
        with pytest.raises(ValueError, match=rf"bad.tar:b.png links to '{target}', which is no file in the "
                                             rf"shard: write the shard again with {fix}"):
            list(ShardStream([repack(shard, tmp_path / "bad.tar", extra=[(link, None)])]))
    fifo = tarfile.TarInfo("b.jpg")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(ValueError, match=r"bad.tar:b.jpg is not a file: a shard holds NAME.jpg and NAME.png"):
        list(ShardStream([repack(shard, tmp_path / "bad.tar", extra=[(fifo, None)])]))


def test_a_name_twice_in_a_shard_is_refused_not_read_over(tmp_path, source_dataset):
    import tarfile

    (shard,) = write_shards(first_pair(source_dataset), tmp_path / "shards")
    stem = Path(source_dataset.image_paths[0]).stem
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        image = tar.extractfile(names[0]).read()
    for extra in ([names[0]], [names[1]]):  # the pair again after it (tar -r), or its image only
        again = [(tarfile.TarInfo(name), image) for name in extra]
        with pytest.raises(ValueError, match=rf"bad.tar holds '{stem}\.(jpg|png)' twice \(tar -r and tar -A "
                                             r"append, they do not replace\): write the shard again"):
            list(ShardStream([repack(shard, tmp_path / "bad.tar", extra=again)]))
    images_first = tmp_path / "order.tar"  # NAME.jpg, NAME.jpg, NAME.png: the first image never paired
    with tarfile.open(images_first, "w") as out:
        for name, data in [(names[0], image), (names[0], image), (names[1], b"")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=rf"order.tar holds '{stem}\.jpg' twice"):
        list(ShardStream([images_first]))


def test_a_dataset_that_transforms_its_images_to_float_is_refused_by_the_writers(tmp_path):
    from helpers.transforms import eval_transforms

    normalised = SegmentationDataset(data_dir("shapes"), split="val", transform=eval_transforms())
    float_masks = SegmentationDataset(data_dir("shapes"), split="val",
                                      transform=lambda image, mask: (image, mask.float()))
    for write in (write_memmap, write_hdf5):
        for dataset, image, mask in ((normalised, "float32", "int64"), (float_masks, "uint8", "float32")):
            refused = rf"0\d+\.jpg came from the dataset as torch.{image}, its mask as torch.{mask}: these"
            with pytest.raises(ValueError, match=refused):
                write(dataset, tmp_path / f"out_{write.__name__}", 32)


@pytest.mark.parametrize("name", ["./._0001.jpg", ".DS_Store"])
def test_hidden_files_in_a_shard_are_named_with_the_fix(tmp_path, source_dataset, name):
    import tarfile

    (shard,) = write_shards(first_pair(source_dataset), tmp_path / "shards")
    with pytest.raises(ValueError, match=rf"bad.tar holds '{name}', a hidden file \(macOS adds ._NAME and "
                                         r"\.DS_Store\): write the shard again with COPYFILE_DISABLE=1"):
        list(ShardStream([repack(shard, tmp_path / "bad.tar", extra=[(tarfile.TarInfo(name), b"x")])]))



def write_voc_pair(root: Path, void: int = 255) -> np.ndarray:
    """One pair in Pascal VOC's coding under ``root`` (images/, masks/, train.txt and val.txt naming it):
    classes 15 and 20 of 0..20, and ``void`` (VOC's 255) on an object's border. Returns the mask."""
    from PIL import Image

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    mask = np.zeros((8, 12), np.uint8)
    mask[:, 4:] = 15
    mask[:, 8:] = 20
    mask[:, 7] = void
    Image.new("RGB", (12, 8), (90, 60, 30)).save(root / "images" / "a.jpg")
    Image.fromarray(mask, mode="L").save(root / "masks" / "a.png")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text("a\n")
    return mask


def test_another_datasets_classes_reach_the_readers_that_check_masks(tmp_path):
    """A Pascal VOC mask is refused as the shapes' classes 0..3 and read as it is once declared: by the
    shard reader and by 06's (c) readers (helpers.ddp_train's options: tests/test_ddp_train.py)."""
    from helpers.gpu_decode import EncodedPairs, write_masks

    mask = write_voc_pair(tmp_path / "voc")
    pairs = [(tmp_path / "voc" / "images" / "a.jpg", tmp_path / "voc" / "masks" / "a.png")]
    voc = {"num_classes": 21, "ignore_index": 255}
    sample = {"__key__": "a", **{kind: path.read_bytes() for kind, path in zip(("jpg", "png"), pairs[0])}}
    refused = r"a\.png has values \[15, 20, 255\] outside the classes 0\.\.3\. If your dataset has these"
    for read in (lambda **declared: decode_shard_sample(sample, **declared)[1],
                 lambda **declared: EncodedPairs(pairs, **declared)[0][1]):
        with pytest.raises(ValueError, match=refused):
            read()
        assert torch.equal(read(**voc), torch.from_numpy(mask))
    with pytest.raises(ValueError, match=refused):
        write_masks(pairs, tmp_path / "stored", (8, 12))
    write_masks(pairs, tmp_path / "stored", (8, 12), **voc)
    with pytest.raises(ValueError, match=refused.replace("a\\.png", r"stored[/\\]masks\.npy")):
        EncodedPairs(pairs, masks=tmp_path / "stored")  # stored for 21 classes, read as the shapes' 4
    assert torch.equal(EncodedPairs(pairs, masks=tmp_path / "stored", **voc)[0][1], torch.from_numpy(mask))
