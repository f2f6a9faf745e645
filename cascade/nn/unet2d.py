"""2D U-Net for 2.5D slabs: (B, 4k, H, W) stacked slices -> logits of the centre slice."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cascade.nn.blocks import ConvBlock, crop_spatial, pad_to_multiple


class Down(nn.Sequential):
    """Halve the resolution (2x2 max-pool), then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, activation: str) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(2, in_channels, out_channels, norm, activation))


class Up(nn.Module):
    """Double the resolution (transposed conv), concatenate the skip, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, activation: str) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2, 2 * out_channels, out_channels, norm, activation)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([skip, self.upsample(x)], dim=1))


class UNet2d(nn.Module):
    """U-Net with `depth` resolution levels; level i has filters * 2**i channels.

    forward: (B, in_channels, H, W) -> logits (B, num_classes, H, W) for any H, W
    (padded internally to a multiple of 2**(depth - 1) and cropped back).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int,
        depth: int,
        norm: str,
        activation: str,
    ) -> None:
        super().__init__()
        if depth < 1 or filters < 1:
            raise ValueError(f"UNet2d: need depth >= 1 and filters >= 1, got {depth}, {filters}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        widths = [filters * 2**level for level in range(depth)]
        self.stem = ConvBlock(2, in_channels, widths[0], norm, activation)
        self.downs = nn.ModuleList(
            Down(wider_in, wider_out, norm, activation)
            for wider_in, wider_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.ups = nn.ModuleList(
            Up(deeper, shallower, norm, activation)
            for deeper, shallower in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x, shape = pad_to_multiple(x, 2 ** (self.depth - 1))
        x = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        return crop_spatial(self.head(x), shape)
