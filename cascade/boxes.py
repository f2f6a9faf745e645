"""Bounding boxes of masks, shared by preprocessing, training, inference and the metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# half-open (start, stop) voxel ranges per axis: ((x0, x1), (y0, y1), (z0, z1)) for a volume
Box = tuple[tuple[int, int], ...]


def bounding_box(mask: np.ndarray | torch.Tensor, margin: int = 0) -> Box | None:
    """The box of a mask's nonzero voxels grown by `margin` and clipped to the array; None when
    the mask is empty. A tensor stays on its device until each axis is reduced to a line."""
    box = []
    for axis, size in enumerate(mask.shape):
        others = tuple(other for other in range(mask.ndim) if other != axis)
        if isinstance(mask, torch.Tensor):
            line = mask.any(dim=others).cpu().numpy() if others else mask.cpu().numpy()
        else:
            line = mask.any(axis=others) if others else mask
        present = np.flatnonzero(line)
        if present.size == 0:
            return None
        box.append((max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)))
    return tuple(box)


def box_slices(box: Box) -> tuple[slice, ...]:
    """Index of the box's voxels: ``array[box_slices(box)]``."""
    return tuple(slice(start, stop) for start, stop in box)


def enclosing_box(boxes: Sequence[Box]) -> Box | None:
    """The smallest box that holds every box of `boxes`; None when there are none."""
    if not boxes:
        return None
    return tuple(  # type: ignore[return-value]
        (min(box[axis][0] for box in boxes), max(box[axis][1] for box in boxes))
        for axis in range(len(boxes[0]))
    )
