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


@pytest.mark.parametrize(
    ("dims", "layout"), [(2, torch.channels_last), (3, torch.channels_last_3d)]
)
def test_instance_norm_keeps_a_channels_last_layout_and_its_result(dims, layout) -> None:
    torch.manual_seed(0)
    norm = norm_layer("instance", 8, dims)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 8, *([10] * dims)) * 4 + 2
    # the layer torch ships, with the same weights: the one earlier checkpoints were trained with
    reference = (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(8, affine=True)
    reference.load_state_dict(norm.state_dict())
    expected = reference(x)
    assert torch.equal(norm(x), expected)  # contiguous: the very same kernel
    with torch.no_grad():  # prediction
        out = norm(x.contiguous(memory_format=layout))
    assert out.is_contiguous(memory_format=layout) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # training: the layout kept, gradients as torch's layer gives them
    x_last = x.contiguous(memory_format=layout).requires_grad_(True)
    x_plain = x.clone().requires_grad_(True)
    upstream = torch.randn_like(x)
    out = norm(x_last)
    assert out.is_contiguous(memory_format=layout) and not out.is_contiguous()
    out.backward(upstream.contiguous(memory_format=layout))
    reference(x_plain).backward(upstream)
    torch.testing.assert_close(x_last.grad, x_plain.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(norm.bias.grad, reference.bias.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("dims", "layout"), [(2, torch.channels_last), (3, torch.channels_last_3d)]
)
@pytest.mark.parametrize("frozen_weight", [False, True])
def test_instance_norm_trains_behind_a_frozen_input(dims, layout, frozen_weight) -> None:
    # a channels-last input that needs no gradient, an affine that does (its scale too, or its
    # shift alone): torch's group_norm backward crashes the process here, so the layer must
    # take another kernel
    norm = norm_layer("instance", 4, dims)
    norm.weight.requires_grad_(not frozen_weight)
    x = torch.randn(2, 4, *([6] * dims)).contiguous(memory_format=layout)
    norm(x).sum().backward()
    assert norm.bias.grad is not None
    assert (norm.weight.grad is None) == frozen_weight


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
