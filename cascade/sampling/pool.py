"""A fixed number of whole cases resident on the training device, replaced first in, first out.

Like TorchIO's Queue, but the cases wait on the device rather than as patches in host memory:
a batch is cropped from them there (`cascade.sampling.crops`), so the host only reads whole cases
(one sequential read each) and never builds a sample. The pool's memory is fixed at start-up:
`capacity` cases on a canvas as large as the largest case, so a release larger than the device's
memory trains from a pool that holds a few of its cases at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cascade.sampling.lookalikes import LookAlikes

# Voxel coordinates kept per location group and case: enough spread for centre draws at a fixed
# memory cost (a BraTS tumor has 10^4-10^5 voxels).
LOCATIONS_PER_GROUP = 4096


def in_group(label: Tensor, values: Sequence[int]) -> Tensor:
    """bool mask of the voxels whose label is one of `values`. One comparison per value: for the
    few values of a location group, 3-17 times faster than torch.isin on a CPU volume, which
    sorts (one thread, a cached demo case: 1.6 against 27 ms for one value, 9 against 32 ms
    for four)."""
    mask = label == values[0]
    for value in values[1:]:
        mask |= label == value
    return mask


class CasePool:
    """Up to `capacity` cases of `channels` channels on a common (X, Y, Z) canvas.

    Each case keeps its own extent (`sizes`) and, for each group of label values in
    `location_groups`, up to LOCATIONS_PER_GROUP voxel coordinates of that group (for centres
    on tumor), with their count; with `lookalikes`, one more group after those: healthy tissue
    that looks like tumor (`lookalike_group`). The channels are stored as float16, which holds
    images, uint8 priors (steps of 1/255) and labels exactly enough (see `insert`).
    """

    def __init__(
        self,
        capacity: int,
        canvas: Sequence[int],
        channels: int,
        location_groups: Sequence[Sequence[int]],
        device: torch.device | str,
        seed: int,
        lookalikes: LookAlikes | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"CasePool: capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.canvas = tuple(int(size) for size in canvas)
        self.channels = channels
        self.location_groups = [tuple(int(value) for value in group) for group in location_groups]
        if not all(self.location_groups):
            raise ValueError(f"CasePool: every location group needs a value, got {location_groups}")
        self.lookalikes = lookalikes
        self.lookalike_group = len(self.location_groups) if lookalikes is not None else None
        self.device = torch.device(device)
        voxels = capacity * self.canvas[0] * self.canvas[1] * self.canvas[2]
        # the last row stays zero: crops read it outside a case
        self.voxels = torch.zeros((voxels + 1, channels), dtype=torch.float16, device=self.device)
        self.sizes = torch.zeros((capacity, 3), dtype=torch.long, device=self.device)
        groups = len(self.location_groups) + (lookalikes is not None)
        self.locations = torch.zeros(
            (capacity, groups, LOCATIONS_PER_GROUP, 3), dtype=torch.long, device=self.device
        )
        self.location_counts = torch.zeros((capacity, groups), dtype=torch.long, device=self.device)
        self.filled = 0
        self._next = 0
        # subsampling the locations is bookkeeping, not augmentation: its own fixed stream
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    def volumes(self) -> Tensor:
        """(capacity, X, Y, Z, channels) view of the stored cases."""
        return self.voxels[:-1].view(self.capacity, *self.canvas, self.channels)

    def insert(self, parts: Sequence[Tensor], label: Tensor) -> int:
        """Store one case, replacing the oldest when full; returns its slot.

        parts: tensors (c_i, x, y, z), on any device, of any float or uint8 dtype, whose
        channels together make the pool's (converted to float16: uint8 values 0..255 stay
        exact). label: (x, y, z) integer classes, for the locations.
        """
        if sum(part.shape[0] for part in parts) != self.channels:
            counts = [part.shape[0] for part in parts]
            raise ValueError(f"CasePool: parts of {counts} channels, expected {self.channels}")
        extent = tuple(label.shape)
        if any(size > limit for size, limit in zip(extent, self.canvas, strict=True)):
            raise ValueError(
                f"CasePool: a case of extent {extent} exceeds the canvas {self.canvas}"
            )
        slot = self._next
        self._next = (self._next + 1) % self.capacity
        self.filled = min(self.filled + 1, self.capacity)
        stored = self.volumes()[slot]
        stored.zero_()
        x, y, z = extent
        first = 0
        for part in parts:
            last = first + part.shape[0]
            part = part.to(self.device, non_blocking=True)
            stored[:x, :y, :z, first:last].copy_(part.movedim(0, -1))
            first = last
        self.sizes[slot] = torch.tensor(extent, device=self.device)
        label = label.to(self.device, non_blocking=True)
        for group_index, group in enumerate(self.location_groups):
            self._locate(slot, group_index, in_group(label, group))
        if self.lookalikes is not None:
            flair = stored[:x, :y, :z, self.lookalikes.channel].float()
            self._locate(slot, self.lookalike_group, self.lookalikes.mask(flair, label))
        return slot

    def _locate(self, slot: int, group_index: int, mask: Tensor) -> None:
        """Keep up to LOCATIONS_PER_GROUP of mask's voxels, drawn evenly, and their count."""
        found = mask.nonzero()
        count = min(found.shape[0], LOCATIONS_PER_GROUP)
        if found.shape[0] > count:
            keep = torch.randperm(found.shape[0], generator=self._generator, device=self.device)
            found = found[keep[:count]]
        self.locations[slot, group_index, :count] = found
        self.location_counts[slot, group_index] = count
