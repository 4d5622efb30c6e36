"""helpers.ddp_train: a real two-process gloo launch on tiny data, and clear errors for bad launches."""

import gc
import gzip
import importlib
import inspect
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_formats import write_voc_pair
from torch.nn.parallel import DistributedDataParallel

from helpers import ddp_train
from helpers.datasets import SegmentationDataset
from helpers.ddp_train import (
    LaunchError,
    agree_on_device,
    check_everywhere,
    copied_sample,
    data_problem,
    data_seen,
    is_url,
    launch,
    left_out_every_epoch,
    main,
    parse_args,
    run,
    run_script,
    save_and_check,
    shard_urls,
    train_epoch,
    train_loader,
    without_libuv_on_windows,
)
from helpers.formats import CUT_SHORT, check_whole_tar, write_shards
from helpers.models import UNet
from helpers.paths import data_dir

# On Linux, ranks and launch's launcher start from the test session's forkserver: its server has imported
# torch and helpers.ddp_train once (conftest.py), where each spawned process imports them again, for
# seconds. Elsewhere they are spawned, as launch forks on Linux only. 07 launches as users do, by spawn.
START = "forkserver" if sys.platform == "linux" else "spawn"


@pytest.fixture
def quick_launcher(monkeypatch):
    """launch's launcher started by START instead of spawn."""
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context",
                        lambda method=None: get_context(START if method == "spawn" else method))


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's own rendezvous asks for libuv, which "
                    "PyTorch's Windows wheels lack (pytorch#148283): 07 launches with ddp_train.launch")
