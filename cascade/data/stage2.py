"""Stage-2 data: 3D training patches of image + Stage-1 prior; whole volumes for validation.

The case store is any object with `.image(id)` (4, X, Y, Z), `.prior(id, tag)` (4, X, Y, Z),
`.label(id)` (X, Y, Z) arrays and `.class_locations(id)`, such as PreprocessCache. Each loader
worker reads single patches from it (cascade.data.patches.RandomPatches), never whole cases.

Under DDP each process draws its own shard of the epoch's patch indices (index i belongs to
training case i % n): the patch loader's sampler is a DistributedSampler, so Lightning's own
sampler injection must be off (Trainer(use_distributed_sampler=False)). Lightning still calls
`set_epoch` on that sampler every epoch (new shuffle per epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cascade.data.batch_augmentation import BatchAugmentation
from cascade.data.cache import prior_probabilities
from cascade.data.patches import (
    EpochBatchSampler,
    PatchBatches,
    PatchStore,
    RandomPatches,
    batch_probabilities,
    check_case_arrays,
)
from cascade.data.prior_perturbation import PriorPerturbation


class CaseStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...
    def label(self, case_id: str) -> np.ndarray | None: ...
    def prior(self, case_id: str, tag: str) -> np.ndarray: ...


def load_case(store: CaseStore, case_id: str, prior_tag: str) -> dict[str, Tensor]:
    """One case as tensors: image, prior float32 (4, X, Y, Z); label uint8 (X, Y, Z)."""
    image, prior = store.image(case_id), store.prior(case_id, prior_tag)
    label = check_case_arrays(case_id, image, prior, store.label(case_id))
    # np.array: one copy each from the read-only memory maps, converting in the same pass
    image = np.array(image, dtype=np.float32)
    prior = prior_probabilities(prior)
    label = np.array(label, dtype=np.uint8)
    return {
        "image": torch.from_numpy(image),
        "prior": torch.from_numpy(prior),
        "label": torch.from_numpy(label),
    }


class CaseVolumes(Dataset):
    """Whole cases for validation: {"image", "prior", "label", "case_id"} as in load_case."""

    def __init__(self, store: CaseStore, case_ids: Sequence[str], prior_tag: str) -> None:
        self.store = store
        self.case_ids = list(case_ids)
        self.prior_tag = prior_tag

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        return {**load_case(self.store, case_id, self.prior_tag), "case_id": case_id}


class Stage2DataModule(L.LightningDataModule):
    """Label-biased training patches (RandomPatches) and whole validation volumes.

    label_probabilities: class -> relative chance that a patch is centred on that class
    (a mapping, or a list indexed by class). patches_per_epoch: training patches per epoch over
    all ranks, spread evenly over the training cases; num_workers loader workers read them.
    Training batches arrive with a float16 image and a float16 or uint8 prior (fewer bytes
    between processes); on_after_batch_transfer makes them float32 on the device, perturbs the
    priors (`perturbation`, None: off), then flips (image, prior and label alike) and
    scales/shifts the image intensity (`batch_augmentation`). One validation case per batch,
    cases split between ranks.
    """

    def __init__(
        self,
        store: PatchStore,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        prior_tag: str,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float] | Sequence[float],
        patches_per_epoch: int,
        batch_size: int,
        num_workers: int,
        flip_axes: Sequence[int],
        intensity_scale: float,
        intensity_shift: float,
        perturbation: PriorPerturbation | None,
        seed: int,
    ) -> None:
        super().__init__()
        if not train_ids:
            raise ValueError("Stage2DataModule: no training cases")
        if len(patch_size) != 3:
            raise ValueError(f"Stage2DataModule: patch_size needs 3 sizes, got {patch_size}")
        self.store = store
        self.train_ids = list(train_ids)
        self.val_ids = list(val_ids)
        self.prior_tag = prior_tag
        self.patch_size = tuple(int(size) for size in patch_size)
        if not isinstance(label_probabilities, Mapping):  # a list indexed by class
            label_probabilities = dict(enumerate(label_probabilities))
        # YAML mapping keys may arrive as strings
        self.label_probabilities = {int(k): float(v) for k, v in label_probabilities.items()}
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.perturbation = perturbation
        self.seed = seed
        self.batch_augmentation = BatchAugmentation(flip_axes, intensity_scale, intensity_shift)
        self.patch_sampler: DistributedSampler | None = None
        self._generator: torch.Generator | None = None

    def _world(self) -> tuple[int, int]:
        """(world size, rank) from the attached trainer; (1, 0) when used on its own."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches, already on the device: float32 image and prior, perturbed priors,
        flips, intensity."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return batch
        prior = batch_probabilities(batch["prior"])
        generator = self.augmentation_generator()
        if self.perturbation is not None:
            prior = self.perturbation(prior, generator)
        batch = {**batch, "image": batch["image"].float(), "prior": prior}
        return self.batch_augmentation(batch, generator)

    def augmentation_generator(self) -> torch.Generator:
        """The CPU generator of this rank's perturbation and augmentation draws: seeded by the
        run's seed and the global rank, so DDP ranks do not repeat each other's draws."""
        if self._generator is None:
            _, rank = self._world()
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + rank)
        return self._generator

    def train_patches(self) -> RandomPatches:
        """The epoch's training patches (all ranks; the loader's sampler shards them)."""
        return RandomPatches(
            self.store,
            self.train_ids,
            self.prior_tag,
            self.patch_size,
            self.label_probabilities,
            self.patches_per_epoch,
        )

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        patches = self.train_patches()
        # drop_last=False pads the shards to equal length so every rank runs the same steps
        self.patch_sampler = DistributedSampler(
            patches, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed
        )
        # the workers build whole batches (read straight into shared memory), so the loader
        # itself does no batching: each sampler element is a batch of patch indices
        return DataLoader(
            PatchBatches(patches),
            batch_size=None,
            sampler=EpochBatchSampler(self.patch_sampler, self.batch_size, drop_last=True),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        # each rank validates its own cases and RegionDice sums over ranks; like
        # DistributedSampler, the list is padded by repeating cases so that every rank runs the
        # same number of steps (DDP needs it) and none is empty
        padded = self.val_ids + self.val_ids[: -len(self.val_ids) % world_size]
        volumes = CaseVolumes(self.store, padded[rank::world_size], self.prior_tag)
        return DataLoader(
            volumes,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 2),
            pin_memory=torch.cuda.is_available(),
        )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training shards (Lightning does this itself via the patch loader)."""
        if self.patch_sampler is not None:
            self.patch_sampler.set_epoch(epoch)
