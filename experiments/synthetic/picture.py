"""A generated case beside the real case, all four sequences (and the label of the generated one).

python experiments/synthetic/picture.py --real ../shared/data/real/TCGA-FG-6692 --seed 3 \
    --out experiments/synthetic/generated_vs_real.png
--prediction <a prediction of the real case> adds the model's segmentation of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from cascade.data.cases import MODALITIES
from cascade.synthesis.realistic import generate_realistic

_COLOURS = {1: (1.0, 0.1, 0.1), 2: (0.1, 0.9, 0.1), 4: (1.0, 0.9, 0.0)}


def _window(image: np.ndarray) -> np.ndarray:
    brain = image[image > 0]
    low, high = np.percentile(brain, [0.5, 99.5]) if brain.size else (0, 1)
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def _overlay(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    rgb = np.repeat(_window(image)[..., None], 3, axis=-1)
    for value, colour in _COLOURS.items():
        rgb[label == value] = 0.5 * rgb[label == value] + 0.5 * np.asarray(colour)
    return rgb


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of an LPS volume, radiological: anterior up, the patient's right left."""
    return np.swapaxes(volume[:, :, z], 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--prediction", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    case = generate_realistic(seed=args.seed)
    real_id = args.real.name
    real = {
        m: np.asanyarray(nib.load(args.real / f"{real_id}_{m}.nii.gz").dataobj) for m in MODALITIES
    }
    z_gen = int(np.argmax((case.label > 0).sum(axis=(0, 1))))
    z_real = int(
        np.argmax(
            (real["flair"] > np.percentile(real["flair"][real["flair"] > 0], 98)).sum(axis=(0, 1))
        )
    )
    prediction = None
    if args.prediction is not None:
        prediction = np.asanyarray(nib.load(args.prediction).dataobj).astype(np.uint8)
    rows = [
        ("generated", case.images, case.label, z_gen, "generated: its label on FLAIR"),
        ("real TCGA-FG-6692", real, prediction, z_real, "real: the model's segmentation"),
    ]
    columns = len(MODALITIES) + 1
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)))
    for row, (title, images, label, z, label_title) in zip(axes, rows, strict=True):
        for axis, modality in zip(row, MODALITIES, strict=False):
            axis.imshow(_axial(_window(images[modality]), z), cmap="gray")
            axis.set_title(f"{title}: {modality}", fontsize=8)
        if label is not None:
            row[-1].imshow(_axial(_overlay(images["flair"], label), z))
            row[-1].set_title(label_title, fontsize=8)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
