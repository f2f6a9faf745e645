"""The encoder-decoder skeleton shared by the 2D Stage-1 and 3D Stage-2 networks."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from cascade.nn.blocks import ConvBlock, conv_layer, crop_spatial, pad_to_multiple

# (in_channels of the coarser level, out_channels, norm, activation) -> module(x, skip)
UpBlockFactory = Callable[[int, int, str, str], nn.Module]


class Down(nn.Sequential):
    """Halve the resolution (2x max-pool), then a ConvBlock."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, norm: str, activation: str
    ) -> None:
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        super().__init__(pool(2), ConvBlock(dims, in_channels, out_channels, norm, activation))


class UNet(nn.Module):
    """U-Net with `depth` resolution levels; level i has filters * 2**i channels.

    forward: (B, in_channels, *spatial) -> logits (B, num_classes, *spatial) for any size
    (padded internally to a multiple of 2**(depth - 1) and cropped back). `up_block` builds
    each decoder step, which is where the 2D and the attention-gated 3D nets differ.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        num_classes: int,
        filters: int,
        depth: int,
        norm: str,
        activation: str,
        up_block: UpBlockFactory,
        min_depth: int = 1,
    ) -> None:
        super().__init__()
        if depth < min_depth or filters < 1:
            raise ValueError(
                f"{type(self).__name__}: need depth >= {min_depth} and filters >= 1, "
                f"got {depth}, {filters}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        widths = [filters * 2**level for level in range(depth)]
        self.stem = ConvBlock(dims, in_channels, widths[0], norm, activation)
        self.downs = nn.ModuleList(
            Down(dims, wider_in, wider_out, norm, activation)
            for wider_in, wider_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.ups = nn.ModuleList(
            up_block(deeper, shallower, norm, activation)
            for deeper, shallower in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = conv_layer(dims, widths[0], num_classes, kernel_size=1)

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
