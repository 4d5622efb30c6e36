import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from helpers.datasets import SegmentationDataset
from helpers.masks import IGNORE_INDEX, PALETTE, index_to_colour
from helpers.paths import data_dir
from helpers.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPES_MEAN,
    SHAPES_STD,
    RandomCutout,
    channel_stats,
    denormalize,
    eval_transforms,
    to_model_input,
    train_transforms,
)

CLASS_SET = {0, 1, 2, 3}


def blocky_sample(seed: int = 0, side: int = 160) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A mask of 16x16 blocks of random classes, and an image painted from it: the image *is* the mask."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 4, (side // 16, side // 16), generator=generator)
    mask = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    return tv_tensors.Image(index_to_colour(mask)), tv_tensors.Mask(mask)


def classes_seen_in(image: torch.Tensor) -> torch.Tensor:
    """Read the class back from each pixel's colour: the nearest palette colour."""
    pixels = (denormalize(image) * 255).flatten(1).T
    return torch.cdist(pixels, torch.tensor(PALETTE, dtype=torch.float32)).argmin(1).view(image.shape[1:])


def inside_a_class(mask: torch.Tensor) -> torch.Tensor:
    """Labelled pixels whose 5x5 neighbourhood holds one class only (antialiasing blends ~2 px)."""
    as_float = mask[None].float()
    biggest = torch.nn.functional.max_pool2d(as_float, 5, stride=1, padding=2)
    smallest = -torch.nn.functional.max_pool2d(-as_float, 5, stride=1, padding=2)
    inside = ((biggest == smallest)[0]) & (mask != IGNORE_INDEX)
    frame = torch.ones_like(inside)
    frame[2:-2, 2:-2] = False  # rotation blends its fill into the outermost pixels of the image only
    return inside & ~frame


@pytest.mark.parametrize("seed", range(6))
def test_geometric_steps_keep_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    pipeline = train_transforms(96, vflip_prob=0.5, degrees=30, jitter=0.0)
    image, mask = pipeline(*blocky_sample(seed))
    agreement = (classes_seen_in(image) == mask)[inside_a_class(mask)].float().mean()
    assert agreement > 0.995  # edges blend in the image; away from them colour and class must agree


def test_a_misaligned_pipeline_would_fail_that_check():
    torch.manual_seed(0)
    image, mask = blocky_sample()
    flipped_image = v2.functional.horizontal_flip(image)  # the image flipped, the mask not
    image_out, mask_out = to_model_input()(flipped_image, mask)
    assert (classes_seen_in(image_out) == mask_out)[inside_a_class(mask_out)].float().mean() < 0.6


@pytest.mark.parametrize("seed", range(4))
def test_masks_stay_integer_classes_through_every_pipeline(seed):
    torch.manual_seed(seed)
    dataset = SegmentationDataset(data_dir("shapes"), split="val")
    pipelines = {"train": train_transforms(vflip_prob=0.5, degrees=45, blur_prob=1.0, cutout_prob=1.0),
                 "eval": eval_transforms(), "eval cropped": eval_transforms(128)}
    for name, pipeline in pipelines.items():
        image, mask = pipeline(*dataset[seed])
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64, name
        allowed = CLASS_SET | {IGNORE_INDEX} if name == "train" else CLASS_SET
        assert set(mask.unique().tolist()) <= allowed, name
        assert image.dtype == torch.float32 and image.shape[-2:] == mask.shape, name


def test_photometric_steps_change_the_image_and_never_the_mask():
    torch.manual_seed(0)
    image, mask = blocky_sample(side=128)
    pipeline = train_transforms(128, scale=(1.0, 1.0), hflip_prob=0.0, degrees=0.0, jitter=0.5,
                                blur_prob=1.0)
    image_out, mask_out = pipeline(image, mask)
    assert torch.equal(mask_out, mask)
    assert not torch.allclose(image_out, to_model_input()(image))


