"""3D Attention U-Net (Oktay et al. 2018): an additive attention gate on every skip connection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade.nn.blocks import ConvBlock
from cascade.nn.unet import UNet


class AttentionGate(nn.Module):
    """Additive gate: skip (B, Cs, 2X, 2Y, 2Z) weighted by coefficients from the gating signal.

    The coefficients come from the coarser decoder feature (B, Cg, X, Y, Z): theta (2x2x2 conv,
    stride 2) brings the skip to the gate's resolution, phi (1x1) projects the gate, then
    ReLU(theta + phi) -> psi (1x1, one channel) -> sigmoid -> trilinear upsampling x2.
    Oktay's output conv + norm after the multiplication is left out: the decoder's ConvBlock
    follows right away, so it would only add kernels.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        # phi carries the one bias of the sum; theta's would be redundant
        self.theta = nn.Conv3d(skip_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi = nn.Conv3d(gate_channels, inter_channels, kernel_size=1)
        self.psi = nn.Conv3d(inter_channels, 1, kernel_size=1)

    def coefficients(self, skip: Tensor, gate: Tensor) -> Tensor:
        """Attention coefficients in [0, 1], (B, 1, *skip spatial)."""
        # in place: one buffer for theta + phi and the ReLU
        joint = self.theta(skip).add_(self.phi(gate)).relu_()
        coarse = torch.sigmoid(self.psi(joint))
        return F.interpolate(coarse, size=skip.shape[2:], mode="trilinear", align_corners=False)

    def forward(self, skip: Tensor, gate: Tensor) -> Tensor:
        return skip * self.coefficients(skip, gate)


class GatedUp(nn.Module):
    """Gate the skip with the coarser feature, upsample that feature (transposed conv),
    concatenate both, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, activation: str) -> None:
        super().__init__()
        self.gate = AttentionGate(out_channels, in_channels, max(1, out_channels // 2))
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(3, 2 * out_channels, out_channels, norm, activation)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.gate(skip, x), self.upsample(x)], dim=1))


class AttentionUNet3d(UNet):
    """3D U-Net with `depth` resolution levels (level i: filters * 2**i channels) and an
    attention gate on each of its depth - 1 skips.

    forward: (B, in_channels, X, Y, Z) -> logits (B, num_classes, X, Y, Z) for any X, Y, Z
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
        # depth >= 2: at least one skip, so at least one gate
        super().__init__(
            3, in_channels, num_classes, filters, depth, norm, activation, GatedUp, min_depth=2
        )

    @property
    def gates(self) -> list[AttentionGate]:
        """The attention gates, deepest first (one per skip)."""
        return [up.gate for up in self.ups]
