"""Vectorised random choices for a batch, from uniform draws already on the device."""

from __future__ import annotations

import torch
from torch import Tensor


def uniforms(count: int, batch: int, generator: torch.Generator | None, device) -> Tensor:
    """(count, B) uniforms in [0, 1), drawn on the CPU (a run is reproducible whatever its
    device) and moved to `device` in one copy."""
    return torch.rand(count, batch, generator=generator).to(device, non_blocking=True)


def pick(uniform: Tensor, counts: Tensor | int) -> Tensor:
    """An index in [0, count) per sample: uniform (B,) and counts (B,) or one count."""
    counts = torch.as_tensor(counts, device=uniform.device)
    index = (uniform * counts).long()
    return torch.minimum(index, (counts - 1).clamp(min=0))


def window_starts(uniform: Tensor, sizes: Tensor, target: int, focus: Tensor | None) -> Tensor:
    """First index of a `target`-long window along an axis of length `sizes` (B,).

    Longer axes: a random crop, one containing voxel `focus` where focus >= 0. Shorter axes: a
    random placement of the whole axis in the window (negative start, zero padding around),
    as nnU-Net pads a case smaller than its patch.
    """
    low = torch.zeros_like(sizes)
    high = sizes - target
    if focus is not None:
        focused = focus >= 0
        low = torch.where(focused, (focus - target + 1).clamp(min=0), low)
        high = torch.where(focused, torch.minimum(high, focus), high)
    crop = low + pick(uniform, high - low + 1)
    placement = -pick(uniform, target - sizes + 1)
    return torch.where(sizes >= target, crop, placement)
