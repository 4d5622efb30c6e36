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


def test_unet_has_the_parameters_its_layers_add_up_to():
    """Each 3x3 convolution without a bias (the norm after it has one), two per block, a 2x2 transposed
    convolution up per level, a 1x1 head: counted by hand, so a layer dropped or doubled shows."""
    def block(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out  # conv, norm, conv, norm

    widths = (16, 32, 64, 128)
    encoder = sum(block(c_in, c_out) for c_in, c_out in zip((3, *widths[:-1]), widths))
    up = sum(4 * deep * shallow + shallow for deep, shallow in zip(widths[:0:-1], widths[-2::-1]))
    decoder = sum(block(2 * shallow, shallow) for shallow in widths[-2::-1])
    assert count_parameters(UNet()) == encoder + up + decoder + 16 * 4 + 4
    assert count_parameters(UNet(norm="group")) == count_parameters(UNet())


def test_group_norm_makes_each_sample_independent_of_its_batch():
    """norm="group" (07) puts GroupNorm with one group wherever batch norm was: in training mode a
    sample's scores are the same alone as beside another sample, which batch norm's are not."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    group, batch = UNet(norm="group").train(), UNet().train()
    norms = [m for m in group.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 14 and {m.num_groups for m in norms} == {1}  # 2 per block, 7 blocks
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())
    assert torch.allclose(group(images)[:1], group(images[:1]), atol=1e-5)
    assert not torch.allclose(batch(images)[:1], batch(images[:1]), atol=1e-3)
    with pytest.raises(ValueError, match="'batch' or 'group', not 'layer'"):
        UNet(norm="layer")


def test_a_width_the_unet_cannot_halve_is_refused_too_naming_both_sides():
    with pytest.raises(ValueError, match=r"UNet input is 128x100 \(HxW\); both must be divisible by 8"):
        UNet()(torch.randn(1, 3, 128, 100))


def test_downscaled_unet_sees_each_2x2_block_as_its_mean_and_scales_scores_up_smoothly():
    """downscale=2 runs on the mean of each 2x2 block (a quarter of the work), then scales the class
    scores back up bilinearly: two pixels of a block traded against each other change nothing, and
    neighbouring output pixels differ even within a block."""
    torch.manual_seed(0)
    model = UNet(widths=(4, 8), downscale=2).eval()
    images = torch.randn(1, 3, 8, 8)
    traded = images.clone()
    traded[0, :, 0, 0] += 1
    traded[0, :, 1, 1] -= 1  # same 2x2 block, same mean
    with torch.no_grad():
        logits = model(images)
        assert torch.allclose(model(traded), logits, atol=1e-6)
    assert not torch.allclose(logits[..., 0::2], logits[..., 1::2])  # not nearest: no 2x2 plateaus
