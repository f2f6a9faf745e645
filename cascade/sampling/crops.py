"""Boxes cropped from a pool of volumes in one gather, with axis order, flips and zero padding.

A box is the affine image of an output grid: output position (i0, i1, i2) of sample b reads
voxel start[b, a] + i_d (or its mirror when flipped) along volume axis a = order[b, d]. So a
whole batch of slabs or patches, of any view and with any flips, is one index computation and
one `index_select` over the pool's voxels; positions outside the volume read a zero row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def crop_boxes(
    voxels: Tensor,
    canvas: Sequence[int],
    slots: Tensor,
    sizes: Tensor,
    starts: Tensor,
    box: Sequence[int],
    order: Tensor,
    flips: Tensor,
) -> Tensor:
    """Gather a batch of boxes from pooled volumes.

    voxels: (P * X * Y * Z + 1, C), the pool's volumes on a (X, Y, Z) canvas, channels last,
        then one zero row that every position outside its volume reads.
    slots: (B,) pool slot of each box. sizes: (B, 3) its volume's own (x, y, z) extent.
    starts: (B, 3) first voxel of the box along each volume axis, may lie outside the volume.
    box: output size (s0, s1, s2). order: (B, 3) volume axis of each output dim.
    flips: (B, 3) bool, mirror output dim d inside the box.
    Returns (B, s0, s1, s2, C).
    """
    device = voxels.device
    zero_row = voxels.shape[0] - 1
    canvas_strides = torch.tensor(
        [canvas[1] * canvas[2], canvas[2], 1], device=device, dtype=torch.long
    )
    slot_voxels = canvas[0] * canvas[1] * canvas[2]
    batch = slots.shape[0]
    flat = (slots.long() * slot_voxels).view(batch, 1, 1, 1)
    valid = torch.ones((batch, 1, 1, 1), dtype=torch.bool, device=device)
    for dim, length in enumerate(box):
        axis = order[:, dim].long()
        steps = torch.arange(length, device=device).expand(batch, length)
        steps = torch.where(flips[:, dim, None], length - 1 - steps, steps)
        position = starts.gather(1, axis[:, None]).long() + steps  # (B, length) along `axis`
        inside = (position >= 0) & (position < sizes.gather(1, axis[:, None]))
        shape = [batch, 1, 1, 1]
        shape[1 + dim] = length
        flat = flat + (position * canvas_strides[axis, None]).view(shape)
        valid = valid & inside.view(shape)
    index = torch.where(valid, flat, zero_row)
    return voxels.index_select(0, index.flatten()).view(batch, *box, voxels.shape[1])
