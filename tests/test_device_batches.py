"""Batches augmented on the device (helpers.device_batches, notebook 06): aligned, drawn at their
probabilities, reproducible, and the same pixels as the per-sample v2 pipeline they replace."""

from types import SimpleNamespace

import numpy as np
import pytest
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


@pytest.mark.parametrize("classes", [4, 400])  # 400: masks kept as int64, not uint8
def test_each_batch_takes_the_fast_path_unless_one_of_its_own_boxes_leaves_its_image(monkeypatch, classes):
    """The last scene is 38 wide, narrower than the 40 x 40 crop: only the batch holding it pads, and the
    batches that take the fast path give the pixels the general path gives."""
    samples = [(image, tv_tensors.Mask(mask.long() * (classes // 4))) for image, mask in scenes()]
    batches = DeviceBatches(InMemoryDataset(samples), CPU, size=40, batch_size=2)
    assert batches.masks.dtype == (torch.uint8 if classes == 4 else torch.int64)
    made, make = [], batches.make

    def spy(plan: torch.Tensor, exact: bool, within: bool) -> tuple[torch.Tensor, torch.Tensor]:
        made.append((plan[:, 0].tolist(), within))
        general = make(plan, exact=False, within=False)
        fast = make(plan, exact, within)
        assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])
        return fast

    monkeypatch.setattr(batches, "make", spy)
    assert len(list(batches.epoch(torch.Generator().manual_seed(0)))) == 3
    assert [within for index, within in made] == [5 not in index for index, within in made]
    assert sum(within for index, within in made) == 2


def test_each_batch_is_sampled_pixel_for_pixel_unless_one_of_its_own_boxes_is_scaled(monkeypatch):
    """Every box is 32 x 32 but sample 0's, which is 28 x 28 and scaled up: only its batch is sampled
    bilinearly, and the batches made pixel for pixel equal the general path's."""
    from helpers import device_batches

    batches = DeviceBatches(InMemoryDataset(scenes()), CPU, size=32, batch_size=2)
    real_draw, made, make = device_batches.draw, [], batches.make

    def one_scaled(sizes: torch.Tensor, size: int, generator: torch.Generator, **options) -> Draws:
        draws = real_draw(sizes, size, generator, **options)
        first = int(torch.nonzero(sizes[:, 0].eq(40)))  # sample 0, the only scene 40 tall
        draws.height[first] = draws.width[first] = 28.0
        return draws

    def spy(plan: torch.Tensor, exact: bool, within: bool) -> tuple[torch.Tensor, torch.Tensor]:
        made.append((plan[:, 0].tolist(), exact))
        general, fast = make(plan, exact=False, within=False), make(plan, exact, within)
        assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])
        return fast

    monkeypatch.setattr(device_batches, "draw", one_scaled)
    monkeypatch.setattr(batches, "make", spy)
    assert len(list(batches.epoch(torch.Generator().manual_seed(0)))) == 3
    assert [exact for index, exact in made] == [0 not in index for index, exact in made]


def test_a_crop_larger_than_the_image_pads_with_zero_and_ignore():
    batches = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=64, batch_size=1)
    images, masks = next(batches.epoch(torch.Generator().manual_seed(0)))
    outside = masks[0] == IGNORE_INDEX
    assert outside.sum() == 64 * 64 - 40 * 48 and images[0][:, outside].eq(0).all()
    assert torch.equal(images[0, 0][~outside], masks[0][~outside] * 50)  # the image, aligned
    skipping_99 = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=64, batch_size=1, ignore_index=99)
    _, masks_99 = next(skipping_99.epoch(torch.Generator().manual_seed(0)))
    assert torch.equal(masks_99[0] == 99, outside)  # another dataset's ignore value, where 255 was
    with pytest.raises(ValueError, match="DeviceBatches: ignore_index -1 does not fit torch.uint8 masks"):
        DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=64, batch_size=1, ignore_index=-1)


def one_box(top: int, left: int, height: int, width: int) -> Draws:
    """Sample 0 cropped by this box, neither flipped nor turned."""
    def one(value: float) -> torch.Tensor:
        return torch.tensor([float(value)], dtype=torch.float64)

    no = torch.tensor([False])
    return Draws(torch.zeros(1, dtype=torch.int64), one(top), one(left), one(height), one(width), no, no,
                 torch.zeros(1, dtype=torch.int64))


@pytest.mark.parametrize("box, exact, within", [
    ((8, 16, 32, 32), True, True),  # the scene is 40 x 48: this box touches its bottom right corner
    ((9, 0, 32, 32), True, False),  # one row below the image
    ((0, 17, 32, 32), True, False),  # one column right of it
    ((-1, 0, 32, 32), True, False),
    ((0, -1, 32, 32), True, False),
    ((0, 0, 32, 28), False, True),  # one side only scaled: still scaled
    ((0, 0, 28, 32), False, True),
])
def test_a_box_is_exact_only_when_both_sides_are_the_size_and_within_only_inside_on_all_four(box, exact,
                                                                                            within):
    batches = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=32, batch_size=1)
    _, is_exact, is_within = batches.plan(one_box(*box))
    assert (bool(is_exact), bool(is_within)) == (exact, within)


