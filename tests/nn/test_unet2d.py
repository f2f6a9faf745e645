import pytest
import torch

from cascade.nn.unet2d import UNet2d


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [(20, 20), (13, 21)])
def test_output_shape_any_depth_and_size(depth: int, size: tuple[int, int]) -> None:
    net = UNet2d(20, 4, filters=4, depth=depth, norm="instance", activation="leaky_relu")
    logits = net(torch.randn(2, 20, *size))
    assert logits.shape == (2, 4, *size)


def test_level_widths_double() -> None:
    net = UNet2d(8, 4, filters=6, depth=4, norm="group", activation="relu")
    assert [down[1][0].out_channels for down in net.downs] == [12, 24, 48]
    assert [up.upsample.out_channels for up in net.ups] == [24, 12, 6]


def test_depth_one_is_a_plain_conv_block() -> None:
    net = UNet2d(4, 4, filters=4, depth=1, norm="batch", activation="gelu")
    assert len(net.downs) == 0 and len(net.ups) == 0
    assert net(torch.randn(2, 4, 5, 7)).shape == (2, 4, 5, 7)


def test_learns_to_copy_a_channel_mask() -> None:
    """A few Adam steps on a trivial task: the net is trainable end to end."""
    torch.manual_seed(0)
    net = UNet2d(2, 2, filters=4, depth=2, norm="instance", activation="leaky_relu")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(4, 2, 12, 12)
    target = (x[:, 0] > 0).long()
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
