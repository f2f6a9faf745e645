"""Stage-2 flips and intensity scale/shift on whole training batches, on the batch's device.

Applied after the batch reaches the device: on the patches rather than on whole subject volumes
in the loader workers, where they cost several times the reading and sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class BatchAugmentation(nn.Module):
    """Per sample: flip each of `flip_axes` (spatial axes 0..2) with chance 1/2, alike on
    image (B, C, X, Y, Z), prior (B, C, X, Y, Z) and label (B, X, Y, Z); then, per sample and
    channel, scale the image by U(1 - scale, 1 + scale) and shift its non-zero voxels by
    U(-shift, shift). Other keys pass through; dtypes, shapes and devices are kept."""

    def __init__(
        self, flip_axes: Sequence[int], intensity_scale: float, intensity_shift: float
    ) -> None:
        super().__init__()
        self.flip_axes = tuple(int(axis) for axis in flip_axes)
        if any(axis not in (0, 1, 2) for axis in self.flip_axes):
            raise ValueError(f"BatchAugmentation: flip_axes must be in 0, 1, 2, got {flip_axes}")
        if intensity_scale < 0 or intensity_shift < 0:
            raise ValueError("BatchAugmentation: intensity_scale and intensity_shift must be >= 0")
        self.intensity_scale = float(intensity_scale)
        self.intensity_shift = float(intensity_shift)

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Augmented copy of the batch dict; random numbers come from `generator` (a CPU
        generator) or torch's global CPU RNG, so a run is reproducible on any device."""
        batch = dict(batch)
        image = batch["image"]
        size = image.shape[0]
        if self.flip_axes:
            # (B, axes) decisions on the CPU: they steer Python control flow anyway
            flips = torch.rand(size, len(self.flip_axes), generator=generator) < 0.5
            for key in ("image", "prior", "label"):
                if key in batch:
                    batch[key] = self._flip(batch[key], flips)
        if self.intensity_scale > 0 or self.intensity_shift > 0:
            shape = (size, image.shape[1]) + (1,) * (image.dim() - 2)
            draws = 2 * torch.rand(2, *shape, generator=generator) - 1
            draws = draws.to(device=image.device, dtype=image.dtype, non_blocking=True)
            factors = 1 + self.intensity_scale * draws[0]
            offsets = self.intensity_shift * draws[1]
            data = batch["image"]
            # background stays 0, as after preprocessing at inference; masked_fill_ is several
            # times cheaper than multiplying the offsets by a float mask
            augmented = torch.addcmul(offsets, data, factors)
            batch["image"] = augmented.masked_fill_(data == 0, 0)
        return batch

    def _flip(self, data: Tensor, flips: Tensor) -> Tensor:
        """Flip sample b of data (B, ..., X, Y, Z) along the chosen axes of flips[b]."""
        if not flips.any():
            return data
        first = data.dim() - 3  # index of the X axis
        samples = []
        for sample, chosen in zip(data, flips.tolist(), strict=True):
            dims = [first - 1 + axis for axis, on in zip(self.flip_axes, chosen, strict=True) if on]
            samples.append(sample.flip(dims) if dims else sample)
        return torch.stack(samples)

    def extra_repr(self) -> str:
        return (
            f"flip_axes={self.flip_axes}, intensity_scale={self.intensity_scale}, "
            f"intensity_shift={self.intensity_shift}"
        )
