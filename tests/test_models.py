import pytest
import torch

from helpers.models import UNet, count_parameters


@pytest.mark.parametrize("height, width", [(16, 16), (128, 128), (96, 160), (144, 48)])
def test_unet_keeps_the_input_size_and_gives_one_score_per_class(height, width):
    model = UNet(num_classes=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 4, height, width)
    assert logits.dtype == torch.float32


def test_unet_factor_follows_its_depth():
    model = UNet(widths=(4, 8, 16)).eval()
    assert model.factor == 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 12, 20)).shape == (1, 4, 12, 20)


def test_unet_refuses_sizes_it_cannot_halve_with_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(widths=(8, 16, 32, 64, 128))(torch.randn(1, 3, 100, 128))


def test_default_unet_is_small():
    assert 100_000 < count_parameters(UNet()) < 1_000_000


def test_unet_skip_connections_carry_fine_detail():
    """Changing one input pixel changes the output there: the decoder sees full-resolution features."""
    torch.manual_seed(0)
    model = UNet().eval()
    images = torch.randn(1, 3, 32, 32)
    changed = images.clone()
    changed[0, :, 5, 7] += 5
    with torch.no_grad():
        difference = (model(changed) - model(images)).abs().sum(dim=1)[0]
    assert difference[5, 7] > 0
    assert difference[5, 7] >= difference.max() * 0.5  # the change is largest where the pixel changed


def test_downscaled_unet_still_answers_at_full_size():
    model = UNet(downscale=2).eval()
    assert model.factor == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 144, 160)).shape == (1, 4, 144, 160)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 136, 160))  # 136 / 2 = 68 cannot be halved three times
