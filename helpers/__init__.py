"""Helpers for the Pixels to Batches notebooks.

Small, typed functions that more than one notebook (or a DataLoader worker) needs.
Import the module you need, e.g. ``from helpers.paths import data_dir``:

- ``helpers.paths``: where the repository and its ``data/`` folder are.
- ``helpers.device``: pick CUDA, then MPS, then CPU.
- ``helpers.seeding``: seed Python, NumPy and torch in one call.
- ``helpers.env``: a short report of versions, device, cores and start method.
- ``helpers.viz``: show PIL images and tensors in a grid.
"""

__version__ = "0.1.0"
