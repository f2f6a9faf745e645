"""Dense 3D prediction over overlapping windows, accumulated on the volume's device.

TorchIO's GridSampler/GridAggregator are not used here: the aggregator moves every batch to the
CPU (`batch_tensor.cpu()`), accumulates in the network's dtype (fp16 sums lose precision), offers
no Gaussian weighting and needs a `tio.Subject`. On a GPU that is one device round trip per batch;
here the patches are sliced from the device tensor and the two accumulators stay beside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.boxes import Box

PredictPatches = Callable[[Tensor], Tensor]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one axis: a regular grid of step patch*(1-overlap), the last flush.

    `size` must be >= `patch` (smaller volumes are padded first).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch})")
    step = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def gaussian_importance(
    patch_size: Sequence[int], device: torch.device | str | None = None
) -> Tensor:
    """Separable Gaussian weight map (X, Y, Z), sigma = patch/8 per axis, peak 1, float32.

    Down-weights the patch border where the network sees least context.
    """
    weights = torch.ones((), device=device)
    for axis, size in enumerate(patch_size):
        sigma = size / 8.0
        position = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        profile = torch.exp(-0.5 * (position / sigma) ** 2)
        shape = [1, 1, 1]
        shape[axis] = size
        weights = weights * profile.view(shape)
    return weights / weights.max()


def evaluated_region(
    spatial_shape: Sequence[int], patch_size: Sequence[int], roi: Box | None = None
) -> Box:
    """Box of voxels that the windows cover (and where the output is defined).

    Without a roi it is the whole volume. With a roi the windows tile the roi grown symmetrically
    to at least one patch per axis and clipped to the volume, so every window meets the roi.
    """
    if roi is None:
        return tuple((0, int(size)) for size in spatial_shape)  # type: ignore[return-value]
    if len(roi) != 3:
        raise ValueError(f"roi must give 3 (start, stop) pairs, got {roi}")
    region = []
    for (start, stop), size, patch in zip(roi, spatial_shape, patch_size, strict=True):
        start, stop = max(0, int(start)), min(int(size), int(stop))
        if start >= stop:
            raise ValueError(f"roi {roi} is empty inside a volume of shape {tuple(spatial_shape)}")
        missing = patch - (stop - start)
        if missing > 0:
            start = start - missing // 2
            stop = start + patch
            # Shift back inside the volume; when the axis is shorter than the patch, take it all.
            shift = max(0, -start) - max(0, stop - size)
            start, stop = max(0, start + shift), min(int(size), stop + shift)
        region.append((start, stop))
    return tuple(region)  # type: ignore[return-value]


@torch.no_grad()
def sliding_window_predict(
    predict_patches: PredictPatches,
    volume: Tensor,
    patch_size: tuple[int, int, int],
    overlap: float,
    batch_size: int,
    num_outputs: int,
    roi: Box | None = None,
    weighting: str = "gaussian",
) -> Tensor:
    """Predict a (C, X, Y, Z) volume window by window; returns float32 (K, X, Y, Z).

    `predict_patches` maps (B, C, *patch_size) to (B, K, *patch_size) (any float dtype; sums are
    float32). Overlaps are averaged with `weighting` "gaussian" or "constant". With `roi` =
    ((x0, x1), (y0, y1), (z0, z1)) only the windows of `evaluated_region(...)` run; the output
    is zero outside that box. Volumes smaller than the patch are zero-padded and cropped back.
    """
    if volume.dim() != 4:
        raise ValueError(f"volume must be (C, X, Y, Z), got shape {tuple(volume.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial_shape = tuple(volume.shape[1:])
    patch_size = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
    region = evaluated_region(spatial_shape, patch_size, roi)
    inputs = volume[(slice(None), *(slice(a, b) for a, b in region))]

    # Centre small axes in a zero pad so the network sees them where its weight is highest.
    pad_before = [max(0, p - s) // 2 for p, s in zip(patch_size, inputs.shape[1:], strict=True)]
    pad_after = [
        max(0, p - s) - b for p, s, b in zip(patch_size, inputs.shape[1:], pad_before, strict=True)
    ]
    if any(pad_before) or any(pad_after):
        # F.pad lists the last axis first.
        pads = [n for axis in (2, 1, 0) for n in (pad_before[axis], pad_after[axis])]
        inputs = F.pad(inputs, pads)
    padded_shape = tuple(inputs.shape[1:])

    if weighting == "gaussian":
        importance = gaussian_importance(patch_size, device=volume.device)
    elif weighting == "constant":
        importance = torch.ones(patch_size, device=volume.device)
    else:
        raise ValueError(f"weighting must be 'gaussian' or 'constant', got {weighting!r}")

    summed = torch.zeros((num_outputs, *padded_shape), dtype=torch.float32, device=volume.device)
    weight_sum = torch.zeros(padded_shape, dtype=torch.float32, device=volume.device)
    starts = list(
        itertools.product(
            *(window_starts(s, p, overlap) for s, p in zip(padded_shape, patch_size, strict=True))
        )
    )
    for first in range(0, len(starts), batch_size):
        windows = [
            tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
            for start in starts[first : first + batch_size]
        ]
        batch = torch.stack([inputs[(slice(None), *window)] for window in windows])
        outputs = predict_patches(batch)
        expected = (len(windows), num_outputs, *patch_size)
        if tuple(outputs.shape) != expected:
            raise ValueError(
                f"predict_patches returned shape {tuple(outputs.shape)}, expected {expected}"
            )
        outputs = outputs.to(device=volume.device, dtype=torch.float32) * importance
        for output, window in zip(outputs, windows, strict=True):
            summed[(slice(None), *window)] += output
            weight_sum[window] += importance

    crop = tuple(
        slice(b, s - a) for b, a, s in zip(pad_before, pad_after, padded_shape, strict=True)
    )
    region_output = summed[(slice(None), *crop)] / weight_sum[crop]
    if roi is None:
        return region_output
    result = torch.zeros((num_outputs, *spatial_shape), dtype=torch.float32, device=volume.device)
    result[(slice(None), *(slice(a, b) for a, b in region))] = region_output
    return result
