"""The folder check finds every problem at once, each with its file and fix, and changes nothing."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datasets import XMP_TURNED, write_pair

from helpers import doctor
from helpers.datasets import ORIENTATION, PAIR_FIX
from helpers.doctor import ERROR, WARNING, diagnose, format_report, main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for stem, label in [("1", 1), ("2", 2), ("3", 3)]:
        write_pair(tmp_path, stem, label)
    return tmp_path


def found(report: doctor.Report, severity: str = ERROR) -> dict[str, str]:
    """File path relative to the folder -> its message, for the findings of one severity."""
    return {finding.path.relative_to(report.root).as_posix(): finding.message
            for finding in report.findings if finding.severity == severity}


def test_a_clean_folder_has_no_findings_and_a_summary(root):
    report = diagnose(root)
    assert report.findings == [] and report.pairs == 3
    assert report.sizes == {(8, 12): 3} and report.mask_modes == {"P": 3}
    assert report.pixels == {0: 3 * 48, 1: 48, 2: 48, 3: 48}  # left half of each mask is its label
    text = format_report(report)
    assert "pairs: 3" in text and "(8, 12) x3" in text and "P x3" in text
    assert text.endswith("\n\nNo errors: every pair reads as SegmentationDataset reads it.")
    assert "background" in text and "    1 disc" in text and "16.7%" in text
    assert "per value (classes named as the shapes data's, the default; --num-classes N for yours)" in text
    text = format_report(diagnose(root, num_classes=4))  # another dataset's four classes: numbers only
    assert "    1 class 1 " in text and "disc" not in text and "shapes" not in text


def test_every_unpaired_file_is_named(root):
    (root / "masks" / "2.png").unlink()
    (root / "images" / "3.png").unlink()
    assert found(diagnose(root)).keys() == {"images/2.png", "masks/3.png"}
    assert "no mask" in found(diagnose(root))["images/2.png"]
    (root / "images" / "1.png").rename(root / "images" / "cafe\u0301.png")  # é as e + accent (macOS)
    (root / "masks" / "1.png").rename(root / "masks" / "caf\u00e9.png")  # é as one character
    assert "spelled apart in Unicode" in found(diagnose(root))["images"]  # why they look alike


def test_a_finding_the_same_for_many_files_is_told_once_with_their_names(root):
    """Pascal VOC's images without masks: one message, then every other file's name."""
    for stem in ("4", "5", "6", "7", "8"):
        Image.new("RGB", (12, 8)).save(root / "images" / f"{stem}.png")
    for stem in ("7", "8"):  # masks saved as JPEG: named where they are missing
        Image.new("L", (12, 8)).save(root / "masks" / f"{stem}.jpg")
    report = diagnose(root)
    assert "has no mask" in found(report)["images/4.png"] and "no PNG" not in found(report)["images/4.png"]
    assert found(report)["images/7.png"].endswith(
        f"has no mask {root / 'masks' / '7'}.png ({root / 'masks' / '7.jpg'} has its name, but is no PNG: "
        f"see that file's error). {PAIR_FIX}")
    text = format_report(report)
    assert text.count("has no mask") == 2  # 4, 5 and 6 alike; 7 and 8 with their pointers, alike
    assert "  images/4.png\n      Image images/4.png has no mask masks/4.png. Each image" in text
    assert "      The same for 2 more: images/5.png, images/6.png.\n" in text
    assert "      The same for 1 more: images/8.png.\n" in text


def test_what_reading_a_file_warned_of_is_in_the_report_once_with_the_file(root, recwarn):
    """A JPEG and a PNG whose EXIF blocks were cut short read (Pillow warns, and reads what is left): the
    check said "No errors" and left the warnings to stderr, where Pillow's own name no file."""
    (root / "images" / "1.png").unlink()
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8)).save(buffer, "JPEG")
    cut = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01"  # five tags promised, one begun
    data, segment = buffer.getvalue(), b"\xff\xe1" + (len(cut) + 2).to_bytes(2, "big") + cut  # an APP1
    (root / "images" / "1.jpg").write_bytes(data[:2] + segment + data[2:])
    Image.new("RGB", (12, 8)).save(root / "images" / "2.png", exif=cut[6:])  # a PNG's eXIf chunk, cut
    report = diagnose(root)
    assert found(report) == {} and list(found(report, WARNING)) == ["images/1.jpg", "images/2.png"]
    assert found(report, WARNING)["images/1.jpg"].startswith("Corrupt EXIF data")
    assert "The orientation may be lost" in found(report, WARNING)["images/1.jpg"]  # read_image's, named
    assert found(report, WARNING)["images/2.png"].startswith("Corrupt EXIF data")  # Pillow's, named here
    assert found(report, WARNING)["images/2.png"].endswith(f"({root / 'images' / '2.png'})")
    assert len([finding for finding in report.findings if finding.severity == WARNING]) == 2  # once each
    assert not recwarn.list  # nothing left to stderr


