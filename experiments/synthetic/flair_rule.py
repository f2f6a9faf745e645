"""The one-line baseline: whole tumor = FLAIR robust z-score above 2, largest connected component.

python experiments/synthetic/flair_rule.py ../shared/data/real/TCGA-FG-6692
Prints its whole-tumor Dice against the case's label (a reference figure, tunes nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def robust_z(flair: np.ndarray) -> np.ndarray:
    """FLAIR as a robust z-score over the brain (FLAIR > 0): median and scaled MAD."""
    values = flair[flair > 0]
    median = np.median(values)
    return (flair - median) / (1.4826 * np.median(np.abs(values - median)))


def flair_rule(flair: np.ndarray, threshold: float = 2.0) -> np.ndarray:
    brain = flair > 0
    components, count = ndimage.label(brain & (robust_z(flair) > threshold))
    if count == 0:
        return np.zeros(flair.shape, bool)
    sizes = ndimage.sum_labels(np.ones(flair.shape), components, np.arange(1, count + 1))
    return components == 1 + int(np.argmax(sizes))


def main() -> None:
    folder = Path(sys.argv[1])
    case = folder.name
    flair = nib.load(folder / f"{case}_flair.nii.gz").get_fdata()
    truth = np.asanyarray(nib.load(folder / f"{case}_seg.nii.gz").dataobj) > 0
    predicted = flair_rule(flair)
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    print(
        f"{case}: FLAIR rule WT Dice {dice:.3f} ({predicted.sum() / 1000:.1f} mL predicted, "
        f"{truth.sum() / 1000:.1f} mL true)"
    )


if __name__ == "__main__":
    main()
