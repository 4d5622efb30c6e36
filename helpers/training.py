"""Training utilities shared by the notebooks (taught in 01_two_images, used again in 06_gpu_training)."""

from collections.abc import Callable

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
