"""Preprocessed cases on disk, one folder per preprocessing setting, read memory-mapped.

Layout under ``<root>/preprocessed-<hash12>/`` (hash of the settings, so other settings never
reuse these arrays)::

    settings.json                      the settings the hash was computed from
    cases/<case_id>/image.npy          float32 (4, x, y, z), C-contiguous, MODALITIES order
    cases/<case_id>/label.npy          uint8 (x, y, z) classes 0..3, only for labelled cases
    cases/<case_id>/class_locations.npz
                                       uint16 (N, 3) voxel coordinates per tumor class, at most
                                       LOCATIONS_PER_CLASS each (Stage-2 patch centres); labelled
    cases/<case_id>/meta.json          crop box, original shape, affine, spacing, convention
    cases/<case_id>/header.bin         NIfTI header bytes of the label (or t1) file
    cases/<case_id>/complete           written last: a folder without it is ignored and rebuilt
    priors/<tag>/<case_id>.npy         float16 (4, x, y, z) Stage-1 probabilities

Every case folder and prior is written under a temporary name and renamed into place, so a
killed process never leaves something that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torchio as tio
from tqdm.auto import tqdm

from cascade.data.cases import MODALITIES, Case, load_subject
from cascade.data.labels import NUM_CLASSES, LabelConvention
from cascade.data.patches import sample_class_locations
from cascade.data.transforms import CropBox, build_preprocessing

# Part of the hashed settings: bump it when the stored arrays change meaning, so old caches
# are not reused by new code.
CACHE_VERSION = 2  # 2: class_locations.npz
HASH_LENGTH = 12
COMPLETE = "complete"
CLASS_LOCATIONS = "class_locations.npz"
_TEMP_PREFIX = ".tmp-"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """Stable 12-hex-digit hash of a settings mapping (sorted JSON, with CACHE_VERSION)."""
    payload = {"cache_version": CACHE_VERSION, "settings": _plain(settings)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def _plain(value: Any) -> Any:
    """Mappings and sequences (OmegaConf containers included) as dicts and lists for JSON."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class CaseMeta:
    """What is needed to put a prediction back into the patient's original file geometry."""

    case_id: str
    crop_box: CropBox  # half-open ((x0, x1), (y0, y1), (z0, z1)) in the original grid
    original_shape: tuple[int, int, int]
    affine: list[list[float]]  # 4 x 4, of the original (uncropped) files
    spacing: tuple[float, float, float]
    convention: LabelConvention
    header: bytes  # NIfTI header binary block of `header_source`, for writing predictions
    header_source: str  # "label" or "t1"

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(stop - start for start, stop in self.crop_box)

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
            "convention": self.convention.value,
            "header_source": self.header_source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], header: bytes) -> CaseMeta:
        return cls(
            case_id=data["case_id"],
            crop_box=tuple((int(start), int(stop)) for start, stop in data["crop_box"]),
            original_shape=tuple(int(size) for size in data["original_shape"]),
            affine=[[float(value) for value in row] for row in data["affine"]],
            spacing=tuple(float(value) for value in data["spacing"]),
            convention=LabelConvention(data["convention"]),
            header=header,
            header_source=data["header_source"],
        )


def preprocess_case(
    case: Case, preprocessing: tio.Transform
) -> tuple[np.ndarray, np.ndarray | None, CaseMeta]:
    """Load and preprocess one case; needs no label (also used on new patients).

    Returns the image float32 (4, x, y, z) C-contiguous in MODALITIES order, the label uint8
    (x, y, z) classes 0..3 or None, and the geometry to restore predictions.
    """
    header_source = "label" if case.label is not None else "t1"
    reference_path = case.label if case.label is not None else case.images["t1"]
    reference = nib.load(reference_path)  # reads the header only; the voxels stay on disk
    original_shape = tuple(int(size) for size in reference.shape[:3])

    subject = preprocessing(load_subject(case))

    channels = []
    for modality in MODALITIES:
        data = subject[modality].data
        if data.shape[0] != 1:
            raise ValueError(f"{case.images[modality]}: expected one channel, got {data.shape[0]}")
        channels.append(data[0].numpy())
    image = np.stack(channels).astype(np.float32, copy=False)  # stack makes it C-contiguous
    label = None
    if "label" in subject:
        label = np.ascontiguousarray(subject["label"].data[0].numpy(), dtype=np.uint8)

    crop_box = subject.get("crop_box", tuple((0, size) for size in original_shape))
    meta = CaseMeta(
        case_id=case.case_id,
        crop_box=tuple((int(start), int(stop)) for start, stop in crop_box),
        original_shape=tuple(int(size) for size in subject.get("original_shape", original_shape)),
        affine=np.asarray(reference.affine, dtype=float).tolist(),
        spacing=tuple(float(zoom) for zoom in reference.header.get_zooms()[:3]),
        convention=case.convention,
        header=bytes(reference.header.binaryblock),
        header_source=header_source,
    )
    return image, label, meta


