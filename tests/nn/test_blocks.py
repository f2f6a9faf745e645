import pytest
import torch
from torch import nn

from cascade.nn.blocks import (
    ConvBlock,
    activation_layer,
    crop_spatial,
    norm_layer,
    pad_to_multiple,
)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_conv_block_keeps_spatial_size(dims: int, norm: str) -> None:
    block = ConvBlock(dims, 3, 8, norm, "leaky_relu")
    x = torch.randn(2, 3, *([7] * dims))
    assert block(x).shape == (2, 8, *([7] * dims))
    convs = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert len(convs) == 2 and all(conv.bias is None for conv in convs)


def test_norm_layer_kinds() -> None:
    assert isinstance(norm_layer("instance", 4, 3), nn.InstanceNorm3d)
    assert norm_layer("instance", 4, 2).affine
    assert isinstance(norm_layer("batch", 4, 2), nn.BatchNorm2d)
    group = norm_layer("group", 32, 3)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 8
    assert norm_layer("group", 4, 2).num_groups == 4
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("layer", 4, 2)


def test_activation_layer_kinds() -> None:
    leaky = activation_layer("leaky_relu")
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.01
    assert isinstance(activation_layer("relu"), nn.ReLU)
    assert isinstance(activation_layer("gelu"), nn.GELU)
    with pytest.raises(ValueError, match="unknown activation"):
        activation_layer("swish")


@pytest.mark.parametrize("shape", [(5, 9), (16, 16), (3, 17, 8)])
def test_pad_then_crop_round_trip(shape: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *shape)
    padded, original = pad_to_multiple(x, 8)
    assert original == shape
    for padded_size, size in zip(padded.shape[2:], shape, strict=True):
        assert padded_size % 8 == 0 and size <= padded_size < size + 8
    assert torch.equal(crop_spatial(padded, original), x)
    # the padding is zeros at the far end
    assert padded.sum().item() == pytest.approx(x.sum().item(), abs=1e-4)
