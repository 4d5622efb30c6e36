import random

import numpy as np
import torch

from helpers.seeding import seed_everything


def draw(generator: torch.Generator) -> tuple:
    return (random.random(), np.random.rand(), torch.rand(1).item(),
            torch.randperm(10, generator=generator).tolist())


def test_same_seed_same_numbers_everywhere():
    first = draw(seed_everything(123))
    second = draw(seed_everything(123))
    assert first == second


def test_different_seed_different_numbers():
    a, b = draw(seed_everything(1)), draw(seed_everything(2))
    assert all(x != y for x, y in zip(a, b))


def test_generator_makes_dataloader_shuffling_repeat():
    data = list(range(20))
    orders = []
    for _ in range(2):
        loader = torch.utils.data.DataLoader(data, batch_size=20, shuffle=True,
                                             generator=seed_everything(7))
        orders.append(next(iter(loader)).tolist())
    assert orders[0] == orders[1] != data
