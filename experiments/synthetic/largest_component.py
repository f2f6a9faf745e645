"""Dice of predictions as written, and after keeping only the whole tumor's largest component.

python experiments/synthetic/largest_component.py PREDICTIONS LABELS
PREDICTIONS holds <case>.nii.gz, LABELS the case folders (BraTS 2020 naming). A what-if for the
post-processing, to be decided on generated cases; it changes no prediction on disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REGIONS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def largest_component(label: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(label > 0)
    if count <= 1:
        return label
    sizes = ndimage.sum_labels(label > 0, components, np.arange(1, count + 1))
    return np.where(components == 1 + int(np.argmax(sizes)), label, 0)


def main() -> None:
    predictions, labels = Path(sys.argv[1]), Path(sys.argv[2])
    rows = {"as written": [], "largest component": []}
    for path in sorted(predictions.glob("*.nii.gz")):
        case = path.name.removesuffix(".nii.gz")
        folder = labels if labels.name == case else labels / case
        truth = np.asanyarray(nib.load(folder / f"{case}_seg.nii.gz").dataobj)
        predicted = np.asanyarray(nib.load(path).dataobj)
        for name, candidate in (
            ("as written", predicted),
            ("largest component", largest_component(predicted)),
        ):
            rows[name].append(
                [dice(np.isin(candidate, v), np.isin(truth, v)) for v in REGIONS.values()]
            )
    for name, values in rows.items():
        mean = np.mean(values, axis=0)
        print(
            f"{name:18s} "
            + "  ".join(f"{r.upper()} {m:.3f}" for r, m in zip(REGIONS, mean, strict=True))
            + f"  ({len(values)} cases)"
        )


if __name__ == "__main__":
    main()
