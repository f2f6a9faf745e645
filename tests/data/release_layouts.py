"""Tiny copies of the public BraTS and Decathlon releases, laid out as users download them.

Every builder writes 12 x 12 x 8 voxel cases under ``root`` and returns the top folder the
archive unpacks to, i.e. the folder a user would hand to the tool (``brats2020_kaggle`` returns
``root``, which holds its two top folders). Images are zero outside a small "brain" box and
positive inside it, where each modality has its own mean (``MODALITY_MEANS``: FLAIR 100, T1 200,
T1ce 300, T2 400), so a test can tell whether channels were matched by name. Labels hold a small
nested tumour (edema around an enhancing shell around necrosis) in the release's own values
(``LABEL_VALUES``). Affines are 1 mm LPS like the BraTS files.

Layouts (``<id>`` is the case folder name, repeated in every file name)::

    brats2018         MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<id>/<id>_<modality>.nii.gz
                      (<modality>: t1, t1ce, t2, flair, seg)
                      + survival_data.csv
    brats2019         MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<id>/<id>_{...}.nii.gz
                      + name_mapping.csv, survival_data.csv
    brats2020         MICCAI_BraTS2020_TrainingData/<id>/<id>_{...}.nii (uncompressed)
                      + name_mapping.csv, survival_info.csv; case 355 has W39_1998.09.19_Segm.nii
    brats2020_kaggle  BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/... (as brats2020)
                      BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData/<id>/ (no seg)
    brats2021         BraTS2021_Training_Data/<id>/<id>_{flair,seg,t1,t1ce,t2}.nii.gz
    brats2023         ASNR-MICCAI-BraTS2023-<TASK>-Challenge-TrainingData/<id>/<id>-<modality>
                      (<modality>: t1n, t1c, t2w, t2f, seg; .nii.gz)
                      (MEN adds a BraTS-MEN-Train/ level; SSA's folder ends in _V2)
    brats2024         BraTS2024-BraTS-GLI-TrainingData/training_data1_v2/<id>/<id>-{...}.nii.gz
    msd_task01        Task01_BrainTumour/{dataset.json,imagesTr,labelsTr,imagesTs}, 4D images,
                      AppleDouble ``._*`` files beside the real ones
    empty_case_folder MICCAI_BraTS2020_TrainingData/ with one good case and one empty case folder
    not_gzip_image    BraTS2021_Training_Data/ with one case whose FLAIR ``.nii.gz`` is not gzip

Quirks and where users report them:

- BraTS 2020 case 355's segmentation is ``W39_1998.09.19_Segm.nii``: many public BraTS 2020
  loaders rename or special-case it (exact-string code search); a loader that asserts a seg per
  case stops on it (ImprintLab/MedSegDiff#154). ``brats2020(include_355=True)``.
- The Kaggle BraTS 2020 copy nests ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData`` and
  stores ``.nii``: nnU-Net v1's Task082 script reads the Kaggle paths and gzips each file first
  (MIC-DKFZ/nnUNet nnunet/dataset_conversion/Task082_BraTS_2020.py); users' tree listings agree
  (kancheng/fl-test-init brats-2020-demo/input/README.md; ellisdg/3DUnetCNN#318).
  ``brats2020_kaggle``.
- BraTS 2018/2019 split cases into ``HGG/`` and ``LGG/`` (nnU-Net v1 Task043_BraTS_2019.py walks
  both). ``brats2018``, ``brats2019``.
- BraTS up to 2021 has no label 3 (enhancing is 4) (ellisdg/3DUnetCNN#310; nnU-Net v2
  Dataset137_BraTS21.py rejects any value outside 0, 1, 2, 4); BraTS 2023 moved enhancing to 3
  (MIC-DKFZ/nnUNet#1990; Milkomeda98/CKD-TransBTS#12); BraTS 2024 post-treatment adds 4, the
  resection cavity (MIC-DKFZ/nnUNet#2316). PED 2023 holds 0..3, which 0..4 converters mishandle
  (shaohao011/BrainMVP#8).
- BraTS 2023 GLI is BraTS 2021 under new names, linked by a mapping spreadsheet, so the same
  patients appear under two ids (Milkomeda98/CKD-TransBTS#12); the 2019/2020 ``name_mapping.csv``
  likewise lists each case's ids from earlier years. BraTS 2024 ids end in a visit number, so one
  patient can own several case folders. ``brats2024(visits_per_patient=2)``.
- Modality renaming t1->t1n, t1ce->t1c, t2->t2w, flair->t2f from 2023 on (mobaidoctor/med-ddpm#20).
- MEN 2023 unpacks to ``.../BraTS-MEN-Train/`` and has a later fix-up archive; SSA's training
  folder carries ``_V2``; GLI, PED and MET folders turn up doubly nested when the zip is unpacked
  into a folder of its own name (users' download scripts, code search). ``brats2023(nested=True)``.
- Some later cases lack a modality (a BraTS 2024 PED case without T1c; the 2025 MET spec marks
  T2w optional; users' notes, code search). ``brats2023(missing_modality=...)``.
- The MSD tar carries macOS ``._*`` files beside the NIfTI files (MIC-DKFZ/nnUNet#240, where the
  maintainer calls them packaging leftovers; nnU-Net v2's convert_MSD_dataset.py skips names
  starting with ``.``). ``msd_task01(resource_forks=True)``.
- MSD images are 4D with the channel last, FLAIR/T1w/t1gd/T2w in dataset.json's ``modality``
  order; channel-first models fail on them unconverted (Project-MONAI/MONAILabel#1051). MSD labels
  are 1 edema, 2 non-enhancing, 3 enhancing, and MONAI's tutorial docstring had 2 and 3 swapped
  (Project-MONAI/tutorials#1355). ``msd_task01``.
- An MSD BRATS image shared in Project-MONAI/MONAILabel#22 has qform code 0 and sform code 2
  (aligned); viewers then place it oddly. ``msd_task01`` writes its images that way.
- A ``.nii.gz`` that is not gzip (a 1 kB file) stops nibabel (makama-md/AI-for-Medical-Diagnosis#3).
  ``not_gzip_image``.
- Float labels: a BraTS 2020 user reports float64 label arrays (MIC-DKFZ/nnUNet#2029, #1845; may
  come from loading rather than the files). ``brats2020(float_seg_case=...)`` writes a float32 seg.
- A case folder with no files (Kaggle BraTS 2023 copies with empty case folders,
  mfaizan-ai/Brain-Tumors-Segmentation#9). ``empty_case_folder``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 12, 8)
BRAIN = (slice(2, 10), slice(2, 10), slice(1, 7))
MODALITY_MEANS = {"flair": 100.0, "t1": 200.0, "t1ce": 300.0, "t2": 400.0}

# Tumour compartments -> label value, per release family.
BRATS_LEGACY_SCHEME = {"necrosis": 1, "edema": 2, "enhancing": 4}
BRATS2023_SCHEME = {"necrosis": 1, "edema": 2, "enhancing": 3}
BRATS2024_SCHEME = {"necrosis": 1, "edema": 2, "enhancing": 3, "cavity": 4}
MSD_SCHEME = {"edema": 1, "necrosis": 2, "enhancing": 3}

LABEL_VALUES = {
    "brats2018": (0, 1, 2, 4),
    "brats2019": (0, 1, 2, 4),
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "brats2024": (0, 1, 2, 3, 4),
    "msd_task01": (0, 1, 2, 3),
}

# File token per modality role.
LEGACY_TOKENS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2023_TOKENS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")  # dataset.json "modality" order

BRATS2023_TASKS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    # task: (release folder, extra inner folder, first case numbers)
    "GLI": ("ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", None, ("00000", "00002", "00003")),
    "MET": ("ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData", None, ("00001", "00002", "00004")),
    "MEN": ("ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData", "BraTS-MEN-Train", ("00004",)),
    "PED": ("ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData", None, ("00002", "00003")),
    "SSA": ("ASNR-MICCAI-BraTS2023-SSA-Challenge-TrainingData_V2", None, ("00002", "00003")),
}
BRATS2024_PATIENTS = ("02064", "00005", "02251")

# The AppleDouble header macOS tar writes for "._name" entries; not NIfTI, not gzip.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(56)


def lps_affine(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """1 mm LPS affine as in the BraTS files: diag(-1, -1, 1) with the y origin at the far edge."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def image_volume(role: str, seed: int, dtype: type = np.int16) -> np.ndarray:
    """A (12, 12, 8) image: zero outside the brain box, ``MODALITY_MEANS[role]`` +- 10 inside."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[BRAIN] = MODALITY_MEANS[role] + rng.uniform(-10.0, 10.0, size=volume[BRAIN].shape)
    return volume.astype(dtype)


def tumour_label(scheme: Mapping[str, int], cavity: bool = False) -> np.ndarray:
    """A (12, 12, 8) uint8 label: edema box around an enhancing shell around necrosis; with
    ``cavity``, a corner of the edema becomes ``scheme["cavity"]``."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[3:9, 3:9, 2:6] = scheme["edema"]
    label[4:8, 4:8, 3:5] = scheme["enhancing"]
    label[5:7, 5:7, 3:5] = scheme["necrosis"]
    if cavity:
        label[3:5, 3:5, 2:3] = scheme["cavity"]
    return label


