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


# --- 06_gpu_training: losses, one epoch, evaluation, checkpoints -----------------------------------

import pickle  # noqa: E402

import pytest  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from helpers.models import UNet  # noqa: E402
from helpers.training import (  # noqa: E402
    dice_loss,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    segmentation_loss,
    train_one_epoch,
)

CPU = torch.device("cpu")


def confident_logits(masks, num_classes=3, margin=20.0):
    """Logits that put (almost) all probability on the true class of each pixel."""
    return nn.functional.one_hot(masks.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2) * margin


def test_dice_loss_is_zero_when_right_and_high_when_wrong():
    masks = torch.tensor([[[0, 1], [2, 2]]])
    assert dice_loss(confident_logits(masks), masks).item() < 1e-3
    wrong = torch.tensor([[[1, 2], [0, 0]]])
    assert dice_loss(confident_logits(wrong), masks).item() > 0.6


def test_losses_skip_ignored_pixels():
    masks = torch.tensor([[[0, 1], [2, 255]]])
    logits = confident_logits(masks)
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 50.0])  # any score at the ignored pixel
    assert segmentation_loss(logits, masks, dice_weight=1.0).item() < 1e-3


def tiny_task(count=16, side=16, seed=0):
    """Images whose class is readable from the red channel; masks of classes 0-2, a few pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (count, side // 4, side // 4), generator=generator)
    masks = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)
    images = torch.randn(count, 3, side, side, generator=generator) * 0.1
    images[:, 0] += masks.float()
    masks[:, 0, 0] = 255
    return TensorDataset(images, masks)


def test_train_one_epoch_learns_and_evaluate_counts_every_labelled_pixel():
    torch.manual_seed(0)
    dataset = tiny_task()
    loader = DataLoader(dataset, batch_size=4, shuffle=True)
    model = UNet(num_classes=3, widths=(8, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = evaluate(model, loader, CPU, num_classes=3)
    losses = [train_one_epoch(model, loader, optimizer, CPU) for _ in range(15)]
    after = evaluate(model, loader, CPU, num_classes=3)
    assert losses[-1] < losses[0] / 3
    assert after.loss < before.loss / 3
    assert after.confusion.sum() == 16 * 16 * 16 - 16  # every pixel but the 16 ignored ones
    assert after.confusion.trace() / after.confusion.sum() > 0.95
    assert not model.training  # evaluate leaves the model in eval mode


def run(epochs, model, optimizer, scheduler, loader):
    return [train_one_epoch(model, loader, optimizer, CPU, scheduler=scheduler) for _ in range(epochs)]


def fresh(seed=0, steps=12):
    torch.manual_seed(seed)
    model = UNet(num_classes=3, widths=(4, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(tiny_task(), batch_size=4, shuffle=True, generator=generator)
    return model, optimizer, scheduler, loader


def test_a_checkpoint_resumes_to_exactly_the_same_state(tmp_path):
    straight_model, *rest = fresh()
    straight = run(3, straight_model, *rest)

    model, optimizer, scheduler, loader = fresh()
    first = run(1, model, optimizer, scheduler, loader)
    save_checkpoint(tmp_path / "last.pt", epoch=1, history={"train_loss": first}, generator=loader.generator,
                    model=model, optimizer=optimizer, scheduler=scheduler)
    torch.manual_seed(123)  # anything that happens in between must not matter

    model, optimizer, scheduler, loader = fresh(seed=99)  # a new process would start from other weights
    epoch, history = load_checkpoint(tmp_path / "last.pt", generator=loader.generator,
                                     model=model, optimizer=optimizer, scheduler=scheduler)
    assert epoch == 1 and history == {"train_loss": first}
    resumed = first + run(2, model, optimizer, scheduler, loader)

    assert resumed == straight  # same losses, epoch for epoch
    assert scheduler.last_epoch == 12  # the learning-rate schedule went on where it stopped
    for name, value in straight_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "untrusted.pt"
    torch.save({"model": {}, "epoch": 1, "history": {}, "payload": pytest.MonkeyPatch()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(path)


def test_save_checkpoint_leaves_no_temporary_file(tmp_path):
    model = UNet(widths=(4, 8))
    save_checkpoint(tmp_path / "model.pt", epoch=0, history={}, model=model)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_to_device_normalises_uint8_batches_and_makes_masks_int64():
    from helpers.training import to_device
    from helpers.transforms import eval_transforms

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    masks = torch.randint(0, 4, (2, 8, 8), dtype=torch.uint8)
    moved, targets = to_device(images, masks, torch.device("cpu"), channels_last=True)
    assert torch.allclose(moved, torch.stack([eval_transforms()(image) for image in images]), atol=1e-6)
    assert moved.is_contiguous(memory_format=torch.channels_last) and targets.dtype == torch.int64
    floats = moved.contiguous()
    assert to_device(floats, masks, torch.device("cpu"))[0] is floats  # float batches pass as they are