def test_torchrun_runs_the_module_on_shards_each_sample_once_per_epoch(tmp_path):
    """The command line of 07 and the README, for one epoch. How ranks agree over epochs (a new order, one
    checkpoint, the same evaluation as one process) 07 asserts after its launches."""
    shards = write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path / "shards",
                          per_shard=20)  # 64 pairs in 4 shards: 40 and 24 samples per rank, uneven
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "helpers.ddp_train", "--shards", str(tmp_path / "shards"), "--val-data",
               str(data_dir("shapes")), "--out", str(tmp_path / "run"), "--epochs", "1", "--size", "16"]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    logs = [json.loads((tmp_path / "run" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [log["backend"] for log in logs] == ["gloo", "gloo"] and len(shards) == 4
    names = [name for log in logs for name in log["epochs"][0]["names"]]
    assert sorted(names) == sorted(set(names)) and len(names) == 64  # each sample once, over both ranks
    assert logs[0]["epochs"][0]["steps"] > logs[1]["epochs"][0]["steps"]  # uneven shards, joined
    assert logs[0]["eval"] == logs[1]["eval"] and logs[0]["eval"]["images"] == 64  # summed, no padding


@pytest.mark.parametrize("own_logs", [
    pytest.param(False, marks=pytest.mark.skipif(sys.platform == "win32", reason="spawned ranks do not "
                                                 "inherit the agent's log files on Windows")),
    True], ids=["inherited logs", "ranks' own logs (Windows)"])
def test_a_failed_launch_from_python_raises_with_what_the_ranks_said(tmp_path, own_logs, quick_launcher):
    """launch (07's way to start torchrun's agent from a notebook) fails loudly, not silently."""
    with pytest.raises(RuntimeError, match=r"(?s)exit code 2\).*missing on this node"):
        launch(["--shards", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")], processes=2,
               own_logs=own_logs)


def test_not_started_by_torchrun_says_how_to_start_it(monkeypatch, capsys, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--data", str(data_dir("shapes")), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "must be started by torchrun" in error and "torchrun --nproc_per_node=2" in error


def test_fewer_shards_than_readers_a_shard_cut_short_and_a_missing_folder_are_named(tmp_path):
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path / "shards", per_shard=32)
    args = Namespace(shards=tmp_path / "shards", data=None, val_data=None, workers=2)
    problem = data_problem(args, world_size=2)
    assert "2 shards" in problem and "2 processes x 2 workers" in problem and "at least 4" in problem
    args.workers = 0
    assert data_problem(args, world_size=2) is None
    args.val_data = tmp_path / "no-val"  # evaluation comes after training: check it before
    assert "no-val is missing on this node" in data_problem(args, world_size=2)
    missing = data_problem(Namespace(shards=None, data=tmp_path / "nowhere", val_data=None, workers=0),
                           world_size=1)
    assert "nowhere is missing on this node" in missing
    args.val_data, shard = None, sorted((tmp_path / "shards").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:-10240])  # an interrupted copy: whole files, no end blocks
    assert data_problem(args, world_size=2) == (f"{shard} does not end as a tar file does: it was cut "
                                                "short (an interrupted copy, download or write), and the "
                                                "samples at its end are missing. Copy or write the shard "
                                                "again.")


def test_a_copy_of_a_shard_beside_it_is_named_before_its_samples_train_twice(tmp_path):
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=32)
    args = Namespace(shards=tmp_path, data=None, val_data=None, workers=0)
    assert data_problem(args, world_size=1) is None
    shutil.copy(tmp_path / "shard-00001.tar", tmp_path / "shard-00001 (1).tar")  # a download saved twice
    first = SegmentationDataset(data_dir("shapes"), split="val").image_paths[32]  # shard 1's first sample
    problem = data_problem(args, world_size=1)
    copy, shard = tmp_path / "shard-00001 (1).tar", tmp_path / "shard-00001.tar"
    assert problem.startswith(f"Sample '{Path(first).stem}' is in two shards, {copy} and {shard}, the same "
                              "files of the same sizes: a copy of a shard would train its samples twice")
    copy.unlink()
    for shard in ("other-1.tar", "other-2.tar"):  # what webdataset reads as samples, and only that
        write_tar(tmp_path / shard, [(f"0001.{shard[6]}.jpg", b"another image"), ("._0002.jpg", b"macOS"),
                                     ("README", b"no sample")])  # the last two in both: not samples
    listed = {shard: check_whole_tar(shard) for shard in sorted(tmp_path.glob("*.tar"))}
    assert copied_sample(listed) is None  # "0001": in three shards, three different samples
    assert "other-1.tar holds '0001.1.jpg', with a dot before its extension" in data_problem(args, 1)


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> None:
    """A tar of ``files`` (name, bytes), in that order."""
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("names, message", [
    (["a.jpg", "b.jpg", "a.png", "b.png"], "holds 'a.png' apart from the other files of 'a': webdataset"),
    (["a.jpg", "a.png", "b.jpg", "b.png", "a.jpg", "a.png"], "holds 'a.jpg' twice"),
    (["a.jpg", "a.png", "._b.jpg"], "holds '._b.jpg', a hidden file"),
    (["a.jpg", "a.png", "README"], "holds 'README', which has no extension"),
    (["a.jpg", "a.png", "b.jpg"], r"sample 'b' has \['jpg'\]: each NAME needs NAME.jpg and NAME.png"),
    (["a.jpg", "a.JPG", "a.png"], r"holds 'a.JPG' and another a.jpg \(webdataset reads suffixes in lower"),
    (["__x__/a.jpg", "__x__/a.png", "b.jpg", "b.png"], "in a folder named as webdataset names its metadata"),
    (["a.JPG", "a.png"], None),  # webdataset reads a.JPG as the sample's jpg
    (["v1.0/a.jpg", "v1.0/a.png"], None),  # a sample's name ends at the first dot after the last /
    (["v1/a.jpg", "v1/a.png", "v1/._a.jpg"], r"holds 'v1/._a.jpg', a hidden file"),
], ids=["tar *.jpg *.png", "appended", "macOS", "stray", "unpaired", "JPG twice", "__x__", "JPG", "v1.0/",
        "v1/._a"])
def test_shards_webdataset_would_misread_are_refused_before_training(tmp_path, names, message):
    """webdataset makes a sample of adjacent files that share a name and passes over hidden files and
    files with no extension: each of these would train half samples, twice, or without a word, hours in."""
    write_tar(tmp_path / "shard-00000.tar", [(name, f"{i}".encode()) for i, name in enumerate(names)])
    args = Namespace(shards=tmp_path, data=None, val_data=None, workers=0)
    problem = data_problem(args, world_size=1)
    assert problem is None if message is None else re.search(message, problem)


def test_split_lists_are_checked_before_training_and_every_rank_needs_a_sample(tmp_path):
    """Validation comes after training: a split list missing must stop the launch before it trains.
    With fewer training samples than ranks, DistributedSampler(drop_last=True) would give each none."""
    copy = tmp_path / "shapes"
    shutil.copytree(data_dir("shapes"), copy)
    args = Namespace(shards=None, data=copy, val_data=None, workers=0)
    assert data_problem(args, world_size=2) is None
    (copy / "train.txt").write_text("0001\n")
    assert data_problem(args, world_size=2) == (f"1 training samples in {copy} for 2 processes: each "
                                                "process needs at least one; start fewer")
    assert data_problem(args, world_size=1) is None
    (copy / "val.txt").unlink()
    assert data_problem(args, world_size=1).startswith(f"No split file {copy / 'val.txt'}")


def test_a_shard_this_rank_cannot_open_is_named(tmp_path, monkeypatch):
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=32)

    def refused(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ddp_train, "check_whole_tar", refused)
    problem = data_problem(Namespace(shards=tmp_path, data=None, val_data=None, workers=0), world_size=1)
    assert problem == f"Cannot read {tmp_path / 'shard-00000.tar'}: Permission denied"


def test_ranks_that_see_different_files_all_stop_naming_what_each_sees(tmp_path, monkeypatch):
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=16)
    args = Namespace(shards=tmp_path, data=None)
    here = ddp_train.data_seen(args)
    assert here.startswith("4 files, ") and ddp_train.data_seen(args) == here
    (tmp_path / "shard-00003.tar").unlink()  # another node's copy lacks a shard
    there = ddp_train.data_seen(args)
    assert there.startswith("3 files, ") and there != here
    copy = tmp_path / "copy"
    shutil.copytree(data_dir("shapes"), copy)
    as_data = Namespace(shards=None, data=copy, val_data=None)
    seen = ddp_train.data_seen(as_data)
    assert seen.startswith("642 files, ")  # 320 pairs and two split lists
    (copy / "images" / "._0001.jpg").write_bytes(b"\0")  # a Mac's copy: clutter the dataset skips
    (copy / "notes.txt").write_text("not read")
    assert ddp_train.data_seen(as_data) == seen
    (copy / "val.txt").write_text("0001\n")  # another split: other samples
    assert ddp_train.data_seen(as_data) != seen
    seen = ddp_train.data_seen(as_data)
    stems = (copy / "train.txt").read_text().split()
    (copy / "train.txt").write_bytes(("\r\n".join(stems) + "\r\n").encode())  # a Windows copy: the same
    assert ddp_train.data_seen(as_data) == seen
    (copy / "train.txt").write_text("\n".join(reversed(stems)) + "\n")  # same size, another order
    assert ddp_train.data_seen(as_data) != seen  # index i would be another sample on this node
    with_val = Namespace(shards=None, data=copy, val_data=data_dir("shapes"))
    seen = ddp_train.data_seen(with_val)
    assert seen != ddp_train.data_seen(Namespace(shards=None, data=copy, val_data=copy))  # --val-data too
    with open(copy / "images" / "0001.jpg", "ab") as image:  # the same name, other bytes
        image.write(b"\0")
    assert ddp_train.data_seen(with_val) != seen
    urls = Namespace(shards="https://example.org/shard-{00000..00003}.tar", data=None)
    assert ddp_train.data_seen(urls).startswith("0 files, ")  # the same URLs on every node: no listing

    def gather(reports, mine):  # rank 0 sees `here`, rank 1 `there`
        reports[:] = [("a", None, here), ("b", None, there)]

    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", gather)
    with pytest.raises(LaunchError, match=r"The ranks do not see the same data \(rank 0 on a: 4 files, .*"
                       r"rank 1 on b: 3 files, .*\): every node needs the same files at the same path\."):
        check_everywhere(None, here)
    monkeypatch.setattr(dist, "all_gather_object",
                        lambda reports, mine: reports.__setitem__(slice(None), [("a", None, here)] * 2))
    check_everywhere(None, here)  # the same everywhere: no error
    monkeypatch.setattr(dist, "all_gather_object", lambda reports, mine: reports.__setitem__(
        slice(None), [("a", None, here), ("b", "no train.txt in /data", here)]))
    with pytest.raises(LaunchError, match=r"^rank 1 on b: no train\.txt in /data$"):  # the same on every rank
        check_everywhere(None, here)