def write_nifti(path: Path, data: np.ndarray, *, qform_code: int = 1, sform_code: int = 1) -> Path:
    """Save ``data`` with the LPS affine; the dtype on disk is ``data``'s dtype."""
    affine = lps_affine(data.shape)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def write_case(
    folder: Path,
    case_id: str,
    *,
    tokens: Mapping[str, str],
    separator: str,
    suffix: str,
    scheme: Mapping[str, int] | None,
    seed: int,
    seg_name: str | None = None,
    seg_dtype: type = np.uint8,
    cavity: bool = False,
    skip: Iterable[str] = (),
) -> Path:
    """One case folder ``folder/case_id`` with a file per modality and, unless ``scheme`` is
    None, a segmentation (named ``seg_name`` when given). Roles in ``skip`` are left out."""
    case_dir = folder / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    skipped = set(skip)
    for index, (role, token) in enumerate(tokens.items()):
        if role not in skipped:
            name = f"{case_id}{separator}{token}{suffix}"
            write_nifti(case_dir / name, image_volume(role, seed * 10 + index))
    if scheme is not None:
        name = seg_name or f"{case_id}{separator}seg{suffix}"
        write_nifti(case_dir / name, tumour_label(scheme, cavity).astype(seg_dtype))
    return case_dir


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _ids(first: Sequence[str], count: int, make: Callable[[int], str]) -> list[str]:
    """``count`` ids: the listed real-looking ones first, then generated ones."""
    ids = list(first[:count])
    number = len(ids)
    while len(ids) < count:
        candidate = make(number)
        number += 1
        if candidate not in ids:
            ids.append(candidate)
    return ids


