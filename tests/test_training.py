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


def test_time_loader_and_step_splits_waiting_from_working(monkeypatch):
    """On a clock of the test's own, which moves only when the loader or the step "works": exact figures,
    whatever else the machine is doing."""
    from helpers import training

    now = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])

    def slow_loader(starting: float = 0.0):
        now[0] += starting  # workers starting: waited for by the first batch only
        for i in range(3):
            now[0] += 0.05
            yield i

    seen = []

    def step(batch):
        seen.append(batch)  # the step is given each batch
        now[0] += 0.01

    waiting, stepping = training.time_loader_and_step(slow_loader(starting=0.5), step, warmup=0)
    assert (waiting, stepping, seen) == (pytest.approx(0.65), pytest.approx(0.03), [0, 1, 2])
    waiting, stepping = training.time_loader_and_step(slow_loader(starting=0.5), step)  # start untimed
    assert (waiting, stepping, seen) == (pytest.approx(0.1), pytest.approx(0.02), [0, 1, 2] * 2)
    waiting, stepping = training.time_loader_and_step(slow_loader(), step, max_batches=1)
    assert (waiting, stepping) == (pytest.approx(0.05), pytest.approx(0.01))


# --- 06_gpu_training: losses, one epoch, evaluation, checkpoints -----------------------------------

import math  # noqa: E402
import pickle  # noqa: E402
from pathlib import Path  # noqa: E402

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


class Spy(nn.Module):
    """Predicts class 0 everywhere, and records how each batch of images reached it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        self.seen.append((images.clone(), autocast, images.is_contiguous(memory_format=torch.channels_last)))
        return torch.zeros(len(images), 3, *images.shape[2:])


def test_evaluate_uses_the_options_it_is_given_and_averages_over_samples():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    masks = torch.randint(0, 3, (4, 4, 4))
    masks[:, 0] = 9  # one row of each mask ignored, with this ignore index
    model, loader = Spy(), DataLoader(TensorDataset(images, masks), batch_size=3)  # batches of 3 and 1
    result = evaluate(model, loader, CPU, 3, amp_dtype=torch.bfloat16, channels_last=True, ignore_index=9,
                      loss_fn=lambda logits, masks: logits.new_tensor(float(len(masks))),  # the batch size
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert result.loss == (3 * 3 + 1 * 1) / 4  # a mean over samples, not over batches (2.0)
    assert result.confusion.sum() == 4 * 3 * 4  # the ignored row of each left out
    normalised = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(torch.cat([seen[0] for seen in model.seen]), normalised, atol=1e-5)
    assert [seen[1:] for seen in model.seen] == [(torch.bfloat16, True)] * 2


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
    straight_draws = torch.rand(4)  # what torch's global generator gives next (dropout, augmentation)

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
    assert torch.equal(torch.rand(4), straight_draws)  # the global generator continued where it stopped
    assert scheduler.last_epoch == 12  # the learning-rate schedule went on where it stopped
    for name, value in straight_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="0 of its 12 steps left"):  # 06: a finished schedule cannot
        run(1, model, optimizer, scheduler, loader)  # go on, as raising EPOCHS and resuming would ask


def test_load_checkpoint_refuses_pickled_objects(tmp_path, monkeypatch):
    """weights_only=True is asked for, not left to torch's default, which this variable turns off."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = tmp_path / "untrusted.pt"  # a whole checkpoint, plus an object that unpickling would build
    checkpoint = {"epoch": 1, "history": {}, "torch_rng": torch.get_rng_state()}
    torch.save(checkpoint | {"payload": pytest.MonkeyPatch()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(path)


def test_save_checkpoint_leaves_no_temporary_file(tmp_path):
    model = UNet(widths=(4, 8))
    save_checkpoint(tmp_path / "model.pt", epoch=0, history={}, model=model)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_save_checkpoint_waits_for_a_program_that_holds_the_old_file(tmp_path, monkeypatch):
    """Windows refuses to replace a file another program has open (OneDrive, a virus scanner), mostly for
    a moment: the save tries again there, and names the program's kind and the saved copy if it never
    can. Elsewhere an open file never blocks a rename: the first refusal is the answer."""
    from helpers import training

    refusals, replace, waits = [2], Path.replace, []

    def busy(self, target):
        if refusals[0]:
            refusals[0] -= 1
            raise PermissionError(13, "Permission denied")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", busy)
    monkeypatch.setattr(training.time, "sleep", waits.append)
    monkeypatch.setattr(training, "WINDOWS", True)
    save_checkpoint(tmp_path / "model.pt", epoch=3, history={}, model=UNet(widths=(4, 8)))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"] and refusals == [0] and len(waits) == 2
    refusals[0] = 4  # never let go
    with pytest.raises(PermissionError, match=r"Cannot replace .*model.pt \(Permission denied\): check that "
                       r"you may write it, or another program holds it, such as a sync client \(OneDrive\).* "
                       r"in .*model.pt.tmp: rename it to model.pt to resume from it\.$"):
        save_checkpoint(tmp_path / "model.pt", epoch=4, history={}, model=UNet(widths=(4, 8)))
    monkeypatch.setattr(training, "WINDOWS", False)
    refusals[0], waits[:] = 1, []
    with pytest.raises(PermissionError, match=r"check that you may write it\. This epoch's"):
        save_checkpoint(tmp_path / "model.pt", epoch=5, history={}, model=UNet(widths=(4, 8)))
    assert not waits


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
    for batch in (images, floats):  # the device asked for: "meta" stands in for a second device here
        assert [t.device.type for t in to_device(batch, masks, torch.device("meta"))] == ["meta", "meta"]
    from helpers.transforms import IMAGENET_MEAN, IMAGENET_STD

    imagenet = eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    moved, _ = to_device(images, masks, torch.device("cpu"), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.allclose(moved, torch.stack([imagenet(image) for image in images]), atol=1e-6)


def one_epoch(**options) -> tuple[float, nn.Module, dict[str, torch.Tensor], list[torch.Tensor]]:
    """One epoch of SGD over two batches of the tiny task, with ``train_one_epoch``'s ``options``: the mean
    loss, the model, its weights before, and every batch of images it was given."""
    torch.manual_seed(0)
    model = UNet(num_classes=3, widths=(4, 8))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    given: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, inputs: given.append(inputs[0]))
    loader = DataLoader(tiny_task(count=8), batch_size=4)
    loss = train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), CPU, **options)
    return loss, model, before, given