def test_a_copy_of_an_image_is_named_with_the_file_it_copies(root):
    """A Finder copy of a pair ("1 copy.png", beside 1.png) pairs, reads and trains twice: a warning."""
    for folder in ("images", "masks"):
        (root / folder / "1 copy.png").write_bytes((root / folder / "1.png").read_bytes())
    report = diagnose(root)
    assert found(report) == {} and list(found(report, WARNING)) == ["images/1 copy.png"]
    assert found(report, WARNING)["images/1 copy.png"].startswith(
        f"Image {root / 'images' / '1 copy.png'} holds the same bytes as {root / 'images' / '1.png'}: a copy")


def test_stray_files_are_named_and_clutter_is_ignored(root):
    (root / "images" / "notes.txt").write_text("hello")
    Image.new("L", (12, 8)).save(root / "masks" / "1.jpg")  # a JPEG mask beside the PNG one
    for clutter in ["images/.DS_Store", "masks/Thumbs.db", "masks/._1.png", "images/desktop.ini"]:
        (root / clutter).write_bytes(b"\0")
    (root / "images" / ".ipynb_checkpoints").mkdir()
    errors = found(diagnose(root))
    assert errors.keys() == {"images/notes.txt", "masks/1.jpg"}
    assert "Move it out" in errors["images/notes.txt"] and "masks must be PNG" in errors["masks/1.jpg"]


def test_split_lists_are_read_as_the_dataset_reads_them_and_a_pair_in_two_is_an_error(root):
    (root / "train.txt").write_text("1\n2\n")
    (root / "val.txt").write_text("2\n3\n")  # 2 is trained on and judged on
    errors = found(diagnose(root))
    assert errors.keys() == {"train.txt"} and "2 is listed in train.txt and val.txt" in errors["train.txt"]
    (root / "val.txt").write_text("3\n9\n")  # a stem with no pair, as SegmentationDataset(split=) says
    assert found(diagnose(root)).keys() == {"val.txt"} and "lists ['9']" in found(diagnose(root))["val.txt"]
    (root / "val.txt").write_text("3\n3\n")
    assert "more than once" in found(diagnose(root))["val.txt"]
    (root / "val.txt").write_text("2\n3\n")
    (root / "trainval.txt").write_text("1\n2\n3\n")  # train and val together, by its name
    assert "2 is listed in train.txt and val.txt" in found(diagnose(root))["train.txt"]  # still a leak
    (root / "val.txt").write_text("3\n")
    (root / "notes.txt").write_text("not a split list")
    assert found(diagnose(root)) == {}


def test_two_files_with_one_name_are_named(root):
    Image.new("RGB", (12, 8)).save(root / "images" / "1.jpg")
    assert "two files named '1'" in found(diagnose(root))["images/1.png"]


