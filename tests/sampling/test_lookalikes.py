"""Healthy tissue that looks like tumor (LookAlikes): its voxels, their place in the pool, and
Stage-1 slabs and Stage-2 patches centred on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cascade.sampling.lookalikes import LookAlikes, dilate
from cascade.sampling.patches import PatchDraws
from cascade.sampling.pool import CasePool
from cascade.sampling.slabs import TUMOR_GROUP, SlabDraws

SHAPE = (12, 10, 9)
FLAIR = 3
BRIGHT = (9, 7, 6)  # a FLAIR-bright healthy voxel far from the tumor
RIM = (5, 3, 3)  # a FLAIR-bright healthy voxel beside it
RULE = LookAlikes(channel=FLAIR, threshold=2.0, margin=2)


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """Image (4, X, Y, Z): channel 0 codes the axial slice (z + 1), FLAIR bright at BRIGHT and
    RIM and over the tumor; label: tumor in a block at the low corner."""
    image = torch.zeros((4, *SHAPE))
    image[0] = torch.arange(1, SHAPE[2] + 1).float()
    label = torch.zeros(SHAPE, dtype=torch.uint8)
    label[1:4, 1:4, 1:4] = 2
    image[FLAIR][label > 0] = 4.0
    image[FLAIR][BRIGHT] = 5.0
    image[FLAIR][RIM] = 5.0
    return image, label


def _pool() -> CasePool:
    pool = CasePool(1, SHAPE, 5, [TUMOR_GROUP], "cpu", seed=0, lookalikes=RULE)
    image, label = _case()
    pool.insert([image, label[None]], label)
    return pool


def test_dilate_grows_a_mask_by_a_cube_as_scipy_does() -> None:
    mask = np.random.default_rng(0).random(SHAPE) > 0.97
    for radius in (0, 1, 3, 10):  # 10: the cube is wider than the volume
        cube = np.ones((2 * radius + 1,) * 3, bool)
        expected = ndimage.binary_dilation(mask, cube) if radius else mask
        np.testing.assert_array_equal(dilate(torch.from_numpy(mask), radius).numpy(), expected)


def test_lookalikes_are_bright_healthy_voxels_away_from_the_tumor() -> None:
    image, label = _case()
    found = RULE.mask(image[FLAIR], label)
    assert found.nonzero().tolist() == [list(BRIGHT)]  # not the tumor, not its rim
    rim_kept = LookAlikes(FLAIR, 2.0, margin=0).mask(image[FLAIR], label)
    assert rim_kept[RIM] and not rim_kept[label > 0].any()
    assert not LookAlikes(FLAIR, 6.0, margin=2).mask(image[FLAIR], label).any()


def test_the_pool_keeps_the_lookalikes_as_a_group_after_the_label_groups() -> None:
    pool = _pool()
    assert pool.lookalike_group == 1
    assert pool.location_counts[0].tolist() == [27, 1]
    assert pool.locations[0, 1, 0].tolist() == list(BRIGHT)


def test_lookalike_slabs_are_centred_on_lookalikes_and_the_rest_on_tumor() -> None:
    generator = torch.Generator().manual_seed(0)
    only = SlabDraws(1, ["axial"], SHAPE[:2], 0.0, 0.5, lookalike_fraction=1.0)
    batch = only(_pool(), 64, generator)
    assert torch.all(batch["image"][:, 0] == BRIGHT[2] + 1)  # every slab is BRIGHT's slice
    assert torch.all(batch["image"][:, FLAIR].flatten(1).amax(1) == 5.0)
    split = SlabDraws(1, ["axial"], SHAPE[:2], 0.5, 0.5, lookalike_fraction=0.5)
    slices = split(_pool(), 400, generator)["image"][:, 0, 0, 0] - 1
    on_lookalike = slices == BRIGHT[2]
    assert torch.all(on_lookalike | ((slices >= 1) & (slices <= 3)))  # nothing from anywhere
    assert on_lookalike.float().mean().item() == pytest.approx(0.5, abs=4 * np.sqrt(0.25 / 400))


def test_lookalike_shares_that_cannot_be_drawn_are_refused() -> None:
    with pytest.raises(ValueError, match="lookalike_fraction"):
        SlabDraws(1, ["axial"], (8, 8), 0.7, 0.5, lookalike_fraction=0.4)
    plain = CasePool(1, SHAPE, 5, [TUMOR_GROUP], "cpu", seed=0)
    image, label = _case()
    plain.insert([image, label[None]], label)
    with pytest.raises(ValueError, match="built with lookalikes"):
        SlabDraws(1, ["axial"], (8, 8), 0.5, 0.5, lookalike_fraction=0.2)(plain, 4, None)


def test_lookalike_patches_are_centred_on_lookalikes_and_leave_other_draws_alone() -> None:
    image, label = _case()
    prior = torch.zeros((4, *SHAPE))
    prior[0] = 1.0
    pool = CasePool(1, SHAPE, 9, PatchDraws.location_groups(4), "cpu", seed=0, lookalikes=RULE)
    pool.insert([image, prior, label[None]], label)
    on_tumor = {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}

    def draws(fraction: float) -> dict[str, torch.Tensor]:
        patches = PatchDraws((3, 3, 3), on_tumor, 4, (), 1.0, lookalike_fraction=fraction)
        return patches(pool, 32, torch.Generator().manual_seed(0))

    looked = draws(1.0)
    assert torch.all(looked["image"][:, FLAIR].flatten(1).amax(1) == 5.0)  # BRIGHT in each
    assert not looked["label"].any()
    plain = draws(0.0)
    assert plain["label"].flatten(1).any(1).all()  # every patch on the tumor, as asked
    half = draws(0.5)
    moved = half["image"][:, FLAIR].flatten(1).amax(1) == 5.0
    # the patches not moved are the plain draw's own: the look-alike draws come after
    assert torch.equal(half["image"][~moved], plain["image"][~moved])
    assert 0 < int(moved.sum()) < 32
