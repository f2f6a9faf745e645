"""Building blocks shared by the 2D and 3D U-Nets: norms, activations, conv blocks, padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("instance", "batch", "group")
ACTIVATIONS = ("leaky_relu", "relu", "gelu")


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ValueError(f"blocks: dims must be 2 or 3, got {dims}")


def conv_layer(dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Conv2d or Conv3d with the given arguments."""
    _check_dims(dims)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(in_channels, out_channels, **kwargs)


def norm_layer(kind: str, channels: int, dims: int) -> nn.Module:
    """Normalisation by name: "instance" (affine), "batch" or "group" (up to 8 groups)."""
    _check_dims(dims)
    if kind == "instance":
        norm = InstanceNorm2d if dims == 2 else InstanceNorm3d
        return norm(channels, affine=True)
    if kind == "batch":
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        return norm(channels)
    if kind == "group":
        groups = min(8, channels)
        while channels % groups:  # GroupNorm needs a divisor of the channel count
            groups -= 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"blocks: unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def _is_channels_last(x: Tensor) -> bool:
    """Whether (B, C, *spatial) is stored channels-last (and is not also contiguous)."""
    layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return layout is not None and not x.is_contiguous() and x.is_contiguous(memory_format=layout)


class _KeepsLayout:
    """Instance norm that normalises a channels-last input as group norm with one group per
    channel, the same statistics and affine: instance_norm copies such an input to contiguous
    and back. On a 2-core Xeon a channels-last training step of the demo's Stage 1 takes
    0.25-0.28 s instead of 0.30-0.31 s, of its Stage 2 0.16-0.17 s instead of 0.17-0.19 s
    (experiments/bench/train_layouts.py, three runs each). Contiguous inputs take
    instance_norm as before."""

    def forward(self, input: Tensor) -> Tensor:
        if not _is_channels_last(input) or not self.affine or self.track_running_stats:
            return super().forward(input)
        # torch's CPU group_norm backward crashes (segfault, torch 2.13) on a channels-last
        # input that needs no gradient while the affine does: a frozen layer in front
        if torch.is_grad_enabled() and not input.requires_grad:
            return super().forward(input)
        return F.group_norm(input, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm2d(_KeepsLayout, nn.InstanceNorm2d):
    """nn.InstanceNorm2d that keeps a channels-last input's layout (see _KeepsLayout)."""


class InstanceNorm3d(_KeepsLayout, nn.InstanceNorm3d):
    """nn.InstanceNorm3d that keeps a channels_last_3d input's layout (see _KeepsLayout)."""


def activation_layer(kind: str) -> nn.Module:
    """Activation by name: "leaky_relu" (slope 0.01), "relu" or "gelu"."""
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"blocks: unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


class ConvBlock(nn.Sequential):
    """Two (3x3[x3] conv -> norm -> activation) layers; keeps the spatial size."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, norm: str, activation: str
    ) -> None:
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            # the conv bias is redundant in front of a norm with its own shift
            layers += [
                conv_layer(dims, channels_in, out_channels, kernel_size=3, padding=1, bias=False),
                norm_layer(norm, out_channels, dims),
                activation_layer(activation),
            ]
        super().__init__(*layers)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of (B, C, *spatial) at their far end to a multiple of `multiple`.

    Returns the padded tensor and the original spatial shape (for `crop_spatial`).
    """
    shape = tuple(x.shape[2:])
    extra = [(-size) % multiple for size in shape]
    if not any(extra):
        return x, shape
    # F.pad lists (before, after) pairs starting from the last dim
    padding: list[int] = []
    for amount in reversed(extra):
        padding += [0, amount]
    return F.pad(x, padding), shape


def crop_spatial(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Keep the first `shape` voxels of each spatial dim of (B, C, *spatial)."""
    return x[(..., *(slice(0, size) for size in shape))]
