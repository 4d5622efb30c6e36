"""The lesson on how workers start must also run when workers are spawned.

Linux up to Python 3.13 starts workers with fork, which hides a Dataset defined in a notebook cell;
macOS and Windows use spawn, Linux from Python 3.14 forkserver, which both pickle the dataset into each
worker and import its class. nbval runs every notebook with workers started by forkserver
on Linux (conftest.py), which catches what spawn would refuse, and tests/test_workers.py reads every
Dataset of helpers/ through spawned workers. This runs 00, which starts a worker the way the machine
does, once more, top to bottom, under spawn itself: each behaviour tested once, where it is cheapest
(04, which shows the spawn error on purpose, shows it under forkserver in the same way).
"""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
WORKERS = re.compile(r"num_workers=(?!0\b)")  # any worker count but a literal 0
FORCE_SPAWN = ('import multiprocessing\n'
               'multiprocessing.set_start_method("spawn", force=True)')


def starts_workers(path: Path) -> bool:
    notebook = nbformat.read(path, as_version=4)
    return any(WORKERS.search(cell.source) for cell in notebook.cells if cell.cell_type == "code")


NOTEBOOKS = [ROOT / "notebooks" / "00_start_here.ipynb"]


def test_the_spawn_lesson_starts_workers():
    assert all(starts_workers(path) for path in NOTEBOOKS)
    assert not starts_workers(ROOT / "notebooks" / "01_two_images.ipynb")  # the detector can say no


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_spawned_workers(path):
    notebook = nbformat.read(path, as_version=4)
    # right after the title, before the Colab cell
    notebook.cells.insert(1, nbformat.v4.new_code_cell(FORCE_SPAWN))
    # conftest's startup file reaches this kernel as it reaches nbval's
    if "KERNEL_START_METHOD" in os.environ:
        expected = os.environ["KERNEL_START_METHOD"]
        notebook.cells.insert(1, nbformat.v4.new_code_cell(
            f"import multiprocessing\nassert multiprocessing.get_start_method() == {expected!r}"))
    notebook.cells.append(nbformat.v4.new_code_cell(
        'assert multiprocessing.get_start_method() == "spawn"'))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