def test_shards_are_shuffled_the_same_on_a_rerun_and_otherwise_each_epoch(tmp_path, monkeypatch):
    """train_loader seeds webdataset's shard and sample shuffles from --seed and the epoch, as set_epoch
    does for a DistributedSampler: a run can be repeated, and no two epochs read in the same order."""
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=16)
    args = parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "run"), "--size", "16",
                       "--workers", "0"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")

    def order(epoch):
        return [name for _, _, names in train_loader(args, epoch=epoch, rank=0) for name in names]

    assert order(0) == order(0) != order(1) and sorted(order(0)) == sorted(order(1))


def test_val_data_goes_with_shards(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "data/shapes", "--val-data", "data/shapes", "--out", "run"])
    assert "--val-data goes with --shards" in capsys.readouterr().err


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on, for rank 0's store."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def _report(rank: int, port: int, errors) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_everywhere("data/shapes is missing on this node" if rank == 1 else None)
    except LaunchError as error:
        errors.put((rank, str(error)))
    finally:
        dist.destroy_process_group()


def test_a_problem_on_one_rank_stops_every_rank_with_that_rank_named():
    port = free_port()
    errors = mp.get_context(START).SimpleQueue()
    mp.start_processes(_report, args=(port, errors), nprocs=2, start_method=START)  # both ended
    reports = []
    while not errors.empty():  # what they reported, without waiting for a report that never came
        reports.append(errors.get())
    reports.sort()
    assert [rank for rank, _ in reports] == [0, 1]  # both stop, rank 0 too
    assert all(f"rank 1 on {socket.gethostname()}: data/shapes is missing" in text for _, text in reports)


