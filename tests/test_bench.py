"""helpers.bench: the decode ceiling on one core needs no second process (Binder's one CPU); on more
it decodes in spawned processes, one per core. The format benchmark's shards split evenly over workers.
A map the GPU cannot gather from is reported, not fatal. A few worker counts are timed on any machine."""

import json
import tarfile

import pytest

from helpers import bench
from helpers.formats import PageLockRefused
from helpers.paths import data_dir


def test_the_decode_ceiling_on_one_core_decodes_in_this_process(monkeypatch):
    monkeypatch.setattr(bench, "ProcessPoolExecutor", None)  # a pool would fail here
    assert bench.decode_ceiling(data_dir("shapes"), processes=1, size=64) > 0


def test_the_decode_ceiling_on_two_cores_decodes_in_two_spawned_processes(monkeypatch):
    monkeypatch.setattr(bench, "_decode_here", None)  # decoding in this process would fail here
    assert bench.decode_ceiling(data_dir("shapes"), processes=2, size=64) > 0


def test_the_format_benchmark_writes_shards_that_every_worker_count_splits_evenly(tmp_path):
    bench.format_pipelines(data_dir("shapes"), 16, 8, tmp_path)
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


def test_the_worker_counts_timed_are_a_few_on_any_machine_and_end_at_its_cores():
    assert bench.worker_counts(1) == [0, 1]
    assert bench.worker_counts(2) == [0, 1, 2]  # on 2 cores every count, as before
    assert bench.worker_counts(6) == [0, 1, 2, 4, 6]
    assert bench.worker_counts(64) == [0, 1, 2, 4, 8, 16, 32, 64]
