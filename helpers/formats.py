"""Data larger than memory: pre-decoded memory-mapped arrays, HDF5, and tar shards.

Taught in 05_large_datasets; ``helpers.bench --formats`` measures them. Every reader opens its files
for reading lazily, inside the process that reads (a DataLoader worker); ``__init__`` opens them only to
check them and keeps no handle: open handles and memory maps do not survive pickling into workers.
"""

import lzma
import operator
import os
import re
import sys
import tarfile
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import NamedTuple

import h5py
import numpy as np
import psutil
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.transforms import v2

from helpers.datasets import InMemoryFile, Sample, SegmentationDataset, check_mask_array, read_pair
from helpers.device import upload
from helpers.masks import CLASSES


def disk_megabytes(path: Path) -> float:
    """Size on disk of a file, or of everything in a folder, in MiB."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def resized_pairs(dataset: SegmentationDataset, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield each pair decoded and resized once: uint8 image ``[3, size, size]``, uint8 mask
    ``[size, size]``."""
    resize = v2.Resize((size, size), antialias=True)  # masks: nearest
    for index, (image, mask) in enumerate(dataset):
        if image.dtype != torch.uint8 or mask.is_floating_point():
            raise ValueError(f"Image {dataset.image_paths[index]} came from the dataset as {image.dtype}, "
                             f"its mask as {mask.dtype}: these files store the pixels as read, uint8, and "
                             "would wrap other values around. Pass a dataset without a transform (or one "
                             "made with normalize=False).")
        image, mask = resize(image, mask)
        if mask.max() > 255:
            raise ValueError(f"Mask {dataset.mask_paths[index]} has class {int(mask.max())}, but these files "
                             "store masks as uint8 (0..255): at most 256 classes, an ignore value such as "
                             "255 included. Number the classes from 0, or keep the folder and read it with "
                             "SegmentationDataset.")
        yield image.numpy(), mask.numpy().astype(np.uint8)


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: readers never see a file cut short by an error."""
    return path.with_name(path.stem + ".partial" + path.suffix)


def sample_rows(index: object) -> int | np.ndarray:
    """What ``index`` asks a dataset for: one sample as an int (an int, a NumPy integer, a 0-d tensor as
    ``Subset`` passes from ``torch.randperm``), or a batch as an int64 array (a list, array or tensor of
    them, even of one). Anything else, bools and floats included, is refused (05_large_datasets)."""
    if isinstance(index, list | tuple | range) or getattr(index, "ndim", 0) >= 1:
        rows = np.asarray(index)
        if rows.size == 0 or rows.dtype.kind in "iu":
            return rows.astype(np.int64, copy=False)
    elif not (isinstance(index, bool | np.bool_) or getattr(index, "dtype", None) == torch.bool):
        try:
            return operator.index(index)
        except TypeError:
            pass
    raise TypeError(f"Index a dataset with an int or a list of ints, not {index!r}.")


def remove_old(path: Path) -> None:
    """Remove an earlier copy of a file about to be written again (05_large_datasets writes them). Windows
    refuses while the file is still open, such as mapped by a dataset read before: say so, and what to do."""
    try:
        path.unlink(missing_ok=True)
    except PermissionError as error:
        raise PermissionError(f"Cannot replace {path}: it is still open ({error.strerror}), probably by a "
                              "dataset that read it. Let go of it: set every name that holds the dataset "
                              "to None (the dataset, its DataLoader and sampler, a dict of pipelines), "
                              "then gc.collect(), or restart the kernel; then write it again.") from None


def write_memmap(dataset: SegmentationDataset, folder: Path, size: int) -> None:
    """Decode every pair once into ``folder/images.npy`` ``[N, 3, size, size]`` and ``masks.npy`` (uint8):
    a copy, to write again when the files change (05_large_datasets)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (len(dataset), size, size)
    paths = [folder / "images.npy", folder / "masks.npy"]
    for path in paths:  # an older copy must not pass for this one if writing stops half-way
        remove_old(path)
    images = masks = None
    try:
        images = np.lib.format.open_memmap(partial_path(paths[0]), "w+", np.uint8, (shape[0], 3, *shape[1:]))
        masks = np.lib.format.open_memmap(partial_path(paths[1]), "w+", np.uint8, shape)
        for i, (image, mask) in enumerate(resized_pairs(dataset, size)):
            images[i], masks[i] = image, mask
        images.flush()
        masks.flush()
    except BaseException:
        del images, masks  # closes the maps: Windows cannot delete a file that is mapped
        for path in paths:
            partial_path(path).unlink(missing_ok=True)
        raise
    del images, masks
    for path in paths:
        partial_path(path).replace(path)