def test_eval_pipelines_are_deterministic():
    sample = SegmentationDataset(data_dir("shapes"), split="val")[0]
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(eval_transforms(128)(*sample))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_cutout_blanks_the_image_and_marks_ignore_in_the_same_square():
    image, mask = blocky_sample(side=64)
    cut_image, cut_mask = RandomCutout(size=16, p=1.0)(image, mask)
    hole = cut_mask == IGNORE_INDEX
    assert hole.sum() == 16 * 16
    assert (cut_image[:, hole] == 0).all() and torch.equal(cut_image[:, ~hole], image[:, ~hole])
    unchanged = RandomCutout(size=16, p=0.0)(image, mask)
    assert torch.equal(unchanged[0], image) and torch.equal(unchanged[1], mask)
    boxes = tv_tensors.BoundingBoxes([[2, 2, 10, 10]], format="XYXY", canvas_size=(64, 64))
    assert torch.equal(RandomCutout(p=1.0)(image, mask, boxes)[2], boxes)  # other tensors pass through
    plain = torch.full((3, 20, 24), 9, dtype=torch.uint8)  # a plain tensor alone: v2 treats it as the image
    cut = RandomCutout(size=16, p=1.0)(plain)
    assert type(cut) is torch.Tensor and (cut == 0).all(0).sum() == 16 * 16 and (cut != 9).sum() == 3 * 256


def test_cutout_refuses_a_pil_image_rather_than_mark_a_hole_it_does_not_cut():
    image, mask = blocky_sample()
    with pytest.raises(TypeError, match=r"RandomCutout blanks tensors, not PIL images: .*PILToTensor"):
        RandomCutout(size=8, p=1.0)(v2.functional.to_pil_image(image), mask)


def test_denormalize_undoes_normalize():
    image, mask = blocky_sample(side=32)
    normalised, _ = to_model_input()(image, mask)
    assert torch.allclose(denormalize(normalised), image / 255, atol=1e-6)
    extremes = denormalize(torch.tensor([-100.0, 100.0]).view(1, 1, 2).expand(3, 1, 2))
    assert extremes.flatten(1).tolist() == [[0.0, 1.0]] * 3  # clamped to [0, 1] for display


def test_channel_stats_are_exact_on_known_images():
    black, white = torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)
    mean, std = channel_stats([(black, None), (white, None)])
    assert mean == [0.5] * 3 and std == [0.5] * 3


def test_recorded_shapes_statistics_match_the_training_split():
    mean, std = channel_stats(SegmentationDataset(data_dir("shapes"), split="train"))
    assert mean == list(SHAPES_MEAN) and std == list(SHAPES_STD)


def test_train_transforms_without_scale_crop_at_the_images_own_scale():
    """scale=None: a plain crop, so the mask window is a piece of the original mask, never resized."""
    import torch
    from torchvision import tv_tensors

    from helpers.transforms import train_transforms

    mask = tv_tensors.Mask(torch.randint(0, 4, (40, 48), generator=torch.Generator().manual_seed(0)))
    image = tv_tensors.Image(torch.zeros(3, 40, 48, dtype=torch.uint8))
    _, cropped = train_transforms(32, scale=None, hflip_prob=0.0, degrees=0, jitter=0)(image, mask)
    assert cropped.shape == (32, 32)
    windows = [mask[top:top + 32, left:left + 32] for top in range(9) for left in range(17)]
    assert any(torch.equal(cropped, window) for window in windows)
    resized = v2.functional.resize(mask, [32, 32], interpolation=v2.InterpolationMode.NEAREST)
    assert not any(torch.equal(resized, window) for window in windows)  # a resize would be caught
    small = tv_tensors.Mask(torch.zeros(20, 20, dtype=torch.int64))
    grey = tv_tensors.Image(torch.full((3, 20, 20), 200, dtype=torch.uint8))
    image, padded = train_transforms(32, scale=None, degrees=0, jitter=0, normalize=False)(grey, small)
    assert padded.shape == (32, 32) and (padded == 255).sum() == 32 * 32 - 20 * 20  # padding is ignored
    assert torch.equal((image == 0).all(0), padded == 255)  # and black in the image


def test_quarter_turns_turn_image_and_mask_together_and_exactly():
    """Every outcome is one of the four exact turns of the crop, the image's the same as the mask's."""
    mask = tv_tensors.Mask(torch.randint(0, 4, (64, 64), generator=torch.Generator().manual_seed(0)))
    image = tv_tensors.Image(index_to_colour(mask))  # 64 px: a turn 1 degree off moves the corner pixels
    views = [mask.rot90(k, (-2, -1)) for k in range(4)] + [mask.mT, mask.flip(-1)]
    assert all(not torch.equal(a, b) for i, a in enumerate(views) for b in views[i + 1:])  # all told apart
    pipeline = train_transforms(64, scale=None, hflip_prob=0.0, quarter_turns=True, degrees=0, jitter=0)
    turns_seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        turned_image, turned_mask = pipeline(image, mask)
        turns = [k for k in range(4) if torch.equal(turned_mask, mask.rot90(k, (-2, -1)))]
        assert len(turns) == 1, "the mask must be an exact quarter turn of the original"
        assert torch.equal(classes_seen_in(turned_image), turned_mask)  # the image turned with it
        turns_seen.add(turns[0])
    assert turns_seen == {0, 1, 2, 3}


