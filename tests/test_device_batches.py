"""Batches augmented on the device (helpers.device_batches, notebook 06): aligned, drawn at their
probabilities, reproducible, and the same pixels as the per-sample v2 pipeline they replace."""

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from helpers.datasets import InMemoryDataset
from helpers.device_batches import DeviceBatches, Draws, draw
from helpers.masks import IGNORE_INDEX

CPU = torch.device("cpu")


def scenes(count: int = 6, seed: int = 0) -> list[tuple[tv_tensors.Image, tv_tensors.Mask]]:
    """Images of several sizes whose red channel is 50 x the mask's class (in blocks of 8 x 8 pixels), the
    rest random texture."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for number in range(count):
        height, width = 40 + 4 * number, 48 - 2 * number
        blocks = torch.randint(0, 4, (height // 8 + 1, width // 8 + 1), generator=generator).to(torch.uint8)
        mask = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:height, :width].contiguous()
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        image[0] = mask * 50
        samples.append((tv_tensors.Image(image), tv_tensors.Mask(mask)))
    return samples


def by_v2(image: torch.Tensor, mask: torch.Tensor, top: int, left: int, size: int, hflip: bool, vflip: bool,
          turns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample through torchvision's own functions, in train_transforms' order."""
    image, mask = F.crop(image, top, left, size, size), F.crop(mask, top, left, size, size)
    for flipped, flip in ((hflip, F.horizontal_flip), (vflip, F.vertical_flip)):
        image, mask = (flip(image), flip(mask)) if flipped else (image, mask)
    return F.rotate(image, 90 * turns), F.rotate(mask, 90 * turns)


def test_crops_flips_and_turns_are_the_pixels_v2_gives_sample_by_sample():
    samples = scenes()
    batches = DeviceBatches(InMemoryDataset(samples), CPU, size=32, batch_size=6, hflip_prob=0.5,
                            vflip_prob=0.5, quarter_turns=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(8):
        draws = draw(batches.sizes, 32, generator, **batches.options)
        draws.index = torch.arange(6)
        images, masks = batches.batch(draws)
        assert images.shape == (6, 3, 32, 32) and masks.shape == (6, 32, 32) and images.dtype == torch.uint8
        for n, (image, mask) in enumerate(samples):
            expected = by_v2(image, mask, int(draws.top[n]), int(draws.left[n]), 32, bool(draws.hflip[n]),
                             bool(draws.vflip[n]), int(draws.turns[n]))
            assert torch.equal(images[n], expected[0]) and torch.equal(masks[n], expected[1]), n


def test_a_crop_larger_than_the_image_pads_with_zero_and_ignore():
    batches = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=64, batch_size=1)
    images, masks = next(batches.epoch(torch.Generator().manual_seed(0)))
    outside = masks[0] == IGNORE_INDEX
    assert outside.sum() == 64 * 64 - 40 * 48 and images[0][:, outside].eq(0).all()
    assert torch.equal(images[0, 0][~outside], masks[0][~outside] * 50)  # the image, aligned


def test_each_transform_is_drawn_at_its_probability():
    sizes = torch.tensor([[60, 70]]).expand(4000, 2)
    draws = draw(sizes, 32, torch.Generator().manual_seed(0), scale=None, hflip_prob=0.3, vflip_prob=0.8,
                 quarter_turns=True)
    assert abs(draws.hflip.float().mean() - 0.3) < 0.03 and abs(draws.vflip.float().mean() - 0.8) < 0.03
    assert torch.bincount(draws.turns, minlength=4).min() > 900  # each quarter turn about 1,000 times
    assert set(draws.top.tolist()) == set(range(60 - 32 + 1))  # every position, as v2.RandomCrop
    assert set(draws.left.tolist()) == set(range(70 - 32 + 1))
    none = draw(sizes, 32, torch.Generator(), scale=None, hflip_prob=0, vflip_prob=0, quarter_turns=False)
    assert not none.hflip.any() and not none.vflip.any() and not none.turns.any()


def test_the_same_generator_gives_the_same_batches_and_another_gives_others():
    batches = DeviceBatches(InMemoryDataset(scenes()), CPU, size=32, batch_size=4, scale=(0.5, 1.0),
                            quarter_turns=True)

    def epoch(seed: int) -> list[torch.Tensor]:
        return [image for images, _ in batches.epoch(torch.Generator().manual_seed(seed)) for image in images]

    assert len(batches) == 1 and all(torch.equal(a, b) for a, b in zip(epoch(5), epoch(5), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(5), epoch(6), strict=True))


def test_scaled_crops_keep_image_and_mask_aligned_and_mask_classes_exact():
    batches = DeviceBatches(InMemoryDataset(scenes()), CPU, size=32, batch_size=6, scale=(0.3, 1.0),
                            hflip_prob=0.5, quarter_turns=True)
    for images, masks in batches.epoch(torch.Generator().manual_seed(2)):
        assert set(masks.unique().tolist()) <= {0, 1, 2, 3}  # nearest: no blended classes, no padding
        # the red channel is bilinear, the mask nearest: they agree wherever the class does not change
        agree = (images[:, 0].float() - masks.float() * 50).abs() < 1
        assert agree.float().mean() > 0.6


def test_a_box_is_inside_the_image_and_covers_its_share_of_the_area():
    sizes = torch.tensor([[100, 60]]).expand(2000, 2)
    draws: Draws = draw(sizes, 32, torch.Generator().manual_seed(0), scale=(0.25, 0.5), hflip_prob=0.5,
                        vflip_prob=0, quarter_turns=False)
    assert (draws.top >= 0).all() and (draws.top + draws.height <= 100).all()
    assert (draws.left >= 0).all() and (draws.left + draws.width <= 60).all()
    share = draws.height * draws.width / 6000
    assert 0.2 < share.min() and share.max() < 0.55 and abs(share.mean() - 0.375) < 0.02


def test_a_decoded_batch_of_any_sizes_is_cropped_flipped_and_turned_as_v2_would():
    from helpers.device_batches import augment_batch

    samples = scenes()
    options = {"hflip_prob": 0.5, "vflip_prob": 0.5, "quarter_turns": True}
    images, masks = augment_batch([image for image, _ in samples], [mask for _, mask in samples], 32,
                                  torch.Generator().manual_seed(3), **options)
    sizes = torch.tensor([tuple(image.shape[1:]) for image, _ in samples])
    draws = draw(sizes, 32, torch.Generator().manual_seed(3), scale=None, **options)
    for n, (image, mask) in enumerate(samples):
        expected = by_v2(image, mask, int(draws.top[n]), int(draws.left[n]), 32, bool(draws.hflip[n]),
                         bool(draws.vflip[n]), int(draws.turns[n]))
        assert torch.equal(images[n], expected[0]) and torch.equal(masks[n], expected[1]), n
