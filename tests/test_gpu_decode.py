"""JPEGs decoded by torchcodec (helpers.gpu_decode, notebook 06's way (c)): the same pixels as the CPU
pipeline, masks decoded by the workers, a clear error for what it cannot read, the stream guard."""

import sys
from pathlib import Path

import pytest
import torch
from test_datasets import XMP_TURNED, save_turned_by_exif

from helpers.datasets import SegmentationDataset, pair_files
from helpers.gpu_decode import INSTALL, EncodedPairs, decode_jpegs, encoded_collate
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


def test_masks_resize_by_nearest_neighbour_and_keep_their_classes():
    _, mask = EncodedPairs(first_pairs(1), mask_size=(64, 48))[0]
    assert mask.shape == (64, 48) and mask.dtype == torch.uint8
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3}


def test_a_file_that_is_not_a_jpeg_is_named(tmp_path):
    image, mask = first_pairs(1)[0]
    fake = tmp_path / "0000.jpg"
    fake.write_bytes(mask.read_bytes())  # a PNG under a JPEG name
    with pytest.raises(ValueError, match="0000.jpg is not a JPEG file"):
        EncodedPairs([(fake, mask)])[0]


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


def test_an_xmp_turned_photo_a_mask_of_another_size_and_a_damaged_header_are_refused(tmp_path):
    """torchcodec does not read XMP: a photo turned by it alone would decode sideways to its mask; a mask
    resized to mask_size would hide a size mismatch."""
    from PIL import Image

    image, mask = first_pairs(1)[0]
    turned = tmp_path / "turned.jpg"
    Image.open(image).save(turned, xmp=XMP_TURNED.encode())  # orientation 6, in XMP alone
    with pytest.raises(ValueError, match=r"turned.jpg is turned upright by its XMP .*6.*helpers.doctor"):
        EncodedPairs([(turned, mask)], mask_size=(32, 32))[0]
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (200, 100)).save(wide)
    with pytest.raises(ValueError, match=r"wide.jpg is 200x100 \(WxH\) but its mask .* is"):
        EncodedPairs([(wide, mask)], mask_size=(32, 32))[0]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(image.read_bytes()[:20])  # starts as a JPEG, ends inside its header
    with pytest.raises(ValueError, match="Cannot read image .*cut.jpg"):
        EncodedPairs([(cut, mask)])[0]


def test_without_torchcodec_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImportError, match=r"pip install torchcodec==0\.17\.0"):
        decode_jpegs([], torch.device("cpu"))


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


def test_the_install_hint_names_the_version_requirements_gpu_pins():
    pins = Path(__file__).resolve().parent.parent.joinpath("requirements-gpu.txt").read_text()
    pin = next(line for line in pins.splitlines() if line.startswith("torchcodec=="))
    assert f"pip install {pin} " in INSTALL


def test_masks_stored_decoded_are_the_masks_decoded_per_sample_and_refuse_other_pairs(tmp_path):
    import pickle

    from helpers.gpu_decode import write_masks

    pairs = first_pairs(6)
    write_masks(pairs, tmp_path / "masks", (64, 48))
    stored, decoded = EncodedPairs(pairs, masks=tmp_path / "masks"), EncodedPairs(pairs, mask_size=(64, 48))
    for index in range(6):
        assert all(torch.equal(a, b) for a, b in zip(stored[index], decoded[index], strict=True))
    stored = pickle.loads(pickle.dumps(stored))  # as a spawned worker gets it: it maps the file itself
    assert torch.equal(stored[5][1], decoded[5][1])
    with pytest.raises(ValueError, match=r"holds the masks of other files: 6 masks for 6 pairs, first "
                                         r"difference at pair 0\. Write them again with write_masks"):
        EncodedPairs(pairs[::-1], masks=tmp_path / "masks")
    with pytest.raises(ValueError, match=r"6 masks for 5 pairs, first difference at pair 5"):
        EncodedPairs(pairs[:5], masks=tmp_path / "masks")
    with pytest.raises(ValueError, match=r"are \(64, 48\) \(HxW\), not mask_size \(32, 32\)"):
        EncodedPairs(pairs, mask_size=(32, 32), masks=tmp_path / "masks")
    with pytest.raises(ValueError, match=r"Cannot read the decoded masks in .*nowhere.*write_masks"):
        EncodedPairs(pairs, masks=tmp_path / "nowhere")


def test_a_stored_mask_still_checks_its_image_size(tmp_path):
    """The stored masks are resized; their own sizes, stored beside them, are what the JPEG must match."""
    from PIL import Image

    from helpers.gpu_decode import write_masks

    (_, mask), wide = first_pairs(1)[0], tmp_path / "wide.jpg"
    Image.new("RGB", (200, 100)).save(wide)
    write_masks([(wide, mask)], tmp_path / "masks", (32, 32))
    with pytest.raises(ValueError, match=r"wide.jpg is 200x100 \(WxH\) but its mask .* is"):
        EncodedPairs([(wide, mask)], masks=tmp_path / "masks")[0]


def test_write_masks_names_a_bad_mask_and_leaves_no_half_written_file(tmp_path):
    from helpers.gpu_decode import write_masks

    (image, mask), bad = first_pairs(1)[0], tmp_path / "bad.png"
    bad.write_bytes(mask.read_bytes()[:40])  # cut inside the PNG
    with pytest.raises(ValueError, match="Cannot read mask .*bad.png"):
        write_masks([(image, mask), (image, bad)], tmp_path / "masks", (32, 32))
    assert list((tmp_path / "masks").iterdir()) == []