def test_steps_switched_off_are_left_out_of_the_pipeline():
    plain = train_transforms(32, hflip_prob=0.0, degrees=0, jitter=0)
    assert [type(step).__name__ for step in plain.transforms] == ["RandomResizedCrop", "Compose"]
    everything = train_transforms(32, vflip_prob=0.5, quarter_turns=True, blur_prob=0.5, cutout_prob=0.5)
    assert len(everything.transforms) == 9  # crop, 2 flips, turns, rotation, jitter, blur, cutout, to float


def test_the_default_steps_draw_from_the_ranges_the_docstring_and_03_give():
    """Each setting reaches its step: 128 px crops of 50-100 % of the image, flips half the time,
    rotations up to 15 degrees, jitter 0.2 (hue a quarter of it), and blur sigmas 0.1 to 1.5."""
    crop, flip, rotation, jitter, blur, _ = train_transforms(blur_prob=0.5).transforms
    assert crop.size == (128, 128) and crop.scale == (0.5, 1.0) and crop.antialias
    assert flip.p == 0.5 and rotation.degrees == [-15.0, 15.0]
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.8, 1.2),) * 3
    assert jitter.hue == pytest.approx((-0.05, 0.05))
    assert blur.p == 0.5 and blur.transforms[0].sigma == [0.1, 1.5]


