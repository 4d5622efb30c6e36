"""Training: "overfit one batch" (01_two_images), loader timing (04), and a segmentation model's
training loop, evaluation, losses and checkpoints (06_gpu_training)."""

import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from helpers.batching import normalize_batch
from helpers.masks import IGNORE_INDEX
from helpers.metrics import confusion_matrix
from helpers.progress import progress_bar
from helpers.transforms import SHAPES_MEAN, SHAPES_STD

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WINDOWS = sys.platform == "win32"  # where a file another program has open cannot be replaced


def overfit_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                  steps: int = 100, lr: float = 1e-2,
                  loss_fn: LossFn = nn.functional.cross_entropy) -> list[float]:
    """Train ``model`` on one fixed batch and return the loss of each step, before its update.

    A working pipeline drives this loss near zero: if it cannot memorise one small batch, something
    is broken (labels, model, loss or optimiser) and more data or epochs will not fix it.
    Works for class labels ``[B]`` and for masks ``[B, H, W]`` alike with cross-entropy.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def time_loader_and_step(loader: Iterable, step: Callable[[Any], Any], max_batches: int | None = None,
                         warmup: int = 1) -> tuple[float, float]:
    """Run ``step(batch)`` over a loader; return (seconds waiting for batches, seconds in steps).

    The first ``warmup`` batches are fetched and stepped untimed: the first waits for the workers to start
    (a spawned worker imports torch), which an epoch pays once, not per batch. Then up to
    ``max_batches`` are timed. A large waiting share means the loader is the bottleneck. ``step`` must
    finish its work before returning (``loss.item()`` does; on CUDA, so does ``torch.cuda.synchronize()``).
    Taught in 04_dataloader_batching; used in 06_gpu_training.
    """
    waiting = stepping = 0.0
    batches = iter(loader)
    for batch in itertools.islice(batches, warmup):
        step(batch)
    for count in itertools.count():
        if max_batches is not None and count >= max_batches:
            break
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        middle = time.perf_counter()
        step(batch)
        waiting, stepping = waiting + middle - start, stepping + time.perf_counter() - middle
    return waiting, stepping


# --- Training a segmentation model (06_gpu_training) ---------------------------------------------


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - mean soft Dice over classes, from logits ``[B, C, H, W]`` and masks ``[B, H, W]``.

    Soft: it uses probabilities, so it has gradients. Pixels marked ``ignore_index`` count for nothing.
    The one-hot masks are a bool comparison with each class, ``[B, C, H, W]``, which costs less than
    ``nn.functional.one_hot``'s int64 tensor and gives the same loss and gradients (a unit test checks).
    """
    valid = (masks != ignore_index).unsqueeze(1)  # [B, 1, H, W]
    probs = logits.float().softmax(dim=1)
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
    one_hot = (masks.unsqueeze(1) == classes) & valid  # [B, C, H, W] bool
    overlap = (probs * one_hot).sum(dim=(0, 2, 3))
    total = (probs * valid).sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - ((2 * overlap + 1) / (total + 1)).mean()  # +1: a class absent from both scores 1, not 0/0


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 0.0,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy per pixel, plus ``dice_weight`` times the Dice loss; ignored pixels left out."""
    loss = nn.functional.cross_entropy(logits.float(), masks, ignore_index=ignore_index)
    return loss + dice_weight * dice_loss(logits, masks, ignore_index) if dice_weight else loss


def to_device(images: torch.Tensor, masks: torch.Tensor, device: torch.device, channels_last: bool = False,
              mean: Sequence[float] = SHAPES_MEAN,
              std: Sequence[float] = SHAPES_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device`` and make it what the model and the loss take: the one way in (04, 06).

    uint8 images (the recommended loaders' batches) cross as bytes and become normalised float there
    (``normalize_batch``); float images are moved as they are. Masks become int64 class indices.
    ``non_blocking`` overlaps the copy with compute when the loader pins memory (``pin_memory=True``).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    if images.dtype == torch.uint8:
        images = normalize_batch(images, mean, std)  # keeps the memory format
    return images, masks.to(device, non_blocking=True).long()


def check_steps_left(scheduler: Any, loader: Iterable) -> None:
    """Refuse, before a step, an epoch longer than what is left of a schedule of ``total_steps``
    (``OneCycleLR``): 06's training loop run a second time would fail after the weights had moved."""
    total = getattr(scheduler, "total_steps", None)
    if total is None:
        return
    try:
        batches = len(loader)  # type: ignore[arg-type]
    except TypeError:  # a stream of unknown length: the scheduler itself will say
        return
    if scheduler.last_epoch + batches > total:
        raise ValueError(
            f"The scheduler has {total - scheduler.last_epoch} of its {total} steps left, and this epoch "
            f"takes {batches}: a one-cycle schedule ends where it was told to. To train again, make the "
            "optimizer and the scheduler again first (in 06: run the cell that makes them, then the loop; "
            "the model keeps what it learned); to train longer, give the scheduler more total_steps. A "
            "scheduler loaded from a checkpoint keeps the checkpoint's total_steps: a longer run starts "
            "afresh.")


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, loss_fn: LossFn = segmentation_loss, scheduler: Any = None,
                    amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    channels_last: bool = False, mean: Sequence[float] = SHAPES_MEAN,
                    std: Sequence[float] = SHAPES_STD, progress: bool = False) -> float:
    """One pass over ``loader``; returns the mean training loss.

    Batches may be uint8 (normalised on the device with ``mean`` and ``std``) or float: see ``to_device``.
    ``amp_dtype`` (``torch.bfloat16`` or ``torch.float16``) turns on autocast; float16 needs a ``scaler``.
    ``scheduler`` (if any) steps after every batch, as ``OneCycleLR`` expects.
    """
    check_steps_left(scheduler, loader)
    model.train()
    total, count = torch.zeros((), device=device), 0
    for images, masks, *_ in progress_bar(loader, desc="train", leave=False, disable=not progress):
        images, masks = to_device(images, masks, device, channels_last, mean, std)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # float16: scale the loss so small gradients do not underflow to zero
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # no .item(): no sync per step
        total, count = total + loss.detach() * len(images), count + len(images)
    if not count:
        raise ValueError("The loader gave no batch to train on (drop_last=True with fewer samples than "
                         "batch_size, or an empty split?).")
    return (total / count).item()


