"""crop_boxes and CasePool: boxes of any axis order and flips, zero outside, FIFO slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.sampling.crops import crop_boxes
from cascade.sampling.pool import LOCATIONS_PER_GROUP, CasePool, in_group
from tests.sampling.coded import coded_image

SHAPE = (6, 5, 7)


def _pool(capacity: int = 2, canvas=(7, 7, 7)) -> CasePool:
    return CasePool(capacity, canvas, 4, [(1,), (2, 3)], "cpu", seed=0)


def _reference(volume, start, box, order, flips):
    """numpy: out[i0, i1, i2] = volume[..., axis order[d] at start + i_d (mirrored if flipped)]."""
    out = np.zeros((*box, volume.shape[0]), volume.dtype)
    for index in np.ndindex(*box):
        position = [0, 0, 0]
        for dim, i in enumerate(index):
            step = box[dim] - 1 - i if flips[dim] else i
            position[order[dim]] = start[order[dim]] + step
        if all(0 <= p < s for p, s in zip(position, volume.shape[1:], strict=True)):
            out[index] = volume[(slice(None), *position)]
    return out


def test_boxes_read_the_right_voxels_in_any_order_with_flips_and_padding() -> None:
    image = coded_image(SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    pool = _pool()
    pool.insert([torch.from_numpy(image).half()], torch.from_numpy(label))
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(12):
        order = rng.permutation(3)
        cases.append((rng.integers(-3, 6, size=3), order, rng.random(3) < 0.5))
    box = (3, 4, 5)
    slots = torch.zeros(len(cases), dtype=torch.long)
    sizes = torch.tensor([SHAPE] * len(cases))
    starts = torch.tensor(np.stack([c[0] for c in cases]))
    orders = torch.tensor(np.stack([c[1] for c in cases]))
    flips = torch.tensor(np.stack([c[2] for c in cases]))
    crops = crop_boxes(pool.voxels, pool.canvas, slots, sizes, starts, box, orders, flips)
    assert crops.shape == (len(cases), *box, 4)
    for crop, (start, order, flip) in zip(crops.float().numpy(), cases, strict=True):
        np.testing.assert_array_equal(crop, _reference(image, start, box, order, flip))


def test_the_oldest_case_leaves_a_full_pool_and_locations_belong_to_their_group() -> None:
    pool = _pool(capacity=2)
    labels = []
    for value in range(3):
        label = np.zeros(SHAPE, np.uint8)
        label[1:3, 1:4, 2 + value] = 2
        label[4, 4, 6] = 1
        labels.append(label)
        image = torch.full((4, *SHAPE), float(value + 1))
        assert pool.insert([image], torch.from_numpy(label)) == value % 2
    assert pool.filled == 2
    volumes = pool.volumes()
    assert volumes[0, 0, 0, 0, 0] == 3 and volumes[1, 0, 0, 0, 0] == 2  # case 2 replaced case 0
    assert volumes[0, 6, 6, 6].abs().sum() == 0  # the canvas beyond the case is zero
    for slot, label in ((0, labels[2]), (1, labels[1])):
        counts = pool.location_counts[slot].tolist()
        assert counts == [1, 6]
        for group, values in enumerate(pool.location_groups):
            found = pool.locations[slot, group, : counts[group]].numpy()
            assert np.isin(label[tuple(found.T)], values).all()


def test_locations_are_a_bounded_subsample() -> None:
    shape = (20, 20, 20)
    pool = CasePool(1, shape, 1, [(1,)], "cpu", seed=0)
    label = torch.ones(shape, dtype=torch.uint8)
    pool.insert([torch.zeros(1, *shape)], label)
    assert pool.location_counts[0, 0] == LOCATIONS_PER_GROUP
    found = pool.locations[0, 0]
    assert len({tuple(p) for p in found.tolist()}) == LOCATIONS_PER_GROUP  # no repeats


def test_a_case_larger_than_the_canvas_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the canvas"):
        _pool(canvas=(5, 5, 5)).insert([torch.zeros(4, *SHAPE)], torch.zeros(SHAPE))


def test_a_location_group_without_values_is_refused() -> None:
    with pytest.raises(ValueError, match="every location group needs a value"):
        CasePool(1, (4, 4, 4), 2, [(1,), ()], "cpu", seed=0)


def test_group_membership_is_torch_isin() -> None:
    label = torch.randint(0, 6, (9, 8, 7), generator=torch.Generator().manual_seed(0))
    label = label.to(torch.uint8)
    for values in [(1,), (2, 3), (1, 2, 3, 4), (5, 0)]:
        expected = torch.isin(label, torch.tensor(values, dtype=torch.uint8))
        assert torch.equal(in_group(label, values), expected), values