def test_ranks_with_a_gpu_and_ranks_without_all_stop_naming_those_without_instead_of_hanging():
    """Nodes with fewer GPUs than processes would start gloo beside the others' nccl."""
    def agree(store: dist.Store, gpus: list[bool]) -> list[str]:
        store.set_timeout(timedelta(seconds=10))  # a rank left waiting fails the test, not hangs it
        with ThreadPoolExecutor(len(gpus)) as ranks:  # each rank waits in the store for every other
            calls = [ranks.submit(agree_on_device, store, rank, len(gpus), cuda)
                     for rank, cuda in enumerate(gpus)]
            return [str(call.exception()) for call in calls]

    assert agree(dist.HashStore(), [True, True, True]) == ["None"] * 3
    assert agree(dist.HashStore(), [False, False]) == ["None"] * 2
    errors = agree(dist.HashStore(), [True, False, True, False])
    assert errors == [errors[0]] * 4  # the same error on every rank
    assert errors[0].startswith(f"rank 1 on {socket.gethostname()}, rank 3 on {socket.gethostname()}: "
                                "fewer GPUs than processes on its node") and "--cpu" in errors[0]


def test_a_rank_whose_weights_differ_from_the_checkpoint_says_so(tmp_path, monkeypatch):
    """save_and_check as ranks other than 0 run it: they only load what rank 0 wrote, and compare."""
    monkeypatch.setattr(dist, "barrier", lambda: None)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    torch.manual_seed(0)
    model, path = UNet(widths=(8, 16)), tmp_path / "model.pt"
    assert save_and_check(model, path, torch.device("cpu")) and path.is_file()  # rank 0 writes it
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert save_and_check(model, path, torch.device("cpu"))  # the same weights
    with torch.no_grad():
        next(model.parameters())[0] += 1e-3  # this rank drifted
    assert not save_and_check(model, path, torch.device("cpu"))


def test_group_norm_makes_each_sample_independent_of_its_batch():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    for norm, independent in (("group", True), ("batch", False)):
        model = UNet(widths=(8, 16), norm=norm)
        together, apart = model(images), torch.cat([model(images[:2]), model(images[2:])])
        assert torch.allclose(together, apart, atol=1e-5) == independent, norm
    with pytest.raises(ValueError, match="norm must be"):
        UNet(norm="layer")


class SyncedStatistics(torch.nn.Module):
    """A 1x1 convolution whose forward pass all-reduces a statistic over the ranks, as SyncBatchNorm does."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean().reshape(1)
        dist.all_reduce(mean)  # a collective in the forward pass: join cannot answer it
        return self.conv(images - mean / dist.get_world_size())


def _uneven_epoch(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a hang becomes an error
    try:
        torch.manual_seed(0)
        ddp = DistributedDataParallel(SyncedStatistics())
        batches = [(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 4, (2, 8, 8)),
                    [f"{rank}-{step}"] * 2) for step in range((3, 5)[rank])]  # 3 batches on rank 0, 5 on 1
        _, losses = train_epoch(ddp, batches, torch.optim.SGD(ddp.parameters(), lr=0.1), torch.device("cpu"),
                                stop_together=True)
        results.put((rank, len(losses)))
    finally:
        dist.destroy_process_group()


def test_uneven_batches_with_a_collective_in_the_forward_pass_stop_together_instead_of_hanging():
    """join alone hangs here (DDP's docstring: extra collectives need throw_on_early_termination)."""
    port = free_port()
    results = mp.get_context(START).SimpleQueue()
    mp.start_processes(_uneven_epoch, args=(port, results), nprocs=2, start_method=START)
    steps = sorted(results.get() for _ in range(2) if not results.empty())
    assert steps == [(0, 3), (1, 3)]  # both ranks took the 3 steps they could take together


@pytest.mark.skipif(sys.platform == "win32", reason="webdataset opens a file:// URL's path, /C:/..., which "
                    "Windows cannot open")
def test_shards_given_as_urls_are_expanded_counted_and_streamed(tmp_path, monkeypatch):
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=32)  # 2 shards
    assert is_url("pipe:curl -s https://host/a.tar") and not is_url(str(tmp_path))
    assert shard_urls(str(tmp_path)) == [f"file:{tmp_path.as_posix()}/shard-0000{i}.tar" for i in (0, 1)]
    spec = tmp_path.as_uri() + "/shard-{00000..00001}.tar"  # file:// URLs, read as a web server's would be
    assert shard_urls(spec) == [f"{tmp_path.as_uri()}/shard-0000{i}.tar" for i in (0, 1)]
    args = parse_args(["--shards", spec, "--out", str(tmp_path / "run"), "--size", "32"])
    assert data_problem(args, world_size=1) is None  # URLs: no folder to look for, two shards counted
    assert "2 shards" in data_problem(args, world_size=4)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # rank 0 of 1, as torchrun would say
    names = [name for _, _, batch_names in train_loader(args, epoch=0, rank=0) for name in batch_names]
    assert sorted(names) == sorted(Path(path).stem for path in SegmentationDataset(data_dir("shapes"),
                                                                                     split="val").image_paths)


