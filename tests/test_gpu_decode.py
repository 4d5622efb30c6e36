"""JPEGs decoded by torchcodec (helpers.gpu_decode, notebook 06's way (c)): the same pixels as the CPU
pipeline, masks decoded by the workers, a clear error for what it cannot read, the stream guard."""

import importlib.abc
import importlib.metadata
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets import XMP_TURNED, damaged_jpeg, save_turned_by_exif

from helpers import gpu_decode
from helpers.datasets import SegmentationDataset, pair_files
from helpers.gpu_decode import PIN, EncodedPairs, decode_jpegs, encoded_collate
from helpers.paths import data_dir

pytest.importorskip("torchcodec", reason="torchcodec is installed by requirements-teacher.txt")
SHAPES = data_dir("shapes")


def first_pairs(count: int = 4):
    return pair_files(SHAPES / "images", SHAPES / "masks")[:count]


def test_decoded_batches_are_the_pixels_and_masks_the_cpu_pipeline_reads():
    batch = encoded_collate([EncodedPairs(first_pairs())[index] for index in range(4)])
    assert len(batch) == 4  # four tensors, however many samples
    images, masks = decode_jpegs(batch.encoded(), torch.device("cpu")), batch.masks_to(torch.device("cpu"))
    reference = SegmentationDataset(SHAPES, split=None, mask_dtype=torch.uint8)
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        expected = reference[index]
        assert image.shape == expected.image.shape and image.dtype == torch.uint8
        assert (image.int() - expected.image.int()).abs().max() <= 1  # libjpeg-turbo either way
        assert torch.equal(mask, expected.mask.as_subclass(torch.Tensor))


def test_on_a_device_torchcodec_cannot_decode_for_the_jpegs_are_decoded_on_the_cpu_and_copied_there():
    """torchcodec sends every device but the CPU to nvJPEG, which refuses Apple's MPS; the meta device
    stands in for it here."""
    encoded = [EncodedPairs(first_pairs(2))[index][0] for index in range(2)]
    on_cpu, elsewhere = (decode_jpegs(encoded, torch.device(name)) for name in ("cpu", "meta"))
    assert [image.device.type for image in elsewhere] == ["meta", "meta"]
    assert [image.shape for image in elsewhere] == [image.shape for image in on_cpu]


def test_masks_resize_by_nearest_neighbour_and_keep_their_classes():
    _, mask = EncodedPairs(first_pairs(1), mask_size=(64, 48))[0]
    assert mask.shape == (64, 48) and mask.dtype == torch.uint8
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3}


def test_a_file_that_is_not_a_jpeg_is_named(tmp_path):
    image, mask = first_pairs(1)[0]
    fake = tmp_path / "0000.jpg"
    fake.write_bytes(mask.read_bytes())  # a PNG under a JPEG name
    with pytest.raises(ValueError, match="0000.jpg is not a JPEG file.*convert it to JPEG, "
                                         "or load it with SegmentationDataset"):
        EncodedPairs([(fake, mask)])[0]


def test_damaged_jpeg_data_decodes_without_an_error_so_the_doctor_checks_a_folder_first():
    """torchcodec has no strict mode: what libjpeg only warns about decodes to wrong pixels (06 says to run
    helpers.doctor, which decodes every image as SegmentationDataset does, on a new folder)."""
    data = first_pairs(1)[0][0].read_bytes()
    encoded = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for raw in (data, damaged_jpeg(data))]
    decoded = decode_jpegs(encoded, torch.device("cpu"))
    assert decoded[0].shape == decoded[1].shape and not torch.equal(*decoded)


def test_a_photo_turned_by_exif_decodes_upright_as_the_cpu_pipeline_reads_it(tmp_path):
    """torchcodec turns by EXIF orientation: stored sideways, the photo still matches its upright mask."""
    from helpers.datasets import read_image

    image, mask = first_pairs(1)[0]
    turned = tmp_path / "turned.jpg"
    save_turned_by_exif(image, turned)
    encoded, pair_mask = EncodedPairs([(turned, mask)])[0]
    decoded = decode_jpegs([encoded], torch.device("cpu"))[0]
    upright = read_image(turned)
    assert decoded.shape == upright.shape and decoded.shape[1:] == pair_mask.shape
    assert (decoded.int() - upright.int()).abs().max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright_at_its_mask_size_as_the_cpu_pipeline_reads_it(
        tmp_path, orientation):
    """Orientations 5 to 8 turn a quarter (with or without a mirror): the upright photo is as high as
    the stored one is wide, and that is the size its mask must have."""
    from PIL import Image

    from helpers.datasets import ORIENTATION, read_image

    photo, mask, exif = tmp_path / "photo.jpg", tmp_path / "mask.png", Image.Exif()
    exif[ORIENTATION] = orientation
    Image.open(first_pairs(1)[0][0]).crop((0, 0, 48, 32)).save(photo, exif=exif, quality=95)  # 48x32 (WxH)
    upright = (48, 32) if orientation >= 5 else (32, 48)  # (height, width)
    Image.new("L", upright[::-1]).save(mask)
    encoded, pair_mask = EncodedPairs([(photo, mask)])[0]
    decoded = decode_jpegs([encoded], torch.device("cpu"))[0]
    assert decoded.shape == (3, *upright) and pair_mask.shape == upright
    assert (decoded.int() - read_image(photo).int()).abs().max() <= 1
    if orientation >= 5:  # a mask drawn on the photo as stored does not fit it upright
        Image.new("L", (48, 32)).save(mask)
        wrong = r"photo.jpg is 48 high and 32 wide but its mask .*mask.png is 32 high and 48 wide"
        with pytest.raises(ValueError, match=wrong):
            EncodedPairs([(photo, mask)])[0]


