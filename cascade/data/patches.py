"""Stage-2 training patches read one at a time from the memory-mapped case store.

Each patch is read alone (about 15 MiB for 96^3, image and prior as float16), never the whole
case, so loader workers scale. Patch centres are label-biased as in nnU-Net: a class is drawn
with `label_probabilities`; a background centre is any voxel of the volume, a tumor centre one
of a stored subsample of that class's voxels (`sample_class_locations`, kept by the cache
beside each case).

A loader worker builds whole batches (`PatchBatches`) in shared memory and reads every patch
straight into them, so a batch reaches the training process without further copies. Image and
prior travel as float16, half the bytes of float32 (moving bytes between processes costs the
loader more than reading them): its relative error below 5e-4 is far under the intensity
augmentation (10 %), and mixed-precision training casts the network input to float16 anyway.
A prior stored as uint8 steps of 1/255 (cascade.data.cache) travels as it is stored, a quarter
of float32; `batch_probabilities` divides it back. The training step gets float32
(Stage2DataModule converts on the device).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, Dataset, get_worker_info

from cascade.data.cases import MODALITIES
from cascade.data.labels import MAX_CLASSES

# Voxel coordinates kept per tumor class and case: enough spread for centre draws, while a
# worker never holds millions of indices (a BraTS brain has about 8M background voxels).
LOCATIONS_PER_CLASS = 10_000
# Every class but background, of the largest scheme; a class a case lacks has no locations.
TUMOR_CLASSES = tuple(range(1, MAX_CLASSES))


class PatchStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...  # float32 (4, X, Y, Z), memory-mapped
    def prior(self, case_id: str, tag: str) -> np.ndarray: ...  # (classes, X, Y, Z)
    def label(self, case_id: str) -> np.ndarray | None: ...  # uint8 (X, Y, Z) classes
    def class_locations(self, case_id: str) -> Mapping[int, np.ndarray]: ...  # see below


def sample_class_locations(
    label: np.ndarray, limit: int = LOCATIONS_PER_CLASS
) -> dict[int, np.ndarray]:
    """Tumor class (1..3) -> uint16 (N, 3) coordinates of up to `limit` of its voxels in a
    (X, Y, Z) label, N = 0 for an absent class. Drawn by a fixed-seed generator, so a case
    always gets the same subsample, whoever computes it."""
    if max(label.shape) > np.iinfo(np.uint16).max:
        raise ValueError(f"label of shape {label.shape}: axes over 65535 voxels do not fit uint16")
    rng = np.random.default_rng(0)
    locations = {}
    for label_class in TUMOR_CLASSES:
        flat = np.flatnonzero(label == label_class)
        if flat.size > limit:
            flat = np.sort(rng.choice(flat, size=limit, replace=False))
        coordinates = np.unravel_index(flat, label.shape)
        locations[label_class] = np.stack(coordinates, axis=1).astype(np.uint16)
    return locations


def check_case_arrays(
    case_id: str, image: np.ndarray, prior: np.ndarray, label: np.ndarray | None
) -> np.ndarray:
    """The case's label, after checking that there is one and that image (4, X, Y, Z), prior
    (4, X, Y, Z) and label (X, Y, Z) share a grid; a one-line ValueError naming the case else."""
    if label is None:
        raise ValueError(f"{case_id}: Stage-2 training needs a label, the case has none")
    if image.shape[1:] != prior.shape[1:] or image.shape[1:] != label.shape:
        raise ValueError(
            f"{case_id}: image {image.shape}, prior {prior.shape} and label {label.shape} "
            "do not match; rebuild the priors for this cache"
        )
    return label


PRIOR_STEPS = 255  # a uint8 prior holds probabilities x 255 (cascade.data.cache)


def batch_probabilities(prior: Tensor) -> Tensor:
    """float32 probabilities of a batch's prior: uint8 steps of 1/255 divided back."""
    if prior.dtype == torch.uint8:
        return prior.float().div_(PRIOR_STEPS)
    return prior.float()


