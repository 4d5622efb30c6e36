"""tools/binder_check.py, which measures the README's notebook table as Binder limits it: a notebook's
peak memory counts every process it starts, and a notebook that fails stops the run, named."""

import os
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only, as Binder")


@pytest.fixture
def binder_check(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "tools"))
    import binder_check

    return binder_check


def notebook(path: Path, source: str) -> Path:
    """A notebook of one code cell."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_peak_memory_of_a_notebook_counts_the_processes_it_starts(binder_check, tmp_path):
    child = "import time; data = b'x' * (300 * 2**20); time.sleep(1.5)"  # 300 MiB, every page touched
    path = notebook(tmp_path / "starts_one.ipynb",
                    f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)")
    row = binder_check.run_notebook(path, 1, tmp_path)
    assert row["notebook"] == "starts_one" and row["cpus"] == 1 and row["seconds"] > 1.5
    assert row["peak_pss_gb"] >= 0.3 and row["processes_at_peak"] >= 2, row  # the kernel and its child


def test_a_notebook_that_fails_stops_the_run_and_is_named(binder_check, tmp_path):
    path = notebook(tmp_path / "fails.ipynb", "raise ValueError('the data is missing')")
    with pytest.raises(SystemExit, match=r"(?s)fails.ipynb failed on 1 CPU\(s\).*the data is missing"):
        binder_check.run_notebook(path, 1, tmp_path)
