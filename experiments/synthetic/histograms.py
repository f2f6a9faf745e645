"""Intensity histograms of generated cases against the real case's images (never its label).

Each sequence is normalised as the pipeline does (0.5/99.5 percentile clip, MAD z-score inside
the brain). Per sequence: the 1-Wasserstein distance between the real brain's and each generated
brain's intensities, and label-free tissue classes (3-means on T1, applied to all four sequences)
with each class's median.

python experiments/synthetic/histograms.py --real ../shared/data/real/TCGA-FG-6692 --cases 4 \
    --generator realistic --out experiments/synthetic/histograms_realistic.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.stats import wasserstein_distance

from cascade.data.cases import MODALITIES
from cascade.synthesis.dataset import case_seed
from cascade.synthesis.phantom import generate_case as phantom_case
from cascade.synthesis.realistic import generate_case as realistic_case

GENERATORS = {"realistic": realistic_case, "phantom": phantom_case}


def normalise(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    values = image[brain].astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    values = np.clip(values, low, high)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    return (values - median) / (1.4826 * mad)


def tissue_medians(z: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """3-means on T1 (CSF, GM, WM by rising T1), each class's median on every sequence."""
    t1 = z["t1"][:, None]
    start = np.percentile(t1, [5, 40, 80])[:, None]
    centres, classes = kmeans2(t1, start, minit="matrix", seed=0)
    order = np.argsort(centres[:, 0])
    return {m: [float(np.median(v[classes == k])) for k in order] for m, v in z.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--generator", choices=list(GENERATORS), default="realistic")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000, help="base seed (not the demo's 0)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    case = args.real.name
    real_images = {m: nib.load(args.real / f"{case}_{m}.nii.gz").get_fdata() for m in MODALITIES}
    brain = real_images["t1"] != 0
    real = {m: normalise(real_images[m], brain) for m in MODALITIES}
    generated = []
    for index in range(args.cases):
        images, _ = GENERATORS[args.generator]((240, 240, 155), case_seed(args.seed, index))
        mask = images["t1"] != 0
        generated.append({m: normalise(images[m], mask) for m in MODALITIES})

    figure, axes = plt.subplots(1, 4, figsize=(14, 3))
    bins = np.linspace(-6, 8, 141)
    print(
        f"| sequence | W1 real vs {args.generator} (z units), mean over {args.cases} cases |"
        " real CSF/GM/WM medians | generated CSF/GM/WM medians |"
    )
    print("|---|---|---|---|")
    real_tissues = tissue_medians(real)
    gen_tissues = [tissue_medians(g) for g in generated]
    for axis, m in zip(axes, MODALITIES, strict=True):
        distance = np.mean([wasserstein_distance(real[m], g[m]) for g in generated])
        axis.hist(real[m], bins, density=True, histtype="step", color="k", label="real")
        axis.hist(
            np.concatenate([g[m] for g in generated]),
            bins,
            density=True,
            histtype="step",
            color="tab:orange",
            label=args.generator,
        )
        axis.set_title(f"{m}: W1 {distance:.2f}")
        gen = np.mean([t[m] for t in gen_tissues], axis=0)
        print(
            f"| {m} | {distance:.2f} | {' / '.join(f'{v:.2f}' for v in real_tissues[m])} |"
            f" {' / '.join(f'{v:.2f}' for v in gen)} |"
        )
    axes[0].legend()
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
