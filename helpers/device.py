"""Choose where tensors and models live, and feed them there (taught in 00_start_here and
06_gpu_training)."""

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

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
    """The mixed-precision type to try on ``device`` (06_gpu_training): on CUDA bfloat16 where the GPU
    computes it in hardware, else float16; on MPS float16; on the CPU bfloat16.

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


_END = object()  # what prefetch's thread queues after the last batch


def prefetch(batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device,
             depth: int = 2) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches (tuples of tensors) of ``batches``, made by a background thread while the one before
    is in use (06_gpu_training, way (c)): up to ``depth`` made ones wait in a queue, and the thread works
    on the next.

    A thread, not a DataLoader worker, because it can use the GPU (a forked worker cannot, once the main
    process has), and because torch's operations, torchcodec's decoder among them, release Python's lock
    (the GIL) while their C++ code runs (the Python between them takes turns with the main thread). On CUDA
    the thread queues its work on a stream of its own, so that waiting for its own work (as the JPEG decoder
    does) does not wait for the training queued on the main stream; each batch's tensors are then handed to
    the main stream, which waits for them on the GPU, not here. The batches come in their order, and an
    error in the thread is raised here, as it was raised there. Stopping early (``break``) waits for the
    batch the thread is making. On Apple's MPS there is no thread: the batches are made here, one at a
    time, since Metal can crash a process whose two threads run tensor operations at once
    (pytorch/pytorch#197805, torch 2.14).
    """
    if depth < 1:  # queue.Queue(maxsize=0) has no limit: every batch would be made ahead, in memory
        raise ValueError(f"prefetch keeps depth batches ahead: at least 1, not {depth}.")
    if device.type == "mps":
        yield from batches
        return
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
                    batch = ready = None  # the batch is the main thread's now
        except BaseException as error:  # raised again in the main thread, where the batches are used
            hand_over((error, None))
            return
        hand_over((_END, None))

    thread = threading.Thread(target=make, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, ready = made.get()
            if batch is _END:
                return
            if isinstance(batch, BaseException):
                raise batch
            if ready is not None:
                _to_stream(batch, ready, torch.cuda.current_stream(device))
            yield batch
            batch = ready = None  # let go of before the wait for the next: a loop's `del` frees it
    finally:
        stop.set()
        if thread is not threading.current_thread():
            thread.join()


def _to_stream(batch: tuple[torch.Tensor, ...], ready: torch.cuda.Event, stream: torch.cuda.Stream) -> None:
    """Make ``stream`` wait on the GPU for the work that made ``batch`` (recorded in ``ready``), and keep
    the batch's memory from reuse until the work ``stream`` then queues on it is done."""
    stream.wait_event(ready)
    for tensor in batch:
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            tensor.record_stream(stream)


class OnMeta(torch.nn.Module):
    """A stand-in for a segmentation model on PyTorch's meta device (shapes, no values), which notes the
    device of what it is given (``seen``): on any machine, even a CPU-only one, it tells whether code
    moved an image to the model's device. 06_gpu_training's Exercise 2."""

    def __init__(self, factor: int, num_classes: int):
        super().__init__()
        self.factor, self.num_classes, self.seen = factor, num_classes, None
        self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen = batch.device
        return torch.empty(len(batch), self.num_classes, *batch.shape[-2:], device="meta")


def check_devices(predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor | None], factor: int,
                  num_classes: int) -> bool:
    """False where ``predict(model, image)`` returns None (not solved yet); an AssertionError, saying
    what to fix, unless it calls the model it is given, moves the image to the model's device and the
    mask back to the CPU. It calls ``predict`` with an ``OnMeta``: copying a meta tensor to the CPU fails
    with "Cannot copy out of meta tensor", which is how it knows the mask went there (06_gpu_training)."""
    model, copied, failed = OnMeta(factor, num_classes), False, None
    try:
        if predict(model, torch.zeros(3, 100, 115)) is None:
            return False
    except NotImplementedError as error:  # "Cannot copy out of meta tensor": sent to the CPU
        if "meta tensor" not in str(error):
            raise
        assert "to_empty" not in str(error), "leave the model where it is, and move the image to it"
        copied = True  # the mask, as predict should
    except RuntimeError as error:  # .item() and torch.autocast("meta") refuse the stand-in
        if "meta" not in str(error) and "scalarType" not in str(error):
            raise
        failed = error
    assert failed is None, (f"predict failed on a model on the meta device ({failed}): call the "
                            "model it is given, as it is, with no .item() or autocast")
    assert model.seen is not None, "call the model predict is given (its first argument)"
    assert model.seen == torch.device("meta"), (
        f"the model got the image on {model.seen}: move it to next(model.parameters()).device")
    assert copied, "return the mask on the CPU (.cpu())"
    return True
