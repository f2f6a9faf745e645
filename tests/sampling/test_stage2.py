"""Stage2DataModule: the case stream (sharding, workers), patches cut on the device, validation
volumes, batch hooks."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from cascade.data.patches import sample_class_locations
from cascade.sampling.batch_augmentation import BatchAugmentation
from cascade.sampling.prior_perturbation import PriorPerturbation
from cascade.sampling.stage2 import CaseVolumes, Stage2DataModule

PATCH = (16, 16, 16)


class MemoryStore:
    """Case store in RAM with the PreprocessCache reading API; counts image reads."""

    def __init__(self, cases: int, shape=(32, 32, 32), seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.cases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.reads = 0
        grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"))
        for index in range(cases):
            centre = np.asarray(shape) // 2 + rng.integers(-3, 4, size=3)
            distance = np.sqrt(((grid - centre.reshape(3, 1, 1, 1)) ** 2).sum(0))
            label = np.zeros(shape, dtype=np.uint8)
            label[distance <= 6] = 2
            label[distance <= 4] = 3
            label[distance <= 2] = 1
            image = rng.normal(0, 0.3, size=(4, *shape)).astype(np.float32)
            image += np.asarray([0.5, 1.0, 1.5, 2.0], dtype=np.float32).reshape(4, 1, 1, 1) * (
                label > 0
            )
            image[:, label == 3] += 1.0
            # an imperfect prior: the true tumor shifted by two voxels, softened
            shifted = np.roll(label, 2, axis=0)
            prior = 0.7 * np.eye(4, dtype=np.float32)[shifted].transpose(3, 0, 1, 2) + 0.3 / 4
            self.cases[f"case{index:02d}"] = (image, prior.astype(np.float16), label)

    def case_ids(self) -> list[str]:
        return list(self.cases)

    def image(self, case_id: str) -> np.ndarray:
        self.reads += 1
        return self.cases[case_id][0]

    def prior(self, case_id: str, tag: str) -> np.ndarray:
        assert tag == "tag1"
        return self.cases[case_id][1]

    def label(self, case_id: str) -> np.ndarray:
        return self.cases[case_id][2]

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        return sample_class_locations(self.cases[case_id][2])


def make_datamodule(store: MemoryStore, **overrides) -> Stage2DataModule:
    ids = store.case_ids()
    options = dict(
        store=store,
        train_ids=ids[:-1],
        val_ids=ids[-1:],
        prior_tag="tag1",
        patch_size=PATCH,
        label_probabilities={0: 0.5, 1: 0.5 / 3, 2: 0.5 / 3, 3: 0.5 / 3},
        lookalike_fraction=0.0,
        lookalike_flair_z=2.0,
        lookalike_margin=4,
        patches_per_epoch=8,
        batch_size=2,
        num_workers=0,
        pool_size=2,
        samples_per_case=4,
        flip_axes=(0, 1, 2),
        intensity_scale=0.1,
        intensity_shift=0.1,
        perturbation=PriorPerturbation(
            p=0.5, max_radius=2, drop_probability=0.1, blend=(0.5, 1.0), noise_std=0.2
        ),
        seed=0,
    )
    options.update(overrides)
    return Stage2DataModule(**options)


def attach(datamodule: Stage2DataModule) -> None:
    """As a training Trainer on the CPU would be, for the device hook."""
    datamodule.trainer = SimpleNamespace(
        training=True, world_size=1, global_rank=0, strategy=SimpleNamespace(root_device="cpu")
    )


def assert_patch_batch(batch: dict, size: int) -> None:
    assert batch["image"].shape == (size, 4, *PATCH)
    assert batch["prior"].shape == (size, 4, *PATCH)
    assert batch["label"].shape == (size, *PATCH)
    assert batch["image"].dtype == batch["prior"].dtype == torch.float32
    assert batch["label"].dtype == torch.uint8
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert (batch["prior"] >= 0).all()


def test_an_epoch_streams_whole_cases_and_the_hook_cuts_full_batches() -> None:
    torch.manual_seed(0)
    datamodule = make_datamodule(
        MemoryStore(5), patches_per_epoch=10, batch_size=4, perturbation=None,
        intensity_scale=0.0, intensity_shift=0.0,
    )  # fmt: skip
    loader = datamodule.train_dataloader()
    assert len(loader) == 2  # 10 patches / batch 4, the last partial batch dropped
    steps = list(loader)
    # the pool (2 cases) fills at step 0, then a case per 4 patches: one per step
    assert [len(step["cases"]) for step in steps] == [3, 1]
    case = steps[0]["cases"][0]
    assert case["image"].shape == (4, 32, 32, 32) and case["prior"].dtype == torch.float16
    attach(datamodule)
    for step in steps:
        batch = datamodule.on_after_batch_transfer(step, 0)
        assert_patch_batch(batch, 4)
        inside = batch["image"].abs().sum(1) > 0  # the cases fill the patch: no padding
        assert inside.all()
        sums = batch["prior"].sum(1)
        torch.testing.assert_close(sums, torch.ones(4, *PATCH), atol=5e-3, rtol=0)


def test_lookalike_patches_find_lookalikes_on_flair_only_when_asked() -> None:
    assert make_datamodule(MemoryStore(3)).lookalikes is None
    datamodule = make_datamodule(MemoryStore(3), lookalike_fraction=0.5, perturbation=None)
    assert datamodule.lookalikes is not None and datamodule.lookalikes.channel == 3  # FLAIR
    attach(datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert_patch_batch(batch, 2)
    assert datamodule.pooled.draws.lookalike_fraction == 0.5
    assert datamodule.pooled.pool.lookalike_group == 3  # after the 3 tumor classes


def test_a_case_smaller_than_the_patch_is_padded_not_refused() -> None:
    datamodule = make_datamodule(MemoryStore(3, shape=(12, 20, 9)), perturbation=None)
    attach(datamodule)
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert_patch_batch(batch, 2)
    inside = (batch["label"] > 0) | (batch["image"].abs().sum(1) > 0)
    assert inside.flatten(1).sum(1).max() <= 12 * 16 * 9  # the case, zeros around it


def test_two_workers_stream_the_same_cases_for_the_same_seed() -> None:
    store = MemoryStore(4)
    epochs = []
    for _ in range(2):
        datamodule = make_datamodule(store, num_workers=2, patches_per_epoch=8)
        loader = datamodule.train_dataloader()
        assert loader.num_workers == 2 and loader.persistent_workers
        torch.manual_seed(0)  # the loader seeds its workers from torch's RNG
        epochs.append(list(loader))
    assert len(epochs[0]) == 4
    for first, second in zip(*epochs, strict=True):
        assert len(first["cases"]) == len(second["cases"])
        for one, other in zip(first["cases"], second["cases"], strict=True):
            assert torch.equal(one["image"], other["image"])


def test_label_probabilities_may_be_a_list_indexed_by_class() -> None:
    datamodule = make_datamodule(MemoryStore(2), label_probabilities=[0.3, 0.2, 0.2, 0.3])
    assert datamodule.label_probabilities == {0: 0.3, 1: 0.2, 2: 0.2, 3: 0.3}


def test_ranks_stream_disjoint_shards_and_validate_their_share() -> None:
    store = MemoryStore(6)  # 5 training cases
    datamodule = make_datamodule(store, perturbation=None, patches_per_epoch=16)
    shards = []
    for rank in range(2):
        datamodule._world = lambda rank=rank: (2, rank)  # as under a 2-process trainer
        loader = datamodule.train_dataloader()
        assert len(loader) == 16 // 2 // 2  # half the epoch per rank, batch 2
        shards.append(set(loader.dataset.case_ids))
        # validation cases are split between ranks too, padded so that no rank is left without
        assert len(datamodule.val_dataloader()) == 1
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(store.case_ids()[:-1])


def test_validation_yields_one_whole_case_per_batch() -> None:
    store = MemoryStore(4)
    datamodule = make_datamodule(store, val_ids=store.case_ids()[2:])
    batches = list(datamodule.val_dataloader())
    assert len(batches) == 2
    assert batches[0]["prior"].dtype == torch.float16  # as stored, to the device
    datamodule.trainer = SimpleNamespace(training=False)
    batch = datamodule.on_after_batch_transfer(batches[0], 0)
    assert batch["image"].dtype == batch["prior"].dtype == torch.float32
    assert batch["image"].shape == (1, 4, 32, 32, 32)
    assert batch["prior"].shape == (1, 4, 32, 32, 32)
    assert batch["label"].shape == (1, 32, 32, 32)
    assert batch["case_id"] == ["case02"]
    # validation priors are the clean cached ones
    expected = torch.from_numpy(store.cases["case02"][1].astype(np.float32))
    torch.testing.assert_close(batch["prior"][0], expected)


def test_mismatched_prior_is_reported_with_the_case() -> None:
    store = MemoryStore(3)
    image, prior, label = store.cases["case00"]
    store.cases["case00"] = (image, prior[:, :-1], label)
    with pytest.raises(ValueError, match="case00"):
        CaseVolumes(store, ["case00"], "tag1")[0]
    with pytest.raises(ValueError, match="case00"):
        make_datamodule(store).train_dataloader()


def test_augmentation_is_configured_for_the_device_side() -> None:
    datamodule = make_datamodule(MemoryStore(2))
    assert datamodule.perturbation.p == 0.5
    assert isinstance(datamodule.batch_augmentation, BatchAugmentation)
    assert datamodule.flip_axes == (0, 1, 2)  # in the crop: the batch augmentation flips nothing
    assert datamodule.batch_augmentation.flip_axes == ()
    assert datamodule.batch_augmentation.intensity_scale == 0.1


class _BatchRecorder(L.LightningModule):
    """Tiny module that keeps the batches it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[dict]] = {"train": [], "val": []}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen["train"].append(batch)
        return self.weight * batch["image"].mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.seen["val"].append(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_batches_are_augmented_in_training_only(tmp_path) -> None:
    torch.manual_seed(0)
    store = MemoryStore(4)
    perturbation = PriorPerturbation(
        p=1.0, max_radius=1, drop_probability=0.0, blend=(1.0, 1.0), noise_std=0.5
    )
    datamodule = make_datamodule(store, perturbation=perturbation)
    calls, perturbed = [], []
    augmentation = datamodule.batch_augmentation
    datamodule.batch_augmentation = lambda batch, generator: (
        calls.append(batch) or augmentation(batch, generator)
    )
    datamodule.perturbation = lambda prior, generator: (
        perturbed.append(prior) or perturbation(prior, generator)
    )
    module = _BatchRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule)
    assert len(module.seen["train"]) == len(calls) == 2
    for seen, given in zip(module.seen["train"], calls, strict=True):
        assert seen["image"].shape == given["image"].shape == (2, 4, *PATCH)
        assert seen["label"].dtype == torch.uint8
        for key in ("image", "prior"):  # float16 / uint8 from the loader, float32 here
            assert seen[key].dtype == given[key].dtype == torch.float32
        assert not torch.equal(seen["image"], given["image"])  # intensity always acts
    # the priors were perturbed (noise on every voxel) before the intensity changes
    assert len(perturbed) == 2
    for prior, given in zip(perturbed, calls, strict=True):
        assert prior.dtype == torch.float32 and not torch.equal(given["prior"], prior)
    # sanity check + one validation epoch, both with the clean cached volumes
    assert len(module.seen["val"]) == 2
    clean = torch.from_numpy(store.cases["case03"][0])
    for batch in module.seen["val"]:
        assert torch.equal(batch["image"][0], clean)
    # used on its own (no trainer), the hook changes nothing
    alone = make_datamodule(store)
    batch = next(iter(alone.train_dataloader()))
    assert alone.on_after_batch_transfer(batch, 0) is batch


def test_each_rank_draws_its_own_augmentation() -> None:
    """DDP ranks start from different generators, so they do not repeat each other's flips,
    intensities and prior perturbations; the same rank and seed repeat them."""
    draws = {}
    for rank in (0, 1, 0):
        datamodule = make_datamodule(MemoryStore(2))
        datamodule._world = lambda rank=rank: (2, rank)
        draws.setdefault(rank, []).append(
            torch.rand(8, generator=datamodule.augmentation_generator())
        )
    assert torch.equal(draws[0][0], draws[0][1])
    assert not torch.equal(draws[0][0], draws[1][0])
