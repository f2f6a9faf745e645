"""Healthy structures that look like tumor on one sequence: the negatives a glioma model must learn.

Without them, "bright on FLAIR" means tumor in every generated case, and a network trained on
them fires on whatever is bright on a real scan's FLAIR. Each is labelled background:

- white-matter hyperintensities: periventricular caps and rims, and patchy deep lesions of
  small vessel disease (common in glioma patients, who are mostly past 50); bright on T2 and
  FLAIR, slightly dark on T1, never enhancing;
- CSF flow: ventricular CSF that the FLAIR inversion did not null;
- surface residue: meninges and fat left at the brain's edge by skull stripping, bright on T1,
  T1ce and FLAIR.

Each case draws whether it has each one and how much; fractions are in the brain's box.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cascade.synthesis.anatomy import Anatomy
from cascade.synthesis.fields import smooth_noise

# Chance that a case has each look-alike.
_PROBABILITY: dict[str, float] = {
    "white_matter_lesions": 0.8,
    "csf_flow": 0.4,
    "surface_residue": 0.6,
}
# Mean intensity ranges relative to white matter (= 1); a sequence a look-alike does not change
# is left out.
# fmt: off
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "white_matter_lesions": {"t1": (0.70, 0.95), "t1ce": (0.70, 0.95), "t2": (1.40, 2.40), "flair": (1.30, 2.10)},  # noqa: E501
    "csf_flow":             {"flair": (0.50, 1.30)},  # noqa: E501
    "surface_residue":      {"t1": (1.00, 1.80), "t1ce": (1.10, 2.00), "t2": (0.60, 1.60), "flair": (0.90, 1.80)},  # noqa: E501
}
# fmt: on

Field = Callable[[float], np.ndarray]  # a smooth unit-variance field of a cell size in mm


def draw_mimic_means(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per look-alike, the sequences it changes and its mean intensity on each."""
    return {
        name: {modality: float(rng.uniform(*r)) for modality, r in ranges.items()}
        for name, ranges in _RANGES.items()
    }


def mimic_fractions(
    anatomy: Anatomy, box: tuple[slice, ...], field: Field, rng: np.random.Generator, mm: float
) -> dict[str, np.ndarray]:
    """Per look-alike a case has, its fraction (float32 0..1) in each voxel of `box`."""
    makers = {
        "white_matter_lesions": _white_matter_lesions,
        "csf_flow": _csf_flow,
        "surface_residue": _surface_residue,
    }
    fractions = {}
    for name, make in makers.items():
        if rng.random() < _PROBABILITY[name]:
            fractions[name] = make(anatomy, box, field, rng, mm).astype(np.float32)
    return fractions


def _white_matter_lesions(
    anatomy: Anatomy, box: tuple[slice, ...], field: Field, rng: np.random.Generator, mm: float
) -> np.ndarray:
    """Periventricular caps and rims of uneven width, and deep patches, all in white matter."""
    ventricles = anatomy.ventricles[box] > 0.5
    wm = anatomy.wm[box]
    if ventricles.any():
        distance = ndimage.distance_transform_edt(~ventricles).astype(np.float32) * np.float32(mm)
        width = np.float32(rng.uniform(2.0, 9.0)) * np.clip(1.0 + 0.6 * field(15.0), 0.2, 2.0)
        rim = np.clip(1.0 - distance / width, 0.0, 1.0) * (distance > 0)
    else:
        rim = np.zeros(wm.shape, np.float32)
    # Deep lesions: where a fine field crosses a threshold; a low threshold is a heavy burden.
    threshold = np.float32(rng.uniform(1.4, 2.8))
    deep = np.clip((field(5.0) - threshold) / 0.4, 0.0, 1.0)
    strength = np.float32(rng.uniform(0.6, 1.0))
    return np.clip(np.maximum(rim, deep) * wm * strength, 0.0, 1.0)


def _csf_flow(
    anatomy: Anatomy, box: tuple[slice, ...], field: Field, rng: np.random.Generator, mm: float
) -> np.ndarray:
    """Blotches of the ventricles where flowing CSF escaped the inversion pulse."""
    return anatomy.ventricles[box] * np.clip(field(8.0) - np.float32(rng.uniform(0.0, 1.0)), 0, 1)


def _surface_residue(
    anatomy: Anatomy, box: tuple[slice, ...], field: Field, rng: np.random.Generator, mm: float
) -> np.ndarray:
    """A thin, broken layer under the brain's surface."""
    thickness = np.float32(rng.uniform(1.0, 3.0))
    layer = np.clip(1.0 - anatomy.depth_mm[box] / thickness, 0.0, 1.0)
    coverage = np.clip(1.5 * field(25.0) - np.float32(rng.uniform(-0.5, 1.0)), 0.0, 1.0)
    return layer * coverage * (anatomy.brain[box] >= 0.5)


# Faint hyperintensity of healthy tissue (`faint_hyperintensity`): mean intensity ranges relative
# to white matter, the size of its patches and how deep they lie.
_FAINT_RANGES = {
    "t1": (0.75, 0.95),
    "t1ce": (0.80, 1.00),
    "t2": (1.10, 1.45),
    "flair": (1.10, 1.45),
}
_FAINT_CELL_MM = (6.0, 14.0)
_FAINT_MIN_DEPTH_MM = 6.0


def faint_hyperintensity(
    anatomy: Anatomy, box: tuple[slice, ...], rng: np.random.Generator, mm: float, chance: float
) -> tuple[np.ndarray, dict[str, float]] | None:
    """With probability `chance`, patches of healthy grey and white matter 10-45 % brighter than
    white matter on FLAIR and T2 (fraction in `box`, means per sequence); else None.

    A model's stray tumor on a real brain sits on tissue this bright (the insulae, claustra and
    the tissue along the lateral ventricles of TCGA-FG-6692, read without its label): fainter
    than the white-matter lesions above, as faint as the edge of edema, so only context tells
    them apart."""
    if chance <= 0.0 or rng.random() >= chance:
        return None
    means = {modality: float(rng.uniform(*r)) for modality, r in _FAINT_RANGES.items()}
    cell = rng.uniform(*_FAINT_CELL_MM) / mm
    threshold = np.float32(rng.uniform(0.6, 1.8))
    patches = np.clip((smooth_noise(rng, anatomy.wm[box].shape, cell) - threshold) / 0.5, 0, 1)
    tissue = np.clip(anatomy.wm[box] + anatomy.gm[box], 0.0, 1.0)
    deep = anatomy.depth_mm[box] > _FAINT_MIN_DEPTH_MM
    return (patches * tissue * deep).astype(np.float32), means