def weights_changed(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Whether any parameter of ``model`` differs from its value in ``before``."""
    return any(not torch.equal(value, before[name]) for name, value in model.named_parameters())


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_train_one_epoch_with_autocast_runs_the_model_in_that_dtype_and_only_then(amp_dtype):
    dtypes = []

    def loss_fn(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        dtypes.append(logits.dtype)
        return segmentation_loss(logits, masks)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp_dtype == torch.float16 else None
    loss, model, before, _ = one_epoch(amp_dtype=amp_dtype, scaler=scaler, loss_fn=loss_fn)
    assert dtypes == [amp_dtype, amp_dtype]  # autocast: the convolutions ran in amp_dtype
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    assert math.isfinite(loss) and weights_changed(model, before)
    dtypes.clear()
    one_epoch(loss_fn=loss_fn)
    assert dtypes == [torch.float32, torch.float32]  # without amp_dtype, no autocast


def test_train_one_epoch_with_a_grad_scaler_takes_the_unscaled_step():
    plain_loss, plain, _, _ = one_epoch()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scaled_loss, scaled, _, _ = one_epoch(scaler=scaler)
    assert scaler.get_scale() == 2.0**12  # two steps with finite gradients: the scale doubled after each
    assert scaled_loss == pytest.approx(plain_loss)  # the loss reported is the loss, not the scaled loss
    for name, value in plain.state_dict().items():  # gradients unscaled before SGD stepped: the same weights
        assert torch.allclose(scaled.state_dict()[name], value, atol=1e-6), name


def test_train_one_epoch_with_channels_last_gives_the_model_channels_last_batches():
    loss, model, before, given = one_epoch(channels_last=True)
    assert len(given) == 2 and all(x.is_contiguous(memory_format=torch.channels_last) for x in given)
    assert math.isfinite(loss) and weights_changed(model, before)
    _, _, _, given = one_epoch()
    assert not any(x.is_contiguous(memory_format=torch.channels_last) for x in given)  # not by chance


def test_train_one_epoch_returns_the_mean_loss_per_sample():
    """Batches of 2, 2 and 1: each batch's loss counts once per sample in it; and one sample alone."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 1)  # no batch norm: a batch's loss does not depend on the mode
    images, masks = tiny_task(count=5).tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay as they are
    for count, batch_size in ((5, 2), (1, 1)):
        loader = DataLoader(TensorDataset(images[:count], masks[:count]), batch_size=batch_size)
        losses = [segmentation_loss(model(x), y).item() * len(x) for x, y in loader]
        mean = train_one_epoch(model, loader, optimizer, CPU)
        assert mean == pytest.approx(sum(losses) / count, rel=1e-6), count


def test_train_one_epoch_refuses_an_epoch_past_the_end_of_a_one_cycle_schedule_before_a_step():
    """06's training loop run a second time: torch failed mid-epoch, the weights already moved."""
    model = nn.Conv2d(3, 3, 1)
    loader = DataLoader(tiny_task(count=4), batch_size=2)  # 2 batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=3)
    train_one_epoch(model, loader, optimizer, CPU, scheduler=scheduler)  # steps 1 and 2 of 3
    weights = model.weight.detach().clone()
    with pytest.raises(ValueError, match="1 of its 3 steps left, and this epoch takes 2"):
        train_one_epoch(model, loader, optimizer, CPU, scheduler=scheduler)
    assert torch.equal(model.weight, weights)
    steps = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=4)
    train_one_epoch(model, loader, optimizer, CPU, scheduler=steps)
    train_one_epoch(model, loader, optimizer, CPU, scheduler=steps)  # all 4 steps: no error
    streamed = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=4)
    train_one_epoch(model, iter(loader), optimizer, CPU, scheduler=streamed)  # no len: as DeviceBatches.epoch
    assert streamed.last_epoch == 2