def test_a_scaled_box_that_leaves_its_image_pads_with_zero_and_ignore():
    """draw keeps scaled boxes inside; batch still pads one that is not, as it pads a size x size box."""
    batches = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=32, batch_size=1)
    images, masks = batches.batch(one_box(20, 0, 28, 28))  # rows 20 to 47 of a scene 40 high
    outside = masks[0] == IGNORE_INDEX
    # output row i samples row 20 + (i + 0.5) * 28 / 32 - 0.5, which rounds to 40 (below the scene) from 23 on
    assert not outside[:23].any() and outside[23:].all()
    assert images[0][:, outside].eq(0).all() and images[0][:, ~outside].float().mean() > 20


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
    sizes = torch.tensor([tuple(image.shape[1:]) for image, _ in samples])
    for options in ({"hflip_prob": 0.5, "vflip_prob": 0.5, "quarter_turns": True},
                    {"hflip_prob": 1.0, "vflip_prob": 0.0, "quarter_turns": False}):  # each set applied
        images, masks = augment_batch([image for image, _ in samples], [mask for _, mask in samples], 32,
                                      torch.Generator().manual_seed(3), **options)
        draws = draw(sizes, 32, torch.Generator().manual_seed(3), scale=None, **options)
        for n, (image, mask) in enumerate(samples):
            expected = by_v2(image, mask, int(draws.top[n]), int(draws.left[n]), 32, bool(draws.hflip[n]),
                             bool(draws.vflip[n]), int(draws.turns[n]))
            assert torch.equal(images[n], expected[0]) and torch.equal(masks[n], expected[1]), (options, n)


def test_a_scaled_crop_samples_its_box_as_a_bilinear_resize_does():
    """A box that is the whole image, shrunk to 32 x 32 and stretched to 64 x 64: the image as
    ``F.resize`` makes it without antialiasing, the mask from its nearest pixel centre (``NEAREST_EXACT``),
    at the edges too. (Inside an image a box's edge pixels blend with their real neighbours instead.)"""
    samples = scenes(count=2)
    heights, widths = (torch.tensor([float(image.shape[axis]) for image, _ in samples]) for axis in (1, 2))
    unflipped = torch.zeros(2, dtype=torch.bool)
    draws = Draws(torch.arange(2), torch.zeros(2), torch.zeros(2), heights, widths, unflipped, unflipped,
                  turns=torch.zeros(2, dtype=torch.int64))
    for size in (32, 64):
        images, masks = DeviceBatches(InMemoryDataset(samples), CPU, size, batch_size=2).batch(draws)
        assert images.dtype == torch.uint8 and masks.dtype == torch.uint8
        for n, (image, mask) in enumerate(samples):
            expected = F.resize(image.float(), [size, size], antialias=False)
            assert (images[n].float() - expected).abs().max() <= 0.5 + 1e-3, (size, n)  # rounded, no more
            nearest = F.resize(mask[None], [size, size], interpolation=F.InterpolationMode.NEAREST_EXACT)
            assert torch.equal(masks[n], nearest[0]), (size, n)


def test_boxes_have_aspect_ratios_from_three_quarters_to_four_thirds():
    sizes = torch.tensor([[400, 400]]).expand(2000, 2)  # large: no box is cut by the image's edges
    draws = draw(sizes, 32, torch.Generator().manual_seed(0), scale=(0.1, 0.2), hflip_prob=0.5,
                 vflip_prob=0, quarter_turns=False)
    ratio = draws.width / draws.height
    assert 0.74 < ratio.min() < 0.8 and 1.3 < ratio.max() < 1.35


def test_an_epoch_serves_every_sample_once_and_keeps_the_last_short_batch_unless_asked_not_to():
    samples = [(tv_tensors.Image(torch.full((3, 8, 8), n, dtype=torch.uint8)),
                tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.uint8))) for n in range(6)]  # image n is all n
    for batch_size, drop_last, sizes in ((4, True, [4]), (4, False, [4, 2]), (3, False, [3, 3]),
                                         (5, False, [5, 1])):
        batches = DeviceBatches(InMemoryDataset(samples), CPU, 8, batch_size, drop_last=drop_last)
        epoch = list(batches.epoch(torch.Generator().manual_seed(0)))
        assert len(batches) == len(epoch) and [len(images) for images, _ in epoch] == sizes
        if not drop_last:
            assert sorted(int(image.max()) for images, _ in epoch for image in images) == list(range(6))


def test_defaults_are_those_of_train_transforms_and_grey_images_are_refused():
    import inspect

    from helpers.transforms import train_transforms

    ours = DeviceBatches(InMemoryDataset(scenes(count=1)), CPU, size=32, batch_size=1).options
    theirs = inspect.signature(train_transforms).parameters
    names = ("hflip_prob", "vflip_prob", "quarter_turns")  # the same names, and the same defaults
    assert [ours[name] for name in names] == [theirs[name].default for name in names]
    grey = [(tv_tensors.Image(torch.zeros(1, 8, 8, dtype=torch.uint8)),
             tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.uint8)))]
    with pytest.raises(ValueError, match=r"^DeviceBatches needs RGB images \(3 channels\); convert the "
                                         r"dataset first\.$"):
        DeviceBatches(InMemoryDataset(grey), CPU, size=8, batch_size=1)


