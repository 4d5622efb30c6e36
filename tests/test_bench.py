"""helpers.bench: the decode ceiling on one core needs no second process (Binder's one CPU); on more
its pool is set to decode in spawned processes, one per core, each on one thread (04 runs the pool). The
format benchmark's shards split evenly over workers. A map the GPU cannot gather from is reported, not
fatal. A few worker counts are timed on any machine. The printed table holds each pipeline to its own
ceiling. Its figures (images per second, the ceilings, timings) are the arithmetic their docstrings
state, checked against a made-up clock: the README's speeds and shares rest on them."""

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch

from helpers import bench
from helpers.datasets import decode_image, pair_files
from helpers.env import usable_cores
from helpers.formats import PageLockRefused
from helpers.paths import data_dir, repo_root


def test_the_decode_ceiling_on_one_core_decodes_in_this_process(monkeypatch):
    monkeypatch.setattr(bench, "ProcessPoolExecutor", None)  # a pool would fail here
    assert bench.decode_ceiling(data_dir("shapes"), processes=1, size=64) > 0


def test_the_decode_ceiling_on_two_cores_sets_its_pool_to_two_spawned_single_threaded_processes(monkeypatch):
    """The pool's settings, without starting it: 04 runs the real pool (two processes on a 2-core machine)."""
    monkeypatch.setattr(bench, "_decode_here", None)  # decoding in this process would fail here
    pools, maps = [], []

    class Pool:
        def __init__(self, *args, **kwargs):
            pools.append((args, kwargs))

        def __enter__(self):
            return self

        def __exit__(self, *error):
            return False

        def map(self, function, pairs, chunksize=1):
            maps.append((function, len(pairs)))
            return [0] * len(pairs)

    monkeypatch.setattr(bench, "ProcessPoolExecutor", Pool)
    assert bench.decode_ceiling(data_dir("shapes"), processes=2, size=64) > 0
    [(args, options)] = pools
    assert args == (2,) and options["mp_context"].get_start_method() == "spawn"
    assert options["initializer"] is bench._ready and options["initargs"][1] == 1  # one thread, as a worker
    assert maps[0] == (bench._decode_pair, 2) and maps[1][0] is bench._decode_pair and maps[1][1] >= 2000


class Clock:
    """time.perf_counter for a test: each call two seconds after the one before."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 2.0
        return self.now


def test_the_decode_ceiling_decodes_each_pair_as_the_recommended_pipeline_does(monkeypatch):
    """The JPEG at the reduced scale that 64 px allows, the mask sampled to 64 x 64: pairs over seconds."""
    shapes = data_dir("shapes")
    image, mask = (str(path) for path in pair_files(shapes / "images", shapes / "masks")[0])
    reduced, full = decode_image(Path(image), (64, 64))[0], decode_image(Path(image))[0]
    assert bench._decode_pair((image, mask, 64)) == reduced.numel() + 64 * 64 < full.numel() + 64 * 64
    threads = []
    monkeypatch.setattr(bench, "_decode_pair", lambda pair: threads.append(torch.get_num_threads()))
    monkeypatch.setattr(bench.time, "perf_counter", Clock())
    assert bench._decode_here([(image, mask, 64)] * 10) == 10 / 2.0  # ten pairs in one tick of the clock
    assert threads == [1] * 11  # one warm-up, then ten; on one torch thread, as a DataLoader worker


def test_the_memory_ceiling_is_the_copy_bandwidth_over_the_bytes_each_image_moves(monkeypatch):
    """In and out of memory on a CPU: uint8 image and mask read, float32 image and int64 mask written (24
    bytes a pixel). For a GPU the CPU gathers uint8 only (8), and the link carries the batch (4)."""
    pixels = 224 * 224
    assert bench.bytes_per_image(224) == 24 * pixels
    assert bench.bytes_per_image(224, torch.device("cuda")) == 8 * pixels
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 24e9)
    monkeypatch.setattr(bench, "decode_ceiling", lambda root, processes, size: 100.0)
    monkeypatch.setattr(bench, "host_to_device_bandwidth", lambda device: 8e9)
    assert bench.ceilings(Path("data"), 224, 2) == {"decode only": 100.0, "memory only": 1e9 / pixels,
                                                     "copy GB/s": 24.0}
    on_gpu = bench.ceilings(Path("data"), 224, 2, torch.device("cuda"))
    assert on_gpu == {"decode only": 100.0, "memory only": 2e9 / pixels, "copy GB/s": 24.0,
                      "host to device GB/s": 8.0, "link only": 2e9 / pixels}  # the link is the lower


def test_timings_are_the_mean_of_a_round_and_the_best_of_rounds(monkeypatch):
    calls, ticks = [], iter([0.0, 0.3, 1.0, 1.15, 2.0, 2.6])  # rounds of 0.3, 0.15 and 0.6 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    assert bench.milliseconds(lambda: calls.append(1), repeats=3, rounds=3) == pytest.approx(50.0)
    assert len(calls) == 9
    monkeypatch.setattr(bench.time, "perf_counter", Clock())
    assert bench.copy_bandwidth(megabytes=1, repeats=3) == 2 * 2**20 * 3 / 2.0  # read and written


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_timed_call_on_a_gpu_is_waited_for_before_each_round_ends(monkeypatch, device):
    """A GPU runs what a call queues after the call returns: the clock starts after the GPU has done what
    came before, and stops after it has done the round's work."""
    events = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: events.append("clock") or 0.0)
    wait = (torch.cuda, "synchronize") if device == "cuda" else (torch.mps, "synchronize")
    monkeypatch.setattr(*wait, lambda *_: events.append("wait"))
    bench.milliseconds(lambda: events.append("call"), repeats=2, rounds=2, device=torch.device(device))
    assert events == ["wait", "clock", "call", "call", "wait", "clock"] * 2
    events.clear()
    bench.milliseconds(lambda: events.append("call"), repeats=2, rounds=1, device=torch.device("cpu"))
    assert events == ["clock", "call", "call", "clock"]


