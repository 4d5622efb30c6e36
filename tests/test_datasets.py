"""Every way a folder of image+mask pairs can be wrong gets an error naming the file and the fix."""

import io
import re
import struct
import sys
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import helpers.masks
from helpers.datasets import (
    ORIENTATION,
    Sample,
    SegmentationDataset,
    check_value_counts,
    looks_blurred,
    pair_files,
    spelled_apart,
)
from helpers.masks import CLASSES, PALETTE, index_to_colour, to_palette_image
from helpers.paths import data_dir


def write_pair(root: Path, stem: str, label: int, size=(12, 8), image_suffix=".png") -> None:
    """An image whose red channel encodes its label, whose green channel rises from left to right (so a
    flip shows) and whose blue one comes from its name, and a mask with that label in its left half."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[..., 0] = 40 * label
    pixels[..., 1] = np.linspace(0, 200, size[0], dtype=np.uint8)
    pixels[..., 2] = zlib.crc32(stem.encode()) % 251  # each image its own bytes, as photos have
    Image.fromarray(pixels).save(root / "images" / f"{stem}{image_suffix}")
    mask = np.zeros(size[::-1], np.uint8)
    mask[:, : size[0] // 2] = label
    to_palette_image(mask).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for stem, label in [("2", 2), ("10", 1), ("1", 3)]:  # "10" sorts before "2": order must not matter
        write_pair(tmp_path, stem, label)
    return tmp_path


def test_pairs_by_name_and_returns_tv_tensors(root):
    dataset = SegmentationDataset(root)
    assert len(dataset) == 3
    for i in range(3):
        image, mask = dataset[i]
        assert isinstance(dataset[i], Sample)
        assert isinstance(image, tv_tensors.Image)
        assert image.dtype == torch.uint8 and image.shape == (3, 8, 12)
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (8, 12)
        assert image[0, 0, 0] == 40 * mask[0, 0]  # the mask belongs to this very image


def test_pair_files_matches_stems(root):
    assert all(image.stem == mask.stem for image, mask in pair_files(root / "images", root / "masks"))


def test_one_transform_moves_image_and_mask_together(root):
    flip = SegmentationDataset(root, transform=v2.RandomHorizontalFlip(p=1.0))
    plain = SegmentationDataset(root)
    for i in range(3):
        flipped, original = flip[i], plain[i]
        assert not torch.equal(original.image, original.image.flip(-1))  # a flip shows
        assert torch.equal(flipped.mask, original.mask.flip(-1))
        assert torch.equal(flipped.image, original.image.flip(-1))
        assert isinstance(flipped.mask, tv_tensors.Mask)


def test_image_without_mask_is_named(root):
    (root / "masks" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) .* have no mask \['2.png'\]"):
        SegmentationDataset(root)


def test_mask_without_image_is_named(root):
    (root / "images" / "10.png").unlink()
    with pytest.raises(ValueError, match=r"1 mask\(s\) .* have no image \['10.png'\]"):
        SegmentationDataset(root)


def test_names_spelled_apart_in_unicode_are_unpaired_and_said_to_be(root):
    """café from a Mac (e + a combining accent) and café typed elsewhere (é): one name to the eye, two to
    the file system. The message says why the two it lists look alike, for the pair and for a split list."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    (root / "images" / "1.png").rename(root / "images" / f"{decomposed}.png")
    (root / "masks" / "1.png").rename(root / "masks" / f"{composed}.png")
    with pytest.raises(ValueError, match=rf"\['{composed}'\] look alike but are spelled apart in Unicode"):
        SegmentationDataset(root)
    (root / "masks" / f"{composed}.png").rename(root / "masks" / "x.png")  # through another name: macOS
    (root / "masks" / "x.png").rename(root / "masks" / f"{decomposed}.png")  # sees these two as one
    (root / "train.txt").write_text(f"{composed}\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no image\+mask pair.* look alike but are spelled apart"):
        SegmentationDataset(root, split="train")
    (root / "train.txt").write_text("x\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"or add the files\.$"):  # no such hint where none applies
        SegmentationDataset(root, split="train")


def test_names_apart_only_in_case_are_unpaired_and_said_to_be(root):
    """IMG_1.JPG from a camera and img_1.png from an annotation tool: one name to Windows and macOS, whose
    file browsers open either spelling, and two to the pairing. The message says so, for a split list too."""
    (root / "images" / "1.png").rename(root / "images" / "IMG_1.png")
    (root / "masks" / "1.png").rename(root / "masks" / "img_1.png")
    with pytest.raises(ValueError, match=r"'IMG_1' and 'img_1' differ only in upper and lower case, which "
                       r"Windows and macOS overlook in a file name and the pairing does not: rename them"):
        SegmentationDataset(root)
    (root / "masks" / "img_1.png").rename(root / "masks" / "IMG_1.png")
    (root / "train.txt").write_text("img_1\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no image\+mask pair.* 'img_1' and 'IMG_1' differ only in upper"):
        SegmentationDataset(root, split="train")


def test_spelled_apart_gives_every_hint_that_applies_and_no_other():
    decomposed = "cafe\u0301"  # café as macOS writes it
    both = spelled_apart(["caf\u00e9", "IMG_1"], [decomposed, "img_1"])
    assert "['caf\u00e9'] look alike but are spelled apart in Unicode" in both
    assert "'IMG_1' and 'img_1' differ only in upper and lower case" in both
    assert "differ only in upper and lower case" in spelled_apart(["Caf\u00e9"], [decomposed])
    assert spelled_apart(["Stra\u00dfe"], ["STRASSE"]) == ""  # casefold would pair them; file systems do not
    assert "'Ab' and 'AB', 'Ab' and 'ab' differ" in spelled_apart(["Ab"], ["ab", "AB"])


def test_long_lists_of_unpaired_files_and_bad_values_are_cut_short(root):
    """The message names the first five unpaired files of each side and the first eight bad values."""
    for stem in "abcdefg":
        Image.new("RGB", (12, 8)).save(root / "images" / f"{stem}.png")
        Image.new("L", (12, 8)).save(root / "masks" / f"{stem}_mask.png")
    with pytest.raises(ValueError, match=r"no mask \['a.png', 'b.png', 'c.png', 'd.png', 'e.png'\], .* "
                                         r"no image \['a_mask.png', .*'e_mask.png'\]\."):
        SegmentationDataset(root)
    for stem in "abcdefg":
        (root / "images" / f"{stem}.png").unlink()
        (root / "masks" / f"{stem}_mask.png").unlink()
    noisy = np.arange(96, dtype=np.uint8).reshape(8, 12)  # 0..3 are classes, 4..95 are not
    Image.fromarray(noisy, mode="L").save(root / "masks" / "1.png")
    dataset = SegmentationDataset(root)
    with pytest.raises(ValueError, match=r"values \[4, 5, 6, 7, 8, 9, 10, 11\] and 84 more outside"):
        dataset[[Path(p).stem for p in dataset.image_paths].index("1")]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No folder .*images: expected image\+mask pairs in images/ "
                       r"and masks/\.$"):
        SegmentationDataset(tmp_path)
    (tmp_path / "SegmentationClass").mkdir()  # Pascal VOC as downloaded: how to lay it out
    with pytest.raises(FileNotFoundError, match=r"masks/\. It holds Pascal VOC's folders: link JPEGImages as "
                       r"images and SegmentationClass as masks, .* ImageSets/Segmentation/\*\.txt beside"):
        SegmentationDataset(tmp_path)
    (tmp_path / "SegmentationClass").rmdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No images in .*images: expected files such as 0001.jpg, "
                       r"each with a mask masks/0001.png\.$"):
        SegmentationDataset(tmp_path)