def test_cutout_squares_lie_wholly_inside_the_image_and_reach_its_edges():
    image = tv_tensors.Image(torch.full((3, 20, 24), 9, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(20, 24, dtype=torch.int64))
    cutout = RandomCutout(size=16, p=1.0)
    torch.manual_seed(0)
    corners = set()
    for _ in range(200):
        rows, cols = (cutout(image, mask)[1] == IGNORE_INDEX).nonzero(as_tuple=True)
        assert len(rows) == 16 * 16  # a whole square, never cut off by an edge
        corners.add((rows.min().item(), cols.min().item()))
    assert {top for top, _ in corners} == set(range(5)) and {left for _, left in corners} == set(range(9))
    exactly = tv_tensors.Mask(torch.zeros(16, 16, dtype=torch.int64))  # the square's own size: all of it
    assert all((cutout(exactly) == IGNORE_INDEX).all() for _ in range(10))


def test_train_cutout_blanks_a_quarter_of_the_crop_with_the_probability_asked():
    image, mask = blocky_sample(side=64)
    torch.manual_seed(0)
    for cutout, least, most in ((1.0, 40, 40), (0.3, 4, 20)):  # about 12 of 40 at 0.3
        pipeline = train_transforms(64, scale=None, hflip_prob=0.0, degrees=0, jitter=0, cutout_prob=cutout,
                                    normalize=False)
        blanked = [int((pipeline(image, mask)[1] == IGNORE_INDEX).sum()) for _ in range(40)]
        assert set(blanked) <= {0, 16 * 16}  # none, or a 64 // 4 square
        assert least <= blanked.count(16 * 16) <= most, (cutout, blanked.count(16 * 16))


def test_rotation_marks_the_corners_it_brings_in_as_ignore():
    image, mask = blocky_sample(side=64)
    objects_only = tv_tensors.Mask(mask.clamp(min=1))  # no background: a 0 could only be a filled corner
    image = tv_tensors.Image(index_to_colour(objects_only))  # no black either
    pipeline = train_transforms(64, scale=None, hflip_prob=0.0, degrees=45, jitter=0, normalize=False)
    torch.manual_seed(0)
    images, masks = zip(*(pipeline(image, objects_only) for _ in range(5)))
    assert not any((mask == 0).any() for mask in masks)
    assert sum(bool((mask == IGNORE_INDEX).any()) for mask in masks) >= 3  # all but the smallest angles
    blended = [len(rotated[0].unique()) > len(PALETTE) + 1 for rotated in images]  # more than palette + fill
    assert sum(blended) >= 3  # the image was interpolated smoothly (the mask by nearest neighbour)
    assert sum(bool((rotated == 0).all(0).any()) for rotated in images) >= 3  # its corners filled black


def test_another_ignore_index_fills_what_padding_rotation_and_cutout_invent():
    """A dataset that skips 99 rather than 255: every invented mask pixel is 99, and no 255 appears."""
    image, mask = blocky_sample(side=48)
    pipeline = train_transforms(64, scale=None, hflip_prob=0.0, degrees=45, jitter=0, cutout_prob=1.0,
                                normalize=False, ignore_index=99)
    torch.manual_seed(0)
    masks = [pipeline(image, mask)[1] for _ in range(5)]
    allowed = set(range(len(PALETTE))) | {99}  # the classes, and the ignore index asked for
    assert all(set(mask.unique().tolist()) <= allowed for mask in masks)
    assert all(bool((mask == 99).any()) for mask in masks)  # 48 px padded to 64: every crop has some


def test_an_eval_crop_larger_than_a_sample_pads_its_mask_with_ignore_not_background():
    """v2.CenterCrop alone pads with 0, which the metric would score as background."""
    image, mask = blocky_sample(side=48)
    out_image, out_mask = eval_transforms(64, normalize=False)(image, mask)
    assert out_image.shape[-2:] == out_mask.shape == (64, 64)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[8:56, 8:56] = True  # the sample, centred
    assert torch.equal(out_mask[inside].view(48, 48), mask) and out_mask[~inside].eq(IGNORE_INDEX).all()
    assert out_image[:, ~inside].eq(0).all()
    assert eval_transforms(64, normalize=False, ignore_index=99)(image, mask)[1][~inside].eq(99).all()
    wide = eval_transforms((48, 64), normalize=False)(image, mask)[1]  # (height, width), as v2 takes it
    assert wide.shape == (48, 64) and wide[:, 8:56].equal(mask) and wide[:, :8].eq(IGNORE_INDEX).all()
    for make in (train_transforms, eval_transforms):  # a Dataset's "no ignore index", passed on
        with pytest.raises(ValueError, match=f"{make.__name__} needs a mask value for the pixels it invents"):
            make(64, ignore_index=None)


def test_blur_is_drawn_with_the_probability_asked():
    """blur_prob=1.0 blurs every sample, blur_prob=0.3 about a third of them. A blur with one of the smallest
    sigmas changes no uint8 value, so somewhat fewer samples differ from the original."""
    image, mask = blocky_sample(side=64)
    torch.manual_seed(0)
    for blur, least, most in ((1.0, 32, 40), (0.3, 4, 24)):
        pipeline = train_transforms(64, scale=None, hflip_prob=0.0, degrees=0, jitter=0,
                                    blur_prob=blur, normalize=False)
        changed = sum(not torch.equal(pipeline(image, mask)[0], image) for _ in range(40))
        assert least <= changed <= most, (blur, changed)


def test_normalize_false_stops_at_uint8_and_normalize_uses_the_statistics_given():
    image, mask = blocky_sample(side=64)
    for pipeline in (train_transforms(64, normalize=False), eval_transforms(normalize=False)):
        out, out_mask = pipeline(image, mask)
        assert out.dtype == torch.uint8 and out_mask.dtype == torch.int64
    imagenet = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    want = v2.functional.normalize(image.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.allclose(eval_transforms(**imagenet)(image), want, atol=1e-5)
    whole = train_transforms(64, scale=None, hflip_prob=0.0, degrees=0, jitter=0,
                             **imagenet)  # crops all 64 px
    assert torch.allclose(whole(image, mask)[0], want, atol=1e-5)


def test_eval_transforms_crop_the_centre_of_image_and_mask_alike():
    image, mask = blocky_sample(side=64)
    cropped_image, cropped_mask = eval_transforms(32, normalize=False)(image, mask)
    assert torch.equal(cropped_image, image[:, 16:48, 16:48])
    assert torch.equal(cropped_mask, mask[16:48, 16:48])


def test_random_resized_crop_smooths_what_it_shrinks():
    noise = tv_tensors.Image(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(0)))
    mask = tv_tensors.Mask(torch.zeros(64, 64, dtype=torch.int64))
    pipeline = train_transforms(16, scale=(1.0, 1.0), hflip_prob=0.0, degrees=0, jitter=0, normalize=False)
    small, _ = pipeline(noise, mask)  # the whole image, 4x smaller
    assert small.float().std() < 20  # antialiased: each pixel averages ~4x4 noisy pixels (aliased: std ~36)
