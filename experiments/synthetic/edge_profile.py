"""How FLAIR brightness falls across a whole-tumor outline, without reading a real label.

python experiments/synthetic/edge_profile.py CASES [PREDICTIONS]
CASES holds case folders (or is one). With PREDICTIONS (<case>.nii.gz), the outline is the
prediction's, so a real case's label steers nothing; without, it is the case's own label (for
generated cases). Per case: the median FLAIR robust z-score (flair_rule.py's) in 2 mm shells by
signed distance to the outline, negative inside. A real hyperintensity that still falls for
millimetres outside a model's outline is edema the model stops short of.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from flair_rule import robust_z
from scipy import ndimage

SHELL_MM = 2.0
EDGES_MM = np.arange(-8.0, 12.0 + SHELL_MM, SHELL_MM)


def edge_profile(flair: np.ndarray, tumor: np.ndarray, spacing: np.ndarray) -> list[float]:
    """Median FLAIR z per shell of EDGES_MM (signed distance to `tumor`'s outline, in mm), inside
    the brain (FLAIR > 0); NaN for an empty shell."""
    brain = flair > 0
    z = robust_z(flair)
    inside = ndimage.distance_transform_edt(tumor, sampling=spacing)
    outside = ndimage.distance_transform_edt(~tumor, sampling=spacing)
    signed = np.where(tumor, 0.5 - inside, outside - 0.5)
    profile = []
    for low, high in zip(EDGES_MM[:-1], EDGES_MM[1:], strict=True):
        shell = brain & (signed >= low) & (signed < high)
        profile.append(float(np.median(z[shell])) if shell.any() else float("nan"))
    return profile


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    cases = Path(argv[0])
    predictions = Path(argv[1]) if len(argv) == 2 else None
    folders = [cases] if any(cases.glob("*_flair.nii*")) else sorted(cases.iterdir())
    shells = "  ".join(f"{low:+.0f}" for low in EDGES_MM[:-1])
    print(f"case  median FLAIR z in 2 mm shells from (mm, - inside): {shells}")
    for folder in folders:
        flair_file = next(folder.glob("*_flair.nii*"), None)
        outline_file = (
            predictions / f"{folder.name}.nii.gz"
            if predictions
            else next(folder.glob("*_seg.nii*"), None)
        )
        if flair_file is None or outline_file is None or not outline_file.exists():
            continue
        image = nib.load(flair_file)
        tumor = np.asarray(nib.load(outline_file).dataobj) > 0
        if not tumor.any():
            continue
        spacing = np.asarray(image.header.get_zooms()[:3], float)
        profile = edge_profile(np.asarray(image.dataobj, np.float32), tumor, spacing)
        print(f"{folder.name}  " + "  ".join(f"{value:+.1f}" for value in profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
