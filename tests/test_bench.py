"""helpers.bench: the decode ceiling on one core needs no second process (Binder's one CPU); on more
it decodes in spawned processes, one per core."""

from helpers import bench
from helpers.paths import data_dir


def test_the_decode_ceiling_on_one_core_decodes_in_this_process(monkeypatch):
    monkeypatch.setattr(bench, "ProcessPoolExecutor", None)  # a pool would fail here
    assert bench.decode_ceiling(data_dir("shapes"), processes=1, size=64) > 0


def test_the_decode_ceiling_on_two_cores_decodes_in_two_spawned_processes(monkeypatch):
    monkeypatch.setattr(bench, "_decode_here", None)  # decoding in this process would fail here
    assert bench.decode_ceiling(data_dir("shapes"), processes=2, size=64) > 0
