import random
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

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
    assert len(a) == len(b) > 0 and all(x != y for x, y in zip(a, b))


def test_generator_makes_dataloader_shuffling_repeat():
    data = list(range(20))
    orders = []
    for _ in range(2):
        loader = torch.utils.data.DataLoader(data, batch_size=20, shuffle=True,
                                             generator=seed_everything(7))
        orders.append(next(iter(loader)).tolist())
    assert orders[0] == orders[1] != data


def loader_draws(num_workers: int, **kwargs) -> list[tuple[int, int, int]]:
    from helpers.seeding import RandomDraws

    loader = torch.utils.data.DataLoader(RandomDraws(8), batch_size=None, num_workers=num_workers, **kwargs)
    return [tuple(int(v) for v in sample) for sample in loader]


class GlobalDraws(torch.utils.data.Dataset):
    """Draws from Python's and NumPy's global random states, which a forked worker inherits."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, float, float]:
        return torch.utils.data.get_worker_info().id, random.random(), float(np.random.rand())


@pytest.mark.skipif(sys.platform != "linux", reason="forks a process that has loaded torch: safe on Linux")
def test_pytorch_seeds_random_and_numpy_in_each_forked_worker_itself():
    """Why seed_worker leaves them alone (03): forked workers start with copies of these states, yet
    PyTorch gives each worker its own seed for them."""
    draws = list(DataLoader(GlobalDraws(), batch_size=None, num_workers=2, multiprocessing_context="fork"))
    by_worker = [[draw[1:] for draw in draws if draw[0] == worker] for worker in (0, 1)]  # one epoch
    assert len(by_worker[0]) == len(by_worker[1]) == 4
    values = [{value for pair in pairs for value in pair} for pairs in by_worker]
    assert len(values[0]) == 8 and not values[0] & values[1]  # no value repeated across workers


def test_without_seed_worker_every_worker_repeats_the_same_draws():
    draws = loader_draws(2)
    by_worker = [[d for _, w, d in draws if w == k] for k in (0, 1)]
    assert len(by_worker[0]) == len(by_worker[1]) == 4  # 8 samples, half per worker
    assert by_worker[0] == by_worker[1]  # the bug seed_worker fixes


def test_seed_worker_gives_workers_different_draws_that_repeat_run_to_run():
    from helpers.seeding import worker_seeding

    first = loader_draws(2, **worker_seeding(5))
    by_worker = [[d for _, w, d in first if w == k] for k in (0, 1)]
    assert len(by_worker[0]) == len(by_worker[1]) == 4 and by_worker[0] != by_worker[1]
    assert loader_draws(2, **worker_seeding(5)) == first
    assert loader_draws(2, **worker_seeding(6)) != first


def test_seed_worker_works_under_spawn():
    from helpers.seeding import worker_seeding

    draws = loader_draws(2, multiprocessing_context="spawn", **worker_seeding(5))
    assert len(draws) == 8 and {worker for _, worker, _ in draws} == {0, 1}  # both workers drew
    assert draws == loader_draws(2, **worker_seeding(5))
