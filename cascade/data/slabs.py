"""2.5D slabs (k adjacent slices x 4 modalities) along several views, shared by training and
inference.

A slab is read from the memory-mapped case store as (4, H, W, k): the view's slice axis moved
last, k slices around a centre slice, zero-padded past the volume (zero is background after
the z-score). Augmentation runs on that 3D layout with TorchIO, then the k slices move into
channels in *modality-major* order: channel = modality * k + slice (see `slab_channels`).
`cascade.inference.multiview` builds slabs the same way at prediction time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchio as tio
from torch import Tensor
from torch.utils.data import Dataset

# Spatial axis of (X, Y, Z) that each view slices along.
VIEW_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


class CaseStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...  # float32 (4, X, Y, Z)
    def label(self, case_id: str) -> np.ndarray | None: ...  # uint8 (X, Y, Z)


def view_axis(view: str) -> int:
    """Spatial axis (0 = X, 1 = Y, 2 = Z) the view slices along."""
    if view not in VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEW_AXES)}")
    return VIEW_AXES[view]


def slab_channels(slabs: Tensor) -> Tensor:
    """(..., 4, H, W, k) slabs -> (..., 4 * k, H, W), channel = modality * k + slice."""
    return slabs.movedim(-1, -3).flatten(-4, -3)


@dataclass(frozen=True)
class Slab:
    """Where one slab comes from: case, view, centre slice, and the in-plane windows.

    windows: per in-plane axis (read_start, read_stop, write_offset) into a slab_size canvas.
    """

    case_id: str
    view: str
    centre: int
    windows: tuple[tuple[int, int, int], tuple[int, int, int]]
    tumor_centred: bool


@dataclass(frozen=True)
class _CaseIndex:
    shape: tuple[int, int, int]
    tumor_slices: tuple[np.ndarray, np.ndarray, np.ndarray]  # per spatial axis
    tumor_centre: tuple[int, int, int] | None


def _window(
    size: int, target: int, rng: np.random.Generator, focus: int | None
) -> tuple[int, int, int]:
    """Random crop (size >= target; containing `focus` when given) or random placement (pad)."""
    if size < target:
        return 0, size, int(rng.integers(0, target - size + 1))
    low, high = 0, size - target
    if focus is not None:
        low, high = max(low, focus - target + 1), min(high, focus)
    start = int(rng.integers(low, high + 1))
    return start, start + target, 0


class SlabSampler:
    """Draws tumor-biased slabs from labelled cases and reads them from the store.

    A draw picks a view and a case uniformly; with probability `tumor_fraction` the centre
    slice is one that contains tumor (if the case has any along that view), otherwise any slice.
    """

    def __init__(
        self,
        store: CaseStore,
        case_ids: Sequence[str],
        slab_depth: int,
        views: Sequence[str],
        slab_size: Sequence[int],
        tumor_fraction: float,
    ) -> None:
        if slab_depth < 1 or slab_depth % 2 == 0:
            raise ValueError(f"slab_depth must be odd and positive, got {slab_depth}")
        if not 0.0 <= tumor_fraction <= 1.0:
            raise ValueError(f"tumor_fraction must lie in [0, 1], got {tumor_fraction}")
        if not case_ids:
            raise ValueError("SlabSampler: no cases to sample from")
        self.store = store
        self.case_ids = list(case_ids)
        self.slab_depth = slab_depth
        for view in views:
            view_axis(view)
        self.views = list(views)
        self.slab_size = (int(slab_size[0]), int(slab_size[1]))
        self.tumor_fraction = tumor_fraction
        self.index = {case_id: self._index_case(case_id) for case_id in self.case_ids}

    def _index_case(self, case_id: str) -> _CaseIndex:
        label = self.store.label(case_id)
        if label is None:
            raise ValueError(f"case {case_id}: no label; Stage 1 trains on labelled cases only")
        tumor = np.asarray(label) > 0
        along = tuple(
            np.flatnonzero(tumor.any(axis=tuple(a for a in range(3) if a != axis)))
            for axis in range(3)
        )
        centre = None
        if along[0].size:
            centre = tuple(int(positions[0] + positions[-1]) // 2 for positions in along)
        return _CaseIndex(tuple(label.shape), along, centre)

    def draw(self, rng: np.random.Generator) -> Slab:
        view = self.views[int(rng.integers(len(self.views)))]
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        case = self.index[case_id]
        axis = view_axis(view)
        tumor_slices = case.tumor_slices[axis]
        tumor_centred = bool(tumor_slices.size) and rng.random() < self.tumor_fraction
        if tumor_centred:
            centre = int(tumor_slices[rng.integers(tumor_slices.size)])
        else:
            centre = int(rng.integers(case.shape[axis]))
        in_plane = [a for a in range(3) if a != axis]
        windows = tuple(
            _window(
                case.shape[a],
                target,
                rng,
                case.tumor_centre[a] if tumor_centred and case.tumor_centre else None,
            )
            for a, target in zip(in_plane, self.slab_size, strict=True)
        )
        return Slab(case_id, view, centre, windows, tumor_centred)

    def read(self, slab: Slab) -> tuple[np.ndarray, np.ndarray]:
        """-> image float32 (4, H, W, k) and label uint8 (1, H, W, k), H, W = slab_size."""
        axis = view_axis(slab.view)
        # moveaxis on a memmap is a view: the slicing below reads only the slab from disk
        image = np.moveaxis(self.store.image(slab.case_id), 1 + axis, -1)
        label = np.moveaxis(self.store.label(slab.case_id), axis, -1)[None]
        half = self.slab_depth // 2
        first, stop = slab.centre - half, slab.centre + half + 1
        depth = slice(max(first, 0), min(stop, image.shape[-1]))
        (h0, h1, h_at), (w0, w1, w_at) = slab.windows
        target = (slice(h_at, h_at + h1 - h0), slice(w_at, w_at + w1 - w0))
        target += (slice(depth.start - first, depth.stop - first),)
        source = (slice(h0, h1), slice(w0, w1), depth)
        shape = (*self.slab_size, self.slab_depth)
        image_slab = np.zeros((image.shape[0], *shape), dtype=np.float32)
        label_slab = np.zeros((1, *shape), dtype=np.uint8)
        image_slab[(slice(None), *target)] = image[(slice(None), *source)]
        label_slab[(slice(None), *target)] = label[(slice(None), *source)]
        return image_slab, label_slab


class SlabDataset(Dataset):
    """`length` slabs; item i is drawn with rng([seed, i]).

    seed None (training): the seed is drawn from torch's RNG, which differs per epoch, worker
    and (under seed_everything) rank, so every epoch sees fresh slabs.
    An int seed gives the same slabs every epoch (validation).
    """

    def __init__(
        self,
        sampler: SlabSampler,
        length: int,
        seed: int | None,
        augmentation: tio.Transform | None,
    ) -> None:
        self.sampler = sampler
        self.length = length
        self.seed = seed
        self.augmentation = augmentation

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        seed = int(torch.randint(2**31, ())) if self.seed is None else self.seed
        slab = self.sampler.draw(np.random.default_rng([seed, index]))
        image, label = self.sampler.read(slab)
        image, label = torch.from_numpy(image), torch.from_numpy(label)
        if self.augmentation is not None:
            subject = tio.Subject(
                image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label)
            )
            subject = self.augmentation(subject)
            image, label = subject["image"].data, subject["label"].data
        centre = self.sampler.slab_depth // 2
        return {
            "image": slab_channels(image.float()).contiguous(),  # (4k, H, W)
            "label": label[0, :, :, centre].long(),  # (H, W)
        }
