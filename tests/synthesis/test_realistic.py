"""Generated cases from the MNI152 template: anatomy, tumors and contrasts behave like MRI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascade.data.cases import MODALITIES
from cascade.synthesis import anatomy, tumor_growth
from cascade.synthesis.dataset import write_dataset
from cascade.synthesis.realistic import generate_case, generate_realistic
from cascade.synthesis.variation import ScanVariation

# A coarse grid over the BraTS field of view (2.5 mm voxels): the same anatomy, 1/16 the voxels.
SHAPE = (96, 96, 62)
VOXEL_ML = 240 * 240 * 155 / (96 * 96 * 62) / 1000.0


@pytest.fixture(scope="module")
def case():
    return generate_realistic(SHAPE, seed=11)


def _median(image: np.ndarray, where: np.ndarray) -> float:
    return float(np.median(image[where]))


def test_labels_are_brats_2020_and_seeded(case) -> None:
    assert set(np.unique(case.label)) <= {0, 1, 2, 4}
    assert (case.label > 0).any()
    images, label = generate_case(SHAPE, seed=11)
    assert np.array_equal(label, case.label)
    for modality in MODALITIES:
        assert np.array_equal(images[modality], case.images[modality])
        assert images[modality].dtype == np.int16
    other_images, _ = generate_case(SHAPE, seed=12)
    assert not np.array_equal(other_images["t1"], case.images["t1"])


def test_brain_is_placed_like_a_brats_brain(case) -> None:
    brain = case.anatomy.brain >= 0.5
    assert 1.1 < brain.sum() * VOXEL_ML / 1000.0 < 1.8  # litres
    for modality in MODALITIES:  # skull-stripped: 0 outside, positive inside
        assert (case.images[modality][~brain] == 0).all()
        assert (case.images[modality][brain] > 0).all()
    centre = np.argwhere(brain).mean(axis=0) * (240 / 96, 240 / 96, 155 / 62)
    assert np.allclose(centre, (120, 132, 76), atol=15)


def test_ventricles_have_csf_contrast_on_every_sequence(case) -> None:
    healthy = case.label == 0
    ventricles = (case.anatomy.ventricles > 0.8) & healthy
    white = (case.anatomy.wm > 0.9) & healthy
    grey = (case.anatomy.gm > 0.8) & healthy
    assert ventricles.sum() * VOXEL_ML > 5.0  # mL
    t1, t2, flair = (case.images[m] for m in ("t1", "t2", "flair"))
    # T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF darkest.
    assert _median(t1, white) > _median(t1, grey) > _median(t1, ventricles)
    assert _median(t2, ventricles) > _median(t2, grey) > _median(t2, white)
    assert _median(flair, ventricles) < min(_median(flair, grey), _median(flair, white))
    assert _median(case.images["t1ce"], ventricles) < _median(case.images["t1ce"], white)


def test_tumor_parts_look_like_a_glioma() -> None:
    found_rim = False
    for seed in range(6):
        case = generate_realistic(SHAPE, seed=seed)
        label, images = case.label, case.images
        whole_ml = (label > 0).sum() * VOXEL_ML
        assert (
            0.75 * tumor_growth.WHOLE_TUMOR_ML[0]
            <= whole_ml
            <= 1.2 * tumor_growth.WHOLE_TUMOR_ML[1]
        )
        edema = label == 2
        white = (case.anatomy.wm > 0.9) & (label == 0)
        assert _median(images["flair"], edema) > 1.2 * _median(images["flair"], white)
        assert _median(images["t2"], edema) > 1.2 * _median(images["t2"], white)
        if (label == 4).any():
            assert _median(images["t1ce"], label == 4) > 1.2 * _median(images["t1ce"], white)
        if (label == 4).any() and (label == 1).any():
            found_rim = True
            # Necrosis sits inside the rim: almost none of it touches edema directly.
            necrosis = label == 1
            grown = np.zeros_like(necrosis)
            for axis in range(3):
                for shift in (-1, 1):
                    grown |= np.roll(necrosis, shift, axis=axis)
            assert (grown & edema).sum() < 0.2 * (grown & (label == 4)).sum()
    assert found_rim


def test_edema_follows_white_matter(case) -> None:
    edema = case.label == 2
    brain = case.anatomy.brain >= 0.5
    assert case.anatomy.wm[edema].mean() > 1.3 * case.anatomy.wm[brain].mean()


def test_mass_effect_pushes_tissue_aside() -> None:
    shape = (96, 96, 62)
    rng = np.random.default_rng(3)
    placement = anatomy.draw_placement(rng, shape)
    ventricles = anatomy.resample_anatomy(placement, shape).ventricles
    centroid = np.argwhere(ventricles > 0.5).mean(axis=0)
    # A tumor 30 mm beside the ventricles pushes them away from itself.
    to_brats = placement.to_brats
    centre = centroid + np.array([30.0, 0.0, 0.0]) / to_brats
    pushed = anatomy.resample_anatomy(
        placement, shape, anatomy.MassEffect(centre, radius_mm=20.0, reach_mm=40.0)
    )
    # The ventricle nearest to the tumor is pushed away from its centre.
    distance = np.linalg.norm(
        (np.indices(shape).reshape(3, -1).T - centre) * to_brats, axis=1
    ).reshape(shape)
    nearest_before = distance[ventricles > 0.5].min()
    assert distance[pushed.ventricles > 0.5].min() > nearest_before + 3.0
    # Far from the tumor nothing moves.
    far = distance > 120
    before_far = anatomy.resample_anatomy(placement, shape).wm[far]
    assert np.abs(pushed.wm[far] - before_far).max() < 0.05


def test_write_dataset_realistic(tmp_path: Path) -> None:
    folders = write_dataset(
        tmp_path / "cases", 1, shape=(64, 64, 48), seed=2, progress=False, generator="realistic"
    )
    files = sorted(path.name for path in folders[0].iterdir())
    assert files == sorted(f"Synth_001_{key}.nii.gz" for key in (*MODALITIES, "seg"))
    image = nib.load(folders[0] / "Synth_001_flair.nii.gz")
    assert image.shape == (64, 64, 48)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    with pytest.raises(ValueError, match="unknown generator"):
        write_dataset(tmp_path / "other", 1, generator="ellipsoid")


def test_bias_field_changes_most_from_head_to_foot() -> None:
    """Coils lose signal fastest along the body's axis: across cases the bias field's step from
    the lowest to the highest slices is larger than from left to right, and has either sign."""
    from cascade.synthesis.mri_contrast import _bias_log_field

    head_to_foot, left_to_right = [], []
    for seed in range(40):
        log_field = _bias_log_field((40, 40, 40), np.random.default_rng(seed), mm=2.5)
        assert log_field.dtype == np.float32
        head_to_foot.append(float(log_field[:, :, -5:].mean() - log_field[:, :, :5].mean()))
        left_to_right.append(float(log_field[-5:].mean() - log_field[:5].mean()))
    assert min(head_to_foot) < -0.15 and max(head_to_foot) > 0.15
    assert np.mean(np.abs(head_to_foot)) > 1.5 * np.mean(np.abs(left_to_right))


def test_thick_slices_smooth_across_slices_only() -> None:
    """A thick-slice acquisition resampled to the grid: noise becomes smooth through-plane and
    stays rough in-plane, a step between slices spreads over about a slice, the mean level and
    the brain's edge slices keep their brightness."""
    from cascade.synthesis.mri_contrast import _thick_slices

    rng = np.random.default_rng(0)
    inside = np.zeros((24, 24, 40), bool)
    inside[:, :, 5:35] = True
    noise = (1.0 + 0.1 * rng.standard_normal(inside.shape)).astype(np.float32)
    thick = _thick_slices(noise, inside, thickness=4.0, offset=1.3)
    assert thick.shape == noise.shape
    in_plane = np.abs(np.diff(thick[:, :, 5:35], axis=0)).mean()
    through_plane = np.abs(np.diff(thick[:, :, 5:35], axis=2)).mean()
    assert through_plane < 0.5 * in_plane
    assert abs(thick[inside].mean() - 1.0) < 0.01
    assert abs(thick[:, :, 5].mean() - 1.0) < 0.05  # no darkening at the brain's top slice

    step = np.where(np.arange(40) < 20, 1.0, 2.0).astype(np.float32) * np.ones_like(noise)
    profile = _thick_slices(step, np.ones(step.shape, bool), thickness=4.0, offset=0.5)[0, 0]
    rising = np.flatnonzero((profile > 1.05) & (profile < 1.95))
    assert 3 <= len(rising) <= 9  # a slice's width, not one voxel and not the whole volume
    assert profile[:12] == pytest.approx(1.0, abs=0.005)
    assert profile[-12:] == pytest.approx(2.0, abs=0.005)


