import torch
from torch import nn

from helpers.training import overfit_batch


def test_a_working_model_memorises_one_batch():
    torch.manual_seed(0)
    inputs, targets = torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 3))
    losses = overfit_batch(model, inputs, targets, steps=150)
    assert len(losses) == 150
    assert losses[0] > 0.5 and losses[-1] < 0.01
    assert model.training


def test_a_model_that_cannot_learn_stays_high():
    torch.manual_seed(0)
    inputs, targets = torch.randn(8, 5), torch.tensor([0, 1] * 4)
    model = nn.Sequential(nn.Linear(5, 2), nn.Dropout(p=1.0))  # a bug: every activation dropped
    losses = overfit_batch(model, inputs, targets, steps=100)
    assert min(losses) > 0.6  # stuck at chance, about ln 2 = 0.69


def test_segmentation_masks_work_too():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    masks = (images[:, 0] > 0.5).long()
    images[:, 0] = 0.2 + 0.6 * masks  # the class is plainly readable from the image itself
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 2, 1))
    losses = overfit_batch(model, images, masks, steps=200)
    assert losses[-1] < 0.05


def test_time_loader_and_step_splits_waiting_from_working():
    import time

    from helpers.training import time_loader_and_step

    def slow_loader():
        for i in range(3):
            time.sleep(0.05)
            yield i

    waiting, stepping = time_loader_and_step(slow_loader(), lambda batch: time.sleep(0.01))
    assert 0.14 < waiting < 0.5 and 0.025 < stepping < 0.2
    waiting, stepping = time_loader_and_step(slow_loader(), lambda batch: None, max_batches=1)
    assert waiting < 0.1