# ----------------------------------------------------------------------------- BraTS 2018, 2019


def _graded_release(
    folder: Path, hgg: Sequence[str], lgg: Sequence[str], seed: int
) -> list[tuple[str, str]]:
    graded = [("HGG", case_id) for case_id in hgg] + [("LGG", case_id) for case_id in lgg]
    for index, (grade, case_id) in enumerate(graded):
        write_case(
            folder / grade,
            case_id,
            tokens=LEGACY_TOKENS,
            separator="_",
            suffix=".nii.gz",
            scheme=BRATS_LEGACY_SCHEME,
            seed=seed + index,
        )
    return graded


def brats2018(root: Path, cases: int = 2) -> Path:
    """BraTS 2018 training data: ``cases`` HGG cases and one LGG case, plus survival_data.csv."""
    folder = root / "MICCAI_BraTS_2018_Data_Training"
    hgg = _ids(
        ("Brats18_2013_2_1", "Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1"),
        cases,
        lambda n: f"Brats18_TCIA02_{100 + n}_1",
    )
    _graded_release(folder, hgg, ["Brats18_2013_0_1"], seed=1800)
    write_csv(
        folder / "survival_data.csv",
        ("BraTS18ID", "Age", "Survival", "ResectionStatus"),
        [(case_id, 60.0 + i, 300 + 10 * i, "GTR") for i, case_id in enumerate(hgg)],
    )
    return folder