def test_thick_slices_change_only_the_images() -> None:
    """The slices' draws come from a child generator: a case with every sequence in thick
    slices has the same labels and brain as the one without, and only its images differ."""
    thin_images, thin_label = generate_case((64, 64, 48), seed=3)
    thick = ScanVariation(thick_slices=1.0)
    thick_images, thick_label = generate_case((64, 64, 48), seed=3, variation=thick)
    assert np.array_equal(thin_label, thick_label)
    for modality in MODALITIES:
        assert np.array_equal(thin_images[modality] > 0, thick_images[modality] > 0)
        assert not np.array_equal(thin_images[modality], thick_images[modality])
    with pytest.raises(ValueError, match="probability"):
        ScanVariation(thick_slices=1.5)


def test_variation_is_a_realistic_option(tmp_path: Path) -> None:
    """Only the realistic generator varies its scans; asked of the phantom, it says so, and
    writes nothing."""
    for variation in (ScanVariation(thick_slices=0.5), ScanVariation(contrast_floor=0.5)):
        with pytest.raises(ValueError, match="realistic generator only"):
            write_dataset(tmp_path / "d", 1, (48, 48, 48), variation=variation, progress=False)
    assert not any(tmp_path.iterdir())


def test_variation_checks_its_values() -> None:
    assert ScanVariation().changed() == []
    assert ScanVariation(faint_patches=0.7, contrast_floor=0.5).changed() == [
        "faint_patches=0.7",
        "contrast_floor=0.5",
    ]
    with pytest.raises(ValueError, match="faint_patches must be a probability"):
        ScanVariation(faint_patches=-0.1)
    for floor in (0.0, 1.2):
        with pytest.raises(ValueError, match="contrast_floor must be in"):
            ScanVariation(contrast_floor=floor)