def test_clutter_is_ignored(root):
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    (root / "masks" / "Thumbs.db").write_bytes(b"\0")
    (root / "images" / ".ipynb_checkpoints").mkdir()
    (root / "images" / ".ipynb_checkpoints" / "1-checkpoint.png").write_bytes(b"\0")
    (root / "masks" / "._1.png").write_bytes(b"\0")
    (root / "images" / ".localized").write_bytes(b"")  # hidden by Finder, as .gitkeep is by ls
    if sys.platform != "win32":  # a custom folder icon (macOS); Windows allows no \r in a name
        (root / "masks" / "Icon\r").write_bytes(b"")
    assert len(SegmentationDataset(root)) == 3


@pytest.mark.parametrize(("folder", "name", "message"), [
    ("images", ".4.png", r"1 image\(s\) in .*images have no mask \['.4.png'\]"),  # hidden, named like data
    ("masks", ".4.jpg", r"Mask .*masks[/\\]\.4\.jpg is a JPEG file: masks must be PNG"),
    ("images", ".3.jpg.icloud", r"\.3\.jpg\.icloud stands for '3.jpg', which iCloud Drive has not downloaded "
                                r"to this Mac: download it \(Finder: Download Now\), or move it out\.$"),
])
def test_hidden_files_named_like_data_are_not_passed_over(root, folder, name, message):
    """A hidden file is clutter unless an image's suffix is in its name: a hidden image is data (or a
    stray), and iCloud Drive's .NAME.jpg.icloud is a photo not on this Mac."""
    (root / folder / name).write_bytes(b"\0")
    with pytest.raises(ValueError, match=message):
        SegmentationDataset(root)


def test_other_stray_files_are_refused(root):
    (root / "images" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"Unexpected 'notes.txt' in .*images: only .jpg, .jpeg, .png files "
                       r"belong here \(masks must be PNG: JPEG would change their values\)\. Move it out\.$"):
        SegmentationDataset(root)


def test_a_folder_or_a_broken_link_with_an_image_name_is_refused_as_what_it_is(root):
    (root / "images" / "4.jpg").mkdir()
    with pytest.raises(ValueError, match=r"images[/\\]4.jpg is a folder, not an image: move it out of "
                       r".*images"):
        SegmentationDataset(root)
    (root / "images" / "4.jpg").rmdir()
    try:
        (root / "images" / "4.jpg").symlink_to(root / "elsewhere" / "4.jpg")
    except OSError:  # Windows, without Developer Mode
        pytest.skip("this system makes no symbolic links for this user")
    gone = r"images[/\\]4.jpg is a link to .*elsewhere[/\\]4.jpg, which does not exist: copy the file there"
    with pytest.raises(ValueError, match=gone):
        SegmentationDataset(root)


def test_jpeg_masks_are_refused(root):
    Image.new("L", (12, 8)).save(root / "masks" / "3.jpg")
    with pytest.raises(ValueError, match=r"Mask .*masks[/\\]3\.jpg is a JPEG file: masks must be PNG, since "
                       r"JPEG changes their values at every edge\. Export it again as PNG from the original "
                       r"class indices, then move this file out\.$"):
        SegmentationDataset(root)


def test_split_folders_are_refused_with_the_two_ways_out(root):
    """images/train/ and masks/train/, as many datasets keep splits: the folder is named, with what to do."""
    (root / "images" / "train").mkdir()
    with pytest.raises(ValueError, match=r"images[/\\]train is a folder: the helpers read the files in "
                       r".*images itself, not in folders below it\. For splits kept in folders .* a folder "
                       r"of its own holding images/ and masks/, or move the files up and list each split's "
                       r"names in a split list \(train.txt, val.txt\) beside images/ and masks/\.$"):
        SegmentationDataset(root)


def test_two_files_with_one_name_are_refused(root):
    Image.new("RGB", (12, 8)).save(root / "images" / "1.jpg")
    with pytest.raises(ValueError, match="two files named '1'"):
        SegmentationDataset(root)


def test_size_mismatch_names_both_files(root):
    Image.new("RGB", (10, 8)).save(root / "images" / "2.png")
    dataset = SegmentationDataset(root)
    with pytest.raises(ValueError, match=r"2.png is 8 high and 10 wide but its mask .*2.png is 8 high and 12 "
                       r"wide: a mask must match its image pixel for pixel\. Export the mask again at the "
                       r"image's size\.$"):
        dataset[[Path(p).stem for p in dataset.image_paths].index("2")]


def test_values_outside_the_classes_are_refused(root):
    noisy = np.zeros((8, 12), np.uint8)
    noisy[0, :3] = [1, 5, 7]  # what JPEG noise or bilinear resizing does to class edges
    Image.fromarray(noisy, mode="L").save(root / "masks" / "1.png")
    dataset = SegmentationDataset(root)
    with pytest.raises(ValueError, match=r"1.png has values \[5, 7\] outside the classes 0..3"):
        dataset[0]


def fix_in(error: pytest.ExceptionInfo, path: Path) -> None:
    """Run the fix a message gives, as a learner would paste it."""
    exec(re.search(r"Image\.fromarray\(.*\)\.save\(path\)", str(error.value)).group(),
         {"Image": Image, "np": np, "path": path})


@pytest.mark.parametrize("white", [255, 65535])  # 8 bits, and 16 (mode I;16)
def test_a_black_and_white_mask_is_refused_with_a_fix_that_works(root, white):
    """A black-and-white mask: its white marks the objects, and the fix the message gives makes them 1."""
    binary = np.zeros((8, 12), np.uint8 if white == 255 else np.uint16)
    binary[:, 6:] = white
    Image.fromarray(binary).save(root / "masks" / "1.png")
    told = (rf"1\.png holds only 0 and {white}: black and white\. Where white marks the objects \(every "
            r"mask is like it, or this one was exported wrongly\), give them their class index and save it "
            r"again as PNG: for one class, .* \(it overwrites the file: keep the original\), and count 2 "
            rf"classes \(num_classes=2\)\. Where other masks hold classes beside {white}, {white} means 'no "
            rf"label here': declare it \(ignore_index={white}; .*\), and this mask has no object at all\.$")
    with pytest.raises(ValueError, match=told) as refused:
        SegmentationDataset(root)[0]
    assert SegmentationDataset(root, ignore_index=white)[0].mask.max() == white
    fix_in(refused, root / "masks" / "1.png")
    assert SegmentationDataset(root, num_classes=2)[0].mask.unique().tolist() == [0, 1]
    Image.fromarray(np.full((8, 12), 255, np.uint8)).save(root / "masks" / "1.png")  # all white
    with pytest.raises(ValueError, match=r"1\.png holds only 255: black and white"):
        SegmentationDataset(root)[0]


