"""How much smoother a scan is across axial slices than within them, without reading a label.

python experiments/synthetic/slice_thickness.py CASES [--picture OUT.png]
CASES: case or dataset folders of any supported release. Per case and sequence: the median
absolute difference of neighbouring brain voxels along each axis, over the median absolute
deviation of the brain's intensities, and the ratio of the through-plane (z) figure to the
left-right (x) one. A scan acquired in 1 mm isotropic voxels gives a ratio near 1; one acquired
in thick axial slices and resampled to 1 mm gives less, since its noise and edges were
interpolated between slices.
--picture draws a coronal FLAIR slice of every case side by side, where the slices show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cascade.data.cases import MODALITIES, Case, read_modality
from cascade.data.discovery import scan_cases


def neighbour_change(volume: np.ndarray) -> tuple[float, float, float]:
    """Median |difference| of neighbouring brain voxels (both > 0) along x, y, z, in units of
    the brain's median absolute deviation."""
    brain = volume > 0
    values = volume[brain]
    spread = float(np.median(np.abs(values - np.median(values))))
    changes = []
    for axis in range(3):
        moved, inside = np.moveaxis(volume, axis, 0), np.moveaxis(brain, axis, 0)
        both = inside[1:] & inside[:-1]
        changes.append(float(np.median(np.abs(moved[1:] - moved[:-1])[both])) / spread)
    return changes[0], changes[1], changes[2]


def title(case: Case) -> str:
    """The case id after its dataset folder's name (generated sets reuse ids)."""
    return f"{case.images['flair'].parent.parent.name}/{case.case_id}"


def save_picture(cases: list[Case], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(cases), figsize=(3.0 * len(cases), 2.6))
    for axis, case in zip(np.atleast_1d(axes), cases, strict=True):
        flair = read_modality(case, "flair").astype(np.float32)
        y = int(np.argmax((flair > 0).sum(axis=(0, 2))))  # the widest coronal slice
        section = flair[:, y, :].T[::-1]  # superior up
        low, high = np.percentile(flair[flair > 0], [0.5, 99.5])
        axis.imshow(np.clip((section - low) / (high - low), 0, 1), cmap="gray", aspect="equal")
        axis.set_title(f"{title(case)}: FLAIR, coronal", fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path, nargs="+", help="case folders or dataset folders")
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    cases = []
    for root in args.cases:
        found, problems = scan_cases(root)
        for problem in problems:
            print(f"skipped: {problem}")
        cases += found
    print("| case | " + " | ".join(f"{m} x / y / z (z/x)" for m in MODALITIES) + " |")
    print("|---|" + "---|" * len(MODALITIES))
    for case in cases:
        cells = []
        for modality in MODALITIES:
            x, y, z = neighbour_change(read_modality(case, modality).astype(np.float32))
            cells.append(f"{x:.2f} / {y:.2f} / {z:.2f} ({z / x:.2f})")
        print(f"| {title(case)} | " + " | ".join(cells) + " |")
    if args.picture is not None:
        save_picture(cases, args.picture)
        print(f"wrote {args.picture}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
