"""Find the cases of a dataset as its release lays them out on disk.

Understood, as ``.nii`` or ``.nii.gz``, in any folder depth (HGG/LGG, Kaggle's double nesting,
``training_data1_v2/``):

- BraTS 2018-2021 naming ``<id>_t1, _t1ce, _t2, _flair, _seg``;
- BraTS 2023+ naming ``<id>-t1n, -t1c, -t2w, -t2f, -seg`` (2023 GLI/MET/MEN/PED/SSA, 2024);
- the Medical Segmentation Decathlon (``dataset.json`` with ``imagesTr/``, ``labelsTr/``,
  ``imagesTs/``; one 4D image per case, its channels named in dataset.json).

Symbolic links to case folders and files are followed (a split or a hold-out built as a folder of
links), each real folder once, so a link back up the tree is no loop. Other files (CSV tables,
notes, hidden files such as macOS ``._*`` forks) are ignored. Release
quirks: a case folder with the four images and one other NIfTI file whose name says "seg" takes
that file as the segmentation (BraTS 2020's case 355 ships ``W39_1998.09.19_Segm.nii``), and
says so in the case's notes.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from cascade.data.cases import LABEL, MODALITIES, Case
from cascade.data.errors import CaseError
from cascade.data.labels import NAMING_DEFAULT, SCHEMES

# File suffix -> role (a modality or LABEL), per naming; the separator before the suffix tells
# the namings apart, so "_t1" never matches "_t1ce" and "-t1n" never matches "_t1".
_SUFFIXES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2020": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": LABEL}),
    "brats2023": ("-", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": LABEL}),
}
_FILE_NAME = re.compile(r"^(?P<case_id>.+)(?P<separator>[_-])(?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Folders that archive tools add and that never hold cases.
_IGNORED_FOLDERS = {"__MACOSX"}

MSD_DESCRIPTION = "dataset.json"
# Channel names in MSD/nnU-Net dataset.json files -> our modality names (case-insensitive).
_CHANNEL_NAMES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "native t1": "t1",
    "t1gd": "t1ce", "t1ce": "t1ce", "t1c": "t1ce", "t1-gd": "t1ce", "t1+c": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2-flair": "flair", "t2f": "flair", "t2 flair": "flair",
}  # fmt: skip


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_FOLDERS


def _parse_name(path: Path) -> tuple[str, str, str] | None:
    """(case_id, role, naming) of a BraTS file name, or None for any other file."""
    match = _FILE_NAME.match(path.name)
    if match is None:
        return None
    suffix = match["suffix"].lower()
    for naming, (separator, roles) in _SUFFIXES.items():
        if match["separator"] == separator and suffix in roles:
            return match["case_id"], roles[suffix], naming
    return None


def _expected_path(folder: Path, case_id: str, role: str, naming: str) -> Path:
    separator, roles = _SUFFIXES[naming]
    suffix = next(suffix for suffix, name in roles.items() if name == role)
    return folder / f"{case_id}{separator}{suffix}.nii.gz"


def _group_case(
    folder: Path, case_id: str, files: list[tuple[Path, str, str]]
) -> tuple[Case | None, list[CaseError]]:
    """Build one Case from the files that share an id in one folder, or say what is wrong."""
    namings = {naming for _, _, naming in files}
    if len(namings) > 1:
        names = ", ".join(path.name for path, _, _ in files)
        return None, [CaseError(files[0][0], f"mixes BraTS 2020 and 2023 file names: {names}")]
    naming = namings.pop()
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
            expected = _expected_path(folder, case_id, modality, naming)
            errors.append(CaseError(expected, f"missing {modality} image of case {case_id}"))
    if errors:
        return None, errors
    images = {modality: by_role[modality][0] for modality in MODALITIES}
    label = by_role[LABEL][0] if LABEL in by_role else None
    return Case(case_id, images, label, SCHEMES[NAMING_DEFAULT[naming]]), []


def _stray_segmentation(case: Case, others: list[Path]) -> Case:
    """`case` with a misnamed segmentation of its folder taken as its label (BraTS 2020 355)."""
    candidates = [path for path in others if "seg" in path.name.lower()]
    if case.label is not None or len(candidates) != 1:
        return case
    note = f"label {candidates[0].name} (taken as the segmentation: the only *seg* file)"
    return Case(case.case_id, case.images, candidates[0], case.scheme, notes=(note,))


def _scan_folder(folder: Path, files: list[str]) -> tuple[list[Case], list[CaseError]]:
    """Cases whose files lie directly in `folder` (one case folder or a flat dataset)."""
    groups: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    others = []
    for name in sorted(files):
        path = folder / name
        if _hidden(name) or not name.endswith(_NIFTI_SUFFIXES):
            continue
        parsed = _parse_name(path)
        if parsed is None:  # other NIfTI files (masks, notes, predictions) are not ours
            others.append(path)
            continue
        case_id, role, naming = parsed
        groups[case_id].append((path, role, naming))
    cases, errors = [], []
    for case_id, group in groups.items():
        case, case_errors = _group_case(folder, case_id, group)
        if case is not None:
            cases.append(case)
        errors.extend(case_errors)
    if len(cases) == 1 and others:
        cases = [_stray_segmentation(cases[0], others)]
    return cases, errors


def _modality_of_channel(name: str) -> str | None:
    return _CHANNEL_NAMES.get(name.strip().lower())


def _msd_channels(description: Path, content: dict) -> tuple[dict[str, int], int]:
    """modality -> channel index from dataset.json's "modality" (MSD) or "channel_names"."""
    named = content.get("modality") or content.get("channel_names")
    if not isinstance(named, dict) or not named:
        raise CaseError(description, 'no "modality" (channel names) in dataset.json')
    channels: dict[str, int] = {}
    for index, name in named.items():
        modality = _modality_of_channel(str(name))
        if modality is None or not str(index).isdigit():
            raise CaseError(description, f"channel {index} {name!r} is not one of {MODALITIES}")
        if modality in channels:
            raise CaseError(description, f"two channels are {modality}: {named}")
        channels[modality] = int(index)
    missing = [modality for modality in MODALITIES if modality not in channels]
    if missing:
        raise CaseError(description, f"dataset.json names no {', '.join(missing)} channel")
    return channels, len(named)


