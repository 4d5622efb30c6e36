"""Helpers for the Pixels to Batches notebooks.

Small, typed functions that more than one notebook (or a DataLoader worker) needs.
Import the module you need, e.g. ``from helpers.paths import data_dir``:

- ``helpers.paths``: where the repository and its ``data/`` folder are.
- ``helpers.device``: pick CUDA, then MPS, then CPU; copy without waiting (``upload``); make batches
  ahead in a background thread (``prefetch``).
- ``helpers.seeding``: seed Python, NumPy and torch in one call.
- ``helpers.env``: a short report of versions, device, cores and start method.
- ``helpers.viz``: show PIL images and tensors in a grid; masks overlaid on images.
- ``helpers.training``: "overfit one batch", loader-vs-step timing, ``to_device``, ``train_one_epoch``,
  ``evaluate``, losses and checkpoints.
- ``helpers.models``: a small ``UNet``.
- ``helpers.metrics``: confusion matrix, per-class IoU and Dice, mean IoU.
- ``helpers.masks``: class names, palette, ignore index; colour <-> class-index conversions.
- ``helpers.datasets``: ``SegmentationDataset``, image+mask pairs by name with clear errors, optionally
  resized as read (``read_pair``, ``decode_image``); ``InMemoryDataset``, decoded once.
- ``helpers.doctor``: every problem of an images/ + masks/ folder at once
  (``python -m helpers.doctor FOLDER``).
- ``helpers.scenes``: the generator of ``data/shapes`` (``python -m helpers.scenes``).
- ``helpers.transforms``: train and eval pipelines, ``RandomCutout``, dataset statistics.
- ``helpers.batching``: ``pad_collate``, ``batches_by_size``, batch-level float conversion and flips
  (``flip_collate``).
- ``helpers.formats``: memory-mapped arrays, HDF5 and tar shards, written and read.
- ``helpers.memory``: memory of this process and of DataLoader workers.
- ``helpers.bench``: the benchmark command (``python -m helpers.bench``) and the naive pipeline it beats.
- ``helpers.device_batches``: decoded samples kept on the device, cropped, flipped and turned there a
  batch at a time (``DeviceBatches``, ``augment_batch``).
- ``helpers.gpu_decode``: JPEGs decoded by the GPU a batch at a time (torchcodec, an optional install).
- ``helpers.progress``: progress bars for notebooks and terminals.
- ``helpers.results``: figures from other machines, printed from ``results/``.
- ``helpers.ddp_train``: data-parallel training, one process per device (``torchrun -m helpers.ddp_train``).
"""

__version__ = "0.1.0"
