import json
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.batching import PaddedBatch, flip_collate, normalize_batch, pad_collate
from helpers.datasets import SegmentationDataset
from helpers.masks import IGNORE_INDEX, to_palette_image
from helpers.transforms import eval_transforms


def test_pad_collate_pads_images_with_zero_masks_with_ignore_and_keeps_sizes():
    small = (torch.ones(3, 2, 3, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.int64))
    large = (torch.full((3, 4, 5), 7, dtype=torch.uint8), torch.full((4, 5), 2, dtype=torch.int64))
    batch = pad_collate([small, large])
    assert isinstance(batch, PaddedBatch)
    assert batch.image.shape == (2, 3, 4, 5) and batch.mask.shape == (2, 4, 5)
    assert batch.image.dtype == torch.uint8 and batch.mask.dtype == torch.int64  # the samples' own dtypes
    light = pad_collate([(image, mask.to(torch.uint8)) for image, mask in (small, large)])
    assert light.mask.dtype == torch.uint8 and light.mask[0, 2:].eq(IGNORE_INDEX).all()  # uint8 stays light
    assert batch.size.tolist() == [[2, 3], [4, 5]]
    assert batch.image[0, :, :2, :3].eq(1).all() and batch.image[0, :, 2:].eq(0).all()
    assert batch.mask[0, :2, :3].eq(1).all() and batch.mask[0, 2:].eq(IGNORE_INDEX).all()
    assert torch.equal(batch.image[1], large[0]) and torch.equal(batch.mask[1], large[1])
    assert pad_collate([small, large], ignore_index=99).mask[0, 2:].eq(99).all()  # another dataset's value


def test_default_collate_fails_on_mixed_sizes_and_pad_collate_does_not():
    from helpers.paths import data_dir

    dataset = SegmentationDataset(data_dir("shapes"), split="val")
    sizes = {tuple(dataset[i].mask.shape) for i in range(8)}
    assert len(sizes) > 1
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=pad_collate)))
    assert {tuple(s) for s in batch.size.tolist()} == sizes


def test_flip_collate_names_mixed_sizes_in_a_worker_too():
    """Stacked in a worker, mixed sizes would fail only with "Trying to resize storage that is not
    resizable"."""
    from helpers.paths import data_dir

    dataset = SegmentationDataset(data_dir("shapes"), split="val", mask_dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1, collate_fn=flip_collate)
    batches = iter(loader)
    with pytest.raises(ValueError, match=r"flip_collate stacks samples of one size, but this batch holds "
                                         r"\[\(.*\(HxW\): give the dataset size=\(height, width\)"):
        next(batches)
    batches._shutdown_workers()  # the traceback keeps the iterator alive: stop its worker now, not after a
    # 5-second timeout during a later test


def test_normalize_batch_equals_the_per_sample_eval_pipeline():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    per_sample = torch.stack([eval_transforms()(image) for image in images])
    assert torch.allclose(normalize_batch(images), per_sample, atol=1e-6)
    with pytest.raises(TypeError, match=r"^normalize_batch takes uint8 images \(0\.\.255\), not "
                                        r"torch\.float32"):
        normalize_batch(images / 255)  # scaled to 0..1 already: it would come out near-constant


STRIPE = 3  # the stripe's class: a mask resized by anything but nearest neighbour invents 1 and 2 at its edge


