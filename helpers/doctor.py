"""Check a folder of image+mask pairs before training: every problem at once, each with its file and fix.

    python -m helpers.doctor FOLDER [--num-classes 4] [--ignore-index 255]

FOLDER holds images/NAME.jpg (or .jpeg, .png) and masks/NAME.png, the layout SegmentationDataset reads.
The Dataset stops at the first problem; this check reads every file once, changes none, and lists them
all: unpaired, stray and duplicate files, damaged or too large images and masks, masks that are not
class indices or hold values outside the classes (black-and-white ones, and ones blurred by JPEG, named
as such), an ignore index that covers more pixels than the objects, palette masks that colour a class
unlike the others (renumbered by an editor?), masks of another size than their image, photos turned
upright by their EXIF orientation, names with a dot, which shards (05) refuse, and split lists
(train.txt, val.txt, ...) naming pairs that are not there, or twice, or in two splits. A summary
follows: pairs, image sizes, mask modes and pixels per class. Exit status 1 when something must be
fixed, else 0. Taught in 02_segmentation_masks.
"""

import argparse
import filecmp
import io
import os
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from PIL import Image

from helpers.datasets import (
    IMAGE_SUFFIXES,
    LISTED,
    MASK_SUFFIXES,
    NO_IMAGES,
    PAIR_FIX,
    UPRIGHT,
    check_same_size,
    check_value_counts,
    exif_orientation,
    orientation_metadata,
    read_image,
    read_mask,
    read_split,
    scan_folder,
    spelled_apart,
    unpaired,
)
from helpers.masks import CLASSES
from helpers.progress import progress_bar

ERROR, WARNING = "error", "warning"  # an error stops SegmentationDataset; a warning is worth a look
PROGRESS_FROM = 200  # pairs: smaller folders are checked in moments, without a progress bar
ANY_VALUE = 2**31    # read masks as if there were this many classes: every value comes back, to be counted
TURN_UPRIGHT = {orientation: turn.name for orientation, turn in UPRIGHT.items()}  # per EXIF orientation
NAMED = " (classes named as the shapes data's, the default; --num-classes N for yours)"
DOTTED = ("Image {path} and its mask are named {stem!r}, with a dot: SegmentationDataset reads them, but "
          "helpers.formats.write_shards (notebook 05) refuses them, since webdataset ends a sample's name at "
          "its first dot. To write shards, rename both without the dot ({underscored}.jpg, "
          "{underscored}.png).")
T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One problem: how serious (ERROR or WARNING), the file it is about, and what to do about it."""

    severity: str
    path: Path
    message: str


@dataclass
class Report:
    """Everything one check of a folder found: the findings, then what the summary counts."""

    root: Path
    num_classes: int = len(CLASSES)
    names: tuple[str, ...] | None = None  # the classes' names where known: the shapes data's, by default
    ignore_index: int | None = None
    findings: list[Finding] = field(default_factory=list)
    pairs: int = 0                                               # images and masks paired by name
    sizes: Counter = field(default_factory=Counter)              # (height, width) upright -> images
    mask_modes: Counter = field(default_factory=Counter)         # PIL mode -> masks
    pixels: Counter = field(default_factory=Counter)             # mask value -> pixels, over all masks
    images: dict[int, list[Path]] = field(default_factory=dict)  # image files by their size in bytes
    ignore_only: int = 0                                         # masks of background and ignore alone
    palettes: dict[Path, dict[int, tuple[int, int, int]]] = field(default_factory=dict)  # P masks' colours

    def add(self, severity: str, path: Path, message: str) -> None:
        """Record one finding."""
        self.findings.append(Finding(severity, path, message))

    @property
    def errors(self) -> list[Finding]:
        """The findings that must be fixed before training."""
        return [finding for finding in self.findings if finding.severity == ERROR]


class Header(NamedTuple):
    """What a file's header says, before any pixel is decoded."""

    mode: str
    size: tuple[int, int]  # (height, width) as stored
    orientation: int       # EXIF orientation; 1 is upright
    written_in: str | None  # "EXIF", "XMP" where XMP alone holds the orientation, or None: neither
    palette: list[int] | None = None  # a P-mode file's colours, R, G, B for index 0, 1, ...


