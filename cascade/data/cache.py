"""Preprocessed cases on disk, one folder per preprocessing setting, read memory-mapped.

Layout under ``<root>/preprocessed-<hash12>/`` (hash of the settings, so other settings never
reuse these arrays)::

    settings.json                      the settings the hash was computed from
    cases/<case_id>/image.npy          float16 (4, x, y, z), C-contiguous, MODALITIES order
    cases/<case_id>/label.npy          uint8 (x, y, z) classes of the label scheme, if labelled
    cases/<case_id>/class_locations.npz
                                       uint16 (N, 3) voxel coordinates per tumor class, at most
                                       LOCATIONS_PER_CLASS each (Stage-2 patch centres); labelled
    cases/<case_id>/meta.json          crop box, model and input grids, label scheme and values
    cases/<case_id>/header.bin         NIfTI header bytes of the label (or t1) file
    cases/<case_id>/source.json        the case's files it was computed from: path, size, mtime
    cases/<case_id>/complete           written last: a folder without it is ignored and rebuilt
    locks/<case_id>.lock               held while the case is written
    priors/<tag>/<case_id>.npy         uint8 (classes, x, y, z) Stage-1 probabilities x 255

Images are z-scored intensities, whose float16 rounding (3 significant digits) is far below the
noise of an MRI and the training's own intensity augmentation; priors are probabilities, stored
in steps of 1/255 (`prior_probabilities` reads them back). Together with the label that is 52 %
of the float32 images and float16 priors before (experiments/bench).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from cascade.data.cases import Case
from cascade.data.labels import LabelScheme
from cascade.data.patches import PRIOR_STEPS, sample_class_locations
from cascade.data.preprocess import CaseMeta, Preprocessor, preprocess_case
from cascade.io import atomic_path, remove_stale_temporaries, temporary_sibling, write_text_atomic

if TYPE_CHECKING:
    import torchio as tio

# Part of the hashed settings: bump it when the stored arrays change meaning, so old caches
# are not reused by new code.
log = logging.getLogger(__name__)

# 2: class_locations.npz; 3: label schemes, model and input grids; 4: source.json;
# 5: float16 images, uint8 priors
CACHE_VERSION = 5
IMAGE_DTYPE = np.float16
PRIOR_DTYPE = np.uint8
PRIOR_SCALE = PRIOR_STEPS
HASH_LENGTH = 12
COMPLETE = "complete"
SOURCE = "source.json"
CLASS_LOCATIONS = "class_locations.npz"


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

    `settings` are the preprocessing config (`Preprocessor.from_settings`); their hash picks
    the folder root/preprocessed-<hash12>/. `preprocessing` overrides the preprocessor built
    from them (the settings must still describe it, they name the cache).
    """

    def __init__(
        self,
        root: Path | str,
        settings: Mapping[str, Any],
        preprocessing: Preprocessor | None = None,
    ) -> None:
        self.settings = _plain(settings)
        self.hash = settings_hash(self.settings)
        self.folder = Path(root) / f"preprocessed-{self.hash}"
        self._preprocessing = preprocessing

    @property
    def preprocessing(self) -> Preprocessor:
        if self._preprocessing is None:
            try:
                self._preprocessing = Preprocessor.from_settings(self.settings)
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

    def is_current(self, case: Case, check_scheme: bool = True) -> bool:
        """Complete, computed from the case's files as they are now, and (`check_scheme`) its
        label classes are those `case`'s scheme gives its file values (a 2023 case stays valid
        as 2024, whose values 0..3 mean the same classes)."""
        if not self.is_complete(case.case_id):
            return False
        folder = self._case_folder(case.case_id)
        try:
            stored = json.loads((folder / SOURCE).read_text())
        except (OSError, ValueError):
            return False
        if stored != source_identity(case):
            return False
        if not check_scheme:
            return True
        meta = self.meta(case.case_id)
        return _same_classes(meta.scheme, case.scheme, meta.label_values)

    def identity(self, case_ids: Sequence[str]) -> str:
        """Short hash of the source files of the cached cases `case_ids`: names what a stage
        was trained on, so other data with the same case ids trains anew."""
        digest = hashlib.sha256()
        for case_id in sorted(case_ids):
            digest.update(case_id.encode() + b"\0")
            digest.update((self._complete_folder(case_id) / SOURCE).read_bytes())
        return digest.hexdigest()[:HASH_LENGTH]

    def build(self, cases: Sequence[Case], progress: bool = True) -> None:
        """Preprocess and store every case not already current; atomic per case, one writer
        per case (a file lock), so parallel runs on one cache share the work."""
        todo = [case for case in cases if not self.is_current(case)]
        if not todo:
            return
        self.open_for_writing()
        description = f"preprocess ({len(cases) - len(todo)} of {len(cases)} cached)"
        for case in tqdm(todo, desc=description, unit="case", disable=not progress):
            self.build_case(case)

    def open_for_writing(self) -> None:
        """Make the folder ready for `build_case` (once per run, before any case is built)."""
        if not (self.folder / "cases").is_dir():
            self._say_what_is_not_reused()
        (self.folder / "cases").mkdir(parents=True, exist_ok=True)
        self._write_settings()
        remove_stale_temporaries(self.folder / "cases")

    def build_case(
        self, case: Case, subject_of: Callable[[Case], tio.Subject] | None = None
    ) -> None:
        """Preprocess and store `case` unless it is current, holding its lock (a run that built
        it while this one waited wins). `subject_of` reads the case (default `load_subject`),
        e.g. checking its voxels on the way."""
        with FileLock(self._lock_path(case.case_id)):
            if self.is_current(case):
                return
            subject = subject_of(case) if subject_of is not None else None
            image, label, meta = preprocess_case(case, self.preprocessing, subject)
            self.write_case(image, label, meta, source_identity(case))

    def write_case(
        self,
        image: np.ndarray,
        label: np.ndarray | None,
        meta: CaseMeta,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one preprocessed case atomically (temporary folder, then rename), with the
        identity of the files it came from; the priors of an earlier version of it go."""
        final = self._case_folder(meta.case_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_sibling(final)
        temporary.mkdir()
        try:
            _save_npy(temporary / "image.npy", np.ascontiguousarray(image, dtype=IMAGE_DTYPE))
            if label is not None:
                label = np.ascontiguousarray(label, dtype=np.uint8)
                _save_npy(temporary / "label.npy", label)
                _save_class_locations(temporary / CLASS_LOCATIONS, label)
            (temporary / "header.bin").write_bytes(meta.header)
            (temporary / "meta.json").write_text(json.dumps(meta.to_json(), indent=1))
            (temporary / SOURCE).write_text(json.dumps(dict(source or {}), sort_keys=True))
            (temporary / COMPLETE).write_text("")
            self._drop_priors(meta.case_id)
            self._move_into_place(temporary, final)
        finally:
            if temporary.exists():
                shutil.rmtree(temporary)

    @staticmethod
    def _move_into_place(temporary: Path, final: Path) -> None:
        if final.exists():  # left by an interrupted or older writer: not trusted
            shutil.rmtree(final)
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / COMPLETE).is_file():
                raise

    def _say_what_is_not_reused(self) -> None:
        """One line when a new cache folder starts beside older ones (other settings, or an
        earlier CACHE_VERSION whose arrays this code would misread): they are rebuilt here."""
        others = [path for path in self.folder.parent.glob("preprocessed-*") if path != self.folder]
        if others:
            log.warning(
                "preprocessing into %s: %d cache folder(s) of other settings or an earlier "
                "version beside it are not reused (delete them to free the space)",
                self.folder,
                len(others),
            )

    def _write_settings(self) -> None:
        path = self.folder / "settings.json"
        if path.is_file():
            return
        write_text_atomic(path, json.dumps(self.settings, indent=1, sort_keys=True))

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
        """Memory-mapped float16 (4, x, y, z), read-only (numpy and torch convert it to
        float32 as they copy)."""
        return np.load(self._complete_folder(case_id) / "image.npy", mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray | None:
        """Memory-mapped uint8 (x, y, z) classes, or None for an unlabelled case."""
        path = self._complete_folder(case_id) / "label.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Tumor class -> uint16 (N, 3) voxel coordinates, the bounded subsample stored
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

    def _lock_path(self, case_id: str) -> Path:
        path = self.folder / "locks" / f"{case_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _drop_priors(self, case_id: str) -> None:
        """Remove every prior of `case_id`: they were computed from arrays being replaced."""
        for path in (self.folder / "priors").glob(f"*/{case_id}.npy"):
            path.unlink(missing_ok=True)

    def has_prior(self, case_id: str, tag: str) -> bool:
        return self._prior_path(case_id, tag).is_file()

    def write_prior(self, case_id: str, tag: str, prior: np.ndarray) -> None:
        """Store Stage-1 probabilities (classes, x, y, z) in steps of 1/255 (uint8),
        atomically."""
        prior = np.asarray(prior)
        if prior.ndim != 4:
            raise ValueError(
                f"prior of case {case_id}: expected shape (classes, x, y, z), got {prior.shape}"
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
        with atomic_path(path) as temporary:
            _save_npy(temporary, quantise_prior(prior))

    def prior(self, case_id: str, tag: str) -> np.ndarray:
        """Memory-mapped uint8 (classes, x, y, z) probabilities x 255, read-only; see
        `prior_probabilities`."""
        path = self._prior_path(case_id, tag)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prior {tag} for case {case_id}")
        return np.load(path, mmap_mode="r")


def quantise_prior(prior: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Probabilities (any float dtype) as uint8 steps of 1/255, C-contiguous; a numpy array or a
    torch tensor (quantised where it lies, e.g. on the GPU); uint8 input is already in steps."""
    if isinstance(prior, torch.Tensor):
        if prior.dtype == torch.uint8:
            return prior.contiguous()
        scaled = prior.float().clamp(0.0, 1.0).mul_(PRIOR_SCALE).round_()
        return scaled.to(torch.uint8).contiguous()
    if np.asarray(prior).dtype == PRIOR_DTYPE:
        return np.ascontiguousarray(prior)
    scaled = np.rint(np.clip(np.asarray(prior, dtype=np.float32), 0.0, 1.0) * PRIOR_SCALE)
    return np.ascontiguousarray(scaled, dtype=PRIOR_DTYPE)


def prior_probabilities(stored: np.ndarray) -> np.ndarray:
    """float32 probabilities of a stored prior (or a part of one): uint8 steps of 1/255
    divided back; float priors (of stores that keep floats) are only converted."""
    probabilities = np.array(stored, dtype=np.float32)
    if np.asarray(stored).dtype == PRIOR_DTYPE:
        probabilities /= PRIOR_SCALE
    return probabilities


def source_identity(case: Case) -> dict[str, list]:
    """What a cached case was computed from: each file's resolved path, size and modification
    time (ns), by role. Cheap (a stat per file); a content hash would read every byte."""
    files = {f"image:{modality}": path for modality, path in case.images.items()}
    if case.label is not None:
        files["label"] = case.label
    identity = {}
    for role, path in files.items():
        status = Path(path).stat()
        identity[role] = [str(Path(path).resolve()), status.st_size, status.st_mtime_ns]
    return identity


def _same_classes(stored: LabelScheme, wanted: LabelScheme, values: Sequence[int]) -> bool:
    if stored == wanted:
        return True
    if stored.invalid_values(np.asarray(values)) or wanted.invalid_values(np.asarray(values)):
        return False
    return np.array_equal(
        stored.to_classes(np.asarray(values)), wanted.to_classes(np.asarray(values))
    )

    return True
