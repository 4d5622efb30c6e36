"""Choose where tensors and models live, and feed them there (taught in 00_start_here and
06_gpu_training)."""

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``torch.device(prefer)`` if given, else CUDA if available, then Apple's MPS, then CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type to try on ``device``: bfloat16 where supported, else float16
    (06_gpu_training).

    bfloat16 keeps float32's range, so it needs no gradient scaler; float16 does (``torch.amp.GradScaler``).
    Whether either is *faster* depends on the hardware: measure before you keep it.
    """
    if device.type == "cuda":
        # in hardware only (compute capability 8.0, Ampere, and newer): a T4 merely emulates bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "mps":
        return torch.float16  # the type MPS autocast has supported longest
    return torch.bfloat16  # CPUs: bfloat16 is the type CPU autocast is built for


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor``, on the CPU, copied to ``device`` without making the program wait (06_gpu_training).

    A plain ``tensor.to("cuda")`` waits until the GPU has finished everything already queued, so the
    CPU cannot prepare the next batch meanwhile. From page-locked (pinned) memory the copy is queued
    like any other GPU work instead; torch keeps the pinned memory until the copy has read it.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def prefetch(batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device,
             depth: int = 2) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches of ``batches``, made by a background thread up to ``depth`` ahead of the one in use
    (06_gpu_training, way (c)): while the model trains on one, the thread makes the next.

    A thread, not a DataLoader worker, because it can use the GPU (CUDA cannot start in a forked worker),
    and because torch's operations, torchcodec's decoder among them, release Python's lock (the GIL)
    while they run. On CUDA the thread queues its work on a stream of its own, so that waiting for its
    own work (as the JPEG decoder does) never waits for the training queued on the main stream; each
    batch's tensors are then handed to the main stream, which waits for them on the GPU, not here.
    The batches come in their order; an error in the thread is raised here, as it was raised there.
    """
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    made: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        """Queue ``item`` for the main thread; False once it has stopped taking batches."""
        while not stop.is_set():
            try:
                made.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in batches:
                    ready = side.record_event() if side is not None else None
                    if not hand_over((batch, ready)):
                        return
        except BaseException as error:  # noqa: BLE001 -- raised again in the main thread
            hand_over((error, None))
            return
        hand_over((None, None))  # the end

    thread = threading.Thread(target=make, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, ready = made.get()
            if batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            if ready is not None:  # the main stream waits on the GPU for the thread's work on this batch
                stream = torch.cuda.current_stream(device)
                stream.wait_event(ready)
                for tensor in batch:  # and their memory is not reused before the main stream is done
                    if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
                        tensor.record_stream(stream)
            yield batch
    finally:
        stop.set()
        thread.join()