def brats2019(root: Path, cases: int = 2) -> Path:
    """BraTS 2019 training data: ``cases`` HGG cases and one LGG case, plus name_mapping.csv
    (ids of the same patient in 2017/2018) and survival_data.csv."""
    folder = root / "MICCAI_BraTS_2019_Data_Training"
    hgg = _ids(
        ("BraTS19_2013_10_1", "BraTS19_CBICA_AAB_1", "BraTS19_TCIA01_131_1"),
        cases,
        lambda n: f"BraTS19_TCIA02_{100 + n}_1",
    )
    graded = _graded_release(folder, hgg, ["BraTS19_2013_0_1"], seed=1900)
    write_csv(
        folder / "name_mapping.csv",
        (
            "Grade",
            "BraTS_2017_subject_ID",
            "BraTS_2018_subject_ID",
            "TCGA_TCIA_subject_ID",
            "BraTS_2019_subject_ID",
        ),
        [
            (grade, case_id.replace("BraTS19", "Brats17"), case_id.replace("BraTS19", "Brats18"))
            + ("NA", case_id)
            for grade, case_id in graded
        ],
    )
    write_csv(
        folder / "survival_data.csv",
        ("BraTS19ID", "Age", "Survival", "ResectionStatus"),
        [(case_id, 55.0 + i, 400 + 10 * i, "GTR") for i, case_id in enumerate(hgg)],
    )
    return folder


# ----------------------------------------------------------------------------------- BraTS 2020

BRATS2020_CASE_355 = "BraTS20_Training_355"
BRATS2020_SEG_355 = "W39_1998.09.19_Segm.nii"


def _brats2020_training(
    folder: Path, cases: int, include_355: bool, float_seg_case: int | None
) -> Path:
    numbers = list(range(1, cases + 1)) + ([355] if include_355 else [])
    for number in numbers:
        case_id = f"BraTS20_Training_{number:03d}"
        write_case(
            folder,
            case_id,
            tokens=LEGACY_TOKENS,
            separator="_",
            suffix=".nii",
            scheme=BRATS_LEGACY_SCHEME,
            seed=2000 + number,
            seg_name=BRATS2020_SEG_355 if number == 355 else None,
            seg_dtype=np.float32 if number == float_seg_case else np.uint8,
        )
    write_csv(
        folder / "name_mapping.csv",
        (
            "Grade",
            "BraTS_2017_subject_ID",
            "BraTS_2018_subject_ID",
            "TCGA_TCIA_subject_ID",
            "BraTS_2019_subject_ID",
            "BraTS_2020_subject_ID",
        ),
        [("HGG", "NA", "NA", "NA", "NA", f"BraTS20_Training_{number:03d}") for number in numbers],
    )
    write_csv(
        folder / "survival_info.csv",
        ("Brats20ID", "Age", "Survival_days", "Extent_of_Resection"),
        [(f"BraTS20_Training_{n:03d}", 50.0 + n % 30, 200 + n, "GTR") for n in numbers],
    )
    return folder


def brats2020(
    root: Path, cases: int = 3, include_355: bool = True, float_seg_case: int | None = 1
) -> Path:
    """BraTS 2020 training data as uncompressed ``.nii`` (the Kaggle copy's format): cases
    ``BraTS20_Training_001..cases`` and, with ``include_355``, case 355 whose segmentation is
    ``W39_1998.09.19_Segm.nii``. Case number ``float_seg_case`` (None: none) has a float32 seg
    with integral values."""
    return _brats2020_training(
        root / "MICCAI_BraTS2020_TrainingData", cases, include_355, float_seg_case
    )