def read_header(path: Path) -> Header | None:
    """Mode, stored size and EXIF orientation of an image file; None if even its header cannot be read."""
    try:
        with Image.open(path) as file:
            orientation = exif_orientation(file, path)  # as read_image reads it
            palette = file.getpalette("RGB") if file.mode == "P" else None
            return Header(file.mode, (file.height, file.width), orientation, orientation_metadata(file),
                          palette)
    except Exception:  # whatever it is, the reader that follows reports it with the file's name
        return None


def attempt(read: Callable[[Path], T], path: Path, report: Report) -> T | None:
    """``read(path)``, or None with an error finding that says why the file cannot be used."""
    try:
        return read(path)
    except ValueError as error:  # helpers.datasets' own words: the file and the fix
        report.add(ERROR, path, str(error))
    except Exception as error:  # a failure the Dataset does not word (damaged EXIF, ...): report it, go on
        report.add(ERROR, path, f"Cannot read {path}: {type(error).__name__}: {error}. Export it again.")
    return None


def scan(folder: Path, suffixes: tuple[str, ...], report: Report) -> dict[str, Path] | None:
    """Stem -> path of the files in ``folder``, each unexpected one an error; None if there is no folder."""
    try:
        files, problems = scan_folder(folder, suffixes)
    except FileNotFoundError as error:
        report.add(ERROR, folder, str(error))
        return None
    for path, message in problems:
        report.add(ERROR, path, message)
    return files


def find_pairs(report: Report) -> list[tuple[Path, Path]]:
    """Pair images/ with masks/ by name, as SegmentationDataset does; every file left over is an error."""
    image_dir, mask_dir = report.root / "images", report.root / "masks"
    images, masks = scan(image_dir, IMAGE_SUFFIXES, report), scan(mask_dir, MASK_SUFFIXES, report)
    if images is None or masks is None:
        return []
    if not images:
        report.add(ERROR, image_dir, NO_IMAGES.format(image_dir=image_dir, masks=mask_dir.name))
    no_mask, no_image = unpaired(images, masks)
    if no_mask:  # a mask of another kind with the image's name (a JPEG) is an error of its own: point to it
        elsewhere = {path.stem: path for path in mask_dir.iterdir() if path.suffix.lower() != ".png"}
    for path in no_mask:
        other = (f" ({elsewhere[path.stem]} has its name, but is no PNG: see that file's error)"
                 if path.stem in elsewhere else "")
        report.add(ERROR, path, f"Image {path} has no mask {mask_dir / path.stem}.png{other}. {PAIR_FIX}")
    for path in no_image:
        report.add(ERROR, path, f"Mask {path} has no image {image_dir / path.stem}.jpg (or .jpeg, .png). "
                   + PAIR_FIX)
    if apart := spelled_apart([path.stem for path in no_mask], [path.stem for path in no_image]):
        report.add(ERROR, image_dir, f"Of the unpaired images and masks,{apart}")
    paired = sorted(images.keys() & masks.keys())
    for stem in (stem for stem in paired if "." in stem):
        report.add(WARNING, images[stem], DOTTED.format(path=images[stem], stem=stem,
                                                        underscored=stem.replace(".", "_")))
    return [(images[stem], masks[stem]) for stem in paired]


SPLITS = ("train", "val", "valid", "validation", "test", "trainval")  # FOLDER/NAME.txt: split lists


