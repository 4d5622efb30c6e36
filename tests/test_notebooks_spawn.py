"""Notebooks that start DataLoader workers must also run when workers are spawned.

Linux up to Python 3.13 starts workers with fork, which hides a Dataset defined in a notebook cell;
macOS and Windows use spawn, Linux from Python 3.14 forkserver, which import it instead. nbval runs
every notebook with workers started by forkserver (tests/conftest.py); this runs those that start
workers once more, top to bottom, under spawn.
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


NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if starts_workers(p)]


def test_the_detector_finds_worker_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"03_augmentation.ipynb", "04_dataloader_batching.ipynb"}


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
