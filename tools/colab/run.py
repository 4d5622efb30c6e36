"""Run notebooks as Colab runs one opened from GitHub (noxfile.py, session ``colab``).

Each notebook runs from a fresh kernel in a working folder outside the repository, with ``google.colab``
imported at start as on Colab, so its own Colab cell does what it does there: clones the repository (a
stand-in ``git`` copies this checkout), installs helpers/ without dependencies, webdataset and
simplejpeg, and sets PIXELS_TO_BATCHES_ROOT. The one change to a notebook: the clone goes to a temporary
folder instead of /content. A last cell checks that helpers came from the clone's install, not from this
checkout, and that they decode JPEGs with simplejpeg.

    python tools/colab/run.py [NOTEBOOK ...]     # default: every notebook
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent  # holds google/colab and the stand-in git
CHECKOUT = HERE.parent.parent
COLAB_ROOT = "/content/pixels-to-batches"  # where the Colab cell clones to
CHECK_INSTALL = ("import helpers, torch\n"
                 "from helpers import datasets\n"
                 "assert not helpers.__file__.startswith({checkout!r}), helpers.__file__\n"
                 "assert datasets.simplejpeg is not None, 'the Colab cell did not install simplejpeg'\n"
                 "print('helpers from', helpers.__file__, '| torch', torch.__version__)")


def colab_environment(scratch: Path) -> None:
    """Kernels started from here import google.colab first and find the stand-in git."""
    startup = scratch / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00_colab.py").write_text("import google.colab  # as Colab's kernel does\n")
    os.environ.pop(  # Colab has no checkout to point at: the cell sets it
        "PIXELS_TO_BATCHES_ROOT", None)
    os.environ.update(IPYTHONDIR=str(scratch / "ipython"), COLAB_CHECKOUT=str(CHECKOUT),
                      PYTHONPATH=str(HERE), PATH=f"{HERE}{os.pathsep}{os.environ['PATH']}")


def run(path: Path, content: Path) -> float:
    """Execute one notebook with ``content`` as its working folder; return the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    colab_cell = notebook.cells[1]
    assert COLAB_ROOT in colab_cell.source, f"{path.name}: no Colab cell in second place"
    colab_cell.source = colab_cell.source.replace(COLAB_ROOT, str(content / "pixels-to-batches"))
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK_INSTALL.format(checkout=str(CHECKOUT / "helpers"))))
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(content)}}).execute()
    print(f"{path.stem:<24} ran on Colab's stack in {time.perf_counter() - start:4.0f} s: "
          + notebook.cells[-1].outputs[-1]["text"].strip(), flush=True)
    return time.perf_counter() - start


def main() -> None:
    paths = [Path(arg).resolve() for arg in sys.argv[1:]]
    paths = paths or sorted((CHECKOUT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="colab_") as scratch:
        content = Path(scratch) / "content"  # Colab's working folder, /content there
        content.mkdir()
        colab_environment(Path(scratch))
        total = sum(run(path, content) for path in paths)
    print(f"{len(paths)} notebooks passed on Colab's stack in {total:.0f} s")


if __name__ == "__main__":
    main()