class Evaluation(NamedTuple):
    """What ``evaluate`` measured on a split: mean loss and the confusion matrix (``helpers.metrics``)."""

    loss: float
    confusion: torch.Tensor


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int, *,
             loss_fn: LossFn | None = None, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, ignore_index: int = IGNORE_INDEX,
             mean: Sequence[float] = SHAPES_MEAN, std: Sequence[float] = SHAPES_STD) -> Evaluation:
    """Mean loss and confusion matrix of ``model`` over ``loader``, in eval mode
    (BatchNorm uses its averages). Pixels of ``ignore_index`` count in neither; ``loss_fn`` (by default
    ``segmentation_loss`` with that ``ignore_index``) must skip them too.

    Batches as ``train_one_epoch`` takes them (uint8 or float images). The loss is NaN when no pixel was
    labelled; an empty loader gives that and a confusion matrix of zeros, which ranks can add up (07)."""
    loss_fn = loss_fn or functools.partial(segmentation_loss, ignore_index=ignore_index)
    model.eval()
    total, count = torch.zeros((), device=device), 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, masks, *_ in loader:
        images, masks = to_device(images, masks, device, channels_last, mean, std)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        if logits.shape[1] != num_classes:
            raise ValueError(f"The model outputs {logits.shape[1]} channels for num_classes={num_classes}: "
                             "give the model one output channel per class.")
        if (masks != ignore_index).any():  # a batch with every pixel ignored has no loss (0 / 0 = NaN)
            total, count = total + loss_fn(logits, masks) * len(images), count + len(images)
        confusion += confusion_matrix(logits.argmax(dim=1), masks, num_classes, ignore_index)
    # no labelled pixel (an empty loader too: a rank with no validation image, 07): no loss, not 0
    return Evaluation((total / count).item() if count else math.nan, confusion)


# --- Checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: Path, *, epoch: int, history: dict[str, list[float]],
                    generator: torch.Generator | None = None, **stateful: Any) -> None:
    """Save everything needed to continue: ``epoch`` done, ``history``, and each ``stateful.state_dict()``.

    Pass the model, optimizer, scheduler and scaler by name (``model=model, ...``), and the loader's
    ``generator`` so shuffling continues where it was. Written to a temporary file first, then renamed:
    a crash while saving leaves the previous checkpoint whole.
    """
    checkpoint = {name: obj.state_dict() for name, obj in stateful.items()}
    checkpoint |= {"epoch": epoch, "history": history, "torch_rng": torch.get_rng_state()}
    if generator is not None:
        checkpoint["generator"] = generator.get_state()
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    for wait in (0.1, 0.5, 2.0, None) if WINDOWS else (None,):
        try:
            temporary.replace(path)
            return
        except PermissionError as error:  # on Windows, also while another program has the old file open
            if wait is None:
                held = (", or another program holds it, such as a sync client (OneDrive) or a virus "
                        "scanner: save checkpoints to a folder it does not watch" if WINDOWS else "")
                raise PermissionError(
                    f"Cannot replace {path} ({error.strerror}): check that you may write it{held}. This "
                    f"epoch's checkpoint is in {temporary}: rename it to {path.name} to resume from it."
                ) from None
            time.sleep(wait)  # most programs let go within a moment


def load_checkpoint(path: Path, *, generator: torch.Generator | None = None, map_location: Any = "cpu",
                    **stateful: Any) -> tuple[int, dict[str, list[float]]]:
    """Restore what ``save_checkpoint`` saved into the objects given by name; return (epoch, history).

    ``weights_only=True`` unpickles tensors and plain Python values only, never arbitrary objects, so a
    checkpoint from someone else cannot run code as a full unpickling would (keep torch up to date: before
    2.6 this check had a hole, CVE-2025-32434).
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    for name, obj in stateful.items():
        obj.load_state_dict(checkpoint[name])
    torch.set_rng_state(checkpoint["torch_rng"])
    if generator is not None:
        generator.set_state(checkpoint["generator"])
    return checkpoint["epoch"], checkpoint["history"]
