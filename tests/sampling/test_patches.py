"""PatchDraws: label-biased centres, the store's window around them, flips, padding, priors;
and the class-location subsample the cache keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.data.patches import sample_class_locations
from cascade.sampling.patches import PatchDraws
from cascade.sampling.pool import CasePool
from tests.sampling.coded import coded_image, decode

SHAPE = (7, 7, 6)
PATCH = (4, 4, 4)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 1:3, 1:3] = 2
    label[5, 5, 4] = 3
    return label


def _pool(label: np.ndarray, prior: np.ndarray | None = None) -> CasePool:
    image = torch.from_numpy(coded_image(label.shape))
    if prior is None:
        prior = np.full((4, *label.shape), 255 // 4, np.uint8)
    pool = CasePool(1, label.shape, 9, PatchDraws.location_groups(4), "cpu", seed=0)
    label_tensor = torch.from_numpy(label)
    pool.insert([image, torch.from_numpy(prior), label_tensor[None]], label_tensor)
    return pool


def _draws(probabilities, flip_axes=(), patch=PATCH) -> PatchDraws:
    return PatchDraws(patch, probabilities, 4, flip_axes, prior_scale=255)


def test_a_patch_is_the_window_around_its_centre_shifted_inside() -> None:
    label = _label()
    batch = _draws({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})(_pool(label), 64, None)
    for image, patch_label in zip(batch["image"].numpy(), batch["label"].numpy(), strict=True):
        coordinates = decode(image[0])
        assert (coordinates >= 0).all()  # the case is larger than the patch: no padding
        first = coordinates[0, 0, 0]
        expected = first + np.stack(np.indices(PATCH), axis=-1)
        np.testing.assert_array_equal(coordinates, expected)
        assert np.all(first >= 0) and np.all(first + PATCH <= np.asarray(SHAPE))
        np.testing.assert_array_equal(
            patch_label, label[tuple(expected.reshape(-1, 3).T)].reshape(PATCH)
        )


def test_centre_classes_follow_the_probabilities_renormalised_over_present_classes() -> None:
    # necrosis (1) is absent: its weight is dropped, enhancing (3) is one voxel
    draws = _draws({0: 0.0, 1: 0.5, 2: 0.0, 3: 0.5})
    batch = draws(_pool(_label()), 200, torch.Generator().manual_seed(0))
    assert (batch["label"] == 3).flatten(1).any(1).all()
    nothing_wanted = np.zeros(SHAPE, np.uint8)
    nothing_wanted[1:3, 1:3, 1:3] = 2
    batch = draws(_pool(nothing_wanted), 50, None)  # falls back to background centres
    assert batch["image"].shape == (50, 4, *PATCH)


def test_flips_mirror_image_prior_and_label_alike() -> None:
    label = _label()
    prior = np.random.default_rng(0).integers(0, 256, size=(4, *SHAPE), dtype=np.uint8)
    batch = _draws({3: 1.0}, flip_axes=(0, 1, 2))(_pool(label, prior), 64, None)
    flipped = 0
    for image, patch_prior, patch_label in zip(
        batch["image"].numpy(), batch["prior"].numpy(), batch["label"].numpy(), strict=True
    ):
        coordinates = decode(image[0]).reshape(-1, 3).T
        flipped += int(decode(image[0])[0, 0, 0, 0] > decode(image[0])[-1, 0, 0, 0])
        np.testing.assert_array_equal(patch_label.reshape(-1), label[tuple(coordinates)])
        expected_prior = prior[(slice(None), *coordinates)] / 255
        np.testing.assert_allclose(patch_prior.reshape(4, -1), expected_prior, atol=1e-6)
    assert 10 < flipped < 54  # about half the patches mirrored along x


def test_a_case_smaller_than_the_patch_is_placed_inside_it_zero_padded() -> None:
    label = _label()
    batch = _draws({0: 1.0}, patch=(10, 4, 8))(_pool(label), 32, None)
    assert batch["image"].shape == (32, 4, 10, 4, 8)
    for image in batch["image"].numpy():
        coordinates = decode(image[0])
        inside = coordinates[..., 0] >= 0
        # the whole x and z extents of the case are inside the patch
        assert (
            inside.any(axis=(1, 2)).sum() == SHAPE[0] and inside.any(axis=(0, 1)).sum() == SHAPE[2]
        )


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="label_probabilities"):
        _draws({0: 0.0, 2: 0.0})
    with pytest.raises(ValueError, match="label_probabilities"):
        _draws({0: -1.0, 2: 2.0})


def test_class_locations_are_a_bounded_subsample_of_each_class() -> None:
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:8, 2:8, 2:8] = 2
    label[4:6, 4:6, 4:6] = 3
    label[3, 3, 3] = 1
    everything = sample_class_locations(label, limit=10**6)
    bounded = sample_class_locations(label, limit=50)
    for label_class in (1, 2, 3):
        assert len(everything[label_class]) == (label == label_class).sum()
        coordinates = bounded[label_class]
        assert coordinates.dtype == np.uint16 and coordinates.shape[1] == 3
        assert len(coordinates) == min(50, (label == label_class).sum())
        assert (label[tuple(coordinates.T)] == label_class).all()
        assert len(np.unique(coordinates, axis=0)) == len(coordinates)
        # the same subsample every time, whoever computes it
        assert np.array_equal(coordinates, sample_class_locations(label, limit=50)[label_class])
    absent = sample_class_locations(np.zeros((4, 4, 4), dtype=np.uint8))
    assert all(array.shape == (0, 3) for array in absent.values())
