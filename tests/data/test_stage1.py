import numpy as np
import pytest
import torch

import cascade.data.stage1 as stage1
from cascade.data.slab_augmentation import build_augmentation
from cascade.data.slabs import Slab, SlabDataset, SlabSampler, slab_channels
from cascade.data.stage1 import Stage1DataModule

SHAPE = (20, 18, 12)


class FakeStore:
    """In-memory case store: volumes whose voxel values encode their own coordinates."""

    def __init__(self, case_ids, tumor_z=(4, 7)) -> None:
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"))
        code = (grid[0] * 10000 + grid[1] * 100 + grid[2]).astype(np.float32)
        self.images = {cid: np.stack([code + m * 1e6 for m in range(4)]) for cid in case_ids}
        self.labels = {}
        for cid in case_ids:
            label = np.zeros(SHAPE, np.uint8)
            label[5:9, 6:10, tumor_z[0] : tumor_z[1]] = 2
            label[6:8, 7:9, tumor_z[0]] = 3
            self.labels[cid] = label

    def image(self, case_id):
        return self.images[case_id]

    def label(self, case_id):
        return self.labels[case_id]


def _module(store, **overrides) -> Stage1DataModule:
    options = dict(
        store=store,
        train_ids=["a", "b", "c"],
        val_ids=["d"],
        slab_depth=5,
        views=["axial", "sagittal", "coronal"],
        slab_size=[16, 16],
        tumor_fraction=0.6,
        train_slabs_per_epoch=8,
        batch_size=4,
        num_workers=0,
        flip_probability=0.5,
        intensity_probability=0.5,
        log_gamma=0.2,
        bias_field_coefficient=0.2,
    )
    options.update(overrides)
    return Stage1DataModule(**options)


def test_slab_channels_are_modality_major() -> None:
    slabs = torch.arange(2 * 4 * 3 * 3 * 5).reshape(2, 4, 3, 3, 5).float()
    channels = slab_channels(slabs)
    assert channels.shape == (2, 20, 3, 3)
    assert torch.equal(channels[:, 2 * 5 + 4], slabs[:, 2, :, :, 4])


def test_read_places_the_slab_and_zero_pads() -> None:
    store = FakeStore(["a"])
    sampler = SlabSampler(store, ["a"], 5, ["coronal"], [24, 8], tumor_fraction=0.5)
    # coronal: slices along Y, plane (X=20, Z=12) -> X padded by 4 at offset 1, Z cropped 3..11
    slab = Slab("a", "coronal", centre=1, windows=((0, 20, 1), (3, 11, 0)), tumor_centred=False)
    image, label = sampler.read(slab)
    assert image.shape == (4, 24, 8, 5) and label.shape == (1, 24, 8, 5)
    volume = store.images["a"]
    assert np.all(image[:, :, :, :1] == 0)  # slice y = -1 lies outside the volume
    assert np.all(image[:, 0] == 0) and np.all(image[:, 21:] == 0)
    np.testing.assert_array_equal(image[2, 1:21, :, 3], volume[2, :, 2, 3:11])  # y = 1 - 2 + 3
    np.testing.assert_array_equal(label[0, 1:21, :, 3], store.labels["a"][:, 2, 3:11])


def test_tumor_share_matches_config() -> None:
    # tumor occupies z 4..6 (3 of 12 axial slices): expected share = f + (1 - f) * 3 / 12
    store = FakeStore(["a", "b"], tumor_z=(4, 7))
    fraction = 0.4
    sampler = SlabSampler(store, ["a", "b"], 5, ["axial"], [16, 16], tumor_fraction=fraction)
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(2000)]
    on_tumor = np.mean([store.labels[d.case_id][:, :, d.centre].any() for d in draws])
    expected = fraction + (1 - fraction) * 3 / 12
    sigma = np.sqrt(expected * (1 - expected) / len(draws))
    assert abs(on_tumor - expected) < 4 * sigma
    assert np.mean([d.tumor_centred for d in draws]) == pytest.approx(fraction, abs=4 * 0.011)


def test_training_slabs_and_whole_validation_cases() -> None:
    store = FakeStore(["a", "b", "c", "d"])
    module = _module(store)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 20, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 16, 16) and batch["label"].dtype == torch.long
    assert len(module.train_dataloader()) == 2
    (case,) = list(module.val_dataloader())  # one whole case per validation batch
    assert case["case_id"] == ["d"]
    assert torch.equal(case["image"][0], torch.from_numpy(np.asarray(store.image("d"))))
    assert torch.equal(case["label"][0], torch.from_numpy(np.asarray(store.label("d"))))


def test_each_process_gets_its_own_case_shard(monkeypatch) -> None:
    store = FakeStore(["a", "b", "c", "d"])
    shards = []
    for rank in range(2):
        monkeypatch.setattr(stage1, "distributed_rank_and_world", lambda rank=rank: (rank, 2))
        module = _module(store, train_ids=["c", "a", "b", "d"], val_ids=[])
        module.setup("fit")
        shards.append(set(module.train_set.sampler.case_ids))
    assert shards == [{"a", "c"}, {"b", "d"}]


def test_rejects_unknown_view_and_even_depth() -> None:
    with pytest.raises(ValueError, match="unknown view"):
        _module(FakeStore(["a"]), views=["transverse"])
    with pytest.raises(ValueError, match="odd"):
        SlabSampler(FakeStore(["a"]), ["a"], 4, ["axial"], [16, 16], 0.5)


def _same_slabs(store, augmentation, count: int = 4):
    """(plain, augmented) items of the same seeded slab draws."""
    sampler = SlabSampler(store, ["a"], 5, ["axial"], [16, 16], tumor_fraction=1.0)
    pairs = [
        SlabDataset(sampler, count, 5, None),
        SlabDataset(sampler, count, 5, augmentation),
    ]
    return [(pairs[0][index], pairs[1][index]) for index in range(count)]


def test_augmentation_flips_image_and_label_together() -> None:
    flip_only = build_augmentation(1.0, 0.0, 0.0, 0.0)
    for before, after in _same_slabs(FakeStore(["a"]), flip_only):
        # (H, W) axes of the (4k, H, W) image; with p=1 RandomFlip flips each axis in turn
        matches = [
            axes
            for axes in ((1,), (2,), (1, 2))
            if torch.equal(after["image"], before["image"].flip(axes))
        ]
        assert len(matches) == 1
        label_axes = [axis - 1 for axis in matches[0]]
        assert torch.equal(after["label"], before["label"].flip(label_axes))


def test_intensity_augmentation_changes_image_not_label() -> None:
    store = FakeStore(["a"])
    store.images["a"] = np.abs(store.images["a"]) / 1e6 + 0.1  # positive, z-score-like range
    intensity = build_augmentation(0.0, 1.0, 0.3, 0.3)
    for before, after in _same_slabs(store, intensity):
        assert torch.equal(after["label"], before["label"])
        inside = before["image"] != 0
        assert not torch.allclose(after["image"][inside], before["image"][inside])
