"""Training utilities shared by the notebooks (taught in 01_two_images, used again in 06_gpu_training)."""

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def overfit_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                  steps: int = 100, lr: float = 1e-2,
                  loss_fn: LossFn = nn.functional.cross_entropy) -> list[float]:
    """Train ``model`` on one fixed batch and return the loss after each step.

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


def time_loader_and_step(loader: Iterable, step: Callable[[Any], Any],
                         max_batches: int | None = None) -> tuple[float, float]:
    """Run ``step(batch)`` over a loader; return (seconds waiting for batches, seconds in steps).

    A large waiting share means the loader is the bottleneck. ``step`` must finish its work before
    returning (``loss.item()`` does; on CUDA, so does ``torch.cuda.synchronize()``).
    Taught in 04_dataloader_batching; used in 06_gpu_training.
    """
    waiting = stepping = 0.0
    batches = iter(loader)
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