def brats2020_kaggle(root: Path, cases: int = 3, validation_cases: int = 1) -> Path:
    """The Kaggle BraTS 2020 copy: training (as ``brats2020``) and validation (no seg), each
    nested in a folder of its own; returns ``root``."""
    _brats2020_training(
        root / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData",
        cases,
        include_355=True,
        float_seg_case=1,
    )
    validation = root / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    case_ids = [f"BraTS20_Validation_{n:03d}" for n in range(1, validation_cases + 1)]
    for number, case_id in enumerate(case_ids, start=1):
        write_case(
            validation,
            case_id,
            tokens=LEGACY_TOKENS,
            separator="_",
            suffix=".nii",
            scheme=None,
            seed=2500 + number,
        )
    # Column sets of the validation CSVs are a best guess; only the file names are reported.
    write_csv(
        validation / "name_mapping_validation_data.csv",
        ("BraTS_2019_subject_ID", "BraTS_2020_subject_ID"),
        [("NA", case_id) for case_id in case_ids],
    )
    write_csv(
        validation / "survival_evaluation.csv",
        ("BraTS20ID", "Age", "ResectionStatus"),
        [(case_id, 60.0, "GTR") for case_id in case_ids],
    )
    return root


# ----------------------------------------------------------------------------------- BraTS 2021


def brats2021(
    root: Path,
    cases: int = 2,
    folder_name: str = "BraTS2021_Training_Data",
    stray_label: int | None = None,
) -> Path:
    """BraTS 2021 training data (``folder_name``: the Kaggle name by default; the Synapse zip
    unpacks to ``RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021``). With ``stray_label``,
    one voxel of the last case's seg holds that value (a label outside 0, 1, 2, 4)."""
    folder = root / folder_name
    case_ids = _ids(
        ("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003", "BraTS2021_00005"),
        cases,
        lambda n: f"BraTS2021_{n * 2:05d}",
    )
    for index, case_id in enumerate(case_ids):
        write_case(
            folder,
            case_id,
            tokens=LEGACY_TOKENS,
            separator="_",
            suffix=".nii.gz",
            scheme=BRATS_LEGACY_SCHEME,
            seed=2100 + index,
        )
    if stray_label is not None:
        seg_path = folder / case_ids[-1] / f"{case_ids[-1]}_seg.nii.gz"
        label = tumour_label(BRATS_LEGACY_SCHEME)
        label[5, 5, 2] = stray_label
        write_nifti(seg_path, label)
    return folder


def not_gzip_image(root: Path) -> Path:
    """A one-case BraTS 2021 folder whose FLAIR ``.nii.gz`` holds a few text bytes, not gzip."""
    folder = brats2021(root, cases=1)
    flair = folder / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    flair.write_bytes(b"<html>download interrupted</html>\n")
    return folder


# ------------------------------------------------------------------------------ BraTS 2023, 2024


def brats2023(
    root: Path,
    task: str = "GLI",
    cases: int = 2,
    nested: bool = False,
    missing_modality: str | None = None,
) -> Path:
    """A BraTS 2023 training folder for ``task`` (GLI, MET, MEN, PED, SSA), labels 0..3.
    ``nested`` repeats the release folder inside itself (a zip unpacked into a folder of its own
    name); ``missing_modality`` (a role: t1, t1ce, t2, flair) is left out of the last case."""
    if task not in BRATS2023_TASKS:
        raise ValueError(f"unknown BraTS 2023 task {task!r}; use one of {sorted(BRATS2023_TASKS)}")
    release, inner, numbers = BRATS2023_TASKS[task]
    top = root / release
    folder = top / release if nested else top
    if inner is not None:
        folder = folder / inner
    case_ids = _ids(
        [f"BraTS-{task}-{number}-000" for number in numbers],
        cases,
        lambda n: f"BraTS-{task}-{10 + n:05d}-000",
    )
    for index, case_id in enumerate(case_ids):
        is_last = index == len(case_ids) - 1
        write_case(
            folder,
            case_id,
            tokens=BRATS2023_TOKENS,
            separator="-",
            suffix=".nii.gz",
            scheme=BRATS2023_SCHEME,
            seed=2300 + index,
            skip=[missing_modality] if missing_modality and is_last else (),
        )
    return top