@pytest.fixture
def striped(tmp_path):
    """JPEG pairs whose image is red exactly where the mask says STRIPE (left third), so flips must match.
    Half the masks are palette PNGs, half greyscale ("L"), which Pillow resizes bicubic unless told."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for number, stem in enumerate(["a", "b", "c", "d", "e", "f"]):
        mask = np.zeros((40, 60), np.uint8)
        mask[:, :20] = STRIPE
        image = np.zeros((40, 60, 3), np.uint8)
        image[mask == STRIPE] = (255, 0, 0)
        Image.fromarray(image).save(tmp_path / "images" / f"{stem}.jpg", quality=95)
        stored = to_palette_image(mask) if number % 2 else Image.fromarray(mask)
        stored.save(tmp_path / "masks" / f"{stem}.png")
    return tmp_path


@pytest.mark.parametrize("seed", range(2))
def test_every_benchmark_pipeline_delivers_normalised_images_with_aligned_masks(striped, tmp_path, seed):
    from helpers.bench import format_pipelines, pipelines

    random.seed(seed)
    torch.manual_seed(seed)
    chosen = pipelines(striped, 32, batch_size=3) | format_pipelines(striped, 32, 3, tmp_path / "formats")
    for name, pipeline in chosen.items():
        flipped = set()
        batches = [pipeline.finish(batch) for batch in pipeline.loader(0)]
        assert sum(len(images) for images, _ in batches) == 6, name  # drop_last: 6 pairs make 2 batches
        for images, masks in batches:
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32, name
            assert masks.shape[1:] == (32, 32) and masks.dtype == torch.int64, name
            assert set(masks.unique().tolist()) == {0, STRIPE}, name  # no class invented at the edge
            red = images[:, 0] > images[:, 1] + 1  # normalised: red is far above green only in the stripe
            assert (red == (masks == STRIPE)).float().mean() > 0.95, name  # the flip hit image and mask alike
            flipped |= set(masks[:, 0, -1].tolist())  # STRIPE in the right column: a flipped sample
        assert flipped == {0, STRIPE}, name  # in every pipeline, some samples flipped and some not


def test_flip_collate_stacks_and_flips_uint8_pairs_alike():
    torch.manual_seed(0)
    samples = [(torch.arange(24, dtype=torch.uint8).view(1, 4, 6).repeat(3, 1, 1),
                torch.arange(24, dtype=torch.uint8).view(4, 6)) for _ in range(8)]
    images, masks = flip_collate(samples)
    assert images.shape == (8, 3, 4, 6) and images.dtype == masks.dtype == torch.uint8
    assert torch.equal(images[:, 0], masks)  # the same samples flipped in both
    assert 0 < (masks[:, 0, 0] == 5).sum() < 8  # some flipped, some not
    taller = (torch.zeros(3, 5, 6, dtype=torch.uint8), torch.zeros(5, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"holds \[\(4, 6\), \(5, 6\)\] \(HxW\)"):  # two sizes, named
        flip_collate([*samples[:2], taller])


def test_the_benchmark_command_runs_and_ends_with_the_speed_up(tmp_path, capsys, monkeypatch):
    from helpers import bench
    from helpers.bench import main

    monkeypatch.setattr(bench, "usable_cores", lambda: 1)  # decode ceiling in this process (test_bench.py
    # runs it in two spawned ones): starting them would cost most of this test's time
    results = main(["--count", "8", "--side", "64", "--size", "48", "--batch-size", "4", "--workers", "0",
                    "--data", str(tmp_path / "bench"), "--json", str(tmp_path / "b.json"),
                    "--plot", str(tmp_path / "b.png")])
    assert set(results) == {"naive", "recommended"} and all(v[0] > 0 for v in results.values())
    out = capsys.readouterr().out
    assert "decode only" in out and "memory only" in out and "of the decode ceiling" in out
    assert out.strip().splitlines()[-1].startswith("best speed-up: ")
    saved = json.loads((tmp_path / "b.json").read_text())
    assert set(saved) == {"command", "machine", "settings", "ceilings", "pipelines", "shares"}
    assert saved["pipelines"]["naive"]["0"] == results["naive"][0] and saved["machine"]["cores"]
    assert saved["command"].startswith("python -m helpers.bench --count 8 --side 64")  # a results file's
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", saved["machine"]["date"])  # command and date, as results/ needs
    assert "recommended: " in out  # each pipeline's figures, printed as soon as it is measured
    assert 0 < saved["shares"]["recommended"] and saved["ceilings"]["decode only"] > 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_the_benchmark_measures_the_stored_formats_too(tmp_path, capsys, monkeypatch):
    from helpers import bench
    from helpers.bench import main

    monkeypatch.setattr(bench, "usable_cores", lambda: 1)  # decode ceiling in this process, as above
    results = main(["--count", "8", "--side", "64", "--size", "48", "--batch-size", "4",
                    "--workers", "0", "--formats", "--data", str(tmp_path / "bench")])
    assert set(results) == {"naive", "recommended", "memmap", "hdf5", "shards"}
    assert all(speeds[0] > 0 for speeds in results.values())
    out = capsys.readouterr().out
    assert "wrote memmap" in out and out.strip().splitlines()[-1].startswith("best speed-up: ")


def test_flip_batch_flips_image_and_mask_of_the_same_samples():
    from helpers.batching import flip_batch

    torch.manual_seed(0)
    images = torch.arange(8 * 3 * 2 * 4).view(8, 3, 2, 4)
    masks = images[:, 0].clone()
    flipped_images, flipped_masks = flip_batch(images.clone(), masks.clone())
    assert torch.equal(flipped_images[:, 0], flipped_masks)  # same samples flipped in both
    changed = (flipped_masks != masks).flatten(1).any(1)
    assert 0 < changed.sum() < 8


def test_batches_by_size_puts_each_index_once_in_a_batch_of_one_size():
    from helpers.batching import batches_by_size

    sizes = [(128, 160), (144, 144), (128, 160), (128, 160), (144, 144), (160, 128)]
    batches = batches_by_size(sizes, batch_size=2)
    assert batches == [[0, 2], [3], [1, 4], [5]]
    assert sorted(i for batch in batches for i in batch) == list(range(len(sizes)))
    for batch in batches:
        assert len({sizes[i] for i in batch}) == 1
    assert batches_by_size(sizes, batch_size=1) == [[0], [2], [3], [1], [4], [5]]  # one at a time is fine
    with pytest.raises(ValueError, match="batch_size"):
        batches_by_size(sizes, batch_size=0)


def test_a_loader_over_same_size_batches_predicts_like_one_image_at_a_time():
    """Padding would change what a convolution sees near the edges; same-size batches change nothing."""
    from torch.utils.data import DataLoader

    from helpers.batching import batches_by_size
    from helpers.datasets import InMemoryDataset
    from helpers.paths import data_dir

    dataset = InMemoryDataset(SegmentationDataset(data_dir("shapes"), split="val"), eval_transforms())
    subset = list(range(12))
    sizes = [dataset.sizes()[i] for i in subset]
    assert len(set(sizes)) > 1, "the test needs images of several sizes"
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    loader = DataLoader(torch.utils.data.Subset(dataset, subset), batch_sampler=batches_by_size(sizes, 4))
    seen = 0
    with torch.no_grad():
        for batch_indices, (images, masks) in zip(batches_by_size(sizes, 4), loader):
            for row, index in enumerate(batch_indices):
                alone = conv(dataset[subset[index]].image[None])[0]
                assert torch.allclose(conv(images)[row], alone, atol=1e-5)
                assert torch.equal(masks[row], dataset[subset[index]].mask)
                seen += 1
    assert seen == len(subset)



def test_milliseconds_is_the_mean_per_call_of_the_best_round(monkeypatch):
    from helpers import bench

    clock = iter([0.0, 0.4, 1.0, 1.2])  # two rounds of two calls: 400 ms, then 200 ms
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    calls = []
    assert bench.milliseconds(lambda: calls.append(1), repeats=2, rounds=2) == pytest.approx(100)
    assert len(calls) == 4


@pytest.mark.parametrize("collate", [pad_collate, flip_collate])
def test_collates_refuse_a_mask_of_another_size_than_its_image(collate):
    """pad_collate padded a smaller mask with ignore; flip_collate flipped a transposed one on the other
    axis than its image."""
    image = torch.zeros(3, 8, 6, dtype=torch.uint8)
    for mask in (torch.zeros(4, 4, dtype=torch.int64), torch.zeros(6, 8, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"^Sample 1 of the batch has a mask of \(\d, \d\) for an image"):
            collate([(image, torch.zeros(8, 6, dtype=torch.int64)), (image, mask)])


def test_padding_refuses_an_ignore_index_its_masks_cannot_hold():
    """-1 (or torch's -100) written into uint8 masks would be 255: refused, as is None, before any batch."""
    small = (torch.zeros(3, 2, 3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8))
    large = (torch.zeros(3, 4, 5, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"pad_collate: ignore_index -1 does not fit torch.uint8 masks "
                                         r"\(0\.\.255\); pick a value they hold, such as 255\.$"):
        pad_collate([small, large], ignore_index=-1)
    assert pad_collate([small, large], ignore_index=0).mask[0, 2:].eq(0).all()  # in range: as asked
    assert pad_collate([(i, m.long()) for i, m in (small, large)], ignore_index=-100).mask.min() == -100
