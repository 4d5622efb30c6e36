import multiprocessing
import platform
import subprocess
import sys

import PIL
import pytest
import torch

from helpers.env import environment_report, format_report, major_minor, usable_cores, worker_stderr


def test_report_names_versions_device_cores_and_start_method():
    report = environment_report()
    assert list(report) == ["python", "platform", "torch", "torchvision", "pillow", "device",
                            "cpu cores usable", "worker start method", "jpeg decoder", "torchcodec"]
    assert report["python"] == platform.python_version() and report["pillow"] == PIL.__version__
    assert report["torch"] == torch.__version__
    assert report["device"].split()[0] in {"cuda", "mps", "cpu"}
    assert int(report["cpu cores usable"]) == usable_cores() >= 1
    assert report["worker start method"] in {"fork", "spawn", "forkserver"}
    assert report["jpeg decoder"].startswith("simplejpeg 1.")  # the README's install includes it
    assert report["torchcodec"].startswith("0.")  # requirements-teacher.txt includes it
    if report["device"].startswith("cpu"):
        assert report["device"].endswith(f", {torch.backends.cpu.get_cpu_capability()})")


def test_the_report_says_when_torchcodec_is_too_old_for_06(monkeypatch):
    from helpers.env import torchcodec_version

    too_old = "0.11.0+cpu (too old for 06's JPEGs decoded by the GPU, which need 0.16 or newer)"
    for version, said in [("0.11.0+cpu", too_old), ("0.16.0", "0.16.0")]:  # Colab's, then one new enough
        monkeypatch.setattr("importlib.metadata.version", lambda name, version=version: version)
        assert torchcodec_version() == said


def test_usable_cores_are_those_this_process_may_run_on_not_all_the_machine_has(monkeypatch):
    monkeypatch.setattr("helpers.env.CPU_QUOTAS", ())  # no container quota
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3}, raising=False)  # taskset -c 3
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert usable_cores() == 1
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # macOS and Windows have none
    assert usable_cores() == 64
    monkeypatch.setattr("os.cpu_count", lambda: None)  # "undetermined"
    assert usable_cores() == 1


@pytest.mark.parametrize(("files", "cores"), [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, Docker's --cpus 1.5: two cores, partly used
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, 16),  # no quota
    ({"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}, 16),
    ({}, 16),  # neither file: not in a container, or not Linux
    ({"cpu.max": "lots 0\n"}, 16),  # not as documented: ignored, not raised
    ({"cpu.max": "100000 0\n"}, 16),
])
def test_usable_cores_respect_a_containers_cpu_quota(monkeypatch, tmp_path, files, cores):
    """Binder and `docker run --cpus` limit CPU time, not the cores a process may run on: without the quota
    a notebook would start a worker per core of the whole host."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr("helpers.env.CPU_QUOTAS", (tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us"))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert usable_cores() == cores


def test_report_says_what_needs_a_package_that_is_missing():
    from helpers.env import optional_version

    assert optional_version("no-such-package", "nothing needs it") == "not installed (nothing needs it)"


def test_report_says_what_is_lost_without_simplejpeg(monkeypatch):
    from helpers import datasets

    monkeypatch.setattr(datasets, "simplejpeg", None)
    assert environment_report()["jpeg decoder"].startswith("PIL (pip install simplejpeg: ")


def test_start_method_is_read_without_fixing_it():
    code = ("import multiprocessing; from helpers.env import worker_start_method; "
            "method = worker_start_method(); "
            "assert multiprocessing.get_start_method(allow_none=True) is None; "
            "multiprocessing.set_start_method('spawn'); print(method)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == multiprocessing.get_all_start_methods()[0]


def test_the_start_method_is_the_one_set_else_the_platforms_default(monkeypatch):
    from helpers.env import worker_start_method

    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none: "forkserver")
    assert worker_start_method() == "forkserver"
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none: None if allow_none else "x")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn", "fork"])
    assert worker_start_method() == "spawn"


def test_format_report_aligns_keys():
    lines = format_report({"a": "1", "long key": "2"}).splitlines()
    assert lines == ["a        : 1", "long key : 2"]


@pytest.mark.skipif(sys.platform == "win32", reason="a child on Windows does not inherit the redirection")
def test_worker_stderr_catches_what_a_child_process_prints():
    code = "import sys; sys.stderr.write('\\x1b[31mAttributeError: gone\\x1b[0m\\n')"
    with worker_stderr() as lines:
        subprocess.run([sys.executable, "-c", code], check=True)
        assert lines == []  # filled when the block ends
    assert lines == ["AttributeError: gone"]


def test_versions_compare_by_number_not_as_text():
    assert major_minor("0.29.1+cu130") == (0, 29) and major_minor("2.14.1") == (2, 14)
    assert major_minor("0.100.0") > (0, 28) > major_minor("0.9.0")  # as text, "0.100" < "0.28"
    assert major_minor("0.16rc1") == major_minor("0.16+cu128") == (0, 16)