def test_images_per_second_counts_every_image_of_an_epoch_over_its_time(monkeypatch):
    """The best of the timed epochs, after a warm-up one; while workers load, the main process keeps only
    the cores they leave for its torch threads."""
    batches = [(torch.zeros(size, 3, 2, 2), torch.zeros(size, 2, 2, dtype=torch.int64)) for size in (4, 4, 2)]
    threads = []
    finish = lambda batch: threads.append(torch.get_num_threads()) or batch  # noqa: E731
    monkeypatch.setattr(bench.time, "perf_counter", Clock())
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        speed = bench.images_per_second(bench.Pipeline(lambda workers: batches, finish), 1, epochs=2)
        assert speed == 10 / 2.0 and threads == [3] * 9 and torch.get_num_threads() == 4  # 3 epochs of 3
        threads.clear()
        bench.images_per_second(bench.Pipeline(lambda workers: batches, finish), 6, progress=False)
        assert threads == [1] * 6  # more workers than cores: still one thread
        uint8 = bench.Pipeline(lambda workers: batches, lambda batch: (batch[0].byte(), batch[1]))
        with pytest.raises(AssertionError):  # a pipeline must deliver what the model takes
            bench.images_per_second(uint8, 0, progress=False)
    finally:
        torch.set_num_threads(before)


def test_the_format_benchmark_writes_shards_that_every_worker_count_splits_evenly(tmp_path):
    chosen = bench.format_pipelines(data_dir("shapes"), 16, 8, tmp_path)
    images, masks = next(iter(chosen["shards"].loader(0)))  # uint8 both, as the recommended pipeline's
    assert (images.dtype, masks.dtype, tuple(masks.shape)) == (torch.uint8, torch.uint8, (8, 16, 16))
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    sizes = []
    for path in shards:
        with tarfile.open(path) as tar:
            sizes.append(len(tar.getnames()) // 2)
    assert len(shards) == bench.SHARDS and max(sizes) - min(sizes) <= 1  # 320 pairs: 6 or 7 in each
    assert all(len(shards) % workers == 0 for workers in (1, 2, 4, 8, 12, 16))  # the counts results/ use
    assert bench.uneven_shards_note([0, 1, 2, 3, 4]) is None
    note = bench.uneven_shards_note([0, 1, 2, 3, 4, 5, 6, 7])  # the default on 7 cores
    assert "do not divide among 5, 7 workers" in note and note.endswith("--workers 0 1 2 3 4 6")


@pytest.mark.parametrize("refusal", [
    MemoryError("images.npy is 9.0 GiB, more than half of the 4.0 GiB of memory available"),
    PageLockRefused("Cannot page-lock the map in /data for the GPU (CUDA error 801)")])
def test_a_map_the_gpu_cannot_gather_is_reported_and_the_benchmark_goes_on(tmp_path, monkeypatch, capsys,
                                                                          refusal):
    """``memmap, gpu gathers`` needs the map page-locked in RAM; where it does not fit, or the GPU refuses
    it, the run says so, measures the rest, and holds that pipeline to the link's ceiling where it runs.
    The ceilings come first and --json keeps each pipeline as it ends, with its share: a run cut short
    keeps every figure it measured."""
    def refused(workers):
        kept = json.loads((tmp_path / "b.json").read_text())  # what a run stopped here would keep
        assert set(kept["pipelines"]) == set(kept["shares"]) == {"naive", "recommended"}
        assert kept["ceilings"]["decode only"] == 1.0
        raise refusal

    real, gathers = bench.pipelines, {bench.GPU_GATHERS: bench.Pipeline(refused, None)}
    monkeypatch.setattr(bench, "pipelines", lambda *args: real(*args) | gathers)
    monkeypatch.setattr(bench, "ceilings", lambda *args: {"decode only": 1.0, "memory only": 1.0,
                                                          "copy GB/s": 1.0})
    results = bench.main(["--count", "8", "--side", "48", "--size", "32", "--batch-size", "4",
                          "--workers", "0", "--epochs", "1", "--data", str(tmp_path / "data"),
                          "--json", str(tmp_path / "b.json")])
    assert set(results) == {"naive", "recommended"}
    assert f"memmap, gpu gathers: not measured: {refusal}" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "b.json").read_text())["shares"]) == {"naive", "recommended"}
    limits = {"decode only": 1.0, "memory only": 4.0, "link only": 2.0}
    assert bench.shares({bench.GPU_GATHERS: {0: 1.0}, "memmap": {0: 1.0}}, limits) == {
        bench.GPU_GATHERS: 0.5, "memmap": 0.25}
    decoders = ("naive", "recommended", "shards", bench.GPU_STORED)
    assert [bench.ceiling_of(name, limits) for name in decoders] == ["decode only"] * 3 + ["gpu decode only"]


