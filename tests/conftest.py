"""Shared fixtures: tiny BraTS-like cases written as NIfTI files into tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# Tests run tiny tensors: one thread avoids oversubscribing small shared CPUs (measured 20x faster
# on a busy 2-core machine), and DataLoader workers use one thread each anyway.
torch.set_num_threads(1)

# Per naming: (default case id, separator, file suffix per role, enhancing tumor label value).
NAMINGS: dict[str, tuple[str, str, dict[str, str], int]] = {
    "brats2020": (
        "BraTS20_Training_001",
        "_",
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "label": "seg"},
        4,
    ),
    "brats2021": (
        "BraTS2021_00001",
        "_",
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "label": "seg"},
        4,
    ),
    "brats2023": (
        "BraTS-GLI-00001-000",
        "-",
        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "label": "seg"},
        3,
    ),
}
MODALITY_ROLES = ("t1", "t1ce", "t2", "flair")


def lps_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """1 mm LPS affine like real BraTS files: diag(-1, -1, 1), y offset shape[1] - 1."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def synthetic_volumes(
    shape: tuple[int, int, int], enhancing_value: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """int16 images of an ellipsoid "brain" (slightly negative at its rim, as after
    interpolation) and a uint8 label of nested necrosis / enhancing / edema spheres."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size) for size in shape), indexing="ij"), axis=-1)
    centre = (np.asarray(shape) - 1) / 2
    brain_radius = np.asarray(shape) * 0.4
    brain_distance = np.sqrt((((grid - centre) / brain_radius) ** 2).sum(-1))
    brain = brain_distance <= 1.0
    rim = (brain_distance > 1.0) & (brain_distance <= 1.1)

    tumor_centre = centre + np.asarray(shape) * 0.1
    tumor_distance = np.sqrt(((grid - tumor_centre) ** 2).sum(-1))
    label = np.zeros(shape, dtype=np.uint8)
    label[tumor_distance <= 4] = 2
    label[tumor_distance <= 2.5] = enhancing_value
    label[tumor_distance <= 1.5] = 1
    label[~brain] = 0

    volumes = {}
    for index, role in enumerate(MODALITY_ROLES):
        image = rng.normal(300 + 100 * index, 20, size=shape)
        image[label > 0] += 200
        image[~brain] = 0
        image[rim] = -rng.integers(1, 5, size=int(rim.sum()))
        volumes[role] = np.round(image).astype(np.int16)
    volumes["label"] = label
    return volumes


def write_brats_case(
    root: Path,
    naming: str = "brats2020",
    case_id: str | None = None,
    shape: tuple[int, int, int] = (24, 24, 16),
    extension: str = ".nii.gz",
    flat: bool = False,
    labelled: bool = True,
    arrays: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one case; returns role ("t1", "t1ce", "t2", "flair", "label") -> file path.

    Files go to root/<case_id>/ (or straight into root when flat). `arrays` replaces the
    data of some roles (any shape/dtype) to build broken cases.
    """
    default_id, separator, suffixes, enhancing_value = NAMINGS[naming]
    case_id = case_id or default_id
    folder = root if flat else root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    volumes = synthetic_volumes(shape, enhancing_value, seed)
    volumes.update(arrays or {})
    roles = MODALITY_ROLES + (("label",) if labelled else ())
    paths = {}
    for role in roles:
        path = folder / f"{case_id}{separator}{suffixes[role]}{extension}"
        data = np.asarray(volumes[role])
        nib.save(nib.Nifti1Image(data, lps_affine(data.shape[:3])), path)
        paths[role] = path
    return paths


@pytest.fixture
def write_case(tmp_path: Path) -> Callable[..., dict[str, Path]]:
    """Factory writing tiny BraTS-like cases into tmp_path (see write_brats_case)."""

    def write(root: Path | None = None, **options) -> dict[str, Path]:
        return write_brats_case(tmp_path if root is None else root, **options)

    return write
