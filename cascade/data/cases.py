"""Find BraTS cases on disk, check them, and load them as TorchIO subjects.

Three file namings are understood, as ``.nii`` or ``.nii.gz``:
BraTS 2020 ``<id>_t1, _t1ce, _t2, _flair, _seg``; BraTS 2021 the same with ids ``BraTS2021_<n>``;
BraTS 2023+ ``<id>-t1n, -t1c, -t2w, -t2f, -seg`` (enhancing tumor labelled 3 instead of 4).
Modalities are matched by name only, never by file order.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from cascade.data.labels import LabelConvention, to_classes

if TYPE_CHECKING:
    import torchio as tio

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL = "label"

# File suffix -> role (a modality or LABEL), per naming; the separator before the suffix tells
# the namings apart, so "_t1" never matches "_t1ce" and "-t1n" never matches "_t1".
_SUFFIXES: dict[LabelConvention, tuple[str, dict[str, str]]] = {
    LabelConvention.BRATS2020: (
        "_",
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": LABEL},
    ),
    LabelConvention.BRATS2023: (
        "-",
        {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": LABEL},
    ),
}
_FILE_NAME = re.compile(r"^(?P<case_id>.+)(?P<separator>[_-])(?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")

# Largest affine difference (mm) still taken as the same voxel grid.
AFFINE_TOLERANCE_MM = 1e-3


class CaseError(ValueError):
    """A problem with a user's case files; str() is one line: "<path>: <problem>"."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = Path(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Case:
    """One patient: four co-registered MR images and an optional segmentation."""

    case_id: str
    images: dict[str, Path]  # keys exactly MODALITIES, in that order
    label: Path | None
    convention: LabelConvention = LabelConvention.BRATS2020

    def __post_init__(self) -> None:
        if set(self.images) != set(MODALITIES):
            raise ValueError(f"case {self.case_id}: images must have keys {MODALITIES}")
        # Fix the channel order here so every consumer can iterate images in MODALITIES order.
        ordered = {modality: Path(self.images[modality]) for modality in MODALITIES}
        object.__setattr__(self, "images", ordered)
        if self.label is not None:
            object.__setattr__(self, "label", Path(self.label))

    def output_name(self) -> str:
        """File name of a predicted segmentation, in the naming of the case's dataset."""
        if self.convention is LabelConvention.BRATS2023:
            return f"{self.case_id}-seg.nii.gz"
        return f"{self.case_id}.nii.gz"