def test_the_worker_counts_timed_are_a_few_on_any_machine_and_end_at_its_cores():
    assert bench.worker_counts(1) == [0, 1]
    assert bench.worker_counts(2) == [0, 1, 2]  # on 2 cores every count, as before
    assert bench.worker_counts(6) == [0, 1, 2, 4, 6]
    assert bench.worker_counts(64) == [0, 1, 2, 4, 8, 16, 32, 64]


def test_the_table_and_last_line_report_each_pipeline_against_its_own_ceiling(tmp_path, monkeypatch, capsys):
    """The printed table: every ceiling measured, each pipeline's speeds in the order the worker counts were
    given, its share of its own ceiling; the last line, the best pipeline over naive at each one's best
    worker count. The two compared on a GPU (recommended, gpu decode) run first and the gathering map last,
    yet the table keeps the order the pipelines were chosen in."""
    speeds = {"naive": {0: 100.0, 2: 200.0}, "recommended": {0: 300.0, 2: 250.0},
              bench.GPU_GATHERS: {0: 400.0, 2: 100.0}, "gpu decode": {0: 50.0, 2: 150.0}}
    chosen = {name: bench.Pipeline(None, None) for name in speeds}
    ran = []
    monkeypatch.setattr(bench, "bench_data", lambda *args: tmp_path)
    monkeypatch.setattr(bench, "ceilings", lambda *args: {
        "decode only": 1000.0, "memory only": 2000.0, "copy GB/s": 9.5, "host to device GB/s": 4.25,
        "link only": 800.0})
    monkeypatch.setattr(bench, "pipelines", lambda *args: chosen)
    monkeypatch.setattr(bench, "gpu_decode_ceiling", lambda *args: 300.0)
    monkeypatch.setattr(bench, "images_per_second",
                        lambda pipeline, workers, label, epochs: ran.append(label) or speeds[label][workers])
    assert bench.main(["--workers", "2", "0", "--epochs", "1", "--plot", str(tmp_path / "b.png")]) == speeds
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot: the chart saved
    assert ran == ["recommended"] * 2 + ["gpu decode"] * 2 + ["naive"] * 2 + [bench.GPU_GATHERS] * 2
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.strip().startswith("ceiling"))):]
    assert table[0].split()[1:3] == ["1000", "decode"]
    assert "2000   memory only" in table[1] and "9.5 GB/s, 4.2 GB/s to the GPU" in table[1]
    assert "800   link only" in table[2] and "4.2 GB/s" in table[2]
    assert "300   gpu decode only" in table[3]
    assert table[4].split() == ["pipeline", "2", "w", "0", "w", "(images", "per", "second)"]
    rows = [line.split() for line in table[5:-1]]
    assert rows == [["naive", "200", "100", "20%", "of", "the", "decode", "ceiling"],
                    ["recommended", "250", "300", "30%", "of", "the", "decode", "ceiling"],
                    ["memmap,", "gpu", "gathers", "100", "400", "50%", "of", "the", "link", "ceiling"],
                    ["gpu", "decode", "150", "50", "50%", "of", "the", "gpu", "decode", "ceiling"]]
    assert table[-1] == ("best speed-up: 2.00x (memmap, gpu gathers with 0 workers over naive with 2 "
                         "workers)")
    # naive the fastest, at its lower worker count:
    slower = bench.speedup_line({"naive": {0: 400.0, 2: 300.0}, "recommended": {0: 100.0, 2: 200.0}})
    assert slower == "best speed-up: 0.50x (recommended with 2 workers over naive with 0 workers)"


def test_the_defaults_are_those_the_usage_line_and_the_readme_name(capsys):
    args = bench.parse_args([])
    usage = dict(re.findall(r"\[--([a-z-]+) (\d+)\]", bench.__doc__))  # "[--count 2000]", ...
    assert set(usage) == {"count", "side", "size", "batch-size", "epochs"}
    assert {name: getattr(args, name.replace("-", "_")) for name in usage} == {
        name: int(value) for name, value in usage.items()}
    assert args.workers == bench.worker_counts(usable_cores()) and args.device == torch.device("cpu")
    readme = " ".join((repo_root() / "README.md").read_text(encoding="utf-8").split())
    assert f"{args.count:,} JPEG images of {args.side} x {args.side}" in readme
    assert (f"batches of {args.batch_size}, each delivering normalised float 3 x {args.size} x {args.size} "
            f"images and int64 {args.size} x {args.size} masks") in readme
    assert "then times three whole epochs" in readme and args.epochs == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert bench.__doc__.splitlines()[0] in printed  # the description --help prints