def test_compressed_shards_are_read_and_a_file_that_is_no_shard_is_named(tmp_path, monkeypatch):
    """--shards FOLDER takes .tar.gz and upper-case .TAR shards as webdataset reads them: once it took
    *.tar alone, and trained on half these samples without a word. Hidden files, tools' clutter and
    folders (a run's --out) are passed over; any other file is named before training."""
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=16)  # 4 shards
    shard = tmp_path / "shard-00001.tar"
    (tmp_path / "shard-00001.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
    shard.unlink()
    (tmp_path / "shard-00002.tar").rename(tmp_path / "shard-00002.TAR")
    for clutter in (".DS_Store", "Thumbs.db", "._shard-00000.tar"):  # the last: a Mac's, on a USB disk
        (tmp_path / clutter).write_bytes(b"\0")
    (tmp_path / "run").mkdir()
    assert [Path(url).name for url in shard_urls(str(tmp_path))] == [
        "shard-00000.tar", "shard-00001.tar.gz", "shard-00002.TAR", "shard-00003.tar"]
    args = parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "run"), "--size", "16"])
    assert data_problem(args, world_size=1) is None and data_seen(args).startswith("4 files")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    names = [name for _, _, batch_names in train_loader(args, epoch=0, rank=0) for name in batch_names]
    assert sorted(names) == sorted(Path(path).stem for path in SegmentationDataset(data_dir("shapes"),
                                                                                     split="val").image_paths)
    (tmp_path / "notes.txt").write_text("written by hand")
    (tmp_path / "more.tar").mkdir()
    assert data_problem(args, world_size=1) == (
        f"{tmp_path} holds ['more.tar', 'notes.txt'], which are no shards (.tar, .tar.gz, .tgz, .tar.bz2, "
        ".tar.xz, .tar.zst): move them out of the shards folder, or write them as shards "
        "(helpers.formats.write_shards).")


def test_a_compressed_shard_is_checked_as_a_plain_one_is(tmp_path):
    """Cut short, kept beside the shard it was compressed from (gzip -k), or compressed as tarfile cannot
    read: named before training, as a plain shard would be, not found by a rank in the middle of an epoch."""
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=32)  # 2 shards
    args = Namespace(shards=tmp_path, data=None, val_data=None, workers=0)
    shard, packed = tmp_path / "shard-00001.tar", tmp_path / "shard-00001.tar.gz"
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    assert "is in two shards" in data_problem(args, world_size=1)  # gzip -k keeps the .tar
    shard.unlink()
    assert data_problem(args, world_size=1) is None
    packed.write_bytes(packed.read_bytes()[:-4000])  # an interrupted download
    assert data_problem(args, world_size=1) == f"{packed} {CUT_SHORT}"
    packed.unlink()
    if sys.version_info < (3, 14):  # Python 3.14's tarfile reads zstd
        (tmp_path / "shard-00001.tar.zst").write_bytes(b"(\xb5/\xfd" + bytes(100))
        assert "is compressed with zstd, which Python's tarfile cannot read" in data_problem(args, 1)
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=64)  # 1 shard
    assert [path.name for path in tmp_path.iterdir()] == ["shard-00000.tar"]  # the old ones, all gone


def test_shards_are_read_in_another_order_each_epoch_not_only_shuffled_in_the_buffer(tmp_path, monkeypatch):
    """With no shuffle buffer, only the shard order can change an epoch's order: it must, each epoch."""
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=8)  # 8 shards
    args = parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "run"), "--size", "16",
                       "--buffer", "0"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    epochs = [[name for _, _, names in train_loader(args, epoch, rank=0) for name in names]
              for epoch in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(epochs[0]) == 64
    runs = [[epoch[i:i + 8] for i in range(0, 64, 8)] for epoch in epochs]  # a shard's samples, in a run
    assert sorted(map(sorted, runs[0])) == sorted(map(sorted, runs[1])) and runs[0] != runs[1]


def test_image_files_split_over_ranks_give_no_sample_twice_when_they_do_not_divide(monkeypatch):
    """DistributedSampler with drop_last: 256 training images over 3 ranks, 85 each, none on two ranks
    (without drop_last it would pad with repeats)."""
    import torch.utils.data.distributed as distributed

    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 3)
    args = parse_args(["--data", str(data_dir("shapes")), "--out", "unused", "--size", "16"])
    seen = []
    for rank in range(3):
        monkeypatch.setattr(distributed.dist, "get_rank", lambda rank=rank: rank)
        seen.append(list(train_loader(args, epoch=0, rank=rank).sampler))
    assert [len(indices) for indices in seen] == [85] * 3 and len(set(sum(seen, []))) == 255


