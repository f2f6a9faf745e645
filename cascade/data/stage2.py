"""Stage-2 data: 3D patches of image + Stage-1 prior from a TorchIO queue; whole volumes for val.

The case store is any object with `.image(id)` (4, X, Y, Z), `.prior(id, tag)` (4, X, Y, Z) and
`.label(id)` (X, Y, Z) arrays, such as PreprocessCache. Volumes are read when a subject is loaded
(in the queue's workers), never all at once.

Under DDP each process draws patches from its own shard of the training cases: the queue's
subject sampler is a DistributedSampler, so Lightning's own sampler injection must be off
(Trainer(use_distributed_sampler=False)). Lightning still calls `set_epoch` on the patch loader's
sampler every epoch, which passes it on to the subject sampler (new shuffle per epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torchio as tio
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cascade.data.batch_augmentation import BatchAugmentation
from cascade.data.prior_perturbation import PriorPerturbation


class CaseStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...
    def label(self, case_id: str) -> np.ndarray | None: ...
    def prior(self, case_id: str, tag: str) -> np.ndarray: ...


def load_case(store: CaseStore, case_id: str, prior_tag: str) -> dict[str, Tensor]:
    """One case as tensors: image, prior float32 (4, X, Y, Z); label uint8 (X, Y, Z)."""
    image = np.asarray(store.image(case_id), dtype=np.float32)
    prior = np.asarray(store.prior(case_id, prior_tag), dtype=np.float32)
    label = store.label(case_id)
    if label is None:
        raise ValueError(f"{case_id}: Stage-2 training needs a label, the case has none")
    label = np.asarray(label, dtype=np.uint8)
    if image.shape[1:] != prior.shape[1:] or image.shape[1:] != label.shape:
        raise ValueError(
            f"{case_id}: image {image.shape}, prior {prior.shape} and label {label.shape} "
            "do not match; rebuild the priors for this cache"
        )
    # np.array copies the read-only memmaps into writable memory for torch
    return {
        "image": torch.from_numpy(np.array(image)),
        "prior": torch.from_numpy(np.array(prior)),
        "label": torch.from_numpy(np.array(label)),
    }


class RandomIntensityScaleShift(tio.Transform):
    """Per channel, multiply the image `image_name` by U(1 - scale, 1 + scale) and add
    U(-shift, shift) inside the brain (non-zero voxels); other images are untouched.
    Stage2DataModule does this per batch instead (BatchAugmentation); the bench compares both."""

    def __init__(self, scale: float, shift: float, image_name: str = "image", **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.shift = float(shift)
        self.image_name = image_name
        self.args_names = ["scale", "shift", "image_name"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject[self.image_name]
        data = image.data
        shape = (data.shape[0], 1, 1, 1)
        factors = 1 + self.scale * (2 * torch.rand(shape) - 1)
        offsets = self.shift * (2 * torch.rand(shape) - 1)
        # background stays 0, as after preprocessing at inference
        image.set_data(data * factors + offsets * (data != 0))
        return subject


class CaseSubjects(Dataset):
    """tio.Subject(image, prior, label, case_id) per case id, read from the store on access.

    Offers what tio.Queue needs from a SubjectsDataset: len, indexing and dry_iter (the queue
    only counts the entries of dry_iter, so they are the case ids).
    """

    def __init__(
        self,
        store: CaseStore,
        case_ids: Sequence[str],
        prior_tag: str,
        transform: tio.Transform | None = None,
    ) -> None:
        self.store = store
        self.case_ids = list(case_ids)
        self.prior_tag = prior_tag
        self.transform = transform

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> tio.Subject:
        case_id = self.case_ids[index]
        arrays = load_case(self.store, case_id, self.prior_tag)
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=arrays["image"]),
            prior=tio.ScalarImage(tensor=arrays["prior"]),
            label=tio.LabelMap(tensor=arrays["label"][None]),
            case_id=case_id,
        )
        return subject if self.transform is None else self.transform(subject)

    def dry_iter(self) -> list[str]:
        return self.case_ids


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


class QueueSampler(Sampler[int]):
    """Sequential indices over the queue; forwards `set_epoch` (which Lightning calls on the
    loader's sampler each epoch) to the queue's subject sampler."""

    def __init__(self, queue: tio.Queue, subject_sampler: DistributedSampler) -> None:
        self.queue = queue
        self.subject_sampler = subject_sampler

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.queue)))

    def set_epoch(self, epoch: int) -> None:
        self.subject_sampler.set_epoch(epoch)


def collate_patches(patches: Sequence[tio.Subject]) -> dict[str, Tensor]:
    """Stack queue patches into image (B, 4, *p), prior (B, 4, *p) float32, label (B, *p) uint8."""
    return {
        "image": torch.stack([patch["image"].data for patch in patches]),
        "prior": torch.stack([patch["prior"].data for patch in patches]).float(),
        "label": torch.stack([patch["label"].data[0] for patch in patches]).to(torch.uint8),
    }


class Stage2DataModule(L.LightningDataModule):
    """Training patches (tumor-biased tio.LabelSampler) and whole validation volumes.

    label_probabilities: class -> relative chance that a patch is centred on that class
    (a mapping, or a list indexed by class).
    samples_per_volume patches per loaded case; queue_length patches kept in memory;
    num_workers load cases and perturb their priors inside the queue (the patch loader itself
    has none). perturbation (training only; its copy flag is turned off) damages the prior of
    each loaded case. Flips (image, prior and label alike) and the intensity scale/shift (image
    only) act on whole training batches once they are on the device: `batch_augmentation`, run
    by on_after_batch_transfer. One validation case per batch, cases split between ranks.
    """

    def __init__(
        self,
        store: CaseStore,
        train_ids: Sequence[str],
        val_ids: Sequence[str],
        prior_tag: str,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float] | Sequence[float],
        samples_per_volume: int,
        queue_length: int,
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
        self.samples_per_volume = samples_per_volume
        self.queue_length = queue_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.flip_axes = tuple(flip_axes)
        self.intensity_scale = intensity_scale
        self.intensity_shift = intensity_shift
        self.perturbation = perturbation
        self.seed = seed
        self.batch_augmentation = BatchAugmentation(flip_axes, intensity_scale, intensity_shift)
        self.subject_sampler: DistributedSampler | None = None

    def _world(self) -> tuple[int, int]:
        """(world size, rank) from the attached trainer; (1, 0) when used on its own."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_transform(self) -> tio.Compose:
        """Per-subject training transform (the prior perturbation); copy=False: each subject is
        built fresh per load. Flips and intensity come later, per batch."""
        transforms: list[tio.Transform] = []
        if self.perturbation is not None:
            self.perturbation.copy = False
            transforms.append(self.perturbation)
        return tio.Compose(transforms, copy=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Flips and intensity scale/shift on training batches, already on the device."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return batch
        return self.batch_augmentation(batch)

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        subjects = CaseSubjects(self.store, self.train_ids, self.prior_tag, self.train_transform())
        # drop_last=False pads the shards to equal length so every rank runs the same steps
        self.subject_sampler = DistributedSampler(
            subjects, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed
        )
        queue = tio.Queue(
            subjects,
            max_length=self.queue_length,
            samples_per_volume=self.samples_per_volume,
            sampler=tio.LabelSampler(self.patch_size, "label", self.label_probabilities),
            subject_sampler=self.subject_sampler,
            num_workers=self.num_workers,
            shuffle_subjects=False,  # the subject sampler shuffles
            shuffle_patches=True,
        )
        # num_workers=0: the queue's own workers load; a worker here would copy the queue
        return DataLoader(
            queue,
            batch_size=self.batch_size,
            sampler=QueueSampler(queue, self.subject_sampler),
            num_workers=0,
            collate_fn=collate_patches,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
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
        if self.subject_sampler is not None:
            self.subject_sampler.set_epoch(epoch)
