import numpy as np
import pytest
import torch
from PIL import Image

from helpers.viz import show_grid, to_numpy_image


def test_pil_and_tensors_become_hwc_arrays():
    pil = Image.new("RGB", (5, 4), (10, 20, 30))
    assert to_numpy_image(pil).shape == (4, 5, 3)
    chw = torch.zeros(3, 4, 5, dtype=torch.uint8)
    assert to_numpy_image(chw).shape == (4, 5, 3)
    gray = torch.rand(1, 4, 5)
    assert to_numpy_image(gray).shape == (4, 5)


def test_channel_order_is_kept():
    chw = torch.zeros(3, 2, 2, dtype=torch.uint8)
    chw[0] = 255  # red
    assert to_numpy_image(chw)[0, 0].tolist() == [255, 0, 0]


def test_normalized_images_are_refused_with_advice():
    with pytest.raises(ValueError, match="undo Normalize"):
        to_numpy_image(torch.randn(3, 8, 8) * 3)


def test_wrong_shape_and_dtype_are_refused():
    with pytest.raises(ValueError, match="shape"):
        to_numpy_image(torch.zeros(5, 4, 4))
    with pytest.raises(TypeError, match="int64"):
        to_numpy_image(torch.zeros(3, 4, 4, dtype=torch.int64))


def test_grid_has_one_titled_panel_per_image():
    images = [Image.new("RGB", (8, 8)), torch.rand(3, 8, 8), np.zeros((8, 8, 3), np.uint8)]
    fig = show_grid(images, titles=["pil", "tensor", "array"], ncols=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["pil", "tensor", "array", ""]
    assert sum(bool(ax.images) for ax in fig.axes) == 3


def test_a_batch_tensor_is_split_into_images():
    fig = show_grid(torch.rand(5, 3, 8, 8), ncols=5)
    assert sum(bool(ax.images) for ax in fig.axes) == 5


def test_titles_must_match_images():
    with pytest.raises(ValueError, match="2 titles for 1 images"):
        show_grid([torch.rand(3, 4, 4)], titles=["a", "b"])


def test_overlay_paints_classes_and_leaves_background_alone():
    from helpers.masks import IGNORE_INDEX, PALETTE
    from helpers.viz import overlay, show_pairs

    image = torch.full((3, 2, 3), 100, dtype=torch.uint8)
    mask = torch.tensor([[0, 1, 2], [3, IGNORE_INDEX, 0]])
    painted = overlay(image, mask, alpha=1.0)
    assert painted[:, 0, 0].tolist() == [100, 100, 100] and painted[:, 1, 2].tolist() == [100, 100, 100]
    assert painted[:, 0, 1].tolist() == list(PALETTE[1]) and painted[:, 1, 0].tolist() == list(PALETTE[3])
    assert painted[:, 1, 1].tolist() == [255, 255, 255]
    half = overlay(image.float() / 255, mask, alpha=0.5)
    assert half.dtype == torch.uint8 and half[:, 0, 1].tolist() != painted[:, 0, 1].tolist()
    assert len(show_pairs([(image, mask)]).axes) == 3


def test_plural_adds_an_s_unless_there_is_one():
    from helpers.viz import plural

    assert [plural(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]


def test_float_values_a_rounding_error_outside_0_1_are_shown_clamped_and_more_is_refused():
    almost = np.array([[-1e-4, 0.5], [1.0005, 1.0]], dtype=np.float32)  # an array, not a tensor
    assert to_numpy_image(almost).tolist() == [[0.0, 0.5], [1.0, 1.0]]
    for wrong in (-0.01, 1.01):
        with pytest.raises(ValueError, match="undo Normalize"):
            to_numpy_image(torch.full((3, 2, 2), wrong))


def test_grid_lays_out_rows_keeps_dark_greyscale_dark_and_hides_axes():
    dark_uint8, dark_float = torch.full((1, 4, 4), 10, dtype=torch.uint8), torch.full((4, 4), 0.04)
    fig = show_grid([dark_uint8, dark_float, torch.rand(3, 4, 4)], ncols=2, size=1.5)
    assert fig.get_size_inches().tolist() == [3.0, 3.0]  # 2 columns x 2 rows of 1.5 inches
    first, second = (ax.images[0] for ax in fig.axes[:2])
    assert first.get_clim() == (0, 255) and second.get_clim() == (0, 1)  # not stretched to white
    assert first.get_cmap().name == "gray" and not any(ax.axison for ax in fig.axes)
    assert len(show_grid([dark_uint8]).axes) == 1  # one image: one panel, whatever ncols says


def test_overlay_blends_by_alpha_and_float_images_as_their_bytes():
    from helpers.masks import PALETTE
    from helpers.viz import overlay

    image, mask = torch.full((3, 1, 2), 100, dtype=torch.uint8), torch.tensor([[0, 1]])
    half = overlay(image, mask)  # alpha 0.5 by default
    assert half[:, 0, 1].tolist() == [(100 + c) // 2 for c in PALETTE[1]]  # halfway, cut to bytes
    assert torch.equal(overlay(image.float() / 255, mask), half)


def test_pairs_show_image_mask_and_overlay_titled_by_pair():
    from helpers.viz import show_pairs

    pairs = [(torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.int64))] * 2
    fig = show_pairs(pairs, titles=["a", "b"], size=1.0)
    assert [ax.get_title() for ax in fig.axes] == [f"{t}: {p}" for t in "ab"
                                                   for p in ("image", "mask", "overlay")]
    assert fig.get_size_inches().tolist() == [3.0, 2.0]
    assert [ax.get_title() for ax in show_pairs(pairs[:1]).axes] == ["image", "mask", "overlay"]


def test_a_class_the_palette_has_no_colour_for_is_refused_not_drawn_as_background():
    """Another dataset's mask (Pascal VOC: classes up to 20) needs a palette of its own."""
    from helpers.masks import IGNORE_INDEX, index_to_colour
    from helpers.viz import overlay, show_pairs

    mask = torch.tensor([[0, 15], [20, IGNORE_INDEX]])
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    for draw in (lambda **palette: index_to_colour(mask, **palette),
                 lambda **palette: overlay(image, mask, **palette),
                 lambda **palette: show_pairs([(image, mask)], **palette)):
        with pytest.raises(ValueError, match=r"The mask has classes \[15, 20\], but the palette has colours "
                                             r"for 0\.\.3 only: pass palette="):
            draw()
    with pytest.raises(ValueError, match=r"classes \[4\], but the palette has colours for 0\.\.3"):
        index_to_colour(torch.tensor([[0, 4]]))  # one past the shapes' palette
    with pytest.raises(ValueError, match=r"holds torch.float32 values: class indices are integers"):
        index_to_colour(torch.tensor([[0.0, 3.7]]))  # would be drawn as class 3
    palette = [(0, 0, 0)] * 15 + [(200, 0, 0)] * 6  # 21 classes: 15..20 red
    assert index_to_colour(mask, palette)[:, 0, 1].tolist() == [200, 0, 0]
    assert len(show_pairs([(image, mask)], palette=palette).axes) == 3
