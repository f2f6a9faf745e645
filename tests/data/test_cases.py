from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torchio as tio

from cascade.data.cases import MODALITIES, Case, CaseError, load_subject
from cascade.data.discovery import discover_cases, scan_cases
from cascade.data.labels import SCHEMES
from cascade.data.validation import validate_case

NAMING_SCHEMES = {
    "brats2020": SCHEMES["brats2020"],
    "brats2021": SCHEMES["brats2020"],
    "brats2023": SCHEMES["brats2023"],
}


# ---------------------------------------------------------------------------------------------
# Discovery


@pytest.mark.parametrize("extension", [".nii.gz", ".nii"])
@pytest.mark.parametrize("naming", ["brats2020", "brats2021", "brats2023"])
def test_discovers_one_case_folder_in_each_naming(write_case, naming, extension):
    paths = write_case(naming=naming, extension=extension)
    folder = paths["t1"].parent

    (case,) = discover_cases(folder)

    assert case.case_id == folder.name
    assert tuple(case.images) == MODALITIES
    assert case.images == {modality: paths[modality] for modality in MODALITIES}
    assert case.label == paths["label"]
    assert case.scheme is NAMING_SCHEMES[naming]


def test_dataset_folder_of_case_folders_is_sorted_by_id(write_case, tmp_path):
    for case_id in ("Case_003", "Case_001", "Case_002"):
        write_case(root=tmp_path / "dataset", case_id=case_id)
    (tmp_path / "dataset" / "name_mapping.csv").write_text("not a case\n")

    cases = discover_cases(tmp_path / "dataset")

    assert [case.case_id for case in cases] == ["Case_001", "Case_002", "Case_003"]
    assert all(case.images["t1"].parent.name == case.case_id for case in cases)


@pytest.mark.parametrize("naming", ["brats2020", "brats2023"])
def test_flat_folder_groups_files_by_case_id(write_case, tmp_path, naming):
    write_case(naming=naming, case_id="TCGA-02-0001", flat=True)
    write_case(naming=naming, case_id="TCGA-02-0002", flat=True, extension=".nii")

    cases = discover_cases(tmp_path)

    assert [case.case_id for case in cases] == ["TCGA-02-0001", "TCGA-02-0002"]
    assert cases[1].images["flair"].name.endswith(".nii")
    assert all(path.parent == tmp_path for case in cases for path in case.images.values())


def test_unlabelled_case_has_no_label(write_case):
    paths = write_case(labelled=False)

    (case,) = discover_cases(paths["t1"].parent)
    summary = validate_case(case)
    subject = load_subject(case)

    assert case.label is None
    assert not summary.labelled and summary.label_counts == {}
    assert "label" not in subject


def test_t1_is_not_matched_by_t1ce(write_case):
    paths = write_case()
    paths["t1"].unlink()

    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: missing t1 image"):
        discover_cases(paths["t1ce"].parent)


def test_t1n_is_not_matched_by_t1c(write_case):
    paths = write_case(naming="brats2023")
    paths["t1"].unlink()

    with pytest.raises(CaseError, match=r"-t1n\.nii\.gz: missing t1 image"):
        discover_cases(paths["t1ce"].parent)


def test_two_files_for_one_modality(write_case):
    paths = write_case()
    shutil.copy(paths["t2"], paths["t2"].with_name(paths["t2"].name.removesuffix(".gz")))

    with pytest.raises(CaseError, match=r"two files for t2: .*_t2\.nii and .*_t2\.nii\.gz"):
        discover_cases(paths["t2"].parent)


def test_mixed_namings_in_one_case(write_case, tmp_path):
    paths = write_case(case_id="Case_001", flat=True)
    paths["t1"].rename(tmp_path / "Case_001-t1n.nii.gz")

    with pytest.raises(CaseError, match="mixes BraTS 2020 and 2023"):
        discover_cases(tmp_path)


def test_no_cases_and_missing_folder(tmp_path):
    (tmp_path / "notes.nii.gz").write_bytes(b"")
    with pytest.raises(CaseError, match="no BraTS cases found"):
        discover_cases(tmp_path)
    with pytest.raises(CaseError, match="no such folder"):
        discover_cases(tmp_path / "absent")