@dataclass
class CaseSummary:
    """What validate_case learned about a case; label_counts maps file label value -> voxels."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    labelled: bool
    label_counts: dict[int, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Discovery


def _parse_name(path: Path) -> tuple[str, str, LabelConvention] | None:
    """(case_id, role, convention) of a BraTS file name, or None for any other file."""
    match = _FILE_NAME.match(path.name)
    if match is None:
        return None
    suffix = match["suffix"].lower()
    for convention, (separator, roles) in _SUFFIXES.items():
        if match["separator"] == separator and suffix in roles:
            return match["case_id"], roles[suffix], convention
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.name.endswith((".nii", ".nii.gz"))
    )


def _expected_path(folder: Path, case_id: str, role: str, convention: LabelConvention) -> Path:
    separator, roles = _SUFFIXES[convention]
    suffix = next(suffix for suffix, name in roles.items() if name == role)
    return folder / f"{case_id}{separator}{suffix}.nii.gz"


def _group_case(
    folder: Path, case_id: str, files: list[tuple[Path, str, LabelConvention]]
) -> tuple[Case | None, list[CaseError]]:
    """Build one Case from the files that share an id in one folder, or say what is wrong."""
    conventions = {convention for _, _, convention in files}
    if len(conventions) > 1:
        names = ", ".join(path.name for path, _, _ in files)
        return None, [CaseError(files[0][0], f"mixes BraTS 2020 and 2023 file names: {names}")]
    convention = conventions.pop()
    by_role: dict[str, list[Path]] = defaultdict(list)
    for path, role, _ in files:
        by_role[role].append(path)

    errors = []
    for role, paths in by_role.items():
        if len(paths) > 1:
            names = " and ".join(path.name for path in paths)
            errors.append(CaseError(paths[0], f"two files for {role}: {names}"))
    for modality in MODALITIES:
        if modality not in by_role:
            expected = _expected_path(folder, case_id, modality, convention)
            errors.append(CaseError(expected, f"missing {modality} image of case {case_id}"))
    if errors:
        return None, errors
    images = {modality: by_role[modality][0] for modality in MODALITIES}
    label = by_role[LABEL][0] if LABEL in by_role else None
    return Case(case_id, images, label, convention), []


def _scan_folder(folder: Path) -> tuple[list[Case], list[CaseError]]:
    """Cases whose files lie directly in `folder` (one case folder or a flat dataset)."""
    groups: dict[str, list[tuple[Path, str, LabelConvention]]] = defaultdict(list)
    for path in _nifti_files(folder):
        parsed = _parse_name(path)
        if parsed is not None:  # other NIfTI files (masks, notes, predictions) are not ours
            case_id, role, convention = parsed
            groups[case_id].append((path, role, convention))
    cases, errors = [], []
    for case_id, files in groups.items():
        case, case_errors = _group_case(folder, case_id, files)
        if case is not None:
            cases.append(case)
        errors.extend(case_errors)
    return cases, errors


def scan_cases(root: Path | str) -> tuple[list[Case], list[CaseError]]:
    """Find the cases under `root`, collecting every structural problem instead of stopping.

    `root` is one case folder, a flat folder of case files, or a dataset folder of case
    folders (one level deep). Cases are sorted by id.
    """
    root = Path(root)
    if not root.is_dir():
        problem = "not a folder" if root.exists() else "no such folder"
        return [], [CaseError(root, problem)]
    folders = [root] + sorted(
        path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    cases: list[Case] = []
    errors: list[CaseError] = []
    for folder in folders:
        try:
            folder_cases, folder_errors = _scan_folder(folder)
        except PermissionError as error:
            errors.append(CaseError(folder, f"cannot list folder ({error.strerror})"))
            continue
        cases.extend(folder_cases)
        errors.extend(folder_errors)

    first_seen: dict[str, Case] = {}
    unique = []
    for case in cases:
        if case.case_id in first_seen:
            other = first_seen[case.case_id].images["t1"].parent
            errors.append(
                CaseError(case.images["t1"].parent, f"case {case.case_id} also found in {other}")
            )
        else:
            first_seen[case.case_id] = case
            unique.append(case)
    if not unique and not errors:
        errors.append(
            CaseError(root, "no BraTS cases found (expected <id>_t1.nii.gz ... or <id>-t1n.nii.gz)")
        )
    return sorted(unique, key=lambda case: case.case_id), errors


def discover_cases(root: Path | str) -> list[Case]:
    """Find the cases under `root` (see scan_cases); raise CaseError for the first problem."""
    cases, errors = scan_cases(root)
    if errors:
        raise errors[0]
    return cases


# ---------------------------------------------------------------------------------------------
# Validation

_NIFTI1_MAGICS = (b"n+1\x00",)
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


def _check_header_bytes(path: Path) -> None:
    """Tell a damaged gzip from a file that is not NIfTI at all, before nibabel guesses."""
    try:
        if path.name.endswith(".gz"):
            with path.open("rb") as raw:
                if raw.read(2) != b"\x1f\x8b":
                    raise CaseError(path, "not a gzip file, although named .gz")
            with gzip.open(path, "rb") as stream:
                head = stream.read(548)
        else:
            with path.open("rb") as stream:
                head = stream.read(548)
    except (OSError, EOFError, zlib.error) as error:
        raise CaseError(
            path, f"cannot read, truncated or corrupt file ({_one_line(error)})"
        ) from None
    if len(head) < 348:
        raise CaseError(path, f"only {len(head)} bytes, too short for a NIfTI header (truncated?)")
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    is_nifti1 = 348 in sizes and head[344:348] in _NIFTI1_MAGICS
    is_nifti2 = 540 in sizes and head[4:12] == _NIFTI2_MAGIC
    if not (is_nifti1 or is_nifti2):
        raise CaseError(path, "not a NIfTI file (no NIfTI-1/2 header)")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_volume(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Header and (X, Y, Z) voxel array of a NIfTI file; raise CaseError for any defect."""
    _check_header_bytes(path)
    try:
        image = nib.load(path)
    except (ImageFileError, HeaderDataError) as error:
        raise CaseError(path, f"not a readable NIfTI file ({_one_line(error)})") from None
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise CaseError(path, f"cannot read ({_one_line(error)})") from None
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise CaseError(path, f"not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    # A trailing time/channel axis of size 1 (some converters write one) is the same volume.
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise CaseError(path, f"not a 3D volume: shape {shape}")
    if not np.isfinite(image.affine).all():
        raise CaseError(path, "affine contains NaN or Inf")
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise CaseError(path, f"truncated or corrupt data ({_one_line(error)})") from None
    return image, data.reshape(shape[:3])


def _check_finite(path: Path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise CaseError(path, f"{bad} voxels are NaN or Inf")


def _label_counts(path: Path, data: np.ndarray, convention: LabelConvention) -> dict[int, int]:
    """Voxels per label value; raise CaseError for values outside the convention."""
    _check_finite(path, data)
    if np.issubdtype(data.dtype, np.integer) and data.min() >= 0 and data.max() <= 255:
        counts = np.bincount(data.ravel().astype(np.intp, copy=False), minlength=1)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:  # floats, negatives or large integers: rare, so the slower sort is fine
        values, counts = np.unique(data, return_counts=True)
    allowed = convention.allowed_values
    invalid = [value for value in values.tolist() if value not in allowed]
    if invalid:
        shown = ", ".join(f"{value:g}" for value in invalid[:5])
        raise CaseError(
            path,
            f"label values {shown} not allowed in the {convention.value} convention {allowed}",
        )
    return {
        int(value): int(count)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True)
    }


def _check_same_grid(
    path: Path, image: nib.Nifti1Image, reference_path: Path, reference: nib.Nifti1Image
) -> None:
    shape, reference_shape = image.shape[:3], reference.shape[:3]
    if shape != reference_shape:
        raise CaseError(path, f"shape {shape} differs from {reference_path.name} {reference_shape}")
    codes = "".join(nib.aff2axcodes(image.affine))
    reference_codes = "".join(nib.aff2axcodes(reference.affine))
    if codes != reference_codes:
        raise CaseError(
            path, f"orientation {codes} differs from {reference_path.name} {reference_codes}"
        )
    difference = float(np.abs(image.affine - reference.affine).max())
    if difference > AFFINE_TOLERANCE_MM:
        raise CaseError(
            path, f"affine differs from {reference_path.name} by up to {difference:.4g} mm"
        )


def validate_case(case: Case) -> CaseSummary:
    """Read every file of `case` and check it is usable; raise CaseError for the first defect.

    Checks: readable NIfTI, 3D (or 4D with a trailing axis of 1), one grid (shape, orientation,
    affine within AFFINE_TOLERANCE_MM), finite values, no all-zero image, label values valid.
    """
    reference_path = case.images[MODALITIES[0]]
    reference = None
    for modality, path in case.images.items():
        image, data = _read_volume(path)
        if reference is None:
            reference = image
        else:
            _check_same_grid(path, image, reference_path, reference)
        _check_finite(path, data)
        # Small negative values are normal (interpolation), so only "no signal at all" is flagged.
        if not data.any():
            raise CaseError(path, f"{modality} image is all zero")

    label_counts: dict[int, int] = {}
    if case.label is not None:
        image, data = _read_volume(case.label)
        _check_same_grid(case.label, image, reference_path, reference)
        label_counts = _label_counts(case.label, data, case.convention)

    zooms = reference.header.get_zooms()[:3]
    return CaseSummary(
        case_id=case.case_id,
        shape=tuple(int(size) for size in reference.shape[:3]),
        spacing=tuple(float(zoom) for zoom in zooms),
        labelled=case.label is not None,
        label_counts=label_counts,
    )


# ---------------------------------------------------------------------------------------------
# Loading


def load_subject(case: Case) -> tio.Subject:
    """TorchIO subject: "t1", "t1ce", "t2", "flair" (read lazily), "label" (classes 0..3,
    (1, X, Y, Z) uint8, only if labelled) and "case_id"."""
    # Imported here so that `python -m cascade.check` does not pay for torch at start-up.
    import torch
    import torchio as tio

    subject_images: dict[str, object] = {
        modality: tio.ScalarImage(path) for modality, path in case.images.items()
    }
    if case.label is not None:
        image, data = _read_volume(case.label)
        _label_counts(case.label, data, case.convention)
        classes = to_classes(data, case.convention)
        subject_images[LABEL] = tio.LabelMap(
            tensor=torch.from_numpy(classes[np.newaxis]), affine=image.affine
        )
    return tio.Subject(case_id=case.case_id, **subject_images)