def test_a_blurred_black_and_white_mask_is_named_as_such(root):
    """JPEG noise around 0 and 255 (a mask saved as JPEG once, then as PNG): the message says so, and its
    threshold makes the objects class 1; other values outside the classes get the general message."""
    blurred = np.zeros((8, 12), np.uint8)
    blurred[:, 4:] = 255
    blurred[0, 3:6] = [2, 250, 238]  # the edge, as JPEG leaves it
    Image.fromarray(blurred, mode="L").save(root / "masks" / "1.png")
    with pytest.raises(ValueError, match=r"1\.png has values \[238, 250, 255\] outside the classes "
                                         r"0\.\.3, yet nearly all of its pixels are close to 0 or to 255: "
                                         r"a black-and-white mask saved as JPEG") as refused:
        SegmentationDataset(root)[0]
    fix_in(refused, root / "masks" / "1.png")
    assert SegmentationDataset(root, num_classes=2)[0].mask.sum() == 8 * 8  # 250 and 238 thresholded too
    blurred[0, :3] = [15, 20, 200]  # a few values outside the classes, none near white
    blurred[:, 3:] = 0
    Image.fromarray(blurred, mode="L").save(root / "masks" / "1.png")
    with pytest.raises(ValueError, match=r"1\.png has values \[15, 20, 200\] outside the classes "
                                         r"0\.\.3\. If your dataset has these classes, say so: "
                                         r"num_classes=N .* ignore_index for a value that marks pixels to "
                                         r"skip, such as 255 \(python -m helpers.doctor FOLDER --num-classes "
                                         r"N --ignore-index 255 checks every mask\)\. Otherwise: a mask "
                                         r"saved as JPEG or resized with smooth interpolation invents "
                                         r"values; save masks as PNG and resize them with "
                                         r"nearest-neighbour\.$"):
        SegmentationDataset(root)[0]


def test_pixels_per_value_tell_a_black_and_white_mask_from_a_blurred_one_and_from_classes():
    assert looks_blurred({0: 900, 240: 10, 255: 90}, 4, None)      # a flat white, a rim near it
    assert not looks_blurred({0: 900, 240: 10, 255: 90}, 4, 240)   # one value near white besides the ignore
    assert not looks_blurred({0: 900, 240: 10, 255: 90}, 241, None)  # 240 is a class: white alone is left
    assert not looks_blurred({0: 991, 240: 1, 255: 8}, 4, None)    # under 1 % near white
    assert not looks_blurred({0: 800, 100: 100, 250: 10, 255: 90}, 4, None)  # 10 % in between
    assert looks_blurred({0: 850, 100: 50, 250: 10, 255: 90}, 4, None)       # 5 % in between
    scaled = {0: 9000, **{17 * k: 20 for k in range(1, 14)}, 238: 200, 255: 200}  # classes x 17, shown
    assert not looks_blurred(scaled, 4, None)  # no one white: classes scaled for display, not blurred
    with pytest.raises(ValueError, match=r"^masks\.npy holds masks with values \[255\] outside the classes "
                       r"0\.\.3, and nearly all of their pixels are close to 0 or to 255: black-and-white "
                       r"masks"):
        check_value_counts({0: 10, 255: 5}, "masks.npy", 4, None, stored=True)
    check_value_counts({0: 10, 255: 5}, "masks.npy", 4, 255, stored=True)  # 255 declared: nothing to say
    with pytest.raises(ValueError, match=r"^masks\.npy holds masks with values \[240, 255\] .* black-and"):
        check_value_counts({0: 900, 240: 10, 255: 90}, "masks.npy", 4, None, stored=True)  # blurred, stored


def test_rgb_masks_point_to_colour_conversion_with_a_fix_that_works(root):
    original = SegmentationDataset(root)[0].mask
    colours = index_to_colour(original)  # the mask as its palette's colours
    Image.fromarray(colours.permute(1, 2, 0).numpy()).save(root / "masks" / "1.png")
    with pytest.raises(ValueError, match=r"Mask .*1.png has mode RGB, not class indices \(P, L, 1, I;16, "
                       r"I;16L, I;16B, I mode\)\. If its classes are colours, turn them into class indices "
                       r"and save those as PNG: .* \(keep the original\)\.$") as refused:
        SegmentationDataset(root)[0]
    fix = re.search(r"mask = (.*)\), with pil_to_tensor .*; then (.*) \(keep", str(refused.value))
    code = f"mask = {fix.group(1)})\n{fix.group(2)}".replace("[one (R, G, B) per class, in class order]",
                                                           "PALETTE")
    exec(code, {"helpers": helpers, "pil_to_tensor": F.pil_to_tensor, "Image": Image, "np": np,
                "PALETTE": PALETTE, "path": root / "masks" / "1.png"})
    assert torch.equal(SegmentationDataset(root)[0].mask, original)


def test_grey_masks_with_alpha_are_told_to_drop_it(root):
    Image.new("LA", (12, 8)).save(root / "masks" / "1.png")
    with pytest.raises(ValueError, match=r"has mode LA, not class indices .* If its grey levels are the "
                       r"classes, save it without the alpha channel \(mode L\)\.$"):
        SegmentationDataset(root)[0]


def test_truncated_image_is_named(root):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(root / "images" / "1.jpg")
    (root / "images" / "1.png").unlink()
    data = (root / "images" / "1.jpg").read_bytes()
    (root / "images" / "1.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Cannot read image .*1.jpg: .*(?i:truncated).*\. The file is "
                       r"damaged or not an image: export it again, or remove it and its mask\.$"):
        SegmentationDataset(root)[0]


def damage_pixels(path: Path) -> None:
    """Flip one bit in the middle of a PNG's compressed pixels (its IDAT chunk), checksum left as it was."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + int.from_bytes(data[start - 8:start - 4], "big") // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["image", "mask"])
def test_damaged_png_pixels_are_refused_not_decoded_wrong(root, what):
    """Pillow does not check a PNG's checksums as it decodes: a flipped bit could give other, valid
    classes."""
    damage_pixels(root / f"{what}s" / "1.png")
    with pytest.raises(ValueError, match=rf"Cannot read {what} .*1.png: .*(?i:checksum|crc).*\. "):
        SegmentationDataset(root)[0]


def test_a_png_is_checked_up_to_its_end_chunk_as_pillow_does(root):
    """IEND holds nothing: a damaged checksum there changes no pixel, and Pillow's verify() passes it."""
    path = root / "masks" / "1.png"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the file: IEND's checksum
    path.write_bytes(bytes(data))
    assert SegmentationDataset(root)[0].mask.shape == (8, 12)


@pytest.mark.parametrize("cut", [12, 6], ids=["without its end chunk", "in its end chunk"])
def test_a_png_cut_after_its_pixels_is_refused_for_its_missing_end(root, cut):
    """Every pixel is there, so Pillow decodes it; the end chunk (IEND, 12 bytes) is not: a copy that
    stopped part-way, which may have lost more than this file."""
    data = (root / "masks" / "1.png").read_bytes()
    (root / "masks" / "1.png").write_bytes(data[:-cut])
    with pytest.raises(ValueError, match=r"Cannot read mask .*1.png: .*it has no IEND chunk"):
        SegmentationDataset(root)[0]


