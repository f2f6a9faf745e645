"""RandomPatches: label-biased patch centres, patches read straight from the store, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.data.patches import (
    PatchBatches,
    RandomPatches,
    empty_patches,
    patch_start,
    sample_class_locations,
)
from tests.data.test_stage2 import MemoryStore

SHAPE = (40, 40, 40)
PATCH = (16, 16, 16)


def make_patches(store: MemoryStore, probabilities, **options) -> RandomPatches:
    settings = dict(length=8)
    settings.update(options)
    return RandomPatches(
        store, store.case_ids(), "tag1", PATCH, dict(enumerate(probabilities)), **settings
    )


def test_an_item_is_the_store_patch_around_a_drawn_centre() -> None:
    store = MemoryStore(3, shape=SHAPE)
    patches = make_patches(store, [0.25, 0.25, 0.25, 0.25])
    torch.manual_seed(7)
    item = patches[4]  # index 4 of 3 cases: case01
    torch.manual_seed(7)
    _, centre = patches.draw_centre("case01")
    window = patches.window("case01", centre)

    assert item["image"].shape == item["prior"].shape == (4, *PATCH)
    assert item["label"].shape == PATCH
    assert (item["image"].dtype, item["prior"].dtype, item["label"].dtype) == (
        torch.float16,
        torch.float16,
        torch.uint8,
    )
    image, prior, label = store.cases["case01"]
    expected_image = image[(slice(None), *window)].astype(np.float16)
    assert np.array_equal(item["image"].numpy(), expected_image)
    assert np.array_equal(item["prior"].numpy(), prior[(slice(None), *window)])
    assert np.array_equal(item["label"].numpy(), label[window])


def test_windows_are_centred_and_shifted_inside_the_volume() -> None:
    patches = make_patches(MemoryStore(1, shape=SHAPE), [1, 0, 0, 0])
    assert patches.window("case00", (20, 20, 20)) == (slice(12, 28),) * 3
    assert patches.window("case00", (0, 3, 39)) == (slice(0, 16), slice(0, 16), slice(24, 40))
    assert patch_start(centre=30, size=40, patch=16) == 22


def test_centre_classes_follow_label_probabilities() -> None:
    store = MemoryStore(1, shape=SHAPE)
    patches = make_patches(store, [0.1, 0.2, 0.3, 0.4])
    label = store.cases["case00"][2]
    torch.manual_seed(0)
    counts = np.zeros(4)
    for _ in range(2000):
        label_class, centre = patches.draw_centre("case00")
        counts[label_class] += 1
        if label_class > 0:
            assert label[centre] == label_class  # a tumor centre lies on its class
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.04)


def test_only_enhancing_centres_put_enhancing_tumor_in_every_patch() -> None:
    torch.manual_seed(0)
    patches = make_patches(MemoryStore(3, shape=SHAPE), [0, 0, 0, 1], length=30)
    for index in range(len(patches)):
        assert (patches[index]["label"] == 3).any()


def test_background_centres_spread_over_the_whole_volume() -> None:
    store = MemoryStore(1, shape=SHAPE)
    patches = make_patches(store, [1, 0, 0, 0])
    torch.manual_seed(0)
    centres = np.array([patches.draw_centre("case00")[1] for _ in range(400)])
    for axis in range(3):
        assert centres[:, axis].min() <= 2 and centres[:, axis].max() >= 37
        assert len(np.unique(centres[:, axis])) > 30
    # most centres miss the small tumor, as a uniform draw should
    tumor_share = (store.cases["case00"][2][tuple(centres.T)] > 0).mean()
    assert tumor_share < 0.1


def test_probabilities_are_renormalised_over_the_classes_a_case_has() -> None:
    store = MemoryStore(2, shape=SHAPE)
    image, prior, label = store.cases["case00"]
    store.cases["case00"] = (image, prior, np.where(label == 1, 3, label).astype(np.uint8))
    store.cases["case01"] = (image, prior, np.zeros_like(label))  # no tumor at all
    patches = make_patches(store, [0, 0.5, 0, 0.5])
    torch.manual_seed(0)
    assert {patches.draw_centre("case00")[0] for _ in range(50)} == {3}  # no necrosis there
    assert {patches.draw_centre("case01")[0] for _ in range(50)} == {0}  # nothing wanted


def test_class_locations_are_a_bounded_subsample_of_each_class() -> None:
    label = MemoryStore(1, shape=SHAPE).cases["case00"][2]
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
    absent = sample_class_locations(np.zeros(SHAPE, dtype=np.uint8))
    assert all(array.shape == (0, 3) for array in absent.values())


def test_a_batch_holds_the_items_of_its_indices_in_order() -> None:
    store = MemoryStore(3, shape=SHAPE)
    patches = make_patches(store, [0.25, 0.25, 0.25, 0.25])
    torch.manual_seed(3)
    batch = PatchBatches(patches)[[5, 0, 4]]
    torch.manual_seed(3)
    items = [patches[index] for index in (5, 0, 4)]
    for key in ("image", "prior", "label"):
        assert torch.equal(batch[key], torch.stack([item[key] for item in items]))
    shared = empty_patches(2, PATCH, shared=True, num_classes=4)  # what a loader worker builds
    assert all(tensor.is_shared() for tensor in shared.values())
    assert shared["image"].shape == (2, 4, *PATCH) and shared["prior"].dtype == torch.float16


def test_a_case_smaller_than_the_patch_is_named_at_start_up() -> None:
    store = MemoryStore(2, shape=(40, 40, 12))
    with pytest.raises(
        ValueError, match=r"case00: volume \(40, 40, 12\) is smaller than the patch"
    ):
        make_patches(store, [1, 0, 0, 0])


def test_an_unlabelled_case_or_bad_probabilities_are_refused() -> None:
    store = MemoryStore(2, shape=SHAPE)
    with pytest.raises(ValueError, match="label_probabilities"):
        make_patches(store, [0, 0, 0, 0])
    image, prior, _ = store.cases["case01"]
    store.cases["case01"] = (image, prior, None)
    with pytest.raises(ValueError, match="case01: Stage-2 training needs a label"):
        make_patches(store, [1, 0, 0, 0])


def test_a_prior_off_the_image_grid_is_named_for_training_and_validation() -> None:
    from cascade.data.stage2 import load_case

    store = MemoryStore(2, shape=SHAPE)
    image, prior, label = store.cases["case01"]
    store.cases["case01"] = (image, prior[:, :-1], label)  # a prior from another crop
    with pytest.raises(ValueError, match=r"case01: image .* do not match; rebuild the priors"):
        make_patches(store, [1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"case01: image .* do not match; rebuild the priors"):
        load_case(store, "case01", "tag1")
