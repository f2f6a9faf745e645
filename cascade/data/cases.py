"""A case: one patient's four MR images and optional segmentation, and its TorchIO subject.

Cases are found by `cascade.data.discovery` and checked by `cascade.data.validation`.
Modalities are matched by name only, never by file order; inside the code they are always in
MODALITIES order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cascade.data.errors import CaseError
from cascade.data.labels import DEFAULT_SCHEME, LabelScheme
from cascade.data.nifti import read_volume

if TYPE_CHECKING:
    import torchio as tio

__all__ = ["LABEL", "MODALITIES", "Case", "CaseError", "CaseSummary", "load_subject"]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL = "label"


@dataclass(frozen=True)
class Case:
    """One patient: four MR images and an optional segmentation.

    `channels` is set for a 4D image holding all modalities (MSD): modality -> index on its
    last axis, with `channel_count` channels in the file; `images` then names that one file for
    every modality. `notes` say how a quirk of the release was read (e.g. which file was taken as
    the segmentation).
    """

    case_id: str
    images: dict[str, Path]  # keys exactly MODALITIES, in that order
    label: Path | None
    scheme: LabelScheme = DEFAULT_SCHEME
    channels: dict[str, int] | None = None
    channel_count: int | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if set(self.images) != set(MODALITIES):
            raise ValueError(f"case {self.case_id}: images must have keys {MODALITIES}")
        # Fix the channel order here so every consumer can iterate images in MODALITIES order.
        ordered = {modality: Path(self.images[modality]) for modality in MODALITIES}
        object.__setattr__(self, "images", ordered)
        if self.label is not None:
            object.__setattr__(self, "label", Path(self.label))

    @property
    def folder(self) -> Path:
        return self.images[MODALITIES[0]].parent

    def output_name(self) -> str:
        """File name of a predicted segmentation, in the naming of the case's dataset."""
        if self.scheme.naming == "brats2023":
            return f"{self.case_id}-seg.nii.gz"
        return f"{self.case_id}.nii.gz"


@dataclass
class CaseSummary:
    """What validation learned about a case; label_counts maps file label value -> voxels."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    labelled: bool
    label_counts: dict[int, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def load_subject(case: Case) -> tio.Subject:
    """TorchIO subject: "t1", "t1ce", "t2", "flair" (3D files read lazily), "label" (classes of
    the case's scheme, (1, X, Y, Z) uint8, only if labelled, with "label_values", the distinct
    file values it holds) and "case_id"."""
    # Imported here so that `python -m cascade.check` does not pay for torch at start-up.
    import torch
    import torchio as tio

    from cascade.data.validation import label_counts

    if case.channels is None:
        subject_images: dict[str, object] = {
            modality: tio.ScalarImage(path) for modality, path in case.images.items()
        }
    else:  # one 4D file: read once, one image per modality by its channel
        path = case.images[MODALITIES[0]]
        image, data = read_volume(path, case.channel_count)
        subject_images = {
            modality: tio.ScalarImage(
                tensor=torch.from_numpy(
                    np.ascontiguousarray(data[..., case.channels[modality]], dtype=np.float32)
                )[np.newaxis],
                affine=image.affine,
            )
            for modality in MODALITIES
        }
    values: dict[str, object] = {}
    if case.label is not None:
        image, data = read_volume(case.label)
        values["label_values"] = tuple(label_counts(case.label, data, case.scheme))
        classes = case.scheme.to_classes(data)
        subject_images[LABEL] = tio.LabelMap(
            tensor=torch.from_numpy(classes[np.newaxis]), affine=image.affine
        )
    return tio.Subject(case_id=case.case_id, **values, **subject_images)


def read_modality(case: Case, modality: str) -> np.ndarray:
    """The voxels (X, Y, Z) of one modality on its own file's grid (a 4D file's channel)."""
    image, data = read_volume(case.images[modality], case.channel_count)
    return data[..., case.channels[modality]] if case.channels is not None else data


def overlay_background(case: Case, shape: tuple[int, ...]) -> np.ndarray:
    """A grey image for overlays on a prediction of `shape`: the FLAIR, or when the FLAIR lies
    on a grid of its own, the first of T2, T1ce, T1 on the prediction's grid."""
    for modality in ("flair", "t2", "t1ce", "t1"):
        data = read_modality(case, modality)
        if data.shape[:3] == tuple(shape):
            return data
    return np.zeros(shape, dtype=np.float32)