def test_train_one_epoch_normalises_uint8_batches_with_the_given_statistics():
    from helpers.batching import normalize_batch
    from helpers.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    given = []
    model = nn.Conv2d(3, 3, 1)
    model.register_forward_pre_hook(lambda module, inputs: given.append(inputs[0]))
    loader = DataLoader(TensorDataset(images, torch.zeros(4, 8, 8, dtype=torch.uint8)), batch_size=4)
    train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.allclose(given[0], normalize_batch(images, IMAGENET_MEAN, IMAGENET_STD))


def test_dice_and_segmentation_loss_have_the_values_worked_out_by_hand():
    """Uniform scores over 2 classes for a mask [[0, 1], [1, 1]]: every probability is 1/2.
    Dice per class (2 * overlap + 1) / (total + 1): class 0 (2 * 0.5 + 1) / (3 + 1) = 1/2, class 1
    (2 * 1.5 + 1) / (5 + 1) = 2/3; loss 1 - 7/12. Cross-entropy ln 2."""
    logits, masks = torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [1, 1]]])
    assert dice_loss(logits, masks).item() == pytest.approx(5 / 12)
    assert segmentation_loss(logits, masks).item() == pytest.approx(math.log(2))  # no Dice unless asked
    assert segmentation_loss(logits, masks, dice_weight=0.5).item() == pytest.approx(math.log(2) + 5 / 24)
    marked = torch.tensor([[[0, 1], [1, 9]]])  # a file's own ignore value: the last pixel counts for nothing
    dice = dice_loss(logits, marked, ignore_index=9).item()  # class 0: 2 / 3.5, class 1: 3 / 4.5
    assert dice == pytest.approx(8 / 21)
    assert segmentation_loss(logits, marked, dice_weight=1.0, ignore_index=9).item() == pytest.approx(
        math.log(2) + dice)


def test_dice_loss_works_when_the_batch_lacks_the_last_class():
    masks = torch.tensor([[[0, 1], [1, 0]]])  # 3 classes, class 2 absent
    assert dice_loss(confident_logits(masks, num_classes=3), masks).item() < 1e-3


def test_dice_loss_matches_the_one_hot_formula_exactly():
    """The bool comparison stands in for ``one_hot``: same loss and same gradients, bit for bit, with
    ignored pixels (255, and an ignore value that is also a class index) and in bfloat16."""

    def with_one_hot(logits, masks, ignore_index):
        valid = (masks != ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        labels = torch.nn.functional.one_hot(masks.where(valid[:, 0], 0), logits.shape[1])
        one_hot = labels.permute(0, 3, 1, 2) * valid
        overlap = (probs * one_hot).sum(dim=(0, 2, 3))
        total = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
        return 1 - ((2 * overlap + 1) / (total + 1)).mean()

    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 4, (2, 16, 16), generator=generator)
    marked = classes.clone()
    marked[:, :3] = 255
    for dtype, masks, ignore_index in [(torch.float32, marked, 255), (torch.float32, classes, 0),
                                       (torch.bfloat16, marked, 255)]:
        logits = torch.randn(2, 4, 16, 16, generator=generator).to(dtype).requires_grad_()
        ours, reference = dice_loss(logits, masks, ignore_index), with_one_hot(logits, masks, ignore_index)
        assert ours.item() == reference.item()
        assert torch.equal(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(reference, logits)[0])


def test_evaluate_refuses_a_model_of_other_classes_and_skips_unlabelled_batches():
    """A 4-channel model scored with num_classes=3 counted every pixel in the wrong cell; an empty loader
    scored a perfect loss of 0 (now NaN: nothing scored, beside a zero matrix that ranks add up, 07); one
    batch with every pixel ignored made the whole loss NaN; training on no batch reported a loss of 0."""
    torch.manual_seed(0)
    dataset = tiny_task(count=4)
    with pytest.raises(ValueError, match=r"^The model outputs 4 channels for num_classes=3: give the model"):
        evaluate(UNet(num_classes=4, widths=(8, 16)), DataLoader(dataset, batch_size=2), CPU, num_classes=3)
    model = UNet(num_classes=3, widths=(8, 16))
    empty = DataLoader(dataset, batch_size=8, drop_last=True)
    nothing = evaluate(model, empty, CPU, num_classes=3)  # a rank with no validation image (07)
    assert math.isnan(nothing.loss) and not nothing.confusion.any()
    with pytest.raises(ValueError, match=r"^The loader gave no batch to train on \(drop_last=True"):
        train_one_epoch(model, empty, torch.optim.SGD(model.parameters(), lr=0.1), CPU)
    images, masks = dataset.tensors
    masks = masks.clone()
    masks[2:] = 255  # the second batch: nothing labelled
    split = evaluate(model, DataLoader(TensorDataset(images, masks), batch_size=2), CPU, num_classes=3)
    first = evaluate(model, DataLoader(TensorDataset(images[:2], masks[:2]), batch_size=2), CPU, 3)
    assert math.isclose(split.loss, first.loss, rel_tol=1e-5)
    assert torch.equal(split.confusion, first.confusion)