def test_under_join_a_step_is_still_divided_by_the_ranks_launched():
    """07: the last steps of an uneven epoch, run by fewer ranks under join, are smaller steps."""
    join = inspect.signature(DistributedDataParallel.join).parameters
    assert join["divide_by_initial_world_size"].default is True


def test_without_shuffling_the_samples_no_epoch_trains_are_named(monkeypatch):
    """--no-shuffle: 256 training images over 3 ranks leave out the same last one every epoch; the
    warning names exactly the samples that no rank's loader reads."""
    import torch.utils.data.distributed as distributed

    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 3)
    args = parse_args(["--data", str(data_dir("shapes")), "--out", "unused", "--no-shuffle"])
    read = set()
    for rank in range(3):
        monkeypatch.setattr(distributed.dist, "get_rank", lambda rank=rank: rank)
        loader = train_loader(args, epoch=1, rank=rank)
        read |= {Path(loader.dataset.dataset.image_paths[index]).stem for index in loader.sampler}
    stems = [Path(path).stem for path in loader.dataset.dataset.image_paths]
    never = [stem for stem in stems if stem not in read]
    assert len(never) == 1 and f"the last 1 in file order ({never[0]})" in left_out_every_epoch(args, 3)
    assert left_out_every_epoch(args, 2) is None  # 256 divide over 2
    assert left_out_every_epoch(parse_args(["--data", str(data_dir("shapes")), "--out", "x"]), 3) is None


def test_without_workers_each_rank_and_epoch_draws_its_own_numbers_and_they_repeat(tmp_path):
    """--workers 0 (the default): the loader reads in the rank's process, so a transform's draws come from
    its global generators, which must differ by rank and epoch, as workers' do, and repeat run to run."""
    write_shards(SegmentationDataset(data_dir("shapes"), split="val"), tmp_path, per_shard=32)
    args = parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "run")])
    assert args.workers == 0

    def draws(epoch: int, rank: int) -> list[float]:
        train_loader(args, epoch, rank)
        return [*torch.rand(2).tolist(), random.random(), float(np.random.rand())]

    assert draws(0, 0) == draws(0, 0)
    assert len({tuple(draws(epoch, rank)) for epoch in (0, 1) for rank in (0, 1)}) == 4


def test_on_windows_the_rendezvous_makes_its_stores_without_libuv(monkeypatch):
    """PyTorch's Windows wheels have no libuv, which TCPStore asks for unless told not to."""
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # not the function of that name
    for module in (rendezvous, static_tcp_rendezvous):
        monkeypatch.setattr(module, "TCPStore", module.TCPStore)  # put back after the test
    monkeypatch.setattr(sys, "platform", "linux")  # first as elsewhere, also when the tests run on Windows
    without_libuv_on_windows()
    assert static_tcp_rendezvous.TCPStore is dist.TCPStore  # elsewhere: left as it is
    monkeypatch.setattr(sys, "platform", "win32")
    without_libuv_on_windows()
    server = static_tcp_rendezvous.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=10))
    client = rendezvous.TCPStore(host_name="127.0.0.1", port=server.port, is_master=False,
                                 timeout=timedelta(seconds=10))
    assert not server.libuvBackend and not client.libuvBackend
    client.set("rank 1", "here")
    assert server.get("rank 1") == b"here"