def test_damaged_files_are_named_and_the_rest_still_checked(root):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(root / "images" / "1.jpg")
    (root / "images" / "1.png").unlink()
    data = (root / "images" / "1.jpg").read_bytes()
    (root / "images" / "1.jpg").write_bytes(data[: len(data) // 2])
    (root / "masks" / "2.png").write_bytes(b"not a png")
    Image.new("RGB", (12, 8)).save(root / "masks" / "3.png")
    errors = found(diagnose(root))
    assert errors.keys() == {"images/1.jpg", "masks/2.png", "masks/3.png"}  # all three, not only the first
    assert "Cannot read image" in errors["images/1.jpg"] and "truncated" in errors["images/1.jpg"].lower()
    assert "Cannot read mask" in errors["masks/2.png"]


def test_size_mismatch_names_both_files(root):
    Image.new("RGB", (10, 8)).save(root / "images" / "2.png")
    message = found(diagnose(root))["masks/2.png"]
    assert "is 8 high and 10 wide but its mask" in message and "is 8 high and 12 wide" in message
    Image.new("RGB", (8, 12)).save(root / "images" / "2.png")  # the mask's size swapped, and no EXIF
    assert "EXIF" not in found(diagnose(root))["masks/2.png"]  # the doctor says sideways only where it is


@pytest.mark.parametrize(("mode", "colour", "fix"), [
    ("RGB", (200, 0, 0), "helpers.masks.colour_to_index(pil_to_tensor("),
    ("RGBA", (0, 0, 200, 255), "helpers.masks.colour_to_index(pil_to_tensor("),
    ("RGBA", (255, 255, 255, 255), "helpers.masks.colour_to_index(pil_to_tensor("),  # grey, but its
    # transparent half may be a class: not told to drop the alpha channel
    ("RGB", (255, 255, 255), "grey (red, green and blue alike): if the grey levels are the classes, save it "
                             "with one channel, Image.open(path).convert('L')"),
    ("LA", (0, 255), "without the alpha channel (mode L)")])
def test_colour_masks_point_to_colour_conversion_and_grey_ones_to_one_channel(root, mode, colour, fix):
    mask = Image.new(mode, (12, 8))
    mask.paste(colour, (0, 0, 6, 8))  # half black, half the colour
    mask.save(root / "masks" / "1.png")
    report = diagnose(root)
    assert fix in found(report)["masks/1.png"] and report.mask_modes[mode] == 1


def test_values_outside_the_classes_are_listed(root):
    noisy = np.zeros((8, 12), np.uint8)
    noisy[0, :3] = [1, 5, 7]  # what JPEG noise or bilinear resizing does to class edges
    Image.fromarray(noisy, mode="L").save(root / "masks" / "1.png")
    report = diagnose(root)
    assert "values [5, 7] outside the classes 0..3" in found(report)["masks/1.png"]
    assert report.pixels[5] == report.pixels[7] == 1
    assert "      5 outside the classes" in format_report(report)  # a few values: a line each
    assert found(diagnose(root, num_classes=8)) == {}
    noisy[1, :10] = range(10, 20)  # more than 8 values outside: one line in the summary for them all
    Image.fromarray(noisy, mode="L").save(root / "masks" / "1.png")
    text = format_report(diagnose(root))
    assert "    12 values outside the classes, 5 to 19: 12 pixels, 4.2%\n" in text  # of 3 x 96
    assert "    5 outside the classes" not in text and "      1 disc " in text


def test_a_0_255_mask_says_make_255_class_1_or_ignore_255(root):
    binary = np.zeros((8, 12), np.uint8)
    binary[:, 6:] = 255
    write_pair(root, "4", 1)
    Image.fromarray(binary, mode="L").save(root / "masks" / "4.png")
    message = found(diagnose(root))["masks/4.png"]
    assert "only 0 and 255" in message and "Where white marks the objects (every mask is like" in message
    assert "Where other masks hold classes beside 255, 255 means 'no label here'" in message
    report = diagnose(root, ignore_index=255)
    assert report.findings == [] and "ignore" in format_report(report)
    binary[0, 0] = 7  # 255 beside a class as well: not a 0/255 mask, so the general message
    Image.fromarray(binary, mode="L").save(root / "masks" / "4.png")
    message = found(diagnose(root))["masks/4.png"]
    assert "values [7, 255] outside the classes" in message and "black-and-white" not in message


def test_an_ignore_index_that_covers_more_than_the_objects_is_named(tmp_path):
    """0/255 masks checked with --ignore-index 255 pass every value check, and train on background alone:
    a warning where the ignore value outweighs every class but background, with the masks of 0 and 255."""
    binary = np.zeros((8, 12), np.uint8)
    binary[2:6, 3:9] = 255
    for stem in "123":
        write_pair(tmp_path, stem, 1)
        Image.fromarray(binary, mode="L").save(tmp_path / "masks" / f"{stem}.png")
    report = diagnose(tmp_path, num_classes=2, ignore_index=255)
    assert found(report) == {}
    assert found(report, WARNING)["masks"].startswith(
        "The ignore index 255 covers more mask pixels (25.0%) than every class but 0 together (0.0%), and 3 "
        "mask(s) hold 0 and 255 alone: the model would learn from little but background.")
    for stem in "12":  # two masks with objects as large as the ignored pixels: as Pascal VOC's borders
        write_pair(tmp_path, stem, 1)
    assert found(diagnose(tmp_path, num_classes=2, ignore_index=255), WARNING) == {}
    write_pair(tmp_path, "1", 0)  # now ignore outweighs class 1 again; but an ignore index among the
    write_pair(tmp_path, "2", 0)  # classes (0 here, which SegmentationDataset reads) is not this warning
    assert "The ignore index" in found(diagnose(tmp_path, num_classes=2, ignore_index=255), WARNING)["masks"]
    among = found(diagnose(tmp_path, num_classes=256, ignore_index=0), WARNING)["masks"]
    assert among.startswith("No mask holds class 1") and "ignore index" not in among


def test_a_palette_mask_whose_classes_an_editor_renumbered_is_named(root):
    """An editor that saves a palette mask with a palette of its own may renumber the classes, keeping
    their colours: the values still pass, the colours tell. Palettes that merely differ pass."""
    assert found(diagnose(root), WARNING) == {}
    write_pair(root, "4", 2)
    write_pair(root, "5", 2)  # three masks colour index 2 the usual way
    with Image.open(root / "masks" / "2.png") as mask:
        palette = mask.getpalette()
        mask.load()
    mask.putpalette(palette[:6] + [9, 9, 9] + palette[9:])  # index 2 in a colour of its own
    mask.save(root / "masks" / "2.png")
    assert found(diagnose(root), WARNING) == {}  # another palette, the same numbers: nothing to say
    mask.putpalette(palette[:3] + palette[6:9] + palette[3:6] + palette[9:])  # indices 1 and 2 swapped
    mask.save(root / "masks" / "2.png")
    assert found(diagnose(root), WARNING) == {"masks/2.png": (
        f"Mask {root / 'masks' / '2.png'} colours index 2 (230, 25, 75), as most masks colour index 1: an "
        "image editor that saved it with a palette of its own may have renumbered its classes (1 to 2). "
        "Compare it with its image (helpers.viz.overlay); if so, number them as in the other masks and save "
        "it again as PNG.")}
    both = np.zeros((8, 12), np.uint8)
    both[:, :6], both[:, 6:] = 1, 2  # the mask uses both swapped indices: still one finding for it
    swapped = Image.fromarray(both, mode="P")
    swapped.putpalette(palette[:3] + palette[6:9] + palette[3:6] + palette[9:])
    swapped.save(root / "masks" / "2.png")
    assert [finding.path.name for finding in diagnose(root).findings] == ["2.png"]


def save_turned(path: Path, size: tuple[int, int], orientation: int = 6) -> None:
    """A JPEG stored as ``size`` (WxH) whose EXIF orientation says to turn it upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.new("RGB", size, (200, 0, 0)).save(path, exif=exif)


@pytest.mark.parametrize("written_in", ["EXIF", "XMP"])
def test_a_turned_photo_is_a_warning_when_its_mask_fits_upright(root, written_in):
    """Stored 8 wide, 12 tall: upright 12x8, like its mask. Only a turn written in XMP stops the GPU
    decoder (torchcodec reads EXIF alone), and the warning says so."""
    if written_in == "EXIF":
        save_turned(root / "images" / "1.jpg", (8, 12))
    else:
        Image.new("RGB", (8, 12)).save(root / "images" / "1.jpg", xmp=XMP_TURNED.encode())
    (root / "images" / "1.png").unlink()
    report = diagnose(root)
    warning = found(report, WARNING)["images/1.jpg"]
    assert found(report) == {} and f"{written_in} orientation 6" in warning
    assert ("EncodedPairs refuses it" in warning) == (written_in == "XMP")
    assert main([str(root)]) == 0  # warnings alone do not fail


def test_a_dotted_name_is_a_warning_that_shards_refuse_it(root):
    """SegmentationDataset reads img.1.jpg; write_shards (05) does not, as webdataset would merge it."""
    for folder, suffix in (("images", ".png"), ("masks", ".png")):
        (root / folder / f"2{suffix}").rename(root / folder / f"2.v1{suffix}")
    report = diagnose(root)
    assert found(report) == {} and report.pairs == 3
    warning = found(report, WARNING)["images/2.v1.png"]
    assert "'2.v1'" in warning and "write_shards" in warning and "2_v1.jpg, 2_v1.png" in warning


def test_exif_without_an_orientation_is_no_finding(root):
    exif = Image.Exif()
    exif[0x010F] = "a camera maker"  # Make: EXIF, but nothing about orientation
    Image.new("RGB", (12, 8), (200, 0, 0)).save(root / "images" / "1.jpg", exif=exif)
    (root / "images" / "1.png").unlink()
    assert diagnose(root).findings == []


def test_a_mask_that_fits_the_photo_only_as_stored_is_an_error(root):
    save_turned(root / "images" / "1.jpg", (12, 8))  # upright 8x12; the mask 12x8 fits the stored pixels
    (root / "images" / "1.png").unlink()
    message = found(diagnose(root))["masks/1.png"]
    assert "as stored" in message and "ignored the orientation" in message and "ROTATE_270" in message
    assert "upright to 12 high and 8 wide" in message and message.endswith("and save it as PNG.")


def test_images_too_large_to_decode_safely_are_named(root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # the pairs hold 96 pixels: over twice the limit
    errors = found(diagnose(root))
    assert len(errors) == 6 and all("decompression bomb" in message for message in errors.values())


def test_missing_folders_and_empty_folders_are_findings(tmp_path):
    assert found(diagnose(tmp_path)).keys() == {"images", "masks"}
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert found(diagnose(tmp_path))["images"] == (f"No images in {tmp_path / 'images'}: expected files such "
                                                   "as 0001.jpg, each with a mask masks/0001.png.")


def test_the_summary_uses_indices_for_other_classes_and_ranges_for_many_sizes(root):
    for index in range(6):
        write_pair(root, f"s{index}", 1, size=(20 + index, 8))
    report = diagnose(root, num_classes=5)
    text = format_report(report)
    assert "class 4" in text and "background" not in text
    assert "7 sizes, height 8 to 8, width 12 to 25" in text


def every_file(root: Path) -> dict[Path, tuple[bytes, int]]:
    """The bytes and modification time of every file under ``root``."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in root.rglob("*") if path.is_file()}


def test_the_command_exits_1_on_errors_and_changes_no_file(root, capsys):
    (root / "masks" / "2.png").unlink()
    Image.new("RGB", (12, 8)).save(root / "masks" / "1.png")
    before = every_file(root)
    assert main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "2 error(s)" in out and "images/2.png" in out and str(root) not in out  # paths relative to root
    assert every_file(root) == before


def test_a_progress_bar_on_large_folders_only(root, monkeypatch, capsys):
    diagnose(root)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(doctor, "PROGRESS_FROM", 3)  # more than PROGRESS_FROM pairs, not as many
    diagnose(root)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(doctor, "PROGRESS_FROM", 2)
    diagnose(root)
    assert "checking" in capsys.readouterr().err


def test_help_says_what_it_checks(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: python -m helpers.doctor [-h]")
    intro, details = doctor.__doc__.split("\n\n")[0], doctor.__doc__.split("\n\n", 2)[2]
    assert f"\n\n{intro}\n\n" in out and out.endswith(details)  # the docstring: first line, then details
    words = " ".join(out.split())  # argparse wraps the options' help to the terminal's width
    for option in ("FOLDER the folder that holds images/", "--num-classes N mask values 0..N-1 are classes "
                   "(default 4: background, disc, square, triangle)", "--ignore-index VALUE a mask value"):
        assert option in words


def test_the_report_keeps_long_paths_whole_and_indents_messages(root, capsys):
    long = "a_photo_named_at_great_length_" * 4
    (root / "images" / "1.png").rename(root / "images" / f"{long}.png")
    assert main([str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"  images/{long}.png")
    message = lines[start + 1: lines.index("  masks/1.png")]
    assert len(message) > 1 and all(line.startswith(" " * 6) and line[6] != " " for line in message)
    assert all(len(line) <= 100 for line in message if long not in line)
    assert f"      images/{long}.png" in message  # a path longer than a line is kept whole, not cut


def test_a_failure_the_dataset_does_not_word_is_reported_not_raised(root, monkeypatch):
    def damaged_exif(path: Path):
        raise RuntimeError("bad EXIF block")

    monkeypatch.setattr(doctor, "read_image", damaged_exif)
    errors = found(diagnose(root))
    assert len(errors) == 3 and "RuntimeError: bad EXIF block" in errors["images/1.png"]


def test_the_command_refuses_a_folder_that_does_not_exist(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path / "nowhere")])
    assert exit.value.code == 2 and "no folder" in capsys.readouterr().err


def test_the_report_reads_the_same_on_windows(monkeypatch):
    """Paths relative to the folder, with / between folders, whatever the system writes between them."""
    from helpers.doctor import Finding, Report

    monkeypatch.setattr(doctor.os, "sep", "\\")
    report = Report(root=Path("C:\\data"))
    report.findings.append(Finding(ERROR, "C:\\data\\masks\\4.png", "Mask C:\\data\\masks\\4.png is 8 x 12."))
    lines = format_report(report).splitlines()
    assert lines[3:5] == ["  masks/4.png", "      Mask masks/4.png is 8 x 12."]


def test_the_command_prints_a_name_the_console_cannot_encode_escaped(root):
    """On Windows, output sent to a file is written in the code page (cp1252), which has no Chinese: an
    image named so is printed escaped, and the exit status still says what the report found."""
    (root / "images" / "1.png").rename(root / "images" / "\u732b.png")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    run = subprocess.run([sys.executable, "-m", "helpers.doctor", str(root)], capture_output=True, env=env,
                         cwd=Path(doctor.__file__).parents[1], timeout=120)
    assert run.returncode == 1, run.stderr.decode()
    assert b"\\u732b.png has no mask" in run.stdout


def test_every_finding_names_its_file_and_errors_come_first(root):
    """A folder with many problems at once: each message names its own file, errors are listed before
    warnings, and values far outside the classes (a 16-bit mask) are counted."""
    for stem in ("4", "5", "6", "7"):
        write_pair(root, stem, 1)
    (root / "masks" / "2.png").unlink()  # an image without its mask
    (root / "images" / "3.png").unlink()  # a mask without its image
    (root / "images" / "notes.txt").write_text("hello")  # a stray file
    Image.new("RGB", (10, 8)).save(root / "images" / "4.png")  # a size mismatch
    Image.fromarray(np.full((8, 12), 4, np.uint8), mode="L").save(root / "masks" / "5.png")  # class 4 of 0..3
    Image.fromarray(np.full((8, 12), 60000, np.uint16)).save(root / "masks" / "6.png")  # 16-bit, I;16
    save_turned(root / "images" / "7.jpg", (8, 12))  # upright 12x8, as its mask: a warning
    (root / "images" / "7.png").unlink()
    report = diagnose(root)
    errors, warnings = found(report), found(report, WARNING)
    assert errors.keys() == {"images/2.png", "masks/3.png", "images/notes.txt", "masks/4.png", "masks/5.png",
                             "masks/6.png"} and warnings.keys() == {"images/7.jpg"}
    for path, message in {**errors, **warnings}.items():
        assert str(report.root / path) in message or repr(Path(path).name) in message, (path, message)
    no_image = f"has no image {report.root / 'images' / '3'}.jpg (or .jpeg, .png). {PAIR_FIX}"
    assert errors["masks/3.png"].endswith(no_image)
    assert str(report.root / "images" / "4.png") in errors["masks/4.png"]  # both files of the pair
    assert [finding.severity for finding in report.findings][-1] == WARNING  # errors first
    assert report.pixels[60000] == 96 and report.pixels[4] == 96
    assert "4 outside the classes" in format_report(report)


def test_a_class_no_mask_holds_is_a_warning_once_every_mask_reads(root):
    """Masks numbered from 1 (Oxford-IIIT Pet's trimaps: 1, 2, 3) pass every value check as classes 1..3
    of 0..3; only the census shows that no mask holds class 0."""
    for stem, label in [("1", 1), ("2", 2), ("3", 3)]:
        Image.fromarray(np.full((8, 12), label, np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
    warning = found(diagnose(root), WARNING)["masks"]
    assert warning.startswith("No mask holds class 0 of 0..3: the model would learn a class it never sees.")
    assert "If the masks number their classes from 1, remap their values to start at 0" in warning
    Image.fromarray(np.full((8, 12), 9, np.uint8), mode="L").save(root / "masks" / "3.png")
    assert found(diagnose(root), WARNING) == {}  # an error first: that mask's pixels are not counted


def test_one_missing_folder_is_the_only_finding(root):
    import shutil

    shutil.rmtree(root / "masks")  # the images are not reported as unpaired
    assert found(diagnose(root)) == {"masks": f"No folder {root / 'masks'}: expected image+mask pairs in "
                                              "images/ and masks/."}


def test_the_report_lists_findings_under_their_counts_and_the_options_reach_the_check(root, capsys):
    binary = np.zeros((8, 12), np.uint8)
    binary[:, 6:] = 255
    write_pair(root, "4", 1)
    Image.fromarray(binary, mode="L").save(root / "masks" / "4.png")  # an error, unless 255 means ignore
    save_turned(root / "images" / "2.jpg", (8, 12))  # a warning
    (root / "images" / "2.png").unlink()
    assert main([str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("1 error(s), must be fixed:") + 1] == "  masks/4.png"
    assert lines[lines.index("1 warning(s), worth a look:") + 1] == "  images/2.jpg"
    assert lines[-1] == "1 error(s): fix them, then run this check again."
    assert main([str(root), "--ignore-index", "255"]) == 0  # as the error advises
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "No errors, 1 warning(s): every pair reads as SegmentationDataset reads it."
    assert main([str(root), "--ignore-index", "255", "--num-classes", "3"]) == 1  # 3.png's class 3
    assert "values [3] outside the classes 0..2" in capsys.readouterr().out
    assert main([str(root), "--num-classes", "1"]) == 1  # one class is a choice; values 1.. are outside it
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main([str(root), "--num-classes", "0"])
    assert exit.value.code == 2 and "--num-classes must be at least 1" in capsys.readouterr().err
