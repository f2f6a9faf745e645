"""One case from its files to the arrays the networks see, and the geometry to undo it.

Steps: load the modalities (a 4D file split by channel); resample any modality on its own grid
onto the reference grid (`geometry.reference_modality`: the finest); bring the case to the
training geometry (orientation and spacing of ``preprocessing.orientation/spacing``) unless it is
already there; crop to the brain, clip percentiles and take the robust z-score. `CaseMeta`
keeps what is needed to put a prediction back onto the input's exact grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torchio as tio

from cascade.boxes import Box
from cascade.data.cases import LABEL, MODALITIES, Case, load_subject
from cascade.data.geometry import (
    Grid,
    TrainingGeometry,
    align_modalities,
    reference_modality,
    to_training_geometry,
)
from cascade.data.labels import LabelScheme, get_scheme
from cascade.data.transforms import build_preprocessing

# Settings of the preprocessing config that set the geometry rather than the transforms.
GEOMETRY_KEYS = ("orientation", "spacing")


@dataclass(frozen=True)
class Preprocessor:
    """The intensity/crop transforms and, if set, the geometry every case is brought to."""

    transform: tio.Transform
    geometry: TrainingGeometry | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Preprocessor:
        """From the preprocessing config; without orientation and spacing (checkpoints of
        earlier versions) every case is read on its own grid."""
        settings = dict(settings)
        orientation, spacing = (settings.pop(key, None) for key in GEOMETRY_KEYS)
        if (orientation is None) != (spacing is None):
            raise ValueError("preprocessing: set both orientation and spacing, or neither")
        geometry = None
        if orientation is not None:
            geometry = TrainingGeometry(str(orientation), tuple(float(s) for s in spacing))
        return cls(build_preprocessing(**settings), geometry)


@dataclass(frozen=True)
class CaseMeta:
    """What is needed to put a prediction back into the patient's original file geometry.

    The arrays lie on the *model grid* (`model_affine`, `original_shape`), cropped to
    `crop_box`; the input's own grid is (`affine`, `input_shape`). Both are the same grid
    unless the case was resampled.
    """

    case_id: str
    crop_box: Box  # half-open ((x0, x1), (y0, y1), (z0, z1)) on the model grid
    original_shape: tuple[int, int, int]  # of the uncropped model grid
    affine: list[list[float]]  # 4 x 4, of the input's reference grid (for writing)
    spacing: tuple[float, float, float]  # of the input's reference grid
    scheme: LabelScheme
    header: bytes  # NIfTI header binary block of `header_source`, for writing predictions
    header_source: str  # "label" or the reference modality
    input_shape: tuple[int, int, int]
    model_affine: list[list[float]]
    label_values: tuple[int, ...] = ()  # distinct file values of the label, if any

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(stop - start for start, stop in self.crop_box)

    @property
    def resampled(self) -> bool:
        """Whether the model grid differs from the input's (then predictions are resampled)."""
        return not self.input_grid.same_as(Grid(self.original_shape, _hashable(self.model_affine)))

    @property
    def input_grid(self) -> Grid:
        return Grid(self.input_shape, _hashable(self.affine))

    def nifti_header(self) -> nib.Nifti1Header:
        """The original file's header (NIfTI-1 or NIfTI-2) rebuilt from its bytes."""
        header_class = nib.Nifti2Header if len(self.header) == 540 else nib.Nifti1Header
        return header_class(binaryblock=self.header)

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "crop_box": [list(pair) for pair in self.crop_box],
            "original_shape": list(self.original_shape),
            "affine": self.affine,
            "spacing": list(self.spacing),
            "labels": self.scheme.name,
            "header_source": self.header_source,
            "input_shape": list(self.input_shape),
            "model_affine": self.model_affine,
            "label_values": list(self.label_values),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], header: bytes) -> CaseMeta:
        return cls(
            case_id=data["case_id"],
            crop_box=tuple((int(start), int(stop)) for start, stop in data["crop_box"]),
            original_shape=tuple(int(size) for size in data["original_shape"]),
            affine=[[float(value) for value in row] for row in data["affine"]],
            spacing=tuple(float(value) for value in data["spacing"]),
            scheme=get_scheme(data["labels"]),
            header=header,
            header_source=data["header_source"],
            input_shape=tuple(int(size) for size in data["input_shape"]),
            model_affine=[[float(value) for value in row] for row in data["model_affine"]],
            label_values=tuple(int(value) for value in data.get("label_values", ())),
        )


def _hashable(affine: list[list[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(value) for value in row) for row in affine)


def preprocess_case(
    case: Case, preprocessor: Preprocessor | tio.Transform, subject: tio.Subject | None = None
) -> tuple[np.ndarray, np.ndarray | None, CaseMeta]:
    """Load (or take the `load_subject(case)` already read) and preprocess one case; needs no
    label (also used on new patients).

    Returns the image float32 (4, x, y, z) C-contiguous in MODALITIES order, the label uint8
    (x, y, z) classes or None, and the geometry to restore predictions.
    """
    if not isinstance(preprocessor, Preprocessor):
        preprocessor = Preprocessor(preprocessor)
    if subject is None:
        subject = load_subject(case)
    grids = {modality: Grid.of(subject[modality]) for modality in MODALITIES}
    reference = reference_modality(grids)
    subject = align_modalities(subject, reference)
    header_source = "label" if case.label is not None else reference
    header_path = case.label if case.label is not None else case.images[reference]
    header_image = nib.load(header_path)  # reads the header only; the voxels stay on disk
    # nibabel's affine of the file predictions are written beside, exactly as stored
    input_grid = Grid(grids[reference].shape, _hashable(header_image.affine.tolist()))
    header = header_image.header
    label_values: tuple[int, ...] = subject.get("label_values", ())

    if preprocessor.geometry is not None:
        subject = to_training_geometry(subject, preprocessor.geometry)
    model_grid = Grid.of(subject[MODALITIES[0]])
    subject = preprocessor.transform(subject)

    channels = []
    for modality in MODALITIES:
        data = subject[modality].data
        if data.shape[0] != 1:
            raise ValueError(f"{case.images[modality]}: expected one channel, got {data.shape[0]}")
        channels.append(data[0].numpy())
    image = np.stack(channels).astype(np.float32, copy=False)  # stack makes it C-contiguous
    label = None
    if LABEL in subject:
        label = np.ascontiguousarray(subject[LABEL].data[0].numpy(), dtype=np.uint8)

    model_shape = model_grid.shape
    crop_box = subject.get("crop_box", tuple((0, size) for size in model_shape))
    meta = CaseMeta(
        case_id=case.case_id,
        crop_box=tuple((int(start), int(stop)) for start, stop in crop_box),
        original_shape=tuple(int(size) for size in subject.get("original_shape", model_shape)),
        affine=np.asarray(header_image.affine, dtype=float).tolist(),
        spacing=input_grid.spacing,
        scheme=case.scheme,
        header=bytes(header.binaryblock),
        header_source=header_source,
        input_shape=input_grid.shape,
        model_affine=model_grid.matrix().tolist(),
        label_values=label_values,
    )
    return image, label, meta