@pytest.fixture
def one_rank(monkeypatch):
    """This process as rank 0 of a launch of one, as torchrun describes it to ``main``."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    for name in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):  # run() would set this process's torch threads
        monkeypatch.delenv(name, raising=False)


def test_another_datasets_classes_are_declared_by_options(one_rank, tmp_path, capsys):
    """A VOC-like folder (classes 0..20; here 200, not VOC's 255, on borders, so that the default cannot
    pass for it) is refused as the shapes' 0..3, and trains and evaluates with --num-classes 21
    --ignore-index 200, from files and from shards: a 21-class model, 200 skipped by loss and metrics."""
    write_voc_pair(tmp_path / "voc", void=200)
    declared = {"num_classes": 21, "ignore_index": 200}
    write_shards(SegmentationDataset(tmp_path / "voc", split="train", **declared), tmp_path / "shards")
    val = SegmentationDataset(tmp_path / "voc", split="val", size=(16, 16), **declared)
    labelled = int((val[0].mask != 200).sum())  # the pixels the metrics count
    common = ["--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "1", "--size", "16", "--cpu"]
    with pytest.raises(ValueError, match=r"values \[15, 20, 200\] outside the classes 0\.\.3\. If your"):
        main(["--data", str(tmp_path / "voc"), *common])
    for source in (["--data", str(tmp_path / "voc")],
                   ["--shards", str(tmp_path / "shards"), "--val-data", str(tmp_path / "voc")]):
        assert main([*source, *common, "--num-classes", "21", "--ignore-index", "200"]) == 0
        confusion = json.loads((tmp_path / "run" / "rank-0.json").read_text())["eval"]["confusion"]
        assert len(confusion) == 21 and sum(map(sum, confusion)) == labelled < 16 * 16
    for wrong in (["--num-classes", "1"], ["--num-classes", "256"], ["--ignore-index", "3"],
                  ["--ignore-index", "256"]):
        with pytest.raises(SystemExit):
            main(["--data", "d", *common, *wrong])
    assert "--ignore-index must be a value 4..255, outside the classes 0..3" in capsys.readouterr().err


def test_one_rank_trains_from_image_files_with_group_norm(one_rank, tmp_path, capsys):
    """--data reads the files through a DistributedSampler; --norm group keeps no batch statistics."""
    assert main(["--data", str(data_dir("shapes")), "--out", str(tmp_path), "--epochs", "2", "--steps", "2",
                 "--batch-size", "4", "--size", "32", "--norm", "group", "--cpu"]) == 0
    log = json.loads((tmp_path / "rank-0.json").read_text())
    assert log["backend"] == "gloo" and [epoch["steps"] for epoch in log["epochs"]] == [2, 2]
    first, second = (epoch["names"] for epoch in log["epochs"])
    train = {Path(path).stem for path in SegmentationDataset(data_dir("shapes"), split="train").image_paths}
    assert len(set(first)) == 8 and set(first) <= train  # the files' names, as a shard's samples are named
    assert first != second  # set_epoch: another order each epoch
    assert log["eval"]["images"] == 64 and log["checkpoint_matches"]
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any("running_mean" in name for name in weights)  # GroupNorm throughout, no BatchNorm
    assert "mean IoU" in capsys.readouterr().out
    assert not dist.is_initialized()  # the process group was taken down
    assert isinstance(ddp_train.KEPT_UNTIL_EXIT[-1], DistributedDataParallel)  # its wrapper kept till exit


def test_rank_0_warns_of_the_samples_no_epoch_trains(one_rank, tmp_path, monkeypatch):
    """The warning reaches the launch's output (one rank leaves none out: here it is made to)."""
    import helpers.ddp_train as ddp_train

    monkeypatch.setattr(ddp_train, "left_out_every_epoch", lambda args, processes: f"left of {processes}")
    with pytest.warns(UserWarning, match="left of 1"):
        assert main(["--data", str(data_dir("shapes")), "--out", str(tmp_path), "--epochs", "1",
                     "--steps", "1", "--size", "16", "--no-shuffle", "--cpu"]) == 0


def test_the_model_is_saved_before_a_validation_file_can_fail(one_rank, tmp_path, monkeypatch):
    def damaged(*args):
        raise ValueError("Mask .../0300.png holds class 9")

    monkeypatch.setattr(ddp_train, "evaluate_everywhere", damaged)
    with pytest.raises(ValueError, match="class 9"):
        main(["--data", str(data_dir("shapes")), "--out", str(tmp_path), "--epochs", "1", "--steps", "1",
              "--batch-size", "4", "--size", "32", "--norm", "group", "--cpu"])
    assert (tmp_path / "model.pt").is_file()  # the training is kept


@pytest.mark.parametrize("gpus, nccl, why", [
    (1, True, r"This node has 1 GPU\(s\) for 2 processes, and nccl needs one GPU per process"),
    (2, False, "This build of torch has no nccl, which Windows builds lack")])
def test_too_few_gpus_for_the_processes_of_a_node_train_on_the_cpu_with_a_warning(one_rank, tmp_path,
                                                                                  monkeypatch, gpus, nccl,
                                                                                  why):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this node
    started = []

    def init_process_group(backend: str, **options) -> None:  # note the backend, and go no further
        started.append(backend)
        raise InterruptedError

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    with pytest.warns(UserWarning, match=f"{why}: training on the CPU"), pytest.raises(InterruptedError):
        run(parse_args(["--data", str(data_dir("shapes")), "--out", str(tmp_path)]))
    assert started == ["gloo"]


def test_sync_batch_norm_without_gpus_is_refused_before_anything_starts(one_rank, tmp_path, capsys):
    assert main(["--data", str(data_dir("shapes")), "--out", str(tmp_path), "--sync-bn", "--cpu"]) == 2
    assert "--sync-bn needs one GPU per process" in capsys.readouterr().err
    assert not dist.is_initialized() and not any(tmp_path.iterdir())


