"""2D U-Net for 2.5D slabs: (B, 4k, H, W) stacked slices -> logits of the centre slice."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cascade.nn.blocks import ConvBlock
from cascade.nn.unet import UNet


class Up(nn.Module):
    """Double the resolution (transposed conv), concatenate the skip, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, activation: str) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2, 2 * out_channels, out_channels, norm, activation)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([skip, self.upsample(x)], dim=1))


class UNet2d(UNet):
    """2D U-Net (see UNet): (B, in_channels, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        filters: int,
        depth: int,
        norm: str,
        activation: str,
    ) -> None:
        super().__init__(2, in_channels, num_classes, filters, depth, norm, activation, Up)