def test_same_case_id_in_two_folders(write_case, tmp_path):
    write_case(root=tmp_path / "a", case_id="Case_001", flat=True)
    write_case(root=tmp_path / "b", case_id="Case_001", flat=True)
    # The duplicate is reported, the first copy is kept.
    cases, errors = scan_cases(tmp_path)

    assert [case.case_id for case in cases] == ["Case_001"]
    assert len(errors) == 1 and "also found in" in str(errors[0])


def test_scan_cases_reports_every_structural_problem(write_case, tmp_path):
    write_case(case_id="Good_001")
    missing = write_case(case_id="Missing_002")
    missing["flair"].unlink()
    missing["t2"].unlink()
    other = write_case(case_id="Missing_003")
    other["t1ce"].unlink()

    cases, errors = scan_cases(tmp_path)

    assert [case.case_id for case in cases] == ["Good_001"]
    messages = sorted(str(error) for error in errors)
    assert len(messages) == 3
    assert any("Missing_002_flair.nii.gz: missing flair" in message for message in messages)
    assert any("Missing_002_t2.nii.gz: missing t2" in message for message in messages)
    assert any("Missing_003_t1ce.nii.gz: missing t1ce" in message for message in messages)


def test_output_name_follows_the_naming(write_case, tmp_path):
    old = discover_cases(write_case(case_id="BraTS20_Validation_001")["t1"].parent)[0]
    new = discover_cases(write_case(naming="brats2023")["t1"].parent)[0]

    assert old.output_name() == "BraTS20_Validation_001.nii.gz"
    assert new.output_name() == "BraTS-GLI-00001-000-seg.nii.gz"


def test_case_orders_images_by_modality(tmp_path):
    images = {modality: str(tmp_path / modality) for modality in reversed(MODALITIES)}
    case = Case("x", images, None)

    assert tuple(case.images) == MODALITIES
    assert all(isinstance(path, Path) for path in case.images.values())
    with pytest.raises(ValueError, match="keys"):
        Case("x", {"t1": tmp_path}, None)


# ---------------------------------------------------------------------------------------------
# Validation


def _only_case(paths: dict[str, Path]) -> Case:
    (case,) = discover_cases(paths["t1"].parent)
    return case


def test_validate_summarises_a_good_case(write_case):
    paths = write_case(shape=(24, 20, 16))
    label = np.asanyarray(nib.load(paths["label"]).dataobj)

    summary = validate_case(_only_case(paths))

    assert summary.shape == (24, 20, 16)
    assert summary.spacing == (1.0, 1.0, 1.0)
    assert summary.labelled
    values, counts = np.unique(label, return_counts=True)
    assert summary.label_counts == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert set(summary.label_counts) == {0, 1, 2, 4}


def test_small_negative_int16_values_are_accepted(write_case):
    paths = write_case()
    assert np.asanyarray(nib.load(paths["t1"]).dataobj).min() < 0

    validate_case(_only_case(paths))


def test_trailing_singleton_dimension_is_accepted(write_case):
    volume = np.arange(24 * 24 * 16, dtype=np.int16).reshape(24, 24, 16, 1) + 1
    paths = write_case(arrays={"flair": volume})

    summary = validate_case(_only_case(paths))
    subject = load_subject(_only_case(paths))

    assert summary.shape == (24, 24, 16)
    assert subject["flair"].shape == (1, 24, 24, 16)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _gzip_text(path: Path) -> None:
    with gzip.open(path, "wb") as stream:
        stream.write(b"patient notes, not an image\n" * 40)


def _replace_with(data: np.ndarray, affine: np.ndarray | None = None):
    def write(path: Path) -> None:
        matrix = nib.load(path).affine if affine is None else affine
        nib.save(nib.Nifti1Image(data, matrix), path)

    return write


