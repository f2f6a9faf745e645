"""2.5D slabs (k adjacent slices x 4 modalities) along several views: the conventions shared by
training (``cascade.sampling.slabs``) and inference (``cascade.inference.multiview``).

A slab is k slices around a centre slice along the view's axis, zero-padded past the volume
(zero is background after the z-score), its plane's two axes in increasing order; its k slices
move into channels in *modality-major* order: channel = modality * k + slice (`slab_channels`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from torch import Tensor

# Spatial axis of (X, Y, Z) that each view slices along.
VIEW_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


class CaseStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...  # float32 (4, X, Y, Z)
    def label(self, case_id: str) -> np.ndarray | None: ...  # uint8 (X, Y, Z)


def view_axis(view: str) -> int:
    """Spatial axis (0 = X, 1 = Y, 2 = Z) the view slices along."""
    if view not in VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEW_AXES)}")
    return VIEW_AXES[view]


def slab_channels(slabs: Tensor) -> Tensor:
    """(..., 4, H, W, k) slabs -> (..., 4 * k, H, W), channel = modality * k + slice."""
    return slabs.movedim(-1, -3).flatten(-4, -3)
