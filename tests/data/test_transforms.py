from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from cascade.data.errors import CaseError
from cascade.data.transforms import (
    CropToBrain,
    PercentileClip,
    RobustZNormalization,
    _percentiles,
    build_preprocessing,
    uncrop,
)

SHAPE = (20, 18, 16)


def brain_volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """float32 volume: random positive intensities (some outliers) in a box, zero elsewhere."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    brain = rng.gamma(4.0, 50.0, size=(10, 9, 7)).astype(np.float32) + 1
    brain.flat[:3] = [5000, 7000, 0.01]  # outliers the clip must catch
    volume[4:14, 5:14, 3:10] = brain
    return volume


def make_subject(**volumes: np.ndarray) -> tio.Subject:
    images = {
        name: tio.ScalarImage(tensor=torch.from_numpy(volume[np.newaxis]))
        for name, volume in volumes.items()
    }
    return tio.Subject(**images)


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(1)
    for size in (1, 2, 7, 100, 1001):
        values = rng.normal(size=size).astype(np.float32)
        expected = np.percentile(values.astype(np.float64), [0.5, 50, 99.5])
        assert np.allclose(_percentiles(values.copy(), [0.5, 50, 99.5]), expected, rtol=1e-6)


def test_robust_z_matches_hand_computed_mad_score() -> None:
    volume = brain_volume()
    subject = RobustZNormalization()(make_subject(t1=volume))
    result = subject["t1"].data[0].numpy()

    inside = volume != 0
    median = np.median(volume[inside].astype(np.float64))
    mad = np.median(np.abs(volume[inside] - median))
    expected = np.where(inside, (volume - median) / (1.4826 * mad), 0)
    assert result.dtype == np.float32
    assert np.allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert np.all(result[~inside] == 0)
    # Robust scores: the median maps to 0 and about half the brain lies within +-0.6745.
    assert abs(np.median(result[inside])) < 1e-5
    assert np.median(np.abs(result[inside])) == pytest.approx(1 / 1.4826, rel=1e-4)


def test_percentile_clip_bounds_and_background() -> None:
    volume = brain_volume()
    clip = PercentileClip(lower=0.5, upper=99.5)
    result = clip(make_subject(t1=volume))["t1"].data[0].numpy()

    inside = volume != 0
    low, high = np.percentile(volume[inside].astype(np.float64), [0.5, 99.5])
    assert result[inside].min() == pytest.approx(low, rel=1e-5)
    assert result[inside].max() == pytest.approx(high, rel=1e-5)
    assert np.all(result[~inside] == 0)
    within = inside & (volume >= low) & (volume <= high)
    assert np.array_equal(result[within], volume[within])  # only outliers change


def test_percentile_clip_defaults_and_validation() -> None:
    clip = PercentileClip()
    assert (clip.lower, clip.upper) == (0.5, 99.5)
    with pytest.raises(ValueError, match="lower < upper"):
        PercentileClip(lower=99.5, upper=0.5)


def test_each_modality_uses_its_own_statistics() -> None:
    t1 = brain_volume(0)
    flair = 30 * t1 + 1000 * (t1 != 0)  # another scale and offset: same robust scores
    result = RobustZNormalization()(make_subject(t1=t1, flair=flair))
    assert np.allclose(result["t1"].data, result["flair"].data, atol=1e-4)


def test_constant_image_names_file_and_image(tmp_path: Path) -> None:
    volume = np.zeros(SHAPE, dtype=np.int16)
    volume[5:10, 5:10, 5:10] = 42
    path = tmp_path / "case_t1ce.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    subject = tio.Subject(t1ce=tio.ScalarImage(path))
    with pytest.raises(CaseError) as error:
        RobustZNormalization()(subject)
    message = str(error.value)
    assert str(path) in message and "t1ce" in message and "\n" not in message


def test_empty_mask_is_an_error() -> None:
    with pytest.raises(CaseError, match="empty"):
        PercentileClip()(make_subject(t2=np.zeros(SHAPE, dtype=np.float32)))


def test_crop_to_brain_box_margin_and_label() -> None:
    t1 = brain_volume()  # brain box x 4:14, y 5:14, z 3:10
    flair = np.zeros(SHAPE, dtype=np.float32)
    flair[15, 9, 9] = 1.0  # another modality extends the brain along x
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[6:9, 7:9, 4:6] = 2
    subject = make_subject(t1=t1, flair=flair)
    subject.add_image(tio.LabelMap(tensor=torch.from_numpy(label[np.newaxis])), "label")

    cropped = CropToBrain(margin=2)(subject)
    assert cropped["crop_box"] == ((2, 18), (3, 16), (1, 12))
    assert cropped["original_shape"] == SHAPE
    assert cropped.spatial_shape == (16, 13, 11)
    assert cropped["label"].data.sum() == label.sum()
    # The affine origin follows the crop, so the voxels keep their world positions.
    assert np.allclose(cropped["t1"].affine[:3, 3], [2, 3, 1])
    assert subject.spatial_shape == SHAPE  # the input subject is left alone


def test_margin_is_clipped_at_the_borders() -> None:
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[0:3, 15:18, 2:14] = 1.0
    cropped = CropToBrain(margin=5)(make_subject(t1=volume))
    assert cropped["crop_box"] == ((0, 8), (10, 18), (0, 16))


def test_uncrop_restores_exactly() -> None:
    volume = brain_volume()
    cropped = CropToBrain(margin=1)(make_subject(t1=volume))
    box, shape = cropped["crop_box"], cropped["original_shape"]
    array = cropped["t1"].data.numpy()  # (1, x, y, z): leading axes are kept

    restored = uncrop(array, box, shape)
    assert restored.shape == (1, *SHAPE) and restored.dtype == array.dtype
    assert np.array_equal(restored[0], volume)
    (x0, x1), (y0, y1), (z0, z1) = box
    assert np.array_equal(restored[0, x0:x1, y0:y1, z0:z1], array[0])

    filled = uncrop(np.ones((x1 - x0, y1 - y0, z1 - z0), np.uint8), box, shape, fill=7)
    assert np.all(filled[x0:x1, y0:y1, z0:z1] == 1)
    assert (filled == 7).sum() == filled.size - (x1 - x0) * (y1 - y0) * (z1 - z0)
    with pytest.raises(ValueError, match="box"):
        uncrop(np.ones((2, 2, 2)), box, shape)


def test_cropping_twice_keeps_box_in_original_grid() -> None:
    volume = brain_volume()
    once = CropToBrain(margin=3)(make_subject(t1=volume))
    twice = CropToBrain(margin=0)(once)
    assert twice["crop_box"] == ((4, 14), (5, 14), (3, 10))
    assert np.array_equal(
        uncrop(twice["t1"].data[0].numpy(), twice["crop_box"], twice["original_shape"]), volume
    )


def test_all_zero_subject_cannot_be_cropped() -> None:
    with pytest.raises(ValueError, match="no brain"):
        CropToBrain(margin=1)(make_subject(t1=np.zeros(SHAPE, dtype=np.float32)))


def test_build_preprocessing_in_compose_and_subjects_dataset() -> None:
    preprocessing = build_preprocessing(margin=1, lower_percentile=0.5, upper_percentile=99.5)
    assert isinstance(preprocessing, tio.Compose)
    volumes = {name: brain_volume(seed) for seed, name in enumerate(("t1", "t1ce", "t2", "flair"))}
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[6:9, 7:9, 4:6] = 3
    subject = make_subject(**volumes)
    subject.add_image(tio.LabelMap(tensor=torch.from_numpy(label[np.newaxis])), "label")

    dataset = tio.SubjectsDataset([subject], transform=tio.Compose([preprocessing]))
    item = dataset[0]
    assert item["crop_box"] == ((3, 15), (4, 15), (2, 11))
    for name, volume in volumes.items():
        data = item[name].data[0].numpy()
        restored = uncrop(data, item["crop_box"], item["original_shape"])
        assert data.dtype == np.float32
        assert np.all(restored[volume == 0] == 0)  # background exactly 0
        assert np.all(data[data != 0] <= 100)  # outliers clipped before scoring
    assert np.array_equal(
        uncrop(item["label"].data[0].numpy(), item["crop_box"], item["original_shape"]), label
    )
    assert subject["t1"].data.shape == (1, *SHAPE)  # the dataset's subject is not modified

    pair = tio.SubjectsDataset([subject, subject], transform=preprocessing)
    loader = tio.SubjectsLoader(pair, batch_size=2)
    batch = next(iter(loader))
    assert batch["t1"][tio.DATA].shape == (2, 1, 12, 11, 9)
