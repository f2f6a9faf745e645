"""Volumes whose voxel values encode their own coordinates, exactly in float16."""

from __future__ import annotations

import numpy as np

# x * 64 + y * 8 + z + modality * 512 stays an exact float16 integer (< 2048) for extents <= 8
STRIDES = (64, 8, 1)
MODALITY_STEP = 512


def coded_image(shape: tuple[int, int, int]) -> np.ndarray:
    """float32 (4, X, Y, Z) with value = x*64 + y*8 + z + 1 + modality*512 (0 means outside)."""
    assert max(shape) <= 7
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    code = sum(axis * stride for axis, stride in zip(grid, STRIDES, strict=True)) + 1
    return np.stack([code + m * MODALITY_STEP for m in range(4)]).astype(np.float32)


def decode(values: np.ndarray) -> np.ndarray:
    """Codes of modality 0 (..., ) -> (..., 3) coordinates; -1 where the value is 0 (outside)."""
    code = values.astype(np.int64) - 1
    coordinates = np.stack([code // 64, code // 8 % 8, code % 8], axis=-1)
    return np.where((values == 0)[..., None], -1, coordinates)