def patch_start(centre: int, size: int, patch: int) -> int:
    """First index of a `patch`-long window around `centre`, shifted to lie inside `size`."""
    return min(max(centre - patch // 2, 0), size - patch)


def empty_patches(
    count: int,
    patch_size: Sequence[int],
    shared: bool,
    num_classes: int,
    prior_dtype: torch.dtype = torch.float16,
) -> dict[str, Tensor]:
    """Uninitialised image (count, 4, *p) float16, prior (count, classes, *p) `prior_dtype`
    (float16, or uint8 steps of 1/255) and label (count, *p) uint8; in
    shared memory when `shared`, as DataLoader's own collate does in a worker, so that sending
    them to the training process copies nothing."""
    shapes = {
        "image": ((count, len(MODALITIES), *patch_size), torch.float16),
        "prior": ((count, num_classes, *patch_size), prior_dtype),
        "label": ((count, *patch_size), torch.uint8),
    }
    patches = {}
    for key, (shape, dtype) in shapes.items():
        if shared:
            size = int(np.prod(shape)) * dtype.itemsize
            storage = torch.UntypedStorage._new_shared(size)
            patches[key] = torch.empty(0, dtype=dtype).set_(storage, 0, shape)
        else:
            patches[key] = torch.empty(shape, dtype=dtype)
    return patches


class _CaseArrays(NamedTuple):
    image: np.ndarray
    prior: np.ndarray
    label: np.ndarray
    locations: Mapping[int, np.ndarray]


class RandomPatches(Dataset):
    """`length` random training patches of the cases `case_ids`.

    Item i comes from case `case_ids[i % len(case_ids)]` (so a sampler over the indices decides
    how often each case is seen) and is {"image" (4, *p) float16, "prior" (4, *p) float16,
    "label" (*p) uint8} (see the module notes on float16). Its centre class is drawn with
    `label_probabilities` (class -> weight) renormalised over the classes the case has;
    background when it has none of the wanted ones. Random draws come from torch's
    RNG, which the DataLoader seeds per worker. Every case must be at least patch-sized.
    """

    def __init__(
        self,
        store: PatchStore,
        case_ids: Sequence[str],
        prior_tag: str,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float],
        length: int,
    ) -> None:
        if not case_ids:
            raise ValueError("RandomPatches: no cases to draw patches from")
        if length < 1:
            raise ValueError(f"RandomPatches: length must be positive, got {length}")
        unknown = set(label_probabilities) - set(range(MAX_CLASSES))
        weights = list(label_probabilities.values())
        if unknown or not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"RandomPatches: label_probabilities needs classes 0..{MAX_CLASSES - 1} with "
                f"non-negative weights, not all zero; got {dict(label_probabilities)}"
            )
        self.store = store
        self.case_ids = list(case_ids)
        self.prior_tag = prior_tag
        self.patch_size = tuple(int(size) for size in patch_size)
        self.label_probabilities = {int(c): float(w) for c, w in label_probabilities.items()}
        self.length = length
        # checked at start-up, not when a worker first meets the case
        self.shapes = {case_id: self._checked_shape(case_id) for case_id in self.case_ids}
        prior_channels = {self.store.prior(case_id, prior_tag).shape[0] for case_id in case_ids}
        if len(prior_channels) != 1:
            raise ValueError(f"RandomPatches: priors of differing class counts {prior_channels}")
        self.num_classes = prior_channels.pop()
        stored = {self.store.prior(case_id, prior_tag).dtype for case_id in case_ids}
        # priors stored as uint8 steps travel so; float ones as float16
        self.prior_dtype = torch.uint8 if stored == {np.dtype(np.uint8)} else torch.float16
        self._opened: dict[str, _CaseArrays] = {}

    def _checked_shape(self, case_id: str) -> tuple[int, int, int]:
        """The case's (X, Y, Z), after checking that its arrays can give patches."""
        label = check_case_arrays(
            case_id,
            self.store.image(case_id),
            self.store.prior(case_id, self.prior_tag),
            self.store.label(case_id),
        )
        if any(size < patch for size, patch in zip(label.shape, self.patch_size, strict=True)):
            raise ValueError(
                f"{case_id}: volume {label.shape} is smaller than the patch {self.patch_size}; "
                "choose a smaller Stage-2 patch_size"
            )
        return tuple(int(size) for size in label.shape)  # type: ignore[return-value]

    def _arrays(self, case_id: str) -> _CaseArrays:
        """The case's memory maps and class locations, opened once per process: mapping the
        files anew for every patch costs a page fault per 4 KiB read."""
        if case_id not in self._opened:
            self._opened[case_id] = _CaseArrays(
                self.store.image(case_id),
                self.store.prior(case_id, self.prior_tag),
                self.store.label(case_id),
                self.store.class_locations(case_id),
            )
        return self._opened[case_id]

    def __getstate__(self) -> dict[str, Any]:
        # a worker started by pickling (spawn) opens its own maps; pickled maps would be copies
        return {**self.__dict__, "_opened": {}}

    def __len__(self) -> int:
        return self.length

    def draw_centre(self, case_id: str) -> tuple[int, tuple[int, int, int]]:
        """(class, voxel) of a random patch centre in the case."""
        locations = self._arrays(case_id).locations
        present = [0] + [c for c in TUMOR_CLASSES if len(locations.get(c, ())) > 0]
        weights = torch.tensor([self.label_probabilities.get(c, 0.0) for c in present])
        label_class = 0
        if weights.sum() > 0:
            label_class = present[int(torch.multinomial(weights, 1))]
        if label_class == 0:
            centre = tuple(int(torch.randint(size, ())) for size in self.shapes[case_id])
        else:
            candidates = locations[label_class]
            centre = tuple(int(v) for v in candidates[int(torch.randint(len(candidates), ()))])
        return label_class, centre  # type: ignore[return-value]

    def window(self, case_id: str, centre: Sequence[int]) -> tuple[slice, slice, slice]:
        """Slices of the patch around `centre`, shifted to lie inside the case's volume."""
        window = []
        for position, size, patch in zip(
            centre, self.shapes[case_id], self.patch_size, strict=True
        ):
            start = patch_start(position, size, patch)
            window.append(slice(start, start + patch))
        return tuple(window)  # type: ignore[return-value]

    def read(
        self, case_id: str, window: tuple[slice, slice, slice], out: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Copy the patch at `window` from the memory maps straight into `out` (tensors of
        the item's shapes and dtypes, e.g. views of a batch); returns `out`."""
        arrays = self._arrays(case_id)
        region = (slice(None), *window)
        with warnings.catch_warnings():
            # torch only reads the read-only maps here; its float32 -> float16 copy is several
            # times faster than numpy's
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out["image"].copy_(torch.from_numpy(arrays.image[region]))
            prior = torch.from_numpy(arrays.prior[region])
            if prior.dtype == torch.uint8 and out["prior"].is_floating_point():
                prior = prior.float().div_(PRIOR_STEPS)
            out["prior"].copy_(prior)
        np.copyto(out["label"].numpy(), arrays.label[window])
        return out

    def fill(self, index: int, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Item `index` written into `out` (see `read`); returns `out`."""
        case_id = self.case_ids[index % len(self.case_ids)]
        _, centre = self.draw_centre(case_id)
        return self.read(case_id, self.window(case_id, centre), out)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        empty = empty_patches(1, self.patch_size, False, self.num_classes, self.prior_dtype)
        patch = {key: value[0] for key, value in empty.items()}
        return self.fill(index, patch)


class PatchBatches(Dataset):
    """Whole batches of RandomPatches: item = a list of patch indices -> {"image" (B, 4, *p),
    "prior" (B, 4, *p), "label" (B, *p)}, built in shared memory inside a loader worker.
    Use with DataLoader(batch_size=None, sampler=EpochBatchSampler(...))."""

    def __init__(self, patches: RandomPatches) -> None:
        self.patches = patches

    def __len__(self) -> int:  # the patch indices it takes, as RandomPatches
        return len(self.patches)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        in_worker = get_worker_info() is not None
        patches = self.patches
        batch = empty_patches(
            len(indices), patches.patch_size, in_worker, patches.num_classes, patches.prior_dtype
        )
        for position, index in enumerate(indices):
            self.patches.fill(index, {key: value[position] for key, value in batch.items()})
        return batch


class EpochBatchSampler(BatchSampler):
    """BatchSampler that passes `set_epoch` (which Lightning calls on a loader's sampler every
    epoch) on to its sampler, e.g. a DistributedSampler, for a new shuffle per epoch."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
