"""Shared test setup: figures off-screen, what the unit tests' forkserver imports once, and the start method
of the notebooks' DataLoader workers.

The kernels that nbval (and the spawn rerun) launch read an IPython startup file made here, which sets
the start method for DataLoader workers: ``forkserver`` by default on Linux (its default from Python
3.14, and stricter than ``fork``: the dataset is pickled into each worker), ``spawn`` elsewhere (their
default: forking a process that has imported torch is unsafe on macOS), or what the environment variable
``NOTEBOOK_START_METHOD`` names, e.g. ``NOTEBOOK_START_METHOD=fork python -m pytest notebooks``. With
``spawn``, 07's launches spawn their agents and ranks as well, as on macOS and Windows.
"""

import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest

matplotlib.use("Agg")


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform == "linux":  # the unit tests' own forkserver (macOS would rather not fork torch):
        # what it starts forks from a server that has imported these once; what is pickled is unchanged
        multiprocessing.set_forkserver_preload(["torch", "torchvision", "webdataset", "helpers.formats",
                                                "helpers.ddp_train"])
    method = os.environ.get("NOTEBOOK_START_METHOD", "forkserver" if sys.platform == "linux" else "spawn")
    if method not in multiprocessing.get_all_start_methods():  # Windows has spawn only
        return
    startup = Path(tempfile.mkdtemp(prefix="nbval-ipython-")) / "profile_default" / "startup"
    startup.mkdir(parents=True)
    lines = ["import multiprocessing", f"multiprocessing.set_start_method({method!r}, force=True)"]
    if method == "forkserver":  # the server imports torch once, not each worker: faster, same pickling
        lines.append('multiprocessing.set_forkserver_preload(["torch", "torchvision"])')
    if method == "spawn":  # 07's launches too start their agents and ranks as on macOS and Windows
        lines += ["import helpers.ddp_train", "helpers.ddp_train.RANKS_START = 'spawn'"]
    (startup / "00_start_method.py").write_text("\n".join(lines) + "\n")
    os.environ["IPYTHONDIR"] = str(startup.parent.parent)  # kernels started by the tests inherit it
    os.environ["KERNEL_START_METHOD"] = method  # what tests/test_notebooks_spawn.py checks they got


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
