"""A case predicted as stored and again after reorienting and resampling it (any grid in, the
input's grid out), compared in physical space.

    python experiments/geometry/resampled_case.py --checkpoint CKPT --case CASE_FOLDER \
        --workdir /tmp/geometry [--orientation RAS] [--spacing 0.5 0.5 4]

Writes the resampled copy of the case (TorchIO: reorient, then resample), predicts both with
`python -m cascade.predict`, brings the second prediction back onto the first one's grid with
nearest-neighbour resampling in physical space, and prints WT/TC/ET Dice between the two.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torchio as tio

from cascade.data.cases import MODALITIES
from cascade.data.discovery import discover_cases


def write_resampled(case_folder: Path, out: Path, orientation: str, spacing: list[float]) -> Path:
    (case,) = discover_cases(case_folder)
    out.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        image = tio.ToOrientation(orientation)(tio.ScalarImage(case.images[modality]))
        if not np.allclose(image.spacing, spacing):  # a same-spacing resample would interpolate
            image = tio.Resample(tuple(spacing))(image)
        image.save(out / case.images[modality].name)
    return out


def predict(checkpoint: Path, case_folder: Path, output: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "cascade.predict", "--checkpoint", str(checkpoint),
         "--input", str(case_folder), "--output", str(output), "--device", "cpu", "--overwrite"],
        check=True,
    )  # fmt: skip
    (written,) = output.glob("*.nii.gz")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--orientation", default="RAS")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.5, 0.5, 4.0])
    args = parser.parse_args()

    resampled = write_resampled(
        args.case, args.workdir / "resampled" / args.case.name, args.orientation, args.spacing
    )
    stored = predict(args.checkpoint, args.case, args.workdir / "as-stored")
    moved = predict(args.checkpoint, resampled, args.workdir / "from-resampled")
    reference = tio.LabelMap(stored)
    back = tio.Resample(reference)(tio.LabelMap(moved)).data[0].numpy()
    (case,) = discover_cases(args.case)
    first = case.scheme.to_classes(np.asanyarray(nib.load(stored).dataobj))
    back = case.scheme.to_classes(back)
    print(f"resampled case: {nib.load(next(resampled.glob('*'))).shape} voxels, "
          f"{'x'.join(f'{s:g}' for s in args.spacing)} mm, {args.orientation}")  # fmt: skip
    for region, masks in case.scheme.region_masks(first).items():
        moved_mask = case.scheme.region_masks(back)[region]
        total = masks.sum() + moved_mask.sum()
        dice = 2 * np.logical_and(masks, moved_mask).sum() / total if total else 1.0
        print(f"{region.upper()} Dice between the two predictions: {dice:.4f}")


if __name__ == "__main__":
    main()
