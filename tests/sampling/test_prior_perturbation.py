"""PriorPerturbation: batches stay probability maps, are actually changed, cheaply; its
morphology and components agree with scipy's."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from cascade.sampling.prior_perturbation import (
    PriorPerturbation,
    cross_morphology,
    perturb_prior,
    propagated_components,
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


def assert_probabilities(prior: torch.Tensor, atol: float = 1e-5) -> None:
    assert (prior >= 0).all()
    torch.testing.assert_close(prior.sum(0), torch.ones(prior.shape[1:]), atol=atol, rtol=0)


def test_output_is_a_changed_probability_map() -> None:
    torch.manual_seed(0)
    prior = nested_tumor_prior()
    transform = PriorPerturbation(
        p=1.0, max_radius=2, drop_probability=0.0, blend=(0.5, 1.0), noise_std=0.3
    )
    batch = torch.stack([prior] * 5).to(torch.float16)  # as the loader sends it
    output = transform(batch)
    assert output.shape == batch.shape and output.dtype == torch.float32
    for sample in output:
        assert_probabilities(sample, atol=1e-3)  # float16 input outside the tumor box
        assert not torch.allclose(sample, prior)
    assert torch.equal(batch[0].float(), prior.half().float())  # the input is not modified


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


def test_tumor_free_priors_stay_and_probability_zero_never_perturbs() -> None:
    empty = torch.zeros(4, 16, 16, 16)
    empty[0] = 1
    transform = PriorPerturbation(
        p=1.0, max_radius=3, drop_probability=0.5, blend=(1, 1), noise_std=0.5
    )
    torch.testing.assert_close(transform(empty[None]), empty[None])
    tumor = nested_tumor_prior()[None]
    never = PriorPerturbation(p=0.0, max_radius=2, drop_probability=1, blend=(1, 1), noise_std=1)
    torch.testing.assert_close(never(tumor), tumor)


def test_seeded_draws_repeat_and_bad_input_fails() -> None:
    batch = torch.stack([nested_tumor_prior()] * 2)
    transform = PriorPerturbation(
        p=0.5, max_radius=2, drop_probability=0.3, blend=(0.5, 1), noise_std=0.0
    )
    first = transform(batch, torch.Generator().manual_seed(3))
    again = transform(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)  # without noise, the generator decides everything
    with pytest.raises(ValueError, match="blend"):
        PriorPerturbation(p=1, max_radius=1, drop_probability=0.2, blend=(1, 0.5), noise_std=0.1)
    with pytest.raises(ValueError, match="shape"):
        transform(batch[0])  # one sample without its batch axis


def test_fast_on_a_brain_sized_prior() -> None:
    torch.manual_seed(0)
    prior = nested_tumor_prior(shape=(140, 170, 140), centres=((60, 80, 70),))
    transform = PriorPerturbation(
        p=1.0, max_radius=3, drop_probability=0.2, blend=(0.5, 1), noise_std=0.2
    )
    start = time.perf_counter()
    transform(prior[None])
    # well under a second on an idle core; loose bound for a shared machine
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("iterations", [1, 3])
def test_cross_morphology_matches_scipy(iterations: int) -> None:
    rng = np.random.default_rng(iterations)
    mask = ndimage.binary_opening(rng.random((20, 18, 16)) < 0.6)  # blobs touching the edges
    cross = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.binary_dilation(mask, cross, iterations=iterations)
    shrunk = ndimage.binary_erosion(mask, cross, iterations=iterations)
    tensor = torch.from_numpy(mask)
    assert np.array_equal(cross_morphology(tensor, iterations, grow=True).numpy(), grown)
    assert np.array_equal(cross_morphology(tensor, iterations, grow=False).numpy(), shrunk)


def test_propagated_components_partition_as_scipy_labels() -> None:
    """The device path (label propagation) finds the same components as scipy, which the CPU
    path uses: a one-to-one map between the two labelings."""
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((24, 20, 18)) < 0.55)
    expected, count = ndimage.label(mask)
    labels = propagated_components(torch.from_numpy(mask)).numpy()
    assert ((labels > 0) == mask).all()
    pairs = set(zip(expected[mask].tolist(), labels[mask].tolist(), strict=True))
    assert count > 3 and len(pairs) == count == len(np.unique(labels[mask]))