LAYOUTS = (("uint8 images [N, 3, H, W] (RGB)", 4), ("uint8 masks [N, H, W]", 3))  # what the writers write
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def check_arrays(where: Path, names: tuple[Path | str, ...], arrays: tuple, write: str,
                 recorded: tuple | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Raise, naming the file, unless ``arrays`` (images and masks, read from ``names`` in ``where``) are
    what ``write`` writes: uint8 images ``[N, 3, H, W]`` and uint8 masks ``[N, H, W]`` that pair up, of
    the shapes ``recorded`` when the dataset was made, if given. Returns their shapes (05_large_datasets)."""
    for name, array, (layout, ndim) in zip(names, arrays, LAYOUTS, strict=True):
        if not isinstance(array, np.ndarray | h5py.Dataset):  # an HDF5 group, or nothing
            found = "missing" if array is None else f"a {type(array).__name__}, not an array"
            raise ValueError(f"{name} is {found}. Write it again with {write}, which writes {layout}.")
        if array.dtype != np.uint8 or array.ndim != ndim or (ndim == 4 and array.shape[1] != 3):
            raise ValueError(f"{name} holds {array.dtype} {array.shape}, not the {layout} that {write} "
                             f"writes: write it again with {write}.")
    shapes = tuple(tuple(array.shape) for array in arrays)
    if shapes[0][0] != shapes[1][0] or shapes[0][2:] != shapes[1][1:]:
        raise ValueError(f"{where}: images {shapes[0]} and masks {shapes[1]} do not pair up "
                         f"([N, 3, H, W] and [N, H, W]). Write it again with {write}.")
    if recorded is not None and shapes != recorded:
        raise ValueError(f"{where} changed after the dataset read it: images {shapes[0]} and masks "
                         f"{shapes[1]} now, {recorded[0]} and {recorded[1]} then. Write it with {write}, "
                         "then make the dataset (and its DataLoader) again.")
    return shapes


def map_npy(path: Path, mode: str = "r") -> np.memmap:
    """``path`` mapped (``mode`` as ``np.load``'s ``mmap_mode``), or a ValueError that names it and says
    what to do: missing, cut short, damaged, or longer than its header says (05_large_datasets)."""
    try:
        with open(path, "rb") as file:
            damaged = file.read(len(NPY_MAGIC)) != NPY_MAGIC  # np.load would take it for a pickle
        array = None if damaged else np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot map {path}: {error}. Write the folder again with write_memmap.") from None
    if damaged:
        raise ValueError(f"{path} is not a .npy file numpy can map (its header is damaged): write it again "
                         "with write_memmap.")
    extra = path.stat().st_size - array.offset - array.nbytes
    if extra:  # np.load maps what the header describes, and would never read the rest
        raise ValueError(f"{path} holds {extra:,} bytes more than its header describes (a damaged header, "
                         "or data added at its end): write it again with write_memmap.")
    return array


class MemmapDataset(Dataset):
    """Pre-decoded arrays read through a memory map: index with an int for a sample, a list for a batch.

    A batch comes back in the order of the list, gathered from the map in one copy. The files are checked
    when the dataset is made and again when a process maps them, and a process maps them again at its next
    read once they are written again (a ``stat`` per file and read): a file written again with other
    shapes is refused, not read in part; one cut short while mapped is named at the next read, instead of
    ending the process. The mask values are checked once, when the dataset is made (one read
    of ``masks.npy``), against ``num_classes`` and ``ignore_index`` as ``SegmentationDataset`` checks
    them: arrays made by hand may hold 0/255 masks.
    """

    def __init__(self, folder: Path, num_classes: int = len(CLASSES), ignore_index: int | None = None):
        self.folder = Path(folder)
        self.shapes: tuple | None = None  # recorded by the first maps(): every later one must match
        images, masks = self.maps()
        check_mask_array(masks, self.folder / "masks.npy", num_classes, ignore_index)
        self.shapes = images.shape, masks.shape
        self.length = self.shapes[0][0]
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None  # opened on first use, per process
        self.files: tuple | None = None  # their inode, size and time of last write, when mapped

    def maps(self, mode: str = "r") -> tuple[np.memmap, np.memmap]:
        """The images and masks mapped in this process (``mode`` as ``np.load``'s ``mmap_mode``), refused
        unless they are what ``write_memmap`` writes, with the shapes found when the dataset was made."""
        paths = self.folder / "images.npy", self.folder / "masks.npy"
        arrays = tuple(map_npy(path, mode) for path in paths)
        check_arrays(self.folder, paths, arrays, "write_memmap", self.shapes)
        return arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": None, "files": None}  # a worker maps the files itself

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int | list[int]) -> Sample:
        if self.arrays is None or check_mapped_files(self.arrays) != self.files:  # or written again since:
            self.arrays = self.maps()  # mapped again, which refuses other shapes
            self.files = check_mapped_files(self.arrays)
        images, masks = self.arrays
        rows = sample_rows(index)
        if isinstance(rows, int):
            return Sample(torch.from_numpy(np.array(images[rows])), torch.from_numpy(np.array(masks[rows])))
        # a list gathers the batch straight from the map, in the order asked: one copy, nothing reordered
        return Sample(torch.from_numpy(images[rows]), torch.from_numpy(masks[rows]))


def check_mapped_files(arrays: tuple[np.memmap, ...]) -> tuple[tuple[int, int, int], ...]:
    """Refuse, naming the file, to read a map whose file is now shorter than when it was mapped, or gone
    (05): a read past its end ends the process (SIGBUS; in a worker, "Bus error", which reads as a
    shared-memory problem). One ``stat`` per file, before each read; returns each file's inode, size and
    time of last write, which differ once it is written again."""
    again = "Write it again with write_memmap (it replaces the file whole), then make the dataset again."
    files = []
    for array in arrays:
        try:
            now = os.stat(array.filename)
        except FileNotFoundError:
            raise ValueError(f"{array.filename} is gone since this process mapped it: it was moved or "
                             f"deleted while in use. {again}") from None
        if now.st_size < array.offset + array.nbytes:
            raise ValueError(f"{array.filename} is shorter than when this process mapped it: it was "
                             f"overwritten or cut short while in use. {again}")
        files.append((now.st_ino, now.st_size, now.st_mtime_ns))
    return tuple(files)


class _MappedBytes:
    """Host bytes described as a CUDA array (``__cuda_array_interface__``), for ``torch.as_tensor``."""

    def __init__(self, host: torch.Tensor):
        self.host = host  # kept alive for as long as the CUDA tensor made from it
        self.__cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "|u1",
                                         "data": (host.data_ptr(), False), "version": 3}


def _widest_rows(array: torch.Tensor) -> torch.Tensor:
    """``array`` ``[N, ...]`` of uint8 as ``[N, words]`` of the widest integer that divides a sample's
    bytes: an index on a GPU then moves 8 bytes per thread, not 1."""
    rows = array.reshape(len(array), -1)
    for dtype in (torch.int64, torch.int32, torch.int16):
        if rows.shape[1] % dtype.itemsize == 0:
            return rows.view(dtype)
    return rows


def check_page_lockable(nbytes: int, folder: Path) -> None:
    """Refuse, naming ``folder``, to page-lock more than half of the memory available (06_gpu_training)."""
    free = psutil.virtual_memory().available
    if 2 * nbytes > free:
        raise MemoryError(f"The map in {folder} is {nbytes / 2**30:.1f} GiB, more than half of the "
                          f"{free / 2**30:.1f} GiB of memory available; gathering on the device page-locks "
                          "all of it. Use PinnedMemmapBatches(..., gather_on_device=False), which reads "
                          "each batch from the map.")


class PageLockRefused(RuntimeError):
    """The GPU would not page-lock and map a map's RAM (``host_mapped``): gather on the CPU instead."""


def _clear_cuda_error(index: int) -> None:
    """Read and so reset the error a refused CUDA call leaves behind, which torch would otherwise report
    at its next launch, as if that unrelated operation had failed."""
    try:  # torch checks, and so resets, CUDA's last error after each kernel launch (cudaGetLastError)
        torch.zeros(1, device=torch.device("cuda", index))  # a launch; torch.cuda.cudart() has no reset
    except RuntimeError:
        pass


def _unregister(pointer: int, index: int) -> None:
    """Release RAM registered for the GPU once nothing queued on it can still be reading it."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)  # a wait is the point here
    try:
        torch.cuda.synchronize(index)
        torch.cuda.cudart().cudaHostUnregister(pointer)
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def host_mapped(arrays: tuple[np.ndarray, ...], device: torch.device,
                folder: Path) -> tuple[torch.Tensor, ...]:
    """``arrays`` (a map's, from ``folder``) as rows that ``device`` can index (06_gpu_training).

    On a CUDA device: each read once into RAM that is page-locked and mapped into the GPU's address space
    (``cudaHostRegister``), viewed as a CUDA tensor whose bytes stay in RAM. Indexing it makes the GPU
    fetch only the rows asked for, over the link, with no copy by the CPU; arrays larger than half the
    memory available are refused (``check_page_lockable``). Elsewhere: the same bytes as CPU tensors of
    rows, with no copy.
    """
    if device.type != "cuda":
        return tuple(_widest_rows(torch.from_numpy(array)) for array in arrays)
    check_page_lockable(sum(array.nbytes for array in arrays), folder)
    index = device.index if device.index is not None else torch.cuda.current_device()
    mapped = []
    with torch.cuda.device(index):  # registered for this GPU, whichever is current
        for array in arrays:
            host = torch.empty(array.shape, dtype=torch.uint8)
            host.copy_(torch.from_numpy(array))  # the whole array, once, on all of torch's threads
            flags = 1 | 2  # portable, mapped: the GPU reads it at the same address as the CPU
            error = int(torch.cuda.cudart().cudaHostRegister(host.data_ptr(), host.nbytes, flags))
            if error:
                _clear_cuda_error(index)
                raise PageLockRefused(f"Cannot page-lock the map in {folder} for the GPU (CUDA error "
                                      f"{error}). Use PinnedMemmapBatches(..., gather_on_device=False).")
            weakref.finalize(host, _unregister, host.data_ptr(), index).atexit = False
            on_device = torch.as_tensor(_MappedBytes(host), device=torch.device("cuda", index))  # no copy
            mapped.append(_widest_rows(on_device))
    return tuple(mapped)


class PinnedMemmapBatches:
    """Batches of a ``MemmapDataset`` for a GPU, made by the main process without a DataLoader, flipped
    on ``device``, one coin per sample for image and mask alike (the epoch's order and coins copied
    there at its start). Two ways to gather a batch:

    - ``gather_on_device=False``: the CPU gathers it from the map straight into one of two page-locked
      (pinned) buffers that are reused (by ``torch.index_select``, which splits each sample's copy over
      torch's threads), then copies it to ``device`` without blocking. One copy on the CPU instead of
      three (gather, pin, flip). While one buffer crosses to the GPU the next batch is gathered into the
      other; a CUDA event says when a buffer may be written again. Works for a map of any size.
    - ``gather_on_device=True``: the map is read once into page-locked RAM mapped for the GPU
      (``host_mapped``), and the GPU gathers each batch from there itself: the CPU copies nothing per
      batch, and only queues work. For a map that fits in RAM (at most half of what is available) but
      not on the GPU; one that fits on the GPU is better kept there (``DeviceBatches``). The RAM is
      released, after a wait for the GPU, when these batches are.

    On the CPU there is nothing to pin: each batch gets fresh memory. Yields uint8 (images, masks) on
    ``device``.
    """

    def __init__(self, dataset: MemmapDataset, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None, hflip_prob: float = 0.5,
                 gather_on_device: bool = False):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.generator, self.hflip_prob, self.gather_on_device = generator, hflip_prob, gather_on_device
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ready: list[torch.cuda.Event | None] = [None, None]
        self.mapped: tuple[torch.Tensor, torch.Tensor] | None = None  # for gather_on_device, made once
        # mapped at the first epoch and kept, as MemmapDataset keeps its maps: a map made afresh each epoch
        # takes a page fault for each page it touches again (tools/feed_stages.py times the gather both ways);
        # mapped again, and checked, at the start of an epoch after the files were written again
        self.arrays: tuple[np.memmap, np.memmap] | None = None
        self.files: tuple | None = None  # the mapped files' inode, size and time of last write
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} samples in {dataset.folder} make no whole batch of "
                             f"{batch_size}: use a smaller batch_size.")

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size  # whole batches only

    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": None, "files": None}  # a copy maps the files itself

    def _maps(self) -> tuple[np.memmap, np.memmap]:
        """The maps kept from the epoch before, unless the files were written again since (a stat each):
        then they are mapped again, which refuses files of other shapes, and read again for the device."""
        if self.arrays is None or check_mapped_files(self.arrays) != self.files:
            self.arrays = self.dataset.maps("c")  # copy-on-write, so that torch may view them
            self.files, self.mapped = check_mapped_files(self.arrays), None
        return self.arrays

    def _buffer(self, slot: int, images: torch.Tensor,
                masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where batch ``slot`` is gathered: a reused pinned buffer on CUDA, fresh memory otherwise."""
        shapes = ((self.batch_size, *images.shape[1:]), (self.batch_size, *masks.shape[1:]))
        if self.device.type != "cuda":
            return torch.empty(shapes[0], dtype=torch.uint8), torch.empty(shapes[1], dtype=torch.uint8)
        if not self.buffers:
            self.buffers = [tuple(torch.empty(shape, dtype=torch.uint8).pin_memory() for shape in shapes)
                            for _ in range(2)]
        if self.ready[slot] is not None:
            self.ready[slot].synchronize()  # its last copy to the GPU has finished
        return self.buffers[slot]

    def _gathered_on_host(self, maps: tuple[np.memmap, np.memmap],
                          order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch gathered by the CPU from the maps into a buffer and copied to the device."""
        images, masks = (torch.from_numpy(array) for array in maps)
        for number in range(len(self)):
            check_mapped_files(maps)
            slot, rows = number % 2, order[number * self.batch_size:(number + 1) * self.batch_size]
            image_buffer, mask_buffer = self._buffer(slot, images, masks)
            # the one copy, from the map into the buffer (each sample's split over torch's threads)
            torch.index_select(images, 0, rows, out=image_buffer)
            torch.index_select(masks, 0, rows, out=mask_buffer)
            on_device = (image_buffer.to(self.device, non_blocking=True),
                         mask_buffer.to(self.device, non_blocking=True))
            if self.device.type == "cuda":  # right after the copies from this buffer, on their stream
                self.ready[slot] = torch.cuda.Event()
                self.ready[slot].record(torch.cuda.current_stream(self.device))
            yield on_device

    def _gathered_on_device(self, maps: tuple[np.memmap, np.memmap],
                            order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch gathered by the device from the RAM mapped for it (or, on a CPU, from the maps)."""
        if self.mapped is None:
            check_mapped_files(maps)  # read whole, once
            self.mapped = host_mapped(maps, self.device, self.dataset.folder)
        order = upload(order, self.device)
        for number in range(len(self)):
            if self.device.type != "cuda":  # the rows are read from the maps themselves
                check_mapped_files(maps)
            rows = order[number * self.batch_size:(number + 1) * self.batch_size]
            yield tuple(mapped.index_select(0, rows).view(torch.uint8).view(len(rows), *array.shape[1:])
                        for mapped, array in zip(self.mapped, maps, strict=True))

    def __iter__(self) -> Iterator[Sample]:
        maps = self._maps()
        order = torch.randperm(len(self.dataset), generator=self.generator)
        flips = upload(torch.rand(len(order), generator=self.generator) < self.hflip_prob, self.device)
        gather = self._gathered_on_device if self.gather_on_device else self._gathered_on_host
        for number, (on_device_images, on_device_masks) in enumerate(gather(maps, order)):
            flip = flips[number * self.batch_size:(number + 1) * self.batch_size]
            yield Sample(torch.where(flip.view(-1, 1, 1, 1), on_device_images.flip(-1), on_device_images),
                         torch.where(flip.view(-1, 1, 1), on_device_masks.flip(-1), on_device_masks))


def write_hdf5(dataset: SegmentationDataset, path: Path, size: int) -> None:
    """Decode every pair once into one HDF5 file, one chunk per image and per mask: a copy, to write again
    when the files change."""
    remove_old(Path(path))  # an older copy must not pass for this one if writing stops half-way
    try:
        with h5py.File(partial_path(Path(path)), "w") as file:
            images = file.create_dataset("images", (len(dataset), 3, size, size), np.uint8,
                                         chunks=(1, 3, size, size))
            masks = file.create_dataset("masks", (len(dataset), size, size), np.uint8, chunks=(1, size, size))
            for i, (image, mask) in enumerate(resized_pairs(dataset, size)):
                images[i], masks[i] = image, mask
    except BaseException:
        partial_path(Path(path)).unlink(missing_ok=True)
        raise
    partial_path(Path(path)).replace(path)


class HDF5Dataset(Dataset):
    """Samples from an HDF5 file written by ``write_hdf5``; each process opens its own handle (05): a
    worker started by spawn or forkserver receives none (pickling leaves it behind), and a forked worker,
    which inherits the main process's, opens another, as HDF5 handles must not be shared across fork.

    Index with an int for a sample, a list for a batch: read chunk by chunk into one preallocated batch,
    in the order asked. Mask values are checked once, when the dataset is made, as in ``MemmapDataset``.
    """

    def __init__(self, path: Path, num_classes: int = len(CLASSES), ignore_index: int | None = None):
        self.path = Path(path)
        self.shapes: tuple | None = None  # recorded by the first open(): every later one must match
        with self.open() as file:
            check_mask_array(file["masks"], f"{self.path}:masks", num_classes, ignore_index)
            self.shapes = file["images"].shape, file["masks"].shape
        self.length = self.shapes[0][0]
        self.file: h5py.File | None = None  # an h5py handle cannot be pickled into workers
        self.opened_by: int | None = None  # the process that opened it

    def open(self) -> h5py.File:
        """The file opened for reading, refused unless it holds what ``write_hdf5`` writes, with the
        shapes found when the dataset was made."""
        try:
            file = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(f"Cannot read {self.path}: {error}. Write it again with write_hdf5.") from None
        try:
            check_arrays(self.path, (f"{self.path}:images", f"{self.path}:masks"),
                         (file.get("images"), file.get("masks")), "write_hdf5", self.shapes)
        except BaseException:
            file.close()
            raise
        return file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "file": None}

    def close(self) -> None:
        """Close this process's handle (Windows cannot delete an open file); a later read opens another."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int | list[int]) -> Sample:
        if self.file is None or self.opened_by != os.getpid():  # none yet, or inherited through fork
            self.file, self.opened_by = self.open(), os.getpid()
        images, masks = self.file["images"], self.file["masks"]
        rows = sample_rows(index)
        if isinstance(rows, int):
            return Sample(torch.from_numpy(images[rows]), torch.from_numpy(masks[rows]))
        batch = (np.empty((len(rows), *images.shape[1:]), np.uint8),
                 np.empty((len(rows), *masks.shape[1:]), np.uint8))
        # h5py's own list indexing refuses a shuffled list, and is slow; read_direct per sample is 3x slower
        for i, k in enumerate(rows):
            batch[0][i], batch[1][i] = images[k], masks[k]
        return Sample(torch.from_numpy(batch[0]), torch.from_numpy(batch[1]))


# a shard's names: tar files, compressed or not, as webdataset reads them (tarfile.open(mode="r|*"))
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def write_shards(dataset: SegmentationDataset, folder: Path | str, per_shard: int = 64,
                 shards: int | None = None) -> list[Path]:
    """Write pairs into tar shards in the WebDataset layout: ``NAME.jpg`` and ``NAME.png`` side by side.

    ``per_shard`` pairs in each shard (the last one gets the rest), or, with ``shards``, that many shards
    whose sizes differ by one pair at most. Any ``shard-*.tar`` already in ``folder`` is removed first: a
    folder of shards is read whole, so it holds one write's (give each split a folder of its own). The
    files go in as they are on disk (still compressed), each with its time as an int, in whole seconds:
    tarfile's PAX format gives a float time (even 1.0) an extra 1 KB header per file. Images must be
    JPEGs: they go in as ``NAME.jpg`` (``.jpeg`` and ``.JPG`` too).
    NAME must have no dot, as webdataset reads NAME up to the first dot.
    """
    pngs = [path for path in dataset.image_paths if Path(path).suffix.lower() == ".png"]
    if pngs:
        raise ValueError(f"{len(pngs)} image(s) are PNGs, e.g. {pngs[0]}: a shard holds NAME.jpg beside the "
                         "mask NAME.png, and a PNG image would collide with its mask. Convert the images to "
                         "JPEG, or keep the folder and read it with SegmentationDataset.")
    dotted = [path for path in dataset.image_paths if "." in Path(path).stem]
    if dotted:
        raise ValueError(f"{len(dotted)} image(s) have a dot before the extension, e.g. {dotted[0]}: "
                         "webdataset (notebook 07) takes a sample's name up to the first dot, so img.1.jpg "
                         "and img.2.jpg would be read as one sample. Rename them and their masks without "
                         "the dot (img_1.jpg, img_1.png), or keep the folder and read it with "
                         "SegmentationDataset.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("shard-*"):  # an earlier write's shards, compressed since or not, would be read
        if old.name.lower().endswith(SHARD_SUFFIXES):  # as duplicates of this one's
            remove_old(old)
    count = len(dataset)
    if shards and count:
        shards = min(shards, count)  # no empty shard
        bounds = [count * k // shards for k in range(shards + 1)]
    else:
        bounds = [*range(0, count, per_shard), count]
    paths = []
    for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        path = folder / f"shard-{number:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, stop):
                image, mask = Path(dataset.image_paths[i]), Path(dataset.mask_paths[i])
                tar.add(image, arcname=image.stem + ".jpg", filter=_whole_seconds)  # the names readers expect
                tar.add(mask, arcname=mask.stem + ".png", filter=_whole_seconds)
        paths.append(path)
    return paths


def shard_url(path: PurePath | str) -> str:
    """A shard file as a URL that webdataset opens on every system (07_distributed): ``file:`` and the
    path with forward slashes. A plain path would do on Linux and macOS, but webdataset reads every name
    as a URL, and a Windows path (``C:\\data\\shard-00000.tar``) as one of scheme ``c``, which it cannot
    open. A Windows extended-length path (``\\\\?\\...``, which ``Path.resolve`` gives where the plain
    path would not reach the file) is refused with what to do: its ``?`` would start a query."""
    posix = (path if isinstance(path, PurePath) else Path(path)).as_posix()
    if posix.startswith("//?/"):
        raise ValueError(f"webdataset cannot open {path}: its \\\\?\\ prefix (an extended-length path, past "
                         "Windows' 260 characters or with a name ending in a dot or space) would be read as "
                         "part of a URL. Move the shards to a shorter path with plain names.")
    if "#" in posix or "?" in posix:  # webdataset would read the rest as a URL's fragment or query
        raise ValueError(f"webdataset cannot open {path}: it reads a '#' or '?' in a name as part of a "
                         "URL. Move the shards to a folder whose path has neither.")
    return "file:" + ("//" if posix.startswith("//") else "") + posix  # //server/share: not a host


def _whole_seconds(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A file's time as an int, and no owner: tarfile's default PAX format keeps any float time in an extra
    header of its own (05_large_datasets), and so a large user or group id (a managed Mac's) or a name
    that is not ASCII. Who wrote a shard is then not in it either."""
    info.mtime = int(info.mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x5d\x00\x00": "lzma",
              b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4", b"LZIP": "lzip",
              b"\x89LZO": "lzop"}  # each format's first bytes
# Python 3.14's tarfile reads zstd as well
NOT_READ_BY_TARFILE = ("lz4", "lzip", "lzop") + (("zstd",) if sys.version_info < (3, 14) else ())
CUT_SHORT = ("does not end as a tar file does: it was cut short (an interrupted copy, download or write), "
             "and the samples at its end are missing. Copy or write the shard again.")
PADDING = 2**20 + 2 * 512  # more zeros than tar puts at its end: part of a download is missing


def compression(head: bytes) -> str | None:
    """The compression a file's first bytes show, or None."""
    return next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)


def check_whole_tar(path: Path) -> list[tuple[str, int]]:
    """Raise unless ``path`` is a tar file whose headers run to tar's end-of-archive blocks (zeros) and
    nothing after them: a shard cut short between two files, joined to another with cat, or damaged in a
    header reads without any error, its later samples missing. Reads the headers, not the files' bytes, so
    every rank can check every shard before training (07_distributed). Returns its files' (name, size).

    A compressed shard has no headers to read apart from its files: it is decompressed whole, with the
    same checks. Plain .tar shards, checked from their headers alone, are quicker, and JPEGs and PNGs are
    compressed already."""
    with open(path, "rb") as file:
        head = file.read(tarfile.BLOCKSIZE)
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - 2 * tarfile.BLOCKSIZE))
        tail = file.read()
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")  # a valid first header, checksum and all
    except tarfile.HeaderError:
        if compression(head):
            return [(name, len(data)) for name, data in _files_in_shard(path)]
        if len(head) == tarfile.BLOCKSIZE and head.count(0) == len(head):  # tar's end block, first
            raise ValueError(f"{path} is a tar file that holds no files: write the shard again.") from None
        if len(head) == tarfile.BLOCKSIZE:
            raise ValueError(f"{path} is not a tar file: it starts with {head[:16]!r}. Copy or write the "
                             "shard again.") from None
    if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE or tail.count(0) != len(tail):
        raise ValueError(f"{path} {CUT_SHORT}")
    try:
        with tarfile.open(path) as tar:  # walks from header to header, seeking over each file's bytes
            files = [(member.name, member.size) for member in tar if member.isfile()]
            _check_tar_end(tar, path)
    except tarfile.TarError as error:
        raise ValueError(f"Cannot read {path} as a tar file: {error}. Copy or write the shard again."
                         ) from None
    return files


def _files_in_shard(path: Path) -> Iterator[tuple[str, bytes]]:
    """Each file in a shard as (name, bytes), in the shard's order. Folders' own entries are passed over;
    anything else that is not a file (a link to outside the shard, a device) is refused, never skipped.
    After the last file comes a check that the rest of the shard is tar's end, zeros, and nothing else."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isdir():  # a folder's own entry (tar cf shard.tar folder/)
                    continue
                if not (member.isfile() or member.islnk() or member.issym()):
                    raise ValueError(f"{path}:{member.name} is not a file: a shard holds NAME.jpg and "
                                     "NAME.png only.")
                yield member.name, _member_bytes(tar, member, path)
            _check_tar_end(tar, path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        with open(path, "rb") as file:
            kind = compression(file.read(4))
        if kind in NOT_READ_BY_TARFILE:
            raise ValueError(f"{path} is compressed with {kind}, which Python's tarfile cannot read: "
                             f"decompress it ({kind} -d), or write shards as .tar or .tar.gz.") from None
        # cut short: gzip, bz2 and lzma raise EOFError; tarfile says "unexpected end of data"
        if isinstance(error, EOFError) or str(error) == "unexpected end of data":
            raise ValueError(f"{path} {CUT_SHORT}") from None
        raise ValueError(f"Cannot read {path} as a tar file: {error}. Copy or write the shard again."
                         ) from None


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """A member's bytes; a link to a file inside the shard reads as that file."""
    try:
        data = tar.extractfile(member)
    except (KeyError, RecursionError):  # links to outside the shard, or in a loop
        data = None
    if data is None:
        how = "tar --hard-dereference" if member.islnk() else "tar -h (--dereference)"
        raise ValueError(f"{path}:{member.name} links to {member.linkname!r}, which is no file in the shard: "
                         f"write the shard again with {how}, which stores files, not links.")
    return data.read()


def _check_tar_end(tar: tarfile.TarFile, path: Path) -> None:
    """Raise unless what follows the last member is tar's end: whole blocks of zeros, at least two and not
    a megabyte more. tarfile stops quietly at a cut, at a damaged header, at the end of the first of two
    tars joined with cat, and at a run of zeros where a download stopped. Reading a compressed shard to
    its end also makes its decompressor check the checksum there."""
    tar.fileobj.seek(tar.offset)
    length, data = 0, False
    while chunk := tar.fileobj.read(2**20):
        length, data = length + len(chunk), data or chunk.count(0) != len(chunk)
    if length < 2 * tarfile.BLOCKSIZE or length % tarfile.BLOCKSIZE:
        raise ValueError(f"{path} {CUT_SHORT}")
    if data:
        raise ValueError(f"{path} holds more after its end blocks (tars joined with cat, or a damaged "
                         "header): those samples would be skipped. Write the shard again (tar -A, not "
                         "cat, joins tars).")
    if length > PADDING:
        raise ValueError(f"{path} ends in {length:,} bytes of zeros, far more than tar's end: a download "
                         "or copy stopped part-way and the rest is missing. Copy or write the shard again.")


def check_file_name(path: Path, name: str, seen: set[str]) -> None:
    """Raise unless ``name``, a file in shard ``path``, can be one of a sample's files: not hidden, with an
    extension and no dot before it, and not met before in the shard (``seen``, which this adds it to).
    webdataset would pass over a hidden file or one with no extension without a word (05, 07)."""
    base = name.rpartition("/")[2]
    if re.match(r"__[^/]*__($|/)", name):  # webdataset's skip_meta: read as its own metadata, not a sample
        raise ValueError(f"{path} holds {name!r}, in a folder named as webdataset names its metadata "
                         "(__NAME__), which it passes over: rename the folder and write the shard again.")
    if base.startswith("."):
        raise ValueError(f"{path} holds {name!r}, a hidden file (macOS adds ._NAME and .DS_Store): "
                         "write the shard again with COPYFILE_DISABLE=1 tar ..., or with write_shards.")
    if "." not in base:
        raise ValueError(f"{path} holds {name!r}, which has no extension: "
                         "a shard holds NAME.jpg and NAME.png only.")
    if base.count(".") > 1:  # webdataset would read it as part of the sample named up to the first dot
        raise ValueError(f"{path} holds {name!r}, with a dot before its extension: webdataset "
                         "(notebook 07) ends a sample's name at its first dot and would read it into "
                         "another sample. Rename it and its pair without the dot (img_1.jpg, img_1.png) "
                         "and write the shard again.")
    if name in seen:
        raise ValueError(f"{path} holds {name!r} twice (tar -r and tar -A append, they do not replace): "
                         "write the shard again with one file of each name.")
    seen.add(name)


def check_webdataset_order(path: Path, files: list[tuple[str, int]]) -> None:
    """Raise unless webdataset reads every sample of shard ``path`` whole: ``files`` (as ``check_whole_tar``
    lists them) named as ``check_file_name`` asks, and each NAME's NAME.jpg and NAME.png next to each
    other, with nothing else. webdataset makes a sample of the files next to each other that share a
    name, so ``tar cf shard.tar *.jpg *.png`` gives it half samples; ``ShardStream`` pairs them wherever
    they are. Reads no image, so every rank checks every shard before training (07_distributed); a
    compressed shard is listed the same way, by ``check_whole_tar`` decompressing it whole."""
    seen: set[str] = set()
    samples: dict[str, list[str]] = {}
    last = None
    for name, _ in files:
        check_file_name(path, name, seen)
        stem, _, suffix = name.rpartition(".")
        suffix = suffix.lower()  # as webdataset reads it: a.JPG is a.jpg, and a.JPG beside a.jpg is twice
        if suffix in samples.get(stem, ()):
            raise ValueError(f"{path} holds {name!r} and another {stem}.{suffix} (webdataset reads suffixes "
                             "in lower case): write the shard again with one image and one mask per name.")
        if stem != last and stem in samples:
            raise ValueError(f"{path} holds {name!r} apart from the other files of {stem!r}: webdataset "
                             "reads a sample from files next to each other, and would read two half samples. "
                             "Write the shard again with each sample's files together, as write_shards "
                             "writes them.")
        samples.setdefault(stem, []).append(suffix)
        last = stem
    for stem, suffixes in samples.items():
        if sorted(suffixes) != ["jpg", "png"]:
            raise ValueError(f"{path}: sample {stem!r} has {sorted(suffixes)}: each NAME needs NAME.jpg and "
                             "NAME.png in the same shard, and nothing else. Write the shard again with those "
                             "two files per sample.")


def copied_shard(shards: list[Path]) -> str | None:
    """Two shards of the same size that begin with the same block (a tar's first header: the same first
    file, of the same size and time; compressed, the same bytes), as a copy of a shard saved beside it
    ("shard-00001 (1).tar") does: each epoch would train its samples twice. One ``stat`` and one 512-byte
    read per shard, so that a stream of many shards on slow storage is checked at once (05)."""
    first: dict[tuple[int, bytes], Path] = {}
    for shard in shards:
        with open(shard, "rb") as file:
            key = os.fstat(file.fileno()).st_size, file.read(tarfile.BLOCKSIZE)
        if len(key[1]) < tarfile.BLOCKSIZE or not key[1].strip(b"\0"):  # empty: refused when it is read
            continue
        other = first.setdefault(key, shard)
        if other != shard:
            return (f"{other} and {shard} are the same size and begin with the same bytes: a copy of a shard "
                    "would train its samples twice each epoch. Remove the copy.")
    return None


def _pairs_in_shard(path: Path, size: tuple[int, int] | None = None, num_classes: int = len(CLASSES),
                    ignore_index: int | None = None, mask_dtype: torch.dtype = torch.int64
                    ) -> Iterator[Sample]:
    """Read a shard front to back; yield each image+mask pair as a Sample (resized to ``size``, if given);
    mask values are checked as ``read_pair`` checks them."""
    pending: dict[str, dict[str, bytes]] = {}
    seen: set[str] = set()
    pairs = 0
    for name, data in _files_in_shard(path):
        check_file_name(path, name, seen)
        stem, _, suffix = name.rpartition(".")
        pending.setdefault(stem, {})[suffix] = data
        files = pending[stem]
        if "png" in files and len(files) == 2:
            image_name = next(k for k in files if k != "png")
            yield read_pair(InMemoryFile(files[image_name], f"{path}:{stem}.{image_name}"),
                            InMemoryFile(files["png"], f"{path}:{stem}.png"), size, num_classes,
                            ignore_index, mask_dtype)
            del pending[stem]
            pairs += 1
    if pending:
        left = sorted(f"{stem}.{suffix}" for stem, files in pending.items() for suffix in files)
        raise ValueError(f"{path} has unpaired or stray files {left[:5]}: a shard holds, for each NAME, an "
                         "image and NAME.png, and nothing else. Write the shard again without them.")
    if not pairs:
        raise ValueError(f"{path} holds no samples: copy or write the shard again.")


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 outside a distributed launch).

    From torch.distributed where the process group is set up; else from the RANK and WORLD_SIZE that
    torchrun sets, as webdataset reads them. (05_large_datasets)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Stream samples from tar shards: each worker (and each distributed rank) reads its own shards.

    The shards are split in the order of their paths, whatever order the list was in; a shard listed
    twice (even as two paths to one file) is refused.

    With ``shuffle > 0``, shard order is shuffled per epoch (call ``set_epoch`` before each, as with
    ``DistributedSampler``) from ``seed``, and samples pass through a buffer of that size. The buffer draws
    from torch's own generator, which a DataLoader seeds in each worker from its base seed: a run whose
    loader was seeded repeats.
    ``size``, ``transform``, ``num_classes``, ``ignore_index`` and ``mask_dtype`` act as in
    ``SegmentationDataset``.
    """

    def __init__(self, shards: list[Path], shuffle: int = 0, seed: int = 0,
                 transform: Callable | None = None,
                 size: tuple[int, int] | None = None, num_classes: int = len(CLASSES),
                 ignore_index: int | None = None, mask_dtype: torch.dtype = torch.int64):
        shards = [Path(shard) for shard in shards]
        files = Counter(os.path.realpath(shard) for shard in shards)  # one file, however it is written
        twice = [shard for shard in shards if files[os.path.realpath(shard)] > 1]
        if twice:
            raise ValueError(f"{twice[0]} is listed {files[os.path.realpath(twice[0])]} times among the "
                             "shards: its samples would be read as many times each epoch. List each shard "
                             "once.")
        if problem := copied_shard(shards):  # named now, rather than trained twice
            raise ValueError(problem)
        # by name: every rank and worker splits the same list, whatever order each was given it in
        self.shards, self.shuffle, self.seed = sorted(shards, key=Path.as_posix), shuffle, seed
        self.transform, self.size, self.mask_dtype = transform, size, mask_dtype
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # the epoch lives in shared memory: workers kept alive by persistent_workers=True hold a copy of
        # this dataset made when they started, and would otherwise never see set_epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch ``set_epoch`` set last, as every worker sees it."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the shards in another order for this epoch: every worker sees it, persistent ones too."""
        self._epoch.fill_(epoch)

    def __getstate__(self) -> dict:
        """Pickled for a worker (spawn, forkserver): take this process's rank along; the new process
        has no process group, and a forkserver's environment may predate the launch."""
        return {**self.__dict__, "ranks": rank_and_world_size()}

    def my_shards(self) -> list[Path]:
        """This process's share of the shards: split over distributed ranks, then over workers."""
        shards = list(self.shards)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(shards), generator=generator)
            shards = [shards[i] for i in order]
        rank, world_size = self.__dict__.get("ranks") or rank_and_world_size()
        if len(shards) < world_size:  # a rank without shards would stop first, and the others wait for it
            raise ValueError(f"{len(shards)} shards cannot feed {world_size} ranks: write at least one "
                             f"per rank (write_shards(shards={world_size})), or start fewer ranks.")
        shards = shards[rank::world_size]
        worker = get_worker_info()
        return shards[worker.id::worker.num_workers] if worker else shards

    def __iter__(self) -> Iterator[Sample]:
        buffer: list[Sample] = []
        for shard in self.my_shards():
            for sample in _pairs_in_shard(shard, self.size, self.num_classes, self.ignore_index,
                                          self.mask_dtype):
                if self.transform is not None:
                    sample = Sample(*self.transform(*sample))
                if not self.shuffle:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle:  # emit a random sample from a full buffer
                    yield buffer.pop(int(torch.randint(len(buffer), ())))
        while buffer:
            yield buffer.pop(int(torch.randint(len(buffer), ())))