def test_a_truncated_png_image_is_called_damaged_not_its_metadata(root):
    data = (root / "images" / "1.png").read_bytes()
    (root / "images" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Cannot read image .*1.png: .*The file is damaged or not an image"):
        SegmentationDataset(root)[0]


@pytest.mark.parametrize("what", ["image", "mask"])
def test_a_file_gone_since_the_dataset_listed_it_says_so(root, what):
    dataset = SegmentationDataset(root)
    (root / f"{what}s" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"(?i:{what}) .*1.png was listed when the dataset was built "
                                                r"and is gone now: put it back, or build the dataset again"):
        dataset[0]


def test_unreadable_mask_is_named(root):
    (root / "masks" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Cannot read mask .*1.png"):
        SegmentationDataset(root)[0]


def test_split_files_choose_and_order_samples(root):
    (root / "val.txt").write_text("2\n10\n")
    dataset = SegmentationDataset(root, split="val")
    assert [Path(p).stem for p in dataset.image_paths] == ["2", "10"]
    (root / "val.txt").write_text("2\n99\n")
    with pytest.raises(ValueError, match=r".*val.txt lists \['99'\], which have no image\+mask pair: list "
                       r"each pair's file name stem \(0001, not 0001.jpg\), or add the files\.$"):
        SegmentationDataset(root, split="val")
    with pytest.raises(FileNotFoundError, match="No split file .*test.txt"):
        SegmentationDataset(root, split="test")


def test_the_shipped_data_set_is_complete_and_clean():
    root = data_dir("shapes")
    train, val = SegmentationDataset(root, split="train"), SegmentationDataset(root, split="val")
    assert (len(train), len(val)) == (256, 64)
    assert not set(train.image_paths) & set(val.image_paths)
    seen = torch.zeros(len(CLASSES), dtype=torch.bool)
    for dataset in (train, val):
        for image, mask in dataset:  # reads every pair: values, sizes and pairing are checked
            assert 128 <= min(image.shape[-2:]) and max(image.shape[-2:]) <= 160
            seen[mask.unique()] = True
    assert seen.all()


def test_in_memory_dataset_decodes_once_and_transforms_every_time(root):
    from helpers.datasets import InMemoryDataset

    write_pair(root, "3", 1, size=(6, 10))  # a second size
    on_disk = SegmentationDataset(root)
    in_memory = InMemoryDataset(on_disk)
    assert len(in_memory) == len(on_disk)
    for index in range(len(on_disk)):
        assert torch.equal(in_memory[index].image, on_disk[index].image)
        assert torch.equal(in_memory[index].mask, on_disk[index].mask)
        assert in_memory[index].image.stride() == on_disk[index].image.stride()  # same layout
        assert in_memory[index].mask.dtype == torch.int64
    assert in_memory.sizes() == [(8, 12), (8, 12), (8, 12), (10, 6)]
    for path in (root / "images").iterdir():
        path.unlink()  # the files are gone; the decoded samples are not
    stored = in_memory[0].image.clone()
    flipped = InMemoryDataset(in_memory, v2.RandomHorizontalFlip(p=1.0))
    assert not torch.equal(stored, stored.flip(-1))  # the test image shows a flip
    assert torch.equal(flipped[0].image, stored.flip(-1))
    assert torch.equal(flipped[0].mask, in_memory[0].mask.flip(-1))  # image and mask moved together
    assert isinstance(flipped[0].mask, tv_tensors.Mask)
    assert torch.equal(flipped[0].image, stored.flip(-1))  # flipped again from the stored sample
    assert torch.equal(in_memory[0].image, stored)  # which the transform left as it was


def test_16_bit_masks_are_class_indices_with_the_same_checks(root):
    many = np.zeros((8, 12), np.uint16)
    many[:, 6:] = 300  # more classes than 8 bits hold
    Image.fromarray(many).save(root / "masks" / "1.png")  # a 16-bit PNG, PIL mode I;16
    assert Image.open(root / "masks" / "1.png").mode == "I;16"
    mask = SegmentationDataset(root, num_classes=301)[0].mask
    assert mask.dtype == torch.int64 and mask.unique().tolist() == [0, 300]
    with pytest.raises(ValueError, match=r"1.png has values \[300\] outside the classes 0..3"):
        SegmentationDataset(root)[0]


def grey_png(levels: np.ndarray, bits: int) -> bytes:
    """A greyscale PNG of ``bits`` bits per pixel (Pillow writes no 2- or 4-bit grey), as image optimisers
    such as oxipng store a mask of a few classes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packed = np.packbits(np.unpackbits(levels.astype(np.uint8)[..., None], axis=-1)[..., -bits:]
                         .reshape(len(levels), -1), axis=-1)  # each row's levels, bits by bits, padded
    rows = b"".join(b"\0" + row.tobytes() for row in packed)  # filter type 0 before each row
    header = struct.pack(">IIBBBBB", levels.shape[1], levels.shape[0], bits, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("bits", [2, 4])
def test_2_and_4_bit_grey_masks_are_read_as_the_levels_they_store(tmp_path, bits):
    """Pillow reads them spread over 0..255 (class 2 in 2 bits as 170): refused, with a value no file had."""
    from helpers.datasets import read_mask

    levels = np.array([[0, 1, 2, 3, 2], [3, 2, 1, 0, 1]])
    (tmp_path / "m.png").write_bytes(grey_png(levels, bits))
    assert Image.open(tmp_path / "m.png").mode == "L" and np.array(Image.open(tmp_path / "m.png")).max() > 3
    mask = read_mask(tmp_path / "m.png")
    assert mask.tolist() == levels.tolist() and mask.dtype == torch.int64
    with pytest.raises(ValueError, match=r"m\.png has values \[3\] outside the classes 0\.\.2"):
        read_mask(tmp_path / "m.png", num_classes=3)


def test_32_bit_mask_images_are_read_and_negative_values_refused():
    from helpers.datasets import check_mask_values, mask_array

    values = np.array([[0, 1], [70000, -1]], np.int32)
    array = mask_array(Image.fromarray(values, mode="I"), Path("m.png"))
    assert array.dtype == np.int32 and array.tolist() == values.tolist()
    with pytest.raises(ValueError, match=r"m.png has values \[-1, 70000\] outside the classes 0..3"):
        check_mask_values(torch.from_numpy(array), Path("m.png"), num_classes=4, ignore_index=None)
    assert mask_array(Image.fromarray(np.zeros((2, 2), np.uint8)), Path("m.png")).dtype == np.uint8


def test_a_mask_dtype_too_small_for_the_classes_is_refused(root):
    with pytest.raises(ValueError, match="torch.uint8 cannot hold class 299"):
        SegmentationDataset(root, num_classes=300, mask_dtype=torch.uint8)[0]


@pytest.mark.parametrize("limit", [40, 90], ids=["over twice the limit", "over the limit: Pillow warns"])
def test_images_too_large_to_decode_safely_are_named(root, monkeypatch, limit):
    from helpers.datasets import read_mask

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # the pairs hold 96 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own DecompressionBombWarning names no file: not passed on
        with pytest.raises(ValueError, match=r"Cannot read image .*1.png: .*decompression bomb.*shrink it"):
            SegmentationDataset(root)[0]
        with pytest.raises(ValueError, match=r"Cannot read mask .*1.png: .*decompression bomb.*MAX_IMAGE"):
            read_mask(root / "masks" / "1.png")


def write_photo(root: Path, size=(768, 1024), orientation: int | None = None) -> tuple[Path, Path]:
    """A photo-sized JPEG (height, width): grey ground, a red disc, a blue square in the top left corner (so
    a mirror or a turn shows); its mask is 1 on the disc. ``orientation``: the EXIF tag, if any."""

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[: size[0], : size[1]]
    disc = (rows - size[0] // 3) ** 2 + (cols - size[1] // 2) ** 2 < (size[0] // 4) ** 2
    image = np.full((*size, 3), 120, np.uint8)
    image[disc] = (230, 20, 20)
    image[: size[0] // 8, : size[1] // 8] = (20, 20, 200)
    exif = b""  # none at all
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
    Image.fromarray(image).save(root / "images" / "photo.jpg", quality=90, exif=exif)
    to_palette_image(disc.astype(np.uint8)).save(root / "masks" / "photo.png")
    return root / "images" / "photo.jpg", root / "masks" / "photo.png"


def test_nearest_resize_copies_the_mask_pixel_under_each_output_centre():
    from helpers.datasets import nearest_resize

    mask = torch.randint(0, 4, (8, 12), generator=torch.Generator().manual_seed(0))
    assert all(not torch.equal(mask[0], row) for row in mask[1:])  # rows differ: a mix-up of axes shows
    half = nearest_resize(mask, (4, 6))
    assert torch.equal(half, mask[1::2, 1::2])  # the centre of output pixel i lies on input pixel 2i + 1
    double = nearest_resize(half, (8, 12))
    assert torch.equal(double, half.repeat_interleave(2, 0).repeat_interleave(2, 1))
    odd = nearest_resize(mask, (5, 7))  # no whole factor, no centre on a boundary: as PIL's nearest
    pil = Image.fromarray(mask.numpy().astype(np.uint8)).resize((7, 5), Image.Resampling.NEAREST)
    assert torch.equal(odd, torch.from_numpy(np.array(pil)).long())
    assert odd.dtype == torch.int64 and set(odd.unique().tolist()) <= set(mask.unique().tolist())


def test_a_mask_read_at_a_size_is_nearest_resize_of_the_full_mask(tmp_path):
    """256 rows to 224: the centre of one output row in seven falls exactly between two input rows, where
    PIL's nearest takes the other one (7,950 of 50,176 pixels of a random mask at 224 x 224): one rule."""
    from helpers.datasets import nearest_resize, read_mask

    full = np.random.default_rng(0).integers(0, 4, (256, 256)).astype(np.uint8)
    for mode, save in [("L", Image.fromarray), ("P", to_palette_image)]:
        save(full).save(tmp_path / f"{mode}.png")
        assert Image.open(tmp_path / f"{mode}.png").mode == mode
        mask = read_mask(tmp_path / f"{mode}.png", size=(224, 200))
        assert torch.equal(mask, nearest_resize(torch.from_numpy(full).long(), (224, 200))), mode


def test_reduced_decoding_uses_only_the_fast_scales():
    from helpers.datasets import reduced_size

    assert reduced_size((256, 256), (224, 224)) == (256, 256)  # 7/8 would be slower than full size
    assert reduced_size((768, 1024), (192, 256)) == (192, 256)  # 1/4
    assert reduced_size((768, 1024), (200, 256)) == (384, 512)  # 1/4 would be too small: 1/2
    assert reduced_size((765, 1021), (96, 128)) == (96, 128)  # 1/8, rounded up as libjpeg does
    assert reduced_size((768, 1024), None) == (768, 1024)


def spy_on_simplejpeg(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Skip unless simplejpeg is installed; check helpers.datasets found it, and record the keyword
    arguments of every ``simplejpeg.decode_jpeg`` call it makes from now on."""
    from helpers import datasets

    simplejpeg = pytest.importorskip("simplejpeg")
    assert datasets.simplejpeg is simplejpeg  # installed, so helpers must use it
    calls: list[dict] = []

    def decode_jpeg(data: bytes, *args, **kwargs):
        calls.append(kwargs)
        return simplejpeg.decode_jpeg(data, *args, **kwargs)

    monkeypatch.setattr(datasets, "simplejpeg", SimpleNamespace(
        decode_jpeg=decode_jpeg, decode_jpeg_header=simplejpeg.decode_jpeg_header))
    return calls


@pytest.mark.parametrize("decoder", ["simplejpeg", "PIL"])
def test_a_large_jpeg_decodes_at_reduced_scale_and_its_mask_stays_aligned(tmp_path, monkeypatch, decoder):
    from helpers import datasets

    if decoder == "PIL":
        monkeypatch.setattr(datasets, "simplejpeg", None)  # Image.draft instead
    else:
        calls = spy_on_simplejpeg(monkeypatch)
    image_path, mask_path = write_photo(tmp_path)
    pixels, full_size = datasets.decode_image(image_path, (192, 256))
    assert pixels.shape == (3, 192, 256) and full_size == (768, 1024)  # decoded at 1/4 scale
    for size in [(192, 256), (150, 200)]:  # already the size; resized further
        image, mask = datasets.read_pair(image_path, mask_path, size)
        assert image.shape == (3, *size) and mask.shape == size and set(mask.unique().tolist()) == {0, 1}
        red = (image[0].int() - image[1].int()) > 100
        assert (red == (mask == 1)).float().mean() > 0.99  # same scene, pixel for pixel but the disc's rim
    if decoder == "simplejpeg":  # libjpeg-turbo was asked for 1/4 scale each time, by read_pair too
        assert calls == [{"min_height": 192, "min_width": 256}] * 3


def test_simplejpeg_gives_the_pixels_pil_gives(monkeypatch):
    from helpers import datasets

    calls = spy_on_simplejpeg(monkeypatch)
    path = sorted((data_dir("shapes") / "images").glob("*.jpg"))[0]
    fast = datasets.read_image(path)
    assert len(calls) == 1  # decoded by simplejpeg
    monkeypatch.setattr(datasets, "simplejpeg", None)
    assert torch.equal(fast, datasets.read_image(path))


def damaged_jpeg(data: bytes, colorspace: str = "RGB") -> bytes:
    """A JPEG's bytes with one bit flipped in its compressed pixels, the first flip that libjpeg warns
    about ("Corrupt JPEG data"): simplejpeg, strict, raises on it."""
    simplejpeg = pytest.importorskip("simplejpeg")
    scan = data.index(b"\xff\xda") + 20  # the compressed pixels, after the start-of-scan header
    for position in range(scan, len(data) - 2):
        damaged = bytearray(data)
        damaged[position] ^= 0x08
        try:
            simplejpeg.decode_jpeg(bytes(damaged), colorspace)
        except ValueError:
            return bytes(damaged)
    pytest.fail("no flipped bit made libjpeg warn")


def test_damaged_jpeg_data_is_refused_by_simplejpeg_where_pil_decodes_it_wrong(tmp_path, monkeypatch):
    """libjpeg only warns about damaged compressed data: PIL decodes wrong pixels without a word, simplejpeg
    (strict) raises. Why the README's install and the Colab cell add it (04_dataloader_batching)."""
    from helpers import datasets

    spy_on_simplejpeg(monkeypatch)
    path = sorted((data_dir("shapes") / "images").glob("*.jpg"))[0]
    (tmp_path / "1.jpg").write_bytes(damaged_jpeg(path.read_bytes()))
    with pytest.raises(ValueError, match=r"^Cannot read image .*1.jpg: Corrupt JPEG data.* The file is "
                       r"damaged or not an image: export it again, or remove it and its mask\.$"):
        datasets.read_image(tmp_path / "1.jpg")
    monkeypatch.setattr(datasets, "simplejpeg", None)
    assert not torch.equal(datasets.read_image(tmp_path / "1.jpg"), datasets.read_image(path))  # no error


def test_a_damaged_cmyk_jpeg_is_refused_too(tmp_path):
    """A CMYK JPEG decodes through PIL (simplejpeg has no CMYK to RGB), which passes damage libjpeg only
    warns about: simplejpeg, strict, reads it first."""
    from helpers.datasets import read_image

    buffer = io.BytesIO()
    Image.open(sorted((data_dir("shapes") / "images").glob("*.jpg"))[0]).convert("CMYK").save(buffer, "JPEG")
    (tmp_path / "1.jpg").write_bytes(buffer.getvalue())
    assert read_image(tmp_path / "1.jpg").shape[0] == 3  # undamaged: read
    (tmp_path / "1.jpg").write_bytes(damaged_jpeg(buffer.getvalue(), "CMYK"))
    with pytest.raises(ValueError, match=r"^Cannot read image .*1.jpg: Corrupt JPEG data"):
        read_image(tmp_path / "1.jpg")


def test_a_turned_photo_decodes_reduced_and_upright(tmp_path):
    from helpers.datasets import decode_image, read_pair

    image_path, mask_path = write_photo(tmp_path, size=(768, 1024), orientation=6)  # stored sideways
    pixels, full_size = decode_image(image_path, (256, 192))
    assert full_size == (1024, 768) and pixels.shape == (3, 256, 192)
    turned = "is 1024 high and 768 wide but its mask .* is 768 high and 1024 wide: .* EXIF orientation"
    with pytest.raises(ValueError, match=turned):
        read_pair(image_path, mask_path)  # the mask was drawn on the sideways pixels: refused


def test_exif_orientation_is_applied_and_upright_photos_with_exif_still_decode_reduced(tmp_path):
    from helpers.datasets import decode_image

    def decoded(orientation: int | None, min_size=None) -> torch.Tensor:
        path, _ = write_photo(tmp_path / str(orientation), size=(96, 128), orientation=orientation)
        return decode_image(path, min_size)[0]

    plain = decoded(None)  # no EXIF at all
    assert torch.equal(decoded(2), plain.flip(-1))  # EXIF 2: stored mirrored, so mirrored back
    assert torch.equal(decoded(1), plain)  # EXIF that says upright (most phone photos)
    reduced = decoded(1, (48, 64))
    assert reduced.shape == (3, 48, 64) and torch.equal(reduced, decoded(None, (48, 64)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_images_of_other_modes_decode_to_rgb(tmp_path, mode):
    from helpers.datasets import read_image

    picture = Image.new("RGB", (6, 4), (10, 200, 30)).convert(mode)
    picture.save(tmp_path / "picture.png")
    image = read_image(tmp_path / "picture.png")
    assert image.shape == (3, 4, 6) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1))


def transparent_image(mode: str, hole: bool) -> tuple[Image.Image, dict]:
    """A 6x4 image of ``mode`` with transparency data, one pixel transparent where ``hole``; and the
    keyword arguments that save its transparency to a PNG."""
    if mode == "P":  # two palette colours: the second marked transparent by the tRNS bytes
        picture = Image.new("P", (6, 4), 0)
        picture.putpalette([10, 200, 30, 40, 50, 60])
        picture.putpixel((0, 0), 1)
        return picture, {"transparency": bytes([255, 0 if hole else 255])}
    if mode == "RGB":  # one colour marked transparent
        picture = Image.new("RGB", (6, 4), (10, 200, 30))
        picture.putpixel((0, 0), (1, 2, 3))
        return picture, {"transparency": (1, 2, 3) if hole else (4, 5, 6)}
    picture = Image.new("RGBA", (6, 4), (10, 200, 30, 255))
    picture.putpixel((0, 0), (1, 2, 3, 0 if hole else 255))
    return picture.convert(mode), {}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_images_with_transparent_pixels_are_refused_by_name_and_opaque_ones_read(tmp_path, mode):
    """convert("RGB") shows the colour stored under a transparent pixel; a fully opaque alpha is harmless."""
    from helpers.datasets import read_image

    for hole in (True, False):
        picture, transparency = transparent_image(mode, hole)
        path = tmp_path / f"{mode}_{hole}.png"
        picture.save(path, **transparency)
        if hole:
            with pytest.raises(ValueError, match=rf"Image .*{path.name} has transparent pixels .*Flatten it"):
                read_image(path)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow warns on some palettes' straight conversion to RGB
            image = read_image(path)
        expected = np.array(Image.open(path).convert("RGBA").convert("RGB"))
        assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_a_16_bit_grey_image_with_a_transparent_value_in_use_is_refused(tmp_path):
    """Read as 8-bit grey first (its values fit): its transparent value must not be lost on the way."""
    from helpers.datasets import read_image

    picture = Image.fromarray(np.array([[1, 2], [3, 200]], dtype=np.uint16))  # mode I;16
    picture.save(tmp_path / "used.png", transparency=200)
    with pytest.raises(ValueError, match=r"used\.png has transparent pixels"):
        read_image(tmp_path / "used.png")
    picture.save(tmp_path / "unused.png", transparency=300)  # no pixel has it
    assert read_image(tmp_path / "unused.png")[0].tolist() == [[1, 2], [3, 200]]


def test_a_jpeg_too_large_to_decode_safely_is_refused_by_the_fast_decoder_too(root, monkeypatch):
    (root / "images" / "1.png").unlink()
    Image.new("RGB", (12, 8)).save(root / "images" / "1.jpg")  # no EXIF: libjpeg-turbo's own path
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 96 pixels: over twice the limit
    with pytest.raises(ValueError, match=r"Cannot read image .*1.jpg: .*decompression bomb"):
        SegmentationDataset(root)[0]


def test_images_shrunk_by_read_pair_are_smoothed(tmp_path):
    from helpers.datasets import read_pair

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")  # a PNG: decoded at full size, then resized
    to_palette_image(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    image, _ = read_pair(tmp_path / "noise.png", tmp_path / "mask.png", size=(16, 16))
    assert image.float().std() < 20  # antialiased: each pixel averages ~4x4 noisy pixels (aliased: std ~36)


@pytest.mark.parametrize("mode", ["P", "L"])
@pytest.mark.parametrize("size", [None, (4, 6)])
def test_a_mask_value_equal_to_the_number_of_classes_is_refused(tmp_path, mode, size):
    from helpers.datasets import read_mask

    values = np.zeros((8, 12), np.uint8)
    values[:, :6] = 4  # classes 0..3: 4 is one too many
    (to_palette_image(values) if mode == "P" else Image.fromarray(values)).save(tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"m.png has values \[4\] outside the classes 0..3"):
        read_mask(tmp_path / "m.png", size=size)  # checked at full size, before any resizing
    assert read_mask(tmp_path / "m.png", ignore_index=4, size=size).max() == 4  # unless it means ignore


@pytest.mark.parametrize("mode", ["P", "L", "I;16"])
def test_read_mask_resizes_by_nearest_neighbour_from_the_full_mask(tmp_path, mode):
    from helpers.datasets import nearest_resize, read_mask

    values = np.random.default_rng(0).integers(0, 4, (8, 12), dtype=np.uint8)
    files = {"P": to_palette_image(values), "L": Image.fromarray(values),
             "I;16": Image.fromarray(values.astype(np.uint16))}
    files[mode].save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == mode
    resized = read_mask(tmp_path / "m.png", size=(5, 7))
    assert isinstance(resized, tv_tensors.Mask) and resized.dtype == torch.int64
    assert torch.equal(resized, nearest_resize(read_mask(tmp_path / "m.png"), (5, 7)))


def test_uint8_masks_hold_256_classes_and_no_more(root):
    from helpers.datasets import read_mask

    path = root / "masks" / "1.png"
    assert read_mask(path, num_classes=256, dtype=torch.uint8).dtype == torch.uint8  # classes 0..255
    with pytest.raises(ValueError, match="torch.uint8 cannot hold class 256"):
        read_mask(path, num_classes=257, dtype=torch.uint8)
    with pytest.raises(ValueError, match="torch.uint8 cannot hold class 256"):
        read_mask(path, ignore_index=256, dtype=torch.uint8)


def test_in_memory_masks_keep_values_above_255_and_are_stored_as_bytes_when_they_fit():
    from helpers.datasets import InMemoryDataset

    def samples(*masks: list[list[int]]) -> list[Sample]:
        image = tv_tensors.Image(torch.zeros(3, 1, 2, dtype=torch.uint8))
        return [Sample(image, tv_tensors.Mask(torch.tensor(mask))) for mask in masks]

    wide = InMemoryDataset(samples([[0, 255]], [[3, 256]]))  # 256: one more than a byte holds
    assert [wide[i].mask.tolist() for i in range(2)] == [[[0, 255]], [[3, 256]]]
    narrow = InMemoryDataset(samples([[0, 255]]))
    assert narrow.masks.dtype == torch.uint8  # 8x smaller than int64
    assert narrow[0].mask.dtype == torch.int64 and narrow[0].mask.tolist() == [[0, 255]]


def test_in_memory_samples_are_copies_that_a_transform_may_write_to(root):
    from helpers.datasets import InMemoryDataset

    in_memory = InMemoryDataset(SegmentationDataset(root, mask_dtype=torch.uint8))  # stored as it is given
    first = in_memory[0]
    first.image.fill_(7)
    first.mask.fill_(7)
    assert not (in_memory[0].image == 7).all() and not (in_memory[0].mask == 7).all()


def test_photos_whose_exif_turns_nothing_are_decoded_by_simplejpeg_too(tmp_path, monkeypatch):
    """Most phone photos carry EXIF: upright (orientation 1) or without the tag, they take the fast path."""
    from helpers.datasets import decode_image

    calls = spy_on_simplejpeg(monkeypatch)
    for name, tags in (("upright", {ORIENTATION: 1}), ("no orientation", {})):
        exif = Image.Exif()
        exif.update(tags)
        Image.fromarray(np.full((96, 128, 3), 120, np.uint8)).save(tmp_path / f"{name}.jpg", exif=exif)
        assert decode_image(tmp_path / f"{name}.jpg", (48, 64))[0].shape == (3, 48, 64)
    assert calls == [{"min_height": 48, "min_width": 64}] * 2


def test_jpegs_decode_with_the_decompression_bomb_check_switched_off(root, monkeypatch):
    (root / "images" / "1.png").unlink()
    Image.new("RGB", (12, 8), (90, 10, 10)).save(root / "images" / "1.jpg")  # no EXIF: libjpeg-turbo's path
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's documented switch, which TOO_LARGE suggests
    assert SegmentationDataset(root)[0].image.shape == (3, 8, 12)


def test_wide_grey_images_are_refused_instead_of_clipped_to_white(root):
    ramp = np.linspace(0, 4095, 96, dtype=np.uint16).reshape(8, 12)  # a 12-bit scan, stored in 16 bits
    Image.fromarray(ramp).save(root / "images" / "1.png")
    assert Image.open(root / "images" / "1.png").mode.startswith("I;16")
    with pytest.raises(ValueError, match=r"^Image .*1.png has I;16 pixels \(16-bit, 32-bit or float grey\) "
                                         r"from 0 to 4095, which 8-bit RGB cannot hold as they are: .*Scale"):
        SegmentationDataset(root)[0]
    Image.fromarray(ramp // 16).save(root / "images" / "1.png")  # still 16-bit, but every value fits a byte
    image = SegmentationDataset(root)[0].image
    assert image.dtype == torch.uint8 and image.tolist() == [(ramp // 16).tolist()] * 3
    Image.fromarray(ramp // 16 + (ramp == 4095)).save(root / "images" / "1.png")  # one value at 256
    with pytest.raises(ValueError, match=r"I;16 pixels .* from 0 to 256"):  # not wrapped round to 0
        SegmentationDataset(root)[0]


@pytest.mark.parametrize("array", [np.arange(96).astype(">u2"), np.arange(96).astype(np.int32)],
                         ids=["16-bit big-endian", "32-bit"])
def test_wide_grey_images_in_any_byte_order_are_read_where_their_values_fit_a_byte(tmp_path, array):
    from helpers.datasets import read_image

    Image.fromarray(array.reshape(8, 12)).save(tmp_path / "scan.tif")  # as ImageJ writes 16-bit scans
    assert read_image(tmp_path / "scan.tif").tolist() == [np.arange(96).reshape(8, 12).tolist()] * 3


@pytest.mark.parametrize("array", [np.array([0, 1], np.float32), np.array([-1, 5], np.int32)],
                         ids=["float 0..1", "negative"])
def test_float_and_negative_grey_images_are_refused(tmp_path, array):
    from helpers.datasets import read_image

    Image.fromarray(np.resize(array, (8, 12))).save(tmp_path / "scan.tif")
    with pytest.raises(ValueError, match=rf"^Image .*scan.tif has (F|I) pixels .* from {array[0]}\.?0? to "
                                         rf"{array[1]}\.?0?, which 8-bit RGB cannot hold as they are"):
        read_image(tmp_path / "scan.tif")


def test_damaged_exif_is_named_and_turned_photos_still_decode(tmp_path, monkeypatch):
    from helpers.datasets import read_image

    path, _ = write_photo(tmp_path, size=(16, 24), orientation=6)
    upright = read_image(path)
    assert upright.shape == (3, 24, 16)  # turned: not ImageOps.exif_transpose, whose EXIF rewrite can fail
    monkeypatch.setattr(Image.Exif, "get", lambda self, tag, default=None: 1 / 0)  # a parser that fails
    with pytest.raises(ValueError, match=r"^Cannot read image .*photo.jpg: its EXIF metadata is damaged "
                                         r"\(ZeroDivisionError: division by zero\)\. Export it again"):
        read_image(path)


def test_exif_cut_short_is_a_warning_that_names_the_file(tmp_path):
    """Pillow warns of an EXIF block cut short (without the file's name) and reads what is left, so the
    orientation may be gone: the warning again, with the file."""
    from helpers.datasets import read_image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 24)).save(buffer, "JPEG")
    cut = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01"  # five tags promised, one begun
    data, segment = buffer.getvalue(), b"\xff\xe1" + (len(cut) + 2).to_bytes(2, "big") + cut  # an APP1
    (tmp_path / "cut.jpg").write_bytes(data[:2] + segment + data[2:])
    with pytest.warns(UserWarning, match=r"^Corrupt EXIF data.* \(.*cut.jpg\) The orientation may be lost"):
        assert read_image(tmp_path / "cut.jpg").shape == (3, 24, 16)


def test_a_jpeg_named_png_is_refused_as_a_mask(root):
    Image.new("L", (12, 8)).save(root / "masks" / "1.png", format="JPEG")
    with pytest.raises(ValueError, match=r"^Mask .*1.png is a JPEG file, not a PNG: masks must be stored "
                                         r"losslessly\. Export it again as PNG"):
        SegmentationDataset(root)[0]


def test_a_gif_named_png_is_refused_as_a_mask_without_calling_it_lossy(root):
    Image.new("L", (12, 8)).save(root / "masks" / "1.png", format="GIF")
    with pytest.raises(ValueError, match=r"^Mask .*1.png is a GIF file, not a PNG: masks must be PNG files"):
        SegmentationDataset(root)[0]


def test_split_files_saved_with_a_byte_order_mark_are_read(root):
    (root / "val.txt").write_text("2\n1\n", encoding="utf-8-sig")  # as Windows Notepad saves UTF-8
    assert [Path(image).stem for image in SegmentationDataset(root, split="val").image_paths] == ["2", "1"]


def test_split_files_in_utf16_are_named_with_the_fix(root):
    (root / "val.txt").write_text("2\n1\n", encoding="utf-16")  # as Windows PowerShell 5's > writes
    with pytest.raises(ValueError, match=r"val.txt is not UTF-8 text: save it again as UTF-8 \(Windows "):
        SegmentationDataset(root, split="val")


def test_split_files_that_repeat_or_list_nothing_are_refused(root):
    (root / "val.txt").write_text("2\n10\n2\n")
    with pytest.raises(ValueError, match=r"val.txt lists \['2'\] more than once: write each stem"):
        SegmentationDataset(root, split="val")
    (root / "val.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"val.txt lists no file: write each stem of the split once"):
        SegmentationDataset(root, split="val")
    (root / "val.txt").write_text(" 2 \n\n10\n")  # blank lines and stray spaces are fine
    assert [Path(p).stem for p in SegmentationDataset(root, split="val").image_paths] == ["2", "10"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_turned_photos_are_decoded_by_simplejpeg_as_pil_turns_them(tmp_path, monkeypatch, orientation):
    from helpers import datasets

    path, _ = write_photo(tmp_path, size=(96, 128), orientation=orientation)
    calls = spy_on_simplejpeg(monkeypatch)
    fast, size = datasets.decode_image(path)
    reduced, _ = datasets.decode_image(path, (24, 32))  # upright (height, width); (32, 24) if turned
    assert len(calls) == 2  # libjpeg-turbo decoded it, reduced the second time
    assert 24 <= reduced.shape[1] < size[0] and 32 <= reduced.shape[2] < size[1]  # reduced, never below
    monkeypatch.setattr(datasets, "simplejpeg", None)  # PIL: Image.transpose, as ImageOps.exif_transpose
    assert torch.equal(fast, datasets.decode_image(path)[0]) and fast.shape[1:] == size
    assert torch.equal(reduced, datasets.decode_image(path, (24, 32))[0])
    with Image.open(path) as photo:  # and both as PIL's own turn, not as the table both paths share
        upright = torch.from_numpy(np.array(ImageOps.exif_transpose(photo).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(fast, upright)


def test_jpegs_without_a_turn_decode_from_their_bytes_without_pil(tmp_path, monkeypatch):
    """The fast path 04 measures: a JPEG with no orientation metadata, colour or grey, even one exactly at
    PIL's pixel limit, is decoded by libjpeg-turbo without PIL opening it; a grey one turned by EXIF still
    goes to libjpeg-turbo."""
    from helpers import datasets

    calls = spy_on_simplejpeg(monkeypatch)
    for mode in ("RGB", "L"):
        Image.new(mode, (64, 48), 90).save(tmp_path / f"{mode}.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48)
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", lambda *args: pytest.fail("PIL opened a JPEG with nothing to turn"))
        for mode in ("RGB", "L"):
            assert datasets.decode_image(tmp_path / f"{mode}.jpg")[0].shape == (3, 48, 64)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.new("L", (64, 48), 90).save(tmp_path / "turned.jpg", exif=exif)
    assert datasets.decode_image(tmp_path / "turned.jpg")[0].shape == (3, 64, 48) and len(calls) == 3


def test_a_cmyk_jpeg_decodes_as_pil_converts_it(tmp_path):
    """CMYK JPEGs (from print work) go to PIL: libjpeg-turbo's own conversion rounds differently."""
    from helpers import datasets

    colours = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(colours).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    with Image.open(tmp_path / "print.jpg") as file:
        assert file.mode == "CMYK"
        want = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(datasets.decode_image(tmp_path / "print.jpg")[0], want)


XMP_TURNED = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
              '</rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_orientation_in_xmp_alone_is_applied_as_pil_applies_it(tmp_path, suffix):
    """Some editors write the orientation only in XMP metadata; PIL's ImageOps.exif_transpose honours it,
    and so do read_image and the doctor (which reads the same header)."""
    from PIL import PngImagePlugin

    from helpers.datasets import read_image
    from helpers.doctor import read_header

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    path = tmp_path / f"turned{suffix}"
    if suffix == ".jpg":
        picture.save(path, xmp=XMP_TURNED.encode(), quality=95)
    else:
        text = PngImagePlugin.PngInfo()
        text.add_itxt("XML:com.adobe.xmp", XMP_TURNED)
        picture.save(path, pnginfo=text)
    upright = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert upright.shape == (60, 40, 3)  # PIL turned it: 6 means stored a quarter turn off
    assert torch.equal(read_image(path).permute(1, 2, 0), torch.from_numpy(upright))
    assert read_header(path)[2:4] == (6, "XMP")  # orientation, and where it is written


def test_a_tiff_turned_by_exif_is_read_upright_once(tmp_path):
    """Pillow opens a TIFF already upright (size swapped, pixels turned as they load): read_image must not
    turn it a second time, and gives what ImageOps.exif_transpose gives."""
    from helpers.datasets import orientation_metadata, read_image

    stored = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)  # 12 wide, 8 tall
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / "turned.tif", exif=exif)
    upright = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "turned.tif")))
    assert upright.shape == (12, 8, 3)  # turned: 8 wide, 12 tall
    assert torch.equal(read_image(tmp_path / "turned.tif").permute(1, 2, 0), torch.from_numpy(upright))
    with Image.open(tmp_path / "turned.tif") as file:
        assert orientation_metadata(file) is None  # nothing left to apply


def exif_block(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def save_turned_by_exif(image: Path, path: Path) -> None:
    """``image`` saved to ``path`` as a camera stores a photo taken sideways: turned a quarter
    anticlockwise, with EXIF orientation 6 (turn a quarter clockwise to view it upright)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.open(image).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)


@pytest.mark.parametrize("save, written_in", [
    ({}, None),  # no metadata: no orientation, written nowhere
    ({"exif": exif_block(6)}, "EXIF"),
    ({"xmp": XMP_TURNED.replace('"6"', '"8"').encode(), "exif": exif_block(6)}, "EXIF"),  # PIL reads EXIF
    ({"raw profile": exif_block(6)}, "EXIF"),  # ImageMagick writes a PNG's EXIF as hex in a text chunk
])
def test_where_an_orientation_is_written_is_where_pil_reads_it_from(tmp_path, save, written_in):
    from PIL import PngImagePlugin

    from helpers.datasets import orientation_metadata

    path, picture = tmp_path / "photo.png", Image.new("RGB", (6, 4))
    if "raw profile" in save:
        text, data = PngImagePlugin.PngInfo(), save.pop("raw profile").hex()
        text.add_text("Raw profile type exif", f"\nexif\n{len(data) // 2:8d}\n{data}\n")
        save["pnginfo"] = text
    picture.save(path, **save)
    with Image.open(path) as file:
        assert file.getexif().get(ORIENTATION, 1) == (1 if written_in is None else 6)
        assert orientation_metadata(file) == written_in