def _noisy(shape=(24, 24, 16), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(1).uniform(1, 100, size=shape).astype(dtype)


def _with(value: float) -> np.ndarray:
    data = _noisy()
    data[3, 4, 5] = value
    return data


_RAS = np.diag([1.0, 1.0, 1.0, 1.0])
_SHIFTED = np.diag([-1.0, -1.0, 1.0, 1.0])
_SHIFTED[1, 3] = 23 + 0.01
_FAR = np.diag([-1.0, -1.0, 1.0, 1.0])
_FAR[:3, 3] = (500.0, 500.0, 500.0)  # no physical overlap with the other modalities


@pytest.mark.parametrize(
    ("role", "damage", "problem"),
    [
        ("t2", _truncate, "truncated or corrupt"),
        ("t1", lambda path: path.write_bytes(path.read_bytes()[:100]), "cannot read, truncated"),
        ("flair", _gzip_text, "not a NIfTI file"),
        ("t1ce", lambda path: path.write_text("hello"), "not a gzip file"),
        ("t1", _replace_with(np.ones((24, 24), np.int16)), r"not a 3D volume: shape \(24, 24\)"),
        ("t2", _replace_with(np.ones((24, 24, 16, 2), np.int16)), "not a 3D volume"),
        ("label", _replace_with(np.zeros((24, 22, 16), np.uint8)), "shape .* differs"),
        ("label", _replace_with(np.zeros((24, 24, 16), np.uint8), affine=_RAS), "orientation RAS"),
        ("flair", _replace_with(_noisy(), affine=_FAR), "covers only 0% of the space of .*_t1"),
        ("label", _replace_with(np.zeros((24, 24, 16), np.uint8), affine=_SHIFTED), "affine"),
        ("t1", _replace_with(_with(np.nan)), "1 voxels are NaN or Inf"),
        ("t1ce", _replace_with(_with(np.inf)), "NaN or Inf"),
        ("flair", _replace_with(np.zeros((24, 24, 16), np.int16)), "flair image is all zero"),
        ("label", _replace_with(np.full((24, 24, 16), 3, np.uint8)), "label values 3 not"),
        ("label", _replace_with(np.full((24, 24, 16), 5, np.int16)), "label values 5 not"),
        ("label", _replace_with(np.full((24, 24, 16), 0.5, np.float32)), "label values 0.5"),
    ],
)
def test_each_defect_is_a_one_line_case_error_naming_the_file(write_case, role, damage, problem):
    paths = write_case()
    case = _only_case(paths)
    damage(paths[role])

    with pytest.raises(CaseError) as raised:
        validate_case(case)

    message = str(raised.value)
    assert message.startswith(f"{paths[role]}: ")
    assert "\n" not in message
    assert raised.match(problem)


def test_affine_within_tolerance_is_the_same_grid(write_case):
    paths = write_case()
    affine = nib.load(paths["t2"]).affine.copy()
    affine[0, 3] += 1e-5
    _replace_with(_noisy(), affine=affine)(paths["t2"])

    validate_case(_only_case(paths))


def test_label_value_3_is_enhancing_in_the_2023_naming(write_case):
    paths = write_case(naming="brats2023")
    case = _only_case(paths)
    assert set(validate_case(case).label_counts) == {0, 1, 2, 3}

    # 4 is BraTS 2024's resection cavity, in the same naming; 5 is in no scheme of it
    _replace_with(np.full((24, 24, 16), 4, np.uint8))(paths["label"])
    assert set(validate_case(case).label_counts) == {4}
    with pytest.raises(CaseError, match=r"label values 4 are not in the brats2023 scheme"):
        validate_case(case, SCHEMES["brats2023"])
    _replace_with(np.full((24, 24, 16), 5, np.uint8))(paths["label"])
    with pytest.raises(CaseError, match=r"label values 5 not in the brats2023/brats2024 scheme"):
        validate_case(case)


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("naming", ["brats2020", "brats2023"])
def test_load_subject_converts_labels_to_classes(write_case, naming):
    paths = write_case(naming=naming)
    case = _only_case(paths)
    file_label = np.asanyarray(nib.load(paths["label"]).dataobj)
    enhancing = 4 if naming != "brats2023" else 3

    subject = load_subject(case)

    assert subject["case_id"] == case.case_id
    assert all(isinstance(subject[modality], tio.ScalarImage) for modality in MODALITIES)
    assert not subject["t1"]._loaded  # read lazily, from the path
    assert subject["t1"].path == paths["t1"]
    label = subject["label"]
    assert isinstance(label, tio.LabelMap)
    assert label.shape == (1, 24, 24, 16)
    classes = label.data[0].numpy()
    np.testing.assert_array_equal(classes == 3, file_label == enhancing)
    np.testing.assert_array_equal(classes == 1, file_label == 1)
    np.testing.assert_array_equal(classes == 2, file_label == 2)
    np.testing.assert_allclose(label.affine, subject["t1"].affine, atol=1e-6)
    assert subject["t1"].data.shape == (1, 24, 24, 16)