class NamedSample(NamedTuple):
    """An image, its mask, and the sample's name, to log who read what (07_distributed)."""

    image: torch.Tensor
    mask: torch.Tensor
    name: str


def decode_shard_sample(sample: dict, size: tuple[int, int] | None = None, num_classes: int = len(CLASSES),
                        ignore_index: int | None = None) -> NamedSample:
    """A sample as ``webdataset`` reads it from these shards (``{"__key__", "jpg", "png", ...}``), decoded:
    uint8 image ``[3, H, W]``, uint8 mask ``[H, W]`` (values checked as by ``SegmentationDataset``) and the
    sample's name (07_distributed)."""
    where = f"{sample.get('__url__', 'a shard')}: sample {sample.get('__key__')!r}"
    found = sorted(key for key in sample if not key.startswith("__"))
    if any("." in key for key in found):  # img.1.jpg and img.2.jpg: both read into the sample "img"
        raise ValueError(f"{where} has {found}: webdataset ends a sample's name at its first dot, so files "
                         "named with a dot before the extension were read into this sample. Rename them "
                         "without the dot (img_1.jpg, img_1.png) and write the shard again.")
    if found != ["jpg", "png"]:  # missing, or a stray file webdataset read into the sample
        raise ValueError(f"{where} has {found}: each NAME needs NAME.jpg and NAME.png next to each other "
                         "in the same shard, and nothing else. Write the shard again with those two files "
                         "per sample, side by side, as write_shards writes them.")
    key = sample.get("__key__")
    try:
        image, mask = read_pair(InMemoryFile(sample["jpg"], f"{key}.jpg"),
                                InMemoryFile(sample["png"], f"{key}.png"), size, num_classes, ignore_index,
                                mask_dtype=torch.uint8)
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: {error}") from error
    return NamedSample(image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), sample["__key__"])
