import numpy as np
import pytest
import torch
from PIL import Image

from helpers.masks import (
    CLASSES,
    IGNORE_INDEX,
    PALETTE,
    colour_to_index,
    foreground,
    index_to_colour,
    palette_bytes,
    to_palette_image,
)


def test_one_colour_per_class():
    assert len(CLASSES) == len(PALETTE) == len(set(PALETTE))
    assert CLASSES[0] == "background" and PALETTE[0] == (0, 0, 0)


def test_colours_and_indices_round_trip():
    mask = torch.tensor([[0, 1], [2, 3]])
    colours = index_to_colour(mask)
    assert colours.shape == (3, 2, 2) and colours.dtype == torch.uint8
    assert colours[:, 1, 0].tolist() == list(PALETTE[2])
    assert torch.equal(colour_to_index(colours), mask)


def test_unknown_colours_are_named_with_counts():
    colours = index_to_colour(torch.tensor([[0, 1], [1, 2]]))
    colours[:, 0, 1] = torch.tensor([200, 30, 70], dtype=torch.uint8)  # an anti-aliased edge pixel
    with pytest.raises(ValueError, match=r"^0007.png: 1 pixels have colours outside the palette, e.g. "
                                         r"\(200, 30, 70\) x1\. Export the mask without anti-aliasing, as "
                                         r"PNG, not JPEG\.$"):
        colour_to_index(colours, name="0007.png")
    many = index_to_colour(torch.zeros(2, 4, dtype=torch.long))
    many[0] = torch.arange(1, 9).view(2, 4)  # eight unknown colours, (1, 0, 0) to (8, 0, 0)
    listed = r"\(1, 0, 0\) x1, \(2, 0, 0\) x1, \(3, 0, 0\) x1, \(4, 0, 0\) x1, \(5, 0, 0\) x1\. Export"
    with pytest.raises(ValueError, match=rf"^mask: 8 pixels .* e.g. {listed}"):  # the first five of them
        colour_to_index(many)


def test_palette_png_stores_indices_and_shows_colours(tmp_path):
    mask = np.array([[0, 1, 2, 3, IGNORE_INDEX]], dtype=np.uint8)
    to_palette_image(torch.from_numpy(mask).long()).save(tmp_path / "m.png")  # an int64 tensor, as loaded
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image), mask)
        assert image.convert("RGB").getpixel((3, 0)) == PALETTE[3]
        assert image.convert("RGB").getpixel((4, 0)) == (255, 255, 255)


def test_the_palette_holds_the_class_colours_then_white_for_ignore_and_the_rest_black():
    flat = palette_bytes()
    assert len(flat) == 768 and flat[: 3 * len(PALETTE)] == [v for colour in PALETTE for v in colour]
    assert flat[3 * len(PALETTE): 3 * IGNORE_INDEX] == [0] * 3 * (IGNORE_INDEX - len(PALETTE))
    assert flat[3 * IGNORE_INDEX:] == [255, 255, 255]


def test_foreground_is_every_object_class_but_not_ignore():
    mask = torch.tensor([0, 1, 2, 3, IGNORE_INDEX])
    assert foreground(mask).tolist() == [False, True, True, True, False]


def test_data_readme_documents_the_classes_as_defined():
    from helpers.paths import repo_root

    readme = (repo_root() / "data" / "README.md").read_text()
    for index, (name, colour) in enumerate(zip(CLASSES, PALETTE)):
        assert f"| {index} | {name} |" in readme and str(colour) in readme
    assert f"| {IGNORE_INDEX} | ignore" in readme