def _temp_name(name: str) -> str:
    """Temporary sibling name that says which host and process is writing it."""
    return f"{_TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as stream:  # a file object keeps np.save from renaming the file
        np.save(stream, array, allow_pickle=False)


def _save_class_locations(path: Path, label: np.ndarray) -> None:
    locations = sample_class_locations(label)
    with path.open("wb") as stream:
        np.savez(
            stream, **{f"class{label_class}": array for label_class, array in locations.items()}
        )


def _check_name(kind: str, name: str) -> None:
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"{kind} {name!r} is not usable as a file name")


class PreprocessCache:
    """Preprocessed arrays of many cases, built once per preprocessing setting.

    `settings` are the keyword arguments of `build_preprocessing` (the preprocessing config);
    their hash picks the folder root/preprocessed-<hash12>/. `preprocessing` overrides the
    transform built from them (the settings must still describe it, they name the cache).
    """

    def __init__(
        self,
        root: Path | str,
        settings: Mapping[str, Any],
        preprocessing: tio.Transform | None = None,
    ) -> None:
        self.settings = _plain(settings)
        self.hash = settings_hash(self.settings)
        self.folder = Path(root) / f"preprocessed-{self.hash}"
        self._preprocessing = preprocessing

    @property
    def preprocessing(self) -> tio.Transform:
        if self._preprocessing is None:
            try:
                self._preprocessing = build_preprocessing(**self.settings)
            except TypeError as error:
                raise ValueError(
                    f"{self.folder}: preprocessing settings {sorted(self.settings)} do not match "
                    f"build_preprocessing ({error})"
                ) from None
        return self._preprocessing

    # ----------------------------------------------------------------------------- cases

    def _case_folder(self, case_id: str) -> Path:
        _check_name("case id", case_id)
        return self.folder / "cases" / case_id

    def is_complete(self, case_id: str) -> bool:
        return (self._case_folder(case_id) / COMPLETE).is_file()

    def build(self, cases: Sequence[Case], progress: bool = True) -> None:
        """Preprocess and store every case not already complete; atomic per case."""
        todo = [case for case in cases if not self.is_complete(case.case_id)]
        if not todo:
            return
        (self.folder / "cases").mkdir(parents=True, exist_ok=True)
        self._write_settings()
        self._remove_stale_temporaries(self.folder / "cases")
        description = f"preprocess ({len(cases) - len(todo)} of {len(cases)} cached)"
        for case in tqdm(todo, desc=description, unit="case", disable=not progress):
            image, label, meta = preprocess_case(case, self.preprocessing)
            self.write_case(image, label, meta)

    def write_case(self, image: np.ndarray, label: np.ndarray | None, meta: CaseMeta) -> None:
        """Store one preprocessed case atomically (temporary folder, then rename)."""
        final = self._case_folder(meta.case_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.parent / _temp_name(meta.case_id)
        temporary.mkdir()
        try:
            _save_npy(temporary / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
            if label is not None:
                label = np.ascontiguousarray(label, dtype=np.uint8)
                _save_npy(temporary / "label.npy", label)
                _save_class_locations(temporary / CLASS_LOCATIONS, label)
            (temporary / "header.bin").write_bytes(meta.header)
            (temporary / "meta.json").write_text(json.dumps(meta.to_json(), indent=1))
            (temporary / COMPLETE).write_text("")
            self._move_into_place(temporary, final)
        finally:
            if temporary.exists():
                shutil.rmtree(temporary)

    @staticmethod
    def _move_into_place(temporary: Path, final: Path) -> None:
        if (final / COMPLETE).is_file():  # another process finished it meanwhile
            return
        if final.exists():  # left by an interrupted or older writer: not trusted
            shutil.rmtree(final)
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / COMPLETE).is_file():
                raise

    def _write_settings(self) -> None:
        path = self.folder / "settings.json"
        if path.is_file():
            return
        temporary = self.folder / _temp_name("settings.json")
        temporary.write_text(json.dumps(self.settings, indent=1, sort_keys=True))
        os.replace(temporary, path)

    @staticmethod
    def _remove_stale_temporaries(folder: Path) -> None:
        """Delete temporaries left by killed processes of this host (not by running ones)."""
        prefix = f"{_TEMP_PREFIX}{socket.gethostname()}-"
        for path in folder.glob(f"{prefix}*"):
            pid = path.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or _process_alive(int(pid)):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def case_ids(self) -> list[str]:
        """Ids of the complete cases, sorted."""
        folder = self.folder / "cases"
        if not folder.is_dir():
            return []
        return sorted(
            path.name
            for path in folder.iterdir()
            if not path.name.startswith(".") and (path / COMPLETE).is_file()
        )

    def _complete_folder(self, case_id: str) -> Path:
        folder = self._case_folder(case_id)
        if not (folder / COMPLETE).is_file():
            raise FileNotFoundError(
                f"{folder}: case {case_id} is not in the preprocessed cache (build it first)"
            )
        return folder

    def image(self, case_id: str) -> np.ndarray:
        """Memory-mapped float32 (4, x, y, z), read-only."""
        return np.load(self._complete_folder(case_id) / "image.npy", mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray | None:
        """Memory-mapped uint8 (x, y, z) classes 0..3, or None for an unlabelled case."""
        path = self._complete_folder(case_id) / "label.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Tumor class (1..3) -> uint16 (N, 3) voxel coordinates, the bounded subsample stored
        with a labelled case (cascade.data.patches.sample_class_locations)."""
        folder = self._complete_folder(case_id)
        path = folder / CLASS_LOCATIONS
        if not path.is_file():
            raise ValueError(f"{folder}: case {case_id} has no label, so no class locations")
        with np.load(path, allow_pickle=False) as stored:
            return {int(name.removeprefix("class")): stored[name] for name in stored.files}

    def meta(self, case_id: str) -> CaseMeta:
        folder = self._complete_folder(case_id)
        data = json.loads((folder / "meta.json").read_text())
        return CaseMeta.from_json(data, (folder / "header.bin").read_bytes())

    # ---------------------------------------------------------------------------- priors

    def _prior_path(self, case_id: str, tag: str) -> Path:
        _check_name("case id", case_id)
        _check_name("prior tag", tag)
        return self.folder / "priors" / tag / f"{case_id}.npy"

    def has_prior(self, case_id: str, tag: str) -> bool:
        return self._prior_path(case_id, tag).is_file()

    def write_prior(self, case_id: str, tag: str, prior: np.ndarray) -> None:
        """Store Stage-1 probabilities (4, x, y, z) as float16, atomically."""
        prior = np.asarray(prior)
        if prior.ndim != 4 or prior.shape[0] != NUM_CLASSES:
            raise ValueError(
                f"prior of case {case_id}: expected shape ({NUM_CLASSES}, x, y, z), "
                f"got {prior.shape}"
            )
        if self.is_complete(case_id):
            expected = self.image(case_id).shape[1:]
            if prior.shape[1:] != expected:
                raise ValueError(
                    f"prior of case {case_id}: spatial shape {prior.shape[1:]} differs from "
                    f"the cached image {expected}"
                )
        path = self._prior_path(case_id, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / _temp_name(path.name)
        try:
            _save_npy(temporary, np.ascontiguousarray(prior, dtype=np.float16))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def prior(self, case_id: str, tag: str) -> np.ndarray:
        """Memory-mapped float16 (4, x, y, z), read-only."""
        path = self._prior_path(case_id, tag)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prior {tag} for case {case_id}")
        return np.load(path, mmap_mode="r")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
