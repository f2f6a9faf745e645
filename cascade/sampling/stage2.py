"""Stage-2 data: 3D training patches of image + Stage-1 prior, cut on the training device from a
pool of whole cases (``cascade.sampling``); whole volumes for validation.

The case store is any object with `.image(id)` (4, X, Y, Z), `.prior(id, tag)` (4, X, Y, Z) and
`.label(id)` (X, Y, Z) arrays, such as PreprocessCache. Loader workers read whole cases, never
patches; under DDP each process streams its own shard of the training cases with its own draws
and validates its own share of the validation cases (Lightning's sampler injection off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cascade.data.cases import MODALITIES
from cascade.data.patches import PRIOR_STEPS, check_case_arrays
from cascade.ranks import rank_share
from cascade.sampling.batch_augmentation import BatchAugmentation
from cascade.sampling.lookalikes import flair_lookalikes
from cascade.sampling.patches import PatchDraws
from cascade.sampling.pooled import PooledBatches, largest_extent
from cascade.sampling.prior_perturbation import PriorPerturbation
from cascade.sampling.stream import CaseReader, CaseStream, steps_per_epoch


class CaseStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...
    def label(self, case_id: str) -> np.ndarray | None: ...
    def prior(self, case_id: str, tag: str) -> np.ndarray: ...


def load_case(store: CaseStore, case_id: str, prior_tag: str) -> dict[str, Tensor]:
    """One case as stored (image float16, prior uint8 steps of 1/255, label uint8; whole
    sequential reads), after checking that its arrays share a grid; `case_on_device` makes the
    image and prior float32 once they are on the device, a quarter of the bytes on the way."""
    image, prior = store.image(case_id), store.prior(case_id, prior_tag)
    label = check_case_arrays(case_id, image, prior, store.label(case_id))
    return {key: torch.from_numpy(np.array(array)) for key, array in
            (("image", image), ("prior", prior), ("label", label))}  # fmt: skip


def case_on_device(case: dict[str, Any]) -> dict[str, Any]:
    """A validation case (batch of one) with float32 image and probabilities."""
    prior = case["prior"].float()
    if case["prior"].dtype == torch.uint8:
        prior = prior.div_(PRIOR_STEPS)
    return {**case, "image": case["image"].float(), "prior": prior}


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
    """Label-biased training patches cut from a case pool, and whole validation volumes.

    label_probabilities: class -> relative chance that a patch is centred on that class
    (a mapping, or a list indexed by class); `lookalike_fraction` of the patches are centred on
    healthy tissue that looks like tumor instead (see LookAlikes). patches_per_epoch: training
    patches per epoch over all ranks. The loader hands whole cases (image float16, prior uint8
    as cached); on_after_batch_transfer puts them into a pool of `pool_size` cases on the
    device, cuts the batch (PatchDraws: flips along `flip_axes` in the same gather), perturbs
    the priors (`perturbation`, None: off) and scales/shifts the image intensity. One validation
    case per batch.
    """

    def __init__(
        self,
        store: CaseStore,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        prior_tag: str,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float] | Sequence[float],
        lookalike_fraction: float,
        lookalike_flair_z: float,
        lookalike_margin: int,
        patches_per_epoch: int,
        batch_size: int,
        num_workers: int,
        pool_size: int,
        samples_per_case: int,
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
        self.lookalike_fraction = lookalike_fraction
        self.lookalikes = flair_lookalikes(lookalike_fraction, lookalike_flair_z, lookalike_margin)
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pool_size = pool_size
        self.samples_per_case = samples_per_case
        self.flip_axes = tuple(int(axis) for axis in flip_axes)
        self.perturbation = perturbation
        self.seed = seed
        # flips happen in the crop itself
        self.batch_augmentation = BatchAugmentation((), intensity_scale, intensity_shift)
        self.pooled: PooledBatches | None = None
        self._generator: torch.Generator | None = None

    def _world(self) -> tuple[int, int]:
        """(world size, rank) from the attached trainer; (1, 0) when used on its own."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _pooled(self, shard: Sequence[str]) -> PooledBatches:
        """The pool for this rank's cases, its canvas and prior format read from the store."""
        priors = [self.store.prior(case_id, self.prior_tag) for case_id in shard]
        for case_id, prior in zip(shard, priors, strict=True):
            check_case_arrays(case_id, self.store.image(case_id), prior, self.store.label(case_id))
        classes = {prior.shape[0] for prior in priors}
        if len(classes) != 1:
            raise ValueError(f"Stage2DataModule: priors of differing class counts {classes}")
        num_classes = classes.pop()
        stored_as_steps = all(prior.dtype == np.uint8 for prior in priors)
        draws = PatchDraws(
            self.patch_size,
            self.label_probabilities,
            num_classes,
            self.flip_axes,
            prior_scale=PRIOR_STEPS if stored_as_steps else 1.0,
            lookalike_fraction=self.lookalike_fraction,
        )
        _, rank = self._world()
        return PooledBatches(
            min(self.pool_size, len(shard)),
            largest_extent([prior.shape[1:] for prior in priors]),
            ("image", "prior", "label"),
            len(MODALITIES) + num_classes + 1,
            PatchDraws.location_groups(num_classes),
            draws,
            seed=self.seed * 1000 + rank,
            lookalikes=self.lookalikes,
        )

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        shard = self.train_ids[rank::world_size] or self.train_ids
        if self.pooled is None:
            self.pooled = self._pooled(shard)
        stream = CaseStream(
            CaseReader(self.store, self.prior_tag),
            shard,
            steps_per_epoch(self.patches_per_epoch, self.batch_size, world_size),
            self.batch_size,
            self.samples_per_case,
            self.pooled.capacity,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training: new cases into the pool; the step's patches cut, priors perturbed,
        intensities changed, all on the device. Validation: float32 image and probabilities."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return batch
        if not trainer.training:
            return case_on_device(batch)
        self.pooled.insert(batch["cases"], trainer.strategy.root_device)
        generator = self.augmentation_generator()
        batch = self.pooled.draw(self.batch_size, generator)
        if self.perturbation is not None:
            batch["prior"] = self.perturbation(batch["prior"], generator)
        return self.batch_augmentation(batch, generator)

    def augmentation_generator(self) -> torch.Generator:
        """The CPU generator of this rank's draws: seeded by the run's seed and the global
        rank, so DDP ranks do not repeat each other's draws."""
        if self._generator is None:
            _, rank = self._world()
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + rank)
        return self._generator

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        volumes = CaseVolumes(
            self.store, rank_share(self.val_ids, rank, world_size), self.prior_tag
        )
        return DataLoader(
            volumes,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 2),
            pin_memory=torch.cuda.is_available(),
        )
