"""Generated cases that look like real MRI: template anatomy, a grown glioma, four sequences.

The order matters: the tumor is planned (seed and size) before the anatomy is resampled, so its
mass effect can push the surrounding tissue aside in the same resampling; it then grows through
the displaced anatomy, and the sequences are rendered from both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascade.synthesis import anatomy, mri_contrast, tumor_growth
from cascade.synthesis.fields import BRATS_SHAPE
from cascade.synthesis.variation import NO_VARIATION, ScanVariation

MIN_SIZE = 48  # coarser grids lose the cortex the template is for
_SECOND_FOCUS_MM = (15.0, 35.0)


@dataclass(frozen=True)
class RealisticCase:
    """images: modality -> int16 (X, Y, Z); label: uint8 BraTS 2020 values; the anatomy and
    the plan it was drawn from (for tests and pictures)."""

    images: dict[str, np.ndarray]
    label: np.ndarray
    anatomy: anatomy.Anatomy
    plan: tumor_growth.TumorPlan


def generate_realistic(
    shape: Sequence[int] = BRATS_SHAPE, seed: int = 0, variation: ScanVariation = NO_VARIATION
) -> RealisticCase:
    """Draw one case on a grid of `shape` spanning the BraTS field of view (1 mm at 240^2 x 155);
    `variation`: what it may vary beyond the defaults (`mri_contrast.render_sequences`)."""
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3 or min(shape) < MIN_SIZE:
        raise ValueError(f"realistic shape must be 3 sizes of at least {MIN_SIZE}, got {shape}")
    rng = np.random.default_rng(seed)
    placement = anatomy.draw_placement(rng, shape)
    main = anatomy.draw_seed(rng, placement)
    plan = tumor_growth.draw_plan(rng, main, _second_focus(rng, placement, main))
    mass_effect = anatomy.MassEffect(
        center=main,
        radius_mm=plan.mass_effect_ratio * tumor_growth.core_radius_mm(plan),
        reach_mm=float(rng.uniform(40.0, 70.0)),
    )
    tissue = anatomy.resample_anatomy(placement, shape, mass_effect)
    tumor = tumor_growth.grow_tumor(tissue, plan, placement.to_brats, rng)
    images = mri_contrast.render_sequences(tissue, tumor.label, placement.to_brats, rng, variation)
    return RealisticCase(images=images, label=tumor.label, anatomy=tissue, plan=plan)


def generate_case(
    shape: Sequence[int] = BRATS_SHAPE, seed: int = 0, variation: ScanVariation = NO_VARIATION
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """modality -> int16 (X, Y, Z) volume, and uint8 BraTS 2020 labels (X, Y, Z)."""
    case = generate_realistic(shape, seed, variation)
    return case.images, case.label


def _second_focus(
    rng: np.random.Generator, placement: anatomy.Placement, main: np.ndarray
) -> np.ndarray | None:
    """Another white-matter seed 15-35 mm from the main one, or None if none is found quickly."""
    for _ in range(30):
        other = anatomy.draw_seed(rng, placement)
        distance = np.linalg.norm((other - main) * placement.to_brats)
        if _SECOND_FOCUS_MM[0] <= distance <= _SECOND_FOCUS_MM[1]:
            return other
    return None
