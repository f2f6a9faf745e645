"""Healthy look-alikes of tumor: where they lie, how they look, that they are labelled healthy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cascade.synthesis import mimics
from cascade.synthesis.fields import smooth_noise
from cascade.synthesis.realistic import generate_realistic
from cascade.synthesis.variation import ScanVariation

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


def _faint(case, seed: int, chance: float = 0.7):
    inside = case.anatomy.brain >= 0.5
    box = ndimage.find_objects(inside.astype(np.uint8))[0]
    rng = np.random.default_rng(seed)
    return box, mimics.faint_hyperintensity(case.anatomy, box, rng, MM, chance)


def test_faint_patches_lie_deep_in_tissue_at_a_faint_brightness(case) -> None:
    drawn = [_faint(case, seed) for seed in range(10)]
    present = [(box, faint) for box, faint in drawn if faint is not None]
    assert 0 < len(present) < len(drawn)  # some cases have them, not all
    assert all(_faint(case, seed, chance=0.0)[1] is None for seed in range(10))
    for box, (fraction, means) in present:
        assert fraction.dtype == np.float32
        assert fraction.min() >= 0.0 and fraction.max() <= 1.0
        assert fraction.max() > 0.5
        tissue = case.anatomy.wm[box] + case.anatomy.gm[box]
        assert (fraction[tissue == 0] == 0).all()
        assert (fraction[case.anatomy.depth_mm[box] <= 6.0] == 0).all()
        # brighter than white matter on FLAIR and T2, no brighter than faint edema
        assert 1.1 <= means["flair"] <= 1.45 and 1.1 <= means["t2"] <= 1.45
        assert means["t1"] < 1.0
    seed = next(s for s, (_, faint) in enumerate(drawn) if faint is not None)
    _, again = _faint(case, seed)
    first = drawn[seed][1]
    assert np.array_equal(again[0], first[0]) and again[1] == first[1]


def test_faint_patches_brighten_healthy_tissue_and_nothing_else() -> None:
    """The same seed with and without: the same label, FLAIR and T2 brighter where the patches
    lie, and every voxel beyond the blur's reach of them unchanged (the patches draw from their
    own generator)."""
    plain = generate_realistic(SHAPE, seed=2)
    faint = generate_realistic(SHAPE, seed=2, variation=ScanVariation(faint_patches=1.0))
    assert np.array_equal(plain.label, faint.label)
    inside = plain.anatomy.brain >= 0.5
    box = ndimage.find_objects(inside.astype(np.uint8))[0]
    fraction, _ = mimics.faint_hyperintensity(plain.anatomy, box, _faint_child(2), MM, 1.0)
    healthy_white = (plain.label == 0) & (plain.anatomy.wm > 0.8)
    patches = np.zeros(plain.label.shape, bool)
    patches[box] = fraction > 0.8
    patches &= healthy_white
    away = healthy_white.copy()
    away[box] &= ~ndimage.binary_dilation(fraction > 0, iterations=4)
    assert patches.sum() > 20 and away.sum() > 20
    for modality in ("flair", "t2"):
        before, after = plain.images[modality].astype(float), faint.images[modality].astype(float)
        assert np.median(after[patches] / before[patches]) > 1.05, modality
        assert np.array_equal(before[away], after[away]), modality


def _faint_child(seed: int) -> np.random.Generator:
    """The patches' generator as render_sequences spawns it for a case of `seed`: the second
    child, after the thick slices'."""
    rng = np.random.default_rng(seed)
    return rng.spawn(2)[1]
