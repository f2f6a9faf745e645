"""BraTS label conventions and tumor regions.

Inside the code a segmentation is always in *classes* 0..3:
0 background, 1 necrotic / non-enhancing core, 2 edema, 3 enhancing tumor.
Files use their dataset's convention (enhancing tumor = 4 up to BraTS 2021, = 3 from 2023);
conversion happens only when reading and writing NIfTI.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

NUM_CLASSES = 4
CLASS_NAMES = ("background", "necrosis", "edema", "enhancing")

# Tumor regions evaluated by BraTS, as sets of internal classes.
REGIONS: dict[str, tuple[int, ...]] = {
    "wt": (1, 2, 3),  # whole tumor
    "tc": (1, 3),  # tumor core
    "et": (3,),  # enhancing tumor
}


class LabelConvention(str, Enum):
    """How a dataset's label file encodes enhancing tumor."""

    BRATS2020 = "brats2020"  # labels 0, 1, 2, 4 (BraTS 2018-2021)
    BRATS2023 = "brats2023"  # labels 0, 1, 2, 3 (BraTS 2023+)

    @property
    def enhancing_value(self) -> int:
        return 4 if self is LabelConvention.BRATS2020 else 3

    @property
    def allowed_values(self) -> tuple[int, ...]:
        return (0, 1, 2, self.enhancing_value)


def to_classes(labels: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """File labels -> internal classes 0..3 (uint8). Values must already be valid."""
    classes = np.asarray(labels).astype(np.uint8, copy=True)
    if convention is LabelConvention.BRATS2020:
        classes[classes == 4] = 3
    return classes


def from_classes(classes: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Internal classes 0..3 -> file labels of the given convention (uint8)."""
    labels = np.asarray(classes).astype(np.uint8, copy=True)
    if convention is LabelConvention.BRATS2020:
        labels[labels == 3] = 4
    return labels


def region_masks(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of WT, TC and ET from a class map (any shape)."""
    return {name: np.isin(classes, members) for name, members in REGIONS.items()}
