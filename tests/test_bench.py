"""helpers.bench: the decode ceiling on one core needs no second process (Binder's one CPU); on more
it decodes in spawned processes, one per core. The format benchmark's shards split evenly over workers."""

import tarfile

from helpers import bench
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