def brats2024(root: Path, cases: int = 2, visits_per_patient: int = 1) -> Path:
    """BraTS 2024 post-treatment glioma training data, labels 0..4; the first case has a
    resection cavity (4). With ``visits_per_patient`` > 1, consecutive cases are visits
    ``-100, -101, ...`` of one patient."""
    top = root / "BraTS2024-BraTS-GLI-TrainingData"
    folder = top / "training_data1_v2"
    case_ids = []
    patient = 0
    while len(case_ids) < cases:
        number = (
            BRATS2024_PATIENTS[patient]
            if patient < len(BRATS2024_PATIENTS)
            else f"{3000 + patient:05d}"
        )
        for visit in range(visits_per_patient):
            if len(case_ids) < cases:
                case_ids.append(f"BraTS-GLI-{number}-{100 + visit}")
        patient += 1
    for index, case_id in enumerate(case_ids):
        write_case(
            folder,
            case_id,
            tokens=BRATS2023_TOKENS,
            separator="-",
            suffix=".nii.gz",
            scheme=BRATS2024_SCHEME,
            seed=2400 + index,
            cavity=index == 0,
        )
    return top


# --------------------------------------------------------------------------- Decathlon Task01


def msd_task01(
    root: Path, cases: int = 2, test_cases: int = 1, resource_forks: bool = True
) -> Path:
    """Medical Segmentation Decathlon Task01_BrainTumour: 4D (12, 12, 8, 4) float32 images
    (channels FLAIR, T1w, t1gd, T2w, channel k with mean 100 * (k + 1) in the brain), uint8
    labels 1 edema, 2 non-enhancing, 3 enhancing, test images ``BRATS_485...``. Images carry
    qform code 0 and sform code 2. With ``resource_forks``, a ``._<name>`` AppleDouble file
    sits beside every image and label."""
    folder = root / "Task01_BrainTumour"
    training = [f"BRATS_{n:03d}.nii.gz" for n in range(1, cases + 1)]
    test = [f"BRATS_{n:03d}.nii.gz" for n in range(485, 485 + test_cases)]
    written: list[Path] = []
    for index, name in enumerate(training + test):
        channels = [image_volume(role, 4000 + 4 * index + k) for k, role in enumerate(MSD_CHANNELS)]
        image = np.stack(channels, axis=-1).astype(np.float32)
        subfolder = "imagesTr" if index < len(training) else "imagesTs"
        written.append(write_nifti(folder / subfolder / name, image, qform_code=0, sform_code=2))
    for name in training:
        written.append(write_nifti(folder / "labelsTr" / name, tumour_label(MSD_SCHEME)))
    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
    if resource_forks:
        for path in written:
            (path.parent / f"._{path.name}").write_bytes(APPLE_DOUBLE)
    dataset = {
        "name": "BRATS",
        "description": "Tiny stand-in for the Decathlon brain tumour task",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html",
        "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "numTraining": len(training),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"} for name in training
        ],
        "test": [f"./imagesTs/{name}" for name in test],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return folder


# ---------------------------------------------------------------------------------- bad inputs


def empty_case_folder(root: Path) -> Path:
    """A BraTS 2020 training folder with one complete case and one empty case folder."""
    folder = root / "MICCAI_BraTS2020_TrainingData"
    write_case(
        folder,
        "BraTS20_Training_001",
        tokens=LEGACY_TOKENS,
        separator="_",
        suffix=".nii",
        scheme=BRATS_LEGACY_SCHEME,
        seed=2001,
    )
    (folder / "BraTS20_Training_002").mkdir(parents=True)
    return folder


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"