def test_damaged_exif_is_refused_naming_the_photo(tmp_path, monkeypatch):
    from PIL import Image

    image, mask = first_pairs(1)[0]
    turned = tmp_path / "turned.jpg"
    save_turned_by_exif(image, turned)
    monkeypatch.setattr(Image.Exif, "get", lambda self, tag, default=None: 1 / 0)  # a parser that fails
    with pytest.raises(ValueError, match=r"Cannot read image .*turned.jpg: its EXIF metadata is damaged"):
        EncodedPairs([(turned, mask)])[0]


def test_a_grey_jpeg_decodes_to_rgb_as_the_cpu_pipeline_reads_it(tmp_path):
    from PIL import Image

    from helpers.datasets import read_image

    image, mask = first_pairs(1)[0]
    grey = tmp_path / "grey.jpg"
    Image.open(image).convert("L").save(grey, quality=95)
    decoded = decode_jpegs([EncodedPairs([(grey, mask)])[0][0]], torch.device("cpu"))[0]
    assert decoded.shape[0] == 3 and (decoded.int() - read_image(grey).int()).abs().max() <= 1


@pytest.mark.parametrize("share", [0.9, 0.3], ids=["over the limit", "over twice the limit"])
def test_a_jpeg_too_large_to_decode_safely_is_named(monkeypatch, share):
    """The header says how many pixels a JPEG holds: over PIL.Image.MAX_IMAGE_PIXELS it is refused, naming
    the file, where Pillow only warns (or refuses without the name) and nvJPEG would decode it."""
    import warnings

    from PIL import Image

    image, mask = first_pairs(1)[0]
    with Image.open(image) as file:
        pixels = file.width * file.height
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(pixels * share))  # Pillow refuses over twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of Pillow's own, which names no file
        with pytest.raises(ValueError, match=rf"Cannot read image .*{image.name}: .*decompression bomb"):
            EncodedPairs([(image, mask)], mask_size=(32, 32))[0]


def test_an_xmp_turned_photo_a_mask_of_another_size_and_a_damaged_header_are_refused(tmp_path):
    """torchcodec does not read XMP: a photo turned by it alone would decode sideways to its mask; a mask
    resized to mask_size would hide a size mismatch."""
    from PIL import Image

    image, mask = first_pairs(1)[0]
    turned = tmp_path / "turned.jpg"
    Image.open(image).save(turned, xmp=XMP_TURNED.encode())  # orientation 6, in XMP alone
    with pytest.raises(ValueError, match=r"turned.jpg is turned upright by its XMP .*6.*Save it "
                                         r"upright .*helpers.doctor.*SegmentationDataset"):
        EncodedPairs([(turned, mask)], mask_size=(32, 32))[0]
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (200, 100)).save(wide)
    with pytest.raises(ValueError, match=rf"wide.jpg is 100 high and 200 wide but its mask .*{mask.name} is"):
        EncodedPairs([(wide, mask)], mask_size=(32, 32))[0]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(image.read_bytes()[:20])  # starts as a JPEG, ends inside its header
    with pytest.raises(ValueError, match="Cannot read image .*cut.jpg.*export it again, "
                                         "or remove it and its mask"):
        EncodedPairs([(cut, mask)])[0]


