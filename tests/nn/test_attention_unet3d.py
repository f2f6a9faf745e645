"""AttentionUNet3d: a gate on every skip, any input size, channels_last_3d."""

from __future__ import annotations

import pytest
import torch

from cascade.nn.attention_unet3d import AttentionGate, AttentionUNet3d


def tiny_net(depth: int, norm: str = "instance") -> AttentionUNet3d:
    torch.manual_seed(0)
    return AttentionUNet3d(8, 4, filters=4, depth=depth, norm=norm, activation="leaky_relu")


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_one_gate_per_skip_and_every_gate_runs(depth: int) -> None:
    net = tiny_net(depth)
    gates = [module for module in net.modules() if isinstance(module, AttentionGate)]
    assert len(gates) == depth - 1 == len(net.gates)
    calls: list[tuple[int, tuple[int, ...]]] = []
    for index, gate in enumerate(gates):
        gate.register_forward_hook(
            lambda module, inputs, output, index=index: calls.append((index, output.shape))
        )
    size = 2**depth  # two voxels per axis at the bottom level (instance norm needs > 1)
    logits = net(torch.randn(2, 8, size, size, size))
    assert logits.shape == (2, 4, size, size, size)
    assert sorted(index for index, _ in calls) == list(range(depth - 1))
    # each gate's output is its skip: filters * 2**level channels at that level's resolution
    skip_shapes = {shape[1:] for _, shape in calls}
    expected = {(4 * 2**level, *(size // 2**level,) * 3) for level in range(depth - 1)}
    assert skip_shapes == expected


def test_gate_weights_the_skip_by_coefficients_in_unit_interval() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=4, gate_channels=8, inter_channels=2)
    skip, gating = torch.randn(2, 4, 8, 8, 8), torch.randn(2, 8, 4, 4, 4)
    coefficients = gate.coefficients(skip, gating)
    assert coefficients.shape == (2, 1, 8, 8, 8)
    assert coefficients.min() >= 0 and coefficients.max() <= 1
    torch.testing.assert_close(gate(skip, gating), skip * coefficients)


@pytest.mark.parametrize("shape", [(17, 13, 11), (16, 16, 16), (9, 20, 15)])
def test_odd_sizes_give_logits_of_the_input_size(shape: tuple[int, int, int]) -> None:
    net = tiny_net(depth=4, norm="group")
    assert net(torch.randn(2, 8, *shape)).shape == (2, 4, *shape)


@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
def test_channels_last_3d_matches_default_layout(norm: str) -> None:
    net = tiny_net(depth=3, norm=norm).eval()
    x = torch.randn(2, 8, 16, 12, 8)
    with torch.no_grad():
        expected = net(x)
        actual = net.to(memory_format=torch.channels_last_3d)(
            x.to(memory_format=torch.channels_last_3d)
        )
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    net = tiny_net(depth=3)
    net(torch.randn(2, 8, 8, 8, 8)).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_rejects_a_single_level() -> None:
    with pytest.raises(ValueError, match="depth"):
        AttentionUNet3d(8, 4, filters=4, depth=1, norm="instance", activation="relu")
