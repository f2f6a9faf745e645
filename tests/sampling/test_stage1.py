"""Stage-1 slabs cut from the pool (SlabDraws, SlabIntensity) and Stage1DataModule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cascade.sampling.stage1 as stage1
from cascade.data.slabs import slab_channels
from cascade.sampling.intensity import SlabIntensity, changed_rows
from cascade.sampling.pool import CasePool
from cascade.sampling.slabs import TUMOR_GROUP, SlabDraws
from cascade.sampling.stage1 import Stage1DataModule
from tests.sampling.coded import MODALITY_STEP, coded_image, decode

SHAPE = (7, 6, 5)


class FakeStore:
    """In-memory case store of coordinate-coded images; tumor in axial slices z = 1..2."""

    def __init__(self, case_ids, shape=SHAPE) -> None:
        self.images = {cid: coded_image(shape) for cid in case_ids}
        label = np.zeros(shape, np.uint8)
        label[2:4, 2:4, 1:3] = 2
        label[3, 3, 1] = 3
        self.labels = {cid: label for cid in case_ids}

    def image(self, case_id):
        return self.images[case_id]

    def label(self, case_id):
        return self.labels[case_id]


def _pool(store: FakeStore, case_id: str = "a") -> CasePool:
    pool = CasePool(1, SHAPE, 5, [TUMOR_GROUP], "cpu", seed=0)
    image, label = torch.from_numpy(store.image(case_id)), torch.from_numpy(store.label(case_id))
    pool.insert([image, label[None]], label)
    return pool


def test_slab_channels_are_modality_major() -> None:
    slabs = torch.arange(2 * 4 * 3 * 3 * 5).reshape(2, 4, 3, 3, 5).float()
    channels = slab_channels(slabs)
    assert channels.shape == (2, 20, 3, 3)
    assert torch.equal(channels[:, 2 * 5 + 4], slabs[:, 2, :, :, 4])


@pytest.mark.parametrize("view, axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_a_slab_is_k_slices_along_its_view_modality_major_with_its_label(view, axis) -> None:
    store = FakeStore(["a"])
    draws = SlabDraws(3, [view], (8, 8), tumor_fraction=0.5, flip_probability=0.0)
    batch = draws(_pool(store), 16, torch.Generator().manual_seed(0))
    assert batch["image"].shape == (16, 12, 8, 8) and batch["label"].shape == (16, 8, 8)
    plane = [a for a in range(3) if a != axis]
    for image, label in zip(batch["image"].numpy(), batch["label"].numpy(), strict=True):
        for modality in range(4):  # modality-major: channel = modality * k + slice
            later = image[modality * 3 : modality * 3 + 3]
            inside = image[:3] > 0
            assert np.all(later[inside] == image[:3][inside] + modality * MODALITY_STEP)
        coordinates = decode(image[:3])  # (k, H, W, 3)
        inside = coordinates[..., 0] >= 0
        centre = coordinates[1][inside[1]]
        assert centre.size, "every drawn slab's centre slice meets the volume here"
        assert len(np.unique(centre[:, axis])) == 1  # one slice of the view
        for neighbour in (0, 2):
            found = coordinates[neighbour][inside[neighbour]]
            assert np.all(found[:, axis] == centre[0, axis] + neighbour - 1)
        # rows and columns follow the plane's axes in increasing order
        rows, columns = np.nonzero(inside[1])
        grid = coordinates[1][rows, columns]
        assert np.all(grid[:, plane[0]] - rows == grid[0, plane[0]] - rows[0])
        assert np.all(grid[:, plane[1]] - columns == grid[0, plane[1]] - columns[0])
        truth = store.labels["a"][tuple(grid.T)]
        np.testing.assert_array_equal(label[rows, columns], truth)
        assert np.all(label[~inside[1]] == 0)


def test_tumor_fraction_one_puts_tumor_in_every_slab_and_zero_follows_the_slices() -> None:
    store = FakeStore(["a"])
    generator = torch.Generator().manual_seed(0)
    on_tumor = SlabDraws(5, ["axial"], (8, 8), 1.0, 0.5)(_pool(store), 400, generator)
    assert (on_tumor["label"] > 0).flatten(1).any(1).all()
    anywhere = SlabDraws(5, ["axial"], (8, 8), 0.0, 0.5)(_pool(store), 2000, generator)
    share = (anywhere["label"] > 0).flatten(1).any(1).float().mean().item()
    assert share == pytest.approx(2 / 5, abs=4 * np.sqrt(0.24 / 2000))  # 2 of 5 axial slices


def test_flips_mirror_the_plane_of_image_and_label_alike() -> None:
    store = FakeStore(["a"])
    # the plane is the whole (7, 6) volume: no crop, so a slab is its slice, mirrored
    flipped = SlabDraws(1, ["axial"], (7, 6), 1.0, 1.0)(_pool(store), 4, None)
    for image, label in zip(flipped["image"], flipped["label"], strict=True):
        z = int(decode(image[0].numpy())[0, 0, 2])
        expected_image = torch.from_numpy(store.images["a"][0, :, :, z]).flip(0, 1)
        assert torch.equal(image[0], expected_image)
        expected_label = torch.from_numpy(store.labels["a"][:, :, z]).flip(0, 1).long()
        assert torch.equal(label, expected_label)


def test_a_case_smaller_than_the_slab_is_padded_around_not_refused() -> None:
    store = FakeStore(["a"])
    batch = SlabDraws(5, ["sagittal", "coronal"], (16, 12), 0.5, 0.5)(_pool(store), 32, None)
    assert batch["image"].shape == (32, 20, 16, 12)
    assert (batch["image"] > 0).flatten(1).sum(1).min() > 0  # every slab holds the case


def test_slab_intensity_keeps_background_and_p_zero_is_identity() -> None:
    image = torch.rand(6, 8, 10, 12) + 2.0
    image[:, :, :3] = 0
    generator = torch.Generator().manual_seed(0)
    changed = SlabIntensity(1.0, 0.3, 0.3)(image, generator)
    assert torch.all(changed[:, :, :3] == 0) and not torch.allclose(changed, image)
    assert torch.equal(SlabIntensity(0.0, 0.3, 0.3)(image, generator), image)
    # gamma alone: one exponent per slab, |x|**gamma with gamma in exp([-0.3, 0.3])
    gamma = SlabIntensity(1.0, 0.3, 0.0)(image, generator)
    exponents = gamma[:, :, 5:].log() / image[:, :, 5:].log()
    spread = exponents.flatten(1)
    assert torch.allclose(spread.min(1).values, spread.max(1).values, atol=1e-3)
    assert spread.min() >= np.exp(-0.3) - 1e-4 and spread.max() <= np.exp(0.3) + 1e-4


def test_slab_intensity_changes_only_the_slabs_drawn_and_not_its_input() -> None:
    image = torch.rand(64, 8, 10, 12) + 2.0
    before = image.clone()
    changed = SlabIntensity(0.3, 0.3, 0.3)(image, torch.Generator().manual_seed(0))
    assert torch.equal(image, before)
    untouched = (changed == image).flatten(1).all(1)
    # each change picks a slab with chance 0.3: about half the slabs get neither
    assert 16 < int(untouched.sum()) < 48
    assert not (changed[~untouched] == image[~untouched]).flatten(1).any(1).any()


def test_changed_rows_computes_the_chosen_slabs_alone_or_the_batch_alike() -> None:
    image = torch.rand(6, 3, 4, 5)
    chosen = torch.tensor([True, False, False, True, False, True])
    calls = []

    def double(slabs: torch.Tensor, index) -> torch.Tensor:
        calls.append(slabs.shape[0])
        return slabs * 2

    alone = changed_rows(image, chosen, double, only_chosen=True)
    whole = changed_rows(image, chosen, double, only_chosen=False)
    assert calls == [3, 6]
    assert torch.equal(alone, whole)
    assert torch.equal(alone[chosen], image[chosen] * 2) and torch.equal(
        alone[~chosen], image[~chosen]
    )


def test_gamma_per_modality_changes_the_sequences_contrasts_apart() -> None:
    # a slab's channels: modality * 5 + slice; each modality's 5 slices share one exponent
    image = torch.rand(6, 20, 10, 12) + 2.0
    generator = torch.Generator().manual_seed(0)
    changed = SlabIntensity(1.0, 0.3, 0.0, gamma_groups=4)(image, generator)
    exponents = (changed.log() / image.log()).view(6, 4, 5, -1)
    per_modality = exponents.mean((2, 3))
    assert torch.allclose(exponents, per_modality[:, :, None, None].expand_as(exponents), atol=1e-3)
    assert torch.all(per_modality.max(1).values - per_modality.min(1).values > 1e-3)
    assert per_modality.min() >= np.exp(-0.3) - 1e-4 and per_modality.max() <= np.exp(0.3) + 1e-4
    with pytest.raises(ValueError, match="do not split into 3"):
        SlabIntensity(1.0, 0.3, 0.0, gamma_groups=3)(image, generator)


def test_one_gamma_group_draws_as_before_groups_existed() -> None:
    # seeded runs from before the option give the same slabs: the first 10 draws, as then
    image = torch.rand(6, 20, 10, 12) + 2.0
    draws = torch.rand(10, 6, generator=torch.Generator().manual_seed(3))
    changed = SlabIntensity(1.0, 0.3, 0.0)(image, torch.Generator().manual_seed(3))
    expected = image.pow(torch.exp(0.3 * (2 * draws[0] - 1)).view(6, 1, 1, 1))
    assert torch.allclose(changed, expected, rtol=1e-5)


def _module(store, **overrides) -> Stage1DataModule:
    options = dict(
        store=store,
        train_ids=["a", "b", "c"],
        val_ids=["d"],
        slab_depth=5,
        views=["axial", "sagittal", "coronal"],
        slab_size=[16, 16],
        tumor_fraction=0.6,
        lookalike_fraction=0.0,
        lookalike_flair_z=2.0,
        lookalike_margin=4,
        train_slabs_per_epoch=8,
        batch_size=4,
        num_workers=0,
        pool_size=2,
        samples_per_case=4,
        flip_probability=0.5,
        intensity_probability=0.5,
        log_gamma=0.2,
        bias_field_coefficient=0.2,
        gamma_per_modality=False,
        seed=0,
    )
    options.update(overrides)
    return Stage1DataModule(**options)


def test_the_data_module_draws_a_gamma_per_sequence_when_asked() -> None:
    assert _module(FakeStore(["a", "b", "c", "d"])).intensity.gamma_groups == 1
    per_modality = _module(FakeStore(["a", "b", "c", "d"]), gamma_per_modality=True)
    assert per_modality.intensity.gamma_groups == 4


def test_the_data_module_finds_lookalikes_on_flair_only_when_it_draws_them() -> None:
    assert _module(FakeStore(["a", "b", "c", "d"])).lookalikes is None
    module = _module(FakeStore(["a", "b", "c", "d"]), lookalike_fraction=0.3)
    assert module.lookalikes is not None and module.lookalikes.channel == 3  # FLAIR
    assert module.draws.lookalike_fraction == 0.3
    steps = list(module.train_dataloader())
    _attach(module)
    module.on_after_batch_transfer(steps[0], 0)
    assert module.pooled.pool.lookalike_group == 1


def _attach(module) -> None:
    module.trainer = SimpleNamespace(training=True, strategy=SimpleNamespace(root_device="cpu"))


def test_the_loader_streams_whole_cases_and_the_device_hook_cuts_slabs() -> None:
    store = FakeStore(["a", "b", "c", "d"])
    module = _module(store)
    steps = list(module.train_dataloader())
    assert len(steps) == 2  # 8 slabs of 4
    # step 0 fills the pool (2) and brings its own case; then one new case per step
    assert [len(step["cases"]) for step in steps] == [3, 1]
    case = steps[0]["cases"][0]
    assert case["image"].dtype == torch.float32 and case["image"].shape == (4, *SHAPE)
    _attach(module)
    batch = module.on_after_batch_transfer(steps[0], 0)
    assert batch["image"].shape == (4, 20, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 16, 16) and batch["label"].dtype == torch.long
    assert module.pooled.pool.filled == 2
    (validation,) = list(module.val_dataloader())  # one whole case per validation batch
    assert validation["case_id"] == ["d"]
    assert torch.equal(validation["image"][0], torch.from_numpy(store.image("d")))
    module.trainer.training = False
    assert module.on_after_batch_transfer(validation, 0) is validation


def test_each_rank_streams_its_own_shard_and_validates_its_share(monkeypatch) -> None:
    store = FakeStore(["a", "b", "c", "d", "e"])
    shards, shares = [], []
    for rank in range(2):
        monkeypatch.setattr(stage1, "distributed_rank_and_world", lambda rank=rank: (rank, 2))
        module = _module(store, train_ids=["c", "a", "b", "d"], val_ids=["e", "a", "b"])
        shards.append(set(module.train_dataloader().dataset.case_ids))
        shares.append(list(module.val_dataloader().dataset.case_ids))
    assert shards == [{"a", "c"}, {"b", "d"}]
    assert shares == [["a", "e"], ["b", "a"]]  # padded to equal length


def test_rejects_unknown_view_and_even_depth() -> None:
    with pytest.raises(ValueError, match="unknown view"):
        _module(FakeStore(["a"]), views=["transverse"])
    with pytest.raises(ValueError, match="odd"):
        _module(FakeStore(["a"]), slab_depth=4)