def _msd_path(folder: Path, description: Path, relative: object) -> Path:
    if not isinstance(relative, str) or not relative:
        raise CaseError(description, f"file entry {relative!r} is not a path")
    path = (folder / relative).resolve()
    if not path.is_file():
        raise CaseError(description, f"names missing file {relative}")
    return path


def _msd_case_id(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def scan_msd(folder: Path) -> tuple[list[Case], list[CaseError]]:
    """The cases a Decathlon-style dataset.json lists: "training" (labelled) and "test"."""
    description = folder / MSD_DESCRIPTION
    try:
        content = json.loads(description.read_text())
    except (OSError, ValueError) as error:
        return [], [CaseError(description, f"not a readable dataset.json ({error})")]
    try:
        channels, channel_count = _msd_channels(description, content)
    except CaseError as error:
        return [], [error]
    entries = [(entry, True) for entry in content.get("training", [])]
    entries += [(entry, False) for entry in content.get("test", [])]
    cases, errors = [], []
    for entry, labelled in entries:
        try:
            if labelled:
                if not isinstance(entry, dict):
                    raise CaseError(description, f"training entry {entry!r} is not an object")
                image = _msd_path(folder, description, entry.get("image"))
                label = _msd_path(folder, description, entry.get("label"))
            else:
                image = _msd_path(folder, description, entry)
                label = None
        except CaseError as error:
            errors.append(error)
            continue
        cases.append(
            Case(
                _msd_case_id(image),
                {modality: image for modality in MODALITIES},
                label,
                SCHEMES["msd"],
                channels=channels,
                channel_count=channel_count,
            )
        )
    if not entries:
        errors.append(CaseError(description, 'lists no "training" or "test" cases'))
    return cases, errors


def scan_cases(root: Path | str) -> tuple[list[Case], list[CaseError]]:
    """Find the cases under `root` at any depth, collecting every problem instead of stopping.

    `root` is one case folder, a flat folder of case files, or a dataset folder of case folders
    in any nesting. An empty folder, or one with NIfTI files but no case, is a problem. Cases
    are sorted by id.
    """
    root = Path(root)
    if not root.is_dir():
        problem = "not a folder" if root.exists() else "no such folder"
        return [], [CaseError(root, problem)]
    cases: list[Case] = []
    errors: list[CaseError] = []

    def unreadable(error: OSError) -> None:
        errors.append(CaseError(error.filename, f"cannot list folder ({error.strerror})"))

    visited: set[str] = set()  # real paths of the folders walked: a linked folder once
    for folder_name, folder_names, file_names in os.walk(
        root, onerror=unreadable, followlinks=True
    ):
        folder = Path(folder_name)
        real = os.path.realpath(folder)
        if real in visited:  # a second link to it, or a link back up the tree
            folder_names[:] = []
            continue
        visited.add(real)
        folder_names[:] = sorted(name for name in folder_names if not _hidden(name))
        if MSD_DESCRIPTION in file_names:
            folder_cases, folder_errors = scan_msd(folder)
            folder_names[:] = []  # imagesTr/labelsTr/imagesTs belong to the description
        else:
            folder_cases, folder_errors = _scan_folder(folder, file_names)
            visible = [name for name in file_names if not _hidden(name)]
            if folder != root and not folder_names and not folder_cases and not folder_errors:
                if not visible:
                    folder_errors = [CaseError(folder, "empty folder, no case files")]
                elif any(name.endswith(_NIFTI_SUFFIXES) for name in visible):
                    folder_errors = [CaseError(folder, "no case files (NIfTI names not BraTS's)")]
        cases.extend(folder_cases)
        errors.extend(folder_errors)

    first_seen: dict[str, Case] = {}
    unique = []
    for case in cases:
        if case.case_id in first_seen:
            other = first_seen[case.case_id].folder
            errors.append(CaseError(case.folder, f"case {case.case_id} also found in {other}"))
        else:
            first_seen[case.case_id] = case
            unique.append(case)
    if not unique and not errors:
        errors.append(
            CaseError(
                root,
                "no BraTS cases found (expected <id>_t1.nii.gz ..., <id>-t1n.nii.gz ... "
                "or an MSD dataset.json)",
            )
        )
    return sorted(unique, key=lambda case: case.case_id), errors


def discover_cases(root: Path | str) -> list[Case]:
    """Find the cases under `root` (see scan_cases); raise CaseError for the first problem."""
    cases, errors = scan_cases(root)
    if errors:
        raise errors[0]
    return cases