def check_splits(pairs: list[tuple[Path, Path]], report: Report) -> None:
    """Read each split list as ``SegmentationDataset(split=...)`` does; a pair in two splits is an error."""
    listed: dict[str, list[str]] = {}
    for split in SPLITS:
        if (path := report.root / f"{split}.txt").is_file():
            chosen = attempt(lambda file: read_split(pairs, file), path, report)
            for image, _ in chosen or []:
                listed.setdefault(image.stem, []).append(path.name)
    for stem, files in sorted(listed.items())[:20]:
        if len(separate := [file for file in files if file != "trainval.txt"]) > 1:  # trainval: train + val
            report.add(ERROR, report.root / separate[0], f"{stem} is listed in {' and '.join(separate)}: a "
                       "pair in two splits leaks from one into the other (a model judged on what it trained "
                       "on looks better than it is). Keep each stem in one split list.")


def check_image(path: Path, head: Header | None, report: Report) -> tuple[int, int] | None:
    """Decode an image as read_image does and note an EXIF turn; its upright (height, width), or None."""
    image = attempt(read_image, path, report)
    if image is None:
        return None
    if head is not None and head.orientation in TURN_UPRIGHT:
        xmp = (" torchcodec reads EXIF alone, so helpers.gpu_decode.EncodedPairs refuses it; save it upright "
               "as JPEG to decode it on the GPU." if head.written_in == "XMP" else "")
        report.add(WARNING, path, f"Image {path} is stored with {head.written_in} orientation "
                   f"{head.orientation}: helpers.datasets.read_image turns it upright "
                   f"(Image.Transpose.{TURN_UPRIGHT[head.orientation]}), as photo viewers do. "
                   "Check that its mask was drawn on the upright photo (helpers.viz.overlay shows "
                   "both)." + xmp)
    same_size = report.images.setdefault(path.stat().st_size, [])
    if first := next((other for other in same_size if filecmp.cmp(other, path, shallow=False)), None):
        report.add(WARNING, path, f"Image {path} holds the same bytes as {first}: a copy (a Finder 'copy', "
                   "an Explorer '- Copy') trains its sample twice each epoch, and in two splits leaks from "
                   "one into the other. Remove the copy and its mask, unless the picture is meant twice.")
    same_size.append(path)  # compared byte by byte only with files of its size: few, if any
    size = (image.shape[-2], image.shape[-1])
    report.sizes[size] += 1
    return size


def value_counts(mask: torch.Tensor) -> dict[int, int]:
    """Pixels per value of a mask whose values are >= 0 (read_mask refuses negative ones): one pass, into
    a table of at most 65,536 counts, since a PNG holds 16 bits at most."""
    return {value: n for value, n in enumerate(torch.bincount(mask.flatten()).tolist()) if n}


def check_mask(path: Path, head: Header | None, report: Report) -> None:
    """Read a mask as read_mask does, count its mode and values, and check the values against the classes."""
    if head is not None:
        report.mask_modes[head.mode] += 1
    mask = attempt(lambda p: read_mask(p, num_classes=ANY_VALUE), path, report)  # values checked below
    if mask is None:
        return
    counts = value_counts(mask)
    report.pixels.update(counts)
    if report.ignore_index in counts and set(counts) <= {0, report.ignore_index}:
        report.ignore_only += 1
    if head is not None and head.palette:  # the colour of each index this mask uses
        report.palettes[path] = {value: tuple(head.palette[3 * value:3 * value + 3]) for value in counts
                                 if 3 * value + 3 <= len(head.palette)}
    try:
        check_value_counts(counts, path, report.num_classes, report.ignore_index)
    except ValueError as error:
        report.add(ERROR, path, str(error))


