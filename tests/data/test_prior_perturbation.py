"""PriorPerturbation: still a probability map, actually changed, cheap."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchio as tio
from scipy import ndimage

from cascade.data.prior_perturbation import (
    PriorPerturbation,
    _argmax_classes,
    _cross_morphology,
    perturb_prior,
)


def nested_tumor_prior(shape=(32, 32, 32), centres=((12, 12, 12),)) -> torch.Tensor:
    """Soft (4, X, Y, Z) prior of spherical tumors: edema shell, enhancing ring, necrotic core."""
    grid = np.ogrid[tuple(slice(0, size) for size in shape)]
    classes = np.zeros(shape, dtype=np.int64)
    for centre in centres:
        distance = np.sqrt(sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)))
        classes[distance <= 6] = 2
        classes[distance <= 4] = 3
        classes[distance <= 2] = 1
    one_hot = np.eye(4, dtype=np.float32)[classes].transpose(3, 0, 1, 2)
    soft = 0.9 * one_hot + 0.1 / 4  # not over-confident, like a real prior
    return torch.from_numpy(soft)


def subject_with(prior: torch.Tensor) -> tio.Subject:
    return tio.Subject(
        image=tio.ScalarImage(tensor=torch.zeros(4, *prior.shape[1:])),
        prior=tio.ScalarImage(tensor=prior.clone()),
    )


def assert_probabilities(prior: torch.Tensor) -> None:
    assert (prior >= 0).all()
    torch.testing.assert_close(prior.sum(0), torch.ones(prior.shape[1:]))


def test_output_is_a_changed_probability_map() -> None:
    torch.manual_seed(0)
    prior = nested_tumor_prior()
    transform = PriorPerturbation(
        max_radius=2, drop_probability=0.0, blend=(0.5, 1.0), noise_std=0.3
    )
    changed = 0
    for _ in range(10):
        output = transform(subject_with(prior))["prior"].data
        assert output.shape == prior.shape
        assert_probabilities(output)
        changed += not torch.allclose(output, prior)
    assert changed == 10


@pytest.mark.parametrize("radius", [2, -2])
def test_dilation_grows_and_erosion_shrinks_the_whole_tumor(radius: int) -> None:
    prior = nested_tumor_prior()
    parameters = {
        "operations": [radius, 0, 0],
        "drop_probability": 0.0,
        "blend": 1.0,
        "noise_std": 0.0,
    }
    before = (prior.argmax(0) > 0).sum()
    output = perturb_prior(prior.clone(), parameters)
    after = (output.argmax(0) > 0).sum()
    assert (after > before) if radius > 0 else (after < before)
    assert_probabilities(output)
    # nesting kept: enhancing tumor stays inside the whole tumor
    classes = output.argmax(0)
    assert ((classes == 3) <= (classes > 0)).all()


def test_dropped_components_leave_background() -> None:
    torch.manual_seed(0)
    prior = nested_tumor_prior(centres=((8, 8, 8), (23, 23, 23)))
    parameters = {"operations": [0, 0, 0], "drop_probability": 1.0, "blend": 1.0, "noise_std": 0.0}
    output = perturb_prior(prior.clone(), parameters)
    assert (output.argmax(0) == 0).all()
    assert_probabilities(output)


def test_tumor_free_prior_and_input_are_left_alone() -> None:
    prior = torch.zeros(4, 16, 16, 16)
    prior[0] = 1
    transform = PriorPerturbation(max_radius=3, drop_probability=0.5, blend=(1, 1), noise_std=0.5)
    torch.testing.assert_close(transform(subject_with(prior))["prior"].data, prior)
    tumor = nested_tumor_prior()
    subject = subject_with(tumor)
    transform(subject)  # copy=True by default: the caller's subject is untouched
    torch.testing.assert_close(subject["prior"].data, tumor)


def test_probability_zero_never_perturbs() -> None:
    prior = nested_tumor_prior()
    transform = PriorPerturbation(max_radius=2, drop_probability=1, blend=(1, 1), noise_std=1, p=0)
    torch.testing.assert_close(transform(subject_with(prior))["prior"].data, prior)


def test_image_is_not_touched_and_bad_arguments_fail() -> None:
    prior = nested_tumor_prior()
    subject = subject_with(prior)
    subject["image"].set_data(torch.ones(4, *prior.shape[1:]))
    transform = PriorPerturbation(max_radius=1, drop_probability=0.2, blend=(0.5, 1), noise_std=0.1)
    assert (transform(subject)["image"].data == 1).all()
    with pytest.raises(ValueError, match="blend"):
        PriorPerturbation(max_radius=1, drop_probability=0.2, blend=(1, 0.5), noise_std=0.1)


def test_fast_on_a_brain_sized_prior() -> None:
    torch.manual_seed(0)
    prior = nested_tumor_prior(shape=(140, 170, 140), centres=((60, 80, 70),))
    transform = PriorPerturbation(max_radius=3, drop_probability=0.2, blend=(0.5, 1), noise_std=0.2)
    subject = subject_with(prior)
    start = time.perf_counter()
    transform(subject)
    # about 0.1 s on an idle core; loose bound for a shared machine
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("iterations", [1, 3])
def test_cross_morphology_matches_scipy(iterations: int) -> None:
    rng = np.random.default_rng(iterations)
    mask = ndimage.binary_opening(rng.random((20, 18, 16)) < 0.6)  # blobs touching the edges
    cross = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.binary_dilation(mask, cross, iterations=iterations)
    shrunk = ndimage.binary_erosion(mask, cross, iterations=iterations)
    assert np.array_equal(_cross_morphology(mask, iterations, grow=True), grown)
    assert np.array_equal(_cross_morphology(mask, iterations, grow=False), shrunk)


def test_argmax_classes_matches_argmax_with_ties_to_the_first() -> None:
    probabilities = torch.softmax(torch.randn(4, 12, 10, 8), 0)
    probabilities[:, :2] = 0.25  # all tied: class 0, as argmax gives
    probabilities[:, 5] = torch.tensor([0.0, 0.5, 0.5, 0.0]).view(4, 1, 1)  # tied: class 1
    expected = probabilities.argmax(0).numpy()
    assert (expected[:2] == 0).all() and (expected[5] == 1).all()
    assert np.array_equal(_argmax_classes(probabilities.numpy()), expected)
