"""Stage-1 data: tumor-biased 2.5D slabs cut on the training device from a pool of whole cases
(``cascade.sampling``), and whole cases to validate on, in one LightningDataModule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cascade.data.cases import MODALITIES
from cascade.data.slabs import CaseStore, view_axis
from cascade.ranks import distributed_rank_and_world, rank_share
from cascade.sampling.intensity import SlabIntensity
from cascade.sampling.lookalikes import flair_lookalikes
from cascade.sampling.pooled import PooledBatches, largest_extent
from cascade.sampling.slabs import TUMOR_GROUP, SlabDraws
from cascade.sampling.stream import CaseReader, CaseStream, steps_per_epoch


class CaseImages(Dataset):
    """Whole validation cases: {"image" (4, X, Y, Z) as stored, "label" uint8 (X, Y, Z),
    "case_id"}, so Stage 1 is scored as it is used, on the three-view prior of whole volumes;
    the image becomes float32 on the device."""

    def __init__(self, store: CaseStore, case_ids: Sequence[str]) -> None:
        self.store = store
        self.case_ids = list(case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        label = self.store.label(case_id)
        if label is None:
            raise ValueError(f"{case_id}: Stage-1 validation needs a label, the case has none")
        return {
            # np.array: one sequential copy from the read-only memory maps
            "image": torch.from_numpy(np.array(self.store.image(case_id))),
            "label": torch.from_numpy(np.array(label, dtype=np.uint8)),
            "case_id": case_id,
        }


class Stage1DataModule(L.LightningDataModule):
    """Tumor-biased 2.5D slabs from the case store for Stage 1, whole cases to validate.

    The training loader hands whole cases (CaseStream); on the device, on_after_batch_transfer
    puts them into a pool of `pool_size` cases and cuts the batch from it (a share of the slabs
    centred on FLAIR-bright healthy tissue with `lookalike_fraction`, see LookAlikes): {"image": (B,
    4 * slab_depth, H, W) float32, "label": (B, H, W) long}, (H, W) = slab_size, flipped and
    intensity-augmented there (SlabDraws, SlabIntensity). Validation batches: one whole case.
    Under DDP each process streams its own shard of the training cases, with its own draws,
    and validates its own share of the validation cases (Lightning's sampler injection off).
    """

    def __init__(
        self,
        store: CaseStore,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        slab_depth: int,
        views: Sequence[str],
        slab_size: Sequence[int],
        tumor_fraction: float,
        lookalike_fraction: float,
        lookalike_flair_z: float,
        lookalike_margin: int,
        train_slabs_per_epoch: int,
        batch_size: int,
        num_workers: int,
        pool_size: int,
        samples_per_case: int,
        flip_probability: float,
        intensity_probability: float,
        log_gamma: float,
        bias_field_coefficient: float,
        gamma_per_modality: bool,
        seed: int,
    ) -> None:
        super().__init__()
        for view in views:
            view_axis(view)
        if not train_ids:
            raise ValueError("Stage1DataModule: no training cases")
        self.store = store
        self.train_ids = sorted(train_ids)
        self.val_ids = sorted(val_ids)
        self.slab_depth = slab_depth
        self.train_slabs_per_epoch = train_slabs_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pool_size = pool_size
        self.samples_per_case = samples_per_case
        self.seed = seed
        self.draws = SlabDraws(
            slab_depth, views, slab_size, tumor_fraction, flip_probability, lookalike_fraction
        )
        self.lookalikes = flair_lookalikes(lookalike_fraction, lookalike_flair_z, lookalike_margin)
        self.intensity = SlabIntensity(
            intensity_probability,
            log_gamma,
            bias_field_coefficient,
            gamma_groups=len(MODALITIES) if gamma_per_modality else 1,
        )
        self.pooled: PooledBatches | None = None
        self._generator: torch.Generator | None = None

    @property
    def in_channels(self) -> int:
        return len(MODALITIES) * self.slab_depth

    def _shard(self) -> list[str]:
        rank, world = distributed_rank_and_world()
        return self.train_ids[rank::world] or self.train_ids

    def train_dataloader(self) -> DataLoader:
        _, world = distributed_rank_and_world()
        shard = self._shard()
        capacity = min(self.pool_size, len(shard))
        if self.pooled is None:
            canvas = largest_extent([self.store.image(case_id).shape[1:] for case_id in shard])
            rank, _ = distributed_rank_and_world()
            self.pooled = PooledBatches(
                capacity, canvas, ("image", "label"), len(MODALITIES) + 1, [TUMOR_GROUP],
                self.draws, seed=self.seed * 1000 + rank, lookalikes=self.lookalikes,
            )  # fmt: skip
        stream = CaseStream(
            CaseReader(self.store),
            shard,
            steps_per_epoch(self.train_slabs_per_epoch, self.batch_size, world),
            self.batch_size,
            self.samples_per_case,
            capacity,
        )
        # batch_size None: a stream item is already one step's cases
        return _loader(stream, None, self.num_workers, persistent=True)

    def val_dataloader(self) -> DataLoader:
        rank, world = distributed_rank_and_world()
        cases = CaseImages(self.store, rank_share(self.val_ids, rank, world))
        return _loader(cases, 1, min(self.num_workers, 2), persistent=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training: new cases into the pool, then the step's slabs cut and augmented."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training or self.pooled is None:
            return batch
        self.pooled.insert(batch["cases"], trainer.strategy.root_device)
        generator = self.augmentation_generator()
        slabs = self.pooled.draw(self.batch_size, generator)
        return {**slabs, "image": self.intensity(slabs["image"], generator)}

    def augmentation_generator(self) -> torch.Generator:
        """The CPU generator of this rank's draws, seeded by the run's seed and the rank."""
        if self._generator is None:
            rank, _ = distributed_rank_and_world()
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + rank)
        return self._generator


def _loader(
    dataset: Dataset, batch_size: int | None, num_workers: int, persistent: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=persistent and num_workers > 0,
    )