def test_a_jpeg_cut_short_past_its_header_is_found_in_its_batch(tmp_path):
    """EncodedPairs reads the header alone; the decoder's own error names no file, so the batch's is
    retried one JPEG at a time to say which positions fail, and how to name their files."""
    (image, mask), _ = first_pairs(2)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(image.read_bytes()[:len(image.read_bytes()) * 3 // 5])
    batch = [EncodedPairs([(path, mask)])[0][0] for path in (image, cut)]
    with pytest.raises(ValueError, match=r"The JPEGs at positions \[1\] of this batch of 2 cannot be decoded "
                                         r"\(.*\): damaged or cut short. Run python -m helpers.doctor"):
        decode_jpegs(batch, torch.device("cpu"))


def test_a_photo_gone_since_the_pairs_were_listed_says_so(tmp_path):
    image, mask = first_pairs(1)[0]
    (tmp_path / "gone.jpg").write_bytes(image.read_bytes())
    pairs = EncodedPairs([(tmp_path / "gone.jpg", mask)])
    (tmp_path / "gone.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"Image .*gone.jpg was listed when the dataset was built"):
        pairs[0]


def test_on_cuda_the_host_waits_for_the_stream_before_decoding(monkeypatch):
    import torchcodec.decoders

    calls = []

    class Stream:
        def synchronize(self):
            calls.append("synchronize")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", lambda *args, **kwargs: calls.append("decode"))
    decode_jpegs([], torch.device("cuda"))
    assert calls == ["synchronize", "decode"]


def test_the_install_command_names_the_version_requirements_gpu_pins():
    pins = Path(__file__).resolve().parent.parent.joinpath("requirements-gpu.txt").read_text()
    assert PIN == next(line for line in pins.splitlines() if line.startswith("torchcodec=="))


@pytest.mark.parametrize("platform, cuda, index", [
    ("linux", "13.0", None),  # PyPI's torch and torchcodec, both built for CUDA 13.0
    ("linux", None, "cpu"),  # Colab's CPU runtime: torch 2.11.0+cpu
    ("linux", "12.8", "cu128"),  # Colab's GPU runtime: torch 2.11.0+cu128
    ("darwin", None, None),  # macOS and Windows: PyPI's wheels are CPU-only
    ("win32", "12.8", "cu128"),
])
def test_the_install_command_asks_for_torchcodec_built_as_torch_was(monkeypatch, platform, cuda, index):
    monkeypatch.setattr(gpu_decode.sys, "platform", platform)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    command = gpu_decode.install_command()
    assert command.startswith(f"pip install {PIN}")
    assert command.endswith("" if index is None else f" --index-url https://download.pytorch.org/whl/{index}")
    assert ("--index-url" in command) == (index is not None)


def test_decoding_says_why_torchcodec_cannot_decode_here_and_how_to_fix_it(monkeypatch):
    assert gpu_decode.why_unavailable() is None  # requirements-teacher.txt's torchcodec
    versions = {"torchcodec": "0.11.0+cpu"}  # what Colab's runtimes come with: no decode_jpeg yet

    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(gpu_decode.importlib.metadata, "version", version)
    assert gpu_decode.why_unavailable() == ("torchcodec 0.11.0+cpu is installed, which cannot decode JPEGs "
                                            f"(decode_jpeg came in 0.16): {gpu_decode.install_command()}")
    versions["torchcodec"] = "0.15.0"  # the last minor release without it
    assert gpu_decode.why_unavailable().startswith("torchcodec 0.15.0 is installed, which cannot decode")
    versions["torchcodec"] = "0.16.0"  # new enough, but built for another torch: its library fails to load

    class BuiltForAnotherTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torchcodec.decoders":
                raise OSError("libtorch_cuda.so: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "torchcodec.decoders")
    monkeypatch.setattr(sys, "meta_path", [BuiltForAnotherTorch(), *sys.meta_path])
    with pytest.raises(ImportError) as raised:
        decode_jpegs([], torch.device("cpu"))
    assert str(raised.value) == (
        f"torchcodec 0.16.0 is installed but does not load with torch {torch.__version__} (OSError: "
        "libtorch_cuda.so: cannot open shared object file); install its build for this torch: "
        f"{gpu_decode.install_command()}")
    versions.clear()
    assert gpu_decode.why_unavailable() == f"torchcodec is not installed: {gpu_decode.install_command()}"


def test_masks_stored_decoded_are_the_masks_decoded_per_sample_and_refuse_other_pairs(tmp_path):
    import pickle

    from helpers.gpu_decode import write_masks

    pairs, folder = first_pairs(6), tmp_path / "work" / "masks"  # its parent made too
    write_masks(pairs, folder, (64, 48))
    stored, decoded = EncodedPairs(pairs, masks=folder), EncodedPairs(pairs, mask_size=(64, 48))
    for index in range(6):
        assert all(torch.equal(a, b) for a, b in zip(stored[index], decoded[index], strict=True))
    assert stored[0][1].dtype == torch.uint8 and isinstance(stored.arrays[0], np.memmap)  # read, not loaded
    stored = pickle.loads(pickle.dumps(stored))  # as a spawned worker gets it: it maps the file itself
    assert stored.arrays is None and torch.equal(stored[5][1], decoded[5][1])
    with pytest.raises(ValueError, match=r"holds the masks of other files: 6 masks for 6 pairs, first "
                                         r"difference at pair 0\. Write them again with write_masks for "
                                         r"these pairs, in this order"):
        EncodedPairs(pairs[::-1], masks=folder)
    with pytest.raises(ValueError, match=r"6 masks for 5 pairs, first difference at pair 5"):
        EncodedPairs(pairs[:5], masks=folder)
    with pytest.raises(ValueError, match=r"are \(64, 48\) \(HxW\), not mask_size \(32, 32\): write "
                                         r"them again at that size, or leave mask_size out"):
        EncodedPairs(pairs, mask_size=(32, 32), masks=folder)
    with pytest.raises(ValueError, match=r"Cannot read the decoded masks in .*nowhere.*Write them "
                                         r"again with write_masks"):
        EncodedPairs(pairs, masks=tmp_path / "nowhere")


def test_masks_stored_decoded_refuse_sidecar_files_of_other_lengths(tmp_path):
    from helpers.gpu_decode import write_masks

    pairs, folder = first_pairs(3), tmp_path / "masks"
    write_masks(pairs, folder, (32, 32))
    np.save(folder / "sizes.npy", np.zeros((2, 2), dtype=np.int64))  # one row short
    with pytest.raises(ValueError, match=r"holds 3 masks, 2 sizes and 3 names: it is incomplete or mixed"):
        EncodedPairs(pairs, masks=folder)


def test_masks_stored_decoded_are_refused_once_a_mask_file_changes(tmp_path):
    """A mask exported again after write_masks (the same name, other pixels) must not train as the old."""
    from helpers.gpu_decode import write_masks

    pairs = [(image, Path(shutil.copy(mask, tmp_path / f"mask {index}.png")))  # names with spaces too
             for index, (image, mask) in enumerate(first_pairs(3))]
    write_masks(pairs, tmp_path / "masks", (32, 32))
    EncodedPairs(pairs, masks=tmp_path / "masks")  # unchanged: accepted
    pairs[1][1].write_bytes(first_pairs(4)[3][1].read_bytes())  # another mask under this one's name
    with pytest.raises(ValueError, match=r"mask 1.png has changed since write_masks stored it in "
                                         r".*masks: write them again with write_masks"):
        EncodedPairs(pairs, masks=tmp_path / "masks")
    names = tmp_path / "masks" / "names.txt"
    names.write_text("".join(line[9:] + "\n" for line in names.read_text().splitlines()))  # names alone
    with pytest.raises(ValueError, match=r"names.txt has no CRC-32 before each name: an older write_masks"):
        EncodedPairs(pairs, masks=tmp_path / "masks")


def test_a_stored_mask_still_checks_its_image_size(tmp_path):
    """The stored masks are resized; their own sizes, stored beside them, are what the JPEG must match."""
    from PIL import Image

    from helpers.gpu_decode import write_masks

    (_, mask), wide = first_pairs(1)[0], tmp_path / "wide.jpg"
    Image.new("RGB", (200, 100)).save(wide)
    write_masks([(wide, mask)], tmp_path / "masks", (32, 32))
    with pytest.raises(ValueError, match=r"wide.jpg is 100 high and 200 wide but its mask .* is"):
        EncodedPairs([(wide, mask)], masks=tmp_path / "masks")[0]


def test_write_masks_names_a_bad_mask_and_leaves_no_half_written_file(tmp_path):
    from helpers.gpu_decode import write_masks

    (image, mask), bad = first_pairs(1)[0], tmp_path / "bad.png"
    bad.write_bytes(mask.read_bytes()[:40])  # cut inside the PNG
    with pytest.raises(ValueError, match="Cannot read mask .*bad.png"):
        write_masks([(image, mask), (image, bad)], tmp_path / "masks", (32, 32))
    assert list((tmp_path / "masks").iterdir()) == []


def test_write_masks_over_an_older_copy_replaces_it_and_a_failed_write_leaves_none(tmp_path):
    from helpers.gpu_decode import write_masks

    pairs, bad = first_pairs(2), tmp_path / "bad.png"
    write_masks(pairs, tmp_path / "masks", (32, 32))
    write_masks(pairs, tmp_path / "masks", (16, 24))  # the folder exists: written again, at the new size
    assert EncodedPairs(pairs, masks=tmp_path / "masks").mask_size == (16, 24)
    bad.write_bytes(pairs[1][1].read_bytes()[:40])
    with pytest.raises(ValueError, match="Cannot read mask .*bad.png"):
        write_masks([pairs[0], (pairs[1][0], bad)], tmp_path / "masks", (16, 24))
    assert list((tmp_path / "masks").iterdir()) == []  # no file of the older copy is left to pass for it
    with pytest.raises(ValueError, match="Cannot read the decoded masks"):  # not the older masks
        EncodedPairs(pairs, masks=tmp_path / "masks")
