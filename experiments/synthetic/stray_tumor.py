"""Where a model predicts tumor outside its largest whole-tumor component, without any label.

python experiments/synthetic/stray_tumor.py PREDICTIONS CASES
PREDICTIONS holds <case>.nii.gz, CASES the case folders (their FLAIR gives the brain mask). Per
case: the number of whole-tumor components, the largest one's volume and height in the brain,
and the volume outside it
("stray"), split by brain height (lower, middle, upper third of the brain's axial extent) and by
depth (within 5 mm of the brain's surface or deeper). Reads no label, so it may be run on a real
case whose label must not steer anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

_SURFACE_MM = 5.0


def stray_summary(prediction: np.ndarray, brain: np.ndarray, spacing: np.ndarray) -> dict:
    """Volumes in mL of the whole tumor's components; `brain` a boolean mask (X, Y, Z)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tumor = prediction > 0
    components, count = ndimage.label(tumor)
    sizes = ndimage.sum_labels(tumor, components, np.arange(1, count + 1)) if count else []
    largest = 1 + int(np.argmax(sizes)) if count else 0
    stray = tumor & (components != largest)
    heights = np.flatnonzero(brain.any(axis=(0, 1)))
    low, high = (heights[0], heights[-1]) if heights.size else (0, brain.shape[2] - 1)
    thirds = np.linspace(low, high + 1, 4).astype(int)
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    by_height = [float(stray[:, :, thirds[k] : thirds[k + 1]].sum()) * voxel_ml for k in range(3)]
    centre = ndimage.center_of_mass(components == largest)[2] if count else np.nan
    return {
        "components": int(count),
        # 0 at the brain's lowest slice, 1 at its highest
        "largest_height": float((centre - low) / max(high - low, 1)),
        "largest_ml": float(max(sizes, default=0.0)) * voxel_ml,
        "stray_ml": float(stray.sum()) * voxel_ml,
        "stray_lower_middle_upper_ml": by_height,
        "stray_near_surface_ml": float((stray & (depth <= _SURFACE_MM)).sum()) * voxel_ml,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    predictions, cases = Path(argv[0]), Path(argv[1])
    folders = [cases] if any(cases.glob("*_flair.nii*")) else sorted(cases.iterdir())
    print(
        "case  components  largest mL (height)  stray mL (lower / middle / upper)  near surface mL"
    )
    for folder in folders:
        flair = next(folder.glob("*_flair.nii*"), None)
        prediction = predictions / f"{folder.name}.nii.gz"
        if flair is None or not prediction.exists():
            continue
        image = nib.load(flair)
        predicted = np.asarray(nib.load(prediction).dataobj)
        brain = np.asarray(image.dataobj) > 0
        s = stray_summary(predicted, brain, np.asarray(image.header.get_zooms()[:3], float))
        lower, middle, upper = s["stray_lower_middle_upper_ml"]
        print(
            f"{folder.name}  {s['components']}  {s['largest_ml']:.1f} ({s['largest_height']:.2f})  "
            f"{s['stray_ml']:.1f}  "
            f"({lower:.1f} / {middle:.1f} / {upper:.1f})  {s['stray_near_surface_ml']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