def _contrast(case: object, modality: str, region: np.ndarray) -> float:
    """How far a region's median lies from healthy white matter's, relative to it."""
    image = case.images[modality].astype(float)
    white = (case.anatomy.wm > 0.9) & (case.label == 0)
    return _median(image, region) / _median(image, white) - 1.0


def test_contrast_floor_shrinks_every_contrast_towards_white_matter() -> None:
    """The same case at full contrast and with a floor of 0.3: the same label and brain; on
    every sequence CSF lies nearer white matter, by a factor within [0.3, 1] (well below 1 for
    some sequence), and the brain's intensities spread less around their median."""
    full = generate_realistic(SHAPE, seed=4)
    low = generate_realistic(SHAPE, seed=4, variation=ScanVariation(contrast_floor=0.3))
    assert np.array_equal(full.label, low.label)
    csf = (full.anatomy.ventricles > 0.9) & (full.label == 0)
    factors = []
    for modality in MODALITIES:
        inside = full.images[modality] > 0
        assert np.array_equal(inside, low.images[modality] > 0)
        factor = _contrast(low, modality, csf) / _contrast(full, modality, csf)
        assert 0.25 <= factor <= 1.05, modality
        factors.append(factor)
        assert _relative_spread(low.images[modality][inside]) < _relative_spread(
            full.images[modality][inside]
        ), modality
    assert min(factors) < 0.8


def _relative_spread(values: np.ndarray) -> float:
    median = np.median(values)
    return float(np.median(np.abs(values - median)) / median)