def test_ranks_that_may_use_cuda_are_spawned_since_the_agent_has_started_cuda_before(monkeypatch):
    """torchrun's agent asks CUDA whether there is a GPU before it starts its ranks, and a rank forked after
    that cannot use CUDA: launch spawns them wherever one may (tests/test_cuda.py launches one there)."""
    monkeypatch.setattr(ddp_train, "RANKS_START", "fork")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ddp_train.ranks_start(["--epochs", "1"], None, processes=2) == "spawn"  # nccl, a GPU each
    assert ddp_train.ranks_start(["--epochs", "1"], None, processes=3) == "fork"  # gloo on the CPU
    assert ddp_train.ranks_start(["--epochs", "1", "--cpu"], None, processes=1) == "fork"
    assert ddp_train.ranks_start(["--cpu"], "script.py", processes=3) == "spawn"  # a script may use CUDA
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ddp_train.ranks_start([], "script.py", processes=2) == "spawn"  # one GPU is enough for a script
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    started = []

    class Launcher:  # what launch starts, recorded instead
        exitcode = 0

        def __init__(self, target, args):
            started.append(args)

        def start(self):
            pass

        def join(self):
            pass

        def is_alive(self):
            return False

    monkeypatch.setattr(ddp_train.multiprocessing, "get_context", lambda method: Namespace(Process=Launcher))
    assert launch(["--epochs", "1"], processes=2) == ""
    assert started[0][5] == "spawn"  # the start method run_agents is given
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert ddp_train.ranks_start(["--epochs", "1"], None, processes=1) == "fork"
    assert ddp_train.ranks_start([], "script.py", processes=1) == "fork"


def test_launch_runs_a_script_on_every_rank_with_its_arguments(tmp_path, quick_launcher, monkeypatch):
    """As on Windows: the agent and ranks spawned (as on macOS too), each rank writing its own logs, since
    spawned ranks cannot print to the agent's. What a rank prints, and what is written to its file
    descriptor 1 (as C++ writes), come back in rank order, although rank 1 prints first (rank 0 waits
    for it)."""
    monkeypatch.setattr(ddp_train, "RANKS_START", "spawn")
    script = tmp_path / "script.py"
    script.write_text("import os\nimport sys\nimport time\nfrom pathlib import Path\n\nimport psutil\n\n"
                      "rank, done = os.environ['RANK'], Path(sys.argv[1], 'printed-1')\n"
                      "me = psutil.Process()\n"
                      "spawned = me.cmdline() != me.parent().cmdline()  # started afresh, not forked\n"
                      "size = os.environ['WORLD_SIZE']\n"
                      "Path(sys.argv[1], 'rank' + rank).write_text(f'{size} {spawned}')\n"
                      "deadline = time.monotonic() + 60\n"
                      "while rank == '0' and not done.exists() and time.monotonic() < deadline:\n"
                      "    time.sleep(0.01)\n"
                      "print('rank', rank, 'printed', flush=True)\n"
                      "os.write(1, f'rank {rank} wrote to 1\\n'.encode())\n"
                      "if rank == '1':\n"
                      "    done.touch()\n")
    output = launch([str(tmp_path)], processes=2, script=script, own_logs=True)
    assert {path.name: path.read_text() for path in tmp_path.glob("rank*")} == {"rank0": "2 True",
                                                                              "rank1": "2 True"}
    assert output.splitlines() == [f"rank {rank} {what}" for rank in (0, 1)
                                   for what in ("printed", "wrote to 1")]


def test_a_rank_keeps_what_its_script_made_so_nothing_is_torn_down_before_the_process_ends(
        tmp_path, monkeypatch, capsys):
    script = tmp_path / "script.py"
    script.write_text("import sys\nimport weakref\n\nclass Model:\n    pass\n\n"
                      "model = Model()\nweakref.finalize(model, print, 'torn down')\n"
                      "print('argv', sys.argv[1:])\n")
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    monkeypatch.setattr(ddp_train, "KEPT_UNTIL_EXIT", [])
    assert run_script(str(script), "DATA") == 0
    gc.collect()
    assert capsys.readouterr().out == "argv ['DATA']\n"  # run, with its arguments, and not torn down
    ddp_train.KEPT_UNTIL_EXIT.clear()
    gc.collect()
    assert capsys.readouterr().out == "torn down\n"  # the check above could fail


def _start_a_sleeper(pid_file: str) -> None:
    """A launcher stand-in: starts a process (an agent) that starts another (a rank) that would run for a
    minute, and waits."""
    rank = ("import subprocess, sys, time; from pathlib import Path; "
            "rank = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"Path({pid_file!r}).write_text(str(rank.pid)); rank.wait()")
    subprocess.Popen([sys.executable, "-c", rank]).wait()


@pytest.mark.skipif(sys.platform != "linux", reason="forks the stand-in")
def test_an_interrupted_launch_ends_what_its_launcher_started(tmp_path):
    """As on Windows, where terminating the launcher runs none of its handlers: no process it started,
    directly or not, is left running."""
    pid_file = tmp_path / "pid"
    launcher = multiprocessing.get_context("fork").Process(target=_start_a_sleeper, args=(str(pid_file),))
    launcher.start()
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.01)
    sleeper = psutil.Process(int(pid_file.read_text()))
    ddp_train.stop([launcher])
    sleeper.wait(timeout=10)  # raises TimeoutExpired while it still runs
    assert not sleeper.is_running()