def check_sizes(image_path: Path, upright: tuple[int, int], head: Header, mask_path: Path,
                mask_size: tuple[int, int], report: Report) -> None:
    """The mask must match the image as read upright; matching it only as stored means EXIF was ignored."""
    if mask_size == upright:
        return
    if mask_size == head.size:
        report.add(ERROR, mask_path, f"Mask {mask_path} fits image {image_path} as stored, sideways, "
                   f"but the image's {head.written_in} orientation {head.orientation} turns it upright to "
                   f"{upright[0]} high and {upright[1]} wide: the annotation tool ignored the orientation. "
                   "Turn the mask the same way, "
                   f"mask.transpose(Image.Transpose.{TURN_UPRIGHT[head.orientation]}), and save it as PNG.")
        return
    try:
        check_same_size(upright, mask_size, image_path, mask_path, exif_hint=False)  # sideways: above
    except ValueError as error:
        report.add(ERROR, mask_path, str(error))


def warned_of(path: Path, report: Report, read: Callable[[], T]) -> T:
    """``read()``, with what it warned of (an EXIF block cut short, the orientation perhaps lost with it) as
    warnings of the report naming ``path``, each once, rather than lines on stderr: Pillow's own name no
    file, and ``read_image`` warns again of some, naming it. (Pillow's DecompressionBombWarning is left
    out: ``check_pixels`` refuses such a file, naming it.)"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read()
    said = [str(warning.message).strip() for warning in caught
            if not issubclass(warning.category, Image.DecompressionBombWarning)]
    named = [message for message in said if f"({path})" in message]
    for message in dict.fromkeys(said):  # in order, once each
        if f"({path})" not in message:
            if any(again.startswith(message) for again in named):
                continue
            message = f"{message} ({path})"
        report.add(WARNING, path, message)
    return result


def check_pair(image_path: Path, mask_path: Path, report: Report) -> None:
    """Check an image, its mask, then whether their sizes agree; what reading each warned of, named."""
    def image() -> tuple[Header | None, tuple[int, int] | None]:
        head = read_header(image_path)
        return head, check_image(image_path, head, report)

    def mask() -> Header | None:
        head = read_header(mask_path)
        check_mask(mask_path, head, report)
        return head

    image_head, upright = warned_of(image_path, report, image)
    mask_head = warned_of(mask_path, report, mask)
    if upright is not None and image_head is not None and mask_head is not None:
        check_sizes(image_path, upright, image_head, mask_path, mask_head.size, report)


def check_classes_seen(report: Report) -> None:
    """Warn about each class that no mask holds: masks numbered from 1 (Oxford-IIIT Pet's trimaps hold 1, 2
    and 3) or classes declared that this data does not have would otherwise pass unnoticed (02)."""
    if report.errors:  # a mask that could not be read counts no pixels: fix it first
        return
    absent = [value for value in range(report.num_classes) if not report.pixels[value]]
    if absent:
        report.add(WARNING, report.root / "masks", (
            f"No mask holds class {', '.join(map(str, absent[:8]))}{' ...' if len(absent) > 8 else ''} of "
            f"0..{report.num_classes - 1}: the model would learn a class it never sees. If the masks number "
            "their classes from 1, remap their values to start at 0; if they hold fewer classes, say so "
            "(--num-classes); if the class is merely rare, add samples that show it."))


def check_ignore_share(report: Report) -> None:
    """Warn where the ignore index covers more pixels than the classes but 0 together: in a black-and-white
    mask 255 marks the objects, and declaring 255 the ignore index throws them all away
    (02_segmentation_masks)."""
    ignore = report.ignore_index
    if ignore is None or ignore < report.num_classes or not report.pixels[ignore]:  # (none, or a class)
        return
    objects = sum(report.pixels[value] for value in range(1, report.num_classes))
    if report.pixels[ignore] <= objects:
        return
    total = sum(report.pixels.values())
    alone = f", and {report.ignore_only} mask(s) hold 0 and {ignore} alone" if report.ignore_only else ""
    report.add(WARNING, report.root / "masks", (
        f"The ignore index {ignore} covers more mask pixels ({report.pixels[ignore] / total:.1%}) than "
        f"every class but 0 together ({objects / total:.1%}){alone}: the model would learn from little but "
        "background. In a black-and-white mask, 255 marks the objects, and --ignore-index 255 throws every "
        "one of them away: run this check again without --ignore-index, which says how to make them class "
        f"1. Only if {ignore} truly means 'no label here' this often, leave it."))


def check_palettes(report: Report) -> None:
    """Warn about each palette mask (mode P) that gives an index the colour most masks give another: an
    image editor that saved it with a palette of its own may have renumbered its classes, which no check of
    the values can see; palettes that merely differ are left alone (02_segmentation_masks)."""
    colours: dict[int, Counter] = {}
    for used in report.palettes.values():
        for value, colour in used.items():
            colours.setdefault(value, Counter())[colour] += 1
    usual = {value: counter.most_common(1)[0] for value, counter in colours.items()}
    index_of = {colour: value for value, (colour, _) in usual.items()}  # the usual index of each colour
    for path, used in report.palettes.items():
        for value, colour in sorted(used.items()):  # renumbered: another index's usual colour, not its own
            other = index_of.get(colour, value)
            if other != value and usual[value][1] > colours[value][colour]:
                report.add(WARNING, path, (
                    f"Mask {path} colours index {value} {colour}, as most masks colour index {other}: an "
                    "image editor that saved it with a palette of its own may have renumbered its classes "
                    f"({other} to {value}). Compare it with its image (helpers.viz.overlay); if so, number "
                    "them as in the other masks and save it again as PNG."))
                break  # one finding a mask


def diagnose(root: Path, num_classes: int | None = None, ignore_index: int | None = None,
             progress: bool = True) -> Report:
    """Read every pair under ``root`` once, collecting every problem. Taught in 02_segmentation_masks.

    ``num_classes``: the shapes data's four, named, unless given. Changes no file; shows a progress bar
    (on stderr) for folders of more than PROGRESS_FROM pairs.
    """
    names = CLASSES if num_classes is None else None
    report = Report(Path(root), len(CLASSES) if num_classes is None else num_classes, names=names,
                    ignore_index=ignore_index)
    pairs = find_pairs(report)
    report.pairs = len(pairs)
    check_splits(pairs, report)
    show = progress and len(pairs) > PROGRESS_FROM
    bar = progress_bar(pairs, desc="checking", unit="pair", leave=False, disable=not show)
    for image_path, mask_path in bar:
        check_pair(image_path, mask_path, report)
    check_classes_seen(report)
    check_ignore_share(report)
    check_palettes(report)
    report.findings.sort(key=lambda finding: (finding.severity != ERROR, finding.path))
    return report


def format_sizes(sizes: Counter) -> str:
    """The distinct (height, width) sizes with their counts, or their range when there are many."""
    if len(sizes) <= 6:
        return ", ".join(f"{size} x{count}" for size, count in sorted(sizes.items())) or "none"
    heights, widths = [height for height, _ in sizes], [width for _, width in sizes]
    return (f"{len(sizes)} sizes, height {min(heights)} to {max(heights)}, "
            f"width {min(widths)} to {max(widths)}")


def class_name(value: int, report: Report) -> str:
    """What a mask value means: a class name (or index), the ignore index, or nothing at all."""
    if value == report.ignore_index:
        return "ignore"
    if value >= report.num_classes:
        return "outside the classes"
    return report.names[value] if report.names else f"class {value}"


def format_pixels(report: Report) -> list[str]:
    """One line per mask value: pixels and share of all mask pixels; every class listed, even if absent."""
    total = sum(report.pixels.values()) or 1
    classes = range(report.num_classes) if report.num_classes <= 32 else []
    values = sorted(set(classes) | set(report.pixels))
    outside = [value for value in values if value >= report.num_classes and value != report.ignore_index]
    if len(outside) > LISTED:  # JPEG noise: one line for them all, not one per value
        values = [value for value in values if value not in outside]
    lines = [f"    {value:>3} {class_name(value, report):<20} {report.pixels[value]:>12,} "
             f"{report.pixels[value] / total:7.1%}" for value in values]
    if len(outside) > LISTED:
        pixels = sum(report.pixels[value] for value in outside)
        lines.append(f"    {len(outside)} values outside the classes, {outside[0]} to {outside[-1]}: "
                     f"{pixels:,} pixels, {pixels / total:.1%}")
    return lines


def format_summary(report: Report) -> list[str]:
    """The summary lines: pairs, image sizes, mask modes, pixels per mask value, and the verdict."""
    modes = ", ".join(f"{mode} x{count}" for mode, count in sorted(report.mask_modes.items())) or "none"
    errors, warnings = len(report.errors), len(report.findings) - len(report.errors)
    verdict = (f"{errors} error(s): fix them, then run this check again." if errors else
               f"No errors{f', {warnings} warning(s)' if warnings else ''}: every pair reads as "
               "SegmentationDataset reads it.")
    return ["", "Summary:", f"  pairs: {report.pairs}",
            f"  image sizes (height, width): {format_sizes(report.sizes)}", f"  mask modes: {modes}",
            f"  mask pixels per value{NAMED if report.names else ''}:", *format_pixels(report), "", verdict]


def format_report(report: Report) -> str:
    """The findings, errors first, each with its file and fix, then the summary.

    Paths are relative to the folder, so the report reads the same on every machine.
    Taught in 02_segmentation_masks.
    """
    def relative(text: object) -> str:  # and "/" between folders, as on Linux and macOS, also on Windows
        return str(text).replace(str(report.root) + os.sep, "").replace(os.sep, "/")

    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6,
                             break_long_words=False, break_on_hyphens=False)

    lines = [f"Checked {report.root.absolute().name}/: {report.pairs} image+mask pairs"]
    for severity, meaning in ((ERROR, "must be fixed"), (WARNING, "worth a look")):
        found = [finding for finding in report.findings if finding.severity == severity]
        lines += ["", f"{len(found)} {severity}(s), {meaning}:"] if found else []
        for group in alike(found):
            lines.append(f"  {relative(group[0].path)}")
            lines += wrap(relative(group[0].message))
            if len(group) > 1:  # the same finding for other files: their names, not the message again
                names = ", ".join(relative(finding.path) for finding in group[1:])
                lines += wrap(f"The same for {len(group) - 1} more: {names}.")
    return "\n".join(lines + format_summary(report))


def alike(findings: list[Finding]) -> list[list[Finding]]:
    """The findings in groups that say the same of different files, each group in the order of its first:
    a folder of 25 images without masks reads as one finding and 24 names (02_segmentation_masks)."""
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        stem = f"{os.sep}{Path(finding.path).stem}."  # its name in a path the message derives: its mask
        said = finding.message.replace(str(finding.path), "{path}").replace(stem, f"{os.sep}{{name}}.")
        groups.setdefault(said, []).append(finding)
    return list(groups.values())


def main(argv: list[str] | None = None) -> int:
    """Command line: check FOLDER, print the report; exit status 1 if anything must be fixed."""
    intro, details = __doc__.split("\n\n", 2)[0], __doc__.split("\n\n", 2)[2]
    parser = argparse.ArgumentParser(prog="python -m helpers.doctor", description=intro, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, metavar="FOLDER",
                        help="the folder that holds images/ and masks/, e.g. data/shapes")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help=f"mask values 0..N-1 are classes (default {len(CLASSES)}: {', '.join(CLASSES)})")
    parser.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                        help="a mask value that means 'no label here', e.g. 255 (default: none)")
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        parser.error("--num-classes must be at least 1")
    if not args.folder.is_dir():
        parser.error(f"no folder {args.folder}: name the folder that holds images/ and masks/")
    report = diagnose(args.folder, args.num_classes, args.ignore_index)
    print(format_report(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    if isinstance(sys.stdout, io.TextIOWrapper):  # not in Jupyter's %run, nor under pythonw
        # a file name the console's code page cannot show (Windows, output to a file) is printed escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.exit(main())
