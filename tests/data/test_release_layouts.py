"""The release-layout builders write the files they promise (names, dtypes, shapes, labels)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data import release_layouts as layouts

LEGACY = ("t1", "t1ce", "t2", "flair", "seg")
MODERN = ("t1n", "t1c", "t2w", "t2f", "seg")


def relative_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def case_files(case_id: str, separator: str, tokens: tuple[str, ...], suffix: str) -> set[str]:
    return {f"{case_id}/{case_id}{separator}{token}{suffix}" for token in tokens}


def label_values(path: Path) -> set[int]:
    return set(np.unique(np.asarray(nib.load(path).dataobj)).astype(int).tolist())


def test_brats2018_hgg_lgg_and_survival(tmp_path: Path) -> None:
    folder = layouts.brats2018(tmp_path, cases=2)
    assert folder == tmp_path / "MICCAI_BraTS_2018_Data_Training"
    expected = {"survival_data.csv"}
    for case_id in ("Brats18_2013_2_1", "Brats18_CBICA_AAB_1"):
        expected |= {f"HGG/{name}" for name in case_files(case_id, "_", LEGACY, ".nii.gz")}
    expected |= {f"LGG/{name}" for name in case_files("Brats18_2013_0_1", "_", LEGACY, ".nii.gz")}
    assert relative_files(folder) == expected
    seg = folder / "HGG/Brats18_2013_2_1/Brats18_2013_2_1_seg.nii.gz"
    assert label_values(seg) == {0, 1, 2, 4}
    assert nib.load(seg).get_data_dtype() == np.uint8


def test_brats2019_has_mapping_and_survival(tmp_path: Path) -> None:
    folder = layouts.brats2019(tmp_path)
    files = relative_files(folder)
    assert {"name_mapping.csv", "survival_data.csv"} <= files
    assert "HGG/BraTS19_2013_10_1/BraTS19_2013_10_1_flair.nii.gz" in files
    assert "LGG/BraTS19_2013_0_1/BraTS19_2013_0_1_seg.nii.gz" in files
    assert "BraTS19_2013_10_1" in (folder / "name_mapping.csv").read_text()


def test_brats2020_nii_case_355_and_float_seg(tmp_path: Path) -> None:
    folder = layouts.brats2020(tmp_path, cases=3)
    files = relative_files(folder)
    for number in (1, 2, 3):
        assert case_files(f"BraTS20_Training_{number:03d}", "_", LEGACY, ".nii") <= files
    assert {"name_mapping.csv", "survival_info.csv"} <= files
    case_355 = {name for name in files if name.startswith("BraTS20_Training_355/")}
    assert case_355 == case_files("BraTS20_Training_355", "_", LEGACY[:4], ".nii") | {
        "BraTS20_Training_355/W39_1998.09.19_Segm.nii"
    }
    assert not any(name.endswith(".gz") for name in files)
    float_seg = nib.load(folder / "BraTS20_Training_001/BraTS20_Training_001_seg.nii")
    assert float_seg.get_data_dtype() == np.float32
    assert label_values(folder / "BraTS20_Training_001/BraTS20_Training_001_seg.nii") == {
        0,
        1,
        2,
        4,
    }
    assert nib.load(
        folder / "BraTS20_Training_002/BraTS20_Training_002_seg.nii"
    ).get_data_dtype() == (np.uint8)


def test_brats2020_without_355(tmp_path: Path) -> None:
    folder = layouts.brats2020(tmp_path, cases=1, include_355=False, float_seg_case=None)
    assert sorted(path.name for path in folder.iterdir() if path.is_dir()) == [
        "BraTS20_Training_001"
    ]


def test_brats2020_kaggle_double_nesting(tmp_path: Path) -> None:
    assert layouts.brats2020_kaggle(tmp_path) == tmp_path
    training = tmp_path / "BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData"
    assert (training / "BraTS20_Training_355/W39_1998.09.19_Segm.nii").is_file()
    assert (training / "survival_info.csv").is_file()
    validation = tmp_path / "BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData"
    assert relative_files(validation) == case_files(
        "BraTS20_Validation_001", "_", LEGACY[:4], ".nii"
    ) | {"name_mapping_validation_data.csv", "survival_evaluation.csv"}


def test_brats2021_names_and_labels(tmp_path: Path) -> None:
    folder = layouts.brats2021(tmp_path, cases=2)
    assert folder == tmp_path / "BraTS2021_Training_Data"
    expected = case_files("BraTS2021_00000", "_", LEGACY, ".nii.gz") | case_files(
        "BraTS2021_00002", "_", LEGACY, ".nii.gz"
    )
    assert relative_files(folder) == expected
    assert label_values(folder / "BraTS2021_00000/BraTS2021_00000_seg.nii.gz") == {0, 1, 2, 4}


def test_brats2021_stray_label(tmp_path: Path) -> None:
    folder = layouts.brats2021(tmp_path, cases=1, stray_label=3)
    assert label_values(folder / "BraTS2021_00000/BraTS2021_00000_seg.nii.gz") == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("task", "case_parent", "first_case"),
    [
        ("GLI", "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", "BraTS-GLI-00000-000"),
        ("MET", "ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData", "BraTS-MET-00001-000"),
        (
            "MEN",
            "ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData/BraTS-MEN-Train",
            "BraTS-MEN-00004-000",
        ),
        ("PED", "ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData", "BraTS-PED-00002-000"),
        ("SSA", "ASNR-MICCAI-BraTS2023-SSA-Challenge-TrainingData_V2", "BraTS-SSA-00002-000"),
    ],
)
def test_brats2023_tasks(tmp_path: Path, task: str, case_parent: str, first_case: str) -> None:
    top = layouts.brats2023(tmp_path, task=task, cases=2)
    assert top == tmp_path / case_parent.split("/")[0]
    parent = tmp_path / case_parent
    case_dirs = sorted(path for path in parent.iterdir() if path.is_dir())
    assert len(case_dirs) == 2
    assert first_case in {path.name for path in case_dirs}
    assert relative_files(parent) >= case_files(first_case, "-", MODERN, ".nii.gz")
    assert label_values(parent / first_case / f"{first_case}-seg.nii.gz") == {0, 1, 2, 3}


def test_brats2023_nested_and_missing_modality(tmp_path: Path) -> None:
    top = layouts.brats2023(tmp_path, task="GLI", cases=2, nested=True, missing_modality="t1ce")
    inner = top / top.name
    assert (inner / "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz").is_file()
    last = inner / "BraTS-GLI-00002-000"
    assert sorted(path.name for path in last.iterdir()) == [
        f"BraTS-GLI-00002-000-{token}.nii.gz" for token in ("seg", "t1n", "t2f", "t2w")
    ]


def test_brats2023_rejects_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown BraTS 2023 task"):
        layouts.brats2023(tmp_path, task="XYZ")


def test_brats2024_layout_and_resection_cavity(tmp_path: Path) -> None:
    top = layouts.brats2024(tmp_path, cases=2)
    assert top == tmp_path / "BraTS2024-BraTS-GLI-TrainingData"
    cases = top / "training_data1_v2"
    assert relative_files(cases) == case_files(
        "BraTS-GLI-02064-100", "-", MODERN, ".nii.gz"
    ) | case_files("BraTS-GLI-00005-100", "-", MODERN, ".nii.gz")
    first = cases / "BraTS-GLI-02064-100/BraTS-GLI-02064-100-seg.nii.gz"
    assert label_values(first) == {0, 1, 2, 3, 4}
    second = cases / "BraTS-GLI-00005-100/BraTS-GLI-00005-100-seg.nii.gz"
    assert label_values(second) == {0, 1, 2, 3}


def test_brats2024_visits_share_a_patient(tmp_path: Path) -> None:
    cases = layouts.brats2024(tmp_path, cases=3, visits_per_patient=2) / "training_data1_v2"
    assert sorted(path.name for path in cases.iterdir()) == [
        "BraTS-GLI-00005-100",
        "BraTS-GLI-02064-100",
        "BraTS-GLI-02064-101",
    ]


def test_msd_task01_4d_images_dataset_json_and_forks(tmp_path: Path) -> None:
    folder = layouts.msd_task01(tmp_path, cases=2, test_cases=1)
    assert folder == tmp_path / "Task01_BrainTumour"
    real = {
        "imagesTr/BRATS_001.nii.gz",
        "imagesTr/BRATS_002.nii.gz",
        "labelsTr/BRATS_001.nii.gz",
        "labelsTr/BRATS_002.nii.gz",
        "imagesTs/BRATS_485.nii.gz",
    }
    forks = {f"{name.split('/')[0]}/._{name.split('/')[1]}" for name in real}
    assert relative_files(folder) == real | forks | {"dataset.json"}
    for fork in forks:
        assert not layouts.is_gzip(folder / fork)
        assert (folder / fork).stat().st_size < 100

    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["tensorImageSize"] == "4D"
    assert dataset["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert dataset["labels"]["1"] == "edema"
    assert (dataset["numTraining"], dataset["numTest"]) == (2, 1)
    assert dataset["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz",
        "label": "./labelsTr/BRATS_001.nii.gz",
    }
    assert dataset["test"] == ["./imagesTs/BRATS_485.nii.gz"]

    image = nib.load(folder / "imagesTr/BRATS_001.nii.gz")
    assert image.shape == (*layouts.SHAPE, 4)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (0, 2)
    data = np.asarray(image.dataobj)
    brain = data[..., 0] != 0
    means = [data[..., k][brain].mean() for k in range(4)]
    assert means == pytest.approx([100, 200, 300, 400], abs=5)
    assert label_values(folder / "labelsTr/BRATS_001.nii.gz") == {0, 1, 2, 3}


def test_msd_task01_without_forks(tmp_path: Path) -> None:
    folder = layouts.msd_task01(tmp_path, cases=1, test_cases=0, resource_forks=False)
    assert not any(path.name.startswith("._") for path in folder.rglob("*"))
    assert (folder / "imagesTs").is_dir()


def test_images_are_zero_outside_and_positive_inside_the_brain(tmp_path: Path) -> None:
    folder = layouts.brats2021(tmp_path, cases=1)
    for token, role in (("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("flair", "flair")):
        data = np.asarray(
            nib.load(folder / f"BraTS2021_00000/BraTS2021_00000_{token}.nii.gz").dataobj
        )
        brain = np.zeros(layouts.SHAPE, dtype=bool)
        brain[layouts.BRAIN] = True
        assert (data[brain] > 0).all() and (data[~brain] == 0).all()
        assert data[brain].mean() == pytest.approx(layouts.MODALITY_MEANS[role], abs=5)


def test_bad_input_helpers(tmp_path: Path) -> None:
    folder = layouts.empty_case_folder(tmp_path / "empty")
    assert sorted(path.name for path in folder.iterdir()) == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
    ]
    assert len(list((folder / "BraTS20_Training_001").iterdir())) == 5
    assert not any((folder / "BraTS20_Training_002").iterdir())

    folder = layouts.not_gzip_image(tmp_path / "not_gzip")
    assert not layouts.is_gzip(folder / "BraTS2021_00000/BraTS2021_00000_flair.nii.gz")
    assert layouts.is_gzip(folder / "BraTS2021_00000/BraTS2021_00000_t1.nii.gz")
