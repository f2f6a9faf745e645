"""Stage-2 training patches cut from a case pool: label-biased 3D patches, one gather.

As in nnU-Net, a patch's centre class is drawn first (weights renormalised over the classes its
case has), then a voxel of that class; a case smaller than the patch along an axis is placed at
random inside it, zero-padded, never refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from cascade.sampling.crops import crop_boxes
from cascade.sampling.draws import pick, uniforms, window_starts
from cascade.sampling.pool import CasePool


class PatchDraws:
    """Draws a batch of patches from a pool whose channels are the 4 modalities, the prior's
    `num_classes` channels (as stored: probabilities, or uint8 steps of 1/`prior_scale`) and
    the label, with one location group per tumor class 1..num_classes-1. With
    `lookalike_fraction`, that share of the patches is centred on healthy tissue that looks like
    tumor instead (a pool built with lookalikes; a case with none keeps its class draw)."""

    def __init__(
        self,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float],
        num_classes: int,
        flip_axes: Sequence[int],
        prior_scale: float,
        lookalike_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= lookalike_fraction <= 1.0:
            raise ValueError(f"lookalike_fraction must lie in [0, 1], got {lookalike_fraction}")
        weights = [float(label_probabilities.get(c, 0.0)) for c in range(num_classes)]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                "PatchDraws: label_probabilities needs non-negative weights, not all zero; "
                f"got {dict(label_probabilities)}"
            )
        self.patch_size = tuple(int(size) for size in patch_size)
        self.class_weights = torch.tensor(weights)
        self.num_classes = num_classes
        self.flip_axes = tuple(int(axis) for axis in flip_axes)
        self.prior_scale = prior_scale
        self.lookalike_fraction = lookalike_fraction

    @staticmethod
    def location_groups(num_classes: int) -> list[tuple[int]]:
        return [(label_class,) for label_class in range(1, num_classes)]

    def __call__(
        self, pool: CasePool, batch_size: int, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """{"image" float32 (B, 4, *p), "prior" float32 (B, classes, *p), "label" uint8 (B, *p)}."""
        device = pool.device
        draw = uniforms(12, batch_size, generator, device)
        slots = pick(draw[0], pool.filled)
        sizes = pool.sizes[slots]
        counts = pool.location_counts[slots, : self.num_classes - 1]  # (B, classes - 1)
        present = torch.cat([torch.ones_like(counts[:, :1]), counts], dim=1) > 0
        weights = self.class_weights.to(device) * present
        # a class with no weight among those present falls back to background
        cdf = weights.cumsum(1) / weights.sum(1, keepdim=True).clamp(min=1e-12)
        label_class = (draw[1][:, None] >= cdf).sum(1).clamp(max=self.num_classes - 1)
        label_class = torch.where(weights.sum(1) > 0, label_class, 0)
        group = (label_class - 1).clamp(min=0)
        count = counts.gather(1, group[:, None])[:, 0]
        located = pool.locations[slots, group, pick(draw[2], count)]  # (B, 3)
        anywhere = torch.stack([pick(draw[3 + a], sizes[:, a]) for a in range(3)], dim=1)
        centre = torch.where((label_class > 0)[:, None], located, anywhere)
        if self.lookalike_fraction:
            centre = self._onto_lookalikes(pool, slots, centre, generator)
        starts = []
        for axis, target in enumerate(self.patch_size):
            inside = (centre[:, axis] - target // 2).clamp(min=0)
            inside = torch.minimum(inside, sizes[:, axis] - target)
            padded = window_starts(draw[6 + axis], sizes[:, axis], target, None)
            starts.append(torch.where(sizes[:, axis] >= target, inside, padded))
        flips = torch.zeros((batch_size, 3), dtype=torch.bool, device=device)
        for axis in self.flip_axes:
            flips[:, axis] = draw[9 + axis] < 0.5
        order = torch.arange(3, device=device).expand(batch_size, 3)
        patches = crop_boxes(
            pool.voxels, pool.canvas, slots, sizes, torch.stack(starts, 1),
            self.patch_size, order, flips,
        )  # fmt: skip
        channels = patches.permute(0, 4, 1, 2, 3)
        return {
            "image": channels[:, :4].float(),
            "prior": channels[:, 4:-1].float().div_(self.prior_scale),
            "label": channels[:, -1].to(torch.uint8),
        }

    def _onto_lookalikes(
        self, pool: CasePool, slots: Tensor, centre: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """`centre` (B, 3) moved onto a look-alike voxel for a `lookalike_fraction` share of the
        patches. Its draws come after the batch's others, so without look-alikes a run's
        patches stay what they were."""
        if pool.lookalike_group is None:
            raise ValueError(
                "PatchDraws: lookalike_fraction > 0 needs a pool built with lookalikes"
            )
        draw = uniforms(2, slots.shape[0], generator, pool.device)
        counts = pool.location_counts[slots, pool.lookalike_group]
        voxel = pool.locations[slots, pool.lookalike_group, pick(draw[1], counts)]
        chosen = (draw[0] < self.lookalike_fraction) & (counts > 0)
        return torch.where(chosen[:, None], voxel, centre)
