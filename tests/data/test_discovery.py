"""Discovery, checking and scheme detection on tiny copies of every release as downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascade.check import main as check_main
from cascade.data.cases import MODALITIES, load_subject
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.labels import SCHEMES
from cascade.data.validation import resolve_scheme, validate_case
from tests.data import release_layouts as releases


def _settle(root: Path):
    """Scan, validate and resolve as `cascade.train` does; returns cases, summaries, scheme."""
    cases, problems = scan_cases(root)
    assert problems == []
    summaries = {case.case_id: validate_case(case) for case in cases}
    values = {case_id: tuple(s.label_counts) for case_id, s in summaries.items() if s.labelled}
    return cases, summaries, resolve_scheme(cases, values)


@pytest.mark.parametrize(
    ("build", "scheme", "labelled", "unlabelled"),
    [
        (releases.brats2018, "brats2020", 3, 0),  # two HGG cases, one LGG
        (releases.brats2019, "brats2020", 3, 0),
        (releases.brats2020, "brats2020", 4, 0),  # three cases and case 355
        (releases.brats2020_kaggle, "brats2020", 4, 1),  # and one validation case
        (releases.brats2021, "brats2020", 2, 0),
        (lambda root: releases.brats2023(root, "GLI"), "brats2023", 2, 0),
        (lambda root: releases.brats2023(root, "MET", nested=True), "brats2023", 2, 0),
        (lambda root: releases.brats2023(root, "MEN", cases=1), "brats2023", 1, 0),
        (lambda root: releases.brats2023(root, "PED"), "brats2023", 2, 0),
        (lambda root: releases.brats2023(root, "SSA"), "brats2023", 2, 0),
        (releases.brats2024, "brats2024", 2, 0),
        (releases.msd_task01, "msd", 2, 1),
    ],
)
def test_every_release_is_found_as_downloaded_with_its_scheme(
    tmp_path, build, scheme, labelled, unlabelled
):
    cases, summaries, detected = _settle(build(tmp_path))

    assert detected is SCHEMES[scheme]
    assert sum(s.labelled for s in summaries.values()) == labelled
    assert sum(not s.labelled for s in summaries.values()) == unlabelled
    assert all(s.shape == releases.SHAPE for s in summaries.values())


def test_case_355_takes_its_misnamed_segmentation_and_says_so(tmp_path, capsys):
    root = releases.brats2020(tmp_path)
    cases, summaries, _ = _settle(root)
    (case,) = [case for case in cases if case.case_id == "BraTS20_Training_355"]

    assert case.label.name == "W39_1998.09.19_Segm.nii"
    assert "W39_1998.09.19_Segm.nii" in summaries[case.case_id].notes[0]
    assert check_main([str(root)]) == 0
    output = capsys.readouterr().out
    assert "note BraTS20_Training_355: label W39_1998.09.19_Segm.nii" in output
    assert "4 good case(s): 4 labelled, 0 unlabelled; 0 problem(s)" in output


def test_float_segmentation_with_integral_values_is_read_as_labels(tmp_path):
    root = releases.brats2020(tmp_path, float_seg_case=1)
    cases, summaries, scheme = _settle(root)
    float_case = next(case for case in cases if nib.load(case.label).get_data_dtype().kind == "f")
    subject = load_subject(float_case)

    assert set(summaries[float_case.case_id].label_counts) <= {0, 1, 2, 4}
    assert set(np.unique(subject["label"].data.numpy())) <= {0, 1, 2, 3}
    assert 3 in np.unique(subject["label"].data.numpy())  # enhancing 4.0 became class 3


def test_msd_channels_are_matched_by_name_and_labels_follow_msd(tmp_path):
    root = releases.msd_task01(tmp_path)
    cases, _, scheme = _settle(root)
    case = next(case for case in cases if case.label is not None)
    subject = load_subject(case)

    brain = releases.BRAIN
    for modality in MODALITIES:
        mean = float(subject[modality].data[0][brain].mean())
        assert mean == pytest.approx(releases.MODALITY_MEANS[modality], abs=15)
    classes = subject["label"].data[0].numpy()
    file_labels = np.asanyarray(nib.load(case.label).dataobj)
    assert np.array_equal(classes == 2, file_labels == 1)  # MSD 1 edema -> class 2
    assert np.array_equal(classes == 1, file_labels == 2)  # MSD 2 non-enhancing -> class 1
    assert scheme.from_classes(classes).tolist() == file_labels.tolist()


def test_resource_forks_and_csv_files_are_ignored(tmp_path):
    root = releases.msd_task01(tmp_path, resource_forks=True)
    cases, problems = scan_cases(root)
    assert problems == []
    assert not any(path.name.startswith("._") for case in cases for path in case.images.values())


def test_an_empty_case_folder_is_named(tmp_path, capsys):
    root = releases.empty_case_folder(tmp_path)
    cases, problems = scan_cases(root)

    assert [case.case_id for case in cases] == ["BraTS20_Training_001"]
    assert [str(problem) for problem in problems] == [
        f"{root / 'BraTS20_Training_002'}: empty folder, no case files"
    ]
    assert check_main([str(root)]) == 1
    assert f"ERROR {root / 'BraTS20_Training_002'}: empty folder" in capsys.readouterr().out


def test_check_counts_labelled_and_unlabelled_cases(tmp_path, capsys):
    assert check_main([str(releases.brats2020_kaggle(tmp_path))]) == 0
    output = capsys.readouterr().out
    assert "5 good case(s): 4 labelled, 1 unlabelled; 0 problem(s)" in output
    assert "label scheme brats2020 (detected): 1 NCR/NET, 2 ED, 4 ET; regions wt, tc, et" in output


def test_check_reports_the_2024_scheme_with_the_resection_cavity(tmp_path, capsys):
    assert check_main([str(releases.brats2024(tmp_path))]) == 0
    output = capsys.readouterr().out
    assert (
        "label scheme brats2024 (detected)" in output and "4 RC; regions wt, tc, et, rc" in output
    )


# ------------------------------------------------------------------------------ bad input


def _one_problem(root: Path) -> str:
    cases, problems = scan_cases(root)
    errors = list(problems)
    for case in cases:
        try:
            validate_case(case)
        except CaseError as error:
            errors.append(error)
    assert len(errors) == 1, errors
    assert "\n" not in str(errors[0])
    return str(errors[0])


def test_dataset_json_naming_a_missing_file(tmp_path):
    root = releases.msd_task01(tmp_path)
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    assert _one_problem(root) == (
        f"{root / 'dataset.json'}: names missing file ./labelsTr/BRATS_002.nii.gz"
    )


def test_a_4d_image_whose_channels_do_not_match_dataset_json(tmp_path):
    root = releases.msd_task01(tmp_path)
    image = root / "imagesTr" / "BRATS_001.nii.gz"
    three = np.asanyarray(nib.load(image).dataobj)[..., :3]
    nib.save(nib.Nifti1Image(three, releases.lps_affine()), image)
    problem = _one_problem(root)
    assert problem.startswith(f"{image}: expected a 4D image of 4 channels (dataset.json)")


def test_dataset_json_without_a_modality_it_needs(tmp_path):
    root = releases.msd_task01(tmp_path)
    description = json.loads((root / "dataset.json").read_text())
    description["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    (root / "dataset.json").write_text(json.dumps(description))
    assert _one_problem(root) == f"{root / 'dataset.json'}: dataset.json names no t1ce channel"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.float32(0.5), "label values 0.5 are not integral"),
        (np.uint8(3), "label values 3 not in the brats2020 scheme"),
    ],
)
def test_label_values_outside_the_scheme_or_not_integral(tmp_path, values, problem):
    root = releases.brats2021(tmp_path)
    label = next(root.glob("*/*_seg.nii.gz"))
    data = np.asanyarray(nib.load(label).dataobj).astype(np.asarray(values).dtype)
    data[data > 0] = values
    nib.save(nib.Nifti1Image(data, releases.lps_affine()), label)
    assert _one_problem(root).startswith(f"{label}: {problem}")


def test_two_schemes_mixed_in_one_dataset(tmp_path, capsys):
    releases.brats2021(tmp_path / "mixed")
    releases.brats2023(tmp_path / "mixed", "GLI")
    cases, problems = scan_cases(tmp_path / "mixed")
    assert problems == []
    values = {case.case_id: tuple(validate_case(case).label_counts) for case in cases}
    with pytest.raises(CaseError, match="brats20\\d\\d files mixed with brats20\\d\\d files"):
        resolve_scheme(cases, values)
    assert check_main([str(tmp_path / "mixed")]) == 1
    assert "two label schemes" in capsys.readouterr().out


def test_a_forced_scheme_is_checked_against_every_label(tmp_path):
    cases, summaries, _ = _settle(releases.brats2024(tmp_path))
    values = {case_id: tuple(s.label_counts) for case_id, s in summaries.items()}
    with pytest.raises(CaseError, match="label values 4 are not in the forced brats2023 scheme"):
        resolve_scheme(cases, values, "brats2023")
    assert resolve_scheme(cases, values, "brats2024") is SCHEMES["brats2024"]


def test_linked_case_folders_and_files_are_found_once_without_loops(write_case, tmp_path):
    store = tmp_path / "store"
    first = write_case(root=store, case_id="Case_001")["t1"].parent
    second = write_case(root=store, case_id="Case_002")["t1"].parent
    flat = write_case(root=store / "flat", case_id="Case_003", flat=True)
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "Case_001").symlink_to(first)
    (subset / "again").symlink_to(first)  # a second link to one folder: one case
    (subset / "Case_002").symlink_to(second)
    (second / "up").symlink_to(subset)  # a link back up the tree: no loop
    (subset / "Case_003").mkdir()
    for path in flat.values():  # a case folder of linked files
        (subset / "Case_003" / path.name).symlink_to(path)

    cases, problems = scan_cases(subset)

    assert problems == []
    assert [case.case_id for case in cases] == ["Case_001", "Case_002", "Case_003"]
    assert validate_case(cases[2]).labelled