def test_masks_of_another_size_than_their_images_are_refused_not_read_as_other_pixels():
    """Samples are stored flat: a transposed mask (8 x 6 for 6 x 8) would fill its image's pixels."""
    from helpers.device_batches import augment_batch

    image, mask = torch.zeros(3, 6, 8, dtype=torch.uint8), torch.zeros(8, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^Sample 1 of the batch has a mask of \(8, 6\) for an image of "
                                         r"\(6, 8\) \(height, width\)"):
        augment_batch([image, image], [mask.mT, mask], 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^Sample 0 of the dataset has a mask of \(8, 6\) for an image of "
                                         r"\(6, 8\) \(height, width\): give each image a mask of its own"):
        InMemoryDataset([(tv_tensors.Image(image), tv_tensors.Mask(mask))])
    assert len(InMemoryDataset([(tv_tensors.Image(image), tv_tensors.Mask(mask.mT[None]))])) == 1  # [1, H, W]
    with pytest.raises(ValueError, match=r"^augment_batch was given images and masks of different counts "
                                         r"\(2 and 1\)"):
        augment_batch([image, image], [mask.mT], 4, torch.Generator())


def test_fewer_samples_than_a_batch_with_drop_last_are_refused_rather_than_an_empty_epoch():
    samples = scenes(count=5)
    with pytest.raises(ValueError, match=r"^5 samples make no batch of 8 with drop_last=True: use a "
                                         r"smaller batch_size, or drop_last=False\.$"):
        DeviceBatches(InMemoryDataset(samples), CPU, 32, batch_size=8)
    assert len(DeviceBatches(InMemoryDataset(samples), CPU, 32, batch_size=8, drop_last=False)) == 1
    with pytest.raises(ValueError, match=r"^0 samples make no batch of 8\.$"):
        DeviceBatches(SimpleNamespace(shapes=torch.zeros(0, 3)), CPU, 32, batch_size=8, drop_last=False)


def test_samples_that_cannot_be_stored_flat_and_options_out_of_range_are_refused():
    """Mixed channel counts read other samples' pixels; float masks and images were rounded or passed
    through; options out of range gave batches of padding, or flips at a probability of 1.5."""
    from helpers.device_batches import augment_batch

    grey, rgb = torch.full((1, 4, 4), 10, dtype=torch.uint8), torch.full((3, 4, 4), 20, dtype=torch.uint8)
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    for samples, refused in [
        ([(grey, mask), (rgb, mask)], r"^Sample 1 of the dataset has an image of \(3, 4, 4\), not \[1, H"),
        ([(rgb, mask.float() + 0.5)], r"^Sample 0 of the dataset has a torch\.float32 mask: class indices"),
        ([(rgb.float() / 255, mask)], r"^Sample 0 of the dataset has a torch\.float32 image: samples"),
        ([], r"^InMemoryDataset was given a dataset with no samples"),
    ]:
        with pytest.raises(ValueError, match=refused):
            InMemoryDataset(samples)
    with pytest.raises(ValueError, match=r"^Sample 0 of the batch has a torch\.float32 image"):
        augment_batch([rgb.float()], [mask], 4, torch.Generator())
    with pytest.raises(ValueError, match=r"^augment_batch was given no images"):
        augment_batch([], [], 4, torch.Generator())
    data = InMemoryDataset([(rgb, mask)] * 2)
    for options, refused in [
        ({"hflip_prob": 1.5}, r"^hflip_prob is a probability, from 0 to 1, not 1\.5"),
        ({"vflip_prob": float("nan")}, r"^vflip_prob is a probability, from 0 to 1, not nan"),
        ({"scale": (-0.5, 0.5)}, r"^scale is \(smallest, largest\) share of the image's area"),
        ({"scale": (1.0, 0.5)}, r"^scale is \(smallest, largest\)"),
        ({"scale": (0.0, 0.5)}, r"^scale is .* 0 < smallest <= largest <= 1, not \(0\.0, 0\.5\)"),
        ({"scale": (0.5, 1.5)}, r"^scale is \(smallest, largest\)"),
        ({"batch_size": 0}, r"^batch_size must be a whole number of at least 1, not 0"),
        ({"size": 32.0}, r"^size must be a whole number of at least 1, not 32\.0"),
    ]:
        with pytest.raises(ValueError, match=refused):
            DeviceBatches(data, CPU, **{"size": 4, "batch_size": 2, **options})
    assert len(DeviceBatches(data, CPU, size=torch.tensor(4), batch_size=np.int64(2))) == 1  # ints, all
    assert len(DeviceBatches(data, CPU, size=4, batch_size=2, scale=(0.5, 0.5))) == 1  # one scale, always
