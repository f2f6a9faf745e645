"""Stage-1 data: tumor-biased 2.5D slabs to train on (``cascade.data.slabs``), whole cases to
validate on, in one LightningDataModule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cascade.data.slab_augmentation import build_augmentation
from cascade.data.slabs import CaseStore, SlabDataset, SlabSampler, view_axis
from cascade.ranks import distributed_rank_and_world


class CaseImages(Dataset):
    """Whole validation cases: {"image" float32 (4, X, Y, Z), "label" uint8 (X, Y, Z),
    "case_id"}, so Stage 1 is scored as it is used, on the three-view prior of whole volumes."""

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
            # np.array: one copy from the read-only memory maps
            "image": torch.from_numpy(np.array(self.store.image(case_id), dtype=np.float32)),
            "label": torch.from_numpy(np.array(label, dtype=np.uint8)),
            "case_id": case_id,
        }


class Stage1DataModule(L.LightningDataModule):
    """Tumor-biased 2.5D slabs from the case store for Stage 1, whole cases to validate.

    Training batches: {"image": (B, 4 * slab_depth, H, W) float32, "label": (B, H, W) long},
    with (H, W) = slab_size; validation batches: one whole case (CaseImages). Under DDP each
    process samples from its own shard of the training cases; Lightning's distributed sampler
    (on by default) splits the epoch's slab count and the validation cases between processes.
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
        train_slabs_per_epoch: int,
        batch_size: int,
        num_workers: int,
        flip_probability: float,
        intensity_probability: float,
        log_gamma: float,
        bias_field_coefficient: float,
    ) -> None:
        super().__init__()
        for view in views:
            view_axis(view)
        self.store = store
        self.train_ids = sorted(train_ids)
        self.val_ids = sorted(val_ids)
        self.sampling = {
            "slab_depth": slab_depth,
            "views": list(views),
            "slab_size": list(slab_size),
            "tumor_fraction": tumor_fraction,
        }
        self.train_slabs_per_epoch = train_slabs_per_epoch
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = build_augmentation(
            flip_probability, intensity_probability, log_gamma, bias_field_coefficient
        )
        self.train_set: SlabDataset | None = None
        self.val_set: CaseImages | None = None

    @property
    def in_channels(self) -> int:
        return 4 * self.sampling["slab_depth"]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            rank, world = distributed_rank_and_world()
            shard = self.train_ids[rank::world]
            self.train_set = SlabDataset(
                SlabSampler(self.store, shard, **self.sampling),
                self.train_slabs_per_epoch,
                seed=None,
                augmentation=self.augmentation,
            )
        if self.val_set is None and stage in (None, "fit", "validate") and self.val_ids:
            self.val_set = CaseImages(self.store, self.val_ids)

    def _loader(self, dataset: Dataset | None, drop_last: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError("Stage1DataModule: call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,  # items are random draws already; the index only seeds them
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, drop_last=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, drop_last=False, batch_size=1)
