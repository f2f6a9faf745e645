"""Healthy look-alikes of tumor: where they lie, how they look, that they are labelled healthy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cascade.synthesis import mimics
from cascade.synthesis.fields import smooth_noise
from cascade.synthesis.realistic import generate_realistic

SHAPE = (96, 96, 62)  # 2.5 mm voxels over the BraTS field of view
MM = 2.5


@pytest.fixture(scope="module")
def case():
    return generate_realistic(SHAPE, seed=5)


def _fractions(case, seed: int) -> tuple[tuple[slice, ...], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inside = case.anatomy.brain >= 0.5
    box = ndimage.find_objects(inside.astype(np.uint8))[0]
    shape = inside[box].shape

    def field(cell_mm: float) -> np.ndarray:
        return smooth_noise(rng, shape, cell_mm / MM)

    return box, mimics.mimic_fractions(case.anatomy, box, field, rng, MM)


def test_look_alikes_are_fractions_in_their_tissue(case) -> None:
    seen = set()
    for seed in range(8):
        box, fractions = _fractions(case, seed)
        seen |= set(fractions)
        for fraction in fractions.values():
            assert fraction.dtype == np.float32
            assert fraction.min() >= 0.0 and fraction.max() <= 1.0
            assert (fraction[case.anatomy.brain[box] < 0.5] == 0).all()
        if "white_matter_lesions" in fractions:
            lesions = fractions["white_matter_lesions"]
            assert lesions.max() > 0.5
            assert (lesions[case.anatomy.wm[box] == 0] == 0).all()
        if "csf_flow" in fractions:
            assert (fractions["csf_flow"][case.anatomy.ventricles[box] == 0] == 0).all()
        if "surface_residue" in fractions:
            deep = case.anatomy.depth_mm[box] > 3.0
            assert (fractions["surface_residue"][deep] == 0).all()
    # each kind occurs, and not in every case
    assert seen == {"white_matter_lesions", "csf_flow", "surface_residue"}
    _, again = _fractions(case, 0)
    _, first = _fractions(case, 0)
    assert again.keys() == first.keys()
    assert all(np.array_equal(again[k], first[k]) for k in first)


def _periventricular_flair_ratio(case) -> float:
    """Median FLAIR of healthy white matter beside the ventricles over that of deep white matter."""
    healthy = case.label == 0
    ventricles = case.anatomy.ventricles > 0.5
    white = case.anatomy.wm > 0.6
    beside = ndimage.binary_dilation(ventricles) & ~ventricles & white & healthy
    away = ~ndimage.binary_dilation(ventricles, iterations=4) & white & healthy
    flair = case.images["flair"]
    return float(np.median(flair[beside]) / np.median(flair[away]))


def test_white_matter_lesions_make_periventricular_tissue_flair_bright_yet_healthy(
    monkeypatch,
) -> None:
    """Without the lesions, white matter by the ventricles is no brighter on FLAIR than deep
    white matter (partial volume with CSF); with them it is, and it stays labelled 0."""
    without, with_lesions = [], []
    for seed in range(3):
        monkeypatch.setattr(mimics, "_PROBABILITY", dict.fromkeys(mimics._PROBABILITY, 0.0))
        without.append(_periventricular_flair_ratio(generate_realistic(SHAPE, seed=seed)))
        forced = {**dict.fromkeys(mimics._PROBABILITY, 0.0), "white_matter_lesions": 1.0}
        monkeypatch.setattr(mimics, "_PROBABILITY", forced)
        with_lesions.append(_periventricular_flair_ratio(generate_realistic(SHAPE, seed=seed)))
    assert np.mean(with_lesions) > np.mean(without) + 0.05, (with_lesions, without)
