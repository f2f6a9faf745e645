"""Stage-1 training slabs cut from a case pool: tumor-biased 2.5D slabs of any view, one gather.

A slab is k adjacent slices along a view's axis and a slab_size window in its plane, the plane's
axes in increasing order, as `cascade.inference.multiview` slices a whole volume; its k slices
move into channels modality-major (`cascade.data.slabs.slab_channels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cascade.data.slabs import view_axis
from cascade.sampling.crops import crop_boxes
from cascade.sampling.draws import pick, uniforms, window_starts
from cascade.sampling.pool import CasePool

# Volume axes of a slab's (slice, rows, columns) for each slice axis.
_SLAB_ORDERS = ((0, 1, 2), (1, 0, 2), (2, 0, 1))
# Label values a tumor-centred slab is centred on: any class but background.
TUMOR_GROUP = (1, 2, 3, 4)


class SlabDraws:
    """Draws a batch of slabs from a pool whose channels are the 4 modalities, then the label.

    A slab's view and case are uniform; with chance `tumor_fraction` it is centred on a tumor
    voxel of its case (its slice, and an in-plane window holding it), with chance
    `lookalike_fraction` on healthy tissue that looks like tumor (a pool built with
    `lookalikes`), else anywhere; a case with no such voxel gives a slab from anywhere. Each
    in-plane axis is flipped with chance `flip_probability`, as TorchIO's RandomFlip.
    """

    def __init__(
        self,
        slab_depth: int,
        views: Sequence[str],
        slab_size: Sequence[int],
        tumor_fraction: float,
        flip_probability: float,
        lookalike_fraction: float = 0.0,
    ) -> None:
        if slab_depth < 1 or slab_depth % 2 == 0:
            raise ValueError(f"slab_depth must be odd and positive, got {slab_depth}")
        if not 0.0 <= tumor_fraction <= 1.0:
            raise ValueError(f"tumor_fraction must lie in [0, 1], got {tumor_fraction}")
        if lookalike_fraction < 0.0 or tumor_fraction + lookalike_fraction > 1.0:
            raise ValueError(
                f"lookalike_fraction must lie in [0, 1 - tumor_fraction], got {lookalike_fraction}"
                f" beside tumor_fraction {tumor_fraction}"
            )
        self.slab_depth = slab_depth
        self.view_axes = [view_axis(view) for view in views]
        self.slab_size = (int(slab_size[0]), int(slab_size[1]))
        self.tumor_fraction = tumor_fraction
        self.lookalike_fraction = lookalike_fraction
        self.flip_probability = flip_probability

    def __call__(
        self, pool: CasePool, batch_size: int, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """{"image": float32 (B, 4k, H, W), "label": long (B, H, W)} of the centre slices."""
        device = pool.device
        draw = uniforms(9, batch_size, generator, device)
        slots = pick(draw[0], pool.filled)
        axes = torch.tensor(self.view_axes, device=device)[pick(draw[1], len(self.view_axes))]
        order = torch.tensor(_SLAB_ORDERS, device=device)[axes]  # (B, 3)
        sizes = pool.sizes[slots]
        group, focused = self._focus_groups(pool, slots, draw[2])
        counts = pool.location_counts[slots, group]
        focus_voxel = pool.locations[slots, group, pick(draw[3], counts)]  # (B, 3)
        focus = torch.where(focused[:, None], focus_voxel, -1)
        along = order.gather(1, torch.zeros_like(order[:, :1]))[:, 0]
        slice_count = sizes.gather(1, along[:, None])[:, 0]
        centre = torch.where(
            focused, focus.gather(1, along[:, None])[:, 0], pick(draw[4], slice_count)
        )
        per_dim = [centre - self.slab_depth // 2]
        for dim, target in enumerate(self.slab_size, start=1):
            axis = order[:, dim : dim + 1]
            per_dim.append(
                window_starts(
                    draw[4 + dim],
                    sizes.gather(1, axis)[:, 0],
                    target,
                    focus.gather(1, axis)[:, 0],
                )
            )
        starts = torch.empty_like(order).scatter_(1, order, torch.stack(per_dim, dim=1))
        flips = torch.stack(
            [torch.zeros_like(focused), *(draw[7:9] < self.flip_probability)], dim=1
        )
        box = (self.slab_depth, *self.slab_size)
        slabs = crop_boxes(pool.voxels, pool.canvas, slots, sizes, starts, box, order, flips)
        # (B, k, H, W, 4 + 1) -> image (B, 4k, H, W), channel = modality * k + slice
        image = slabs[..., :-1].permute(0, 4, 1, 2, 3).flatten(1, 2).float()
        label = slabs[:, self.slab_depth // 2, :, :, -1].long()
        return {"image": image, "label": label}

    def _focus_groups(
        self, pool: CasePool, slots: Tensor, uniform: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per slab, the pool's location group to centre on (0: tumor) and whether to centre
        at all (the group has voxels in the slab's case)."""
        tumor = torch.zeros_like(slots)
        on_tumor = (uniform < self.tumor_fraction) & (pool.location_counts[slots, 0] > 0)
        if not self.lookalike_fraction:
            return tumor, on_tumor
        if pool.lookalike_group is None:
            raise ValueError("SlabDraws: lookalike_fraction > 0 needs a pool built with lookalikes")
        lookalike = torch.full_like(slots, pool.lookalike_group)
        on_lookalike = (
            (uniform >= self.tumor_fraction)
            & (uniform < self.tumor_fraction + self.lookalike_fraction)
            & (pool.location_counts[slots, pool.lookalike_group] > 0)
        )
        return torch.where(on_lookalike, lookalike, tumor), on_tumor | on_lookalike
